//! Every way a whole request can fail, and the one place that maps each to an HTTP status and
//! the JSON body `{"error": {"code", "message"}}` (the shape `topk-api` answers with).
//!
//! Events that break the contract are not errors of the request: they are listed one by one
//! in a `202`/`422` answer ([`crate::routes`]). What fails a request is the request itself
//! (auth, size, format, rate) or Kafka not acknowledging in time (`503` + `Retry-After`: the
//! client retries the same events, with the same `event_id`s).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use topk_api::auth::BearerError;

use crate::body::BodyError;
use crate::producer::ProduceError;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The `WWW-Authenticate` value of a 403: a user token posting someone else's plays.
pub const INSUFFICIENT_SCOPE_CHALLENGE: &str =
    "Bearer realm=\"topk\", error=\"insufficient_scope\", scope=\"topk:ingest\"";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing or invalid bearer token")]
    Unauthenticated(BearerError),
    #[error(
        "this token may post its own plays only (user_id {user_id:?} is not its subject); \
         posting anyone's needs scope topk:ingest"
    )]
    Forbidden { user_id: String },
    #[error("the body is over {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("cannot read the body: {0}")]
    UnreadableBody(String),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("rate limit reached; retry after {0:?}")]
    RateLimited(Duration),
    #[error("kafka: {0}")]
    Kafka(#[from] ProduceError),
    #[error("too many requests in flight")]
    Overloaded,
    #[error("the request was not answered within {0:?}")]
    RequestTimeout(Duration),
    #[error("kafka is not reachable: {0}")]
    NotReady(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
}

impl From<BearerError> for IngestError {
    fn from(problem: BearerError) -> Self {
        Self::Unauthenticated(problem)
    }
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::BodyTooLarge { .. } | Self::Body(BodyError::TooManyEvents { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Body(BodyError::UnsupportedMediaType(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UnreadableBody(_) | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Kafka(_) | Self::Overloaded | Self::RequestTimeout(_) | Self::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// The stable machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::UnreadableBody(_) => "unreadable_body",
            Self::Body(BodyError::TooManyEvents { .. }) => "too_many_events",
            Self::Body(BodyError::UnsupportedMediaType(_)) => "unsupported_media_type",
            Self::Body(BodyError::NotAnArray(_)) => "invalid_body",
            Self::Body(BodyError::Empty) => "empty_body",
            Self::RateLimited(_) => "rate_limited",
            Self::Kafka(_) | Self::NotReady(_) => "kafka_unavailable",
            Self::Overloaded => "overloaded",
            Self::RequestTimeout(_) => "request_timeout",
            Self::Internal(_) => "internal_error",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// What the caller is told: the error itself for their mistakes, a generic sentence for
    /// ours (details are logged).
    fn public_message(&self) -> String {
        match self {
            Self::Kafka(_) | Self::NotReady(_) => {
                "kafka did not acknowledge the events in time; nothing of this request is \
                 accepted: retry it with the same event_ids"
                    .to_owned()
            }
            Self::Overloaded => "the server is at its concurrency limit; retry later".to_owned(),
            Self::RequestTimeout(_) => {
                "the request took too long; retry it with the same event_ids".to_owned()
            }
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Whole seconds to put in `Retry-After`, for the statuses that carry one.
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            // Rounded up: retrying at the advertised second must succeed.
            Self::RateLimited(wait) => Some(wait.as_millis().div_ceil(1000).max(1) as u64),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECS),
            _ => None,
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Kafka(error) => {
                metrics::counter!("topk_ingest_kafka_failures_total", "kind" => error.kind())
                    .increment(1);
                tracing::warn!(error = %self, "events not acknowledged by kafka");
            }
            Self::NotReady(_) => tracing::warn!(error = %self, "not ready"),
            Self::Internal(_) => tracing::error!(error = %self, "request failed"),
            _ => {}
        }
        let body = json!({"error": {"code": self.code(), "message": self.public_message()}});
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        let challenge = match &self {
            Self::Unauthenticated(problem) => Some(problem.challenge()),
            Self::Forbidden { .. } => Some(INSUFFICIENT_SCOPE_CHALLENGE),
            _ => None,
        };
        if let Some(challenge) = challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_retry_after() {
        let limited = IngestError::RateLimited(Duration::from_millis(1200)).into_response();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "2");
        let kafka =
            IngestError::Kafka(ProduceError::Deadline(Duration::from_secs(5))).into_response();
        assert_eq!(kafka.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(kafka.headers()[header::RETRY_AFTER], "1");
        let large = IngestError::BodyTooLarge { limit: 10 }.into_response();
        assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!large.headers().contains_key(header::RETRY_AFTER));
        let many = IngestError::Body(BodyError::TooManyEvents { count: 3, max: 2 });
        assert_eq!(many.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let forbidden = IngestError::Forbidden {
            user_id: "bob".to_owned(),
        }
        .into_response();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            forbidden.headers()[header::WWW_AUTHENTICATE],
            INSUFFICIENT_SCOPE_CHALLENGE
        );
    }
}
