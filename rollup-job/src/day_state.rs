//! What is known about each UTC day (its latest rollup, the flushes committed since, whether
//! its minute rows are still there) and what the job should therefore do with it.
//!
//! A day needs a rollup when it was never rolled up (or only before schema 4, without a
//! snapshot), or when a flush committed after its latest rollup wrote minute rows for it:
//! every commit lists the days its rows fall on, and the rollup recorded exactly which
//! commits it read (`topk_core::snapshots`). So late plays are always seen, whatever the totals —
//! a change that removed and added the same number of plays included.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Days, NaiveDate, Utc};
use topk_core::committed::CommittedFlushes;
use topk_core::schema::{RollupProgressRow, PLAYS_MINUTE};
use topk_core::snapshots::{days_with_new_commits, latest_rollups};
use topk_core::window::day_start;

use crate::error::{clickhouse_error, RollupError};
use crate::prune::list_day_partitions;

/// Why a day gets rolled up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollUpReason {
    NeverRolledUp,
    /// Rolled up before schema 4: its top lists say nothing of what they were built from.
    WithoutSnapshot,
    /// Flushes committed after the latest rollup wrote minute rows for the day.
    LateData,

    /// Requested by `backfill`, whatever the day's state.
    Backfill,
}

impl fmt::Display for RollUpReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeverRolledUp => formatter.write_str("new day"),
            Self::WithoutSnapshot => formatter.write_str("rolled up before schema 4"),
            Self::LateData => {
                formatter.write_str("late data: plays committed since the last rollup")
            }
            Self::Backfill => formatter.write_str("backfill"),
        }
    }
}

/// What to do with one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayAction {
    RollUp(RollUpReason),
    /// No flush committed since the latest rollup wrote rows for the day.
    UpToDate {
        rolled_up_at: DateTime<Utc>,
        snapshot_id: u64,
    },
    /// The day was rolled up from minute rows that are gone now (pruned): rolling it up
    /// again would replace a good top 50 with an empty one, so it is left alone.
    KeepRollupOfPrunedDay {
        rolled_up_at: DateTime<Utc>,
    },
}

/// What is known about one day.
#[derive(Debug, Clone, PartialEq)]
pub struct DayState {
    pub latest_rollup: Option<RollupProgressRow>,
    /// Whether `plays_minute` has a partition for the day.
    pub minute_rows_present: bool,
    /// Whether flushes committed after the latest rollup wrote rows for the day.
    pub new_commits: bool,
}

/// Decides what to do with a day.
pub fn decide(state: &DayState, backfill: bool) -> DayAction {
    let Some(latest) = &state.latest_rollup else {
        return DayAction::RollUp(if backfill {
            RollUpReason::Backfill
        } else {
            RollUpReason::NeverRolledUp
        });
    };
    if !state.minute_rows_present && latest.minute_rows_read > 0 {
        return DayAction::KeepRollupOfPrunedDay {
            rolled_up_at: latest.rolled_up_at,
        };
    }
    if backfill {
        return DayAction::RollUp(RollUpReason::Backfill);
    }
    if latest.snapshot_id == 0 {
        return DayAction::RollUp(RollUpReason::WithoutSnapshot);
    }
    if !state.new_commits {
        return DayAction::UpToDate {
            rolled_up_at: latest.rolled_up_at,
            snapshot_id: latest.snapshot_id,
        };
    }
    DayAction::RollUp(RollUpReason::LateData)
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

/// What to do with each of `days` (sorted, oldest first).
pub async fn plan_days(
    client: &clickhouse::Client,
    placement: &topk_core::cluster::Placement,
    days: &[NaiveDate],
    backfill: bool,
) -> Result<Vec<(NaiveDate, DayAction)>, RollupError> {
    let (Some(first), Some(last)) = (days.first().copied(), days.last().copied()) else {
        return Ok(Vec::new());
    };
    let rollups = latest_rollups(client, first, last)
        .await
        .map_err(clickhouse_error(format!(
            "reading rollup progress of {first}..={last}"
        )))?;
    let minute_days: BTreeSet<NaiveDate> = list_day_partitions(client, placement, PLAYS_MINUTE)
        .await?
        .into_iter()
        .collect();
    let committed = CommittedFlushes::read(client)
        .await
        .map_err(|error| RollupError::Committed(error.to_string()))?;
    let snapshots: BTreeMap<NaiveDate, RollupProgressRow> = rollups
        .iter()
        .filter(|(_, progress)| progress.snapshot_id != 0)
        .map(|(day, progress)| (*day, progress.clone()))
        .collect();
    let changed = days_with_new_commits(client, &committed, &snapshots)
        .await
        .map_err(clickhouse_error(
            "reading the flushes committed since each rollup",
        ))?;
    Ok(days
        .iter()
        .map(|day| {
            let state = DayState {
                latest_rollup: rollups.get(day).cloned(),
                minute_rows_present: minute_days.contains(day),
                new_commits: changed.contains(day),
            };
            (*day, decide(&state, backfill))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollup(minute_rows: u64, snapshot_id: u64) -> RollupProgressRow {
        RollupProgressRow {
            day: NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
            rolled_up_at: DateTime::from_timestamp(1_795_220_000, 0).unwrap(),
            minute_rows_read: minute_rows,
            plays_read: minute_rows,
            users: 1,
            rows_written: 1,
            seconds: 0.1,
            snapshot_id,
            snapshot_partitions: vec![0],
            snapshot_newest_claim_ids: vec![1 << 32],
            snapshot_newest_max_seqs: vec![3],
        }
    }

    fn state(latest: Option<RollupProgressRow>, present: bool, new_commits: bool) -> DayState {
        DayState {
            latest_rollup: latest,
            minute_rows_present: present,
            new_commits,
        }
    }

    #[test]
    fn never_rolled_up_days_are_rolled_up() {
        assert_eq!(
            decide(&state(None, true, false), false),
            DayAction::RollUp(RollUpReason::NeverRolledUp)
        );
        // An empty day too: the API then reads its (empty) top lists instead of minute rows.
        assert_eq!(
            decide(&state(None, false, false), false),
            DayAction::RollUp(RollUpReason::NeverRolledUp)
        );
        assert_eq!(
            decide(&state(None, false, false), true),
            DayAction::RollUp(RollUpReason::Backfill)
        );
        assert_eq!(
            decide(&state(Some(rollup(10, 0)), true, false), false),
            DayAction::RollUp(RollUpReason::WithoutSnapshot)
        );
    }

    #[test]
    fn days_are_rolled_up_again_exactly_when_flushes_committed_rows_for_them() {
        assert!(matches!(
            decide(&state(Some(rollup(10, 7)), true, false), false),
            DayAction::UpToDate { snapshot_id: 7, .. }
        ));
        assert_eq!(
            decide(&state(Some(rollup(10, 7)), true, true), false),
            DayAction::RollUp(RollUpReason::LateData)
        );
        assert_eq!(
            decide(&state(Some(rollup(10, 7)), true, false), true),
            DayAction::RollUp(RollUpReason::Backfill)
        );
    }

    #[test]
    fn a_rollup_whose_minute_rows_are_gone_is_kept_even_by_backfill() {
        for backfill in [false, true] {
            assert!(matches!(
                decide(&state(Some(rollup(10, 7)), false, false), backfill),
                DayAction::KeepRollupOfPrunedDay { .. }
            ));
        }
        // An empty day rolled up empty is simply up to date.
        assert!(matches!(
            decide(&state(Some(rollup(0, 7)), false, false), false),
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
