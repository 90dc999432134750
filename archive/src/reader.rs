//! Reads the archive back: lists a topic's segments over a range of object dates and yields
//! each partition's records in offset order, every offset once.
//!
//! Segments of one partition may overlap: after a crash the aggregator re-reads from its
//! checkpoint and archives again, possibly with other segment boundaries (and so other keys)
//! than before. [`plan_partitions`] orders a partition's segments by first offset (longest
//! first on ties), skips every segment wholly covered by earlier ones without downloading it,
//! and the reader then drops, from each remaining segment, the offsets already yielded. The
//! overlapping copies of an offset are the same Kafka message, so which copy wins is moot.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use chrono::NaiveDate;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::error::ArchiveError;
use crate::options::S3Options;
use crate::record::ArchiveRecord;
use crate::segment::{date_prefix, decode_segment, SegmentKey};

/// Segments downloaded at once per partition while reading.
const CONCURRENT_DOWNLOADS: usize = 4;

/// Which segments of one partition to read, in order, and what the keys alone tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub partition: i32,
    /// The segments to download, ordered by first offset.
    pub segments: Vec<SegmentKey>,
    /// Segments whose offsets earlier segments already cover (replays), not downloaded.
    pub covered_segments: usize,
    /// Offset ranges between segments that no segment covers: Kafka offsets that never held
    /// a message (transaction markers, compaction) or objects missing from the archive.
    pub gaps: Vec<RangeInclusive<i64>>,
}

impl PartitionPlan {
    /// The highest offset the partition's segments cover.
    pub fn last_offset(&self) -> Option<i64> {
        self.segments.last().map(|segment| segment.last_offset)
    }
}

/// Groups segments by partition and decides which to read (see the module docs).
pub fn plan_partitions(segments: Vec<SegmentKey>) -> BTreeMap<i32, PartitionPlan> {
    let mut by_partition: BTreeMap<i32, Vec<SegmentKey>> = BTreeMap::new();
    for segment in segments {
        by_partition
            .entry(segment.partition)
            .or_default()
            .push(segment);
    }
    by_partition
        .into_iter()
        .map(|(partition, mut segments)| {
            segments.sort_by(|left, right| {
                left.first_offset
                    .cmp(&right.first_offset)
                    .then(right.last_offset.cmp(&left.last_offset))
                    .then(left.object_key.cmp(&right.object_key))
            });
            let mut plan = PartitionPlan {
                partition,
                segments: Vec::new(),
                covered_segments: 0,
                gaps: Vec::new(),
            };
            let mut covered_up_to: Option<i64> = None;
            for segment in segments {
                match covered_up_to {
                    Some(covered) if segment.last_offset <= covered => {
                        plan.covered_segments += 1;
                        continue;
                    }
                    Some(covered) if segment.first_offset > covered + 1 => {
                        plan.gaps.push(covered + 1..=segment.first_offset - 1);
                    }
                    _ => {}
                }
                covered_up_to = Some(segment.last_offset);
                plan.segments.push(segment);
            }
            (partition, plan)
        })
        .collect()
}

/// Reads archive segments from one bucket under one prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArchiveReader {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl ArchiveReader {
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

    /// A reader for the bucket and prefix of `options`, with a client built from them.
    pub async fn from_options(options: &S3Options) -> Self {
        Self::new(
            options.client().await,
            &options.s3_bucket,
            &options.s3_prefix,
        )
    }

    /// Every segment of `topic` stored under the given object dates (one listing per date,
    /// paginated). Objects under those prefixes that are not segments are skipped with a
    /// warning.
    pub async fn list_segments(
        &self,
        topic: &str,
        object_dates: RangeInclusive<NaiveDate>,
    ) -> Result<Vec<SegmentKey>, ArchiveError> {
        let mut segments = Vec::new();
        for date in object_dates
            .start()
            .iter_days()
            .take_while(|date| date <= object_dates.end())
        {
            let prefix = date_prefix(&self.prefix, topic, date);
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages
                .try_next()
                .await
                .map_err(|error| ArchiveError::from_s3("list", &prefix, &error))?
            {
                for object in page.contents() {
                    let Some(object_key) = object.key() else {
                        continue;
                    };
                    match SegmentKey::parse(&self.prefix, object_key) {
                        Some(segment) if segment.topic == topic => segments.push(segment),
                        _ => tracing::warn!(
                            key = object_key,
                            "skipping object that is not a segment"
                        ),
                    }
                }
            }
        }
        Ok(segments)
    }

    /// Downloads and decodes one segment.
    pub async fn read_segment(&self, key: &SegmentKey) -> Result<Vec<ArchiveRecord>, ArchiveError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key.object_key)
            .send()
            .await
            .map_err(|error| ArchiveError::from_s3("get", &key.object_key, &error))?;
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|error| ArchiveError::S3Unavailable {
                operation: "get",
                target: key.object_key.clone(),
                detail: error.to_string(),
            })?
            .into_bytes();
        decode_segment(key, &bytes)
    }

    /// The partition's records in offset order, every offset once, one batch per segment read
    /// (segments are downloaded a few at a time ahead of the consumer).
    pub fn partition_records<'a>(
        &'a self,
        plan: &PartitionPlan,
    ) -> impl Stream<Item = Result<Vec<ArchiveRecord>, ArchiveError>> + 'a {
        let mut yielded_up_to: Option<i64> = None;
        futures::stream::iter(plan.segments.clone())
            .map(move |segment| async move { self.read_segment(&segment).await })
            .buffered(CONCURRENT_DOWNLOADS)
            .map_ok(move |records| {
                let fresh: Vec<ArchiveRecord> = records
                    .into_iter()
                    .filter(|record| yielded_up_to.is_none_or(|done| record.offset > done))
                    .collect();
                if let Some(last) = fresh.last() {
                    yielded_up_to = Some(last.offset);
                }
                fresh
            })
    }

    /// All of the partition's records in offset order, every offset once (for small reads and
    /// tests; the restore streams with [`ArchiveReader::partition_records`]).
    pub async fn read_partition(
        &self,
        plan: &PartitionPlan,
    ) -> Result<Vec<ArchiveRecord>, ArchiveError> {
        let batches: Vec<Vec<ArchiveRecord>> = self.partition_records(plan).try_collect().await?;
        Ok(batches.into_iter().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32, first: i64, last: i64) -> SegmentKey {
        let date = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        SegmentKey::new("raw", "plays", date, partition, first, last)
    }

    fn ranges(plan: &PartitionPlan) -> Vec<(i64, i64)> {
        plan.segments
            .iter()
            .map(|segment| (segment.first_offset, segment.last_offset))
            .collect()
    }

    #[test]
    fn covered_replays_are_skipped_and_partial_overlaps_kept() {
        let plans = plan_partitions(vec![
            key(0, 10, 19),
            key(0, 0, 9),
            key(0, 5, 12), // a replay with other boundaries
            key(0, 0, 9),  // the same segment listed twice
            key(0, 2, 7),  // wholly covered
            key(0, 15, 30),
            key(1, 0, 3),
        ]);
        let partition_zero = &plans[&0];
        assert_eq!(
            ranges(partition_zero),
            vec![(0, 9), (5, 12), (10, 19), (15, 30)]
        );
        assert_eq!(partition_zero.covered_segments, 2);
        assert!(partition_zero.gaps.is_empty());
        assert_eq!(partition_zero.last_offset(), Some(30));
        assert_eq!(ranges(&plans[&1]), vec![(0, 3)]);
    }

    #[test]
    fn a_longer_replay_wins_over_the_shorter_original() {
        let plans = plan_partitions(vec![key(0, 0, 4), key(0, 0, 9), key(0, 5, 9)]);
        assert_eq!(ranges(&plans[&0]), vec![(0, 9)]);
        assert_eq!(plans[&0].covered_segments, 2);
    }

    #[test]
    fn gaps_between_segments_are_reported() {
        let plans = plan_partitions(vec![key(2, 0, 4), key(2, 8, 9)]);
        assert_eq!(plans[&2].gaps, vec![5..=7]);
    }
}
