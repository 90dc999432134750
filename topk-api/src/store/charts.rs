//! Reading a chart (`topk_core::chart`): the top songs of everyone, of a region, a genre or an
//! artist over a window, exact under the per-user cap.
//!
//! Each UTC hour of the window is read from where it is complete ([`ChartSources`]):
//!
//! - **an hour of a chart snapshot with no plays committed for it since** (`topk-rollup`
//!   snapshots each day's complete hours, today's too, into `chart_hourly`): one row per
//!   (hour, region, song), already capped and summed;
//! - **the current hour, hours not rolled up yet or with plays committed since their snapshot,
//!   and the part-hours at the window's edges**: the committed chart rows of `chart_minute`
//!   (ordered by time, so an hour's rows are read alone), each user's plays of a song capped
//!   per (region, clock hour) by the query itself.
//!
//! Both parts are summed per song in one query, which ranks every song of the window (plays
//! descending, then `song_id` ascending) and returns the page and the count. Two more queries,
//! run at once, read the page's listeners (uniqExact states of the hours merged with the
//! minute rows' users) and the page's ranks in the previous period.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use clickhouse::Row;
use serde::Deserialize;
use topk_core::chart::{ceil_to, floor_to, ChartSpan, ChartWindow};
use topk_core::committed::CommittedFlushes;
use topk_core::schema::{ChartRollupRow, CHART_HOURLY, CHART_MINUTE, SONGS_CURRENT};
use topk_core::snapshots::{hours_with_new_commits, latest_chart_rollups};
use topk_core::window::hour_number;

use super::{data_through, read_committed, timed, DayPlan};
use crate::error::AppError;

/// What the store knows about the charts' days.
#[derive(Debug, Clone, Default)]
pub struct ChartPlan {
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    /// What counts.
    pub committed: CommittedFlushes,
    /// The current chart snapshot of each day that has one.
    pub snapshots: BTreeMap<NaiveDate, ChartRollupRow>,
    /// Hours (since 1970) with plays committed after their day's snapshot.
    pub late_hours: BTreeSet<u32>,
    /// See [`super::ReadPlan::data_through`].
    pub data_through: Option<DateTime<Utc>>,
}

impl DayPlan for ChartPlan {
    fn first_day(&self) -> NaiveDate {
        self.first_day
    }

    fn last_day(&self) -> NaiveDate {
        self.last_day
    }
}

impl ChartPlan {
    /// Reads the plan of the days from `first_day` to `last_day`.
    pub async fn read(
        client: &clickhouse::Client,
        first_day: NaiveDate,
        last_day: NaiveDate,
    ) -> Result<Self, AppError> {
        let committed = read_committed(client).await?;
        let snapshots = timed(
            "chart_snapshots",
            latest_chart_rollups(client, first_day, last_day),
        )
        .await?;
        let late_hours = timed(
            "chart_late_hours",
            hours_with_new_commits(client, &committed, &snapshots),
        )
        .await?;
        let data_through = timed("data_through", data_through(client, &committed)).await?;
        Ok(Self {
            first_day,
            last_day,
            committed,
            snapshots,
            late_hours,
            data_through,
        })
    }

    /// The snapshot whose `chart_hourly` rows hold the hour starting at `hour` completely,
    /// counted with `cap`, if any.
    pub fn hour_snapshot(&self, hour: DateTime<Utc>, cap: u64) -> Option<u64> {
        let snapshot = self.snapshots.get(&hour.date_naive())?;
        let complete = snapshot.user_hour_cap == cap
            && hour < snapshot.hours_through
            && !self.late_hours.contains(&hour_number(hour));
        complete.then_some(snapshot.snapshot_id)
    }
}

/// Whose songs a chart ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChartScope {
    Global,
    /// An ISO 3166-1 alpha-2 code.
    Region(String),
    /// A catalog genre (lower case).
    Genre(String),
    /// A catalog artist id.
    Artist(String),
}

impl ChartScope {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Region(_) => "region",
            Self::Genre(_) => "genre",
            Self::Artist(_) => "artist",
        }
    }

    /// The condition on a row of `chart_hourly` or `plays_minute` (both have `region` and
    /// `song_id`), with its bind.
    fn condition(&self) -> (String, Option<Bind>) {
        match self {
            Self::Global => (String::new(), None),
            Self::Region(region) => (
                " AND region = ?".to_owned(),
                Some(Bind::Text(region.clone())),
            ),
            Self::Genre(genre) => (
                format!(" AND song_id IN (SELECT song_id FROM {SONGS_CURRENT} WHERE genre = ?)"),
                Some(Bind::Text(genre.clone())),
            ),
            Self::Artist(artist_id) => (
                format!(
                    " AND song_id IN (SELECT song_id FROM {SONGS_CURRENT} WHERE artist_id = ?)"
                ),
                Some(Bind::Text(artist_id.clone())),
            ),
        }
    }
}

/// One page of a chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartPage {
    /// How many songs have counted plays in the window (in the scope).
    pub total: u64,
    pub songs: Vec<ChartSong>,
    /// See [`super::ReadPlan::data_through`].
    pub data_through: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartSong {
    /// 1-based.
    pub rank: u64,
    pub song_id: String,
    pub plays: u64,
    pub listeners: u64,
    /// The song's rank in the previous period, `None` when it had no counted play then.
    pub prev_rank: Option<u64>,
}

/// A chart read: which songs, when, how many.
#[derive(Debug, Clone)]
pub struct ChartQuery {
    pub scope: ChartScope,
    pub window: ChartWindow,
    /// `window` as of the asked moment.
    pub span: ChartSpan,
    pub offset: usize,
    pub limit: usize,
    /// The per-user cap (`topk_core::chart`), as the rollup counted it.
    pub user_hour_cap: u64,
}

/// A `chart_hourly` read: one day's snapshot, hours `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourPart {
    pub day: NaiveDate,
    pub snapshot_id: u64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Where each part of a span is read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChartSources {
    pub hours: Vec<HourPart>,
    /// `[from, to)` ranges read from minute rows, sorted, not adjacent.
    pub minutes: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl ChartSources {
    /// Where `span` is read from, given what `plan` knows and the cap the API counts with.
    pub fn of(span: &ChartSpan, plan: &ChartPlan, cap: u64) -> Self {
        let mut sources = Self::default();
        let hour = Duration::hours(1);
        let (first_hour, end_hour) = (ceil_to(span.from, hour), floor_to(span.to, hour));
        if first_hour >= end_hour {
            sources.add_minutes(span.from, span.to);
            return sources;
        }
        sources.add_minutes(span.from, first_hour);
        let mut start = first_hour;
        while start < end_hour {
            match plan.hour_snapshot(start, cap) {
                Some(snapshot_id) => sources.add_hour(start, snapshot_id),
                None => sources.add_minutes(start, start + hour),
            }
            start += hour;
        }
        sources.add_minutes(end_hour, span.to);
        sources
    }

    fn add_hour(&mut self, start: DateTime<Utc>, snapshot_id: u64) {
        let end = start + Duration::hours(1);
        match self.hours.last_mut() {
            Some(last) if last.snapshot_id == snapshot_id && last.to == start => last.to = end,
            _ => self.hours.push(HourPart {
                day: start.date_naive(),
                snapshot_id,
                from: start,
                to: end,
            }),
        }
    }

    fn add_minutes(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) {
        if from >= to {
            return;
        }
        match self.minutes.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => self.minutes.push((from, to)),
        }
    }
}

/// A value bound to a `?`, in the order the SQL names them.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Number(u64),
    Texts(Vec<String>),
    /// The four arrays of [`CommittedFlushes::condition`].
    Committed,
}

/// SQL text and its binds.
#[derive(Debug, Clone, Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, text: &str, value: Bind) -> &mut Self {
        self.text.push_str(text);
        self.binds.push(value);
        self
    }

    fn append(&mut self, other: Sql) -> &mut Self {
        self.text.push_str(&other.text);
        self.binds.extend(other.binds);
        self
    }

    fn query(
        &self,
        client: &clickhouse::Client,
        committed: &CommittedFlushes,
    ) -> clickhouse::query::Query {
        let mut query = client.query(&self.text);
        for bind in &self.binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Number(number) => query.bind(number),
                Bind::Texts(texts) => query.bind(texts),
                Bind::Committed => committed.bind(query),
            };
        }
        query
    }
}

fn epoch_secs(time: DateTime<Utc>) -> u64 {
    u64::try_from(time.timestamp()).unwrap_or(0)
}

/// What one part of the window reads: `hourly` is the `chart_hourly` column (`plays` or
/// `listeners`), `minute` what the minute rows give instead; `songs`: only these.
struct PartColumns<'a> {
    hourly: &'a str,
    minute: &'a str,
    /// The bind of a `?` in `minute`.
    minute_bind: Option<Bind>,
    /// Group the minute rows per user, song, region and hour (the capped plays), or per song.
    per_user_hour: bool,
}

/// `SELECT song_id, <value> FROM .. UNION ALL SELECT ..` over the sources' parts.
fn parts_sql(
    sources: &ChartSources,
    scope: &ChartScope,
    columns: &PartColumns<'_>,
    songs: Option<&[String]>,
) -> Sql {
    let (scope_condition, scope_bind) = scope.condition();
    let song_filter = |sql: &mut Sql| {
        if let Some(songs) = songs {
            sql.bind(
                " AND has(CAST(? AS Array(String)), song_id)",
                Bind::Texts(songs.to_vec()),
            );
        }
    };
    let mut parts: Vec<Sql> = Vec::new();
    if !sources.hours.is_empty() {
        let mut sql = Sql::default();
        sql.push(&format!(
            "SELECT song_id, {} AS value FROM {CHART_HOURLY} WHERE (",
            columns.hourly
        ));
        for (index, part) in sources.hours.iter().enumerate() {
            if index > 0 {
                sql.push(" OR ");
            }
            sql.bind("(day = toDate(?)", Bind::Text(part.day.to_string()))
                .bind(" AND snapshot_id = ?", Bind::Number(part.snapshot_id))
                .bind(
                    " AND hour >= toDateTime(?)",
                    Bind::Number(epoch_secs(part.from)),
                )
                .bind(
                    " AND hour < toDateTime(?))",
                    Bind::Number(epoch_secs(part.to)),
                );
        }
        sql.push(")");
        sql.push(&scope_condition);
        if let Some(bind) = &scope_bind {
            sql.binds.push(bind.clone());
        }
        song_filter(&mut sql);
        parts.push(sql);
    }
    if !sources.minutes.is_empty() {
        let mut sql = Sql::default();
        sql.push("SELECT song_id, ");
        match &columns.minute_bind {
            Some(bind) => sql.bind(columns.minute, bind.clone()),
            None => sql.push(columns.minute),
        };
        sql.push(&format!(" AS value FROM {CHART_MINUTE} WHERE ("));
        for (index, (from, to)) in sources.minutes.iter().enumerate() {
            if index > 0 {
                sql.push(" OR ");
            }
            sql.bind("(minute >= toDateTime(?)", Bind::Number(epoch_secs(*from)))
                .bind(
                    " AND minute < toDateTime(?))",
                    Bind::Number(epoch_secs(*to)),
                );
        }
        sql.push(") AND ");
        sql.bind(&CommittedFlushes::condition(""), Bind::Committed);
        sql.push(&scope_condition);
        if let Some(bind) = &scope_bind {
            sql.binds.push(bind.clone());
        }
        song_filter(&mut sql);
        if columns.per_user_hour {
            sql.push(" GROUP BY user_id, song_id, region, toStartOfHour(minute)");
        } else {
            sql.push(" GROUP BY song_id");
        }
        parts.push(sql);
    }
    let mut union = Sql::default();
    for (index, part) in parts.into_iter().enumerate() {
        if index > 0 {
            union.push(" UNION ALL ");
        }
        union.append(part);
    }
    union
}

/// Every song of the span with its capped plays, ranked: `SELECT groupArray((song_id,
/// plays)) AS ranked` in rank order.
fn ranked_sql(sources: &ChartSources, scope: &ChartScope, cap: u64, songs_only: bool) -> Sql {
    let mut sql = Sql::default();
    let element = if songs_only {
        "song_id"
    } else {
        "(song_id, plays)"
    };
    sql.push(&format!(
        "SELECT groupArray({element}) AS ranked FROM (SELECT song_id, sum(value) AS plays FROM ("
    ));
    if sources.hours.is_empty() && sources.minutes.is_empty() {
        sql.push("SELECT '' AS song_id, toUInt64(0) AS value WHERE 0");
    } else {
        sql.append(parts_sql(
            sources,
            scope,
            &PartColumns {
                hourly: "plays",
                minute: "least(toUInt64(?), sum(chart_plays))",
                minute_bind: Some(Bind::Number(cap)),
                per_user_hour: true,
            },
            None,
        ));
    }
    sql.push(") GROUP BY song_id ORDER BY plays DESC, song_id ASC)");
    sql
}

#[derive(Debug, Row, Deserialize)]
struct RankedPage {
    total: u64,
    songs: Vec<String>,
    plays: Vec<u64>,
}

#[derive(Debug, Row, Deserialize)]
struct SongListeners {
    song_id: String,
    listeners: u64,
}

/// Reads one page of a chart (see the module docs).
pub(super) async fn read_chart(
    client: &clickhouse::Client,
    plan: &ChartPlan,
    query: &ChartQuery,
) -> Result<ChartPage, AppError> {
    let sources = ChartSources::of(&query.span, plan, query.user_hour_cap);
    let mut page_sql = Sql::default();
    page_sql
        .bind(
            "SELECT length(ranked) AS total, \
             arrayMap(entry -> tupleElement(entry, 1), arraySlice(ranked, ?, ?)) AS songs, ",
            Bind::Number(query.offset as u64 + 1),
        )
        .binds
        .push(Bind::Number(query.limit as u64));
    page_sql
        .bind(
            "arrayMap(entry -> tupleElement(entry, 2), arraySlice(ranked, ?, ?)) AS plays FROM (",
            Bind::Number(query.offset as u64 + 1),
        )
        .binds
        .push(Bind::Number(query.limit as u64));
    page_sql
        .append(ranked_sql(
            &sources,
            &query.scope,
            query.user_hour_cap,
            false,
        ))
        .push(")");
    let page: RankedPage = timed(
        "chart_rank",
        page_sql.query(client, &plan.committed).fetch_one(),
    )
    .await?;
    if page.songs.is_empty() {
        return Ok(ChartPage {
            total: page.total,
            songs: Vec::new(),
            data_through: plan.data_through,
        });
    }
    let listeners = read_listeners(client, plan, &sources, &query.scope, &page.songs);
    let previous = ChartSources::of(
        &query.window.previous(&query.span),
        plan,
        query.user_hour_cap,
    );
    let prev_ranks = read_ranks(client, plan, &previous, query, &page.songs);
    let (listeners, prev_ranks) = tokio::try_join!(listeners, prev_ranks)?;
    let songs = page
        .songs
        .into_iter()
        .zip(page.plays)
        .zip(prev_ranks)
        .enumerate()
        .map(|(index, ((song_id, plays), prev_rank))| ChartSong {
            rank: (query.offset + index + 1) as u64,
            listeners: listeners
                .iter()
                .find(|row| row.song_id == song_id)
                .map_or(0, |row| row.listeners),
            song_id,
            plays,
            prev_rank: (prev_rank > 0).then_some(prev_rank),
        })
        .collect();
    Ok(ChartPage {
        total: page.total,
        songs,
        data_through: plan.data_through,
    })
}

async fn read_listeners(
    client: &clickhouse::Client,
    plan: &ChartPlan,
    sources: &ChartSources,
    scope: &ChartScope,
    songs: &[String],
) -> Result<Vec<SongListeners>, AppError> {
    let mut sql = Sql::default();
    sql.push("SELECT song_id, uniqExactMerge(value) AS listeners FROM (")
        .append(parts_sql(
            sources,
            scope,
            &PartColumns {
                hourly: "listeners",
                minute: "uniqExactState(user_id)",
                minute_bind: None,
                per_user_hour: false,
            },
            Some(songs),
        ))
        .push(") GROUP BY song_id");
    timed(
        "chart_listeners",
        sql.query(client, &plan.committed).fetch_all(),
    )
    .await
}

/// The rank of each of `songs` in the chart of `sources` (0: not in it).
async fn read_ranks(
    client: &clickhouse::Client,
    plan: &ChartPlan,
    sources: &ChartSources,
    query: &ChartQuery,
    songs: &[String],
) -> Result<Vec<u64>, AppError> {
    let mut sql = Sql::default();
    sql.bind(
        "SELECT arrayMap(song -> toUInt64(indexOf(ranked, song)), CAST(? AS Array(String))) FROM (",
        Bind::Texts(songs.to_vec()),
    )
    .append(ranked_sql(sources, &query.scope, query.user_hour_cap, true))
    .push(")");
    timed(
        "chart_prev_rank",
        sql.query(client, &plan.committed).fetch_one(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn snapshot(day: NaiveDate, snapshot_id: u64, hours_through: &str, cap: u64) -> ChartRollupRow {
        ChartRollupRow {
            day,
            snapshot_id,
            hours_through: at(hours_through),
            user_hour_cap: cap,
            rolled_up_at: at("2026-11-30T12:05:00Z"),
            minute_rows_read: 1,
            chart_rows: 1,
            seconds: 0.0,
            snapshot_partitions: Vec::new(),
            snapshot_newest_claim_ids: Vec::new(),
            snapshot_newest_max_seqs: Vec::new(),
        }
    }

    /// Snapshots of 11-27 and 11-28 (whole), 11-26 (another cap), 11-29 (a late hour at
    /// 05:00) and today up to 10:00.
    fn plan() -> ChartPlan {
        let snapshots = [
            snapshot(day("2026-11-27"), 27, "2026-11-28T00:00:00Z", 20),
            snapshot(day("2026-11-28"), 28, "2026-11-29T00:00:00Z", 20),
            snapshot(day("2026-11-26"), 26, "2026-11-27T00:00:00Z", 5),
            snapshot(day("2026-11-29"), 29, "2026-11-30T00:00:00Z", 20),
            snapshot(day("2026-11-30"), 30, "2026-11-30T10:00:00Z", 20),
        ];
        ChartPlan {
            first_day: day("2026-11-14"),
            last_day: day("2026-11-30"),
            snapshots: snapshots.into_iter().map(|row| (row.day, row)).collect(),
            late_hours: BTreeSet::from([hour_number(at("2026-11-29T05:00:00Z"))]),
            ..ChartPlan::default()
        }
    }

    fn part(day_text: &str, snapshot_id: u64, from: &str, to: &str) -> HourPart {
        HourPart {
            day: day(day_text),
            snapshot_id,
            from: at(from),
            to: at(to),
        }
    }

    #[test]
    fn complete_hours_come_from_their_snapshot_the_rest_from_minutes() {
        let span = ChartWindow::Week.span(at("2026-11-30T12:34:20Z"));
        let sources = ChartSources::of(&span, &plan(), 20);
        assert_eq!(
            sources.hours,
            vec![
                part(
                    "2026-11-27",
                    27,
                    "2026-11-27T00:00:00Z",
                    "2026-11-28T00:00:00Z"
                ),
                part(
                    "2026-11-28",
                    28,
                    "2026-11-28T00:00:00Z",
                    "2026-11-29T00:00:00Z"
                ),
                part(
                    "2026-11-29",
                    29,
                    "2026-11-29T00:00:00Z",
                    "2026-11-29T05:00:00Z"
                ),
                part(
                    "2026-11-29",
                    29,
                    "2026-11-29T06:00:00Z",
                    "2026-11-30T00:00:00Z"
                ),
                part(
                    "2026-11-30",
                    30,
                    "2026-11-30T00:00:00Z",
                    "2026-11-30T10:00:00Z"
                ),
            ]
        );
        assert_eq!(
            sources.minutes,
            vec![
                (span.from, at("2026-11-27T00:00:00Z")),
                (at("2026-11-29T05:00:00Z"), at("2026-11-29T06:00:00Z")),
                (at("2026-11-30T10:00:00Z"), span.to),
            ]
        );
        // Another cap: nothing from the snapshots but 11-26's.
        let other = ChartSources::of(&span, &plan(), 5);
        assert_eq!(
            other.hours,
            vec![part(
                "2026-11-26",
                26,
                "2026-11-26T00:00:00Z",
                "2026-11-27T00:00:00Z"
            )]
        );
    }

    #[test]
    fn a_sliding_hour_inside_one_clock_hour_is_read_from_minutes() {
        let span = ChartWindow::Hour.span(at("2026-11-30T09:34:20Z"));
        let sources = ChartSources::of(&span, &plan(), 20);
        assert!(sources.hours.is_empty());
        assert_eq!(sources.minutes, vec![(span.from, span.to)]);
        let on_the_hour = ChartWindow::Hour.span(at("2026-11-30T09:00:00Z"));
        let sources = ChartSources::of(&on_the_hour, &plan(), 20);
        assert_eq!(
            sources.hours,
            vec![part(
                "2026-11-30",
                30,
                "2026-11-30T08:00:00Z",
                "2026-11-30T09:00:00Z"
            )]
        );
        assert!(sources.minutes.is_empty());
    }

    #[test]
    fn the_capped_value_is_bound_before_the_minute_parts_ranges() {
        let span = ChartWindow::Week.span(at("2026-11-30T12:34:20Z"));
        let sources = ChartSources::of(&span, &plan(), 20);
        let scope = ChartScope::Region("DE".to_owned());
        let sql = ranked_sql(&sources, &scope, 20, false);
        let binds = sql.binds.len();
        // Hours: 5 parts × 4 + region; minutes: cap + 3 ranges × 2 + committed + region.
        assert_eq!(binds, 5 * 4 + 1 + 1 + 3 * 2 + 1 + 1);
        assert_eq!(sql.text.matches('?').count(), binds - 1 + 4, "{}", sql.text);
        // After the hours' 5 × 4 binds and the region.
        assert!(matches!(sql.binds[21], Bind::Number(20)));
        let cap_in_text = sql.text.find("least(toUInt64(?)").unwrap();
        let chart_hourly = sql.text.find("FROM chart_hourly").unwrap();
        let minutes = sql.text.find("FROM chart_minute").unwrap();
        assert!(chart_hourly < cap_in_text && cap_in_text < minutes);
    }
}
