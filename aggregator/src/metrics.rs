//! The aggregator's Prometheus metrics and its `/metrics` + `/healthz` endpoint.
//!
//! - `topk_aggregator_events_total{outcome}`: counted, duplicate, rejected, replayed, skipped
//! - `topk_aggregator_dead_letters_total{reason}`: rejected events by reason
//! - `topk_aggregator_flushes_total{result}`, `topk_aggregator_flush_rows_total`,
//!   `topk_aggregator_flush_duration_seconds`
//! - `topk_aggregator_buffer_rows`, `topk_aggregator_buffer_bytes`: per shard
//! - `topk_aggregator_consumer_lag{partition}`: from librdkafka statistics
//! - `topk_aggregator_paused`: 1 while consumption is paused by the memory budget
//! - `topk_aggregator_offset_gaps_total`: records skipped by the consumer (should stay 0)

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use topk_core::event::RejectReason;

use crate::partition::Outcome;

/// Counts of one processed batch, recorded with one metrics call per outcome.
#[derive(Debug, Default)]
pub struct BatchOutcomes {
    counted: u64,
    duplicate: u64,
    replayed: u64,
    skipped: u64,
    rejected: Vec<RejectReason>,
}

impl BatchOutcomes {
    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Counted => self.counted += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Replayed => self.replayed += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Rejected(reason) => self.rejected.push(reason),
        }
    }

    pub fn record(self) {
        for (outcome, count) in [
            ("counted", self.counted),
            ("duplicate", self.duplicate),
            ("replayed", self.replayed),
            ("skipped", self.skipped),
            ("rejected", self.rejected.len() as u64),
        ] {
            if count > 0 {
                metrics::counter!("topk_aggregator_events_total", "outcome" => outcome)
                    .increment(count);
            }
        }
        for reason in self.rejected {
            metrics::counter!("topk_aggregator_dead_letters_total", "reason" => reason.as_str())
                .increment(1);
        }
    }
}

pub fn flush_succeeded(rows: usize, took: Duration) {
    metrics::counter!("topk_aggregator_flushes_total", "result" => "ok").increment(1);
    metrics::counter!("topk_aggregator_flush_rows_total").increment(rows as u64);
    metrics::histogram!("topk_aggregator_flush_duration_seconds").record(took.as_secs_f64());
}

pub fn flush_failed() {
    metrics::counter!("topk_aggregator_flushes_total", "result" => "error").increment(1);
}

pub fn buffer(shard: usize, rows: usize, bytes: usize) {
    let shard = shard.to_string();
    metrics::gauge!("topk_aggregator_buffer_rows", "shard" => shard.clone()).set(rows as f64);
    metrics::gauge!("topk_aggregator_buffer_bytes", "shard" => shard).set(bytes as f64);
}

pub fn consumer_lag(partition: i32, lag: i64) {
    metrics::gauge!("topk_aggregator_consumer_lag", "partition" => partition.to_string())
        .set(lag as f64);
}

pub fn paused(is_paused: bool) {
    metrics::gauge!("topk_aggregator_paused").set(if is_paused { 1.0 } else { 0.0 });
}

/// When the polling loop last went round, for `/healthz`.
#[derive(Debug, Default)]
pub struct Liveness {
    last_poll_ms: AtomicI64,
}

impl Liveness {
    pub fn beat(&self) {
        self.last_poll_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    fn is_alive(&self) -> bool {
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        chrono::Utc::now().timestamp_millis() - last < 60_000
    }
}

#[derive(Clone)]
struct EndpointState {
    prometheus: PrometheusHandle,
    liveness: Arc<Liveness>,
}

/// `/metrics` (Prometheus text) and `/healthz` (200 while the polling loop runs).
pub fn router(prometheus: PrometheusHandle, liveness: Arc<Liveness>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(EndpointState {
            prometheus,
            liveness,
        })
}

async fn render_metrics(State(state): State<EndpointState>) -> String {
    state.prometheus.render()
}

async fn healthz(State(state): State<EndpointState>) -> (StatusCode, &'static str) {
    if state.liveness.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "polling loop stalled\n")
    }
}
