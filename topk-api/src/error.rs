//! Every way a request can fail, and the one place that maps each to an HTTP status and the
//! JSON body `{"error": {"code", "message"}}`.
//!
//! Bad input is a 4xx whose message says what was wrong (except a 401, which never says which
//! check a token failed: that is logged). Failures of the server's side
//! (ClickHouse unreachable, slow, overloaded or not migrated) are a 503 with `Retry-After`; a
//! query ClickHouse refuses (a bug, not an outage: [`is_outage`]) is a 500. Their details are
//! logged with the request id, never sent to the caller.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// `Clone`, so that one failed ClickHouse query shared by several requests (`store`'s
/// coalescing) fails each of them with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidUserId(String),
    #[error("{0}")]
    InvalidLimit(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidTimeZone(String),
    #[error("{0}")]
    InvalidSongId(String),
    /// 400 with its own code (`invalid_window`, `invalid_as_of`, ...): a chart parameter.
    #[error("{1}")]
    InvalidParameter(&'static str, String),
    /// 404: the catalog has no entry for this song.
    #[error("the song catalog has no song {0:?}")]
    SongNotFound(String),
    /// 401: no bearer token, or one that fails verification. The caller is told only this
    /// (`auth` logs which check failed), so a client cannot probe the checks one by one.
    #[error("missing or invalid bearer token")]
    Unauthenticated(crate::auth::BearerError),
    /// 403: a valid token without the scope the request needs ([`crate::auth::READ_ANY_SCOPE`]).
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
    #[error("the request was not answered within {0:?}")]
    RequestTimeout(Duration),
    #[error("clickhouse: {0}")]
    ClickHouse(Arc<clickhouse::error::Error>),
    #[error("schema at version {applied:?}, expected {expected}")]
    SchemaNotReady { applied: Option<u32>, expected: u32 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::auth::BearerError> for AppError {
    fn from(problem: crate::auth::BearerError) -> Self {
        Self::Unauthenticated(problem)
    }
}

impl From<clickhouse::error::Error> for AppError {
    fn from(error: clickhouse::error::Error) -> Self {
        Self::ClickHouse(Arc::new(error))
    }
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidUserId(_)
            | Self::InvalidLimit(_)
            | Self::InvalidRequest(_)
            | Self::InvalidTimeZone(_)
            | Self::InvalidSongId(_)
            | Self::InvalidParameter(..) => StatusCode::BAD_REQUEST,
            Self::SongNotFound(_) => StatusCode::NOT_FOUND,
            // Without auth there is no "me": nothing to find at that path.
            Self::AuthDisabled => StatusCode::NOT_FOUND,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClickHouse(error) if !is_outage(error) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Overloaded
            | Self::QueryTimeout(_)
            | Self::RequestTimeout(_)
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
            Self::InvalidTimeZone(_) => "invalid_time_zone",
            Self::InvalidSongId(_) => "invalid_song_id",
            Self::InvalidParameter(code, _) => code,
            Self::SongNotFound(_) => "song_not_found",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::AuthDisabled => "auth_disabled",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Overloaded => "overloaded",
            Self::RequestTimeout(_) => "request_timeout",
            Self::ClickHouse(error) if !is_outage(error) => "internal_error",
            Self::QueryTimeout(_) | Self::ClickHouse(_) => "database_unavailable",
            Self::SchemaNotReady { .. } => "schema_not_ready",
            Self::Internal(_) => "internal_error",
        }
    }

    /// What the caller is told: the error itself for their mistakes, a generic sentence for
    /// ours.
    fn public_message(&self) -> String {
        match self {
            Self::ClickHouse(error) if !is_outage(error) => "internal error".to_owned(),
            Self::QueryTimeout(_) | Self::ClickHouse(_) => {
                "the database is unavailable or slow; retry later".to_owned()
            }
            Self::SchemaNotReady { .. } => {
                "the database schema is not at the expected migration yet".to_owned()
            }
            Self::Overloaded => "the server is at its concurrency limit; retry later".to_owned(),
            Self::RequestTimeout(_) => "the request took too long; retry later".to_owned(),
            Self::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            // A query ClickHouse refused: a bug of ours (or a schema changed by hand), not an
            // outage. Logged inside the request's span, which names its request id.
            Self::ClickHouse(error) if !is_outage(error) => {
                tracing::error!(error = %self, "a ClickHouse query failed");
            }
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
        // RFC 6750 §3: the Bearer challenge; an error attribute only when a token was sent.
        let challenge = match &self {
            Self::Unauthenticated(problem) => Some(problem.challenge()),
            Self::Forbidden(_) => Some(crate::auth::INSUFFICIENT_SCOPE_CHALLENGE),
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

/// ClickHouse error codes of an outage or overload (the server, a replica or the network,
/// not the query): worth retrying later. Every other refusal is a bug.
const OUTAGE_CODES: &[u32] = &[
    32,   // ATTEMPT_TO_READ_AFTER_EOF: a connection between servers dropped
    159,  // TIMEOUT_EXCEEDED: max_execution_time
    160,  // TOO_SLOW
    198,  // DNS_ERROR
    202,  // TOO_MANY_SIMULTANEOUS_QUERIES
    203,  // NO_FREE_CONNECTION
    209,  // SOCKET_TIMEOUT
    210,  // NETWORK_ERROR
    241,  // MEMORY_LIMIT_EXCEEDED
    242,  // TABLE_IS_READ_ONLY
    279,  // ALL_CONNECTION_TRIES_FAILED
    285,  // TOO_FEW_LIVE_REPLICAS
    319,  // UNKNOWN_STATUS_OF_INSERT
    369,  // ALL_REPLICAS_ARE_STALE (the cluster read settings)
    394,  // QUERY_WAS_CANCELLED
    425,  // SYSTEM_ERROR
    999,  // KEEPER_EXCEPTION
    1000, // POCO_EXCEPTION: e.g. a connection refused between servers
];

/// Whether `error` means ClickHouse is unreachable, slow or overloaded (a 503: retry later)
/// rather than that it refused the query (a 500: a bug).
pub fn is_outage(error: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error;
    match error {
        Error::Network(_) | Error::TimedOut => true,
        Error::BadResponse(message) => {
            server_error_code(message).is_none_or(|code| OUTAGE_CODES.contains(&code))
        }
        _ => false,
    }
}

/// The `Code: N` of a ClickHouse exception text (`Code: 62, e.displayText() = …` on 18.16,
/// `Code: 62. DB::Exception: …` today); `None` when the answer carries none (a proxy's or a
/// load balancer's error page: counted as an outage).
fn server_error_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + "Code: ".len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_outages_are_503_and_refused_queries_500() {
        use clickhouse::error::Error;
        let refused = |text: &str| AppError::from(Error::BadResponse(text.to_owned()));
        let syntax = refused("Code: 62, e.displayText() = DB::Exception: Syntax error");
        assert_eq!(syntax.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(syntax.code(), "internal_error");
        assert_eq!(syntax.public_message(), "internal error");
        let unknown =
            refused("Code: 47. DB::Exception: Missing columns: 'x'. (UNKNOWN_IDENTIFIER)");
        assert_eq!(unknown.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let timeout = refused("Code: 159. DB::Exception: Timeout exceeded: elapsed 2.1 seconds");
        assert_eq!(timeout.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(timeout.code(), "database_unavailable");
        let stale = refused("Code: 369, e.displayText() = DB::Exception: All replicas are stale");
        assert_eq!(stale.status(), StatusCode::SERVICE_UNAVAILABLE);
        let proxy_page = refused("502 Bad Gateway");
        assert_eq!(proxy_page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            AppError::from(Error::TimedOut).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            AppError::from(Error::NotEnoughData).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(server_error_code("Code: 1000, e.displayText()"), Some(1000));
    }

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
        let unauthenticated =
            AppError::Unauthenticated(crate::auth::BearerError::Missing).into_response();
        assert!(unauthenticated
            .headers()
            .contains_key(header::WWW_AUTHENTICATE));
    }
}
