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
        let client = config
            .clickhouse
            .client()
            .with_compression(clickhouse::Compression::None);
        let permits = usize::try_from(config.max_concurrent_requests).unwrap_or(usize::MAX);
        Ok(Self {
            shared: Arc::new(Shared {
                store: Store::new(
                    client,
                    config.clickhouse.placement(),
                    config.query_timeout(),
                    config.rolled_days_cache(),
                ),
                authenticator: Authenticator::from_config(config)?,
                metrics_handle: metrics_handle(),
                in_flight: Arc::new(Semaphore::new(permits)),
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

    pub fn in_flight(&self) -> Arc<Semaphore> {
        Arc::clone(&self.shared.in_flight)
    }
}
