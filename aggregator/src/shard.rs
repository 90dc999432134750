//! A shard: one task that owns some of the assigned partitions (partition % shards), parses
//! and counts their records, and flushes them. Shards run in parallel on the runtime's
//! threads, so both cores are used; partitions never move between shards.
//!
//! At most one flush per shard is in flight: checkpoints of a partition must be written in
//! offset order. While it is in flight the shard keeps counting into fresh buffers; when
//! ClickHouse is down, buffers grow until the memory budget pauses consumption.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use topk_core::window::Window;

use crate::checkpoint::ResumePoint;
use crate::flush::{FlushBatch, FlushTarget};
use crate::metrics::{self, BatchOutcomes};
use crate::partition::PartitionState;
use crate::record::ConsumedRecord;

/// Partitions a revoke or shutdown could not flush before its deadline (not checkpointed:
/// their events are re-read by the next owner).
pub type Unflushed = Vec<i32>;

pub enum ShardCommand {
    Records(Vec<ConsumedRecord>),
    Assign(Vec<(i32, ResumePoint)>),
    Revoke {
        partitions: Vec<i32>,
        deadline: Instant,
        done: std::sync::mpsc::Sender<Unflushed>,
    },
    Shutdown {
        deadline: Instant,
        done: std::sync::mpsc::Sender<Unflushed>,
    },
}

/// What every shard shares.
#[derive(Clone)]
pub struct ShardSettings {
    pub target: FlushTarget,
    pub consumer_group: String,
    pub worker: String,
    pub flush_interval: Duration,
    pub max_buffer_rows: usize,
    pub dedup_horizon_ms: i64,
    /// Whether records are kept for the archive.
    pub archive: bool,
    /// Per-shard memory estimates, summed by the polling thread for the budget.
    pub memory: Arc<Vec<ShardMemory>>,
    /// Offsets to commit to Kafka once checkpointed (advisory).
    pub commits: std::sync::mpsc::Sender<Vec<(i32, i64)>>,
}

struct InFlight {
    handle: JoinHandle<(FlushBatch, bool)>,
    offsets: Vec<(i32, i64)>,
    bytes: usize,
}

pub struct Shard {
    id: usize,
    settings: ShardSettings,
    partitions: BTreeMap<i32, PartitionState>,
    in_flight: Option<InFlight>,
    flushes_started: u64,
}

impl Shard {
    pub fn new(id: usize, settings: ShardSettings) -> Self {
        Self {
            id,
            settings,
            partitions: BTreeMap::new(),
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
                finished = wait_in_flight(&mut self.in_flight) => self.finish_flush(finished),
            }
            self.report_memory();
        }
        self.report_memory();
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
                for (partition, resume) in assigned {
                    tracing::info!(shard = self.id, partition, ?resume, "partition assigned");
                    self.partitions.insert(
                        partition,
                        PartitionState::resume(
                            partition,
                            &resume,
                            self.settings.dedup_horizon_ms,
                            self.settings.archive,
                        ),
                    );
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
            ShardCommand::Shutdown { deadline, done } => {
                let unflushed = self.flush_and_release(None, deadline).await;
                let _ = done.send(unflushed);
                return std::ops::ControlFlow::Break(());
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    fn process(&mut self, records: Vec<ConsumedRecord>) {
        let window = Window::last_week(chrono::Utc::now());
        let mut outcomes = BatchOutcomes::default();
        for record in records {
            let Some(state) = self.partitions.get_mut(&record.partition()) else {
                // A record fetched before its partition was revoked: the next owner reads it.
                continue;
            };
            outcomes.add(state.process(record, &window, &self.settings.target.dead_letters));
        }
        outcomes.record();
    }

    /// Starts a background flush of every partition with unflushed records, unless one is
    /// already in flight.
    fn start_flush(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(batch) = self.take_batch(None) else {
            return;
        };
        let offsets = batch.flushed_offsets();
        let bytes = batch_bytes(&batch);
        let target = self.settings.target.clone();
        self.flushes_started += 1;
        let label = format!(
            "{}-{}-{}",
            self.settings.worker, self.id, self.flushes_started
        );
        let handle = tokio::spawn(async move {
            let mut batch = batch;
            let written = target.write(&mut batch, &label, None).await.is_ok();
            (batch, written)
        });
        self.in_flight = Some(InFlight {
            handle,
            offsets,
            bytes,
        });
    }

    fn take_batch(&mut self, only: Option<&[i32]>) -> Option<FlushBatch> {
        let mut batch = FlushBatch {
            partitions: Vec::new(),
            previous_checkpoints: Vec::new(),
        };
        for (partition, state) in &mut self.partitions {
            if only.is_some_and(|only| !only.contains(partition)) {
                continue;
            }
            let previous = state.counted_through();
            if let Some(flush) = state.take_flush(
                &self.settings.target.topic,
                &self.settings.consumer_group,
                &self.settings.worker,
            ) {
                batch.previous_checkpoints.push((*partition, previous));
                batch.partitions.push(flush);
            }
        }
        (!batch.partitions.is_empty()).then_some(batch)
    }

    fn finish_flush(&mut self, finished: Result<(FlushBatch, bool), tokio::task::JoinError>) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        match finished {
            Ok((_, true)) => self.mark_flushed(&in_flight.offsets),
            Ok((_, false)) => {
                tracing::error!(
                    shard = self.id,
                    "flush gave up without a deadline; this is a bug"
                )
            }
            Err(error) => tracing::error!(shard = self.id, %error, "flush task failed"),
        }
    }

    fn mark_flushed(&mut self, offsets: &[(i32, i64)]) {
        for (partition, offset) in offsets {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.flushed_through(*offset);
            }
        }
        let commits: Vec<(i32, i64)> = offsets.iter().map(|(p, o)| (*p, o + 1)).collect();
        let _ = self.settings.commits.send(commits);
    }

    /// Flushes (some or all) partitions before letting them go, within the deadline.
    async fn flush_and_release(&mut self, only: Option<&[i32]>, deadline: Instant) -> Unflushed {
        let mut unflushed: Vec<i32> = Vec::new();
        if let Some(in_flight) = self.in_flight.take() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut handle = in_flight.handle;
            match tokio::time::timeout(remaining, &mut handle).await {
                Ok(Ok((_, true))) => self.mark_flushed(&in_flight.offsets),
                _ => {
                    // Abandon it: no checkpoint was written, so the next owner re-reads
                    // these offsets, after waiting for inserts still running (see checkpoint).
                    handle.abort();
                    let abandoned: Vec<i32> = in_flight.offsets.iter().map(|(p, _)| *p).collect();
                    tracing::warn!(shard = self.id, partitions = ?abandoned, "in-flight flush abandoned at deadline");
                    let kept: Vec<i32> = abandoned
                        .iter()
                        .copied()
                        .filter(|p| only.is_some_and(|only| !only.contains(p)))
                        .collect();
                    if !kept.is_empty() {
                        // Their drained counts are gone with the aborted task; going on would
                        // checkpoint past them. Restarting re-reads them from the checkpoint.
                        tracing::error!(shard = self.id, partitions = ?kept, "abandoned a flush of partitions this worker keeps; exiting to re-read them");
                        std::process::exit(1);
                    }
                    unflushed.extend(abandoned);
                }
            }
        }
        if unflushed.is_empty() {
            if let Some(mut batch) = self.take_batch(only) {
                let offsets = batch.flushed_offsets();
                let label = format!("{}-{}-final", self.settings.worker, self.id);
                match self
                    .settings
                    .target
                    .write(&mut batch, &label, Some(deadline))
                    .await
                {
                    Ok(()) => self.mark_flushed(&offsets),
                    Err(error) => {
                        tracing::warn!(shard = self.id, %error, "final flush not written");
                        unflushed.extend(offsets.iter().map(|(p, _)| *p));
                    }
                }
            }
        } else {
            // State after an abandoned flush is incomplete; drop it all unflushed.
            unflushed.extend(
                self.partitions
                    .iter()
                    .filter(|(p, state)| {
                        only.is_none_or(|only| only.contains(p)) && state.has_unflushed()
                    })
                    .map(|(p, _)| *p),
            );
        }
        let released: Vec<i32> = self
            .partitions
            .keys()
            .copied()
            .filter(|p| only.is_none_or(|only| only.contains(p)))
            .collect();
        for partition in &released {
            self.partitions.remove(partition);
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
) -> Result<(FlushBatch, bool), tokio::task::JoinError> {
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
        .map(|row| row.user_id.len() + row.song_id.len() + row.topic.len() + 64)
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
