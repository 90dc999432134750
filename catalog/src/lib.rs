//! The song catalog: what a `song_id` is.
//!
//! [`load`] reads a file of songs ([`source`]: NDJSON or CSV), checks each line ([`song`]),
//! and inserts into ClickHouse's `songs` table only the songs that are new or changed since
//! the catalog's current entries, so a load is idempotent: running it again (after a crash
//! half-way, or with the same file) inserts nothing twice. Lines that fail the checks are
//! reported by line number and reason, never loaded, and never stop the load.

pub mod config;
pub mod error;
pub mod load;
pub mod song;
pub mod source;

use config::{CatalogCommand, CatalogConfig};
use error::CatalogError;

/// Runs the command the options name.
pub async fn execute(config: &CatalogConfig) -> Result<(), CatalogError> {
    match &config.command {
        CatalogCommand::Load(options) => {
            let client = config.clickhouse.client();
            let report = load::load(&client, options, load::print_progress).await?;
            eprintln!("{report}");
            if let Some(limit) = options.max_rejected {
                if report.rejected > limit {
                    return Err(CatalogError::TooManyRejected {
                        rejected: report.rejected,
                        limit,
                    });
                }
            }
            Ok(())
        }
    }
}
