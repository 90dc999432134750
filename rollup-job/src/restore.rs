//! `restore`: rebuild the minute table for a range of days from the S3 archive of raw events,
//! then roll those days up again.
//!
//! The restore takes every partition over like a writer (`topk_core::claims`): a running
//! aggregator is fenced, and the next owner resumes exactly where the restored rows end. The
//! archive is replayed through the aggregator's own rules (validation against each record's
//! own window, duplicate filter, per-minute counts; see `topk_archive::restore`), counting
//! each partition only up to what the aggregator had committed, so the restored table holds
//! exactly what the aggregator had counted. The days' top lists are dropped first (the API
//! reads those days from minute rows meanwhile), each day is swapped in atomically, and the
//! complete days are rolled up again; running it twice gives the same tables.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use topk_archive::restore::{
    claim_committed_partitions, claim_replayed_partitions, counted_up_to, rebuild_minute_counts,
    restore_days, RebuildRequest, RestoreCommit,
};
use topk_archive::ArchiveReader;
use topk_core::claims::ClaimOwner;
use topk_core::committed::CommittedFlushes;
use topk_core::coordination::Coordinator;
use topk_core::db::ClickHouseOptions;
use topk_core::schema::DAILY_TOP;

use crate::error::{clickhouse_error, RollupError};
use crate::job::{DayOutcome, RollupJob};
use crate::rollup::partition_id;

/// A partition committed to more recently than this has a running aggregator.
const ACTIVE_WITHIN: Duration = Duration::from_secs(120);

/// What to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub topic: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub dedup_horizon_ms: i64,
    /// The aggregators' `--chart-min-played-ms`.
    pub chart_min_played_ms: u64,
    /// The consumer group of the restore's claims when the database has none yet.
    pub consumer_group: String,
    /// Restore even though aggregators look active.
    pub force: bool,
}

fn restore_error(error: impl std::fmt::Display) -> RollupError {
    RollupError::Restore(error.to_string())
}

/// Rebuilds `plays_minute` for the days from the archive, then rolls up those of them that
/// are complete. Prints one line per restored day, then the rollup's lines.
pub async fn restore(
    job: &RollupJob,
    clickhouse: &ClickHouseOptions,
    coordinator: &Coordinator,
    reader: &ArchiveReader,
    request: &RestoreRequest,
    on_day: impl FnMut(&DayOutcome),
) -> Result<Vec<DayOutcome>, RollupError> {
    if request.from > request.to {
        return Err(RollupError::EmptyRange {
            from: request.from,
            to: request.to,
        });
    }
    let client = clickhouse.client();
    let committed = CommittedFlushes::read(&client)
        .await
        .map_err(restore_error)?;
    let recently = Utc::now() - chrono::Duration::from_std(ACTIVE_WITHIN).unwrap_or_default();
    let active: Vec<u32> = committed
        .partitions()
        .filter(|partition| partition.last_commit_at > recently)
        .map(|partition| partition.kafka_partition)
        .collect();
    if !active.is_empty() && !request.force && !job.dry_run {
        return Err(RollupError::AggregatorsActive { partitions: active });
    }
    let owner = ClaimOwner {
        consumer_group: committed.partitions().next().map_or_else(
            || request.consumer_group.clone(),
            |partition| partition.consumer_group.clone(),
        ),
        topic: request.topic.clone(),
        worker: format!("topk-rollup-restore-{}", std::process::id()),
    };
    let mut rebuild = RebuildRequest::new(&request.topic, request.from..=request.to);
    rebuild.dedup_horizon_ms = request.dedup_horizon_ms;
    rebuild.chart_min_played_ms = request.chart_min_played_ms;
    // Claimed before the replay, so nothing is committed past the offsets it counts up to.
    let mut commits: BTreeMap<i32, RestoreCommit> = if job.dry_run {
        committed
            .partitions()
            .map(|partition| {
                let commit = RestoreCommit {
                    claim_id: 0,
                    flush_offset: partition.counted_through,
                    dedup_replay_from: 0,
                    watermark_ms: 0,
                };
                (partition.kafka_partition as i32, commit)
            })
            .collect()
    } else {
        claim_committed_partitions(&client, coordinator, &owner, &committed)
            .await
            .map_err(restore_error)?
    };
    rebuild.counted_up_to = counted_up_to(&commits);
    println!(
        "restore: replaying the archive of {} for {}..={}",
        request.topic, request.from, request.to
    );
    let rebuilt = rebuild_minute_counts(reader, &rebuild)
        .await
        .map_err(restore_error)?;
    if commits.is_empty() {
        // Nothing was ever committed: every archived record counts.
        commits = if job.dry_run {
            rebuilt
                .partitions
                .iter()
                .map(|(partition, minutes)| {
                    let commit = RestoreCommit {
                        claim_id: 0,
                        flush_offset: minutes.last_offset.unwrap_or(-1),
                        dedup_replay_from: 0,
                        watermark_ms: 0,
                    };
                    (*partition, commit)
                })
                .collect()
        } else {
            claim_replayed_partitions(&client, coordinator, &owner, &rebuilt)
                .await
                .map_err(restore_error)?
        };
    }
    let days: Vec<NaiveDate> = request
        .from
        .iter_days()
        .take_while(|day| *day <= request.to)
        .collect();
    if job.dry_run {
        for day in &days {
            let rows = rebuilt.rows_for_day(*day, &commits);
            let plays: u64 = rows.iter().map(|row| row.plays).sum();
            println!(
                "{day}: would restore {} minute rows, {plays} plays",
                rows.len()
            );
        }
        return Ok(Vec::new());
    }
    // The restored days are read from minute rows until they are rolled up again: their old
    // top lists were built from the rows being replaced.
    for day in &days {
        job.placement
            .alter(
                &client,
                DAILY_TOP,
                &format!("DROP PARTITION ID '{}'", partition_id(*day)),
                // Gone from every replica before the day is rolled up again.
                &[("replication_alter_partitions_sync", "2")],
            )
            .await
            .map_err(clickhouse_error(format!("dropping the top lists of {day}")))?;
    }
    let restored = restore_days(clickhouse, coordinator, &rebuilt, &owner, &commits)
        .await
        .map_err(restore_error)?;
    for day in &restored {
        println!(
            "{}: restored {} minute rows, {} plays",
            day.day, day.rows, day.plays
        );
    }
    // Today is not complete: it stays in the minute table until the nightly run.
    let yesterday = job.now.date_naive().pred_opt().unwrap_or(NaiveDate::MIN);
    let last_complete = request.to.min(yesterday);
    if request.from > last_complete {
        return Ok(Vec::new());
    }
    job.backfill(request.from, last_complete, on_day).await
}
