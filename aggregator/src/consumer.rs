//! The polling thread: the Kafka consumer, rebalances, routing records to shards, pausing on
//! the memory budget, and the advisory offset commits.
//!
//! Offsets follow the checkpoint, not Kafka: `enable.auto.commit` and auto offset store are
//! off; on assignment each partition starts from its ClickHouse checkpoint (after the rows of
//! unfinished flushes are removed); on revoke the shards flush and checkpoint first. The Kafka
//! commit of `checkpoint + 1` after each flush only serves lag monitoring and tools.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::checkpoint::{remove_uncheckpointed_rows, resume_point, ResumePoint};
use crate::config::AggregatorConfig;
use crate::error::AggregatorError;
use crate::metrics::{self, Liveness};
use crate::record::ConsumedRecord;
use crate::shard::{by_shard, shard_of, ShardCommand, ShardMemory};

/// Records sent to a shard at once.
const BATCH_SIZE: usize = 1024;
/// How long an assignment may retry reading checkpoints before the worker gives up.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(240);

/// What the rebalance callback needs; it runs on the polling thread inside `poll`.
pub struct AggregatorContext {
    runtime: Handle,
    clickhouse: clickhouse::Client,
    topic: String,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    revoke_timeout: Duration,
    max_backoff: Duration,
    fatal: std::sync::Mutex<Option<String>>,
    /// The next offset to hand to the shards, per partition, since the last rebalance.
    positions: std::sync::Mutex<HashMap<i32, i64>>,
}

impl ClientContext for AggregatorContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for partition in topic.partitions.values() {
            if partition.partition >= 0 && partition.consumer_lag >= 0 {
                metrics::consumer_lag(partition.partition, partition.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for AggregatorContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        // Positions start again from what this rebalance sets.
        if let Ok(mut positions) = self.positions.lock() {
            positions.clear();
        }
        match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match self.prepare_assignment(partitions) {
                    Ok(()) => {
                        if let Err(error) = consumer.assign(partitions) {
                            self.set_fatal(format!("assigning partitions: {error}"));
                        }
                    }
                    Err(message) => {
                        self.set_fatal(message);
                        let _ = consumer.unassign();
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(partitions);
                let _ = consumer.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

impl AggregatorContext {
    fn set_fatal(&self, message: String) {
        tracing::error!(%message, "fatal");
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(message);
        }
    }

    /// Records that the record at `offset` was handed to the shards.
    fn advance(&self, partition: i32, offset: i64) {
        if let Ok(mut positions) = self.positions.lock() {
            positions.insert(partition, offset + 1);
        }
    }

    fn take_fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|mut fatal| fatal.take())
    }

    /// Reads each partition's checkpoint, removes rows of unfinished flushes, hands the
    /// partitions to their shards and sets where the consumer starts.
    fn prepare_assignment(&self, partitions: &mut TopicPartitionList) -> Result<(), String> {
        let assigned: Vec<i32> = partitions
            .elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| element.partition())
            .collect();
        let started = Instant::now();
        let mut resumes: Vec<(i32, ResumePoint)> = Vec::with_capacity(assigned.len());
        for partition in &assigned {
            let resume = self.runtime.block_on(self.resume_with_retry(*partition))?;
            let start = resume.read_from.map_or(Offset::Beginning, Offset::Offset);
            partitions
                .set_partition_offset(&self.topic, *partition, start)
                .map_err(|error| format!("setting the start of partition {partition}: {error}"))?;
            resumes.push((*partition, resume));
        }
        tracing::info!(partitions = ?assigned, took_ms = started.elapsed().as_millis() as u64, "partitions assigned");
        for (shard, list) in by_shard(resumes, self.shards.len()) {
            self.shards[shard]
                .blocking_send(ShardCommand::Assign(list))
                .map_err(|_| "shard stopped".to_owned())?;
        }
        Ok(())
    }

    async fn resume_with_retry(&self, partition: i32) -> Result<ResumePoint, String> {
        let deadline = Instant::now() + ASSIGN_TIMEOUT;
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let resume = resume_point(&self.clickhouse, &self.topic, partition).await?;
                remove_uncheckpointed_rows(
                    &self.clickhouse,
                    &self.topic,
                    partition,
                    resume.counted_through,
                )
                .await?;
                Ok::<_, clickhouse::error::Error>(resume)
            };
            match attempt.await {
                Ok(resume) => return Ok(resume),
                Err(error) if Instant::now() + backoff < deadline => {
                    tracing::warn!(partition, %error, ?backoff, "reading checkpoint failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(error) => {
                    return Err(format!(
                        "reading the checkpoint of partition {partition} failed for {ASSIGN_TIMEOUT:?}: {error}"
                    ))
                }
            }
        }
    }

    /// Asks the shards to flush and drop the revoked partitions, and waits for them.
    fn revoke(&self, partitions: &TopicPartitionList) {
        let revoked: Vec<(i32, ())> = partitions
            .elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| (element.partition(), ()))
            .collect();
        let deadline = Instant::now() + self.revoke_timeout;
        let mut waiting = Vec::new();
        for (shard, list) in by_shard(revoked, self.shards.len()) {
            let (done, finished) = std::sync::mpsc::channel();
            let command = ShardCommand::Revoke {
                partitions: list.into_iter().map(|(partition, ())| partition).collect(),
                deadline,
                done,
            };
            if self.shards[shard].blocking_send(command).is_ok() {
                waiting.push(finished);
            }
        }
        for finished in waiting {
            let remaining =
                deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
            match finished.recv_timeout(remaining) {
                Ok(unflushed) if unflushed.is_empty() => {}
                Ok(unflushed) => {
                    tracing::warn!(partitions = ?unflushed, "revoked without a final flush; the next owner re-reads them")
                }
                Err(_) => tracing::warn!("a shard did not answer the revoke in time"),
            }
        }
    }
}

/// Runs the polling loop on the current (dedicated) thread until `shutdown` is set.
pub struct Poller {
    consumer: BaseConsumer<AggregatorContext>,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    memory: Arc<Vec<ShardMemory>>,
    budget_bytes: usize,
    commits: std::sync::mpsc::Receiver<Vec<(i32, i64)>>,
    liveness: Arc<Liveness>,
    topic: String,
    shutdown_timeout: Duration,
}

pub struct PollerParts {
    pub shards: Vec<mpsc::Sender<ShardCommand>>,
    pub memory: Arc<Vec<ShardMemory>>,
    pub commits: std::sync::mpsc::Receiver<Vec<(i32, i64)>>,
    pub liveness: Arc<Liveness>,
    pub clickhouse: clickhouse::Client,
}

impl Poller {
    pub fn new(
        config: &AggregatorConfig,
        runtime: Handle,
        parts: PollerParts,
    ) -> Result<Self, AggregatorError> {
        let context = AggregatorContext {
            runtime,
            clickhouse: parts.clickhouse,
            topic: config.plays_topic.clone(),
            shards: parts.shards.clone(),
            revoke_timeout: config.shutdown_timeout(),
            max_backoff: config.max_retry_backoff(),
            fatal: std::sync::Mutex::new(None),
            positions: std::sync::Mutex::new(HashMap::new()),
        };
        let mut client_config = ClientConfig::new();
        client_config
            .set("bootstrap.servers", &config.kafka_brokers)
            .set("group.id", &config.kafka_group_id)
            .set("client.id", config.worker_name())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "range,roundrobin")
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "600000")
            .set(
                "queued.max.messages.kbytes",
                config.kafka_queue_kbytes().to_string(),
            )
            .set("statistics.interval.ms", "5000");
        for (key, value) in config
            .extra_consumer_properties()
            .map_err(AggregatorError::Config)?
        {
            client_config.set(key, value);
        }
        let consumer: BaseConsumer<AggregatorContext> =
            client_config.create_with_context(context)?;
        consumer.subscribe(&[&config.plays_topic])?;
        Ok(Self {
            consumer,
            shards: parts.shards,
            memory: parts.memory,
            budget_bytes: config.buffer_budget_bytes(),
            commits: parts.commits,
            liveness: parts.liveness,
            topic: config.plays_topic.clone(),
            shutdown_timeout: config.shutdown_timeout(),
        })
    }

    pub fn run(self, shutdown: &AtomicBool) -> Result<(), AggregatorError> {
        let mut batches: Vec<Vec<ConsumedRecord>> = vec![Vec::new(); self.shards.len()];
        let mut paused = false;
        while !shutdown.load(Ordering::Relaxed) {
            self.liveness.beat();
            if let Some(message) = self.consumer.context().take_fatal() {
                return Err(AggregatorError::Fatal(message));
            }
            self.commit_checkpointed(CommitMode::Async);
            paused = self.apply_memory_budget(paused);
            let mut timeout = Duration::from_millis(100);
            let mut polled = 0usize;
            while polled < BATCH_SIZE * self.shards.len() {
                match self.consumer.poll(timeout) {
                    Some(Ok(message)) => {
                        self.consumer
                            .context()
                            .advance(message.partition(), message.offset());
                        let shard = shard_of(message.partition(), self.shards.len());
                        batches[shard].push(ConsumedRecord::from_message(&message));
                        polled += 1;
                        timeout = Duration::ZERO;
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "kafka consumer error");
                        break;
                    }
                    None => break,
                }
            }
            for (shard, batch) in batches.iter_mut().enumerate() {
                if batch.is_empty() {
                    continue;
                }
                let records = std::mem::take(batch);
                if self.shards[shard]
                    .blocking_send(ShardCommand::Records(records))
                    .is_err()
                {
                    return Err(AggregatorError::Fatal(format!("shard {shard} stopped")));
                }
            }
        }
        self.shut_down()
    }

    /// Pauses every assigned partition while buffered state is over budget; resumes below 80 %.
    ///
    /// Only flushing frees memory while paused (the duplicate filter shrinks only as event
    /// time moves on, which needs consumption), so a pause needs something flushable, and
    /// consumption resumes once that is flushed even if the filter alone is over budget;
    /// then the horizon is too long for the budget, which is logged.
    fn apply_memory_budget(&self, paused: bool) -> bool {
        let flushable: usize = self
            .memory
            .iter()
            .map(|shard| shard.flushable.load(Ordering::Relaxed))
            .sum();
        let dedup: usize = self
            .memory
            .iter()
            .map(|shard| shard.dedup.load(Ordering::Relaxed))
            .sum();
        let used = flushable + dedup;
        let Ok(assignment) = self.consumer.assignment() else {
            return paused;
        };
        let flush_would_help = flushable >= self.budget_bytes / 10;
        if used >= self.budget_bytes && flush_would_help {
            if !paused {
                tracing::warn!(
                    used_bytes = used,
                    budget_bytes = self.budget_bytes,
                    "memory budget reached, pausing consumption"
                );
            }
            // Every time round: partitions assigned since the last pause start unpaused.
            let _ = self.consumer.pause(&assignment);
            metrics::paused(true);
            return true;
        }
        if paused && (used < self.budget_bytes / 10 * 8 || !flush_would_help) {
            if dedup >= self.budget_bytes / 10 * 8 {
                tracing::warn!(
                    dedup_bytes = dedup,
                    budget_bytes = self.budget_bytes,
                    "the duplicate filter alone fills the memory budget: lower --dedup-horizon-ms, raise --memory-limit-mb or add workers"
                );
            }
            tracing::info!(
                used_bytes = used,
                "memory below budget, resuming consumption"
            );
            self.resume_at_positions(&assignment);
            metrics::paused(false);
            return false;
        }
        paused
    }

    /// Resumes, then seeks every partition to the offset after the last record handed to
    /// the shards: the pause dropped what librdkafka had prefetched, and fetching must go on
    /// exactly there, never further on.
    fn resume_at_positions(&self, assignment: &TopicPartitionList) {
        if let Err(error) = self.consumer.resume(assignment) {
            tracing::warn!(%error, "resuming after the pause failed");
        }
        let positions = self
            .consumer
            .context()
            .positions
            .lock()
            .map(|positions| positions.clone())
            .unwrap_or_default();
        for (partition, next_offset) in positions {
            if let Err(error) = self.consumer.seek(
                &self.topic,
                partition,
                Offset::Offset(next_offset),
                Duration::from_secs(10),
            ) {
                tracing::warn!(partition, next_offset, %error, "seek after resume failed");
            }
        }
    }

    fn commit_checkpointed(&self, mode: CommitMode) {
        let mut latest: HashMap<i32, i64> = HashMap::new();
        while let Ok(offsets) = self.commits.try_recv() {
            for (partition, offset) in offsets {
                let entry = latest.entry(partition).or_insert(offset);
                *entry = (*entry).max(offset);
            }
        }
        if latest.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in latest {
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        if let Err(error) = self.consumer.commit(&list, mode) {
            tracing::debug!(%error, "advisory offset commit failed");
        }
    }

    /// Flushes every shard, commits, and leaves the group.
    fn shut_down(self) -> Result<(), AggregatorError> {
        tracing::info!("shutting down: flushing every partition");
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut waiting = Vec::new();
        for shard in &self.shards {
            let (done, finished) = std::sync::mpsc::channel();
            if shard
                .blocking_send(ShardCommand::Shutdown { deadline, done })
                .is_ok()
            {
                waiting.push(finished);
            }
        }
        let mut unflushed = Vec::new();
        for finished in waiting {
            let remaining =
                deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
            match finished.recv_timeout(remaining) {
                Ok(partitions) => unflushed.extend(partitions),
                Err(_) => unflushed.push(-1),
            }
        }
        self.commit_checkpointed(CommitMode::Sync);
        if unflushed.is_empty() {
            Ok(())
        } else {
            Err(AggregatorError::ShutdownIncomplete(unflushed))
        }
    }
}
