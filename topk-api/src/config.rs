//! The API's options: file (`--config`), then env, then flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use topk_core::db::ClickHouseOptions;

/// HTTP API: each user's top songs of the last 7 days.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(name = "topk-api", version, about, long_about = None)]
pub struct ApiConfig {
    /// TOML file with any of the options below (flat keys, e.g. `listen = "..."`);
    /// env vars and flags override it.
    #[arg(long, env = "TOPK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TOPK_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Longest a request waits for ClickHouse before it is answered 503 (milliseconds).
    #[arg(long, env = "TOPK_API_QUERY_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub query_timeout_ms: u64,
    /// Top-songs requests served at once; requests beyond it get an immediate 503 with
    /// `Retry-After` instead of waiting in a queue.
    #[arg(long, env = "TOPK_API_MAX_CONCURRENT_REQUESTS", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// Longest a whole request may take, from its headers to its answer (milliseconds); past
    /// it the answer is 503 with `Retry-After`. Never less than the query timeout plus a
    /// second (the query timeout answers first).
    #[arg(long, env = "TOPK_API_REQUEST_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Longest a client may take to send a request's headers, and to stay idle between
    /// requests on a kept-alive connection, before the connection is closed (milliseconds).
    #[arg(long, env = "TOPK_API_HEADER_READ_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// Open connections at most; further clients wait in the listen backlog until one closes.
    #[arg(long, env = "TOPK_API_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long what the store knows about the window's days (what counts, the rolled-up
    /// days, `data_through`) is reused, in milliseconds: answers are this much older than the
    /// committed counts at most (0 reads it on every request, a few more queries each).
    #[arg(long, env = "TOPK_API_ROLLED_DAYS_CACHE_MS", default_value_t = 1000)]
    pub rolled_days_cache_ms: u64,
    /// Coalesce concurrent top-songs requests: requests waiting at the same time share one
    /// ClickHouse query (`user_id IN (..)`), each answered on its own. `false` sends one
    /// query per request (two for a user with a truncated day).
    #[arg(long, env = "TOPK_API_COALESCE", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "true|false")]
    pub coalesce: bool,
    /// With coalescing: longest a batch waits for more requests before its query is sent,
    /// and only while another batch's query is running (a request that arrives when none is
    /// running is sent at once) (milliseconds; 0 never waits).
    #[arg(long, env = "TOPK_API_COALESCE_WINDOW_MS", default_value_t = 2)]
    pub coalesce_window_ms: u64,
    /// With coalescing: most requests one query serves.
    #[arg(long, env = "TOPK_API_COALESCE_MAX_BATCH", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub coalesce_max_batch: u32,
    /// With coalescing: most batch queries running at once; further requests wait for one
    /// to finish and join the next batch.
    #[arg(long, env = "TOPK_API_COALESCE_MAX_QUERIES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub coalesce_max_queries: u32,
    /// The charts' per-user cap: plays of one song one user counts per UTC hour and region.
    /// Must be the rollup job's (`topk-rollup --chart-user-hour-cap`): days rolled up with
    /// another cap are read from their minute rows, which is slower.
    #[arg(long, env = "TOPK_CHART_USER_HOUR_CAP",
          default_value_t = topk_core::chart::DEFAULT_USER_HOUR_CAP,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub chart_user_hour_cap: u64,
    /// Who may read what: `off` (anyone reads anyone; local use only), `hs256` (JWT signed
    /// with a shared secret) or `rs256` (JWT signed with an RSA key; the server holds the
    /// public key).
    #[arg(long, env = "TOPK_API_AUTH_MODE", value_enum, default_value_t = AuthMode::Off)]
    pub auth_mode: AuthMode,
    // The four options below are strings whose empty default means "unset" (not `Option`), so
    // that the config file can set them: the file may only set options that have a default.
    /// The HS256 shared secret (auth_mode = hs256), at least 32 bytes.
    #[arg(
        long,
        env = "TOPK_API_JWT_HS256_SECRET",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub jwt_hs256_secret: String,
    /// PEM file with the RSA public key that verifies RS256 tokens (auth_mode = rs256).
    #[arg(
        long,
        env = "TOPK_API_JWT_RS256_PUBLIC_KEY_FILE",
        default_value = "",
        hide_default_value = true
    )]
    pub jwt_rs256_public_key_file: String,
    /// When set, a token's `iss` must equal it.
    #[arg(
        long,
        env = "TOPK_API_JWT_ISSUER",
        default_value = "",
        hide_default_value = true
    )]
    pub jwt_issuer: String,
    /// When set, a token's `aud` must contain it. With auth on, set it (or
    /// --jwt-allow-any-audience): the server refuses to start without either.
    #[arg(
        long,
        env = "TOPK_API_JWT_AUDIENCE",
        default_value = "",
        hide_default_value = true
    )]
    pub jwt_audience: String,
    /// With auth on and no jwt_audience, accept tokens whatever their `aud`, including tokens
    /// the identity provider issued for other services. Without this flag (or jwt_audience)
    /// the server refuses to start with auth on.
    #[arg(long, env = "TOPK_API_JWT_ALLOW_ANY_AUDIENCE")]
    pub jwt_allow_any_audience: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub clickhouse: ClickHouseOptions,
}

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Off,
    Hs256,
    Rs256,
}

impl ApiConfig {
    /// The defaults (and whatever `TOPK_*` env vars are set) with `clickhouse` as the database:
    /// a starting point for tests and benchmarks that then set the fields they need.
    pub fn with_clickhouse(clickhouse: ClickHouseOptions) -> Self {
        let mut config = Self::parse_from(["topk-api"]);
        config.clickhouse = clickhouse;
        config
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(
            self.request_timeout_ms
                .max(self.query_timeout_ms.saturating_add(1000)),
        )
    }

    pub fn edge_limits(&self) -> crate::edge::EdgeLimits {
        crate::edge::EdgeLimits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
        }
    }

    pub fn rolled_days_cache(&self) -> Duration {
        Duration::from_millis(self.rolled_days_cache_ms)
    }

    /// The JWT options, for [`crate::auth::Authenticator::from_settings`].
    pub fn jwt_settings(&self) -> crate::auth::JwtSettings<'_> {
        crate::auth::JwtSettings {
            env_prefix: "TOPK_API",
            auth_mode: self.auth_mode,
            hs256_secret: &self.jwt_hs256_secret,
            rs256_public_key_file: &self.jwt_rs256_public_key_file,
            issuer: self.jwt_issuer(),
            audience: self.jwt_audience(),
            allow_any_audience: self.jwt_allow_any_audience,
        }
    }

    /// How requests are coalesced, or `None` when each reads alone.
    pub fn coalesce_options(&self) -> Option<crate::store::CoalesceOptions> {
        self.coalesce.then(|| crate::store::CoalesceOptions {
            max_batch: usize::try_from(self.coalesce_max_batch).unwrap_or(usize::MAX),
            window: Duration::from_millis(self.coalesce_window_ms),
            max_batches_in_flight: usize::try_from(self.coalesce_max_queries).unwrap_or(usize::MAX),
        })
    }

    pub fn jwt_issuer(&self) -> Option<&str> {
        non_empty(&self.jwt_issuer)
    }

    pub fn jwt_audience(&self) -> Option<&str> {
        non_empty(&self.jwt_audience)
    }
}

/// `None` for the empty string: how the string options say "unset".
pub fn non_empty(text: &str) -> Option<&str> {
    Some(text).filter(|text| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use topk_core::config::load_from;

    #[test]
    fn defaults_are_local_and_unauthenticated() {
        let config: ApiConfig = load_from(["topk-api"]).unwrap();
        assert_eq!(config.auth_mode, AuthMode::Off);
        assert_eq!(config.query_timeout(), Duration::from_secs(2));
        assert_eq!(config.rolled_days_cache(), Duration::from_secs(1));
        assert!(config.max_concurrent_requests >= 1);
    }

    #[test]
    fn file_sets_options_and_flags_win() {
        let path =
            std::env::temp_dir().join(format!("topk-api-config-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "auth_mode = \"hs256\"\njwt_hs256_secret = \"s3cret\"\njwt_issuer = \"idp\"\nquery_timeout_ms = 750\n",
        )
        .unwrap();
        let config: ApiConfig = load_from([
            "topk-api",
            "--config",
            path.to_str().unwrap(),
            "--query-timeout-ms",
            "900",
        ])
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.auth_mode, AuthMode::Hs256);
        assert_eq!(config.jwt_hs256_secret, "s3cret");
        assert_eq!(config.jwt_issuer(), Some("idp"));
        assert_eq!(config.jwt_audience(), None);
        assert_eq!(config.query_timeout_ms, 900);
    }

    #[test]
    fn any_audience_is_refused_unless_allowed_by_flag_or_file() {
        let config: ApiConfig = load_from(["topk-api"]).unwrap();
        assert!(!config.jwt_allow_any_audience);
        let config: ApiConfig = load_from(["topk-api", "--jwt-allow-any-audience"]).unwrap();
        assert!(config.jwt_allow_any_audience);
        let path = std::env::temp_dir().join(format!(
            "topk-api-config-any-audience-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, "jwt_allow_any_audience = true\n").unwrap();
        let config: ApiConfig =
            load_from(["topk-api", "--config", path.to_str().unwrap()]).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(config.jwt_allow_any_audience);
    }

    #[test]
    fn example_config_loads_with_auth_on() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topk-api.example.toml");
        let config: ApiConfig = load_from(["topk-api", "--config", path]).unwrap();
        assert_eq!(config.auth_mode, AuthMode::Rs256);
        assert_eq!(config.jwt_audience(), Some("topk-api"));
    }

    #[test]
    fn coalescing_is_on_by_default_and_can_be_switched_off() {
        let config: ApiConfig = load_from(["topk-api"]).unwrap();
        let options = config.coalesce_options().unwrap();
        assert_eq!(options.window, Duration::from_millis(2));
        assert!(options.max_batch > 1 && options.max_batches_in_flight >= 1);
        let config: ApiConfig = load_from(["topk-api", "--coalesce", "false"]).unwrap();
        assert_eq!(config.coalesce_options(), None);
        let path = std::env::temp_dir().join(format!(
            "topk-api-config-coalesce-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, "coalesce = false\ncoalesce_max_batch = 8\n").unwrap();
        let config: ApiConfig =
            load_from(["topk-api", "--config", path.to_str().unwrap()]).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!config.coalesce);
        assert_eq!(config.coalesce_max_batch, 8);
        assert!(load_from::<ApiConfig, _, _>(["topk-api", "--coalesce-max-batch", "0"]).is_err());
    }

    #[test]
    fn zero_timeout_and_zero_concurrency_are_rejected() {
        assert!(load_from::<ApiConfig, _, _>(["topk-api", "--query-timeout-ms", "0"]).is_err());
        assert!(
            load_from::<ApiConfig, _, _>(["topk-api", "--max-concurrent-requests", "0"]).is_err()
        );
        assert!(load_from::<ApiConfig, _, _>(["topk-api", "--auth-mode", "none"]).is_err());
    }
}
