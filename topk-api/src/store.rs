//! Reading a user's plays of the window from ClickHouse.
//!
//! Per request, one query: the stored daily top lists (`daily_top`) of the window's rolled-up
//! days, plus the per-minute rows (`plays_minute`) of today up to now and of the previous days
//! not rolled up yet, summed per song. Both tables are ordered by `user_id` first, so the query
//! reads only that user's rows. Which days are rolled up comes from `rollup_progress`, reused
//! for a short time ([`RolledDaysCache`]).
//!
//! Why a briefly stale set of rolled-up days is still exact: the rollup writes a day's top
//! lists and only then its progress row, and never deletes minute rows of a day inside the
//! window. A stale set can only lack a day rolled up a moment ago; that day is then read from
//! its minute rows, which are still there and hold the same plays. No day is ever read from
//! both tables, nor from neither.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate};
use topk_core::schema::{DAILY_TOP, PLAYS_MINUTE, ROLLUP_PROGRESS};
use topk_core::window::{day_start, Window};

use crate::error::AppError;
use crate::ranking::StoredSong;

/// The ClickHouse side of the API.
#[derive(Debug)]
pub struct Store {
    client: clickhouse::Client,
    query_timeout: Duration,
    rolled_days: RolledDaysCache,
}

impl Store {
    pub fn new(
        client: clickhouse::Client,
        query_timeout: Duration,
        rolled_days_ttl: Duration,
    ) -> Self {
        Self {
            client,
            query_timeout,
            rolled_days: RolledDaysCache::new(rolled_days_ttl),
        }
    }

    /// Every song `user_id` played in `window`, with the plays the store knows and the
    /// truncation facts [`crate::ranking::rank`] needs. Answers within the query timeout or
    /// fails with [`AppError::QueryTimeout`].
    pub async fn songs_in_window(
        &self,
        user_id: &str,
        window: &Window,
    ) -> Result<Vec<StoredSong>, AppError> {
        self.within_timeout(async {
            let plan = self.plan(window).await?;
            timed("top_songs", plan.query(&self.client, user_id).fetch_all()).await
        })
        .await
    }

    /// The SQL [`Self::songs_in_window`] sends for `user_id` (the benchmark sends it straight
    /// to ClickHouse to measure the ceiling).
    pub async fn songs_in_window_sql(
        &self,
        user_id: &str,
        window: &Window,
    ) -> Result<String, AppError> {
        let plan = self.within_timeout(self.plan(window)).await?;
        Ok(plan.query(&self.client, user_id).sql_display().to_string())
    }

    async fn plan(&self, window: &Window) -> Result<QueryPlan, AppError> {
        let previous_days = window.previous_days();
        let rolled_days = self
            .rolled_days
            .get(&self.client, &previous_days, window.today())
            .await?;
        Ok(QueryPlan::new(window, &previous_days, &rolled_days))
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

/// ClickHouse `Date` as a number: days since 1970-01-01.
fn day_number(day: NaiveDate) -> u16 {
    let days = day.signed_duration_since(NaiveDate::default()).num_days();
    u16::try_from(days.max(0)).unwrap_or(u16::MAX)
}

fn day_from_number(number: u16) -> NaiveDate {
    NaiveDate::default()
        .checked_add_days(Days::new(u64::from(number)))
        .unwrap_or(NaiveDate::MAX)
}

/// Which tables one request reads for which days.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueryPlan {
    window_end_secs: i64,
    /// Previous days answered from `daily_top`, oldest first.
    rolled_days: Vec<NaiveDate>,
    /// Start of the oldest day answered from `plays_minute` (a not-rolled-up day or today).
    minutes_from_secs: i64,
}

impl QueryPlan {
    fn new(window: &Window, previous_days: &[NaiveDate], rolled: &BTreeSet<NaiveDate>) -> Self {
        let rolled_days: Vec<NaiveDate> = previous_days
            .iter()
            .copied()
            .filter(|day| rolled.contains(day))
            .collect();
        let oldest_minute_day = previous_days
            .iter()
            .copied()
            .find(|day| !rolled.contains(day))
            .unwrap_or_else(|| window.today());
        Self {
            window_end_secs: window.to.timestamp(),
            rolled_days,
            minutes_from_secs: day_start(oldest_minute_day).timestamp(),
        }
    }

    /// The one query. Every value is bound; only the shape (which branches exist) varies.
    fn query(&self, client: &clickhouse::Client, user_id: &str) -> clickhouse::query::Query {
        let rolled_numbers: Vec<u16> = self.rolled_days.iter().copied().map(day_number).collect();
        let minutes_branch = format!(
            "SELECT song_id, plays, toUInt16(toDate(minute)) AS day_number, toUInt8(0) AS truncated, \
             toUInt64(0) AS cutoff_plays FROM {PLAYS_MINUTE} \
             WHERE user_id = ? AND minute >= ? AND minute <= ?{}",
            if rolled_numbers.is_empty() {
                ""
            } else {
                " AND NOT has(?, toUInt16(toDate(minute)))"
            }
        );
        let union = match (self.rolled_days.first(), self.rolled_days.last()) {
            (Some(_), Some(_)) => format!(
                "SELECT song_id, plays, toUInt16(day) AS day_number, user_truncated AS truncated, \
                 user_cutoff_plays AS cutoff_plays FROM {DAILY_TOP} \
                 WHERE user_id = ? AND day >= ? AND day <= ? AND has(?, toUInt16(day)) \
                 UNION ALL {minutes_branch}"
            ),
            _ => minutes_branch,
        };
        let sql = format!(
            "SELECT song_id, sum(plays) AS total_plays, \
             groupArrayIf((day_number, cutoff_plays), truncated = 1) AS truncated_days_present \
             FROM ({union}) GROUP BY song_id HAVING total_plays > 0"
        );
        let mut query = client.query(&sql);
        if let (Some(first), Some(last)) = (self.rolled_days.first(), self.rolled_days.last()) {
            query = query
                .bind(user_id)
                .bind(*first)
                .bind(*last)
                .bind(rolled_numbers.clone());
        }
        query = query
            .bind(user_id)
            .bind(self.minutes_from_secs)
            .bind(self.window_end_secs);
        if !rolled_numbers.is_empty() {
            query = query.bind(rolled_numbers);
        }
        query
    }
}

/// The set of rolled-up days, read from `rollup_progress` at most once per `ttl` for a range of
/// days (a request whose days fall outside the cached range reads it again).
#[derive(Debug)]
pub struct RolledDaysCache {
    ttl: Duration,
    cached: RwLock<Option<CachedRolledDays>>,
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct CachedRolledDays {
    first_day: NaiveDate,
    last_day: NaiveDate,
    rolled: BTreeSet<NaiveDate>,
    read_at: Instant,
}

impl RolledDaysCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, first_day: NaiveDate, last_day: NaiveDate) -> Option<BTreeSet<NaiveDate>> {
        let cached = self
            .cached
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        cached
            .as_ref()
            .filter(|entry| {
                entry.first_day <= first_day
                    && last_day <= entry.last_day
                    && entry.read_at.elapsed() < self.ttl
            })
            .map(|entry| entry.rolled.clone())
    }

    /// The rolled-up days among `days` (the window's previous days). `today` bounds the range
    /// read, so that one read serves every request until midnight.
    async fn get(
        &self,
        client: &clickhouse::Client,
        days: &[NaiveDate],
        today: NaiveDate,
    ) -> Result<BTreeSet<NaiveDate>, AppError> {
        let (Some(&first_day), Some(_)) = (days.first(), days.last()) else {
            return Ok(BTreeSet::new());
        };
        if let Some(rolled) = self.fresh(first_day, today) {
            return Ok(rolled);
        }
        // One reader refreshes; the others wait for it and then find the entry fresh.
        let _refreshing = self.refresh.lock().await;
        if let Some(rolled) = self.fresh(first_day, today) {
            return Ok(rolled);
        }
        let read_at = Instant::now();
        let numbers: Vec<u16> = timed(
            "rolled_days",
            client
                .query(&format!(
                    "SELECT DISTINCT toUInt16(day) FROM {ROLLUP_PROGRESS} WHERE day >= ? AND day <= ?"
                ))
                .bind(first_day)
                .bind(today)
                .fetch_all(),
        )
        .await?;
        let rolled: BTreeSet<NaiveDate> = numbers.into_iter().map(day_from_number).collect();
        *self
            .cached
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(CachedRolledDays {
            first_day,
            last_day: today,
            rolled: rolled.clone(),
            read_at,
        });
        Ok(rolled)
    }
}

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

    #[test]
    fn day_numbers_match_clickhouse_dates() {
        assert_eq!(day_number(day("1970-01-01")), 0);
        assert_eq!(day_number(day("2026-11-18")), 20775);
        assert_eq!(day_from_number(20775), day("2026-11-18"));
    }

    #[test]
    fn every_previous_day_is_read_from_exactly_one_table() {
        let window = Window::last_week(at("2026-11-24T10:15:30Z"));
        let previous = window.previous_days();
        let rolled: BTreeSet<NaiveDate> = [day("2026-11-18"), day("2026-11-20"), day("2026-11-17")]
            .into_iter()
            .collect();
        let plan = QueryPlan::new(&window, &previous, &rolled);
        assert_eq!(plan.rolled_days, [day("2026-11-18"), day("2026-11-20")]);
        assert_eq!(
            plan.minutes_from_secs,
            at("2026-11-19T00:00:00Z").timestamp()
        );
        assert_eq!(plan.window_end_secs, at("2026-11-24T10:15:30Z").timestamp());
        let client = clickhouse::Client::default();
        let sql = plan.query(&client, "it's me").sql_display().to_string();
        assert!(sql.contains("has([20775,20777], toUInt16(day))"), "{sql}");
        assert!(
            sql.contains("NOT has([20775,20777], toUInt16(toDate(minute)))"),
            "{sql}"
        );
        assert!(sql.contains("user_id = 'it\\'s me'"), "{sql}");
    }

    #[test]
    fn nothing_rolled_up_reads_only_minutes() {
        let window = Window::last_week(at("2026-11-24T10:15:30Z"));
        let plan = QueryPlan::new(&window, &window.previous_days(), &BTreeSet::new());
        assert!(plan.rolled_days.is_empty());
        assert_eq!(
            plan.minutes_from_secs,
            at("2026-11-18T00:00:00Z").timestamp()
        );
        let sql = plan
            .query(&clickhouse::Client::default(), "u")
            .sql_display()
            .to_string();
        assert!(!sql.contains(DAILY_TOP), "{sql}");
        assert!(!sql.contains("has("), "{sql}");
    }

    #[test]
    fn all_rolled_up_reads_minutes_of_today_only() {
        let window = Window::last_week(at("2026-11-24T10:15:30Z"));
        let previous = window.previous_days();
        let rolled: BTreeSet<NaiveDate> = previous.iter().copied().collect();
        let plan = QueryPlan::new(&window, &previous, &rolled);
        assert_eq!(plan.rolled_days.len(), 6);
        assert_eq!(
            plan.minutes_from_secs,
            at("2026-11-24T00:00:00Z").timestamp()
        );
    }
}
