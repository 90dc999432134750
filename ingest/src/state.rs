//! What every request shares: the producer, the authenticator, the rate limits, the metrics
//! handle and the limits of a request.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use topk_api::auth::Authenticator;

use crate::config::{IngestConfig, IngestConfigError};
use crate::producer::PlayProducer;
use crate::rate_limit::RateLimits;

#[derive(Debug, Clone)]
pub struct IngestState {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    producer: PlayProducer,
    authenticator: Authenticator,
    rate_limits: RateLimits,
    metrics_handle: PrometheusHandle,
    /// Permits of the concurrency limit on `POST /v1/plays`.
    in_flight: Arc<Semaphore>,
    max_body_bytes: usize,
    max_events_per_request: usize,
    kafka_deadline: Duration,
    edge_limits: topk_api::edge::EdgeLimits,
}

impl IngestState {
    /// Checks the configuration and creates the producer (which connects in the background:
    /// an unreachable broker is not an error here, `/readyz` says it).
    pub fn from_config(config: &IngestConfig) -> Result<Self, IngestConfigError> {
        config.validate()?;
        let permits = usize::try_from(config.max_concurrent_requests).unwrap_or(usize::MAX);
        Ok(Self {
            shared: Arc::new(Shared {
                producer: PlayProducer::new(config)?,
                authenticator: Authenticator::from_settings(&config.jwt_settings())?,
                rate_limits: RateLimits::from_config(config),
                metrics_handle: topk_core::telemetry::install_metrics(),
                in_flight: Arc::new(Semaphore::new(permits)),
                max_body_bytes: config.max_body_bytes(),
                max_events_per_request: usize::try_from(config.max_events_per_request)
                    .unwrap_or(usize::MAX),
                kafka_deadline: config.kafka_deadline(),
                edge_limits: config.edge_limits(),
            }),
        })
    }

    pub fn producer(&self) -> &PlayProducer {
        &self.shared.producer
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.shared.authenticator
    }

    pub fn rate_limits(&self) -> &RateLimits {
        &self.shared.rate_limits
    }

    pub fn metrics_handle(&self) -> &PrometheusHandle {
        &self.shared.metrics_handle
    }

    pub fn in_flight(&self) -> Arc<Semaphore> {
        Arc::clone(&self.shared.in_flight)
    }

    pub fn max_body_bytes(&self) -> usize {
        self.shared.max_body_bytes
    }

    pub fn max_events_per_request(&self) -> usize {
        self.shared.max_events_per_request
    }

    pub fn kafka_deadline(&self) -> Duration {
        self.shared.kafka_deadline
    }

    /// The whole request's limit: the Kafka deadline plus time to read the body and answer.
    pub fn request_timeout(&self) -> Duration {
        self.shared.kafka_deadline + Duration::from_secs(5)
    }

    pub fn edge_limits(&self) -> topk_api::edge::EdgeLimits {
        self.shared.edge_limits
    }
}
