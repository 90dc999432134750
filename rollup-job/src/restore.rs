//! `restore`: rebuild the minute table for a range of days from the S3 archive of raw events,
//! then roll those days up again.
//!
//! The archive is replayed through the aggregator's own rules (validation, duplicate filter,
//! per-minute counts; see `topk_archive::restore`), counting each partition only up to the
//! aggregator's checkpoint when there is one, so the restored table holds exactly what the
//! aggregator had counted. Each day is swapped in atomically; running it twice gives the same
//! tables. Stop the aggregator for those days first, or restore days it no longer receives
//! events for: a day's rows written meanwhile are replaced too.

use chrono::NaiveDate;
use topk_archive::restore::{
    checkpointed_offsets, rebuild_minute_counts, restore_days, RebuildRequest,
};
use topk_archive::ArchiveReader;
use topk_core::db::ClickHouseOptions;

use crate::error::RollupError;
use crate::job::{DayOutcome, RollupJob};

/// What to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub topic: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub dedup_horizon_ms: i64,
}

/// Rebuilds `plays_minute` for the days from the archive, then rolls up those of them that
/// are complete. Prints one line per restored day, then the rollup's lines.
pub async fn restore(
    job: &RollupJob,
    clickhouse: &ClickHouseOptions,
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
    let mut rebuild = RebuildRequest::new(&request.topic, request.from..=request.to);
    rebuild.dedup_horizon_ms = request.dedup_horizon_ms;
    let checkpoints = checkpointed_offsets(clickhouse, &request.topic)
        .await
        .map_err(|error| RollupError::Restore(error.to_string()))?;
    if !checkpoints.is_empty() {
        rebuild.counted_up_to = Some(checkpoints);
    }
    println!(
        "restore: replaying the archive of {} for {}..={}",
        request.topic, request.from, request.to
    );
    let rebuilt = rebuild_minute_counts(reader, &rebuild)
        .await
        .map_err(|error| RollupError::Restore(error.to_string()))?;
    if job.dry_run {
        for day in request
            .from
            .iter_days()
            .take_while(|day| *day <= request.to)
        {
            let rows = rebuilt.rows_for_day(day);
            let plays: u64 = rows.iter().map(|row| row.plays).sum();
            println!(
                "{day}: would restore {} minute rows, {plays} plays",
                rows.len()
            );
        }
        return Ok(Vec::new());
    }
    let restored = restore_days(clickhouse, &rebuilt)
        .await
        .map_err(|error| RollupError::Restore(error.to_string()))?;
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
