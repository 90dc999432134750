//! The aggregator's Prometheus metrics and its `/metrics` + `/healthz` endpoint.
//!
//! - `topk_aggregator_events_total{outcome}`: counted, duplicate, rejected, replayed, skipped
//! - `topk_aggregator_dead_letters_total{reason}`: rejected events by reason
//! - `topk_aggregator_flushes_total{result}`, `topk_aggregator_flush_rows_total`,
//!   `topk_aggregator_flush_duration_seconds`, and per step of an attempt
//!   `topk_aggregator_flush_step_seconds{step}` (`claims`, `dead_letters`, `archive`, `rows`,
//!   `commits`; an attempt slower than 1 s is also logged as "slow flush" with each step's time)
//! - `topk_aggregator_buffer_rows`, `topk_aggregator_buffer_bytes`: per shard
//! - `topk_aggregator_consumer_lag{partition}`: from librdkafka statistics
//! - `topk_aggregator_paused`: 1 while consumption is paused by the memory budget
//! - `topk_aggregator_offset_gaps_total`: gaps in a partition's offsets, each answered by
//!   reading the partition again from the missing offset (should stay 0)
//! - `topk_aggregator_claims_total{reason}`: partitions claimed (`assigned`) or claims
//!   renewed after a write with an unknown outcome (`renewed`)
//! - `topk_aggregator_fenced_total`: flushes dropped because a newer claim owns the partition
//! - `topk_aggregator_assigned_partitions`, `topk_aggregator_unconsumed_partitions`,
//!   `topk_aggregator_failed_partitions`: see [`crate::health`]

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use topk_core::event::RejectReason;

use crate::health::{Health, Verdict};
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
            Outcome::Skipped | Outcome::Gap { .. } => self.skipped += 1,
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

/// One step of a flush attempt (`claims`, `dead_letters`, `archive`, `rows`, `commits`).
pub fn flush_step(step: &'static str, took: Duration) {
    metrics::histogram!("topk_aggregator_flush_step_seconds", "step" => step)
        .record(took.as_secs_f64());
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

pub fn offset_gap() {
    metrics::counter!("topk_aggregator_offset_gaps_total").increment(1);
}

pub fn claimed() {
    metrics::counter!("topk_aggregator_claims_total", "reason" => "assigned").increment(1);
}

pub fn claim_renewed() {
    metrics::counter!("topk_aggregator_claims_total", "reason" => "renewed").increment(1);
}

pub fn fenced() {
    metrics::counter!("topk_aggregator_fenced_total").increment(1);
}

#[derive(Clone)]
struct EndpointState {
    prometheus: PrometheusHandle,
    health: Arc<Health>,
}

/// `/metrics` (Prometheus text) and `/healthz` (200 while the worker does its job, 503 with
/// the reason otherwise: see [`crate::health`]).
pub fn router(prometheus: PrometheusHandle, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(EndpointState { prometheus, health })
}

async fn render_metrics(State(state): State<EndpointState>) -> String {
    state.prometheus.render()
}

async fn healthz(State(state): State<EndpointState>) -> (StatusCode, String) {
    match state.health.verdict() {
        Verdict::Healthy => (StatusCode::OK, "ok\n".to_owned()),
        Verdict::Unhealthy(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
