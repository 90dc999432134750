//! The polling thread: the Kafka consumer, rebalances, claims, routing records to shards,
//! re-positioning partitions, pausing on the memory budget, and the advisory offset commits.
//!
//! Offsets follow the claims, not Kafka: `enable.auto.commit` and auto offset store are off;
//! on assignment each partition is claimed in ClickHouse and starts from the claim's resume
//! point; on revoke the shards flush and commit first (on a lost assignment they drop the
//! partitions without writing). The Kafka commit of `offset + 1` after each committed flush
//! only serves lag monitoring and tools.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use topk_core::claims::{Claim, ClaimError, ClaimOwner};
use topk_core::coordination::Coordinator;

use crate::checkpoint::spawn_cleanup;
use crate::config::AggregatorConfig;
use crate::error::AggregatorError;
use crate::health::Health;
use crate::metrics;
use crate::record::ConsumedRecord;
use crate::shard::{
    by_shard, gap_seek_target, shard_of, AssignedPartition, PollerRequest, ShardCommand,
    ShardMemory,
};

/// Records sent to a shard at once.
const BATCH_SIZE: usize = 1024;
/// How long a partition may sit with no record delivered while the broker reports records
/// after its position and answers fetches, before it is read again from further back (see
/// [`TailWatch`]).
const TAIL_STALL: Duration = Duration::from_secs(10);
/// How many times a stuck tail is read again from further back (1 000 and 100 000 offsets
/// earlier, then the beginning) before the watch waits for the position to move.
const TAIL_SEEKS: u32 = 3;
/// How long an assignment may retry claiming before the worker gives up.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(240);

/// What the rebalance callback needs; it runs on the polling thread inside `poll`.
pub struct AggregatorContext {
    runtime: Handle,
    clickhouse: clickhouse::Client,
    placement: topk_core::cluster::Placement,
    coordinator: Coordinator,
    owner: ClaimOwner,
    topic: String,
    shards: Vec<mpsc::Sender<ShardCommand>>,
    revoke_timeout: Duration,
    max_backoff: Duration,
    /// See `AggregatorConfig::cleanup_delay_ms`.
    cleanup_delay: Duration,
    fatal: std::sync::Mutex<Option<String>>,
    /// The next offset to hand to the shards, per partition, since the last rebalance.
    positions: std::sync::Mutex<HashMap<i32, i64>>,
    /// Each partition's high watermark and its leader's fetch count, from librdkafka's
    /// statistics (every 5 s).
    fetch_stats: std::sync::Mutex<HashMap<i32, FetchStats>>,
    /// How often each partition was positioned (assigned, or sought after a gap): records
    /// carry it so a shard drops those fetched before the latest positioning.
    generations: std::sync::Mutex<HashMap<i32, u64>>,
}

impl ClientContext for AggregatorContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let fetches_by_broker: HashMap<i32, i64> = statistics
            .brokers
            .values()
            .map(|broker| {
                let fetches = broker.req.get("Fetch").copied().unwrap_or(0);
                (broker.nodeid, fetches)
            })
            .collect();
        let mut fetch_stats = self.fetch_stats.lock().ok();
        for partition in topic.partitions.values() {
            if partition.partition >= 0 && partition.consumer_lag >= 0 {
                metrics::consumer_lag(partition.partition, partition.consumer_lag);
            }
            if let Some(fetch_stats) = fetch_stats.as_mut() {
                if partition.partition >= 0 && partition.hi_offset >= 0 {
                    fetch_stats.insert(
                        partition.partition,
                        FetchStats {
                            high_watermark: partition.hi_offset,
                            leader_fetches: fetches_by_broker.get(&partition.leader).copied(),
                        },
                    );
                }
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
                if consumer.assignment_lost() {
                    self.drop_lost(partitions);
                } else {
                    self.revoke(partitions);
                }
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
    /// A copy of [`Self::positions`]: the next offset to hand to the shards, per partition.
    fn positions_now(&self) -> HashMap<i32, i64> {
        self.positions
            .lock()
            .map(|positions| positions.clone())
            .unwrap_or_default()
    }

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

    fn generation(&self, partition: i32) -> u64 {
        self.generations
            .lock()
            .map(|generations| generations.get(&partition).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// A new positioning of `partition`: records fetched before it are dropped.
    fn next_generation(&self, partition: i32, next_offset: Option<i64>) -> u64 {
        if let (Ok(mut positions), Some(offset)) = (self.positions.lock(), next_offset) {
            positions.insert(partition, offset);
        }
        let Ok(mut generations) = self.generations.lock() else {
            return 0;
        };
        let generation = generations.entry(partition).or_insert(0);
        *generation += 1;
        *generation
    }

    /// Claims each partition, hands them to their shards and sets where the consumer starts.
    fn prepare_assignment(&self, partitions: &mut TopicPartitionList) -> Result<(), String> {
        let assigned: Vec<i32> = partitions
            .elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| element.partition())
            .collect();
        let started = Instant::now();
        let mut handed: Vec<(i32, AssignedPartition)> = Vec::with_capacity(assigned.len());
        for partition in &assigned {
            let claim = self.runtime.block_on(self.claim_with_retry(*partition))?;
            let start = claim
                .resume
                .read_from
                .map_or(Offset::Beginning, Offset::Offset);
            partitions
                .set_partition_offset(&self.topic, *partition, start)
                .map_err(|error| format!("setting the start of partition {partition}: {error}"))?;
            let generation = self.next_generation(*partition, claim.resume.read_from);
            handed.push((
                *partition,
                AssignedPartition {
                    partition: *partition,
                    claim,
                    generation,
                },
            ));
        }
        tracing::info!(partitions = ?assigned, took_ms = started.elapsed().as_millis() as u64, "partitions claimed");
        for (shard, list) in by_shard(handed, self.shards.len()) {
            let list = list.into_iter().map(|(_, assigned)| assigned).collect();
            self.shards[shard]
                .blocking_send(ShardCommand::Assign(list))
                .map_err(|_| "shard stopped".to_owned())?;
        }
        Ok(())
    }

    /// Claims `partition`, retrying ClickHouse errors with backoff; removes in the background
    /// the rows a previous owner left uncommitted.
    async fn claim_with_retry(&self, partition: i32) -> Result<Claim, String> {
        let deadline = Instant::now() + ASSIGN_TIMEOUT;
        let mut backoff = Duration::from_millis(100);
        let kafka_partition =
            u32::try_from(partition).map_err(|_| format!("partition {partition} is negative"))?;
        loop {
            let claimed = tokio::time::timeout(
                crate::flush::CALL_TIMEOUT,
                self.coordinator
                    .claim_partition(&self.clickhouse, &self.owner, kafka_partition),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ClaimError::ClickHouse(clickhouse::error::Error::Custom(
                    format!("no answer within {:?}", crate::flush::CALL_TIMEOUT),
                )))
            });
            match claimed {
                Ok(claim) => {
                    metrics::claimed();
                    if claim.parent_claim_id != 0 && !claim.parent_released {
                        tracing::info!(
                            partition,
                            parent = claim.parent_claim_id,
                            parent_max_seq = claim.parent_max_seq,
                            "took over from an owner that did not release the partition"
                        );
                        spawn_cleanup(
                            self.clickhouse.clone(),
                            self.placement.clone(),
                            claim.parent_claim_id,
                            claim.parent_max_seq,
                            self.cleanup_delay,
                        );
                    }
                    return Ok(claim);
                }
                Err(error @ (ClaimError::OtherOwner { .. } | ClaimError::PartitionTooHigh(_))) => {
                    return Err(error.to_string())
                }
                Err(error) if Instant::now() + backoff < deadline => {
                    tracing::warn!(partition, %error, ?backoff, "claiming failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(error) => {
                    return Err(format!(
                        "claiming partition {partition} failed for {ASSIGN_TIMEOUT:?}: {error}"
                    ))
                }
            }
        }
    }

    fn revoked_partitions(&self, partitions: &TopicPartitionList) -> Vec<i32> {
        partitions
            .elements()
            .iter()
            .filter(|element| element.topic() == self.topic)
            .map(|element| element.partition())
            .collect()
    }

    /// The group moved on without this worker: drop the partitions without writing.
    fn drop_lost(&self, partitions: &TopicPartitionList) {
        let lost = self.revoked_partitions(partitions);
        tracing::warn!(partitions = ?lost, "assignment lost");
        let items = lost.into_iter().map(|partition| (partition, ())).collect();
        for (shard, list) in by_shard(items, self.shards.len()) {
            let partitions = list.into_iter().map(|(partition, ())| partition).collect();
            let _ = self.shards[shard].blocking_send(ShardCommand::Drop { partitions });
        }
    }

    /// Asks the shards to flush and release the revoked partitions, and waits for them.
    fn revoke(&self, partitions: &TopicPartitionList) {
        let revoked = self.revoked_partitions(partitions);
        let items = revoked
            .into_iter()
            .map(|partition| (partition, ()))
            .collect();
        let deadline = Instant::now() + self.revoke_timeout;
        let mut waiting = Vec::new();
        for (shard, list) in by_shard(items, self.shards.len()) {
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
            // The shard stops the abandoned flush's queries after the deadline: give it time.
            let remaining =
                deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(15);
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
    requests: std::sync::mpsc::Receiver<PollerRequest>,
    health: Arc<Health>,
    topic: String,
    shutdown_timeout: Duration,
    /// Partitions a newer claim took over while still assigned here, and since when: they
    /// are paused, and claimed again if still assigned after [`Self::fence_wait`].
    fenced: HashMap<i32, Instant>,
    fence_wait: Duration,
    tails: TailWatch,
}

/// Finds partitions whose records stopped arriving although the broker holds more after the
/// position: a gap the shards cannot see, because no later record arrives to show it. tansu
/// answers a fetch from inside a record batch with the next batch, so a consumer resuming
/// inside the *last* batch of a partition (after a memory pause) gets nothing at all until
/// more is produced. Such a partition is read again from further back, as a gap is
/// ([`gap_seek_target`]); the shard skips what it already has. Apache Kafka returns the batch
/// holding the offset, so there this never fires.
///
/// A partition only counts as stuck while its leader answers fetches (its fetch count in
/// the statistics moves): a broker that is merely slow (a fetch in flight for a minute under
/// load) is waited for, not answered with re-reads from further and further back, which
/// cost memory and time and cannot help. An episode ends when the position passes the
/// offset it got stuck at.
#[derive(Default)]
struct TailWatch {
    seen: HashMap<i32, TailEntry>,
    checked_at: Option<Instant>,
}

struct TailEntry {
    /// The position last seen, and since when.
    position: i64,
    since: Instant,
    /// The leader's fetch count at `since` (`None`: not known from the statistics).
    fetches_at_since: Option<i64>,
    /// Re-reads caused by this episode, and the offset it got stuck at.
    seeks: u32,
    stuck_at: Option<i64>,
}

/// What the statistics tell about a partition's fetching.
#[derive(Debug, Clone, Copy)]
struct FetchStats {
    high_watermark: i64,
    /// Fetch requests sent to the partition's leader so far. librdkafka sends the next fetch
    /// to a broker only after the previous one was answered.
    leader_fetches: Option<i64>,
}

pub struct PollerParts {
    pub shards: Vec<mpsc::Sender<ShardCommand>>,
    pub memory: Arc<Vec<ShardMemory>>,
    pub requests: std::sync::mpsc::Receiver<PollerRequest>,
    pub health: Arc<Health>,
    pub clickhouse: clickhouse::Client,
    pub placement: topk_core::cluster::Placement,
    pub coordinator: Coordinator,
    pub owner: ClaimOwner,
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
            placement: parts.placement,
            coordinator: parts.coordinator,
            owner: parts.owner,
            topic: config.plays_topic.clone(),
            shards: parts.shards.clone(),
            revoke_timeout: config.shutdown_timeout(),
            max_backoff: config.max_retry_backoff(),
            cleanup_delay: config.cleanup_delay(),
            fatal: std::sync::Mutex::new(None),
            positions: std::sync::Mutex::new(HashMap::new()),
            fetch_stats: std::sync::Mutex::new(HashMap::new()),
            generations: std::sync::Mutex::new(HashMap::new()),
        };
        let mut client_config = config.consumer_config();
        client_config.set("statistics.interval.ms", "5000");
        let consumer: BaseConsumer<AggregatorContext> =
            client_config.create_with_context(context)?;
        consumer.subscribe(&[&config.plays_topic])?;
        let session_timeout_ms: u64 = client_config
            .get("session.timeout.ms")
            .and_then(|value| value.parse().ok())
            .unwrap_or(10_000);
        Ok(Self {
            consumer,
            shards: parts.shards,
            memory: parts.memory,
            budget_bytes: config.buffer_budget_bytes(),
            requests: parts.requests,
            health: parts.health,
            topic: config.plays_topic.clone(),
            shutdown_timeout: config.shutdown_timeout(),
            fenced: HashMap::new(),
            fence_wait: Duration::from_millis(2 * session_timeout_ms),
            tails: TailWatch::default(),
        })
    }

    pub fn run(mut self, shutdown: &AtomicBool) -> Result<(), AggregatorError> {
        let mut batches: Vec<Vec<ConsumedRecord>> = vec![Vec::new(); self.shards.len()];
        let mut paused = false;
        while !shutdown.load(Ordering::Relaxed) {
            self.health.beat();
            if let Some(message) = self.consumer.context().take_fatal() {
                return Err(AggregatorError::Fatal(message));
            }
            self.handle_requests(CommitMode::Async);
            self.reclaim_fenced();
            paused = self.apply_memory_budget(paused);
            self.watch_tails(paused);
            let mut timeout = Duration::from_millis(100);
            let mut polled = 0usize;
            while polled < BATCH_SIZE * self.shards.len() {
                match self.consumer.poll(timeout) {
                    Some(Ok(message)) => {
                        let context = self.consumer.context();
                        context.advance(message.partition(), message.offset());
                        let generation = context.generation(message.partition());
                        let shard = shard_of(message.partition(), self.shards.len());
                        batches[shard].push(ConsumedRecord::from_message(&message, generation));
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
            self.report_assignment();
        }
        self.shut_down()
    }

    /// See [`TailWatch`]. Checked every second; the clocks start over during a pause.
    fn watch_tails(&mut self, paused: bool) {
        let now = Instant::now();
        if paused {
            self.tails.seen.clear();
            return;
        }
        if self
            .tails
            .checked_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            return;
        }
        self.tails.checked_at = Some(now);
        let positions = self.consumer.context().positions_now();
        let fetch_stats = self
            .consumer
            .context()
            .fetch_stats
            .lock()
            .map(|stats| stats.clone())
            .unwrap_or_default();
        self.tails
            .seen
            .retain(|partition, _| positions.contains_key(partition));
        for (partition, next_offset) in positions {
            if self.fenced.contains_key(&partition) || self.health.is_failed(partition) {
                continue;
            }
            let stats = fetch_stats.get(&partition).copied();
            let fetches = stats.and_then(|stats| stats.leader_fetches);
            let entry = self.tails.seen.entry(partition).or_insert(TailEntry {
                position: next_offset,
                since: now,
                fetches_at_since: fetches,
                seeks: 0,
                stuck_at: None,
            });
            if entry.position != next_offset {
                let episode_over = entry.stuck_at.is_none_or(|stuck| next_offset > stuck);
                if episode_over {
                    entry.seeks = 0;
                    entry.stuck_at = None;
                }
                entry.position = next_offset;
                entry.since = now;
                entry.fetches_at_since = fetches;
                continue;
            }
            if now.duration_since(entry.since) < TAIL_STALL || entry.seeks >= TAIL_SEEKS {
                continue;
            }
            let Some(stats) = stats else {
                continue;
            };
            let counted_since = entry.fetches_at_since.is_some();
            let fetches_answered = match (entry.fetches_at_since, fetches) {
                (Some(before), Some(now)) => now - before,
                // Counted from now on: judged at the next check.
                (None, Some(_)) => 0,
                // No statistics about the leader: judged by the position alone.
                (_, None) => i64::MAX,
            };
            entry.since = now;
            entry.fetches_at_since = fetches;
            if stats.high_watermark <= next_offset {
                continue;
            }
            if fetches_answered < 2 {
                if !counted_since {
                    continue;
                }
                tracing::info!(
                    partition,
                    next_offset,
                    high_watermark = stats.high_watermark,
                    "no records arrive and the broker answers no fetches; waiting for the broker"
                );
                continue;
            }
            entry.seeks += 1;
            let seeks = entry.seeks;
            let stuck_at = *entry.stuck_at.get_or_insert(next_offset);
            let from = gap_seek_target(stuck_at, seeks + 1);
            tracing::warn!(
                partition,
                next_offset,
                high_watermark = stats.high_watermark,
                fetches_answered,
                seeks,
                ?from,
                "no records arrive although the broker has more and answers fetches; reading the partition again from further back"
            );
            metrics::offset_gap();
            self.reposition(partition, from);
        }
    }

    fn report_assignment(&self) {
        let assigned = self
            .consumer
            .assignment()
            .map(|list| list.count())
            .unwrap_or(0);
        self.health.set_assigned(assigned);
    }

    fn assigned(&self, partition: i32) -> bool {
        self.consumer.assignment().is_ok_and(|list| {
            list.elements()
                .iter()
                .any(|element| element.topic() == self.topic && element.partition() == partition)
        })
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        list
    }

    /// Handles what the shards asked for since the last round.
    fn handle_requests(&mut self, mode: CommitMode) {
        let mut commits: HashMap<i32, i64> = HashMap::new();
        while let Ok(request) = self.requests.try_recv() {
            match request {
                PollerRequest::Commit(offsets) => {
                    for (partition, offset) in offsets {
                        let entry = commits.entry(partition).or_insert(offset);
                        *entry = (*entry).max(offset);
                    }
                }
                PollerRequest::Seek { partition, offset } => {
                    self.reposition(partition, offset);
                }
                PollerRequest::Fenced { partition } => {
                    if self.assigned(partition) {
                        let _ = self.consumer.pause(&self.partition_list(partition));
                        self.fenced.insert(partition, Instant::now());
                        tracing::warn!(partition, wait = ?self.fence_wait, "fenced by a newer claim; paused until the group moves the partition or the wait ends");
                    }
                }
                PollerRequest::Reclaim { partition } => self.reclaim(partition),
                PollerRequest::Restart { partition, claim } => {
                    if self.assigned(partition) {
                        self.restart(partition, claim);
                    }
                }
                PollerRequest::Failed {
                    partition,
                    expected,
                } => {
                    let _ = self.consumer.pause(&self.partition_list(partition));
                    self.health.partition_failed(partition, expected);
                }
            }
        }
        self.commit(commits, mode);
    }

    /// Seeks `partition` to `offset` (the beginning for `None`) under a new generation and
    /// tells its shard.
    fn reposition(&self, partition: i32, offset: Option<i64>) -> Option<u64> {
        if !self.assigned(partition) {
            return None;
        }
        let context = self.consumer.context();
        let generation = context.next_generation(partition, offset);
        let target = offset.map_or(Offset::Beginning, Offset::Offset);
        if let Err(error) =
            self.consumer
                .seek(&self.topic, partition, target, Duration::from_secs(10))
        {
            tracing::warn!(partition, ?offset, %error, "seek failed");
        }
        let shard = shard_of(partition, self.shards.len());
        let _ = self.shards[shard].blocking_send(ShardCommand::Repositioned {
            partition,
            generation,
        });
        Some(generation)
    }

    /// Hands `partition` to its shard again under `claim`, reading from its resume point.
    fn restart(&self, partition: i32, claim: Claim) {
        let context = self.consumer.context();
        let read_from = claim.resume.read_from;
        let generation = context.next_generation(partition, read_from);
        let shard = shard_of(partition, self.shards.len());
        let _ = self.shards[shard].blocking_send(ShardCommand::Assign(vec![AssignedPartition {
            partition,
            claim,
            generation,
        }]));
        let target = read_from.map_or(Offset::Beginning, Offset::Offset);
        if let Err(error) =
            self.consumer
                .seek(&self.topic, partition, target, Duration::from_secs(10))
        {
            tracing::warn!(partition, %error, "seek after a restart failed");
        }
        let _ = self.consumer.resume(&self.partition_list(partition));
    }

    /// Claims `partition` again (if still assigned here) and reads it from there.
    fn reclaim(&mut self, partition: i32) {
        self.fenced.remove(&partition);
        if !self.assigned(partition) {
            return;
        }
        let context = self.consumer.context();
        match context
            .runtime
            .block_on(context.claim_with_retry(partition))
        {
            Ok(claim) => self.restart(partition, claim),
            Err(message) => context.set_fatal(message),
        }
    }

    /// Claims again the fenced partitions still assigned here after the wait: the newer
    /// claim came from a worker that no longer holds them (a late or stuck one).
    fn reclaim_fenced(&mut self) {
        let due: Vec<i32> = self
            .fenced
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.fence_wait)
            .map(|(partition, _)| *partition)
            .collect();
        for partition in due {
            tracing::warn!(
                partition,
                "still assigned after being fenced; claiming it again"
            );
            self.reclaim(partition);
        }
    }

    fn commit(&self, offsets: HashMap<i32, i64>, mode: CommitMode) {
        if offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        if let Err(error) = self.consumer.commit(&list, mode) {
            tracing::debug!(%error, "advisory offset commit failed");
        }
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
    /// exactly there, never further on. Fenced and failed partitions stay paused.
    fn resume_at_positions(&self, assignment: &TopicPartitionList) {
        let mut resumable = TopicPartitionList::new();
        for element in assignment.elements() {
            let partition = element.partition();
            if !self.fenced.contains_key(&partition) && !self.health.is_failed(partition) {
                resumable.add_partition(element.topic(), partition);
            }
        }
        if let Err(error) = self.consumer.resume(&resumable) {
            tracing::warn!(%error, "resuming after the pause failed");
        }
        let positions = self.consumer.context().positions_now();
        for (partition, next_offset) in positions {
            if self.fenced.contains_key(&partition) || self.health.is_failed(partition) {
                continue;
            }
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

    /// Flushes every shard, commits, and leaves the group.
    fn shut_down(mut self) -> Result<(), AggregatorError> {
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
                deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(15);
            match finished.recv_timeout(remaining) {
                Ok(partitions) => unflushed.extend(partitions),
                Err(_) => unflushed.push(-1),
            }
        }
        self.handle_requests(CommitMode::Sync);
        if unflushed.is_empty() {
            Ok(())
        } else {
            Err(AggregatorError::ShutdownIncomplete(unflushed))
        }
    }
}
