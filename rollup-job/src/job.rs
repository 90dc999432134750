//! The subcommands: which days to roll up (`run`, `backfill`), in what order, and the one
//! summary line per day the operator reads.

use std::fmt;
use topk_core::cluster::Placement;

use chrono::{DateTime, NaiveDate, Utc};
use topk_core::schema::{RollupProgressRow, DAILY_TOP};
use topk_core::window::{Window, WINDOW_DAYS};

use crate::charts::{roll_up_charts, ChartOutcome};
use crate::config::{RollupCommand, RollupConfig};
use crate::day_state::{plan_days, DayAction, RollUpReason};
use crate::error::{clickhouse_error, RollupError};
use crate::prune::{prune, PruneOutcome};
use crate::restore::{restore, RestoreRequest};
use crate::rollup::{delete_superseded_snapshots, roll_up_day, DEFAULT_SLICES};
use topk_core::coordination::Coordinator;

/// What happened to one day.
#[derive(Debug)]
pub enum DayResult {
    RolledUp {
        reason: RollUpReason,
        progress: RollupProgressRow,
    },
    /// `--dry-run`: the rollup that would have happened.
    WouldRollUp {
        reason: RollUpReason,
    },
    UpToDate {
        rolled_up_at: DateTime<Utc>,
    },
    KeptRollupOfPrunedDay {
        rolled_up_at: DateTime<Utc>,
    },
    Failed(RollupError),
}

#[derive(Debug)]
pub struct DayOutcome {
    pub day: NaiveDate,
    pub result: DayResult,
    /// 1-based position of the day in this invocation, and how many days it covers.
    pub position: usize,
    pub days: usize,
}

impl DayOutcome {
    pub fn failed(&self) -> bool {
        matches!(self.result, DayResult::Failed(_))
    }
}

impl fmt::Display for DayOutcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "[{}/{}] {} ", self.position, self.days, self.day)?;
        match &self.result {
            DayResult::RolledUp { reason, progress } => write!(
                formatter,
                "rolled up ({reason}): minute_rows_read={} plays_read={} users={} \
                 rows_written={} seconds={:.3}",
                progress.minute_rows_read,
                progress.plays_read,
                progress.users,
                progress.rows_written,
                progress.seconds
            ),
            DayResult::WouldRollUp { reason } => {
                write!(formatter, "would roll up ({reason})")
            }
            DayResult::UpToDate { rolled_up_at } => {
                write!(formatter, "up to date (rolled up at {rolled_up_at})")
            }
            DayResult::KeptRollupOfPrunedDay { rolled_up_at } => write!(
                formatter,
                "kept the rollup of {rolled_up_at}: its minute rows are pruned, nothing to \
                 roll up from"
            ),
            DayResult::Failed(error) => write!(formatter, "failed: {error}"),
        }
    }
}

/// One invocation's settings: the database, the moment it treats as now, and how to work.
#[derive(Clone)]
pub struct RollupJob {
    pub client: clickhouse::Client,
    /// Where partitions are listed and dropped and old snapshots deleted (every shard on a
    /// cluster).
    pub placement: Placement,
    /// Places the window: `run` covers the complete days of the 7 days ending here.
    pub now: DateTime<Utc>,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Concurrent `INSERT .. SELECT`s per day (see [`roll_up_day`]).
    pub slices: u32,
    /// The charts' per-user cap (`topk_core::chart`).
    pub chart_user_hour_cap: u64,
    /// Days of `chart_hours` that `prune` keeps.
    pub chart_retention_days: u32,
}

impl RollupJob {
    pub fn new(client: clickhouse::Client, now: DateTime<Utc>) -> Self {
        Self {
            client,
            placement: Placement::SingleNode,
            now,
            dry_run: false,
            slices: DEFAULT_SLICES,
            chart_user_hour_cap: topk_core::chart::DEFAULT_USER_HOUR_CAP,
            chart_retention_days: topk_core::chart::DEFAULT_CHART_RETENTION_DAYS,
        }
    }

    /// `run`: every complete day of the window that needs it (see [`crate::day_state`]),
    /// oldest first, reporting each day as it is done.
    pub async fn run(
        &self,
        on_day: impl FnMut(&DayOutcome),
    ) -> Result<Vec<DayOutcome>, RollupError> {
        let days = Window::last_week(self.now).previous_days();
        self.roll_up_days(&days, false, on_day).await
    }

    /// `backfill`: every day from `from` to `to`, whether rolled up before or not.
    pub async fn backfill(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        on_day: impl FnMut(&DayOutcome),
    ) -> Result<Vec<DayOutcome>, RollupError> {
        let days = backfill_days(from, to, self.now)?;
        self.roll_up_days(&days, true, on_day).await
    }

    /// The charts' hourly rows (see [`crate::charts`]) of every day of the window, today's
    /// complete hours included, that need them, reporting each day as it is done.
    pub async fn charts(
        &self,
        on_day: impl FnMut(&ChartOutcome),
    ) -> Result<Vec<ChartOutcome>, RollupError> {
        let window = Window::last_week(self.now);
        let mut days = window.previous_days();
        days.push(window.today());
        roll_up_charts(self, &days, false, on_day).await
    }

    /// The charts of every day from `from` to `to`, whether rolled up before or not.
    pub async fn backfill_charts(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        on_day: impl FnMut(&ChartOutcome),
    ) -> Result<Vec<ChartOutcome>, RollupError> {
        let days = backfill_days(from, to, self.now)?;
        roll_up_charts(self, &days, true, on_day).await
    }

    /// `prune` (see [`crate::prune`]).
    pub async fn prune(
        &self,
        daily_retention_days: u32,
        on_step: impl FnMut(&PruneOutcome),
    ) -> Result<Vec<PruneOutcome>, RollupError> {
        prune(self, daily_retention_days, on_step).await
    }

    async fn roll_up_days(
        &self,
        days: &[NaiveDate],
        backfill: bool,
        mut on_day: impl FnMut(&DayOutcome),
    ) -> Result<Vec<DayOutcome>, RollupError> {
        let plan = plan_days(&self.client, &self.placement, days, backfill).await?;
        let mut outcomes = Vec::with_capacity(plan.len());
        for (index, (day, action)) in plan.into_iter().enumerate() {
            let result = match action {
                DayAction::UpToDate {
                    rolled_up_at,
                    snapshot_id,
                } => {
                    if !self.dry_run {
                        self.delete_superseded(DAILY_TOP, day, snapshot_id).await;
                    }
                    DayResult::UpToDate { rolled_up_at }
                }
                DayAction::KeepRollupOfPrunedDay { rolled_up_at } => {
                    DayResult::KeptRollupOfPrunedDay { rolled_up_at }
                }
                DayAction::RollUp(reason) if self.dry_run => DayResult::WouldRollUp { reason },
                DayAction::RollUp(reason) => {
                    match roll_up_day(&self.client, &self.placement, day, self.slices).await {
                        Ok(progress) => DayResult::RolledUp { reason, progress },
                        Err(error) => DayResult::Failed(error),
                    }
                }
            };
            let outcome = DayOutcome {
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
}

impl RollupJob {
    /// Deletes the day's superseded snapshots (cleanup: readers only read the current one),
    /// logging a failure instead of failing the run.
    pub(crate) async fn delete_superseded(&self, table: &str, day: NaiveDate, current: u64) {
        let deleted = delete_superseded_snapshots(
            &self.client,
            &self.placement,
            table,
            day,
            current,
            Utc::now(),
        )
        .await;
        match deleted {
            Ok(0) => {}
            Ok(rows) => tracing::info!(%day, %table, rows, "superseded snapshots deleted"),
            Err(error) => {
                tracing::warn!(%day, %table, %error, "deleting superseded snapshots failed");
            }
        }
    }
}

/// The days of a backfill, checked: a non-empty range of complete days.
pub fn backfill_days(
    from: NaiveDate,
    to: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Vec<NaiveDate>, RollupError> {
    if from > to {
        return Err(RollupError::EmptyRange { from, to });
    }
    let today = now.date_naive();
    if to >= today {
        return Err(RollupError::DayNotComplete { day: to, today });
    }
    Ok(from.iter_days().take_while(|day| *day <= to).collect())
}

/// Performs the configured subcommand, printing one line per day (or prune step) to stdout.
pub async fn execute(config: &RollupConfig) -> Result<(), RollupError> {
    let command = config.command();
    if command == RollupCommand::Migrate {
        let report = topk_core::migrate::migrate(&config.clickhouse).await?;
        println!(
            "schema at version {}: applied {:?}, already applied {:?}",
            topk_core::migrate::latest_version(),
            report.applied,
            report.already_applied
        );
        return Ok(());
    }
    if config.daily_retention_days < WINDOW_DAYS {
        // Reachable through the config file, which clap's range check does not see.
        return Err(RollupError::RetentionTooShort {
            days: config.daily_retention_days,
            window: WINDOW_DAYS,
        });
    }
    let now = config.now();
    if let RollupCommand::Backfill { from, to } = command {
        backfill_days(from, to, now)?;
    }
    let job = RollupJob {
        client: config.clickhouse.client(),
        placement: config.clickhouse.placement(),
        now,
        dry_run: config.dry_run,
        slices: config.rollup_slices,
        chart_user_hour_cap: config.chart_user_hour_cap,
        chart_retention_days: config.chart_retention_days,
    };
    check_schema(&job.client).await?;
    if let topk_core::cluster::Placement::Cluster(layout) = &job.placement {
        layout.warn_if_alters_are_unsafe(&job.client).await;
    }
    let print_day = |outcome: &DayOutcome| println!("{outcome}");
    let print_chart = |outcome: &ChartOutcome| println!("{outcome}");
    let mut chart_outcomes = Vec::new();
    let (day_outcomes, prune_after) = match command {
        RollupCommand::Run { prune } => {
            let days = job.run(print_day).await?;
            chart_outcomes = job.charts(print_chart).await?;
            (days, prune)
        }
        RollupCommand::Backfill { from, to } => {
            let days = job.backfill(from, to, print_day).await?;
            chart_outcomes = job.backfill_charts(from, to, print_chart).await?;
            (days, false)
        }
        RollupCommand::Restore {
            from,
            to,
            plays_topic,
            dedup_horizon_ms,
            chart_min_played_ms,
            kafka_group_id,
            force,
        } => {
            let request = RestoreRequest {
                topic: plays_topic,
                from,
                to,
                dedup_horizon_ms,
                chart_min_played_ms,
                consumer_group: kafka_group_id,
                force,
            };
            let reader = topk_archive::ArchiveReader::from_options(&config.s3).await;
            println!(
                "restore: archive at s3://{}/{}",
                config.s3.s3_bucket, config.s3.s3_prefix
            );
            let coordinator =
                Coordinator::new(&config.keeper, &config.clickhouse.clickhouse_database)
                    .map_err(|error| RollupError::Restore(error.to_string()))?;
            let outcomes = restore(
                &job,
                &config.clickhouse,
                &coordinator,
                &reader,
                &request,
                print_day,
            )
            .await?;
            (outcomes, false)
        }
        RollupCommand::Prune | RollupCommand::Migrate => (Vec::new(), true),
    };
    let failed_days = day_outcomes
        .iter()
        .filter(|outcome| outcome.failed())
        .count()
        + chart_outcomes
            .iter()
            .filter(|outcome| outcome.failed())
            .count();
    if prune_after {
        let outcomes = job
            .prune(config.daily_retention_days, |outcome| println!("{outcome}"))
            .await?;
        let failed_steps = outcomes
            .iter()
            .filter(|outcome| outcome.result.is_err())
            .count();
        if failed_steps > 0 {
            return Err(RollupError::StepsFailed {
                failed: failed_steps,
                attempted: outcomes.len(),
                what: "prune steps",
            });
        }
        if outcomes.is_empty() {
            println!("nothing to prune");
        }
    }
    if failed_days > 0 {
        return Err(RollupError::StepsFailed {
            failed: failed_days,
            attempted: day_outcomes.len() + chart_outcomes.len(),
            what: "days (top lists and charts)",
        });
    }
    Ok(())
}

/// Fails clearly when the tables this build writes are missing or older than it expects.
async fn check_schema(client: &clickhouse::Client) -> Result<(), RollupError> {
    let applied = topk_core::migrate::applied_version(client)
        .await
        .map_err(clickhouse_error("reading the schema version"))?;
    let expected = topk_core::migrate::latest_version();
    if applied.is_none_or(|version| version < expected) {
        return Err(RollupError::SchemaOutdated { applied, expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(number: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, number).unwrap()
    }

    #[test]
    fn backfill_covers_complete_days_only() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T00:20:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            backfill_days(day(20), day(23), now).unwrap(),
            vec![day(20), day(21), day(22), day(23)]
        );
        assert_eq!(backfill_days(day(23), day(23), now).unwrap(), vec![day(23)]);
        let empty = backfill_days(day(21), day(20), now).unwrap_err();
        assert!(matches!(empty, RollupError::EmptyRange { .. }));
        assert_eq!(empty.exit_code(), crate::error::EXIT_USAGE);
        let today = backfill_days(day(20), day(24), now).unwrap_err();
        assert!(matches!(today, RollupError::DayNotComplete { .. }));
        assert_eq!(today.exit_code(), crate::error::EXIT_USAGE);
    }

    #[test]
    fn summary_line_has_every_figure() {
        let progress = RollupProgressRow {
            day: day(20),
            rolled_up_at: DateTime::from_timestamp(1_795_220_000, 0).unwrap(),
            minute_rows_read: 1200,
            plays_read: 3400,
            users: 56,
            rows_written: 780,
            seconds: 0.25,
            snapshot_id: 1,
            snapshot_partitions: Vec::new(),
            snapshot_newest_claim_ids: Vec::new(),
            snapshot_newest_max_seqs: Vec::new(),
        };
        let outcome = DayOutcome {
            day: day(20),
            result: DayResult::RolledUp {
                reason: RollUpReason::NeverRolledUp,
                progress,
            },
            position: 2,
            days: 6,
        };
        assert_eq!(
            outcome.to_string(),
            "[2/6] 2026-11-20 rolled up (new day): minute_rows_read=1200 plays_read=3400 \
             users=56 rows_written=780 seconds=0.250"
        );
    }
}
