//! Whether this worker is doing its job, for `/healthz` and an orchestrator that restarts
//! it when not:
//!
//! - the polling loop goes round (a stuck loop stops heartbeats and consumption);
//! - no partition failed (records missing past the checkpoint that re-reading does not
//!   bring back: see `PartitionState`);
//! - the worker is not *starved*: holding no partition for a while although some partition
//!   has records that nobody consumes. A consumer group can leave a partition to a member
//!   that is gone (a broker that does not evict it: the test broker tansu never evicts a
//!   killed member and can stall a group after a paused static member, see
//!   ../shared/ENVIRONMENT.md) or to nobody; restarting the workers is what recovers it.
//!
//! The [`Monitor`] compares each partition's end offset in Kafka with what is committed in
//! ClickHouse every [`CHECK_EVERY`]: a partition with records past its committed offset whose
//! committed offset did not move for [`STALLED_AFTER`] is *unconsumed*
//! (`topk_aggregator_unconsumed_partitions`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use topk_core::committed::CommittedFlushes;

/// How often the monitor compares Kafka with ClickHouse.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A partition with unconsumed records whose committed offset did not move for this long is
/// reported unconsumed (added to the flush interval).
pub const STALLED_AFTER: Duration = Duration::from_secs(30);
/// How long a worker may hold no partition while others are unconsumed before it reports
/// itself starved.
pub const STARVED_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Health {
    last_poll_ms: AtomicI64,
    assigned: AtomicUsize,
    /// When the worker last held a partition (ms since epoch; 0: never).
    last_assigned_ms: AtomicI64,
    failed: Mutex<BTreeMap<i32, i64>>,
    unconsumed: Mutex<BTreeSet<i32>>,
}

/// What `/healthz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy(String),
}

impl Health {
    pub fn beat(&self) {
        self.last_poll_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn set_assigned(&self, partitions: usize) {
        self.assigned.store(partitions, Ordering::Relaxed);
        metrics::gauge!("topk_aggregator_assigned_partitions").set(partitions as f64);
        let now = chrono::Utc::now().timestamp_millis();
        if partitions > 0 || self.last_assigned_ms.load(Ordering::Relaxed) == 0 {
            self.last_assigned_ms.store(now, Ordering::Relaxed);
        }
    }

    pub fn partition_failed(&self, partition: i32, expected: i64) {
        if let Ok(mut failed) = self.failed.lock() {
            failed.insert(partition, expected);
            metrics::gauge!("topk_aggregator_failed_partitions").set(failed.len() as f64);
        }
    }

    pub fn is_failed(&self, partition: i32) -> bool {
        self.failed
            .lock()
            .is_ok_and(|failed| failed.contains_key(&partition))
    }

    fn set_unconsumed(&self, partitions: BTreeSet<i32>) {
        metrics::gauge!("topk_aggregator_unconsumed_partitions").set(partitions.len() as f64);
        if let Ok(mut unconsumed) = self.unconsumed.lock() {
            *unconsumed = partitions;
        }
    }

    pub fn unconsumed(&self) -> BTreeSet<i32> {
        self.unconsumed
            .lock()
            .map(|unconsumed| unconsumed.clone())
            .unwrap_or_default()
    }

    /// Whether the worker holds no partition for [`STARVED_AFTER`] while some partition is
    /// unconsumed.
    pub fn starved(&self) -> bool {
        let idle_ms =
            chrono::Utc::now().timestamp_millis() - self.last_assigned_ms.load(Ordering::Relaxed);
        self.assigned.load(Ordering::Relaxed) == 0
            && idle_ms >= STARVED_AFTER.as_millis() as i64
            && !self.unconsumed().is_empty()
    }

    pub fn verdict(&self) -> Verdict {
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        if chrono::Utc::now().timestamp_millis() - last >= 60_000 {
            return Verdict::Unhealthy("polling loop stalled".to_owned());
        }
        if let Ok(failed) = self.failed.lock() {
            if let Some((partition, expected)) = failed.iter().next() {
                return Verdict::Unhealthy(format!(
                    "partition {partition} failed: offsets before {expected} are missing past the checkpoint"
                ));
            }
        }
        if self.starved() {
            return Verdict::Unhealthy(format!(
                "this worker holds no partition while partitions {:?} are not consumed; restart it to rejoin the group",
                self.unconsumed()
            ));
        }
        Verdict::Healthy
    }
}

/// Compares Kafka's end offsets with ClickHouse's committed offsets every [`CHECK_EVERY`].
pub struct Monitor {
    kafka: BaseConsumer,
    topic: String,
    clickhouse: clickhouse::Client,
    stalled_after: Duration,
    /// Per partition: the committed offset last seen and since when it has not moved.
    progress: BTreeMap<i32, (i64, Instant)>,
}

impl Monitor {
    pub fn new(
        kafka_config: &ClientConfig,
        topic: &str,
        clickhouse: clickhouse::Client,
        flush_interval: Duration,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            kafka: kafka_config.create()?,
            topic: topic.to_owned(),
            clickhouse,
            stalled_after: STALLED_AFTER + flush_interval,
            progress: BTreeMap::new(),
        })
    }

    /// Runs forever, updating `health`.
    pub async fn run(mut self, health: std::sync::Arc<Health>) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            match self.check().await {
                Ok(unconsumed) => {
                    if !unconsumed.is_empty() {
                        tracing::warn!(partitions = ?unconsumed, starved = health.starved(), "partitions have records nobody consumes");
                    }
                    health.set_unconsumed(unconsumed);
                }
                Err(error) => tracing::debug!(%error, "consumption check failed"),
            }
        }
    }

    async fn check(&mut self) -> Result<BTreeSet<i32>, String> {
        let committed = CommittedFlushes::read(&self.clickhouse)
            .await
            .map_err(|error| error.to_string())?
            .counted_through();
        let ends = tokio::task::block_in_place(|| self.end_offsets())?;
        let now = Instant::now();
        let mut unconsumed = BTreeSet::new();
        for (partition, end) in ends {
            let counted = u32::try_from(partition)
                .ok()
                .and_then(|partition| committed.get(&partition).copied())
                .unwrap_or(-1);
            let entry = self.progress.entry(partition).or_insert((counted, now));
            if entry.0 != counted {
                *entry = (counted, now);
            }
            if end > counted + 1 && now.duration_since(entry.1) >= self.stalled_after {
                unconsumed.insert(partition);
            }
        }
        Ok(unconsumed)
    }

    fn end_offsets(&self) -> Result<Vec<(i32, i64)>, String> {
        let timeout = Duration::from_secs(5);
        let metadata = self
            .kafka
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|error| error.to_string())?;
        let Some(topic) = metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == self.topic)
        else {
            return Ok(Vec::new());
        };
        topic
            .partitions()
            .iter()
            .map(|partition| {
                self.kafka
                    .fetch_watermarks(&self.topic, partition.id(), timeout)
                    .map(|(_, high)| (partition.id(), high))
                    .map_err(|error| error.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_with_partitions_is_never_starved() {
        let health = Health::default();
        health.beat();
        health.set_assigned(2);
        health.set_unconsumed([3].into_iter().collect());
        assert!(!health.starved());
        assert_eq!(health.verdict(), Verdict::Healthy);
    }

    #[test]
    fn a_worker_idle_while_partitions_are_unconsumed_is_starved() {
        let health = Health::default();
        health.beat();
        health.set_assigned(0);
        health.set_unconsumed([1, 3].into_iter().collect());
        // Not yet: it only just became idle.
        assert!(!health.starved());
        let long_ago = chrono::Utc::now().timestamp_millis() - 31_000;
        health.last_assigned_ms.store(long_ago, Ordering::Relaxed);
        assert!(health.starved());
        assert!(matches!(health.verdict(), Verdict::Unhealthy(reason) if reason.contains("1, 3")));
        health.set_unconsumed(BTreeSet::new());
        assert_eq!(health.verdict(), Verdict::Healthy);
    }

    #[test]
    fn a_failed_partition_is_unhealthy() {
        let health = Health::default();
        health.beat();
        health.set_assigned(1);
        health.partition_failed(2, 1_000);
        assert!(health.is_failed(2));
        assert!(
            matches!(health.verdict(), Verdict::Unhealthy(reason) if reason.contains("partition 2"))
        );
    }
}
