//! One flush of a shard: check the claims are still ours, confirm dead letters, archive raw
//! records, write minute rows, then one commit per partition. When a write's outcome is
//! unknown (an error or timeout after the rows were sent), what happened is read from
//! ClickHouse, never guessed from the client error: see [`FlushTarget::settle`].
//! See [`crate::checkpoint`] for why this gives exactly-once counts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use topk_core::claims::{Claim, ClaimOwner};
use topk_core::coordination::{keeper_commit_node, mirror_commits, CommitOutcome, Coordinator};
use topk_core::schema::{
    ChartMinuteRow, FlushCommitRow, MinuteRow, CHART_MINUTE, FLUSH_COMMITS, PLAYS_MINUTE,
};

use topk_archive::ArchiveWriter;

use crate::checkpoint::{kill_queries, spawn_cleanup};
use crate::dead_letter::DeadLetterQueue;
use crate::metrics;
use crate::partition::{ClaimState, PartitionFlush};

/// How long a ClickHouse call of the flush path other than an insert (claims, the fence
/// check, stopping queries) may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `call`, failing it after [`CALL_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// The flush of several partitions of one shard: one insert of minute rows and one insert
/// of commits.
pub struct FlushBatch {
    pub partitions: Vec<PartitionFlush>,
}

impl FlushBatch {
    pub fn rows(&self) -> usize {
        self.partitions.iter().map(|flush| flush.rows.len()).sum()
    }

    pub fn partition_ids(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .map(|flush| flush.partition)
            .collect()
    }
}

/// What became of one partition's share of a flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushResult {
    /// Committed through `offset`; the partition goes on with `claim`.
    Committed { offset: i64, claim: ClaimState },
    /// A newer claim exists: this worker no longer owns the partition and wrote nothing that
    /// counts.
    Fenced,
    /// The claim was renewed at another point than where this flush started: the partition
    /// must be read again from the claim's resume point.
    Restart(Claim),
    /// Not committed before the deadline (nothing of it counts).
    Abandoned,
}

/// The query ids of the inserts a flush has sent and not seen finish, so that whoever gives
/// up on the flush can make sure they are gone from the server.
#[derive(Debug, Clone, Default)]
pub struct RunningQueries(Arc<Mutex<Vec<String>>>);

impl RunningQueries {
    fn start(&self, query_id: String) {
        if let Ok(mut ids) = self.0.lock() {
            ids.push(query_id);
        }
    }

    fn finish(&self, query_id: &str) {
        if let Ok(mut ids) = self.0.lock() {
            ids.retain(|id| id != query_id);
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.0.lock().map(|ids| ids.clone()).unwrap_or_default()
    }
}

/// Where a flush writes and how hard it tries.
#[derive(Clone)]
pub struct FlushTarget {
    pub client: clickhouse::Client,
    /// Where the cleanup of uncommitted rows runs (every shard on a cluster).
    pub placement: topk_core::cluster::Placement,
    /// Where claims and commits are decided (ClickHouse, or Keeper on a cluster).
    pub coordinator: Coordinator,
    pub owner: ClaimOwner,
    pub dead_letters: DeadLetterQueue,
    /// Where raw records are archived, when archiving is on.
    pub archive: Option<ArchiveWriter>,
    pub insert_timeout: Duration,
    pub max_backoff: Duration,
    /// See `AggregatorConfig::cleanup_delay_ms`.
    pub cleanup_delay: Duration,
}

/// Why an attempt failed, and whether anything of it may have reached the tables.
struct AttemptFailure {
    error: String,
    /// The minute rows (or commits) were sent: whether they landed is unknown.
    ambiguous: bool,
}

impl AttemptFailure {
    /// Failed before anything of the attempt was written.
    fn clear(error: String) -> Self {
        Self {
            error,
            ambiguous: false,
        }
    }

    /// Failed after rows or commits were sent.
    fn ambiguous(error: String) -> Self {
        Self {
            error,
            ambiguous: true,
        }
    }
}

impl FlushTarget {
    /// Writes the batch, retrying with capped exponential backoff until every partition has
    /// a result or the deadline (if any) passes.
    pub async fn write(
        &self,
        mut batch: FlushBatch,
        label: &str,
        deadline: Option<Instant>,
        running: &RunningQueries,
    ) -> Vec<(i32, FlushResult)> {
        let mut results = Vec::new();
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0u32;
        let mut unsettled = false;
        loop {
            if batch.partitions.is_empty() {
                return results;
            }
            let started = Instant::now();
            let rows = batch.rows();
            let failure = if unsettled {
                match self.settle(&mut batch, running, &mut results).await {
                    Ok(()) => {
                        unsettled = false;
                        continue;
                    }
                    Err(error) => {
                        AttemptFailure::ambiguous(format!("settling an unknown outcome: {error}"))
                    }
                }
            } else {
                attempt += 1;
                match self
                    .attempt(&mut batch, label, attempt, running, &mut results)
                    .await
                {
                    Ok(()) => {
                        metrics::flush_succeeded(rows, started.elapsed());
                        results.extend(batch.partitions.drain(..).map(|flush| {
                            let offset = flush.flush_offset();
                            let claim = ClaimState {
                                claim_id: flush.commit.claim_id,
                                next_seq: flush.commit.flush_seq + 1,
                            };
                            (flush.partition, FlushResult::Committed { offset, claim })
                        }));
                        return results;
                    }
                    Err(failure) => failure,
                }
            };
            metrics::flush_failed();
            unsettled |= failure.ambiguous;
            tracing::warn!(flush = label, attempt, error = %failure.error, ?backoff, "flush failed, retrying");
            let next_try = Instant::now() + backoff;
            if deadline.is_some_and(|deadline| next_try >= deadline) {
                // Whatever is still running on the server is stopped before the partitions
                // are handed on; what already landed is never committed by this claim (or is
                // fenced by the next owner's claim).
                if let Err(error) = bounded(kill_queries(&self.client, &running.ids())).await {
                    tracing::warn!(flush = label, %error, "could not stop the abandoned flush's queries");
                }
                results.extend(
                    batch
                        .partitions
                        .drain(..)
                        .map(|flush| (flush.partition, FlushResult::Abandoned)),
                );
                return results;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    async fn attempt(
        &self,
        batch: &mut FlushBatch,
        label: &str,
        attempt: u32,
        running: &RunningQueries,
        results: &mut Vec<(i32, FlushResult)>,
    ) -> Result<(), AttemptFailure> {
        let mut steps = StepTimer::new();
        self.drop_fenced(batch, results)
            .await
            .map_err(|error| AttemptFailure::clear(format!("checking claims: {error}")))?;
        steps.done("claims");
        if batch.partitions.is_empty() {
            return Ok(());
        }
        for flush in &mut batch.partitions {
            self.dead_letters
                .confirm(&mut flush.dead_letters)
                .await
                .map_err(|error| AttemptFailure::clear(error.to_string()))?;
        }
        steps.done("dead_letters");
        if let Some(archive) = &self.archive {
            // Every partition's segment at once (one S3 PUT each); a partition whose PUT
            // succeeded is not archived again by the next attempt.
            let topic = &self.owner.topic;
            let puts = batch
                .partitions
                .iter_mut()
                .filter(|flush| !flush.archived)
                .map(|flush| async move {
                    let put = archive
                        .put_segment(topic, flush.partition, &flush.raw_records)
                        .await;
                    flush.archived = put.is_ok();
                    put.map_err(|error| format!("archiving partition {}: {error}", flush.partition))
                });
            let failed: Vec<String> = futures::future::join_all(puts)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            if !failed.is_empty() {
                return Err(AttemptFailure::clear(failed.join("; ")));
            }
            steps.done("archive");
        }
        let rows: Vec<&MinuteRow> = batch
            .partitions
            .iter()
            .filter(|flush| !flush.rows_written)
            .flat_map(|flush| flush.rows.iter())
            .collect();
        let row_count = rows.len();
        if !rows.is_empty() {
            let query_id = format!("{label}-{attempt}-rows");
            self.insert(PLAYS_MINUTE, &rows, &query_id, running)
                .await
                .map_err(|error| {
                    AttemptFailure::ambiguous(format!("inserting minute rows: {error}"))
                })?;
            // The same rows' chart plays, ordered by time for the charts: same tags, so they
            // count exactly when the minute rows do (with this flush's commit, below).
            let chart_rows: Vec<ChartMinuteRow> = rows
                .iter()
                .filter_map(|row| ChartMinuteRow::of(row))
                .collect();
            if !chart_rows.is_empty() {
                let chart_rows: Vec<&ChartMinuteRow> = chart_rows.iter().collect();
                let query_id = format!("{label}-{attempt}-chart-rows");
                self.insert(CHART_MINUTE, &chart_rows, &query_id, running)
                    .await
                    .map_err(|error| {
                        AttemptFailure::ambiguous(format!("inserting chart rows: {error}"))
                    })?;
            }
        }
        for flush in &mut batch.partitions {
            flush.rows_written = true;
        }
        steps.done("rows");
        let committed = self.commit(batch, label, attempt, running, results).await;
        steps.done("commits");
        steps.report(label, attempt, row_count);
        committed
    }

    /// Writes the commits of the batch's partitions (their rows are written).
    async fn commit(
        &self,
        batch: &mut FlushBatch,
        label: &str,
        attempt: u32,
        running: &RunningQueries,
        results: &mut Vec<(i32, FlushResult)>,
    ) -> Result<(), AttemptFailure> {
        match &self.coordinator {
            Coordinator::ClickHouse => {
                let commits: Vec<&FlushCommitRow> =
                    batch.partitions.iter().map(|flush| &flush.commit).collect();
                let query_id = format!("{label}-{attempt}-commits");
                self.insert(FLUSH_COMMITS, &commits, &query_id, running)
                    .await
                    .map_err(|error| {
                        AttemptFailure::ambiguous(format!("inserting commits: {error}"))
                    })
            }
            Coordinator::Keeper(keeper) => {
                // Each partition's commit is a compare-and-set whose unknown outcome the
                // next attempt settles by reading the node; the rows are not sent again.
                // Then one insert mirrors the batch's commits; until it succeeds the
                // partitions stay in the batch (committed in Keeper, found so next time).
                let mut pending = Vec::new();
                let mut committed = Vec::new();
                let mut last_error = String::new();
                for flush in batch.partitions.drain(..) {
                    match bounded(keeper_commit_node(keeper, &flush.commit)).await {
                        Ok(CommitOutcome::Committed) => committed.push(flush),
                        Ok(CommitOutcome::Fenced) => {
                            tracing::warn!(
                                partition = flush.partition,
                                claim = flush.commit.claim_id,
                                "a newer claim owns the partition; its flush was not committed"
                            );
                            metrics::fenced();
                            results.push((flush.partition, FlushResult::Fenced));
                        }
                        Err(error) => {
                            pending.push(flush);
                            last_error = error;
                        }
                    }
                }
                let rows: Vec<&FlushCommitRow> =
                    committed.iter().map(|flush| &flush.commit).collect();
                if let Err(error) = bounded(mirror_commits(&self.client, &rows)).await {
                    pending.extend(committed);
                    last_error = format!("mirroring commits: {error}");
                } else {
                    for flush in committed {
                        let offset = flush.flush_offset();
                        let claim = ClaimState {
                            claim_id: flush.commit.claim_id,
                            next_seq: flush.commit.flush_seq + 1,
                        };
                        results.push((flush.partition, FlushResult::Committed { offset, claim }));
                    }
                }
                batch.partitions = pending;
                match batch.partitions.first() {
                    None => Ok(()),
                    Some(flush) => Err(AttemptFailure::clear(format!(
                        "committing partition {} through Keeper (settled on the next \
                         attempt): {last_error}",
                        flush.partition
                    ))),
                }
            }
        }
    }

    /// Removes from the batch the partitions whose newest claim is no longer the one the
    /// flush was tagged with: another worker took them over.
    async fn drop_fenced(
        &self,
        batch: &mut FlushBatch,
        results: &mut Vec<(i32, FlushResult)>,
    ) -> Result<(), String> {
        let partitions: Vec<u32> = batch
            .partitions
            .iter()
            .map(|flush| flush.commit.kafka_partition)
            .collect();
        let newest = bounded(self.coordinator.newest_claims(&self.client, &partitions)).await?;
        let (ours, fenced): (Vec<PartitionFlush>, Vec<PartitionFlush>) =
            batch.partitions.drain(..).partition(|flush| {
                newest.get(&flush.commit.kafka_partition) == Some(&flush.commit.claim_id)
            });
        batch.partitions = ours;
        for flush in fenced {
            tracing::warn!(
                partition = flush.partition,
                claim = flush.commit.claim_id,
                newest = ?newest.get(&flush.commit.kafka_partition),
                "a newer claim owns the partition; dropping this worker's flush"
            );
            metrics::fenced();
            results.push((flush.partition, FlushResult::Fenced));
        }
        Ok(())
    }

    /// After a write whose outcome is unknown: makes sure no insert of the flush is still
    /// running on the server, then renews each partition's claim. The renewed claim records
    /// the latest commit the server has, which says whether this flush committed: if it
    /// did, the partition goes on; if not, the flush is retried as the new claim's first
    /// flush, and the old claim is capped below it, so whatever of the failed attempt lands
    /// later never counts (and is removed in the background).
    async fn settle(
        &self,
        batch: &mut FlushBatch,
        running: &RunningQueries,
        results: &mut Vec<(i32, FlushResult)>,
    ) -> Result<(), String> {
        bounded(kill_queries(&self.client, &running.ids()))
            .await
            .map_err(|error| format!("stopping the failed inserts: {error}"))?;
        let mut retry = Vec::new();
        let mut unsettled = std::mem::take(&mut batch.partitions).into_iter();
        while let Some(mut flush) = unsettled.next() {
            let old_claim = flush.commit.claim_id;
            let seq = flush.commit.flush_seq;
            let renewed = bounded(self.coordinator.renew_claim(
                &self.client,
                &self.owner,
                flush.commit.kafka_partition,
                old_claim,
            ))
            .await;
            let claim = match renewed {
                Ok(Some(claim)) => claim,
                Ok(None) => {
                    metrics::fenced();
                    results.push((flush.partition, FlushResult::Fenced));
                    continue;
                }
                Err(error) => {
                    // Put everything not settled yet back, to settle again: this partition
                    // and every one after it (dropping those lost their rows for good: the
                    // next flush committed past them).
                    retry.push(flush);
                    retry.extend(unsettled);
                    batch.partitions = retry;
                    return Err(format!("renewing the claim: {error}"));
                }
            };
            metrics::claim_renewed();
            if claim.parent_max_seq >= seq {
                tracing::info!(
                    partition = flush.partition,
                    claim = claim.claim_id,
                    "the failed flush had committed"
                );
                results.push((
                    flush.partition,
                    FlushResult::Committed {
                        offset: flush.flush_offset(),
                        claim: ClaimState::new(&claim),
                    },
                ));
                continue;
            }
            spawn_cleanup(
                self.client.clone(),
                self.placement.clone(),
                old_claim,
                claim.parent_max_seq,
                self.cleanup_delay,
            );
            if claim.resume.counted_through != flush.previous_offset {
                tracing::warn!(
                    partition = flush.partition,
                    counted_through = ?claim.resume.counted_through,
                    expected = ?flush.previous_offset,
                    "renewed claim resumes elsewhere; re-reading the partition"
                );
                results.push((flush.partition, FlushResult::Restart(claim)));
                continue;
            }
            tracing::info!(
                partition = flush.partition,
                claim = claim.claim_id,
                "retrying the flush under a renewed claim"
            );
            flush.retag(claim.claim_id, 1);
            retry.push(flush);
        }
        batch.partitions = retry;
        Ok(())
    }

    /// One insert with its own `query_id`, bounded by the insert timeout.
    async fn insert<T: clickhouse::RowOwned + clickhouse::RowWrite>(
        &self,
        table: &str,
        rows: &[&T],
        query_id: &str,
        running: &RunningQueries,
    ) -> Result<(), clickhouse::error::Error> {
        running.start(query_id.to_owned());
        let result = async {
            let mut insert = self
                .client
                .insert::<T>(table)
                .await?
                .with_setting("query_id", query_id)
                .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
            for row in rows {
                insert.write(*row).await?;
            }
            insert.end().await
        }
        .await;
        if result.is_ok() {
            running.finish(query_id);
        }
        result
    }
}

/// A flush attempt slower than this is logged with the time each step took.
pub const SLOW_FLUSH: Duration = Duration::from_secs(1);

/// How long each step of a flush attempt took (`topk_aggregator_flush_step_seconds{step}`),
/// logged as a whole when the attempt is slower than [`SLOW_FLUSH`].
struct StepTimer {
    started: Instant,
    step_started: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl StepTimer {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            step_started: now,
            steps: Vec::new(),
        }
    }

    fn done(&mut self, step: &'static str) {
        let now = Instant::now();
        let took = now - self.step_started;
        metrics::flush_step(step, took);
        self.steps.push((step, took));
        self.step_started = now;
    }

    fn report(&self, label: &str, attempt: u32, rows: usize) {
        let took = self.started.elapsed();
        if took < SLOW_FLUSH {
            return;
        }
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(step, took)| format!("{step} {} ms", took.as_millis()))
            .collect();
        tracing::warn!(
            flush = label,
            attempt,
            rows,
            took_ms = took.as_millis() as u64,
            steps = %steps.join(", "),
            "slow flush"
        );
    }
}
