//! What every request shares: the store, the authenticator, the clock, the metrics handle and
//! the concurrency limit's permits.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::auth::{AuthConfigError, Authenticator};
use crate::config::ApiConfig;
use crate::store::Store;

/// Where "now" comes from: the system clock, or a fixed moment (tests and benchmarks that
/// query windows over fixed days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    System,
    Fixed(DateTime<Utc>),
}

impl Clock {
    pub fn now(self) -> DateTime<Utc> {
        match self {
            Self::System => Utc::now(),
            Self::Fixed(now) => now,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppState {
    shared: Arc<Shared>,
    clock: Clock,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    authenticator: Authenticator,
    metrics_handle: PrometheusHandle,
    /// Permits of the concurrency limit, shared by every limited route.
    in_flight: Arc<Semaphore>,
    request_timeout: std::time::Duration,
    edge_limits: crate::edge::EdgeLimits,
    chart_user_hour_cap: u64,
}

/// The process-wide Prometheus recorder, installed once however many apps a process builds.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(topk_core::telemetry::install_metrics)
        .clone()
}

impl AppState {
    pub fn from_config(config: &ApiConfig) -> Result<Self, AuthConfigError> {
        // Responses are a few hundred rows: compressing them costs both sides more CPU than
        // it saves on the wire.
        let mut client = config
            .clickhouse
            .client()
            .with_compression(clickhouse::Compression::None);
        // A request answered 503 at its timeout must not leave its query running in
        // ClickHouse: every query stops there too (whole seconds: 18.16 counts no fractions),
        // unless `--clickhouse-settings` names a limit of its own.
        let configured = |name: &str| {
            config
                .clickhouse
                .clickhouse_settings
                .iter()
                .any(|setting| setting.split_once('=').is_some_and(|(key, _)| key == name))
        };
        if !configured("max_execution_time") {
            let seconds = config.query_timeout().as_millis().div_ceil(1000).max(1);
            client = client.with_setting("max_execution_time", seconds.to_string());
        }
        let permits = usize::try_from(config.max_concurrent_requests).unwrap_or(usize::MAX);
        Ok(Self {
            shared: Arc::new(Shared {
                store: Store::new(
                    client,
                    config.clickhouse.placement(),
                    config.query_timeout(),
                    config.rolled_days_cache(),
                    config.coalesce_options(),
                ),
                authenticator: Authenticator::from_config(config)?,
                metrics_handle: metrics_handle(),
                in_flight: Arc::new(Semaphore::new(permits)),
                request_timeout: config.request_timeout(),
                edge_limits: config.edge_limits(),
                chart_user_hour_cap: config.chart_user_hour_cap,
            }),
            clock: Clock::System,
        })
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.shared.authenticator
    }

    pub fn metrics_handle(&self) -> &PrometheusHandle {
        &self.shared.metrics_handle
    }

    /// The per-request timeout (see [`ApiConfig::request_timeout`]).
    pub fn request_timeout(&self) -> std::time::Duration {
        self.shared.request_timeout
    }

    /// The connection limits [`crate::serve`] applies.
    pub fn edge_limits(&self) -> crate::edge::EdgeLimits {
        self.shared.edge_limits
    }

    /// The charts' per-user cap (`topk_core::chart`), the rollup's.
    pub fn chart_user_hour_cap(&self) -> u64 {
        self.shared.chart_user_hour_cap
    }

    pub fn in_flight(&self) -> Arc<Semaphore> {
        Arc::clone(&self.shared.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_stop_in_clickhouse_at_the_request_timeout() {
        let mut config = ApiConfig::with_clickhouse(topk_core::db::ClickHouseOptions::new(
            "http://127.0.0.1:1",
            "topk",
        ));
        config.query_timeout_ms = 1500;
        let state = AppState::from_config(&config).unwrap();
        assert_eq!(
            state.store().client().get_setting("max_execution_time"),
            Some("2")
        );
        config.query_timeout_ms = 200;
        let state = AppState::from_config(&config).unwrap();
        assert_eq!(
            state.store().client().get_setting("max_execution_time"),
            Some("1")
        );
        config.clickhouse.clickhouse_settings = vec!["max_execution_time=30".to_owned()];
        let state = AppState::from_config(&config).unwrap();
        assert_eq!(
            state.store().client().get_setting("max_execution_time"),
            Some("30")
        );
    }
}
