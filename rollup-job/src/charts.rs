//! The charts' hourly and daily rows: a day's complete hours of committed chart plays
//! (`chart_minute`), each user capped per song, region and UTC hour (`topk_core::chart`), summed
//! per (hour, region, song) and per (hour, all regions, song) into `chart_hours` with the
//! listeners, then those hours summed per (region, song) into `chart_days`, as a *snapshot* of
//! the day's hours up to `hours_through`, recorded in `chart_snapshots` with the heads of what
//! it read.
//!
//! Unlike the daily top lists, a day's charts are rolled up while the day goes on: every run
//! snapshots today's hours completed so far, so a chart reads today's complete hours from a
//! few rows per song instead of every play. Plays committed after a snapshot for one of its
//! hours (late plays: every commit lists the hours of its rows) make the next run snapshot the
//! day again, and readers read those hours from the minute rows meanwhile. The steps, each safe
//! to interrupt, are those of the daily rollup (`crate::rollup`): what counts, the rows tagged
//! with a new snapshot id, then the record that makes readers use them; superseded snapshots
//! are deleted two minutes later (`crate::rollup::delete_superseded_snapshots`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Instant;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use topk_core::chart::{floor_to, listeners_function};
use topk_core::cluster::Placement;
use topk_core::committed::{CommittedFlushes, SnapshotHeads};
use topk_core::schema::{
    ChartSnapshotRow, ALL_REGIONS, CHART_DAYS, CHART_HOURS, CHART_MINUTE, CHART_SNAPSHOTS,
};
use topk_core::snapshots::{hours_with_new_commits, latest_chart_snapshots};
use topk_core::window::{day_start, hour_number};

use crate::day_state::{day_start_secs, next_day};
use crate::error::{clickhouse_error, RollupError};
use crate::prune::list_day_partitions;
use crate::rollup::SnapshotStart;

/// The hours' chart rows, built inside ClickHouse: each user's committed chart plays of a
/// song per (UTC hour, region), capped, then summed per (hour, region, song) and per (hour, all
/// regions, song) with the set of users who had a counted play (an approximate-beyond-1 024
/// state, [`topk_core::chart::listeners_function`]).
///
/// Placeholders, in order: the day, the snapshot id, the cap, the first and the end minute in
/// epoch seconds, then the four arrays of the committed condition.
const CHART_HOURS_SELECT: &str = "
SELECT
    toDate(?) AS day,
    hour,
    chart_region AS region,
    song_id,
    sum(user_plays) AS plays,
    {listeners_state}(user_id) AS listeners,
    toUInt64(?) AS snapshot_id
FROM
(
    SELECT hour, arrayJoin([region, '{all}']) AS chart_region, song_id, user_id, user_plays
    FROM
    (
        SELECT toStartOfHour(minute) AS hour, region, song_id, user_id,
               least(toUInt64(?), sum(chart_plays)) AS user_plays
        FROM {minutes}
        WHERE minute >= toDateTime(?) AND minute < toDateTime(?) AND {committed}
        GROUP BY hour, region, song_id, user_id
    )
)
GROUP BY hour, chart_region, song_id";

fn chart_hours_insert_sql() -> String {
    let select = CHART_HOURS_SELECT
        .replace("{minutes}", CHART_MINUTE)
        .replace("{committed}", &CommittedFlushes::condition(""))
        .replace("{listeners_state}", &listeners_function("State"))
        .replace("{all}", ALL_REGIONS);
    format!(
        "INSERT INTO {CHART_HOURS} (day, hour, region, song_id, plays, listeners, snapshot_id){select}"
    )
}

/// A snapshot's day rows: its hours summed per (region, song), all regions' rows too.
///
/// Placeholders: the day and the snapshot id.
fn chart_days_insert_sql() -> String {
    let merge_state = listeners_function("MergeState");
    format!(
        "INSERT INTO {CHART_DAYS} (day, region, song_id, plays, listeners, snapshot_id) \
         SELECT day, region, song_id, sum(plays), {merge_state}(listeners), snapshot_id \
         FROM {CHART_HOURS} WHERE day = toDate(?) AND snapshot_id = ? \
         GROUP BY day, region, song_id, snapshot_id"
    )
}

/// The end of the hours of `day` a rollup at `now` can snapshot: the day's end, or for today
/// the start of the current hour.
pub fn hours_through(day: NaiveDate, now: DateTime<Utc>) -> DateTime<Utc> {
    day_start(next_day(day)).min(floor_to(now, Duration::hours(1)))
}

/// Why a day's charts are rolled up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartReason {
    NeverRolledUp,
    /// More of the day's hours are complete than the latest snapshot holds (today).
    NewHours,
    /// Plays were committed after the latest snapshot for hours it holds.
    LateData,
    /// The latest snapshot counted with another per-user cap than the job's.
    OtherCap,
    Backfill,
}

impl fmt::Display for ChartReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::NeverRolledUp => "new day",
            Self::NewHours => "new complete hours",
            Self::LateData => "late data: plays committed since the last rollup",
            Self::OtherCap => "counted with another cap",
            Self::Backfill => "backfill",
        })
    }
}

/// What to do with one day's charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartAction {
    RollUp {
        reason: ChartReason,
        through: DateTime<Utc>,
    },
    UpToDate {
        hours_through: DateTime<Utc>,
        snapshot_id: u64,
    },
    /// No complete hour yet (today just after midnight), or no minute rows to count from
    /// (never any, or pruned: the latest snapshot, if any, stays).
    Nothing,
}

/// What is known about one day's charts.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartDayState {
    pub latest: Option<ChartSnapshotRow>,
    pub minute_rows_present: bool,
    /// Plays were committed after the latest snapshot for hours it holds.
    pub late: bool,
}

/// Decides what to do with a day's charts, `through` being [`hours_through`] of it.
pub fn decide_charts(
    state: &ChartDayState,
    day: NaiveDate,
    through: DateTime<Utc>,
    backfill: bool,
    cap: u64,
) -> ChartAction {
    if through <= day_start(day) || !state.minute_rows_present {
        return ChartAction::Nothing;
    }
    let roll_up = |reason| ChartAction::RollUp { reason, through };
    let Some(latest) = &state.latest else {
        return roll_up(if backfill {
            ChartReason::Backfill
        } else {
            ChartReason::NeverRolledUp
        });
    };
    if backfill {
        roll_up(ChartReason::Backfill)
    } else if latest.user_hour_cap != cap {
        roll_up(ChartReason::OtherCap)
    } else if latest.hours_through < through {
        roll_up(ChartReason::NewHours)
    } else if state.late {
        roll_up(ChartReason::LateData)
    } else {
        ChartAction::UpToDate {
            hours_through: latest.hours_through,
            snapshot_id: latest.snapshot_id,
        }
    }
}

/// The hours of `snapshot` (as hours since 1970) that plays committed after it touch.
pub fn late_hours_of(snapshot: &ChartSnapshotRow, late_hours: &BTreeSet<u32>) -> BTreeSet<u32> {
    let first = hour_number(day_start(snapshot.day));
    let end = hour_number(snapshot.hours_through);
    late_hours.range(first..end).copied().collect()
}

/// What to do with each of `days`' charts at `now`.
pub async fn plan_chart_days(
    client: &clickhouse::Client,
    placement: &Placement,
    days: &[NaiveDate],
    now: DateTime<Utc>,
    backfill: bool,
    cap: u64,
) -> Result<Vec<(NaiveDate, ChartAction)>, RollupError> {
    let (Some(first), Some(last)) = (days.first().copied(), days.last().copied()) else {
        return Ok(Vec::new());
    };
    let latest = latest_chart_snapshots(client, first, last)
        .await
        .map_err(clickhouse_error(format!(
            "reading the chart snapshots of {first}..={last}"
        )))?;
    let minute_days: BTreeSet<NaiveDate> = list_day_partitions(client, placement, CHART_MINUTE)
        .await?
        .into_iter()
        .collect();
    let committed = CommittedFlushes::read(client)
        .await
        .map_err(|error| RollupError::Committed(error.to_string()))?;
    let late_hours = hours_with_new_commits(client, &committed, &latest)
        .await
        .map_err(clickhouse_error(
            "reading the hours of the flushes committed since each chart rollup",
        ))?;
    Ok(days
        .iter()
        .map(|day| {
            let snapshot = latest.get(day).cloned();
            let late = snapshot
                .as_ref()
                .is_some_and(|snapshot| !late_hours_of(snapshot, &late_hours).is_empty());
            let state = ChartDayState {
                latest: snapshot,
                minute_rows_present: minute_days.contains(day),
                late,
            };
            let through = hours_through(*day, now);
            (*day, decide_charts(&state, *day, through, backfill, cap))
        })
        .collect())
}

/// Snapshots `day`'s hours before `through` into `chart_hours` and `chart_days` and records it.
pub async fn roll_up_chart_day(
    client: &clickhouse::Client,
    placement: &Placement,
    day: NaiveDate,
    through: DateTime<Utc>,
    cap: u64,
) -> Result<ChartSnapshotRow, RollupError> {
    let started = Instant::now();
    let SnapshotStart {
        insert_settings,
        committed,
        snapshot_id,
    } = SnapshotStart::take(client, placement).await?;
    let start = day_start_secs(day);
    let end = u32::try_from(through.timestamp().max(0)).unwrap_or(u32::MAX);
    let read = client.query(&format!(
        "SELECT count() FROM {CHART_MINUTE} WHERE minute >= toDateTime(?) \
         AND minute < toDateTime(?) AND {}",
        CommittedFlushes::condition("")
    ));
    let minute_rows_read: u64 = committed
        .bind(read.bind(start).bind(end))
        .fetch_one()
        .await
        .map_err(clickhouse_error(format!(
            "measuring the chart rows of {day}"
        )))?;
    let mut insert = client.query(&chart_hours_insert_sql());
    for (name, value) in &insert_settings {
        insert = insert.with_setting(*name, value.clone());
    }
    let insert = insert
        .bind(day.to_string())
        .bind(snapshot_id)
        .bind(cap)
        .bind(start)
        .bind(end);
    committed
        .bind(insert)
        .execute()
        .await
        .map_err(clickhouse_error(format!(
            "writing chart snapshot {snapshot_id} of {day} into {CHART_HOURS}"
        )))?;
    let mut days = client.query(&chart_days_insert_sql());
    for (name, value) in &insert_settings {
        days = days.with_setting(*name, value.clone());
    }
    days.bind(day.to_string())
        .bind(snapshot_id)
        .execute()
        .await
        .map_err(clickhouse_error(format!(
            "writing chart snapshot {snapshot_id} of {day} into {CHART_DAYS}"
        )))?;
    let chart_rows: u64 = client
        .query(&format!(
            "SELECT (SELECT count() FROM {CHART_HOURS} WHERE day = toDate(?) AND snapshot_id = ?) \
             + (SELECT count() FROM {CHART_DAYS} WHERE day = toDate(?) AND snapshot_id = ?)"
        ))
        .bind(day.to_string())
        .bind(snapshot_id)
        .bind(day.to_string())
        .bind(snapshot_id)
        .fetch_one()
        .await
        .map_err(clickhouse_error(format!(
            "counting the rows of chart snapshot {snapshot_id}"
        )))?;
    if minute_rows_read > 0 && chart_rows == 0 {
        // The day's rows were dropped in between (a concurrent prune).
        return Err(RollupError::MinuteRowsVanished { day });
    }
    let heads = SnapshotHeads::of(&committed);
    let now = Utc::now();
    let row = ChartSnapshotRow {
        day,
        snapshot_id,
        hours_through: through,
        user_hour_cap: cap,
        rolled_up_at: DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now),
        minute_rows_read,
        chart_rows,
        seconds: started.elapsed().as_secs_f64(),
        snapshot_partitions: heads.partitions,
        snapshot_newest_claim_ids: heads.claim_ids,
        snapshot_newest_max_seqs: heads.max_seqs,
    };
    let mut record = client
        .insert::<ChartSnapshotRow>(CHART_SNAPSHOTS)
        .await
        .map_err(clickhouse_error("starting the chart rollup insert"))?;
    record.write(&row).await.map_err(clickhouse_error(format!(
        "recording the chart rollup of {day}"
    )))?;
    record.end().await.map_err(clickhouse_error(format!(
        "recording the chart rollup of {day}"
    )))?;
    Ok(row)
}

/// What happened to one day's charts.
#[derive(Debug)]
pub enum ChartResult {
    RolledUp {
        reason: ChartReason,
        rollup: ChartSnapshotRow,
    },
    WouldRollUp {
        reason: ChartReason,
        through: DateTime<Utc>,
    },
    UpToDate {
        hours_through: DateTime<Utc>,
    },
    Nothing,
    Failed(RollupError),
}

#[derive(Debug)]
pub struct ChartOutcome {
    pub day: NaiveDate,
    pub result: ChartResult,
    /// 1-based position of the day in this invocation, and how many days it covers.
    pub position: usize,
    pub days: usize,
}

impl ChartOutcome {
    pub fn failed(&self) -> bool {
        matches!(self.result, ChartResult::Failed(_))
    }
}

fn hhmm(time: DateTime<Utc>) -> String {
    time.format("%H:%M").to_string()
}

impl fmt::Display for ChartOutcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "[charts {}/{}] {} ",
            self.position, self.days, self.day
        )?;
        match &self.result {
            ChartResult::RolledUp { reason, rollup } => write!(
                formatter,
                "rolled up hours before {} ({reason}): minute_rows_read={} chart_rows={} \
                 seconds={:.3}",
                if rollup.hours_through == day_start(next_day(self.day)) {
                    "24:00".to_owned()
                } else {
                    hhmm(rollup.hours_through)
                },
                rollup.minute_rows_read,
                rollup.chart_rows,
                rollup.seconds
            ),
            ChartResult::WouldRollUp { reason, through } => write!(
                formatter,
                "would roll up hours before {} ({reason})",
                hhmm(*through)
            ),
            ChartResult::UpToDate { hours_through } => write!(
                formatter,
                "up to date (hours before {})",
                hhmm(*hours_through)
            ),
            ChartResult::Nothing => formatter.write_str("nothing to roll up"),
            ChartResult::Failed(error) => write!(formatter, "failed: {error}"),
        }
    }
}

/// The chart rollups of `days` planned at `now`, done one day after the other.
pub async fn roll_up_charts(
    job: &crate::job::RollupJob,
    days: &[NaiveDate],
    backfill: bool,
    mut on_day: impl FnMut(&ChartOutcome),
) -> Result<Vec<ChartOutcome>, RollupError> {
    let cap = job.chart_user_hour_cap;
    let plan = plan_chart_days(&job.client, &job.placement, days, job.now, backfill, cap).await?;
    let mut outcomes = Vec::with_capacity(plan.len());
    for (index, (day, action)) in plan.into_iter().enumerate() {
        let result = match action {
            ChartAction::Nothing => ChartResult::Nothing,
            ChartAction::UpToDate {
                hours_through,
                snapshot_id,
            } => {
                if !job.dry_run {
                    for table in [CHART_HOURS, CHART_DAYS] {
                        job.delete_superseded(table, day, snapshot_id).await;
                    }
                }
                ChartResult::UpToDate { hours_through }
            }
            ChartAction::RollUp { reason, through } if job.dry_run => {
                ChartResult::WouldRollUp { reason, through }
            }
            ChartAction::RollUp { reason, through } => {
                match roll_up_chart_day(&job.client, &job.placement, day, through, cap).await {
                    Ok(rollup) => ChartResult::RolledUp { reason, rollup },
                    Err(error) => ChartResult::Failed(error),
                }
            }
        };
        let outcome = ChartOutcome {
            day,
            result,
            position: index + 1,
            days: days.len(),
        };
        on_day(&outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// The latest chart snapshot of each of `days`, by day (for reports and tests).
pub async fn current_chart_snapshots(
    client: &clickhouse::Client,
    days: &[NaiveDate],
) -> Result<BTreeMap<NaiveDate, ChartSnapshotRow>, RollupError> {
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Ok(BTreeMap::new());
    };
    latest_chart_snapshots(client, *first, *last)
        .await
        .map_err(clickhouse_error("reading the chart rollups"))
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

    fn rollup(through: &str, cap: u64) -> ChartSnapshotRow {
        ChartSnapshotRow {
            day: day("2026-11-30"),
            snapshot_id: 9,
            hours_through: at(through),
            user_hour_cap: cap,
            rolled_up_at: at("2026-11-30T12:01:00Z"),
            minute_rows_read: 1,
            chart_rows: 1,
            seconds: 0.1,
            snapshot_partitions: Vec::new(),
            snapshot_newest_claim_ids: Vec::new(),
            snapshot_newest_max_seqs: Vec::new(),
        }
    }

    fn state(latest: Option<ChartSnapshotRow>, late: bool) -> ChartDayState {
        ChartDayState {
            latest,
            minute_rows_present: true,
            late,
        }
    }

    #[test]
    fn today_is_rolled_up_up_to_its_current_hour_and_past_days_whole() {
        let now = at("2026-11-30T12:34:00Z");
        assert_eq!(
            hours_through(day("2026-11-30"), now),
            at("2026-11-30T12:00:00Z")
        );
        assert_eq!(
            hours_through(day("2026-11-29"), now),
            at("2026-11-30T00:00:00Z")
        );
        assert_eq!(
            hours_through(day("2026-11-30"), at("2026-11-30T00:10:00Z")),
            at("2026-11-30T00:00:00Z")
        );
    }

    #[test]
    fn a_day_is_rolled_up_for_new_hours_late_plays_or_another_cap() {
        let today = day("2026-11-30");
        let through = at("2026-11-30T12:00:00Z");
        let roll = |reason| ChartAction::RollUp { reason, through };
        assert_eq!(
            decide_charts(&state(None, false), today, through, false, 20),
            roll(ChartReason::NeverRolledUp)
        );
        let older = rollup("2026-11-30T11:00:00Z", 20);
        assert_eq!(
            decide_charts(&state(Some(older), false), today, through, false, 20),
            roll(ChartReason::NewHours)
        );
        let current = rollup("2026-11-30T12:00:00Z", 20);
        assert_eq!(
            decide_charts(
                &state(Some(current.clone()), true),
                today,
                through,
                false,
                20
            ),
            roll(ChartReason::LateData)
        );
        assert_eq!(
            decide_charts(
                &state(Some(current.clone()), false),
                today,
                through,
                false,
                5
            ),
            roll(ChartReason::OtherCap)
        );
        assert!(matches!(
            decide_charts(&state(Some(current), false), today, through, false, 20),
            ChartAction::UpToDate { snapshot_id: 9, .. }
        ));
        // Just after midnight nothing is complete; without minute rows nothing to count.
        assert_eq!(
            decide_charts(
                &state(None, false),
                today,
                at("2026-11-30T00:00:00Z"),
                false,
                20
            ),
            ChartAction::Nothing
        );
        let mut gone = state(None, false);
        gone.minute_rows_present = false;
        assert_eq!(
            decide_charts(&gone, today, through, true, 20),
            ChartAction::Nothing
        );
    }

    #[test]
    fn only_late_hours_inside_the_snapshot_count() {
        let snapshot = rollup("2026-11-30T12:00:00Z", 20);
        let noon = hour_number(at("2026-11-30T12:00:00Z"));
        let late = BTreeSet::from([noon - 13, noon - 1, noon, noon + 1]);
        assert_eq!(late_hours_of(&snapshot, &late), BTreeSet::from([noon - 1]));
    }

    #[test]
    fn insert_sql_reads_chart_minute_and_caps_per_user_hour_and_region() {
        let sql = chart_hours_insert_sql();
        assert!(sql.starts_with("INSERT INTO chart_hours (day, hour, region, song_id,"));
        assert_eq!(sql.matches('?').count(), 9);
        assert!(!sql.contains('{'), "{sql}");
        assert!(sql.contains("FROM chart_minute"));
        assert!(sql.contains("least(toUInt64(?), sum(chart_plays))"));
        assert!(sql.contains("GROUP BY hour, region, song_id, user_id"));
        assert!(sql.contains("arrayJoin([region, '*']) AS chart_region"));
        assert!(sql.contains("uniqCombinedState(14)(user_id)"));
        assert!(sql.contains("flush_seq <= transform(claim_id"));
    }

    #[test]
    fn day_rows_sum_the_snapshots_hours() {
        let sql = chart_days_insert_sql();
        assert!(sql.starts_with("INSERT INTO chart_days (day, region, song_id,"));
        assert_eq!(sql.matches('?').count(), 2);
        assert!(sql.contains("uniqCombinedMergeState(14)(listeners)"));
        assert!(sql.contains("FROM chart_hours WHERE day = toDate(?) AND snapshot_id = ?"));
    }
}
