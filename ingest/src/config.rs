//! The ingest service's options: file (`--config`), then env, then flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use topk_api::auth::JwtSettings;
use topk_api::config::{non_empty, AuthMode};

/// HTTP ingest: apps post play events; each valid one is produced to the plays topic and
/// acknowledged to the client only after Kafka acknowledged it.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(name = "topk-ingest", version, about, long_about = None)]
pub struct IngestConfig {
    /// TOML file with any of the options below (flat keys, e.g. `listen = "..."`);
    /// env vars and flags override it.
    #[arg(long, env = "TOPK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TOPK_INGEST_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TOPK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// The topic play events are produced to (the aggregator's plays topic).
    #[arg(long, env = "TOPK_PLAYS_TOPIC", default_value = "plays")]
    pub plays_topic: String,
    /// Longest a request waits for Kafka to acknowledge its events (milliseconds); past it the
    /// answer is 503 with `Retry-After` and no event of the request counts as accepted. Also
    /// the producer's `message.timeout.ms`, so nothing waits in the producer's queue for
    /// longer than a client was told to wait.
    #[arg(long, env = "TOPK_INGEST_KAFKA_DEADLINE_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub kafka_deadline_ms: u64,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`).
    #[arg(long, env = "TOPK_INGEST_KAFKA_LINGER_MS", default_value_t = 5)]
    pub kafka_linger_ms: u64,
    /// Largest request body accepted (bytes); a larger one is answered 413.
    #[arg(long, env = "TOPK_INGEST_MAX_BODY_BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes: u64,
    /// Most events in one request; more is answered 413.
    #[arg(long, env = "TOPK_INGEST_MAX_EVENTS_PER_REQUEST", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_events_per_request: u32,
    /// Events per second a user token may post, refilled continuously (token bucket per
    /// token subject); 0 turns the limit off. Over it: 429 with `Retry-After`.
    #[arg(long, env = "TOPK_INGEST_USER_EVENTS_PER_SECOND", default_value_t = 20)]
    pub user_events_per_second: u32,
    /// A user token's bucket size: how many events it may post at once after a quiet spell.
    /// At least max_events_per_request, so that a full batch can pass.
    #[arg(long, env = "TOPK_INGEST_USER_BURST_EVENTS", default_value_t = 1000)]
    pub user_burst_events: u32,
    /// Events per second a service token (scope `topk:ingest`) may post; 0 turns it off.
    #[arg(
        long,
        env = "TOPK_INGEST_SERVICE_EVENTS_PER_SECOND",
        default_value_t = 0
    )]
    pub service_events_per_second: u32,
    /// A service token's bucket size (at least max_events_per_request).
    #[arg(
        long,
        env = "TOPK_INGEST_SERVICE_BURST_EVENTS",
        default_value_t = 100000
    )]
    pub service_burst_events: u32,
    /// Requests served at once; requests beyond it get an immediate 503 with `Retry-After`.
    #[arg(long, env = "TOPK_INGEST_MAX_CONCURRENT_REQUESTS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// Longest a client may take to send a request's headers, and to stay idle between
    /// requests on a kept-alive connection (milliseconds).
    #[arg(long, env = "TOPK_INGEST_HEADER_READ_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// Open connections at most; further clients wait in the listen backlog.
    #[arg(long, env = "TOPK_INGEST_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// On shutdown, how long requests in flight and the producer's queue are given to finish
    /// (milliseconds).
    #[arg(long, env = "TOPK_INGEST_SHUTDOWN_TIMEOUT_MS", default_value_t = 15000)]
    pub shutdown_timeout_ms: u64,
    /// Who may post what: `off` (anyone posts anyone's plays; local use only), `hs256` or
    /// `rs256` (JWT, as topk-api). A user token posts its own plays (`sub` = `user_id`); a
    /// token with scope `topk:ingest` posts anyone's.
    #[arg(long, env = "TOPK_INGEST_AUTH_MODE", value_enum, default_value_t = AuthMode::Off)]
    pub auth_mode: AuthMode,
    /// The HS256 shared secret (auth_mode = hs256), at least 32 bytes.
    #[arg(
        long,
        env = "TOPK_INGEST_JWT_HS256_SECRET",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub jwt_hs256_secret: String,
    /// PEM file with the RSA public key that verifies RS256 tokens (auth_mode = rs256).
    #[arg(
        long,
        env = "TOPK_INGEST_JWT_RS256_PUBLIC_KEY_FILE",
        default_value = "",
        hide_default_value = true
    )]
    pub jwt_rs256_public_key_file: String,
    /// When set, a token's `iss` must equal it.
    #[arg(
        long,
        env = "TOPK_INGEST_JWT_ISSUER",
        default_value = "",
        hide_default_value = true
    )]
    pub jwt_issuer: String,
    /// When set, a token's `aud` must contain it. With auth on, set it (or
    /// --jwt-allow-any-audience): the server refuses to start without either.
    #[arg(
        long,
        env = "TOPK_INGEST_JWT_AUDIENCE",
        default_value = "",
        hide_default_value = true
    )]
    pub jwt_audience: String,
    /// With auth on and no jwt_audience, accept tokens whatever their `aud`.
    #[arg(long, env = "TOPK_INGEST_JWT_ALLOW_ANY_AUDIENCE")]
    pub jwt_allow_any_audience: bool,
}

/// A configuration that cannot work, refused at startup.
#[derive(Debug, thiserror::Error)]
pub enum IngestConfigError {
    #[error(
        "{which}_burst_events is {burst}, below max_events_per_request {max}: a full batch \
         could never pass the rate limit"
    )]
    BurstBelowBatch {
        which: &'static str,
        burst: u32,
        max: u32,
    },
    #[error(transparent)]
    Auth(#[from] topk_api::auth::AuthConfigError),
    #[error("cannot create the Kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl IngestConfig {
    /// The defaults (and whatever `TOPK_*` env vars are set) with `brokers` and `topic`: a
    /// starting point for tests and benchmarks.
    pub fn with_kafka(brokers: &str, topic: &str) -> Self {
        let mut config = Self::parse_from(["topk-ingest"]);
        config.kafka_brokers = brokers.to_owned();
        config.plays_topic = topic.to_owned();
        config
    }

    pub fn kafka_deadline(&self) -> Duration {
        Duration::from_millis(self.kafka_deadline_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn max_body_bytes(&self) -> usize {
        usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX)
    }

    pub fn edge_limits(&self) -> topk_api::edge::EdgeLimits {
        topk_api::edge::EdgeLimits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
        }
    }

    pub fn jwt_settings(&self) -> JwtSettings<'_> {
        JwtSettings {
            env_prefix: "TOPK_INGEST",
            auth_mode: self.auth_mode,
            hs256_secret: &self.jwt_hs256_secret,
            rs256_public_key_file: &self.jwt_rs256_public_key_file,
            issuer: non_empty(&self.jwt_issuer),
            audience: non_empty(&self.jwt_audience),
            allow_any_audience: self.jwt_allow_any_audience,
        }
    }

    /// Refuses rate limits a full batch could never pass.
    pub fn validate(&self) -> Result<(), IngestConfigError> {
        for (which, rate, burst) in [
            ("user", self.user_events_per_second, self.user_burst_events),
            (
                "service",
                self.service_events_per_second,
                self.service_burst_events,
            ),
        ] {
            if rate > 0 && burst < self.max_events_per_request {
                return Err(IngestConfigError::BurstBelowBatch {
                    which,
                    burst,
                    max: self.max_events_per_request,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topk_core::config::load_from;

    #[test]
    fn defaults_are_local_unauthenticated_and_valid() {
        let config: IngestConfig = load_from(["topk-ingest"]).unwrap();
        assert_eq!(config.auth_mode, AuthMode::Off);
        assert_eq!(config.kafka_deadline(), Duration::from_secs(5));
        assert_eq!(config.max_body_bytes(), 1 << 20);
        config.validate().unwrap();
    }

    #[test]
    fn a_burst_smaller_than_a_batch_is_refused() {
        let config: IngestConfig = load_from([
            "topk-ingest",
            "--user-burst-events",
            "10",
            "--max-events-per-request",
            "100",
        ])
        .unwrap();
        let error = config.validate().unwrap_err();
        assert!(
            error.to_string().contains("user_burst_events is 10"),
            "{error}"
        );
        // With the limit off, the burst does not matter.
        let config: IngestConfig = load_from([
            "topk-ingest",
            "--user-events-per-second",
            "0",
            "--user-burst-events",
            "10",
            "--max-events-per-request",
            "100",
        ])
        .unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn missing_audience_names_the_ingest_variables() {
        let mut config: IngestConfig = load_from(["topk-ingest"]).unwrap();
        config.auth_mode = AuthMode::Hs256;
        config.jwt_hs256_secret = "x".repeat(32);
        let error = topk_api::auth::Authenticator::from_settings(&config.jwt_settings())
            .unwrap_err()
            .to_string();
        assert!(error.contains("TOPK_INGEST_JWT_AUDIENCE"), "{error}");
    }
}
