//! Staging tables of rollups before schema 4: a day was built in its own
//! `daily_top_staging_*` table and then swapped into `daily_top` whole. Rollups now write
//! snapshots in place (see `crate::rollup`); `prune` still drops staging tables that a crashed
//! run of an older version left behind.
//!
//! The name carries the creation time, so a table of a run that may still be working is never
//! dropped.

use chrono::{DateTime, Duration, NaiveDate, Utc};

use crate::error::{clickhouse_error, RollupError};

/// Every staging table's name starts with this.
pub const STAGING_TABLE_PREFIX: &str = "daily_top_staging_";

/// A staging table older than this belongs to a run that crashed: no rollup of one day takes
/// that long.
pub const STALE_STAGING_AFTER: Duration = Duration::hours(24);

/// `daily_top_staging_<day YYYYMMDD>_<created, epoch seconds>_<16 random hex digits>`.
pub fn staging_table_name(day: NaiveDate, created_at: DateTime<Utc>, random: u64) -> String {
    format!(
        "{STAGING_TABLE_PREFIX}{}_{}_{random:016x}",
        day.format("%Y%m%d"),
        created_at.timestamp()
    )
}

/// When a staging table was created, from its name; `None` for any other name.
pub fn staging_created_at(table_name: &str) -> Option<DateTime<Utc>> {
    let rest = table_name.strip_prefix(STAGING_TABLE_PREFIX)?;
    let mut parts = rest.split('_');
    let (_day, created, _random) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    DateTime::from_timestamp(created.parse().ok()?, 0)
}

/// Whether `table_name` is a staging table left behind by a crashed run.
pub fn is_stale_staging_table(table_name: &str, clock_now: DateTime<Utc>) -> bool {
    staging_created_at(table_name)
        .is_some_and(|created_at| clock_now - created_at > STALE_STAGING_AFTER)
}

pub async fn drop_staging_table(
    client: &clickhouse::Client,
    name: &str,
) -> Result<(), RollupError> {
    debug_assert!(name.starts_with(STAGING_TABLE_PREFIX));
    client
        .query(&format!("DROP TABLE IF EXISTS {name}"))
        .execute()
        .await
        .map_err(clickhouse_error(format!("dropping staging table {name}")))
}

/// The names of every staging table in the database.
pub async fn list_staging_tables(client: &clickhouse::Client) -> Result<Vec<String>, RollupError> {
    client
        .query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() \
             AND startsWith(name, ?) ORDER BY name",
        )
        .bind(STAGING_TABLE_PREFIX)
        .fetch_all()
        .await
        .map_err(clickhouse_error("listing staging tables"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_round_trips_its_creation_time() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let created_at = DateTime::from_timestamp(1_795_220_000, 0).unwrap();
        let name = staging_table_name(day, created_at, 0xabc);
        assert_eq!(
            name,
            "daily_top_staging_20261120_1795220000_0000000000000abc"
        );
        assert_eq!(staging_created_at(&name), Some(created_at));
        assert!(!is_stale_staging_table(
            &name,
            created_at + Duration::hours(23)
        ));
        assert!(is_stale_staging_table(
            &name,
            created_at + Duration::hours(25)
        ));
    }

    #[test]
    fn other_tables_are_never_stale_staging_tables() {
        let much_later = DateTime::from_timestamp(4_000_000_000, 0).unwrap();
        for name in [
            "daily_top",
            "daily_top_staging_",
            "daily_top_staging_20261120_abc_00",
            "daily_top_staging_20261120_1795220000",
            "daily_top_staging_20261120_1795220000_00_extra",
            "plays_minute",
        ] {
            assert!(!is_stale_staging_table(name, much_later), "{name}");
        }
    }
}
