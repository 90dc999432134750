//! The aggregator's options: file (`--config`), then env, then flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use topk_archive::S3Options;
use topk_core::db::ClickHouseOptions;

/// Consumes play events from Kafka and flushes exactly-once per-minute counts to ClickHouse.
///
/// Run several processes with the same --kafka-group-id to scale out (up to the partition
/// count). Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT: flushed and committed),
/// 1 on a fatal error or when the shutdown deadline passed with data not yet flushed (it is
/// re-read from Kafka on the next start, nothing is lost), 2 on bad usage.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(name = "topk-aggregator", version, about, long_about)]
pub struct AggregatorConfig {
    /// TOML file with any of the options below (flat keys, e.g. `kafka_brokers = "..."`);
    /// env vars and flags override it.
    #[arg(long, env = "TOPK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TOPK_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Topic of play events.
    #[arg(long, env = "TOPK_PLAYS_TOPIC", default_value = "plays")]
    pub plays_topic: String,
    /// Topic that receives events that break the contract, with the reason in headers.
    #[arg(
        long,
        env = "TOPK_DEAD_LETTER_TOPIC",
        default_value = "plays-dead-letter"
    )]
    pub dead_letter_topic: String,
    /// Consumer group shared by all aggregator processes.
    #[arg(long, env = "TOPK_KAFKA_GROUP_ID", default_value = "topk-aggregator")]
    pub kafka_group_id: String,
    /// Name of this worker in logs and checkpoints (default: hostname-pid).
    #[arg(long, env = "TOPK_WORKER_ID")]
    pub worker_id: Option<String>,
    /// How often buffered counts are flushed to ClickHouse, in milliseconds: how fresh the
    /// API's answers are (1 s: plays visible within ≈ 2 s, measured by the staleness
    /// benchmark with the part counts it leaves in ClickHouse; docs/operations.md).
    #[arg(long, env = "TOPK_FLUSH_INTERVAL_MS", default_value_t = 1_000)]
    pub flush_interval_ms: u64,
    /// A shard flushes early once it buffers this many (user, song, minute) rows.
    #[arg(long, env = "TOPK_MAX_BUFFER_ROWS", default_value_t = 1_000_000)]
    pub max_buffer_rows: usize,
    /// Memory budget of the process in MiB. Consumption pauses when buffered counts,
    /// duplicate-filter state and records awaiting the archive reach a quarter of it (the
    /// rest is Kafka's prefetch, a sixteenth, and the runtime, clients, flush copies and
    /// allocator slack: at a third, a ClickHouse outage peaked at 94 % of a 256 MiB limit).
    #[arg(long, env = "TOPK_MEMORY_LIMIT_MB", default_value_t = 512)]
    pub memory_limit_mb: u64,
    /// Duplicate horizon, ms of event time: an event_id seen again before the partition's
    /// watermark (its newest event time) has moved this far past the id's last sighting
    /// counts once.
    #[arg(long, env = "TOPK_DEDUP_HORIZON_MS", default_value_t = 600_000)]
    pub dedup_horizon_ms: i64,
    /// The shortest play (`played_ms`) that counts for the charts; a play that does not say
    /// how long it was played counts. The users' own top songs count every play. Applies to
    /// the plays counted from now on: keep it equal on every aggregator (and on `topk-rollup
    /// restore`).
    #[arg(long, env = "TOPK_CHART_MIN_PLAYED_MS", default_value_t = topk_core::event::DEFAULT_CHART_MIN_PLAYED_MS)]
    pub chart_min_played_ms: u64,
    /// Worker tasks that parse and count (partitions are spread over them);
    /// 0 means one per CPU core.
    #[arg(long, env = "TOPK_SHARDS", default_value_t = 0)]
    pub shards: usize,
    /// Address of the /metrics and /healthz HTTP endpoint; empty disables it.
    #[arg(long, env = "TOPK_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,
    /// On SIGTERM/SIGINT, how long flushing and committing may take before exiting.
    #[arg(long, env = "TOPK_SHUTDOWN_TIMEOUT_MS", default_value_t = 30_000)]
    pub shutdown_timeout_ms: u64,
    /// Longest wait between ClickHouse retries (backoff starts at 100 ms and doubles).
    #[arg(long, env = "TOPK_MAX_RETRY_BACKOFF_MS", default_value_t = 5_000)]
    pub max_retry_backoff_ms: u64,
    /// How long after taking a partition over the rows of the previous owner's unfinished
    /// flushes are deleted, in milliseconds. Those rows never count (readers count committed
    /// flushes only); the DELETE only frees their space. It waits out ClickHouse's ZooKeeper
    /// session timeout (`<zookeeper><session_timeout_ms>`, 30 s by default; keep this above
    /// it): an owner that died mid-insert, with its ClickHouse node, holds a block number
    /// until its session expires. Until then a mutation cannot finish on any version, and
    /// ClickHouse 18.x replicas crash when they try to finalize it (docs/operations.md).
    #[arg(long, env = "TOPK_CLEANUP_DELAY_MS", default_value_t = 60_000)]
    pub cleanup_delay_ms: u64,
    /// Extra librdkafka consumer properties, `key=value` pairs separated by commas
    /// (e.g. `security.protocol=ssl,fetch.max.bytes=1048576`).
    #[arg(long, env = "TOPK_KAFKA_CONSUMER_PROPERTIES", default_value = "")]
    pub kafka_consumer_properties: String,
    /// Archive every consumed event (valid or not) to S3 before its flush counts it.
    #[arg(long, env = "TOPK_ARCHIVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub archive: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub clickhouse: ClickHouseOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub keeper: topk_core::keeper::KeeperOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub s3: S3Options,
}

impl AggregatorConfig {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms.max(10))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn max_retry_backoff(&self) -> Duration {
        Duration::from_millis(self.max_retry_backoff_ms.max(100))
    }

    pub fn cleanup_delay(&self) -> Duration {
        Duration::from_millis(self.cleanup_delay_ms)
    }

    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism().map_or(2, |cores| cores.get())
    }

    /// Bytes of buffered counts and duplicate-filter state at which consumption pauses.
    pub fn buffer_budget_bytes(&self) -> usize {
        (self.memory_limit_mb as usize * 1024 * 1024) / 4
    }

    /// librdkafka's prefetch queue size, KiB: a sixteenth of the memory limit, between
    /// 1 MiB and 64 MiB. One fetch response is bounded by the same size.
    pub fn kafka_queue_kbytes(&self) -> u64 {
        (self.memory_limit_mb * 1024 / 16).clamp(1024, 64 * 1024)
    }

    pub fn worker_name(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "aggregator".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The librdkafka settings of the consumer group member.
    pub fn consumer_config(&self) -> rdkafka::config::ClientConfig {
        let mut client_config = self.kafka_client_config();
        client_config
            .set("group.id", &self.kafka_group_id)
            .set("client.id", self.worker_name())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range,roundrobin")
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "600000")
            .set(
                "queued.max.messages.kbytes",
                self.kafka_queue_kbytes().to_string(),
            )
            // One fetch response is held whole before it reaches the queue: bounded by the
            // same size (librdkafka's default, 50 MiB, is a fifth of a 256 MiB limit).
            .set(
                "fetch.max.bytes",
                (self.kafka_queue_kbytes() * 1024).to_string(),
            );
        // The operator's properties win (e.g. group.instance.id, session.timeout.ms).
        for (key, value) in self.extra_consumer_properties().unwrap_or_default() {
            client_config.set(key, value);
        }
        client_config
    }

    /// The brokers and the operator's connection properties (security, timeouts), without
    /// group membership: for clients that only read metadata and offsets.
    pub fn kafka_client_config(&self) -> rdkafka::config::ClientConfig {
        let mut client_config = rdkafka::config::ClientConfig::new();
        client_config.set("bootstrap.servers", &self.kafka_brokers);
        for (key, value) in self.extra_consumer_properties().unwrap_or_default() {
            if !key.starts_with("group.") {
                client_config.set(key, value);
            }
        }
        client_config
    }

    /// The extra consumer properties as pairs.
    pub fn extra_consumer_properties(&self) -> Result<Vec<(String, String)>, String> {
        self.kafka_consumer_properties
            .split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                pair.split_once('=')
                    .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
                    .ok_or_else(|| format!("kafka consumer property `{pair}` is not key=value"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let config: AggregatorConfig = topk_core::config::load_from(["topk-aggregator"]).unwrap();
        assert_eq!(config.flush_interval(), Duration::from_secs(1));
        assert_eq!(config.dedup_horizon_ms, 10 * 60 * 1000);
        assert_eq!(config.buffer_budget_bytes(), 512 * 1024 * 1024 / 4);
        assert_eq!(config.kafka_queue_kbytes(), 32 * 1024);
    }

    #[test]
    fn consumer_properties_parse() {
        let mut config: AggregatorConfig =
            topk_core::config::load_from(["topk-aggregator"]).unwrap();
        config.kafka_consumer_properties = "a=1, b = two ,".to_owned();
        assert_eq!(
            config.extra_consumer_properties().unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "two".into())]
        );
        config.kafka_consumer_properties = "broken".to_owned();
        assert!(config.extra_consumer_properties().is_err());
    }
}
