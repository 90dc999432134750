//! The rollup job's options: file (`--config`), then env, then flags.

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use topk_archive::S3Options;
use topk_core::db::ClickHouseOptions;
use topk_core::window::WINDOW_DAYS;

use crate::rollup::DEFAULT_SLICES;

const EXIT_CODES_HELP: &str = "\
Without a subcommand, `run` is performed.

Exit codes:
  0  success (including days that were already up to date)
  1  failure: ClickHouse unreachable, outdated schema, or at least one day failed
     (the other days are still processed; rerunning repairs everything)
  2  bad usage: unknown option, invalid date or range, retention below the window";

/// Nightly rollup of per-minute play counts into each user's daily top 50.
///
/// Options that apply to every subcommand (`--dry-run`, `--daily-retention-days`) may be
/// given before or after it; the ClickHouse options go before the subcommand (or in env
/// vars / the config file).
#[derive(Debug, Parser, Serialize, Deserialize)]
#[command(name = "topk-rollup", version, about, after_help = EXIT_CODES_HELP)]
pub struct RollupConfig {
    /// TOML file with any of the options below (flat keys, e.g. `clickhouse_url = "..."`);
    /// env vars and flags override it.
    #[arg(long, env = "TOPK_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub clickhouse: ClickHouseOptions,
    /// Where claims and commits are coordinated (for `restore`: the aggregators' setting).
    #[command(flatten)]
    #[serde(flatten)]
    pub keeper: topk_core::keeper::KeeperOptions,
    /// Where the raw-event archive is (for `restore`).
    #[command(flatten)]
    #[serde(flatten)]
    pub s3: S3Options,
    /// Print what would be rolled up or dropped, and change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Days of daily top lists `prune` keeps (today included); at least the 7-day window,
    /// which the API reads. Raise it to keep history for analysts.
    #[arg(
        long,
        env = "TOPK_DAILY_RETENTION_DAYS",
        default_value_t = WINDOW_DAYS,
        value_parser = clap::value_parser!(u32).range(i64::from(WINDOW_DAYS)..),
        global = true
    )]
    pub daily_retention_days: u32,
    /// The charts' per-user cap: plays of one song one user counts per UTC hour and region
    /// (see `sql/README.md`). Changing it makes `run` roll up the window's days again; the
    /// API must use the same value.
    #[arg(
        long,
        env = "TOPK_CHART_USER_HOUR_CAP",
        default_value_t = topk_core::chart::DEFAULT_USER_HOUR_CAP,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    pub chart_user_hour_cap: u64,
    /// Days of hourly chart rows `prune` keeps (today included); at least 16, which a `7d`
    /// chart as of a day ago and its previous period read.
    #[arg(
        long,
        env = "TOPK_CHART_RETENTION_DAYS",
        default_value_t = topk_core::chart::DEFAULT_CHART_RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(i64::from(topk_core::chart::DEFAULT_CHART_RETENTION_DAYS)..),
        global = true
    )]
    pub chart_retention_days: u32,
    /// Split each day's users into this many slices, rolled up by concurrent queries: more
    /// uses more of ClickHouse's cores (its per-user stage is single-threaded per query).
    #[arg(
        long,
        env = "TOPK_ROLLUP_SLICES",
        default_value_t = DEFAULT_SLICES,
        value_parser = clap::value_parser!(u32).range(1..=64),
        global = true
    )]
    pub rollup_slices: u32,
    /// Pretend the current time is this RFC 3339 moment (tests and replays).
    #[arg(long, hide = true, global = true)]
    pub now: Option<DateTime<Utc>>,
    #[command(subcommand)]
    pub command: Option<RollupCommand>,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand, Serialize, Deserialize)]
pub enum RollupCommand {
    /// Roll up every complete UTC day of the 7-day window that is not rolled up yet or got
    /// minute rows after its last rollup (the default).
    Run {
        /// Afterwards, prune as the `prune` subcommand does.
        #[arg(long)]
        prune: bool,
    },
    /// Drop minute partitions older than the window (only once rolled up), daily partitions
    /// older than `--daily-retention-days`, and staging tables left by crashed runs.
    Prune,
    /// Roll up every day from `--from` to `--to` (inclusive, UTC, YYYY-MM-DD), whether or not
    /// it was rolled up before.
    Backfill {
        /// First day to roll up.
        #[arg(long)]
        from: NaiveDate,
        /// Last day to roll up; must be before today (UTC).
        #[arg(long)]
        to: NaiveDate,
    },
    /// Rebuild the minute table for the days from `--from` to `--to` (UTC) from the S3 archive
    /// of raw events, then roll up those of them that are complete. Safe to run twice. Stop
    /// the aggregators first: the restore claims every partition (a running aggregator is
    /// fenced and re-reads from where the restore left off), and refuses to start while an
    /// aggregator committed in the last two minutes unless `--force`.
    Restore {
        /// First day to restore.
        #[arg(long)]
        from: NaiveDate,
        /// Last day to restore.
        #[arg(long)]
        to: NaiveDate,
        /// Topic whose archive is replayed.
        #[arg(long, env = "TOPK_PLAYS_TOPIC", default_value = "plays")]
        plays_topic: String,
        /// The aggregator's duplicate horizon (ms of event time), so the replay decides alike.
        #[arg(long, env = "TOPK_DEDUP_HORIZON_MS", default_value_t = 600_000)]
        dedup_horizon_ms: i64,
        /// The aggregators' shortest play that counts for the charts, so the replay decides
        /// alike.
        #[arg(long, env = "TOPK_CHART_MIN_PLAYED_MS", default_value_t = topk_core::event::DEFAULT_CHART_MIN_PLAYED_MS)]
        chart_min_played_ms: u64,
        /// The aggregators' consumer group, for the restore's claims when the database has
        /// none yet (otherwise the group found there is used).
        #[arg(long, env = "TOPK_KAFKA_GROUP_ID", default_value = "topk-aggregator")]
        kafka_group_id: String,
        /// Restore even though an aggregator committed in the last two minutes.
        #[arg(long)]
        force: bool,
    },
    /// Create the database and apply every schema migration not yet applied (safe to repeat).
    Migrate,
}

impl RollupConfig {
    /// The subcommand to perform: `run` when none was given.
    pub fn command(&self) -> RollupCommand {
        self.command
            .clone()
            .unwrap_or(RollupCommand::Run { prune: false })
    }

    /// The moment the job treats as now: `--now`, else the clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.now.unwrap_or_else(Utc::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use topk_core::config::{load_from, ConfigError};

    fn parse(args: &[&str]) -> Result<RollupConfig, ConfigError> {
        load_from(std::iter::once("topk-rollup").chain(args.iter().copied()))
    }

    fn usage_error_kind(args: &[&str]) -> ErrorKind {
        match parse(args) {
            Err(ConfigError::Cli(error)) => error.kind(),
            other => panic!("expected a usage error for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn no_subcommand_means_run() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.command(), RollupCommand::Run { prune: false });
        assert!(!config.dry_run);
        assert_eq!(config.daily_retention_days, WINDOW_DAYS);
        assert_eq!(
            config.chart_user_hour_cap,
            topk_core::chart::DEFAULT_USER_HOUR_CAP
        );
        assert_eq!(config.chart_retention_days, 16);
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let before = parse(&["--dry-run", "--daily-retention-days", "30", "prune"]).unwrap();
        let after = parse(&["prune", "--dry-run", "--daily-retention-days", "30"]).unwrap();
        for config in [before, after] {
            assert_eq!(config.command(), RollupCommand::Prune);
            assert!(config.dry_run);
            assert_eq!(config.daily_retention_days, 30);
        }
        let run = parse(&["run", "--prune", "--now", "2026-11-24T00:20:00Z"]).unwrap();
        assert_eq!(run.command(), RollupCommand::Run { prune: true });
        assert_eq!(run.now().to_rfc3339(), "2026-11-24T00:20:00+00:00");
    }

    #[test]
    fn backfill_takes_a_date_range() {
        let config = parse(&["backfill", "--from", "2026-11-01", "--to", "2026-11-03"]).unwrap();
        assert_eq!(
            config.command(),
            RollupCommand::Backfill {
                from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
                to: NaiveDate::from_ymd_opt(2026, 11, 3).unwrap(),
            }
        );
    }

    #[test]
    fn bad_usage_is_rejected() {
        assert_eq!(
            usage_error_kind(&["--daily-retention-days", "3"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error_kind(&["backfill", "--from", "2026-13-01", "--to", "2026-11-03"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error_kind(&["backfill", "--from", "2026-11-01"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(usage_error_kind(&["rollup"]), ErrorKind::InvalidSubcommand);
        assert_eq!(
            usage_error_kind(&["--chart-user-hour-cap", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            usage_error_kind(&["--chart-retention-days", "15"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn retention_comes_from_the_config_file() {
        let path = std::env::temp_dir().join(format!(
            "topk-rollup-config-test-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, "daily_retention_days = 90\ndry_run = true\n").unwrap();
        let config = parse(&["--config", path.to_str().unwrap(), "prune"]);
        std::fs::remove_file(&path).unwrap();
        let config = config.unwrap();
        assert_eq!(config.daily_retention_days, 90);
        assert!(config.dry_run);
    }
}
