//! Reading a chart (`topk_core::chart`): the top songs of everyone, of a region, a genre or an
//! artist over a window, exact under the per-user cap.
//!
//! Each part of the window is read from where it is complete ([`ChartSources`]):
//!
//! - **a day whose current chart snapshot lies wholly inside the window, with no plays
//!   committed for its hours since** (`topk-rollup` snapshots each day's complete hours,
//!   today's too): one row per song in `chart_days`, already capped and summed;
//! - **another hour of a chart snapshot with no plays committed for it since**: one row per
//!   song in `chart_hours`;
//! - **the current hour, hours not rolled up yet or with plays committed since their snapshot,
//!   and the part-hours at the window's edges**: the committed chart rows of `chart_minute`
//!   (ordered by time, so an hour's rows are read alone), each user's plays of a song capped
//!   per (region, clock hour) by the query itself.
//!
//! A region's chart reads the region's rows of the snapshots; every other scope reads their
//! all-regions rows (`region = '*'`), a genre or an artist keeping its catalog songs. The
//! parts are summed per song in one query, which ranks every song of the window (plays
//! descending, then `song_id` ascending) and returns the page and the count. Two more queries,
//! run at once, read the page's listeners (the snapshots' listener states merged with the
//! minute rows' users) and the page's ranks in the previous period.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use clickhouse::Row;
use serde::Deserialize;
use topk_core::chart::{ceil_to, floor_to, listeners_function, ChartSpan, ChartWindow};
use topk_core::committed::CommittedFlushes;
use topk_core::schema::{
    ChartSnapshotRow, ALL_REGIONS, CHART_DAYS, CHART_HOURS, CHART_MINUTE, SONGS,
};
use topk_core::snapshots::{hours_with_new_commits, latest_chart_snapshots};
use topk_core::window::{day_start, hour_number};

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
    pub snapshots: BTreeMap<NaiveDate, ChartSnapshotRow>,
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
            latest_chart_snapshots(client, first_day, last_day),
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

    /// When `start` is a day's first hour and that day's snapshot (counted with `cap`) has
    /// every hour complete and ends by `end`: the snapshot and its `hours_through`, where the
    /// hours it does not hold begin.
    pub fn whole_day_snapshot(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        cap: u64,
    ) -> Option<(u64, DateTime<Utc>)> {
        let day = start.date_naive();
        let snapshot = self.snapshots.get(&day)?;
        let through = snapshot.hours_through;
        let whole = start == day_start(day)
            && snapshot.user_hour_cap == cap
            && start < through
            && through <= end
            && !self
                .late_hours
                .range(hour_number(start)..hour_number(through))
                .any(|_| true);
        whole.then_some((snapshot.snapshot_id, through))
    }

    /// The snapshot whose `chart_hours` rows hold the hour starting at `hour` completely,
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

    /// The `region` of the snapshot rows (`chart_hours`, `chart_days`) this scope reads: its
    /// region's, or all regions' together.
    fn snapshot_region(&self) -> &str {
        match self {
            Self::Region(region) => region,
            _ => ALL_REGIONS,
        }
    }

    /// The condition on a row's `song_id` (genre and artist: the catalog's current songs of
    /// it), with its bind.
    fn song_condition(&self) -> (String, Option<Bind>) {
        let column = match self {
            Self::Global | Self::Region(_) => return (String::new(), None),
            Self::Genre(_) => "genre",
            Self::Artist(_) => "artist_id",
        };
        let value = match self {
            Self::Genre(value) | Self::Artist(value) => value.clone(),
            _ => String::new(),
        };
        // The catalog's current entry of each song is its highest version. Only the songs
        // with an entry of that value (any version, found by a plain scan of one column) are
        // grouped: a fraction of the `songs_current` view's cost (measured on 200 000 songs:
        // 30-60 ms instead of ~110 ms for the grouping of every song, ~0.5 s for the view).
        (
            format!(
                " AND song_id IN (SELECT song_id FROM {SONGS} WHERE song_id IN \
                 (SELECT song_id FROM {SONGS} WHERE {column} = ?) \
                 GROUP BY song_id HAVING argMax({column}, version) = ?)"
            ),
            Some(Bind::Pair(value)),
        )
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

/// A `chart_hours` read: one day's snapshot, hours `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourPart {
    pub day: NaiveDate,
    pub snapshot_id: u64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// A `chart_days` read: every hour of one day's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayPart {
    pub day: NaiveDate,
    pub snapshot_id: u64,
}

/// Where each part of a span is read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChartSources {
    pub days: Vec<DayPart>,
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
            if let Some((snapshot_id, through)) = plan.whole_day_snapshot(start, end_hour, cap) {
                sources.days.push(DayPart {
                    day: start.date_naive(),
                    snapshot_id,
                });
                start = through;
                continue;
            }
            match plan.hour_snapshot(start, cap) {
                Some(snapshot_id) => sources.add_hour(start, snapshot_id),
                None => sources.add_minutes(start, start + hour),
            }
            start += hour;
        }
        sources.add_minutes(end_hour, span.to);
        sources
    }

    fn is_empty(&self) -> bool {
        self.days.is_empty() && self.hours.is_empty() && self.minutes.is_empty()
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
    /// The same text twice.
    Pair(String),
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
                Bind::Pair(text) => query.bind(text).bind(text),
            };
        }
        query
    }
}

fn epoch_secs(time: DateTime<Utc>) -> u64 {
    u64::try_from(time.timestamp()).unwrap_or(0)
}

/// What one part of the window reads: `snapshot` is the column of the snapshot tables
/// (`plays` or `listeners`), `minute` what the minute rows give instead; `songs`: only these.
struct PartColumns<'a> {
    snapshot: &'a str,
    minute: &'a str,
    /// The bind of a `?` in `minute`.
    minute_bind: Option<Bind>,
    /// Group the minute rows per user, song, region and hour (the capped plays), or per song.
    per_user_hour: bool,
}

/// `SELECT song_id, <value> FROM .. UNION ALL SELECT ..` over the sources' parts: the scope's
/// region (all regions' rows for the other scopes); a genre's or an artist's songs only in the
/// minute part.
fn parts_sql(
    sources: &ChartSources,
    scope: &ChartScope,
    columns: &PartColumns<'_>,
    songs: Option<&[String]>,
) -> Sql {
    // A set from a subquery, unlike `has(array, song_id)`, lets ClickHouse skip to the page's
    // songs through the snapshot tables' primary keys (the listener states are large).
    let filters = |sql: &mut Sql| {
        if let Some(songs) = songs {
            sql.bind(
                " AND song_id IN (SELECT arrayJoin(CAST(? AS Array(String))))",
                Bind::Texts(songs.to_vec()),
            );
        }
    };
    let mut parts: Vec<Sql> = Vec::new();
    if !sources.days.is_empty() {
        let mut sql = snapshot_part(CHART_DAYS, columns, &sources.days, scope, |sql, part| {
            sql.bind("(day = toDate(?)", Bind::Text(part.day.to_string()))
                .bind(" AND snapshot_id = ?)", Bind::Number(part.snapshot_id));
        });
        filters(&mut sql);
        parts.push(sql);
    }
    if !sources.hours.is_empty() {
        let mut sql = snapshot_part(CHART_HOURS, columns, &sources.hours, scope, |sql, part| {
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
        });
        filters(&mut sql);
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
        if let ChartScope::Region(region) = scope {
            sql.bind(" AND region = ?", Bind::Text(region.clone()));
        }
        // A genre's or an artist's songs before the minute rows are grouped per user (the
        // snapshot parts are kept after the union, see `ranked_sql`); a page's songs are the
        // scope's already.
        if songs.is_none() {
            let (song_condition, song_bind) = scope.song_condition();
            sql.push(&song_condition);
            if let Some(bind) = song_bind {
                sql.binds.push(bind);
            }
        }
        filters(&mut sql);
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

/// `SELECT song_id, <snapshot column> AS value FROM <table> WHERE (<read> OR ..) AND region =
/// ?`: the snapshot rows of `reads` (one condition each) in the scope's region.
fn snapshot_part<T>(
    table: &str,
    columns: &PartColumns<'_>,
    reads: &[T],
    scope: &ChartScope,
    condition: impl Fn(&mut Sql, &T),
) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT song_id, {} AS value FROM {table} WHERE (",
        columns.snapshot
    ));
    for (index, read) in reads.iter().enumerate() {
        if index > 0 {
            sql.push(" OR ");
        }
        condition(&mut sql, read);
    }
    sql.bind(
        ") AND region = ?",
        Bind::Text(scope.snapshot_region().to_owned()),
    );
    sql
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
    if sources.is_empty() {
        sql.push("SELECT '' AS song_id, toUInt64(0) AS value WHERE 0");
    } else {
        sql.append(parts_sql(
            sources,
            scope,
            &PartColumns {
                snapshot: "plays",
                minute: "least(toUInt64(?), sum(chart_plays))",
                minute_bind: Some(Bind::Number(cap)),
                per_user_hour: true,
            },
            None,
        ));
    }
    // A genre's or an artist's songs are kept after the parts: one catalog lookup for the
    // snapshot parts instead of one each (the minute part keeps them itself, before its
    // grouping per user).
    let (song_condition, song_bind) = scope.song_condition();
    sql.push(") WHERE 1");
    sql.push(&song_condition);
    if let Some(bind) = song_bind {
        sql.binds.push(bind);
    }
    sql.push(" GROUP BY song_id ORDER BY plays DESC, song_id ASC)");
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
            // Every listener has a counted play: an estimate above the plays is cut to them.
            listeners: listeners
                .iter()
                .find(|row| row.song_id == song_id)
                .map_or(0, |row| row.listeners)
                .min(plays),
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
    let merge = listeners_function("Merge");
    let state = format!("{}(user_id)", listeners_function("State"));
    sql.push(&format!(
        "SELECT song_id, {merge}(value) AS listeners FROM ("
    ))
    .append(parts_sql(
        sources,
        scope,
        &PartColumns {
            snapshot: "listeners",
            minute: &state,
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

    fn snapshot(
        day: NaiveDate,
        snapshot_id: u64,
        hours_through: &str,
        cap: u64,
    ) -> ChartSnapshotRow {
        ChartSnapshotRow {
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

    fn whole_day(day_text: &str, snapshot_id: u64) -> DayPart {
        DayPart {
            day: day(day_text),
            snapshot_id,
        }
    }

    #[test]
    fn whole_snapshots_come_from_days_other_complete_hours_from_hours_the_rest_from_minutes() {
        let span = ChartWindow::Week.span(at("2026-11-30T12:34:20Z"));
        let sources = ChartSources::of(&span, &plan(), 20);
        // 11-27 and 11-28 whole; today's snapshot ends at 10:00, inside the window.
        assert_eq!(
            sources.days,
            vec![
                whole_day("2026-11-27", 27),
                whole_day("2026-11-28", 28),
                whole_day("2026-11-30", 30),
            ]
        );
        // 11-29 has a late hour (05:00): its other hours one by one.
        assert_eq!(
            sources.hours,
            vec![
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
        assert_eq!(other.days, vec![whole_day("2026-11-26", 26)]);
        assert!(other.hours.is_empty());
    }

    #[test]
    fn a_day_only_partly_inside_the_window_is_read_by_the_hour() {
        // 11-28 12:35 to 11-29 12:35: 11-28's hours from 13:00 on, not its day rows; 11-29
        // only partly inside, and with a late hour.
        let span = ChartWindow::Day.span(at("2026-11-29T12:34:20Z"));
        let sources = ChartSources::of(&span, &plan(), 20);
        assert!(sources.days.is_empty());
        assert_eq!(
            sources.hours,
            vec![
                part(
                    "2026-11-28",
                    28,
                    "2026-11-28T13:00:00Z",
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
                    "2026-11-29T12:00:00Z"
                ),
            ]
        );
        // Today before the snapshot's end: the snapshot does not lie inside, its hours do.
        let early = ChartWindow::Day.span(at("2026-11-30T08:10:00Z"));
        let sources = ChartSources::of(&early, &plan(), 20);
        assert!(sources.days.is_empty());
        assert_eq!(
            sources.hours.last(),
            Some(&part(
                "2026-11-30",
                30,
                "2026-11-30T00:00:00Z",
                "2026-11-30T08:00:00Z"
            ))
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
        // Days: 3 × 2 + region; hours: 2 × 4 + region; minutes: cap + 3 ranges × 2 +
        // committed + region.
        assert_eq!(binds, 3 * 2 + 1 + 2 * 4 + 1 + 1 + 3 * 2 + 1 + 1);
        assert_eq!(sql.text.matches('?').count(), binds - 1 + 4, "{}", sql.text);
        let cap_at = 3 * 2 + 1 + 2 * 4 + 1;
        assert!(matches!(sql.binds[cap_at], Bind::Number(20)));
        let cap_in_text = sql.text.find("least(toUInt64(?)").unwrap();
        let chart_hours = sql.text.find("FROM chart_hours").unwrap();
        let minutes = sql.text.find("FROM chart_minute").unwrap();
        assert!(chart_hours < cap_in_text && cap_in_text < minutes);
    }

    #[test]
    fn only_a_regions_chart_reads_its_regions_rows() {
        let span = ChartWindow::Week.span(at("2026-11-30T12:34:20Z"));
        let sources = ChartSources::of(&span, &plan(), 20);
        let region_binds = |scope: &ChartScope| -> Vec<String> {
            ranked_sql(&sources, scope, 20, false)
                .binds
                .iter()
                .filter_map(|bind| match bind {
                    Bind::Text(text) if !text.starts_with("2026") => Some(text.clone()),
                    Bind::Pair(text) => Some(format!("{text} twice")),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            region_binds(&ChartScope::Region("DE".to_owned())),
            ["DE", "DE", "DE"]
        );
        assert_eq!(region_binds(&ChartScope::Global), ["*", "*"]);
        // A genre: all regions' snapshot rows, the genre's songs kept in the minute part and
        // after the parts.
        assert_eq!(
            region_binds(&ChartScope::Genre("jazz".to_owned())),
            ["*", "*", "jazz twice", "jazz twice"]
        );
    }
}
