//! Every way a request can fail, and the one place that maps each to an HTTP status and the
//! JSON body `{"error": {"code", "message"}}`.
//!
//! Bad input is a 4xx whose message says what was wrong. Failures of the server's side
//! (ClickHouse unreachable, slow or not migrated) are a 503 with `Retry-After`; their details
//! are logged, never sent to the caller.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidUserId(String),
    #[error("{0}")]
    InvalidLimit(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("authentication is off on this server (auth_mode = off), so /v1/me has no user; use /v1/users/{{user_id}}/top-songs")]
    AuthDisabled,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("too many requests in flight")]
    Overloaded,
    #[error("clickhouse did not answer within {0:?}")]
    QueryTimeout(Duration),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("schema at version {applied:?}, expected {expected}")]
    SchemaNotReady { applied: Option<u32>, expected: u32 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidUserId(_)
            | Self::InvalidLimit(_)
            | Self::InvalidRequest(_)
            | Self::AuthDisabled => StatusCode::BAD_REQUEST,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Overloaded
            | Self::QueryTimeout(_)
            | Self::ClickHouse(_)
            | Self::SchemaNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUserId(_) => "invalid_user_id",
            Self::InvalidLimit(_) => "invalid_limit",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::AuthDisabled => "auth_disabled",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Overloaded => "overloaded",
            Self::QueryTimeout(_) | Self::ClickHouse(_) => "database_unavailable",
            Self::SchemaNotReady { .. } => "schema_not_ready",
            Self::Internal(_) => "internal_error",
        }
    }

    /// What the caller is told: the error itself for their mistakes, a generic sentence for
    /// ours.
    fn public_message(&self) -> String {
        match self {
            Self::QueryTimeout(_) | Self::ClickHouse(_) => {
                "the database is unavailable or slow; retry later".to_owned()
            }
            Self::SchemaNotReady { .. } => {
                "the database schema is not at the expected migration yet".to_owned()
            }
            Self::Overloaded => "the server is at its concurrency limit; retry later".to_owned(),
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::QueryTimeout(_) | Self::ClickHouse(_) | Self::SchemaNotReady { .. } => {
                tracing::warn!(error = %self, "request failed on the database side");
            }
            Self::Internal(_) => tracing::error!(error = %self, "request failed"),
            _ => {}
        }
        let body = json!({"error": {"code": self.code(), "message": self.public_message()}});
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"topk\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_failures_are_503_with_retry_after_and_no_details() {
        let error = AppError::QueryTimeout(Duration::from_millis(5));
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn bad_input_is_4xx_and_says_why() {
        let error = AppError::InvalidLimit("limit must be 1..=50".to_owned());
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error.public_message(), "limit must be 1..=50");
        let unauthenticated = AppError::Unauthenticated("no token".to_owned()).into_response();
        assert!(unauthenticated
            .headers()
            .contains_key(header::WWW_AUTHENTICATE));
    }
}
