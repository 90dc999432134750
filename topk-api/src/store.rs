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
//! Requests that wait at the same time are read together (`coalesce`, on by default): one
//! first query for all of their users (`user_id IN (..)`, rows split per user) and one second
//! query for those with truncated days, each user restricted to their own days (`query`), so
//! each request gets exactly the rows it would read alone.
//!
//! What the store knows about the days ([`ReadPlan`]: what counts, the current snapshots,
//! the days with late plays, the days with minute rows) is reused for a short time. A plan a
//! moment old is still exact: its committed-flush snapshot and the rollup snapshots it names
//! only grow, and the rows of a snapshot are never changed (a newer rollup writes a new
//! snapshot; old ones are deleted minutes after nobody reads them). So an answer is the
//! exact top list of the plays committed up to a moment at most one plan lifetime ago, and a
//! user's counts never go down while the window does not move.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use topk_core::cluster::Placement;
use topk_core::committed::CommittedFlushes;
use topk_core::schema::{RollupProgressRow, FLUSH_COMMITS, PLAYS_MINUTE};
use topk_core::snapshots::{days_with_new_commits, latest_rollups};
use topk_core::window::{day_number, Window, WINDOW_DAYS};

use crate::error::AppError;
use crate::ranking::StoredSong;

mod catalog;
mod charts;
mod coalesce;
mod query;

pub use catalog::SongMetadata;
pub use charts::{ChartPage, ChartPlan, ChartQuery, ChartScope, ChartSong, ChartSources, HourPart};

use coalesce::Coalescer;
pub use coalesce::{CoalesceCounts, CoalesceOptions};
use query::{FirstQueryRow, MinuteSongRow, TruncatedDays, WindowPlan};

/// The ClickHouse side of the API.
#[derive(Debug)]
pub struct Store {
    reader: Arc<Reader>,
    /// `None`: every request reads alone.
    coalescer: Option<Arc<Coalescer>>,
}

/// What reads the users' songs: shared by the requests and the coalescing workers.
#[derive(Debug)]
struct Reader {
    client: clickhouse::Client,
    query_timeout: Duration,
    plans: ReadPlanCache,
    /// The charts' plan: every day a chart and its previous period can reach.
    chart_plans: PlanCache<ChartPlan>,
    placement: Placement,
}

impl Store {
    /// A store whose requests each read alone, or with `coalesce` in batches.
    pub fn new(
        client: clickhouse::Client,
        placement: Placement,
        query_timeout: Duration,
        plan_ttl: Duration,
        coalesce: Option<CoalesceOptions>,
    ) -> Self {
        Self {
            reader: Arc::new(Reader {
                client,
                query_timeout,
                plans: ReadPlanCache::new(plan_ttl),
                chart_plans: PlanCache::new(plan_ttl),
                placement,
            }),
            coalescer: coalesce.map(|options| Arc::new(Coalescer::new(options))),
        }
    }

    /// What coalescing has done so far, or `None` when it is off.
    pub fn coalesce_counts(&self) -> Option<CoalesceCounts> {
        self.coalescer.as_ref().map(|coalescer| coalescer.counts())
    }

    /// The client every query of the API goes through (with its settings).
    pub fn client(&self) -> &clickhouse::Client {
        &self.reader.client
    }

    /// Every song `user_id` played in `window`, with its plays and the truncation facts
    /// [`crate::ranking::rank`] needs: read alone, or in a batch with the requests waiting
    /// alongside (`coalesce`). Answers within the query timeout or fails with
    /// [`AppError::QueryTimeout`].
    pub async fn songs_in_window(
        &self,
        user_id: &str,
        window: &Window,
    ) -> Result<WindowSongs, AppError> {
        self.within_timeout(async {
            match &self.coalescer {
                Some(coalescer) => {
                    coalescer
                        .songs_in_window(&self.reader, user_id, window)
                        .await
                }
                None => {
                    let mut answers = self.reader.read_batch(window, &[user_id]).await?;
                    Ok(answers.pop().unwrap_or_default())
                }
            }
        })
        .await
    }

    /// The SQL of the first query [`Self::songs_in_window`] sends for `user_id` alone (the
    /// benchmark sends it straight to ClickHouse to measure the ceiling; a user with a
    /// truncated day costs the API a second query).
    pub async fn songs_in_window_sql(
        &self,
        user_id: &str,
        window: &Window,
    ) -> Result<String, AppError> {
        let plan = self.within_timeout(self.reader.window_plan(window)).await?;
        Ok(plan
            .first_query(&self.reader.client, &[user_id])
            .sql_display()
            .to_string())
    }

    /// The SQL of the second query [`Self::songs_in_window`] sends for a user alone whose
    /// lists of `days` are truncated (for the benchmark's ceiling of heavy listeners).
    pub async fn truncated_days_sql(
        &self,
        user_id: &str,
        window: &Window,
        days: &[NaiveDate],
    ) -> Result<String, AppError> {
        let plan = self.within_timeout(self.reader.window_plan(window)).await?;
        let mut numbers: Vec<u16> = days.iter().copied().map(day_number).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let user = TruncatedDays {
            user_id,
            days: numbers,
        };
        Ok(plan
            .truncated_days_query(&self.reader.client, &[user])
            .sql_display()
            .to_string())
    }

    /// The catalog entries of `song_ids` that the catalog has (none asked: none read).
    pub async fn songs_metadata(
        &self,
        song_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, SongMetadata>, AppError> {
        if song_ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        self.within_timeout(timed(
            "song_metadata",
            catalog::read_metadata(&self.reader.client, song_ids),
        ))
        .await
    }

    /// The applied schema version, checking that ClickHouse answers.
    pub async fn schema_version(&self) -> Result<Option<u32>, AppError> {
        self.within_timeout(timed(
            "schema_version",
            topk_core::migrate::applied_version(&self.reader.client),
        ))
        .await
    }

    /// One page of a chart (see [`charts`]), read within the query timeout. `today`: the
    /// current UTC day (days before it may be read from their rollups).
    pub async fn chart(&self, query: &ChartQuery, today: NaiveDate) -> Result<ChartPage, AppError> {
        self.within_timeout(async {
            let first_day = today
                .checked_sub_days(chrono::Days::new(u64::from(
                    topk_core::chart::DEFAULT_CHART_RETENTION_DAYS,
                )))
                .unwrap_or(NaiveDate::MIN)
                .min(query.window.previous(&query.span).from.date_naive());
            let reader = &self.reader;
            let plan = reader
                .chart_plans
                .get(first_day, today, || {
                    ChartPlan::read(&reader.client, first_day, today)
                })
                .await?;
            charts::read_chart(&reader.client, &plan, query).await
        })
        .await
    }

    async fn within_timeout<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, AppError>>,
    ) -> Result<T, AppError> {
        let timeout = self.reader.query_timeout;
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(AppError::QueryTimeout(timeout)))
    }
}

impl Reader {
    async fn window_plan(&self, window: &Window) -> Result<WindowPlan, AppError> {
        // One plan serves the UTC week and every local week (whose first UTC day can be the
        // day before the UTC week's), so requests in different zones share the cached plan.
        let first_day = window.from.date_naive().min(
            window
                .today()
                .checked_sub_days(chrono::Days::new(u64::from(WINDOW_DAYS)))
                .unwrap_or(NaiveDate::MIN),
        );
        let today = window.today();
        let read_plan = self
            .plans
            .get(first_day, today, || {
                ReadPlan::read(&self.client, &self.placement, first_day, today)
            })
            .await?;
        Ok(WindowPlan::new(window, &read_plan))
    }

    /// The songs of each of `users` (distinct, sorted, not empty) in `window`, in their
    /// order: one first query for all of them, and one second query for those of them with
    /// truncated days.
    async fn read_batch(
        &self,
        window: &Window,
        users: &[&str],
    ) -> Result<Vec<WindowSongs>, AppError> {
        debug_assert!(!users.is_empty());
        debug_assert!(users.windows(2).all(|pair| pair[0] < pair[1]));
        let plan = self.window_plan(window).await?;
        let index_of = |user_id: &str| users.binary_search(&user_id).ok();
        metrics::histogram!("api_query_users", "query" => "top_songs").record(users.len() as f64);
        let first: Vec<FirstQueryRow> = timed(
            "top_songs",
            plan.first_query(&self.client, users).fetch_all(),
        )
        .await?;
        let mut songs: Vec<BTreeMap<String, StoredSong>> = vec![BTreeMap::new(); users.len()];
        let mut truncated_days: Vec<Vec<u16>> = vec![Vec::new(); users.len()];
        for row in first {
            let Some(index) = index_of(&row.user_id) else {
                debug_assert!(false, "a row of a user not asked for: {}", row.user_id);
                continue;
            };
            if row.song_id.is_empty() {
                truncated_days[index] = row.truncated_days_unread;
                continue;
            }
            songs[index].insert(
                row.song_id.clone(),
                StoredSong {
                    song_id: row.song_id,
                    plays: row.total_plays,
                    truncated_days_present: row.truncated_days_present,
                },
            );
        }
        let truncated: Vec<TruncatedDays<'_>> = users
            .iter()
            .zip(truncated_days)
            .filter(|(_, days)| !days.is_empty())
            .map(|(user_id, mut days)| {
                days.sort_unstable();
                days.dedup();
                TruncatedDays { user_id, days }
            })
            .collect();
        if !truncated.is_empty() {
            metrics::histogram!("api_query_users", "query" => "truncated_days")
                .record(truncated.len() as f64);
            let rows: Vec<MinuteSongRow> = timed(
                "truncated_days",
                plan.truncated_days_query(&self.client, &truncated)
                    .fetch_all(),
            )
            .await?;
            for row in rows {
                let Some(index) = index_of(&row.user_id) else {
                    debug_assert!(false, "a row of a user not asked for: {}", row.user_id);
                    continue;
                };
                songs[index]
                    .entry(row.song_id.clone())
                    .or_insert_with(|| StoredSong {
                        song_id: row.song_id,
                        plays: 0,
                        truncated_days_present: Vec::new(),
                    })
                    .plays += row.total_plays;
            }
        }
        Ok(songs
            .into_iter()
            .map(|songs| WindowSongs {
                songs: songs.into_values().filter(|song| song.plays > 0).collect(),
                complete: !plan.plays_lost,
                data_through: plan.data_through,
            })
            .collect())
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
    /// some partition has no such record (nothing counted, or commits from before schema 7).
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
        let committed = read_committed(client).await?;
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

/// What counts now (`topk_core::committed`), timed as `committed_flushes`.
pub(crate) async fn read_committed(
    client: &clickhouse::Client,
) -> Result<CommittedFlushes, AppError> {
    timed("committed_flushes", async {
        CommittedFlushes::read(client)
            .await
            .map_err(|error| match error {
                topk_core::committed::CommittedError::ClickHouse(error) => error,
                other => clickhouse::error::Error::Custom(other.to_string()),
            })
    })
    .await
}

/// The oldest of the partitions' newest counted records (see [`ReadPlan::data_through`]):
/// one row per partition of the commits that count in `committed`.
pub(crate) async fn data_through(
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowSongs {
    pub songs: Vec<StoredSong>,
    /// False when plays of the window cannot be read at all: a day's minute rows were pruned
    /// after plays were committed for it past its rollup.
    pub complete: bool,
    /// See [`ReadPlan::data_through`].
    pub data_through: Option<chrono::DateTime<chrono::Utc>>,
}

/// A plan of what the store knows about a range of days (see [`PlanCache`]).
pub trait DayPlan: Clone {
    fn first_day(&self) -> NaiveDate;
    fn last_day(&self) -> NaiveDate;
}

impl DayPlan for ReadPlan {
    fn first_day(&self) -> NaiveDate {
        self.first_day
    }

    fn last_day(&self) -> NaiveDate {
        self.last_day
    }
}

/// A plan read from ClickHouse at most once per `ttl` for a range of days (a request whose
/// days fall outside the cached range reads it again).
#[derive(Debug)]
pub struct PlanCache<P> {
    ttl: Duration,
    cached: RwLock<Option<(P, Instant)>>,
    refresh: tokio::sync::Mutex<()>,
}

/// The users' read plan, cached.
pub type ReadPlanCache = PlanCache<ReadPlan>;

impl<P: DayPlan> PlanCache<P> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, first_day: NaiveDate, last_day: NaiveDate) -> Option<P> {
        let cached = self
            .cached
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        cached
            .as_ref()
            .filter(|(plan, read_at)| {
                plan.first_day() <= first_day
                    && last_day == plan.last_day()
                    && read_at.elapsed() < self.ttl
            })
            .map(|(plan, _)| plan.clone())
    }

    /// The plan of the days from `first_day` to `last_day`: the cached one while fresh, else
    /// the one `read` returns.
    async fn get<F: std::future::Future<Output = Result<P, AppError>>>(
        &self,
        first_day: NaiveDate,
        last_day: NaiveDate,
        read: impl FnOnce() -> F,
    ) -> Result<P, AppError> {
        if let Some(plan) = self.fresh(first_day, last_day) {
            return Ok(plan);
        }
        // One reader refreshes; the others wait for it and then find the entry fresh.
        let _refreshing = self.refresh.lock().await;
        if let Some(plan) = self.fresh(first_day, last_day) {
            return Ok(plan);
        }
        let read_at = Instant::now();
        let plan = read().await?;
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
            .first_query(&client, &["it's me"])
            .sql_display()
            .to_string();
        assert!(sql.contains("user_id = 'it\\'s me'"), "{sql}");
        assert!(!sql.contains('?'), "every placeholder bound: {sql}");
        // Top lists lie after the first minute day (11-19): minute rows are filtered by day,
        // and 11-20 is late: its late rows are read.
        assert!(sql.contains("NOT has(CAST([20775,20777,20778]"), "{sql}");
        let day_20 = day_number(day("2026-11-20"));
        let sql = window_plan
            .truncated_days_query(
                &client,
                &[TruncatedDays {
                    user_id: "it's me",
                    days: vec![day_20],
                }],
            )
            .sql_display()
            .to_string();
        assert!(!sql.contains('?'), "every placeholder bound: {sql}");
        assert!(sql.contains("AND NOT (has("), "late rows excluded: {sql}");
    }

    #[test]
    fn a_local_weeks_partial_first_day_is_read_from_its_minute_rows_from_local_midnight() {
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let window = Window::last_week_in(at("2026-11-24T10:15:30Z"), berlin);
        assert_eq!(window.from, at("2026-11-17T23:00:00Z"));
        let window_plan = WindowPlan::new(&window, &plan());
        // 11-17 is rolled up (snapshot 9), but its list covers the whole day: not read.
        assert_eq!(window_plan.snapshot_ids, vec![1, 2, 3]);
        assert_eq!(
            window_plan.minutes_from_secs,
            at("2026-11-17T23:00:00Z").timestamp()
        );
        assert!(!window_plan.plays_lost);
        let sql = window_plan
            .first_query(&clickhouse::Client::default(), &["me"])
            .sql_display()
            .to_string();
        assert!(sql.contains("day >= toDate('2026-11-18')"), "{sql}");
        let from = at("2026-11-17T23:00:00Z").timestamp();
        assert!(
            sql.contains(&format!("minute >= toDateTime({from})")),
            "{sql}"
        );

        // Its minute rows pruned: that part of the window cannot be read.
        let mut pruned = plan();
        pruned.minute_days.remove(&day("2026-11-17"));
        assert!(WindowPlan::new(&window, &pruned).plays_lost);
        // The UTC week does not read 11-17 at all.
        assert!(!WindowPlan::new(&Window::last_week(window.to), &pruned).plays_lost);
    }

    #[test]
    fn a_batch_reads_each_user_and_only_their_own_truncated_days() {
        let window = Window::last_week(at("2026-11-24T10:15:30Z"));
        let window_plan = WindowPlan::new(&window, &plan());
        let client = clickhouse::Client::default();
        let sql = window_plan
            .first_query(&client, &["a", "b", "c"])
            .sql_display()
            .to_string();
        assert!(!sql.contains('?'), "every placeholder bound: {sql}");
        assert_eq!(
            sql.matches("user_id IN ('a', 'b', 'c')").count(),
            2,
            "{sql}"
        );
        assert!(sql.contains("GROUP BY user_id, song"), "{sql}");
        let day_18 = day_number(day("2026-11-18"));
        let day_20 = day_number(day("2026-11-20"));
        let sql = window_plan
            .truncated_days_query(
                &client,
                &[
                    TruncatedDays {
                        user_id: "a",
                        days: vec![day_18],
                    },
                    TruncatedDays {
                        user_id: "c",
                        days: vec![day_18, day_20],
                    },
                ],
            )
            .sql_display()
            .to_string();
        assert!(!sql.contains('?'), "every placeholder bound: {sql}");
        assert!(sql.contains("PREWHERE user_id IN ('a', 'c')"), "{sql}");
        assert!(
            sql.contains(&format!(
                "(user_id, toUInt16(toDate(minute))) IN (('a',{day_18}), ('c',{day_18}), ('c',{day_20}))"
            )),
            "{sql}"
        );
        // 11-20 (late) is one of c's days: late rows are excluded for everyone.
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
