//! Writes segments to S3, one PutObject each.

use aws_sdk_s3::primitives::ByteStream;

use crate::error::ArchiveError;
use crate::options::S3Options;
use crate::record::ArchiveRecord;
use crate::segment::{ArchiveSegment, SegmentKey};

/// The content type of a segment object.
pub const SEGMENT_CONTENT_TYPE: &str = "application/zstd";

/// Writes archive segments into one bucket under one prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArchiveWriter {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl ArchiveWriter {
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    /// A writer for the bucket and prefix of `options`, with a client built from them.
    pub async fn from_options(options: &S3Options) -> Self {
        Self::new(
            options.client().await,
            &options.s3_bucket,
            &options.s3_prefix,
        )
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Archives the records of one partition (consecutive consumed offsets, ascending) as one
    /// object. Writing the same records again writes the same key and bytes, so a caller may
    /// retry freely; the aggregator calls this once per partition per flush, before its
    /// checkpoint, and retries [`ArchiveError::is_retryable`] errors with backoff.
    pub async fn put_segment(
        &self,
        topic: &str,
        partition: i32,
        records: &[ArchiveRecord],
    ) -> Result<SegmentKey, ArchiveError> {
        let segment = ArchiveSegment::new(topic, partition, records)?;
        let key = segment.key(&self.prefix);
        let body = segment.encode();
        let body_bytes = body.len();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key.object_key)
            .content_type(SEGMENT_CONTENT_TYPE)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| ArchiveError::from_s3("put", &key.object_key, &error))?;
        tracing::debug!(
            key = %key,
            records = records.len(),
            bytes = body_bytes,
            "archived segment"
        );
        Ok(key)
    }
}
