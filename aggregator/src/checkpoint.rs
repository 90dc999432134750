//! Exactly-once flushes: minute rows and the checkpoint that makes them count.
//!
//! # The argument
//!
//! ClickHouse has no transactions across inserts, an insert whose rows fall into two day
//! partitions is written as two parts, and a crash can happen anywhere. So the Kafka committed
//! offset cannot say what is in ClickHouse, and neither can "the insert returned". Instead:
//!
//! 1. Every minute row carries the `(topic, kafka_partition, flush_offset)` of the flush that
//!    wrote it, `flush_offset` being the last Kafka offset that flush covers.
//! 2. A flush writes its minute rows first, then one checkpoint row per partition into
//!    `ingest_checkpoints` (a single-block insert into an unpartitioned table: one part,
//!    atomic). The checkpoint is the commit point: a partition's events up to its highest
//!    checkpointed `flush_offset` are counted, and nothing after it is.
//! 3. Rows with `flush_offset` above a partition's checkpoint can only come from a flush that
//!    did not reach its checkpoint (crashed, failed, timed out: wholly, partly, or in one day
//!    partition of two). Before a partition is consumed again — on assignment, and before a
//!    failed flush is retried — those rows are deleted ([`remove_uncheckpointed_rows`]) and
//!    the deletion is awaited. The partition is then re-read from the checkpoint, so those
//!    events are counted by exactly one later flush.
//! 4. A partition has one writer at a time: Kafka's group protocol gives it to one member,
//!    and a member flushes a partition before giving it up (revoke), or abandons the flush
//!    (no checkpoint) when the revoke deadline passes. An insert given up on may still be
//!    finishing on the server, so a repair first waits for the inserts running at that moment.
//! 5. Counting is deterministic given the offsets: the duplicate filter is rebuilt by
//!    re-reading (without counting) from the checkpoint's `dedup_replay_from`, starting at
//!    its `watermark_ms` (see `topk_core::dedup`).
//!
//! So after any crash, the rows in `plays_minute` for a partition are exactly those of the
//! flushes up to its checkpoint, each counted once. The Kafka commit that follows a
//! checkpoint is advisory (for lag monitoring); on assignment the aggregator seeks to the
//! checkpoint, not to Kafka's committed offset.
//!
//! The residual risk is a zombie: a member expelled from the group (for example, frozen past
//! `max.poll.interval.ms`) that wakes up and writes after the new owner repaired. ClickHouse
//! offers no compare-and-set to fence it; the aggregator checks that it still owns a
//! partition right before every flush, which leaves a window of one insert.

use std::time::Duration;

use topk_core::schema::{CheckpointRow, INGEST_CHECKPOINTS, PLAYS_MINUTE};

/// How long to wait for a delete mutation before reporting an error (and retrying).
const MUTATION_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a repair waits for running merges of the table before counting anyway.
const MERGE_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a repair waits for inserts already running on the server.
const INSERT_WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// The checkpoint a partition resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The last offset counted, or `None` when nothing of the partition was ever counted.
    pub counted_through: Option<i64>,
    /// Where to start reading: `dedup_replay_from` (to rebuild the duplicate filter), or the
    /// beginning of the partition.
    pub read_from: Option<i64>,
    /// The duplicate filter's watermark just before `read_from`.
    pub watermark_ms: i64,
}

/// Reads the latest checkpoint of one partition.
pub async fn resume_point(
    client: &clickhouse::Client,
    topic: &str,
    partition: i32,
) -> Result<ResumePoint, clickhouse::error::Error> {
    let latest: Option<CheckpointRow> = client
        .query(&format!(
            "SELECT ?fields FROM {INGEST_CHECKPOINTS} WHERE topic = ? AND kafka_partition = ? \
             ORDER BY flush_offset DESC LIMIT 1"
        ))
        .bind(topic)
        .bind(partition_column(partition))
        .fetch_optional()
        .await?;
    Ok(match latest {
        None => ResumePoint {
            counted_through: None,
            read_from: None,
            watermark_ms: i64::MIN,
        },
        Some(row) => {
            let counted_through = offset_from_column(row.flush_offset);
            let replay_from = offset_from_column(row.dedup_replay_from);
            ResumePoint {
                counted_through: Some(counted_through),
                read_from: Some(replay_from.min(counted_through + 1)),
                watermark_ms: row.watermark_ms,
            }
        }
    })
}

/// Deletes the rows of flushes that never reached a checkpoint and waits for the deletion.
/// Returns how many rows were removed.
pub async fn remove_uncheckpointed_rows(
    client: &clickhouse::Client,
    topic: &str,
    partition: i32,
    counted_through: Option<i64>,
) -> Result<u64, clickhouse::error::Error> {
    // flush_offset is unsigned: "after nothing" is every row, written as `>= 0`.
    let (operator, threshold) = match counted_through {
        Some(offset) => (">", offset_column(offset)),
        None => (">=", 0),
    };
    let condition = format!("topic = ? AND kafka_partition = ? AND flush_offset {operator} ?");
    let stale_rows = |statement: String| {
        client
            .query(&format!("{statement} WHERE {condition}"))
            .bind(topic)
            .bind(partition_column(partition))
            .bind(threshold)
    };
    let select_count = format!("SELECT count() FROM {PLAYS_MINUTE}");

    wait_for_running_inserts(client).await?;
    // ClickHouse 18.16 was seen to leave parts out of a SELECT for a moment while it merged
    // parts rewritten by a delete mutation: don't count in such a moment. A busy table
    // always merges, so after the wait the repair goes on regardless.
    let merges_running = format!(
        "SELECT count() FROM system.merges WHERE database = currentDatabase() \
         AND table = '{PLAYS_MINUTE}'"
    );
    let _ = poll_until(MERGE_WAIT_TIMEOUT, || client.query(&merges_running)).await;
    let stale: u64 = stale_rows(select_count.clone()).fetch_one().await?;
    if stale == 0 {
        return Ok(0);
    }
    tracing::warn!(
        partition,
        rows = stale,
        ?counted_through,
        "removing minute rows of an unfinished flush"
    );
    stale_rows(format!("ALTER TABLE {PLAYS_MINUTE} DELETE"))
        .execute()
        .await?;
    let pending_mutations = format!(
        "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
         AND table = '{PLAYS_MINUTE}' AND is_done = 0"
    );
    if !poll_until(MUTATION_TIMEOUT, || client.query(&pending_mutations)).await? {
        return Err(clickhouse::error::Error::Custom(format!(
            "delete mutation on {PLAYS_MINUTE} not done after {MUTATION_TIMEOUT:?}"
        )));
    }
    let left: u64 = stale_rows(select_count).fetch_one().await?;
    if left != 0 {
        return Err(clickhouse::error::Error::Custom(format!(
            "{left} uncheckpointed rows of partition {partition} survived the delete"
        )));
    }
    Ok(stale)
}

/// Runs the count query every 100 ms until it returns 0; `Ok(false)` if `timeout` passed
/// first.
async fn poll_until(
    timeout: Duration,
    count_query: impl Fn() -> clickhouse::query::Query,
) -> Result<bool, clickhouse::error::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let count: u64 = count_query().fetch_one().await?;
        if count == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the inserts into `plays_minute` running now have finished: an insert that a
/// writer gave up on (timeout, abandoned flush) may still be completing on the server, and
/// its rows must have landed before the repair looks for them.
async fn wait_for_running_inserts(
    client: &clickhouse::Client,
) -> Result<(), clickhouse::error::Error> {
    let running: Vec<String> = client
        .query("SELECT query_id FROM system.processes WHERE query LIKE ?")
        .bind(format!("INSERT INTO%{PLAYS_MINUTE}%"))
        .fetch_all()
        .await?;
    if running.is_empty() {
        return Ok(());
    }
    let still_running = || {
        client
            .query("SELECT count() FROM system.processes WHERE has(?, query_id)")
            .bind(&running)
    };
    if poll_until(INSERT_WAIT_TIMEOUT, still_running).await? {
        return Ok(());
    }
    Err(clickhouse::error::Error::Custom(format!(
        "inserts into {PLAYS_MINUTE} still running after {INSERT_WAIT_TIMEOUT:?}"
    )))
}

pub fn offset_column(offset: i64) -> u64 {
    u64::try_from(offset).expect("kafka offsets are not negative")
}

fn partition_column(partition: i32) -> u32 {
    u32::try_from(partition).expect("kafka partitions are not negative")
}

fn offset_from_column(offset: u64) -> i64 {
    i64::try_from(offset).expect("stored offsets fit in i64")
}
