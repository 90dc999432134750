//! Rolling up one UTC day: the day's committed minute rows, summed per (user, song), become
//! each user's top 50 in `daily_top`, as a new *snapshot* of the day, recorded in
//! `rollup_progress` together with exactly what it read. (The charts' hourly rows have their
//! own snapshots: [`crate::charts`].)
//!
//! Steps, each safe to interrupt at any point:
//! 1. take a snapshot of what counts ([`CommittedFlushes`]): every read below applies it, so
//!    rows of flushes not committed (a crash, a flush in flight, a zombie's late write) are
//!    never rolled up, and rows committed later are recognisable as new;
//! 2. insert the day's top lists into `daily_top`, tagged with a new snapshot id, with one
//!    `INSERT .. SELECT` per slice of users inside ClickHouse;
//! 3. insert the progress row: the snapshot id and the heads of what it read. Readers use
//!    the latest recorded snapshot of a day only, so a half-written snapshot (a crash in 2)
//!    is never read;
//! 4. later runs delete superseded snapshots ([`delete_superseded_snapshots`]).
//!
//! Two concurrent runs each write a complete snapshot; the later one (higher id) is read.

use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use clickhouse::Row;
use serde::Deserialize;
use topk_core::committed::{CommittedFlushes, SnapshotHeads};
use topk_core::schema::{
    RollupProgressRow, DAILY_TOP, DAILY_TOP_SIZE, PLAYS_MINUTE, ROLLUP_PROGRESS,
};

use topk_core::cluster::Placement;

use crate::day_state::{day_start_secs, next_day};
use crate::error::{clickhouse_error, RollupError};

/// A superseded snapshot is deleted once the newer one was recorded this long ago: every
/// API replica has switched to the newer one by then (its plan lives at most a minute).
pub const SNAPSHOT_GRACE: StdDuration = StdDuration::from_secs(120);

/// The day's top list, built entirely inside ClickHouse (no row leaves the server): sum per
/// (user, song) over the committed minute rows, then per user an array of (plays, song) sorted
/// by plays descending and song_id ascending, of which the first `DAILY_TOP_SIZE` are kept
/// and unrolled with their 1-based rank. Collecting each user's songs into one array gives
/// the user's song count in the same pass; 18.16 has no window functions. Ordering the (few)
/// per-user rows by user_id makes the unrolled rows arrive in `daily_top`'s sort order, so
/// the insert skips its own sort of every written row (measured: ~13% of the rollup).
///
/// Placeholders, in order: the day (`YYYY-MM-DD`), the snapshot id, the day's start and end in
/// epoch seconds, the four arrays of the committed condition, then (with slices) the slice
/// count and the slice. `{minutes}`, `{top}`, `{committed}` and `{slice_filter}` are
/// formatted in (a table name, a constant and fixed clauses). The sort key negates plays as
/// Int64: a user would need 2^63 plays of a song in a day to overflow it.
const ROLLUP_SELECT: &str = "
SELECT
    toDate(?) AS day,
    user_id,
    toUInt16(song_rank) AS rank,
    tupleElement(kept_song, 2) AS song_id,
    tupleElement(kept_song, 1) AS plays,
    user_songs,
    toUInt8(user_songs > {top}) AS user_truncated,
    if(user_songs > {top}, tupleElement(kept_songs[{top}], 1), toUInt64(0)) AS user_cutoff_plays,
    toUInt64(?) AS snapshot_id
FROM
(
    SELECT
        user_id,
        count() AS user_songs,
        arraySlice(
            arraySort(song -> (-toInt64(tupleElement(song, 1)), tupleElement(song, 2)),
                      groupArray((song_plays, song_id))),
            1, {top}) AS kept_songs
    FROM
    (
        SELECT user_id, song_id, sum(plays) AS song_plays
        FROM {minutes}
        WHERE minute >= toDateTime(?) AND minute < toDateTime(?) AND {committed}{slice_filter}
        GROUP BY user_id, song_id
    )
    GROUP BY user_id
    ORDER BY user_id
)
ARRAY JOIN kept_songs AS kept_song, arrayEnumerate(kept_songs) AS song_rank";

const DAILY_TOP_COLUMNS: &str = "day, user_id, rank, song_id, plays, user_songs, \
     user_truncated, user_cutoff_plays, snapshot_id";

/// The day's users are split into this many slices by default, each built by its own
/// `INSERT .. SELECT`, concurrently (see [`roll_up_day`]).
pub const DEFAULT_SLICES: u32 = 2;

fn rollup_insert_sql(sliced: bool) -> String {
    let slice_filter = if sliced {
        " AND cityHash64(user_id) % ? = ?"
    } else {
        ""
    };
    let select = ROLLUP_SELECT
        .replace("{top}", &DAILY_TOP_SIZE.to_string())
        .replace("{minutes}", PLAYS_MINUTE)
        .replace("{committed}", &CommittedFlushes::condition(""))
        .replace("{slice_filter}", slice_filter);
    format!("INSERT INTO {DAILY_TOP} ({DAILY_TOP_COLUMNS}){select}")
}

/// The partition id of `day` in a table partitioned by a `Date` (the same on every version).
pub fn partition_id(day: NaiveDate) -> String {
    day.format("%Y%m%d").to_string()
}

/// A new snapshot id: milliseconds since the epoch, then 16 random bits, so a later
/// snapshot has a higher id.
pub fn new_snapshot_id(now: DateTime<Utc>) -> u64 {
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    (millis << 16) | u64::from(rand::random::<u16>())
}

/// When a snapshot was taken, from its id.
pub fn snapshot_time(snapshot_id: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(snapshot_id >> 16).ok()?)
}

#[derive(Debug, Row, Deserialize)]
struct WrittenSnapshot {
    rows_written: u64,
    users: u64,
}

#[derive(Debug, Row, Deserialize)]
struct CommittedDay {
    minute_rows: u64,
    plays: u64,
}

/// What a snapshot (of top lists or of charts) starts from: the settings of its inserts (see
/// `Placement::all_replicas_insert_settings`), what counts, and its new id.
pub(crate) struct SnapshotStart {
    pub insert_settings: Vec<(&'static str, String)>,
    pub committed: CommittedFlushes,
    pub snapshot_id: u64,
}

impl SnapshotStart {
    pub async fn take(
        client: &clickhouse::Client,
        placement: &Placement,
    ) -> Result<Self, RollupError> {
        let insert_settings = placement
            .all_replicas_insert_settings(client)
            .await
            .map_err(RollupError::Cluster)?;
        let committed = CommittedFlushes::read(client)
            .await
            .map_err(|error| RollupError::Committed(error.to_string()))?;
        Ok(Self {
            insert_settings,
            committed,
            snapshot_id: new_snapshot_id(Utc::now()),
        })
    }
}

/// Rolls up `day` (see the module docs) and returns the progress row it recorded.
///
/// With `slices` > 1 the users are split by `cityHash64(user_id) % slices` and each slice
/// is built by its own `INSERT .. SELECT`, all running at once. A user lies in exactly one
/// slice, so the result is the same; it is faster because ClickHouse (18.16 at least) runs
/// the per-user stage and the write of one `INSERT .. SELECT` on a single thread, while the
/// scan before them uses every core.
///
/// On a cluster (`placement`) the snapshot's rows go through the `Distributed` table to each
/// user's shard, and every slice's insert returns only once its rows are on every replica of
/// their shard (quorum), one slice after the other; the progress row is written only after
/// the last one. A shard that cannot take them (a replica down, ZooKeeper away) fails the
/// day: no progress row, so readers keep answering the day from its minute rows.
pub async fn roll_up_day(
    client: &clickhouse::Client,
    placement: &Placement,
    day: NaiveDate,
    slices: u32,
) -> Result<RollupProgressRow, RollupError> {
    let started = Instant::now();
    let SnapshotStart {
        insert_settings,
        committed,
        snapshot_id,
    } = SnapshotStart::take(client, placement).await?;
    let read = committed_day(client, &committed, day).await?;
    let written = write_snapshot(
        client,
        &committed,
        day,
        snapshot_id,
        slices,
        &insert_settings,
    )
    .await?;
    // Committed rows measured a moment ago and none written: the day's partition was
    // dropped in between (a concurrent prune). Recording it would replace a good top 50.
    if read.minute_rows > 0 && written.rows_written == 0 {
        return Err(RollupError::MinuteRowsVanished { day });
    }
    let heads = SnapshotHeads::of(&committed);
    let progress = RollupProgressRow {
        day,
        rolled_up_at: next_rolled_up_at(client, day).await?,
        minute_rows_read: read.minute_rows,
        plays_read: read.plays,
        users: written.users,
        rows_written: written.rows_written,
        seconds: started.elapsed().as_secs_f64(),
        snapshot_id,
        snapshot_partitions: heads.partitions,
        snapshot_newest_claim_ids: heads.claim_ids,
        snapshot_newest_max_seqs: heads.max_seqs,
    };
    let mut insert = client
        .insert::<RollupProgressRow>(ROLLUP_PROGRESS)
        .await
        .map_err(clickhouse_error("starting the rollup progress insert"))?;
    insert
        .write(&progress)
        .await
        .map_err(clickhouse_error(format!("recording the rollup of {day}")))?;
    insert
        .end()
        .await
        .map_err(clickhouse_error(format!("recording the rollup of {day}")))?;
    Ok(progress)
}

/// `count()` and `sum(plays)` of the day's committed minute rows (for the summary line).
async fn committed_day(
    client: &clickhouse::Client,
    committed: &CommittedFlushes,
    day: NaiveDate,
) -> Result<CommittedDay, RollupError> {
    let query = client
        .query(&format!(
            "SELECT count() AS minute_rows, sum(plays) AS plays FROM {PLAYS_MINUTE} \
             WHERE minute >= toDateTime(?) AND minute < toDateTime(?) AND {}",
            CommittedFlushes::condition("")
        ))
        .bind(day_start_secs(day))
        .bind(day_start_secs(next_day(day)));
    committed
        .bind(query)
        .fetch_one()
        .await
        .map_err(clickhouse_error(format!(
            "measuring the minute rows of {day}"
        )))
}

async fn write_snapshot(
    client: &clickhouse::Client,
    committed: &CommittedFlushes,
    day: NaiveDate,
    snapshot_id: u64,
    slices: u32,
    insert_settings: &[(&'static str, String)],
) -> Result<WrittenSnapshot, RollupError> {
    let slices = slices.max(1);
    let sql = rollup_insert_sql(slices > 1);
    let slice_insert = |slice: u32| {
        let mut query = client.query(&sql);
        for (name, value) in insert_settings {
            query = query.with_setting(*name, value.clone());
        }
        query = query
            .bind(day.to_string())
            .bind(snapshot_id)
            .bind(day_start_secs(day))
            .bind(day_start_secs(next_day(day)));
        query = committed.bind(query);
        if slices > 1 {
            query = query.bind(slices).bind(slice);
        }
        query.execute()
    };
    let failed = |source| RollupError::ClickHouse {
        action: format!("writing snapshot {snapshot_id} of {day} into {DAILY_TOP}"),
        source,
    };
    if insert_settings
        .iter()
        .any(|(name, _)| *name == "insert_quorum")
    {
        // One quorum insert per table at a time (see `all_replicas_insert_settings`).
        for slice in 0..slices {
            slice_insert(slice).await.map_err(failed)?;
        }
    } else {
        futures::future::try_join_all((0..slices).map(slice_insert))
            .await
            .map_err(failed)?;
    }
    let written: WrittenSnapshot = client
        .query(&format!(
            "SELECT count() AS rows_written, countIf(rank = 1) AS users FROM {DAILY_TOP} \
             WHERE day = toDate(?) AND snapshot_id = ?"
        ))
        .bind(day.to_string())
        .bind(snapshot_id)
        .fetch_one()
        .await
        .map_err(clickhouse_error(format!("counting snapshot {snapshot_id}")))?;
    tracing::debug!(%day, snapshot_id, rows = written.rows_written, "snapshot written");
    Ok(written)
}

/// Deletes the rows of `day`'s snapshots in `table` (`daily_top`, `chart_hours`) older than
/// `current` once `current` is older than
/// [`SNAPSHOT_GRACE`] (readers have switched to it). Returns how many rows were scheduled
/// for deletion (0: nothing to do, or too early).
pub async fn delete_superseded_snapshots(
    client: &clickhouse::Client,
    placement: &Placement,
    table: &str,
    day: NaiveDate,
    current: u64,
    clock_now: DateTime<Utc>,
) -> Result<u64, RollupError> {
    let recorded = snapshot_time(current).unwrap_or(clock_now);
    let grace = Duration::from_std(SNAPSHOT_GRACE).unwrap_or_default();
    if clock_now - recorded < grace {
        return Ok(0);
    }
    // Only older snapshots: a newer one may be being written by a concurrent run.
    let superseded: u64 = client
        .query(&format!(
            "SELECT count() FROM {table} WHERE day = toDate(?) AND snapshot_id < ?"
        ))
        .bind(day.to_string())
        .bind(current)
        .fetch_one()
        .await
        .map_err(clickhouse_error(format!(
            "counting superseded snapshots of {day} in {table}"
        )))?;
    if superseded == 0 {
        return Ok(0);
    }
    placement
        .alter(
            client,
            table,
            &format!("DELETE WHERE day = toDate('{day}') AND snapshot_id < {current}"),
            &[],
        )
        .await
        .map_err(clickhouse_error(format!(
            "deleting superseded snapshots of {day} from {table}"
        )))?;
    Ok(superseded)
}

/// Now, but strictly after the day's latest rollup, so "latest `rolled_up_at` wins" always
/// names one row even when a day is rolled up twice within a second.
async fn next_rolled_up_at(
    client: &clickhouse::Client,
    day: NaiveDate,
) -> Result<DateTime<Utc>, RollupError> {
    let latest_secs: u32 = client
        .query(&format!(
            "SELECT toUInt32(max(rolled_up_at)) FROM {ROLLUP_PROGRESS} WHERE day = toDate(?)"
        ))
        .bind(day.to_string())
        .fetch_one()
        .await
        .map_err(clickhouse_error(format!(
            "reading the latest rollup of {day}"
        )))?;
    let now = Utc::now();
    let now_secs = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    let after_latest = DateTime::from_timestamp(i64::from(latest_secs), 0)
        .map_or(now_secs, |latest| latest + Duration::seconds(1));
    Ok(now_secs.max(after_latest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_its_placeholders_and_no_template_left() {
        let sql = rollup_insert_sql(false);
        assert!(sql.starts_with("INSERT INTO daily_top (day, user_id, rank,"));
        assert_eq!(sql.matches('?').count(), 8);
        assert!(!sql.contains('{'), "{sql}");
        assert!(!sql.contains("cityHash64"));
        assert!(sql.contains("arraySlice("));
        assert!(sql.contains("user_songs > 50"));
        assert!(sql.contains("FROM plays_minute"));
        assert!(sql.contains("flush_seq <= transform(claim_id"));
        let sliced = rollup_insert_sql(true);
        assert_eq!(sliced.matches('?').count(), 10);
        assert!(sliced.contains(" AND cityHash64(user_id) % ? = ?\n"));
    }

    #[test]
    fn partition_ids_are_yyyymmdd() {
        assert_eq!(
            partition_id(NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()),
            "20260105"
        );
    }

    #[test]
    fn snapshot_ids_grow_with_time_and_say_when() {
        let earlier = DateTime::from_timestamp(1_795_220_000, 0).unwrap();
        let later = earlier + Duration::milliseconds(1);
        let first = new_snapshot_id(earlier);
        assert!(new_snapshot_id(later) > first);
        assert_eq!(snapshot_time(first), Some(earlier));
    }
}
