//! One flush of a shard: confirm dead letters, write minute rows and checkpoints, and on any
//! failure remove what the failed attempt may have written before trying again.
//! See [`crate::checkpoint`] for why this gives exactly-once counts.

use std::time::{Duration, Instant};

use topk_core::schema::{CheckpointRow, MinuteRow, INGEST_CHECKPOINTS, PLAYS_MINUTE};

use topk_archive::ArchiveWriter;

use crate::checkpoint::remove_uncheckpointed_rows;
use crate::dead_letter::DeadLetterQueue;
use crate::metrics;
use crate::partition::PartitionFlush;

/// The flush of several partitions of one shard, written as one insert of minute rows and
/// one insert of checkpoints.
pub struct FlushBatch {
    pub partitions: Vec<PartitionFlush>,
    /// Each partition's checkpoint before this flush (what a repair falls back to).
    pub previous_checkpoints: Vec<(i32, Option<i64>)>,
}

impl FlushBatch {
    pub fn rows(&self) -> usize {
        self.partitions.iter().map(|flush| flush.rows.len()).sum()
    }

    /// The offset each partition is counted through once this batch is written.
    pub fn flushed_offsets(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .map(|flush| {
                let offset = i64::try_from(flush.checkpoint.flush_offset).expect("offset fits i64");
                (flush.partition, offset)
            })
            .collect()
    }
}

/// Where a flush writes and how hard it tries.
#[derive(Clone)]
pub struct FlushTarget {
    pub client: clickhouse::Client,
    pub topic: String,
    pub dead_letters: DeadLetterQueue,
    /// Where raw records are archived, when archiving is on.
    pub archive: Option<ArchiveWriter>,
    pub insert_timeout: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("flush not written before its deadline: {0}")]
pub struct FlushDeadlineExceeded(pub String);

impl FlushTarget {
    /// Writes the batch, retrying with capped exponential backoff until it succeeds or the
    /// deadline (if any) passes. A batch that missed its deadline wrote no checkpoint, so its
    /// events are re-read by whoever owns the partitions next.
    pub async fn write(
        &self,
        batch: &mut FlushBatch,
        label: &str,
        deadline: Option<Instant>,
    ) -> Result<(), FlushDeadlineExceeded> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0u32;
        let mut needs_repair = false;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = self.attempt(batch, needs_repair).await;
            match result {
                Ok(()) => {
                    metrics::flush_succeeded(batch.rows(), started.elapsed());
                    return Ok(());
                }
                Err(error) => {
                    metrics::flush_failed();
                    needs_repair = true;
                    tracing::warn!(flush = label, attempt, %error, ?backoff, "flush failed, retrying");
                    let next_try = Instant::now() + backoff;
                    if deadline.is_some_and(|deadline| next_try >= deadline) {
                        return Err(FlushDeadlineExceeded(error));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    async fn attempt(&self, batch: &mut FlushBatch, needs_repair: bool) -> Result<(), String> {
        if needs_repair {
            for (partition, previous) in &batch.previous_checkpoints {
                remove_uncheckpointed_rows(&self.client, &self.topic, *partition, *previous)
                    .await
                    .map_err(|error| format!("repair of partition {partition}: {error}"))?;
            }
        }
        for flush in &mut batch.partitions {
            self.dead_letters
                .confirm(&mut flush.dead_letters)
                .await
                .map_err(|error| error.to_string())?;
        }
        if let Some(archive) = &self.archive {
            for flush in batch.partitions.iter_mut().filter(|flush| !flush.archived) {
                archive
                    .put_segment(&self.topic, flush.partition, &flush.raw_records)
                    .await
                    .map_err(|error| format!("archiving partition {}: {error}", flush.partition))?;
                flush.archived = true;
            }
        }
        let rows: Vec<&MinuteRow> = batch
            .partitions
            .iter()
            .flat_map(|flush| flush.rows.iter())
            .collect();
        self.insert_rows(&rows)
            .await
            .map_err(|error| format!("inserting minute rows: {error}"))?;
        let checkpoints: Vec<&CheckpointRow> = batch
            .partitions
            .iter()
            .map(|flush| &flush.checkpoint)
            .collect();
        self.insert_checkpoints(&checkpoints)
            .await
            .map_err(|error| format!("inserting checkpoints: {error}"))
    }

    async fn insert_rows(&self, rows: &[&MinuteRow]) -> Result<(), clickhouse::error::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<MinuteRow>(PLAYS_MINUTE)
            .await?
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        for row in rows {
            insert.write(*row).await?;
        }
        insert.end().await
    }

    async fn insert_checkpoints(
        &self,
        checkpoints: &[&CheckpointRow],
    ) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .client
            .insert::<CheckpointRow>(INGEST_CHECKPOINTS)
            .await?
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        for checkpoint in checkpoints {
            insert.write(*checkpoint).await?;
        }
        insert.end().await
    }
}
