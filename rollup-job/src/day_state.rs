//! What is known about each UTC day (its minute rows now, its latest rollup) and what the
//! job should therefore do with it.
//!
//! A day needs a rollup when it was never rolled up, or when its minute rows changed since
//! its latest rollup: the aggregator only ever appends rows for late events (and removes
//! the rows of a flush it will rewrite), so a different `count()` or `sum(plays)` means
//! the stored top 50 may be stale.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Days, NaiveDate, Utc};
use clickhouse::Row;
use serde::Deserialize;
use topk_core::schema::{RollupProgressRow, PLAYS_MINUTE, ROLLUP_PROGRESS};
use topk_core::window::day_start;

use crate::error::{clickhouse_error, RollupError};

/// A day's minute rows, as far as late-data detection is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteStats {
    pub minute_rows: u64,
    pub plays: u64,
}

impl MinuteStats {
    /// The statistics a rollup recorded when it read the day.
    pub fn recorded_by(progress: &RollupProgressRow) -> Self {
        Self {
            minute_rows: progress.minute_rows_read,
            plays: progress.plays_read,
        }
    }
}

/// Why a day gets rolled up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollUpReason {
    NeverRolledUp,
    /// Minute rows changed since the latest rollup.
    LateData {
        rolled_up: MinuteStats,
        now: MinuteStats,
    },
    /// Requested by `backfill`, whatever the day's state.
    Backfill,
}

impl fmt::Display for RollUpReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeverRolledUp => formatter.write_str("new day"),
            Self::LateData { rolled_up, now } => write!(
                formatter,
                "late data: {} -> {} minute rows, {} -> {} plays",
                rolled_up.minute_rows, now.minute_rows, rolled_up.plays, now.plays
            ),
            Self::Backfill => formatter.write_str("backfill"),
        }
    }
}

/// What to do with one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayAction {
    RollUp(RollUpReason),
    /// The latest rollup read exactly the minute rows the day has now.
    UpToDate {
        rolled_up_at: DateTime<Utc>,
    },
    /// The day was rolled up from minute rows that are gone now (pruned): rolling it up
    /// again would replace a good top 50 with an empty one, so it is left alone.
    KeepRollupOfPrunedDay {
        rolled_up_at: DateTime<Utc>,
    },
}

/// Decides what to do with a day from its minute rows now and its latest rollup.
pub fn decide(
    current: MinuteStats,
    latest_rollup: Option<&RollupProgressRow>,
    backfill: bool,
) -> DayAction {
    let Some(latest_rollup) = latest_rollup else {
        return DayAction::RollUp(if backfill {
            RollUpReason::Backfill
        } else {
            RollUpReason::NeverRolledUp
        });
    };
    let rolled_up = MinuteStats::recorded_by(latest_rollup);
    if current.minute_rows == 0 && rolled_up.minute_rows > 0 {
        return DayAction::KeepRollupOfPrunedDay {
            rolled_up_at: latest_rollup.rolled_up_at,
        };
    }
    if backfill {
        return DayAction::RollUp(RollUpReason::Backfill);
    }
    if current == rolled_up {
        return DayAction::UpToDate {
            rolled_up_at: latest_rollup.rolled_up_at,
        };
    }
    DayAction::RollUp(RollUpReason::LateData {
        rolled_up,
        now: current,
    })
}

#[derive(Debug, Row, Deserialize)]
struct DayMinuteStatsRow {
    #[serde(with = "clickhouse::serde::chrono::date")]
    day: NaiveDate,
    minute_rows: u64,
    plays: u64,
}

/// Epoch seconds of midnight UTC at the start of `day`, clamped to what ClickHouse's
/// `DateTime` can hold.
pub(crate) fn day_start_secs(day: NaiveDate) -> u32 {
    u32::try_from(day_start(day).timestamp().max(0)).unwrap_or(u32::MAX)
}

/// The day after `day` (saturating at the calendar's end).
pub(crate) fn next_day(day: NaiveDate) -> NaiveDate {
    day.checked_add_days(Days::new(1)).unwrap_or(day)
}

/// `count()` and `sum(plays)` of the minute rows of every day from `first` to `last`
/// (inclusive) that has any.
pub async fn minute_stats(
    client: &clickhouse::Client,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<BTreeMap<NaiveDate, MinuteStats>, RollupError> {
    // A range on `minute` (not `toDate(minute) = ..`) so the partition key's min/max index
    // prunes every other day's parts on any ClickHouse version.
    let rows: Vec<DayMinuteStatsRow> = client
        .query(&format!(
            "SELECT toDate(minute) AS day, count() AS minute_rows, sum(plays) AS plays \
             FROM {PLAYS_MINUTE} WHERE minute >= toDateTime(?) AND minute < toDateTime(?) \
             GROUP BY day ORDER BY day"
        ))
        .bind(day_start_secs(first))
        .bind(day_start_secs(next_day(last)))
        .fetch_all()
        .await
        .map_err(clickhouse_error(format!(
            "reading minute row counts of {first}..={last}"
        )))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let stats = MinuteStats {
                minute_rows: row.minute_rows,
                plays: row.plays,
            };
            (row.day, stats)
        })
        .collect())
}

/// The latest rollup of every day from `first` to `last` (inclusive) that has one.
pub async fn latest_rollups(
    client: &clickhouse::Client,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<BTreeMap<NaiveDate, RollupProgressRow>, RollupError> {
    let rows: Vec<RollupProgressRow> = client
        .query(&format!(
            "SELECT ?fields FROM {ROLLUP_PROGRESS} WHERE day >= toDate(?) AND day <= toDate(?) \
             ORDER BY day, rolled_up_at DESC LIMIT 1 BY day"
        ))
        .bind(first.to_string())
        .bind(last.to_string())
        .fetch_all()
        .await
        .map_err(clickhouse_error(format!(
            "reading rollup progress of {first}..={last}"
        )))?;
    Ok(rows.into_iter().map(|row| (row.day, row)).collect())
}

/// What to do with each of `days` (sorted, oldest first).
pub async fn plan_days(
    client: &clickhouse::Client,
    days: &[NaiveDate],
    backfill: bool,
) -> Result<Vec<(NaiveDate, DayAction, MinuteStats)>, RollupError> {
    let (Some(first), Some(last)) = (days.first().copied(), days.last().copied()) else {
        return Ok(Vec::new());
    };
    let stats = minute_stats(client, first, last).await?;
    let rollups = latest_rollups(client, first, last).await?;
    Ok(days
        .iter()
        .map(|day| {
            let current = stats.get(day).copied().unwrap_or_default();
            (*day, decide(current, rollups.get(day), backfill), current)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollup(minute_rows: u64, plays: u64) -> RollupProgressRow {
        RollupProgressRow {
            day: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            rolled_up_at: DateTime::from_timestamp(1_795_220_000, 0).unwrap(),
            minute_rows_read: minute_rows,
            plays_read: plays,
            users: 1,
            rows_written: 1,
            seconds: 0.1,
        }
    }

    fn stats(minute_rows: u64, plays: u64) -> MinuteStats {
        MinuteStats { minute_rows, plays }
    }

    #[test]
    fn never_rolled_up_days_are_rolled_up() {
        assert_eq!(
            decide(stats(10, 20), None, false),
            DayAction::RollUp(RollUpReason::NeverRolledUp)
        );
        // An empty day too: the API then reads its (empty) top list instead of minute rows.
        assert_eq!(
            decide(stats(0, 0), None, false),
            DayAction::RollUp(RollUpReason::NeverRolledUp)
        );
        assert_eq!(
            decide(stats(0, 0), None, true),
            DayAction::RollUp(RollUpReason::Backfill)
        );
    }

    #[test]
    fn unchanged_days_are_up_to_date_and_changed_days_rolled_up_again() {
        let latest = rollup(10, 20);
        assert!(matches!(
            decide(stats(10, 20), Some(&latest), false),
            DayAction::UpToDate { .. }
        ));
        for changed in [stats(11, 21), stats(10, 21), stats(9, 20)] {
            assert_eq!(
                decide(changed, Some(&latest), false),
                DayAction::RollUp(RollUpReason::LateData {
                    rolled_up: stats(10, 20),
                    now: changed
                })
            );
        }
        assert_eq!(
            decide(stats(10, 20), Some(&latest), true),
            DayAction::RollUp(RollUpReason::Backfill)
        );
    }

    #[test]
    fn a_rollup_whose_minute_rows_are_gone_is_kept_even_by_backfill() {
        let latest = rollup(10, 20);
        for backfill in [false, true] {
            assert!(matches!(
                decide(stats(0, 0), Some(&latest), backfill),
                DayAction::KeepRollupOfPrunedDay { .. }
            ));
        }
        // An empty day rolled up empty is simply up to date.
        assert!(matches!(
            decide(stats(0, 0), Some(&rollup(0, 0)), false),
            DayAction::UpToDate { .. }
        ));
    }

    #[test]
    fn day_bounds_are_utc_midnights() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        assert_eq!(day_start_secs(day), 1_795_132_800);
        assert_eq!(day_start_secs(next_day(day)), 1_795_132_800 + 86_400);
        assert_eq!(
            day_start_secs(NaiveDate::from_ymd_opt(1960, 1, 1).unwrap()),
            0
        );
    }
}
