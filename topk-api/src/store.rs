//! Reading a user's plays of the window from ClickHouse: exact for every user.
//!
//! Per request, one query (two for a user with a truncated day), which counts only committed
//! flushes (`topk_core::committed`) and reads each day of the window in one of three ways
//! ([`DaySource`]):
//!
//! - **today, and days not rolled up**: the user's committed minute rows;
//! - **rolled-up days** (the fast path): the user's top 50 of the day's current snapshot
//!   (`topk_core::snapshots`), which is complete unless the user played more than 50 songs
//!   that day; for such a *truncated* (user, day) the user's minute rows of the day are read
//!   instead. Plays committed after the snapshot was taken (late plays) are added from
//!   minute rows: exactly the rows above the snapshot's recorded heads;
//! - **rolled-up days whose minute rows are gone** (an operator pruned them inside the
//!   window): the top lists alone, truncated ones included, with the truncation bounds of
//!   [`crate::ranking`] deciding whether the answer is still exact — and it is not when
//!   plays were committed for such a day after its rollup ([`WindowSongs::complete`]).
//!
//! The minute rows of a rolled-up day are only read where needed. The first query reads the
//! user's top lists and the minute rows of the days no top list covers (and late plays); a
//! truncated list shows up in it as a marker, and only then does a second query read that
//! day's minute rows, so a light listener reads today's minute rows only. (A scalar subquery
//! finding the truncated days inside one query costs ~5× more on ClickHouse 18.16, which runs
//! it once per use.) Both filter by `PREWHERE user_id`, so the conditions that follow are
//! evaluated on the user's rows only, and their SQL carries only the clauses the plan needs.
//!
//! What the store knows about the days ([`ReadPlan`]: what counts, the current snapshots,
//! the days with late plays, the days with minute rows) is reused for a short time. A plan a
//! moment old is still exact: its committed-flush snapshot and the rollup snapshots it names
//! only grow, and the rows of a snapshot are never changed (a newer rollup writes a new
//! snapshot; old ones are deleted minutes after nobody reads them). So an answer is the
//! exact top list of the plays committed up to a moment at most one plan lifetime ago, and a
//! user's counts never go down while the window does not move.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use topk_core::cluster::Placement;
use topk_core::committed::CommittedFlushes;
use topk_core::schema::{RollupProgressRow, DAILY_TOP, FLUSH_COMMITS, PLAYS_MINUTE};
use topk_core::snapshots::{days_with_new_commits, latest_rollups, DayHeads};
use topk_core::window::{day_number, day_start, Window};

use crate::error::AppError;
use crate::ranking::StoredSong;

/// The ClickHouse side of the API.
#[derive(Debug)]
pub struct Store {
    client: clickhouse::Client,
    query_timeout: Duration,
    plans: ReadPlanCache,
    placement: Placement,
}

impl Store {
    pub fn new(
        client: clickhouse::Client,
        placement: Placement,
        query_timeout: Duration,
        plan_ttl: Duration,
    ) -> Self {
        Self {
            client,
            query_timeout,
            plans: ReadPlanCache::new(plan_ttl),
            placement,
        }
    }

    /// The client every query of the API goes through (with its settings).
    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }

    /// Every song `user_id` played in `window`, with its plays and the truncation facts
    /// [`crate::ranking::rank`] needs. Answers within the query timeout or fails with
    /// [`AppError::QueryTimeout`].
    pub async fn songs_in_window(
        &self,
        user_id: &str,
        window: &Window,
    ) -> Result<WindowSongs, AppError> {
        self.within_timeout(async {
            let plan = self.window_plan(window).await?;
            let first: Vec<FirstQueryRow> = timed(
                "top_songs",
                plan.first_query(&self.client, user_id).fetch_all(),
            )
            .await?;
            let mut songs: BTreeMap<String, StoredSong> = BTreeMap::new();
            let mut truncated_days: Vec<u16> = Vec::new();
            for row in first {
                if row.song_id.is_empty() {
                    truncated_days = row.truncated_days_unread;
                    continue;
                }
                songs.insert(
                    row.song_id.clone(),
                    StoredSong {
                        song_id: row.song_id,
                        plays: row.total_plays,
                        truncated_days_present: row.truncated_days_present,
                    },
                );
            }
            if !truncated_days.is_empty() {
                truncated_days.sort_unstable();
                truncated_days.dedup();
                let rows: Vec<MinuteSongRow> = timed(
                    "truncated_days",
                    plan.truncated_days_query(&self.client, user_id, &truncated_days)
                        .fetch_all(),
                )
                .await?;
                for row in rows {
                    songs
                        .entry(row.song_id.clone())
                        .or_insert_with(|| StoredSong {
                            song_id: row.song_id,
                            plays: 0,
                            truncated_days_present: Vec::new(),
                        })
                        .plays += row.total_plays;
                }
            }
            Ok(WindowSongs {
                songs: songs.into_values().filter(|song| song.plays > 0).collect(),
                complete: !plan.plays_lost,
                data_through: plan.data_through,
            })
        })
        .await
    }

    /// The SQL of the first query [`Self::songs_in_window`] sends for `user_id` (the benchmark
    /// sends it straight to ClickHouse to measure the ceiling; a user with a truncated day
    /// costs the API a second query).
    pub async fn songs_in_window_sql(
        &self,
        user_id: &str,
        window: &Window,
    ) -> Result<String, AppError> {
        let plan = self.within_timeout(self.window_plan(window)).await?;
        Ok(plan
            .first_query(&self.client, user_id)
            .sql_display()
            .to_string())
    }

    /// The SQL of the second query [`Self::songs_in_window`] sends for a user whose lists of
    /// `days` are truncated (for the benchmark's ceiling of heavy listeners).
    pub async fn truncated_days_sql(
        &self,
        user_id: &str,
        window: &Window,
        days: &[NaiveDate],
    ) -> Result<String, AppError> {
        let plan = self.within_timeout(self.window_plan(window)).await?;
        let mut numbers: Vec<u16> = days.iter().copied().map(day_number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        Ok(plan
            .truncated_days_query(&self.client, user_id, &numbers)
            .sql_display()
            .to_string())
    }

    async fn window_plan(&self, window: &Window) -> Result<WindowPlan, AppError> {
        let read_plan = self
            .plans
            .get(
                &self.client,
                &self.placement,
                window.from.date_naive(),
                window.today(),
            )
            .await?;
        Ok(WindowPlan::new(window, &read_plan))
    }

    /// The applied schema version, checking that ClickHouse answers.
    pub async fn schema_version(&self) -> Result<Option<u32>, AppError> {
        self.within_timeout(timed(
            "schema_version",
            topk_core::migrate::applied_version(&self.client),
        ))
        .await
    }

    async fn within_timeout<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, AppError>>,
    ) -> Result<T, AppError> {
        tokio::time::timeout(self.query_timeout, work)
            .await
            .unwrap_or(Err(AppError::QueryTimeout(self.query_timeout)))
    }
}

/// Runs one ClickHouse call and records its latency in `clickhouse_query_duration_seconds`.
async fn timed<T>(
    query: &'static str,
    call: impl std::future::Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, AppError> {
    let started = Instant::now();
    let result = call.await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!("clickhouse_query_duration_seconds", "query" => query, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    Ok(result?)
}

/// What the store knows about the days from `first_day` to `last_day`.
#[derive(Debug, Clone, Default)]
pub struct ReadPlan {
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    /// What counts.
    pub committed: CommittedFlushes,
    /// The current rollup snapshot of each rolled-up day.
    pub snapshots: BTreeMap<NaiveDate, RollupProgressRow>,
    /// Rolled-up days with plays committed after their snapshot.
    pub late_days: BTreeSet<NaiveDate>,
    /// Days whose minute rows are (at least partly) there.
    pub minute_days: BTreeSet<NaiveDate>,
    /// How fresh the counts are: every partition's counted plays reach up to at least this
    /// Kafka timestamp (the oldest of the partitions' newest counted records); `None` while
    /// some partition has no such record (nothing counted, or commits from before schema 6).
    pub data_through: Option<chrono::DateTime<chrono::Utc>>,
}

impl ReadPlan {
    /// Reads the plan of the days from `first_day` to `last_day`.
    pub async fn read(
        client: &clickhouse::Client,
        placement: &Placement,
        first_day: NaiveDate,
        last_day: NaiveDate,
    ) -> Result<Self, AppError> {
        let committed = timed("committed_flushes", async {
            CommittedFlushes::read(client)
                .await
                .map_err(|error| match error {
                    topk_core::committed::CommittedError::ClickHouse(error) => error,
                    other => clickhouse::error::Error::Custom(other.to_string()),
                })
        })
        .await?;
        let snapshots: BTreeMap<NaiveDate, RollupProgressRow> = timed(
            "rollup_snapshots",
            latest_rollups(client, first_day, last_day),
        )
        .await?
        .into_iter()
        .filter(|(_, progress)| progress.snapshot_id != 0)
        .collect();
        let late_days = timed(
            "late_days",
            days_with_new_commits(client, &committed, &snapshots),
        )
        .await?;
        let partitions: Vec<String> = timed(
            "minute_days",
            client
                // Every shard's parts on a cluster.
                .query(&format!(
                    "SELECT DISTINCT partition_id {} AND active",
                    placement.system_rows_of("parts", PLAYS_MINUTE)
                ))
                .fetch_all(),
        )
        .await?;
        let minute_days = partitions
            .iter()
            .filter_map(|id| NaiveDate::parse_from_str(id, "%Y%m%d").ok())
            .collect();
        let data_through = timed("data_through", data_through(client, &committed)).await?;
        Ok(Self {
            first_day,
            last_day,
            committed,
            snapshots,
            late_days,
            minute_days,
            data_through,
        })
    }

    /// How `day` is read (see the module docs).
    pub fn source(&self, day: NaiveDate, today: NaiveDate) -> DaySource {
        let Some(snapshot) = self.snapshots.get(&day).filter(|_| day < today) else {
            return DaySource::Minutes;
        };
        if !self.minute_days.contains(&day) && snapshot.minute_rows_read > 0 {
            return DaySource::TopListsOnly {
                snapshot_id: snapshot.snapshot_id,
                late: self.late_days.contains(&day),
            };
        }
        DaySource::TopLists {
            snapshot_id: snapshot.snapshot_id,
            late: self.late_days.contains(&day),
        }
    }
}

/// The oldest of the partitions' newest counted records (see [`ReadPlan::data_through`]):
/// one row per partition of the commits that count in `committed`.
async fn data_through(
    client: &clickhouse::Client,
    committed: &CommittedFlushes,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, clickhouse::error::Error> {
    let partitions = committed.partitions().count();
    if partitions == 0 {
        return Ok(None);
    }
    let query = client.query(&format!(
        "SELECT kafka_partition, max(records_through_ms) FROM {FLUSH_COMMITS} \
         WHERE {} GROUP BY kafka_partition",
        CommittedFlushes::condition("")
    ));
    let newest: Vec<(u32, i64)> = committed.bind(query).fetch_all().await?;
    if newest.len() < partitions || newest.iter().any(|(_, through)| *through <= 0) {
        return Ok(None);
    }
    Ok(newest
        .iter()
        .map(|(_, through)| *through)
        .min()
        .and_then(chrono::DateTime::from_timestamp_millis))
}

/// How one day of the window is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaySource {
    /// The user's committed minute rows.
    Minutes,
    /// The snapshot's top list of the user, or the user's minute rows when that list is
    /// truncated; plus, when `late`, the user's rows committed after the snapshot.
    TopLists { snapshot_id: u64, late: bool },
    /// The snapshot's top list alone, truncated or not: the day's minute rows are gone. With
    /// `late`, plays committed after the snapshot are gone with them: the answer cannot be
    /// exact.
    TopListsOnly { snapshot_id: u64, late: bool },
}

/// Every song a user played in the window, as the store can read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSongs {
    pub songs: Vec<StoredSong>,
    /// False when plays of the window cannot be read at all: a day's minute rows were pruned
    /// after plays were committed for it past its rollup.
    pub complete: bool,
    /// See [`ReadPlan::data_through`].
    pub data_through: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which tables one request reads for which days, and the SQL for it.
#[derive(Debug, Clone)]
struct WindowPlan {
    first_day: NaiveDate,
    last_day: NaiveDate,
    window_end_secs: i64,
    committed: topk_core::committed::CommittedArrays,
    /// Snapshot ids of the days read from top lists.
    snapshot_ids: Vec<u64>,
    /// Days read from top lists (with or without minute rows).
    top_list_days: Vec<u16>,
    /// Days read from top lists alone (their minute rows are gone).
    top_lists_only_days: Vec<u16>,
    /// Days with plays committed after their snapshot, and their snapshots' heads.
    late_days: Vec<u16>,
    late_heads: DayHeads,
    /// The start of the first day every user's minute rows are needed for (a day read from
    /// minute rows, or with late plays).
    minutes_from_secs: i64,
    /// A day read from top lists alone had plays committed after its rollup.
    plays_lost: bool,
    data_through: Option<chrono::DateTime<chrono::Utc>>,
}

impl WindowPlan {
    fn new(window: &Window, plan: &ReadPlan) -> Self {
        let today = window.today();
        let mut days: Vec<NaiveDate> = window.previous_days();
        days.push(today);
        let mut this = Self {
            first_day: window.from.date_naive(),
            last_day: today,
            window_end_secs: window.to.timestamp(),
            committed: plan.committed.arrays(),
            data_through: plan.data_through,
            snapshot_ids: Vec::new(),
            top_list_days: Vec::new(),
            top_lists_only_days: Vec::new(),
            late_days: Vec::new(),
            late_heads: DayHeads::default(),
            minutes_from_secs: day_start(today).timestamp(),
            plays_lost: false,
        };
        let mut late_snapshots = Vec::new();
        let mut first_minutes_day = today;
        for day in days {
            match plan.source(day, today) {
                DaySource::Minutes => first_minutes_day = first_minutes_day.min(day),
                DaySource::TopLists { snapshot_id, late } => {
                    this.snapshot_ids.push(snapshot_id);
                    this.top_list_days.push(day_number(day));
                    if late {
                        this.late_days.push(day_number(day));
                        late_snapshots.push(&plan.snapshots[&day]);
                        first_minutes_day = first_minutes_day.min(day);
                    }
                }
                DaySource::TopListsOnly { snapshot_id, late } => {
                    this.snapshot_ids.push(snapshot_id);
                    this.top_list_days.push(day_number(day));
                    this.top_lists_only_days.push(day_number(day));
                    this.plays_lost |= late;
                }
            }
        }
        this.late_heads = DayHeads::of(late_snapshots);
        this.minutes_from_secs = day_start(first_minutes_day).timestamp();
        this
    }

    /// In-memory twin of the SQL (for the model test): whether the first query reads a
    /// committed minute row of day `day` (a day number)
    /// that was (`late_row`) or was not committed after that day's snapshot: rows of the days
    /// no top list covers from the first minute day on, and late rows of late days.
    #[cfg(test)]
    fn first_query_reads(&self, day: u16, late_row: bool) -> bool {
        i64::from(day) * 86_400 >= self.minutes_from_secs
            && (!self.top_list_days.contains(&day) || (late_row && self.late_days.contains(&day)))
    }

    /// In-memory twin of the SQL: whether the truncated-days query for `truncated` reads such
    /// a row: every row of those
    /// days but the late rows the first query already read.
    #[cfg(test)]
    fn truncated_query_reads(&self, truncated: &[u16], day: u16, late_row: bool) -> bool {
        truncated.contains(&day) && !(late_row && self.late_days.contains(&day))
    }

    /// The first query: the user's top lists of the days read from them (a truncated list
    /// that has minute rows as one marker row with an empty `song_id` listing those days in
    /// `truncated_days_unread`) and the minute rows [`Self::first_query_reads`] names, summed
    /// per song. Every value is bound; clauses the plan does not need are left out.
    fn first_query(&self, client: &clickhouse::Client, user_id: &str) -> clickhouse::query::Query {
        let only_days = !self.top_lists_only_days.is_empty();
        let (kind, keep_truncated) = if only_days {
            (
                "multiIf(user_truncated = 0, 0, has(CAST(? AS Array(UInt16)), toUInt16(day)), 1, 2)",
                "(user_truncated = 0 OR rank = 1 OR has(CAST(? AS Array(UInt16)), toUInt16(day)))",
            )
        } else {
            (
                "if(user_truncated = 0, 0, 2)",
                "(user_truncated = 0 OR rank = 1)",
            )
        };
        let minutes_to_day = self.window_end_secs.div_euclid(86_400);
        let minutes_from_day = self.minutes_from_secs.div_euclid(86_400);
        let top_list_in_minutes = self
            .top_list_days
            .iter()
            .any(|&day| (minutes_from_day..=minutes_to_day).contains(&i64::from(day)));
        let day_filter = match (top_list_in_minutes, self.late_days.is_empty()) {
            (false, _) => String::new(),
            (true, true) => {
                " AND NOT has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute)))".to_owned()
            }
            (true, false) => format!(
                " AND (NOT has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute))) \
                   OR (has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute))) AND {late}))",
                late = DayHeads::condition("toUInt16(toDate(minute))"),
            ),
        };
        let sql = format!(
            "SELECT song AS song_id, sum(song_plays) AS total_plays, \
             groupArrayIf((day_number, cutoff_plays), kind = 1) AS truncated_days_present, \
             groupArrayIf(day_number, kind = 2) AS truncated_days_unread \
             FROM ( \
                 SELECT if(kind = 2, '', song_id) AS song, if(kind = 2, 0, plays) AS song_plays, \
                        toUInt16(day) AS day_number, {kind} AS kind, \
                        user_cutoff_plays AS cutoff_plays \
                 FROM {DAILY_TOP} PREWHERE user_id = ? \
                 WHERE day >= toDate(?) AND day <= toDate(?) \
                   AND has(CAST(? AS Array(UInt64)), snapshot_id) AND {keep_truncated} \
                 UNION ALL \
                 SELECT song_id AS song, plays AS song_plays, \
                        toUInt16(toDate(minute)) AS day_number, \
                        toUInt8(0) AS kind, toUInt64(0) AS cutoff_plays \
                 FROM {PLAYS_MINUTE} PREWHERE user_id = ? \
                 WHERE minute >= toDateTime(?) AND minute <= toDateTime(?) \
                   AND {committed}{day_filter} \
             ) GROUP BY song HAVING total_plays > 0 OR song = ''",
            committed = CommittedFlushes::condition(""),
        );
        let minutes_from = u32::try_from(self.minutes_from_secs.max(0)).unwrap_or(u32::MAX);
        let mut query = client.query(&sql);
        if only_days {
            query = query.bind(&self.top_lists_only_days);
        }
        query = query
            .bind(user_id)
            .bind(self.first_day.to_string())
            .bind(self.last_day.to_string())
            .bind(&self.snapshot_ids);
        if only_days {
            query = query.bind(&self.top_lists_only_days);
        }
        query = query
            .bind(user_id)
            .bind(minutes_from)
            .bind(self.window_end_secs);
        query = self.committed.bind(query);
        if top_list_in_minutes {
            query = query.bind(&self.top_list_days);
            if !self.late_days.is_empty() {
                query = self.late_heads.bind(query.bind(&self.late_days));
            }
        }
        query
    }

    /// The second query, for a user whose lists of `truncated` days (sorted day numbers, not
    /// empty) are truncated: those days' minute rows as [`Self::truncated_query_reads`] names
    /// them, summed per song.
    fn truncated_days_query(
        &self,
        client: &clickhouse::Client,
        user_id: &str,
        truncated: &[u16],
    ) -> clickhouse::query::Query {
        let late_overlap = truncated.iter().any(|day| self.late_days.contains(day));
        let not_late = if late_overlap {
            format!(
                " AND NOT (has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute))) AND {late})",
                late = DayHeads::condition("toUInt16(toDate(minute))"),
            )
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT song_id, sum(plays) AS total_plays FROM {PLAYS_MINUTE} PREWHERE user_id = ? \
             WHERE minute >= toDateTime(?) AND minute < toDateTime(?) \
               AND has(CAST(? AS Array(UInt16)), toUInt16(toDate(minute))) \
               AND {committed}{not_late} \
             GROUP BY song_id",
            committed = CommittedFlushes::condition(""),
        );
        let first = u32::from(truncated.first().copied().unwrap_or(0)) * 86_400;
        let end = (u32::from(truncated.last().copied().unwrap_or(0)) + 1) * 86_400;
        let query = client
            .query(&sql)
            .bind(user_id)
            .bind(first)
            .bind(end)
            .bind(truncated);
        let query = self.committed.bind(query);
        if late_overlap {
            self.late_heads.bind(query.bind(&self.late_days))
        } else {
            query
        }
    }
}

/// A row of [`WindowPlan::first_query`].
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct FirstQueryRow {
    song_id: String,
    total_plays: u64,
    truncated_days_present: Vec<(u16, u64)>,
    truncated_days_unread: Vec<u16>,
}

/// A row of [`WindowPlan::truncated_days_query`].
#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct MinuteSongRow {
    song_id: String,
    total_plays: u64,
}

/// The read plan, read from ClickHouse at most once per `ttl` for a range of days (a request
/// whose days fall outside the cached range reads it again).
#[derive(Debug)]
pub struct ReadPlanCache {
    ttl: Duration,
    cached: RwLock<Option<(ReadPlan, Instant)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl ReadPlanCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, first_day: NaiveDate, last_day: NaiveDate) -> Option<ReadPlan> {
        let cached = self
            .cached
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        cached
            .as_ref()
            .filter(|(plan, read_at)| {
                plan.first_day <= first_day
                    && last_day == plan.last_day
                    && read_at.elapsed() < self.ttl
            })
            .map(|(plan, _)| plan.clone())
    }

    async fn get(
        &self,
        client: &clickhouse::Client,
        placement: &Placement,
        first_day: NaiveDate,
        last_day: NaiveDate,
    ) -> Result<ReadPlan, AppError> {
        if let Some(plan) = self.fresh(first_day, last_day) {
            return Ok(plan);
        }
        // One reader refreshes; the others wait for it and then find the entry fresh.
        let _refreshing = self.refresh.lock().await;
        if let Some(plan) = self.fresh(first_day, last_day) {
            return Ok(plan);
        }
        let read_at = Instant::now();
        let plan = ReadPlan::read(client, placement, first_day, last_day).await?;
        *self
            .cached
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Some((plan.clone(), read_at));
        Ok(plan)
    }
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn snapshot(day: NaiveDate, snapshot_id: u64) -> RollupProgressRow {
        RollupProgressRow {
            day,
            rolled_up_at: at("2026-11-24T00:20:00Z"),
            minute_rows_read: 10,
            plays_read: 10,
            users: 1,
            rows_written: 1,
            seconds: 0.1,
            snapshot_id,
            snapshot_partitions: vec![0],
            snapshot_newest_claim_ids: vec![1 << 32],
            snapshot_newest_max_seqs: vec![4],
        }
    }

    fn plan() -> ReadPlan {
        let snapshots: BTreeMap<NaiveDate, RollupProgressRow> = [
            (day("2026-11-18"), snapshot(day("2026-11-18"), 1)),
            (day("2026-11-20"), snapshot(day("2026-11-20"), 2)),
            (day("2026-11-21"), snapshot(day("2026-11-21"), 3)),
            (day("2026-11-17"), snapshot(day("2026-11-17"), 9)),
        ]
        .into_iter()
        .collect();
        ReadPlan {
            first_day: day("2026-11-17"),
            last_day: day("2026-11-24"),
            committed: CommittedFlushes::none(),
            snapshots,
            late_days: [day("2026-11-20")].into_iter().collect(),
            minute_days: (17..=24)
                .filter(|number| *number != 21)
                .map(|number| day(&format!("2026-11-{number}")))
                .collect(),
            data_through: None,
        }
    }

    #[test]
    fn each_day_is_read_from_where_it_is_complete() {
        let plan = plan();
        let today = day("2026-11-24");
        assert_eq!(plan.source(day("2026-11-19"), today), DaySource::Minutes);
        assert_eq!(
            plan.source(day("2026-11-18"), today),
            DaySource::TopLists {
                snapshot_id: 1,
                late: false
            }
        );
        assert_eq!(
            plan.source(day("2026-11-20"), today),
            DaySource::TopLists {
                snapshot_id: 2,
                late: true
            }
        );
        assert_eq!(
            plan.source(day("2026-11-21"), today),
            DaySource::TopListsOnly {
                snapshot_id: 3,
                late: false
            }
        );
        assert_eq!(plan.source(today, today), DaySource::Minutes);
    }

    #[test]
    fn minute_rows_are_read_from_the_first_day_that_needs_them() {
        let window = Window::last_week(at("2026-11-24T10:15:30Z"));
        let window_plan = WindowPlan::new(&window, &plan());
        // 11-17 is outside the window; 11-19 has no rollup.
        assert_eq!(window_plan.snapshot_ids, vec![1, 2, 3]);
        assert_eq!(
            window_plan.minutes_from_secs,
            at("2026-11-19T00:00:00Z").timestamp()
        );
        assert_eq!(window_plan.late_days, vec![day_number(day("2026-11-20"))]);
        assert_eq!(
            window_plan.top_lists_only_days,
            vec![day_number(day("2026-11-21"))]
        );
        let client = clickhouse::Client::default();
        let sql = window_plan
            .first_query(&client, "it's me")
            .sql_display()
            .to_string();
        assert!(sql.contains("user_id = 'it\\'s me'"), "{sql}");
        assert!(!sql.contains('?'), "every placeholder bound: {sql}");
        // Top lists lie after the first minute day (11-19): minute rows are filtered by day,
        // and 11-20 is late: its late rows are read.
        assert!(sql.contains("NOT has(CAST([20775,20777,20778]"), "{sql}");
        let day_20 = day_number(day("2026-11-20"));
        let sql = window_plan
            .truncated_days_query(&client, "it's me", &[day_20])
            .sql_display()
            .to_string();
        assert!(!sql.contains('?'), "every placeholder bound: {sql}");
        assert!(sql.contains("AND NOT (has("), "late rows excluded: {sql}");
    }

    #[test]
    fn with_everything_rolled_up_and_no_late_plays_light_users_read_today_only() {
        let mut plan = plan();
        plan.late_days.clear();
        plan.snapshots
            .insert(day("2026-11-19"), snapshot(day("2026-11-19"), 4));
        plan.snapshots
            .insert(day("2026-11-22"), snapshot(day("2026-11-22"), 5));
        plan.snapshots
            .insert(day("2026-11-23"), snapshot(day("2026-11-23"), 6));
        let window = Window::last_week(at("2026-11-24T10:15:30Z"));
        let window_plan = WindowPlan::new(&window, &plan);
        assert_eq!(
            window_plan.minutes_from_secs,
            at("2026-11-24T00:00:00Z").timestamp()
        );
    }
}
