//! A shard: one task that owns some of the assigned partitions (partition % shards), parses
//! and counts their records, and flushes them. Shards run in parallel on the runtime's
//! threads, so both cores are used; partitions never move between shards.
//!
//! At most one flush per shard is in flight: a claim's flushes of a partition are committed
//! in order. While it is in flight the shard keeps counting into fresh buffers; when
//! ClickHouse is down, buffers grow until the memory budget pauses consumption.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use topk_core::claims::Claim;

use crate::checkpoint::kill_queries;
use crate::flush::{FlushBatch, FlushResult, FlushTarget, RunningQueries};
use crate::metrics::{self, BatchOutcomes};
use crate::partition::{Outcome, PartitionState};
use crate::record::ConsumedRecord;

/// Partitions a revoke or shutdown could not flush before its deadline (not committed:
/// their events are re-read by the next owner).
pub type Unflushed = Vec<i32>;

/// How often a gap is answered by reading the partition again before the partition is
/// given up on: see [`gap_seek_target`].
const GAP_SEEKS: u32 = 4;

/// Where the `attempt`-th re-read after a gap at `expected` starts (`None`: the beginning
/// of the partition). The first re-read starts at the missing offset itself, which closes a
/// gap a fetch merely lost. A broker that answers a fetch from inside a record batch with
/// the *next* batch (tansu does: ../shared/ENVIRONMENT.md) skips the same records again,
/// so the later re-reads start further back, up to the beginning: from any offset at or
/// before the batch's first record the batch is delivered whole, and the records before
/// `expected` are skipped as already processed.
pub(crate) fn gap_seek_target(expected: i64, attempt: u32) -> Option<i64> {
    let back = match attempt {
        0 | 1 => 0,
        2 => 1_000,
        3 => 100_000,
        _ => return None,
    };
    Some((expected - back).max(0))
}

/// A partition handed to a shard: its claim, and the poller's positioning generation.
#[derive(Debug, Clone)]
pub struct AssignedPartition {
    pub partition: i32,
    pub claim: Claim,
    pub generation: u64,
}

pub enum ShardCommand {
    Records(Vec<ConsumedRecord>),
    Assign(Vec<AssignedPartition>),
    /// The poller positioned the partition again (after a gap) under a new generation.
    Repositioned {
        partition: i32,
        generation: u64,
    },
    Revoke {
        partitions: Vec<i32>,
        deadline: Instant,
        done: std::sync::mpsc::Sender<Unflushed>,
    },
    /// The assignment was lost (the group moved on without this worker): drop the
    /// partitions without writing anything.
    Drop {
        partitions: Vec<i32>,
    },
    Shutdown {
        deadline: Instant,
        done: std::sync::mpsc::Sender<Unflushed>,
    },
}

/// What a shard asks of the polling thread.
#[derive(Debug)]
pub enum PollerRequest {
    /// Offsets to commit to Kafka once committed in ClickHouse (advisory).
    Commit(Vec<(i32, i64)>),
    /// Read the partition again from `offset` (the beginning for `None`): records are
    /// missing before the offset the shard expects next.
    Seek { partition: i32, offset: Option<i64> },
    /// A newer claim owns the partition: stop reading it; claim it again only if it is
    /// still assigned here once the group had time to move it.
    Fenced { partition: i32 },
    /// The partition's state was lost (a flush abandoned at a deadline, a claim renewed
    /// elsewhere): claim it again and read it from there.
    Reclaim { partition: i32 },
    /// Read the partition again from the resume point of this (already made) claim.
    Restart { partition: i32, claim: Claim },
    /// Records are missing past the checkpoint and re-reading did not bring them: the
    /// partition is not consumed any more (see `/healthz`).
    Failed { partition: i32, expected: i64 },
}

/// What every shard shares.
#[derive(Clone)]
pub struct ShardSettings {
    pub target: FlushTarget,
    pub flush_interval: Duration,
    pub max_buffer_rows: usize,
    pub dedup_horizon_ms: i64,
    /// The shortest play that counts for the charts.
    pub chart_min_played_ms: u64,
    /// Whether records are kept for the archive.
    pub archive: bool,
    /// Per-shard memory estimates, summed by the polling thread for the budget.
    pub memory: Arc<Vec<ShardMemory>>,
    pub requests: std::sync::mpsc::Sender<PollerRequest>,
}

struct InFlight {
    handle: JoinHandle<Vec<(i32, FlushResult)>>,
    running: RunningQueries,
    partitions: Vec<i32>,
    bytes: usize,
}

pub struct Shard {
    id: usize,
    settings: ShardSettings,
    partitions: BTreeMap<i32, PartitionState>,
    gap_seeks: HashMap<i32, u32>,
    in_flight: Option<InFlight>,
    flushes_started: u64,
}

impl Shard {
    pub fn new(id: usize, settings: ShardSettings) -> Self {
        Self {
            id,
            settings,
            partitions: BTreeMap::new(),
            gap_seeks: HashMap::new(),
            in_flight: None,
            flushes_started: 0,
        }
    }

    /// Runs until shutdown or until the command channel closes.
    pub async fn run(mut self, mut commands: mpsc::Receiver<ShardCommand>) {
        let mut ticker = tokio::time::interval(self.settings.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    if self.handle(command).await.is_break() {
                        break;
                    }
                }
                _ = ticker.tick() => self.start_flush(),
                finished = wait_in_flight(&mut self.in_flight) => {
                    self.in_flight = None;
                    match finished {
                        Ok(results) => self.apply_results(results),
                        Err(error) => tracing::error!(shard = self.id, %error, "flush task failed"),
                    }
                }
            }
            self.report_memory();
        }
        self.report_memory();
    }

    fn request(&self, request: PollerRequest) {
        let _ = self.settings.requests.send(request);
    }

    async fn handle(&mut self, command: ShardCommand) -> std::ops::ControlFlow<()> {
        match command {
            ShardCommand::Records(records) => {
                self.process(records);
                let buffered: usize = self
                    .partitions
                    .values()
                    .map(PartitionState::buffered_rows)
                    .sum();
                if buffered >= self.settings.max_buffer_rows {
                    self.start_flush();
                }
            }
            ShardCommand::Assign(assigned) => {
                for AssignedPartition {
                    partition,
                    claim,
                    generation,
                } in assigned
                {
                    tracing::info!(shard = self.id, partition, claim = claim.claim_id, resume = ?claim.resume, "partition assigned");
                    self.gap_seeks.remove(&partition);
                    self.partitions.insert(
                        partition,
                        PartitionState::resume(
                            partition,
                            &claim,
                            generation,
                            self.settings.dedup_horizon_ms,
                            self.settings.chart_min_played_ms,
                            self.settings.archive,
                        ),
                    );
                }
            }
            ShardCommand::Repositioned {
                partition,
                generation,
            } => {
                if let Some(state) = self.partitions.get_mut(&partition) {
                    state.repositioned(generation);
                }
            }
            ShardCommand::Revoke {
                partitions,
                deadline,
                done,
            } => {
                let unflushed = self.flush_and_release(Some(&partitions), deadline).await;
                let _ = done.send(unflushed);
            }
            ShardCommand::Drop { partitions } => {
                for partition in &partitions {
                    self.partitions.remove(partition);
                }
                tracing::warn!(shard = self.id, partitions = ?partitions, "assignment lost: partitions dropped without a final flush");
            }
            ShardCommand::Shutdown { deadline, done } => {
                let unflushed = self.flush_and_release(None, deadline).await;
                let _ = done.send(unflushed);
                return std::ops::ControlFlow::Break(());
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    fn process(&mut self, records: Vec<ConsumedRecord>) {
        let mut outcomes = BatchOutcomes::default();
        let mut gaps: Vec<(i32, i64)> = Vec::new();
        for record in records {
            let partition = record.partition();
            let Some(state) = self.partitions.get_mut(&partition) else {
                // A record fetched before its partition was revoked: the next owner reads it.
                continue;
            };
            let outcome = state.process(record, &self.settings.target.dead_letters);
            if let Outcome::Gap { expected } = outcome {
                gaps.push((partition, expected));
            }
            outcomes.add(outcome);
        }
        outcomes.record();
        for (partition, expected) in gaps {
            self.answer_gap(partition, expected);
        }
    }

    /// Reads the partition again from the missing offset; when that keeps failing, accepts
    /// the gap below the checkpoint (only the duplicate filter's rebuild misses the records)
    /// or gives the partition up above it.
    fn answer_gap(&mut self, partition: i32, expected: i64) {
        metrics::offset_gap();
        let seeks = self.gap_seeks.entry(partition).or_insert(0);
        *seeks += 1;
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        if *seeks <= GAP_SEEKS {
            let from = gap_seek_target(expected, *seeks);
            tracing::warn!(
                shard = self.id,
                partition,
                expected,
                seeks = *seeks,
                ?from,
                "records missing before this offset; reading the partition again"
            );
            self.request(PollerRequest::Seek {
                partition,
                offset: from,
            });
            return;
        }
        if state.gap_is_below_checkpoint(expected) {
            tracing::warn!(shard = self.id, partition, expected, "records below the checkpoint are gone from Kafka; the duplicate filter is rebuilt without them");
            state.accept_gap_below_checkpoint();
            self.request(PollerRequest::Seek {
                partition,
                offset: Some(expected),
            });
            return;
        }
        tracing::error!(shard = self.id, partition, expected, "records past the checkpoint are missing and re-reading does not bring them: the partition is not consumed any more");
        self.partitions.remove(&partition);
        self.request(PollerRequest::Failed {
            partition,
            expected,
        });
    }

    /// Starts a background flush of every partition with unflushed records, unless one is
    /// already in flight.
    fn start_flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(batch) = self.take_batch(None, false) else {
            return;
        };
        let partitions = batch.partition_ids();
        let bytes = batch_bytes(&batch);
        let target = self.settings.target.clone();
        let label = self.next_label();
        let running = RunningQueries::default();
        let running_for_task = running.clone();
        let handle =
            tokio::spawn(async move { target.write(batch, &label, None, &running_for_task).await });
        self.in_flight = Some(InFlight {
            handle,
            running,
            partitions,
            bytes,
        });
    }

    fn next_label(&mut self) -> String {
        self.flushes_started += 1;
        format!(
            "{}-{}-{}-{}",
            self.settings.target.owner.worker,
            self.id,
            std::process::id(),
            self.flushes_started
        )
    }

    fn take_batch(&mut self, only: Option<&[i32]>, release: bool) -> Option<FlushBatch> {
        let target = &self.settings.target;
        let partitions: Vec<_> = self
            .partitions
            .iter_mut()
            .filter(|(partition, _)| only.is_none_or(|only| only.contains(partition)))
            .filter_map(|(_, state)| {
                state.take_flush(
                    &target.owner.topic,
                    &target.owner.consumer_group,
                    &target.owner.worker,
                    release,
                )
            })
            .collect();
        (!partitions.is_empty()).then_some(FlushBatch { partitions })
    }

    fn apply_results(&mut self, results: Vec<(i32, FlushResult)>) {
        let mut commits = Vec::new();
        for (partition, result) in results {
            match result {
                FlushResult::Committed { offset, claim } => {
                    if let Some(state) = self.partitions.get_mut(&partition) {
                        state.committed_through(offset, claim);
                        self.gap_seeks.remove(&partition);
                    }
                    commits.push((partition, offset + 1));
                }
                FlushResult::Fenced => {
                    self.partitions.remove(&partition);
                    self.request(PollerRequest::Fenced { partition });
                }
                FlushResult::Restart(claim) => {
                    self.partitions.remove(&partition);
                    self.request(PollerRequest::Restart { partition, claim });
                }
                FlushResult::Abandoned => {
                    if self.partitions.remove(&partition).is_some() {
                        self.request(PollerRequest::Reclaim { partition });
                    }
                }
            }
        }
        if !commits.is_empty() {
            self.request(PollerRequest::Commit(commits));
        }
    }

    /// Flushes (some or all) partitions before letting them go, within the deadline, and
    /// records the clean release in their last commit.
    async fn flush_and_release(&mut self, only: Option<&[i32]>, deadline: Instant) -> Unflushed {
        let releasing = |partition: &i32| only.is_none_or(|only| only.contains(partition));
        let mut unflushed: Vec<i32> = Vec::new();
        if let Some(in_flight) = self.in_flight.take() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut handle = in_flight.handle;
            match tokio::time::timeout(remaining, &mut handle).await {
                Ok(Ok(results)) => self.apply_results(results),
                _ => {
                    // Abandon it, and make sure its inserts are gone from the server before
                    // the partitions are handed on. Whatever of it landed is above the cap
                    // the next claim records, so it never counts.
                    handle.abort();
                    if let Err(error) =
                        kill_queries(&self.settings.target.client, &in_flight.running.ids()).await
                    {
                        tracing::warn!(shard = self.id, %error, "could not stop the abandoned flush's queries");
                    }
                    tracing::warn!(shard = self.id, partitions = ?in_flight.partitions, "in-flight flush abandoned at deadline");
                    for partition in in_flight.partitions {
                        // Its drained counts are gone with the task: a partition kept here
                        // is claimed again and re-read from its last commit.
                        if self.partitions.remove(&partition).is_some() {
                            if releasing(&partition) {
                                unflushed.push(partition);
                            } else {
                                self.request(PollerRequest::Reclaim { partition });
                            }
                        }
                    }
                }
            }
        }
        if let Some(batch) = self.take_batch(only, true) {
            let label = format!("{}-final", self.next_label());
            let results = self
                .settings
                .target
                .write(batch, &label, Some(deadline), &RunningQueries::default())
                .await;
            for (partition, result) in &results {
                if !matches!(result, FlushResult::Committed { .. }) {
                    unflushed.push(*partition);
                }
            }
            let commits: Vec<(i32, i64)> = results
                .iter()
                .filter_map(|(partition, result)| match result {
                    FlushResult::Committed { offset, .. } => Some((*partition, offset + 1)),
                    _ => None,
                })
                .collect();
            if !commits.is_empty() {
                self.request(PollerRequest::Commit(commits));
            }
        }
        let released: Vec<i32> = self
            .partitions
            .keys()
            .copied()
            .filter(|partition| releasing(partition))
            .collect();
        for partition in &released {
            self.partitions.remove(partition);
            self.gap_seeks.remove(partition);
        }
        tracing::info!(shard = self.id, released = ?released, unflushed = ?unflushed, "partitions released");
        unflushed.sort_unstable();
        unflushed.dedup();
        unflushed
    }

    fn report_memory(&self) {
        let in_flight_bytes = self
            .in_flight
            .as_ref()
            .map_or(0, |in_flight| in_flight.bytes);
        let flushable = in_flight_bytes
            + self
                .partitions
                .values()
                .map(PartitionState::flushable_bytes)
                .sum::<usize>();
        let dedup = self
            .partitions
            .values()
            .map(PartitionState::dedup_bytes)
            .sum::<usize>();
        let rows = self
            .partitions
            .values()
            .map(PartitionState::buffered_rows)
            .sum();
        let memory = &self.settings.memory[self.id];
        memory.flushable.store(flushable, Ordering::Relaxed);
        memory.dedup.store(dedup, Ordering::Relaxed);
        metrics::buffer(self.id, rows, flushable + dedup);
    }
}

async fn wait_in_flight(
    in_flight: &mut Option<InFlight>,
) -> Result<Vec<(i32, FlushResult)>, tokio::task::JoinError> {
    match in_flight {
        Some(in_flight) => (&mut in_flight.handle).await,
        None => std::future::pending().await,
    }
}

fn batch_bytes(batch: &FlushBatch) -> usize {
    let rows: usize = batch
        .partitions
        .iter()
        .flat_map(|flush| flush.rows.iter())
        .map(|row| row.user_id.len() + row.song_id.len() + row.topic.len() + 80)
        .sum();
    let raw: usize = batch
        .partitions
        .iter()
        .flat_map(|flush| flush.raw_records.iter())
        .map(|record| record.payload.len() + record.key.as_ref().map_or(0, Vec::len) + 64)
        .sum();
    rows + raw
}

/// One shard's memory estimate, read by the polling thread for the budget.
#[derive(Debug, Default)]
pub struct ShardMemory {
    /// Freed by flushing: counts, dead letters, records awaiting the archive, the in-flight
    /// flush.
    pub flushable: AtomicUsize,
    /// The duplicate filter: freed only as event time moves on.
    pub dedup: AtomicUsize,
}

/// Which shard owns a partition.
pub fn shard_of(partition: i32, shards: usize) -> usize {
    usize::try_from(partition).unwrap_or(0) % shards.max(1)
}

/// Groups partitions by shard.
pub fn by_shard<T>(items: Vec<(i32, T)>, shards: usize) -> HashMap<usize, Vec<(i32, T)>> {
    let mut grouped: HashMap<usize, Vec<(i32, T)>> = HashMap::new();
    for (partition, item) in items {
        grouped
            .entry(shard_of(partition, shards))
            .or_default()
            .push((partition, item));
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_reads_after_a_gap_start_further_back_up_to_the_beginning() {
        let targets: Vec<Option<i64>> = (1..=GAP_SEEKS)
            .map(|attempt| gap_seek_target(908_682, attempt))
            .collect();
        assert_eq!(
            targets,
            vec![Some(908_682), Some(907_682), Some(808_682), None]
        );
        assert_eq!(gap_seek_target(500, 2), Some(0));
    }
}
