//! `topk-aggregator`: Kafka play events to exactly-once per-minute counts in ClickHouse.
//!
//! - [`consumer`]: the polling thread, rebalances and claims, routing, memory budget,
//!   advisory commits.
//! - [`shard`]: parallel workers that parse, deduplicate, count and flush partitions.
//! - [`partition`]: one partition's state; [`buffer`]: per-minute counts.
//! - [`checkpoint`]: why flushes count exactly once (claims, commits, the cases covered),
//!   and the background removal of rows that never count.
//! - [`flush`]: writing a flush (fence check, dead letters, raw-event archive, minute rows,
//!   commits) with retries, settling unknown outcomes from ClickHouse;
//!   [`dead_letter`]: rejected events.
//! - [`health`]: `/healthz` (stalled loop, failed or unconsumed partitions);
//!   [`metrics`]: Prometheus metrics and the endpoint.

pub mod buffer;
pub mod checkpoint;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod error;
pub mod flush;
pub mod health;
pub mod metrics;
pub mod partition;
pub mod record;
pub mod shard;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use topk_core::claims::ClaimOwner;

use crate::config::AggregatorConfig;
use crate::consumer::{Poller, PollerParts};
use crate::dead_letter::DeadLetterQueue;
use crate::error::AggregatorError;
use crate::flush::FlushTarget;
use crate::health::{Health, Monitor};
use crate::shard::{Shard, ShardMemory, ShardSettings};
use topk_core::coordination::Coordinator;

/// Commands queued per shard before the polling thread waits.
const SHARD_QUEUE: usize = 64;
/// How long to wait for ClickHouse (and the schema) at start-up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
/// A flush insert that takes longer than this is treated as failed (and repaired).
const INSERT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the aggregator until `shutdown` resolves (SIGTERM/SIGINT in the binary), then
/// flushes, commits and returns.
pub async fn run(
    config: AggregatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AggregatorError> {
    config
        .extra_consumer_properties()
        .map_err(AggregatorError::Config)?;
    let clickhouse = insert_settings(config.clickhouse.client()).await?;
    wait_for_schema(&clickhouse).await?;
    let owner = ClaimOwner {
        consumer_group: config.kafka_group_id.clone(),
        topic: config.plays_topic.clone(),
        worker: config.worker_name(),
    };
    topk_core::claims::check_owner(&clickhouse, &owner)
        .await
        .map_err(|error| AggregatorError::Config(error.to_string()))?;
    let coordinator = Coordinator::new(&config.keeper, &config.clickhouse.clickhouse_database)
        .map_err(|error| AggregatorError::Config(error.to_string()))?;
    match coordinator.keeper() {
        Some(keeper) => {
            tracing::info!(keeper = keeper.hosts(), "claims and commits through Keeper")
        }
        None if config.clickhouse.cluster_layout().is_some() => tracing::warn!(
            "claims and commits in ClickHouse on a cluster: every aggregator must write through \
             the same node (set --keeper-hosts to lift that)"
        ),
        None => {}
    }
    if let Some(layout) = config.clickhouse.cluster_layout() {
        layout.warn_if_alters_are_unsafe(&clickhouse).await;
    }
    let dead_letters = DeadLetterQueue::new(
        &config.kafka_brokers,
        &config.dead_letter_topic,
        &config.plays_topic,
    )?;
    let health = Arc::new(Health::default());
    health.beat();
    if !config.metrics_listen.is_empty() {
        let prometheus = topk_core::telemetry::install_metrics();
        let listener = tokio::net::TcpListener::bind(&config.metrics_listen).await?;
        tracing::info!(address = %listener.local_addr()?, "metrics endpoint listening");
        let router = metrics::router(prometheus, health.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "metrics endpoint stopped");
            }
        });
    }

    let archive = if config.archive {
        let writer = topk_archive::ArchiveWriter::from_options(&config.s3).await;
        tracing::info!(bucket = %config.s3.s3_bucket, prefix = %config.s3.s3_prefix, "archiving raw events");
        Some(writer)
    } else {
        tracing::warn!("archiving is off: raw events are not kept");
        None
    };
    let shard_count = config.shard_count();
    let memory: Arc<Vec<ShardMemory>> =
        Arc::new((0..shard_count).map(|_| ShardMemory::default()).collect());
    let (requests_sender, requests) = std::sync::mpsc::channel();
    let settings = ShardSettings {
        target: FlushTarget {
            client: clickhouse.clone(),
            placement: config.clickhouse.placement(),
            coordinator: coordinator.clone(),
            owner: owner.clone(),
            dead_letters: dead_letters.clone(),
            archive,
            insert_timeout: INSERT_TIMEOUT,
            max_backoff: config.max_retry_backoff(),
            cleanup_delay: config.cleanup_delay(),
        },
        flush_interval: config.flush_interval(),
        max_buffer_rows: config.max_buffer_rows,
        dedup_horizon_ms: config.dedup_horizon_ms,
        chart_min_played_ms: config.chart_min_played_ms,
        archive: config.archive,
        memory: memory.clone(),
        requests: requests_sender,
    };
    let mut shard_senders = Vec::with_capacity(shard_count);
    let mut shard_tasks = Vec::with_capacity(shard_count);
    for shard_id in 0..shard_count {
        let (sender, receiver) = mpsc::channel(SHARD_QUEUE);
        shard_senders.push(sender);
        shard_tasks.push(tokio::spawn(
            Shard::new(shard_id, settings.clone()).run(receiver),
        ));
    }
    drop(settings);

    let poller = Poller::new(
        &config,
        tokio::runtime::Handle::current(),
        PollerParts {
            shards: shard_senders,
            memory,
            requests,
            health: health.clone(),
            clickhouse: clickhouse.clone(),
            placement: config.clickhouse.placement(),
            coordinator: coordinator.clone(),
            owner,
        },
    )?;
    let monitor = Monitor::new(
        &config.kafka_client_config(),
        &config.plays_topic,
        clickhouse,
        config.flush_interval(),
    )?;
    tokio::spawn(monitor.run(health));
    tracing::info!(
        topic = %config.plays_topic,
        group = %config.kafka_group_id,
        worker = %config.worker_name(),
        shards = shard_count,
        flush_interval_ms = config.flush_interval_ms,
        "aggregator started"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stop_for_signal = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested");
        stop_for_signal.store(true, Ordering::Relaxed);
    });
    let polling = std::thread::Builder::new()
        .name("kafka-poll".to_owned())
        .spawn(move || poller.run(&stop))?;
    let result = tokio::task::spawn_blocking(move || polling.join())
        .await
        .map_err(|error| AggregatorError::Fatal(format!("polling thread: {error}")))?
        .map_err(|_| AggregatorError::Fatal("polling thread panicked".to_owned()))?;
    for task in shard_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    dead_letters.flush(Duration::from_secs(5));
    if result.is_ok() {
        tracing::info!("aggregator stopped cleanly");
    }
    result
}

/// The client's settings for the aggregator's writes: `async_insert = 0` where the server
/// knows the setting (ClickHouse 18.16 does not; current releases turn it on by default,
/// which would acknowledge an insert before its rows are in a part).
async fn insert_settings(
    client: clickhouse::Client,
) -> Result<clickhouse::Client, AggregatorError> {
    topk_core::db::wait_until_ready(&client, STARTUP_TIMEOUT).await?;
    let known: u64 = client
        .query("SELECT count() FROM system.settings WHERE name = 'async_insert'")
        .fetch_one()
        .await?;
    Ok(if known > 0 {
        client.with_setting("async_insert", "0")
    } else {
        client
    })
}

async fn wait_for_schema(clickhouse: &clickhouse::Client) -> Result<(), AggregatorError> {
    topk_core::db::wait_until_ready(clickhouse, STARTUP_TIMEOUT).await?;
    let applied = topk_core::migrate::applied_version(clickhouse).await?;
    let expected = topk_core::migrate::latest_version();
    if applied.unwrap_or(0) < expected {
        return Err(AggregatorError::Config(format!(
            "the ClickHouse schema is at version {applied:?}, this build needs {expected}: \
             run `topk-rollup migrate` first"
        )));
    }
    Ok(())
}
