//! Rolling up one UTC day: the day's minute rows, summed per (user, song), become each
//! user's top 50 in `daily_top`, and a `rollup_progress` row records it.
//!
//! Steps, each safe to interrupt at any point:
//! 1. measure the day's minute rows (`count()`, `sum(plays)`) — before reading them, so rows
//!    arriving during the rollup make the recorded figures too low, never too high, and the
//!    next run rolls the day up again instead of missing them;
//! 2. build the day in a fresh staging table with one `INSERT .. SELECT` inside ClickHouse;
//! 3. `REPLACE PARTITION` swaps the day into `daily_top` atomically;
//! 4. insert the progress row (the API reads `daily_top` for a day only once it exists);
//! 5. drop the staging table.
//!
//! A crash before 3 leaves the previous state; a crash between 3 and 4 leaves a complete new
//! day that the API does not read yet and the next run rebuilds. Two concurrent runs each
//! swap in a complete day built from the same rows.

use std::time::Instant;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use clickhouse::Row;
use serde::Deserialize;
use topk_core::schema::{
    RollupProgressRow, DAILY_TOP, DAILY_TOP_SIZE, PLAYS_MINUTE, ROLLUP_PROGRESS,
};

use crate::day_state::{day_start_secs, minute_stats, next_day, MinuteStats};
use crate::error::{clickhouse_error, RollupError};
use crate::staging::{create_staging_table, drop_staging_table};

/// The day's top list, built entirely inside ClickHouse (no row leaves the server): sum per
/// (user, song), then per user an array of (plays, song) sorted by plays
/// descending and song_id ascending, of which the first `DAILY_TOP_SIZE` are kept and
/// unrolled with their 1-based rank. Collecting each user's songs into one array gives the
/// user's song count in the same pass; 18.16 has no window functions. Ordering the (few)
/// per-user rows by user_id makes the unrolled rows arrive in `daily_top`'s sort order, so
/// the insert skips its own sort of every written row (measured: ~13% of the rollup).
///
/// Placeholders, in order: the day (`YYYY-MM-DD`), the day's start and end in epoch seconds,
/// then (with slices) the slice count and the slice. `{minutes}`, `{top}` and
/// `{slice_filter}` are formatted in (a table name, a constant and a fixed clause).
/// The sort key negates plays as Int64: a user would need 2^63 plays of a song in a day to
/// overflow it.
const ROLLUP_SELECT: &str = "
SELECT
    toDate(?) AS day,
    user_id,
    toUInt16(song_rank) AS rank,
    tupleElement(kept_song, 2) AS song_id,
    tupleElement(kept_song, 1) AS plays,
    user_songs,
    toUInt8(user_songs > {top}) AS user_truncated,
    if(user_songs > {top}, tupleElement(kept_songs[{top}], 1), toUInt64(0)) AS user_cutoff_plays
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
        WHERE minute >= toDateTime(?) AND minute < toDateTime(?){slice_filter}
        GROUP BY user_id, song_id
    )
    GROUP BY user_id
    ORDER BY user_id
)
ARRAY JOIN kept_songs AS kept_song, arrayEnumerate(kept_songs) AS song_rank";

const DAILY_TOP_COLUMNS: &str =
    "day, user_id, rank, song_id, plays, user_songs, user_truncated, user_cutoff_plays";

/// The day's users are split into this many slices by default, each built by its own
/// `INSERT .. SELECT`, concurrently (see [`roll_up_day`]).
pub const DEFAULT_SLICES: u32 = 2;

fn rollup_insert_sql(staging_table: &str, sliced: bool) -> String {
    let slice_filter = if sliced {
        " AND cityHash64(user_id) % ? = ?"
    } else {
        ""
    };
    let select = ROLLUP_SELECT
        .replace("{top}", &DAILY_TOP_SIZE.to_string())
        .replace("{minutes}", PLAYS_MINUTE)
        .replace("{slice_filter}", slice_filter);
    format!("INSERT INTO {staging_table} ({DAILY_TOP_COLUMNS}){select}")
}

/// The partition id of `day` in a table partitioned by a `Date` (the same on every version).
pub fn partition_id(day: NaiveDate) -> String {
    day.format("%Y%m%d").to_string()
}

#[derive(Debug, Row, Deserialize)]
struct StagedDay {
    rows_written: u64,
    users: u64,
}

/// Rolls up `day` (see the module docs) and returns the progress row it recorded.
///
/// With `slices` > 1 the users are split by `cityHash64(user_id) % slices` and each slice
/// is built by its own `INSERT .. SELECT`, all running at once into the same staging table.
/// A user lies in exactly one slice, so the result is the same; it is faster because
/// ClickHouse (18.16 at least) runs the per-user stage and the write of one `INSERT ..
/// SELECT` on a single thread, while the scan before them uses every core.
pub async fn roll_up_day(
    client: &clickhouse::Client,
    day: NaiveDate,
    slices: u32,
) -> Result<RollupProgressRow, RollupError> {
    let started = Instant::now();
    let read = minute_stats(client, day, day)
        .await?
        .get(&day)
        .copied()
        .unwrap_or_default();
    let staging_table = create_staging_table(client, day).await?;
    let swapped = build_and_swap(client, day, &staging_table, read, slices).await;
    // Dropped whatever happened; if even that fails, `prune` drops it a day later.
    if let Err(error) = drop_staging_table(client, &staging_table).await {
        tracing::warn!(%error, table = %staging_table, "staging table left behind");
    }
    let staged = swapped?;
    let progress = RollupProgressRow {
        day,
        rolled_up_at: next_rolled_up_at(client, day).await?,
        minute_rows_read: read.minute_rows,
        plays_read: read.plays,
        users: staged.users,
        rows_written: staged.rows_written,
        seconds: started.elapsed().as_secs_f64(),
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

async fn build_and_swap(
    client: &clickhouse::Client,
    day: NaiveDate,
    staging_table: &str,
    read: MinuteStats,
    slices: u32,
) -> Result<StagedDay, RollupError> {
    let slices = slices.max(1);
    let sql = rollup_insert_sql(staging_table, slices > 1);
    let slice_inserts = (0..slices).map(|slice| {
        let mut query = client
            .query(&sql)
            .bind(day.to_string())
            .bind(day_start_secs(day))
            .bind(day_start_secs(next_day(day)));
        if slices > 1 {
            query = query.bind(slices).bind(slice);
        }
        query.execute()
    });
    futures::future::try_join_all(slice_inserts)
        .await
        .map_err(clickhouse_error(format!(
            "building {day} in {staging_table}"
        )))?;
    let staged: StagedDay = client
        .query(&format!(
            "SELECT count() AS rows_written, countIf(rank = 1) AS users FROM {staging_table}"
        ))
        .fetch_one()
        .await
        .map_err(clickhouse_error(format!("counting {staging_table}")))?;
    // Minute rows measured a moment ago and none read: the day's partition was dropped in
    // between (a concurrent prune). Swapping in the empty result would erase a good top 50.
    if read.minute_rows > 0 && staged.rows_written == 0 {
        return Err(RollupError::MinuteRowsVanished { day });
    }
    let partition = partition_id(day);
    client
        .query(&format!(
            "ALTER TABLE {DAILY_TOP} REPLACE PARTITION ID '{partition}' FROM {staging_table}"
        ))
        .execute()
        .await
        .map_err(clickhouse_error(format!("swapping {day} into {DAILY_TOP}")))?;
    tracing::debug!(%day, rows = staged.rows_written, "day swapped in");
    Ok(staged)
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
        let sql = rollup_insert_sql("daily_top_staging_x", false);
        assert!(sql.starts_with("INSERT INTO daily_top_staging_x (day, user_id, rank,"));
        assert_eq!(sql.matches('?').count(), 3);
        assert!(!sql.contains('{'), "{sql}");
        assert!(!sql.contains("cityHash64"));
        assert!(sql.contains("arraySlice("));
        assert!(sql.contains("user_songs > 50"));
        assert!(sql.contains("FROM plays_minute"));
        let sliced = rollup_insert_sql("daily_top_staging_x", true);
        assert_eq!(sliced.matches('?').count(), 5);
        assert!(sliced.contains("AND cityHash64(user_id) % ? = ?\n"));
    }

    #[test]
    fn partition_ids_are_yyyymmdd() {
        assert_eq!(
            partition_id(NaiveDate::from_ymd_opt(2026, 1, 5).unwrap()),
            "20260105"
        );
    }
}
