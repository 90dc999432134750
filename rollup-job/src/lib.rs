//! `topk-rollup`: the batch job that turns per-minute play counts into each user's daily top
//! 50 and the charts' hourly rows, prunes what the window no longer needs, and backfills ranges of days.
//!
//! - [`config`]: the command line (`run` by default, `prune`, `backfill`, `restore`, `migrate`).
//! - [`day_state`]: each day's minute rows and latest rollup, and what to do about them.
//! - [`rollup`]: rolling up one day's top lists as a snapshot.
//! - [`charts`]: the charts' hourly rows, snapshots of each day's complete hours (today's too).
//! - [`staging`]: the per-rollup staging tables.
//! - [`prune`]: dropping old minute and daily partitions and stale staging tables.
//! - [`restore`]: rebuilding days of the minute table from the S3 archive, then rolling them up.
//! - [`job`]: the subcommands and their one-line-per-day output.
//! - [`error`]: failures and their exit codes.

pub mod charts;
pub mod config;
pub mod day_state;
pub mod error;
pub mod job;
pub mod prune;
pub mod restore;
pub mod rollup;
pub mod staging;

pub use error::RollupError;
pub use job::{execute, DayOutcome, DayResult, RollupJob};
pub use rollup::roll_up_day;
