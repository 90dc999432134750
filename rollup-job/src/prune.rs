//! Pruning: what the job may delete, and deleting it.
//!
//! - A minute partition is dropped only when its day is older than the 7-day window and the
//!   day before it *and* its latest rollup read exactly the rows it holds now. The API
//!   answers a day of the window from minute rows until the day is rolled up, so days of the
//!   window are never touched; the day before the window is kept too, because a user's local
//!   week (`?tz=`) can start inside it, and that part is read from minute rows. A day that
//!   fell out without being rolled up is kept (with a warning naming the backfill that fixes
//!   it) rather than lost.
//! - A daily partition is dropped when its day is older than the retention (at least the
//!   window, so the API never loses a day it reads).
//! - A day's chart rows (`chart_minute`) are dropped with its minute partition.
//! - A chart partition (`chart_hours`, `chart_days`) is dropped when its day is older than the chart
//!   retention (16 days by default: a `7d` chart as of a day ago and its previous period).
//! - A staging table is dropped when a crashed run left it more than a day ago.

use std::collections::BTreeMap;
use std::fmt;
use topk_core::cluster::Placement;

use chrono::{DateTime, NaiveDate, Utc};
use topk_core::schema::{CHART_DAYS, CHART_HOURS, CHART_MINUTE, DAILY_TOP, PLAYS_MINUTE};
use topk_core::window::{Window, WINDOW_DAYS};

use crate::day_state::{plan_days, DayAction, RollUpReason};
use crate::error::{clickhouse_error, RollupError};
use crate::job::RollupJob;
use crate::rollup::partition_id;
use crate::staging::{drop_staging_table, is_stale_staging_table, list_staging_tables};

/// One thing prune does, or deliberately does not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneStep {
    DropMinutePartition(NaiveDate),
    /// Outside the window but its minute rows are not (all) in a rollup: dropping them
    /// would lose plays.
    KeepMinutePartition {
        day: NaiveDate,
        changed_since_rollup: bool,
    },
    DropDailyPartition(NaiveDate),
    DropChartPartition(NaiveDate),
    DropStagingTable(String),
}

impl PruneStep {
    fn changes_something(&self) -> bool {
        !matches!(self, Self::KeepMinutePartition { .. })
    }
}

impl fmt::Display for PruneStep {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DropMinutePartition(day) => {
                write!(
                    formatter,
                    "minute partition {day} (rolled up, outside the window)"
                )
            }
            Self::KeepMinutePartition {
                day,
                changed_since_rollup,
            } => {
                let why = if *changed_since_rollup {
                    "has minute rows added since its rollup"
                } else {
                    "was never rolled up"
                };
                write!(
                    formatter,
                    "minute partition {day} kept: it is outside the window but {why}; run \
                     `topk-rollup backfill --from {day} --to {day}`, then prune again"
                )
            }
            Self::DropDailyPartition(day) => {
                write!(
                    formatter,
                    "daily partition {day} (older than the retention)"
                )
            }
            Self::DropChartPartition(day) => {
                write!(
                    formatter,
                    "chart partition {day} (older than the chart retention)"
                )
            }
            Self::DropStagingTable(name) => {
                write!(formatter, "staging table {name} (left by a crashed run)")
            }
        }
    }
}

/// What the database holds, as far as pruning is concerned.
#[derive(Debug, Clone, Default)]
pub struct PruneInputs {
    pub minute_partitions: Vec<NaiveDate>,
    pub daily_partitions: Vec<NaiveDate>,
    pub chart_partitions: Vec<NaiveDate>,
    /// For every minute partition older than the window: what a run would do with its day.
    pub old_day_actions: BTreeMap<NaiveDate, DayAction>,
    pub staging_tables: Vec<String>,
}

/// The first day whose minute partition must be kept whatever its state: the UTC week's
/// first day, or the day before it, where local weeks east and west of UTC can start.
pub fn first_minute_day_kept(now: DateTime<Utc>) -> NaiveDate {
    Window::ending_at(now, WINDOW_DAYS + 1).from.date_naive()
}

/// The first day whose daily partition is kept.
pub fn first_daily_day_kept(now: DateTime<Utc>, daily_retention_days: u32) -> NaiveDate {
    Window::ending_at(now, daily_retention_days.max(WINDOW_DAYS))
        .from
        .date_naive()
}

/// The first day whose chart partition is kept.
pub fn first_chart_day_kept(now: DateTime<Utc>, chart_retention_days: u32) -> NaiveDate {
    Window::ending_at(now, chart_retention_days.max(1))
        .from
        .date_naive()
}

/// Decides what to drop. `now` places the window; `clock_now` ages staging tables (their
/// names carry the wall-clock time they were created at).
pub fn plan_prune(
    now: DateTime<Utc>,
    daily_retention_days: u32,
    chart_retention_days: u32,
    inputs: &PruneInputs,
    clock_now: DateTime<Utc>,
) -> Vec<PruneStep> {
    let minute_cutoff = first_minute_day_kept(now);
    let daily_cutoff = first_daily_day_kept(now, daily_retention_days);
    let mut steps = Vec::new();
    for day in inputs
        .minute_partitions
        .iter()
        .filter(|day| **day < minute_cutoff)
    {
        steps.push(match inputs.old_day_actions.get(day) {
            Some(DayAction::UpToDate { .. } | DayAction::KeepRollupOfPrunedDay { .. }) => {
                PruneStep::DropMinutePartition(*day)
            }
            Some(DayAction::RollUp(RollUpReason::LateData)) => PruneStep::KeepMinutePartition {
                day: *day,
                changed_since_rollup: true,
            },
            Some(DayAction::RollUp(
                RollUpReason::NeverRolledUp
                | RollUpReason::WithoutSnapshot
                | RollUpReason::Backfill,
            ))
            | None => PruneStep::KeepMinutePartition {
                day: *day,
                changed_since_rollup: false,
            },
        });
    }
    steps.extend(
        inputs
            .daily_partitions
            .iter()
            .filter(|day| **day < daily_cutoff)
            .map(|day| PruneStep::DropDailyPartition(*day)),
    );
    let chart_cutoff = first_chart_day_kept(now, chart_retention_days);
    steps.extend(
        inputs
            .chart_partitions
            .iter()
            .filter(|day| **day < chart_cutoff)
            .map(|day| PruneStep::DropChartPartition(*day)),
    );
    steps.extend(
        inputs
            .staging_tables
            .iter()
            .filter(|name| is_stale_staging_table(name, clock_now))
            .map(|name| PruneStep::DropStagingTable(name.clone())),
    );
    steps
}

/// One prune step and how it went (`Ok(false)`: not performed, a dry run or a kept partition).
#[derive(Debug)]
pub struct PruneOutcome {
    pub step: PruneStep,
    pub result: Result<bool, RollupError>,
}

impl fmt::Display for PruneOutcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = &self.step;
        match &self.result {
            Ok(_) if !step.changes_something() => write!(formatter, "{step}"),
            Ok(true) => write!(formatter, "dropped {step}"),
            Ok(false) => write!(formatter, "would drop {step}"),
            Err(error) => write!(formatter, "failed to drop {step}: {error}"),
        }
    }
}

/// Lists what is there, plans, and (unless `dry_run`) drops; reports each step as it goes.
pub async fn prune(
    job: &RollupJob,
    daily_retention_days: u32,
    mut on_step: impl FnMut(&PruneOutcome),
) -> Result<Vec<PruneOutcome>, RollupError> {
    let (client, placement, now) = (&job.client, &job.placement, job.now);
    let minute_partitions = list_day_partitions(client, placement, PLAYS_MINUTE).await?;
    let old_days: Vec<NaiveDate> = minute_partitions
        .iter()
        .copied()
        .filter(|day| *day < first_minute_day_kept(now))
        .collect();
    let old_day_actions = plan_days(client, placement, &old_days, false)
        .await?
        .into_iter()
        .collect();
    let inputs = PruneInputs {
        minute_partitions,
        daily_partitions: list_day_partitions(client, placement, DAILY_TOP).await?,
        chart_partitions: list_day_partitions(client, placement, CHART_HOURS).await?,
        old_day_actions,
        staging_tables: list_staging_tables(client).await?,
    };
    let mut outcomes = Vec::new();
    for step in plan_prune(
        now,
        daily_retention_days,
        job.chart_retention_days,
        &inputs,
        Utc::now(),
    ) {
        let result = if job.dry_run || !step.changes_something() {
            Ok(false)
        } else {
            perform(client, placement, &step).await.map(|()| true)
        };
        let outcome = PruneOutcome { step, result };
        on_step(&outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

async fn perform(
    client: &clickhouse::Client,
    placement: &Placement,
    step: &PruneStep,
) -> Result<(), RollupError> {
    let (table, day) = match step {
        PruneStep::DropMinutePartition(day) => {
            // The day's chart rows go with its minute rows (they are the same plays).
            drop_partition(client, placement, CHART_MINUTE, *day).await?;
            (PLAYS_MINUTE, *day)
        }
        PruneStep::DropDailyPartition(day) => (DAILY_TOP, *day),
        PruneStep::DropChartPartition(day) => {
            // The day rows are sums of the hours: both go together.
            drop_partition(client, placement, CHART_DAYS, *day).await?;
            (CHART_HOURS, *day)
        }
        PruneStep::DropStagingTable(name) => return drop_staging_table(client, name).await,
        PruneStep::KeepMinutePartition { .. } => return Ok(()),
    };
    drop_partition(client, placement, table, day).await
}

async fn drop_partition(
    client: &clickhouse::Client,
    placement: &Placement,
    table: &str,
    day: NaiveDate,
) -> Result<(), RollupError> {
    placement
        .alter(
            client,
            table,
            &format!("DROP PARTITION ID '{}'", partition_id(day)),
            &[],
        )
        .await
        .map_err(clickhouse_error(format!(
            "dropping partition {day} of {table}"
        )))
}

/// The days of the active partitions of a table partitioned by day, oldest first (on a
/// cluster, of any shard).
pub async fn list_day_partitions(
    client: &clickhouse::Client,
    placement: &Placement,
    table: &str,
) -> Result<Vec<NaiveDate>, RollupError> {
    let partition_ids: Vec<String> = client
        .query(&format!(
            "SELECT DISTINCT partition_id {} AND active ORDER BY partition_id",
            placement.system_rows_of("parts", table)
        ))
        .fetch_all()
        .await
        .map_err(clickhouse_error(format!(
            "listing the partitions of {table}"
        )))?;
    let mut days = Vec::with_capacity(partition_ids.len());
    for partition in partition_ids {
        match NaiveDate::parse_from_str(&partition, "%Y%m%d") {
            Ok(day) => days.push(day),
            Err(_) => tracing::warn!(%table, %partition, "partition is not a day, left alone"),
        }
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    use crate::staging::staging_table_name;

    fn day(number: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, number).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn cutoffs_follow_the_window_and_the_retention() {
        let now = at("2026-11-24T00:20:00Z");
        // The day before the window too: local weeks start there.
        assert_eq!(first_minute_day_kept(now), day(17));
        assert_eq!(first_daily_day_kept(now, 7), day(18));
        assert_eq!(first_daily_day_kept(now, 10), day(15));
        // Never shorter than the window, whatever the caller passes.
        assert_eq!(first_daily_day_kept(now, 2), day(18));
        assert_eq!(first_chart_day_kept(now, 16), day(9));
    }

    #[test]
    fn drops_exactly_what_is_outside_and_safe_to_drop() {
        let now = at("2026-11-24T00:20:00Z");
        let rolled_up_at = at("2026-11-23T00:20:00Z");
        let late = DayAction::RollUp(RollUpReason::LateData);
        let fresh_staging = staging_table_name(day(23), now - Duration::hours(1), 1);
        let stale_staging = staging_table_name(day(20), now - Duration::hours(30), 2);
        let inputs = PruneInputs {
            minute_partitions: (13..=24).map(day).collect(),
            daily_partitions: (10..=23).map(day).collect(),
            chart_partitions: (1..=23).map(day).collect(),
            old_day_actions: BTreeMap::from([
                (
                    day(14),
                    DayAction::UpToDate {
                        rolled_up_at,
                        snapshot_id: 1,
                    },
                ),
                (day(15), DayAction::RollUp(RollUpReason::NeverRolledUp)),
                (day(16), late),
                (
                    day(13),
                    DayAction::UpToDate {
                        rolled_up_at,
                        snapshot_id: 1,
                    },
                ),
                (
                    day(17),
                    DayAction::UpToDate {
                        rolled_up_at,
                        snapshot_id: 1,
                    },
                ),
            ]),
            staging_tables: vec![fresh_staging, stale_staging.clone()],
        };
        let steps = plan_prune(now, 8, 16, &inputs, now);
        let mut expected = vec![
            // Rolled up before the charts: its minutes are not kept for them.
            PruneStep::DropMinutePartition(day(13)),
            PruneStep::DropMinutePartition(day(14)),
            PruneStep::KeepMinutePartition {
                day: day(15),
                changed_since_rollup: false,
            },
            PruneStep::KeepMinutePartition {
                day: day(16),
                changed_since_rollup: true,
            },
            // 11-17, rolled up, is the day before the window: local weeks start in it.
            PruneStep::DropDailyPartition(day(10)),
            PruneStep::DropDailyPartition(day(11)),
            PruneStep::DropDailyPartition(day(12)),
            PruneStep::DropDailyPartition(day(13)),
            PruneStep::DropDailyPartition(day(14)),
            PruneStep::DropDailyPartition(day(15)),
            PruneStep::DropDailyPartition(day(16)),
        ];
        // 16 days of charts, today included: 11-09 on.
        expected.extend((1..=8).map(|number| PruneStep::DropChartPartition(day(number))));
        expected.push(PruneStep::DropStagingTable(stale_staging));
        assert_eq!(steps, expected);
    }

    #[test]
    fn nothing_to_do_on_a_young_database() {
        let now = at("2026-11-24T00:20:00Z");
        let inputs = PruneInputs {
            minute_partitions: (18..=24).map(day).collect(),
            daily_partitions: (18..=23).map(day).collect(),
            ..PruneInputs::default()
        };
        assert!(plan_prune(now, 7, 16, &inputs, now).is_empty());
    }
}
