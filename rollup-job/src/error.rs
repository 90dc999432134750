//! What can go wrong in the rollup job, and the exit code each failure maps to.

use chrono::NaiveDate;
use topk_core::migrate::MigrateError;

/// Exit code of a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit code when something failed while working (ClickHouse, a day's rollup).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage (clap uses the same code for its own argument errors).
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    #[error("clickhouse, {action}: {source}")]
    ClickHouse {
        action: String,
        source: clickhouse::error::Error,
    },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("reading which flushes are committed: {0}")]
    Committed(String),
    #[error("clickhouse cluster: {0}")]
    Cluster(String),
    #[error(
        "the database schema is at version {applied:?} but this build needs version {expected}: \
         run `topk-rollup migrate` first"
    )]
    SchemaOutdated { applied: Option<u32>, expected: u32 },
    #[error("backfill range is empty: --from {from} is after --to {to}")]
    EmptyRange { from: NaiveDate, to: NaiveDate },
    #[error("cannot roll up {day}: only days before today ({today}, UTC) are complete")]
    DayNotComplete { day: NaiveDate, today: NaiveDate },
    #[error(
        "daily retention of {days} days is shorter than the {window}-day window the API reads"
    )]
    RetentionTooShort { days: u32, window: u32 },
    #[error(
        "the minute rows of {day} disappeared while it was rolled up (pruned concurrently?); \
         its previous top lists were kept"
    )]
    MinuteRowsVanished { day: NaiveDate },
    #[error("restore from the archive failed: {0} (safe to rerun)")]
    Restore(String),
    #[error(
        "aggregators committed to partitions {partitions:?} in the last two minutes: stop them \
         before restoring (or pass --force; their writes are then fenced and re-read)"
    )]
    AggregatorsActive { partitions: Vec<u32> },
    #[error("{failed} of {attempted} {what} failed (see the lines above); rerun to repair them")]
    StepsFailed {
        failed: usize,
        attempted: usize,
        what: &'static str,
    },
}

impl RollupError {
    /// The process exit code for this error: 2 for bad usage, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::EmptyRange { .. }
            | Self::DayNotComplete { .. }
            | Self::RetentionTooShort { .. } => EXIT_USAGE,
            Self::ClickHouse { .. }
            | Self::Committed(_)
            | Self::Cluster(_)
            | Self::Migrate(_)
            | Self::SchemaOutdated { .. }
            | Self::MinuteRowsVanished { .. }
            | Self::Restore(_)
            | Self::AggregatorsActive { .. }
            | Self::StepsFailed { .. } => EXIT_FAILURE,
        }
    }
}

/// Wraps a ClickHouse error with what the job was doing, for `map_err`.
pub(crate) fn clickhouse_error(
    action: impl Into<String>,
) -> impl FnOnce(clickhouse::error::Error) -> RollupError {
    let action = action.into();
    move |source| RollupError::ClickHouse { action, source }
}
