//! What can go wrong in `topk-catalog`, and the exit code each failure maps to.

use std::path::PathBuf;

/// Exit code when the load failed (ClickHouse, the file) or rejected too many lines.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("clickhouse, {action}: {source}")]
    ClickHouse {
        action: &'static str,
        source: clickhouse::error::Error,
    },
    #[error(
        "the database schema is at version {applied:?} but the song catalog needs version \
         {needed}: run `topk-rollup migrate` first"
    )]
    SchemaOutdated { applied: Option<u32>, needed: u32 },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("writing the rejected lines to {path}: {source}")]
    WriteRejects {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{rejected} lines were rejected, more than --max-rejected {limit} (the valid ones were loaded)")]
    TooManyRejected { rejected: u64, limit: u64 },
}

impl CatalogError {
    /// The process exit code (clap exits with 2 for bad usage before any of these).
    pub fn exit_code(&self) -> u8 {
        EXIT_FAILURE
    }

    pub(crate) fn clickhouse(
        action: &'static str,
    ) -> impl FnOnce(clickhouse::error::Error) -> Self {
        move |source| Self::ClickHouse { action, source }
    }
}
