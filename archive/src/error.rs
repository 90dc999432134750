//! The archive's errors, split by what a caller should do about them.
//!
//! The aggregator retries [`ArchiveError::is_retryable`] errors with backoff (S3 down, slow or
//! overloaded) and must not commit past the events it failed to archive; every other error is
//! a bug or a broken object that waiting will not fix.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// S3 could not be reached, timed out, or answered with a server-side error (5xx, 429,
    /// `SlowDown`): the same request may succeed later.
    #[error("s3 {operation} {target} failed (retryable): {detail}")]
    S3Unavailable {
        operation: &'static str,
        target: String,
        detail: String,
    },
    /// S3 refused the request (no such bucket, access denied, bad request): retrying the same
    /// request will not help.
    #[error("s3 {operation} {target} was refused: {detail}")]
    S3Refused {
        operation: &'static str,
        target: String,
        detail: String,
    },
    /// The records handed to the writer do not form a segment (empty, another partition,
    /// offsets not strictly increasing): a caller bug.
    #[error("invalid segment for topic {topic} partition {partition}: {detail}")]
    InvalidSegment {
        topic: String,
        partition: i32,
        detail: String,
    },
    /// An archived object that cannot be decoded, or whose records disagree with its key.
    #[error("archived segment {key} is corrupt: {detail}")]
    CorruptSegment { key: String, detail: String },
    /// A ClickHouse statement of the restore failed.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The restore could not claim a partition (see `topk_core::claims`).
    #[error("claiming a partition for the restore: {0}")]
    Claim(String),
    /// The cluster layout could not be read or does not match (`topk_core::cluster`).
    #[error("clickhouse cluster: {0}")]
    Cluster(String),
}

impl ArchiveError {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ArchiveError::S3Unavailable { .. })
    }

    /// Sorts an S3 SDK error into retryable or permanent.
    pub(crate) fn from_s3<E, R>(
        operation: &'static str,
        target: impl Into<String>,
        error: &SdkError<E, R>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        let retryable = match error {
            SdkError::ConstructionFailure(_) => false,
            SdkError::ServiceError(service) => {
                let status = service.raw().status_code();
                let code = service.err().code().unwrap_or_default();
                status >= 500
                    || status == 408
                    || status == 429
                    || matches!(code, "SlowDown" | "RequestTimeout" | "InternalError")
            }
            // Timeouts, connection failures, unparseable responses (a proxy's error page).
            _ => true,
        };
        let target = target.into();
        let detail = DisplayErrorContext(error).to_string();
        if retryable {
            ArchiveError::S3Unavailable {
                operation,
                target,
                detail,
            }
        } else {
            ArchiveError::S3Refused {
                operation,
                target,
                detail,
            }
        }
    }
}

/// The HTTP status of a raw SDK response (a trait so the classification is unit-testable).
pub(crate) trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;

    #[derive(Debug)]
    struct FakeResponse(u16);

    impl HttpStatus for FakeResponse {
        fn status_code(&self) -> u16 {
            self.0
        }
    }

    #[derive(Debug)]
    struct FakeServiceError(ErrorMetadata);

    impl std::fmt::Display for FakeServiceError {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(formatter, "{:?}", self.0.code())
        }
    }

    impl std::error::Error for FakeServiceError {}

    impl ProvideErrorMetadata for FakeServiceError {
        fn meta(&self) -> &ErrorMetadata {
            &self.0
        }
    }

    fn service_error(status: u16, code: &str) -> ArchiveError {
        let error = SdkError::service_error(
            FakeServiceError(ErrorMetadata::builder().code(code).build()),
            FakeResponse(status),
        );
        ArchiveError::from_s3("put", "k", &error)
    }

    #[test]
    fn server_side_and_throttling_errors_are_retryable() {
        assert!(service_error(500, "InternalError").is_retryable());
        assert!(service_error(503, "SlowDown").is_retryable());
        assert!(service_error(429, "TooManyRequests").is_retryable());
        assert!(service_error(400, "RequestTimeout").is_retryable());
    }

    #[test]
    fn refusals_are_permanent() {
        assert!(!service_error(403, "AccessDenied").is_retryable());
        assert!(!service_error(404, "NoSuchBucket").is_retryable());
        assert!(!service_error(400, "InvalidRequest").is_retryable());
    }

    #[test]
    fn timeouts_and_dispatch_failures_are_retryable() {
        let timeout: SdkError<FakeServiceError, FakeResponse> =
            SdkError::timeout_error("operation timed out");
        assert!(ArchiveError::from_s3("put", "k", &timeout).is_retryable());
        let construction: SdkError<FakeServiceError, FakeResponse> =
            SdkError::construction_failure("bad input");
        assert!(!ArchiveError::from_s3("put", "k", &construction).is_retryable());
    }
}
