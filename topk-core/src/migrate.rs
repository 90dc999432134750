//! Versioned schema migrations: the files in `sql/`, applied in order and recorded in
//! `schema_migrations`.
//!
//! Every statement is written to be re-runnable (`IF NOT EXISTS`, or an `INSERT .. SELECT`
//! guarded by a condition), because ClickHouse has no DDL transactions: a crash between
//! applying a file and recording it is repaired by applying it again. ClickHouse 18.16 has no
//! `ADD COLUMN IF NOT EXISTS`, so the runner skips an `ALTER TABLE t ADD COLUMN c ..` (one
//! column per statement) whose column exists. An applied file whose text later changed is an
//! error, never silently skipped.
//!
//! **Rebuilt tables.** Some settings (`index_granularity`) cannot be altered on 18.16. A
//! migration changes them by creating the table anew as `<table>_rebuilt` (`CREATE TABLE IF
//! NOT EXISTS <table>_rebuilt ..`, same columns in the same order); after the file's
//! statements the runner copies the rows into it, checks the counts, swaps the names and drops
//! the old table ([`rebuild`]), each step re-runnable after a crash. Writers must be stopped
//! meanwhile. On a cluster this is not laid out yet: the statement is skipped and the tables
//! keep their settings.

use std::collections::BTreeMap;

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterLayout, ClusterStatement};
use crate::db::ClickHouseOptions;
use crate::schema::SCHEMA_MIGRATIONS;

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in version order. Add new files at the end; never edit an applied one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_minute_plays.sql",
        sql: include_str!("../../sql/0001_minute_plays.sql"),
    },
    Migration {
        version: 2,
        name: "0002_daily_top.sql",
        sql: include_str!("../../sql/0002_daily_top.sql"),
    },
    Migration {
        version: 3,
        name: "0003_committed_flushes.sql",
        sql: include_str!("../../sql/0003_committed_flushes.sql"),
    },
    Migration {
        version: 4,
        name: "0004_rollup_snapshots.sql",
        sql: include_str!("../../sql/0004_rollup_snapshots.sql"),
    },
    Migration {
        version: 5,
        name: "0005_committed_view_order.sql",
        sql: include_str!("../../sql/0005_committed_view_order.sql"),
    },
    Migration {
        version: 6,
        name: "0006_read_granularity.sql",
        sql: include_str!("../../sql/0006_read_granularity.sql"),
    },
    Migration {
        version: 7,
        name: "0007_flush_commit_record_time.sql",
        sql: include_str!("../../sql/0007_flush_commit_record_time.sql"),
    },
    Migration {
        version: 8,
        name: "0008_song_catalog.sql",
        sql: include_str!("../../sql/0008_song_catalog.sql"),
    },
    Migration {
        version: 9,
        name: "0009_chart_plays.sql",
        sql: include_str!("../../sql/0009_chart_plays.sql"),
    },
    Migration {
        version: 10,
        name: "0010_charts.sql",
        sql: include_str!("../../sql/0010_charts.sql"),
    },
    Migration {
        version: 11,
        name: "0011_chart_days.sql",
        sql: include_str!("../../sql/0011_chart_days.sql"),
    },
];

/// The suffix of a table a migration creates to replace the table of the name without it.
pub const REBUILT_SUFFIX: &str = "_rebuilt";

/// The schema version this build expects (the API's `/readyz` checks it).
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |migration| migration.version)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("migration {version} ({name}) failed at statement {statement_index}: {source}")]
    Statement {
        version: u32,
        name: &'static str,
        statement_index: usize,
        source: clickhouse::error::Error,
    },
    #[error("{0}")]
    Cluster(String),
    #[error("rebuilding {table}: {problem}")]
    Rebuild { table: String, problem: String },
    #[error(
        "migration {version} ({name}) was applied with checksum {applied} but the file now has \
         {current}: applied migrations must not be edited, add a new one"
    )]
    ChecksumMismatch {
        version: u32,
        name: &'static str,
        applied: String,
        current: String,
    },
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct AppliedMigration {
    version: u32,
    name: String,
    checksum: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    applied_at: chrono::DateTime<chrono::Utc>,
}

/// What a run of [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<u32>,
    pub already_applied: Vec<u32>,
}

/// Creates the database if needed and applies every migration not yet recorded.
pub async fn migrate(options: &ClickHouseOptions) -> Result<MigrationReport, MigrateError> {
    // The database name cannot be a bind parameter in DDL; it comes from the operator's config,
    // never from a request, and is quoted as an identifier.
    let layout = options.cluster_layout();
    let databases = match &layout {
        Some(layout) => layout.create_databases(),
        None => vec![format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            quote_identifier(&options.clickhouse_database)
        )],
    };
    for statement in databases {
        options.server_client().query(&statement).execute().await?;
    }
    let client = options.client();
    let schema_table = format!(
        "CREATE TABLE IF NOT EXISTS {SCHEMA_MIGRATIONS} (version UInt32, name String, \
         checksum String, applied_at DateTime('UTC')) ENGINE = MergeTree ORDER BY version"
    );
    for statement in laid_out(layout.as_ref(), &options.clickhouse_database, &schema_table)? {
        client.query(&statement.sql).execute().await?;
    }
    let applied = applied_checksums(&client).await?;
    let mut report = MigrationReport {
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    for migration in MIGRATIONS {
        let current = checksum(migration.sql);
        if let Some(applied_checksum) = applied.get(&migration.version) {
            if *applied_checksum != current {
                return Err(MigrateError::ChecksumMismatch {
                    version: migration.version,
                    name: migration.name,
                    applied: applied_checksum.clone(),
                    current,
                });
            }
            report.already_applied.push(migration.version);
            continue;
        }
        for (statement_index, statement) in statements(migration.sql).iter().enumerate() {
            for rendered in laid_out(layout.as_ref(), &options.clickhouse_database, statement)? {
                if let Some((database, table, column)) = &rendered.adds_column {
                    if column_exists(&client, database, table, column).await? {
                        continue;
                    }
                }
                let executed = match (&rendered.sharded_alter, &layout) {
                    (Some(alter), Some(layout)) => {
                        layout
                            .alter_local_tables(&client, &alter.table, &alter.command, &[])
                            .await
                    }
                    _ => client.query(&rendered.sql).execute().await,
                };
                executed.map_err(|source| MigrateError::Statement {
                    version: migration.version,
                    name: migration.name,
                    statement_index,
                    source,
                })?;
            }
        }
        if layout.is_none() {
            for table in statements(migration.sql)
                .iter()
                .filter_map(|statement| rebuilt_table(statement))
            {
                rebuild(&client, &options.clickhouse_database, &table).await?;
            }
        }
        let mut insert = client.insert::<AppliedMigration>(SCHEMA_MIGRATIONS).await?;
        insert
            .write(&AppliedMigration {
                version: migration.version,
                name: migration.name.to_owned(),
                checksum: current,
                applied_at: chrono::Utc::now(),
            })
            .await?;
        insert.end().await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
        report.applied.push(migration.version);
    }
    Ok(report)
}

/// The highest applied version, or `None` when the schema table is missing or empty.
pub async fn applied_version(
    client: &clickhouse::Client,
) -> Result<Option<u32>, clickhouse::error::Error> {
    Ok(applied_checksums(client).await?.keys().next_back().copied())
}

async fn applied_checksums(
    client: &clickhouse::Client,
) -> Result<BTreeMap<u32, String>, clickhouse::error::Error> {
    // `exists` keeps this usable on a database that was never migrated.
    let table_exists: u8 = client
        .query("EXISTS TABLE schema_migrations")
        .fetch_one()
        .await?;
    if table_exists == 0 {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<AppliedMigration> = client
        .query("SELECT ?fields FROM schema_migrations ORDER BY version, applied_at")
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.version, row.checksum))
        .collect())
}

/// Splits a migration file into statements: `;` at the end of a line ends one; `--` lines
/// are comments. (No statement of ours has a `;` inside a string.)
pub fn statements(sql: &str) -> Vec<String> {
    let mut result = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_owned();
            result.push(statement);
            current.clear();
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        result.push(rest.to_owned());
    }
    result
}

/// `table` of a `CREATE TABLE IF NOT EXISTS <table>_rebuilt ..` statement (see the module
/// docs).
pub fn rebuilt_table(statement: &str) -> Option<String> {
    let words: Vec<&str> = statement.split_whitespace().take(6).collect();
    let keywords: Vec<String> = words
        .iter()
        .take(5)
        .map(|word| word.to_ascii_uppercase())
        .collect();
    if keywords != ["CREATE", "TABLE", "IF", "NOT", "EXISTS"] {
        return None;
    }
    let name = words.get(5)?.trim_matches('`');
    let table = name.strip_suffix(REBUILT_SUFFIX)?;
    Some(table.to_owned()).filter(|table| !table.is_empty())
}

/// Replaces `table` by `<table>_rebuilt` (created empty by the migration): copies the rows,
/// checks that both hold as many, renames `table` to `<table>_before_rebuild` and the rebuilt
/// one to `table`, drops the old one. Re-run after a crash at any step it finishes the job:
/// the old table is renamed only once the copy is complete, so `table` missing with the old
/// one present means the copy is whole (finish the swap), and both present means only the
/// drop is left; otherwise the copy starts over (a copy cut short leaves some rows).
async fn rebuild(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
) -> Result<(), MigrateError> {
    let rebuilt = format!("{table}{REBUILT_SUFFIX}");
    let before = format!("{table}_before_rebuild");
    let failed = |problem: String| MigrateError::Rebuild {
        table: table.to_owned(),
        problem,
    };
    let run = |sql: String| async move { client.query(&sql).execute().await };
    let (table_q, rebuilt_q, before_q) = (
        quote_identifier(table),
        quote_identifier(&rebuilt),
        quote_identifier(&before),
    );
    let before_exists = table_exists(client, database, &before).await?;
    if !table_exists(client, database, table).await? {
        if !(before_exists && table_exists(client, database, &rebuilt).await?) {
            return Err(failed(format!(
                "neither {table} nor {before} and {rebuilt} exist"
            )));
        }
        run(format!("RENAME TABLE {rebuilt_q} TO {table_q}")).await?;
    } else if !before_exists {
        run(format!("TRUNCATE TABLE {rebuilt_q}")).await?;
        let columns: Vec<String> = client
            .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
            .bind(database)
            .bind(&rebuilt)
            .fetch_all()
            .await?;
        let columns = columns
            .iter()
            .map(|column| quote_identifier(column))
            .collect::<Vec<_>>()
            .join(", ");
        run(format!(
            "INSERT INTO {rebuilt_q} ({columns}) SELECT {columns} FROM {table_q}"
        ))
        .await?;
        let count = |name: String| async move {
            client
                .query(&format!("SELECT count() FROM {name}"))
                .fetch_one::<u64>()
                .await
        };
        let (copied, original) = (
            count(rebuilt_q.clone()).await?,
            count(table_q.clone()).await?,
        );
        if copied != original {
            return Err(failed(format!(
                "{copied} rows copied of {original} (were writers running? stop them and migrate again)"
            )));
        }
        run(format!("RENAME TABLE {table_q} TO {before_q}")).await?;
        run(format!("RENAME TABLE {rebuilt_q} TO {table_q}")).await?;
        tracing::info!(table, rows = copied, "table rebuilt");
    } else {
        // Only the drop was left: this run's CREATE .. IF NOT EXISTS made the rebuilt table
        // again, empty.
        run(format!("DROP TABLE IF EXISTS {rebuilt_q}")).await?;
    }
    run(format!("DROP TABLE IF EXISTS {before_q}")).await?;
    Ok(())
}

async fn table_exists(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
) -> Result<bool, clickhouse::error::Error> {
    let count: u64 = client
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(table)
        .fetch_one()
        .await?;
    Ok(count > 0)
}

/// `(table, column)` of an `ALTER TABLE t ADD COLUMN c ..` statement.
fn added_column(statement: &str) -> Option<(String, String)> {
    let mut words = statement.split_whitespace();
    let keywords: Vec<String> = words
        .by_ref()
        .take(2)
        .map(str::to_ascii_uppercase)
        .collect();
    if keywords != ["ALTER", "TABLE"] {
        return None;
    }
    let table = words.next()?.to_owned();
    let add: Vec<String> = words
        .by_ref()
        .take(2)
        .map(str::to_ascii_uppercase)
        .collect();
    if add != ["ADD", "COLUMN"] {
        return None;
    }
    Some((table, words.next()?.to_owned()))
}

async fn column_exists(
    client: &clickhouse::Client,
    database: &str,
    table: &str,
    column: &str,
) -> Result<bool, clickhouse::error::Error> {
    let count: u64 = client
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(database)
        .bind(table)
        .bind(column)
        .fetch_one()
        .await?;
    Ok(count > 0)
}

/// The statements that apply `statement`: itself on a single server, its cluster layout on a
/// cluster.
fn laid_out(
    layout: Option<&ClusterLayout>,
    database: &str,
    statement: &str,
) -> Result<Vec<ClusterStatement>, MigrateError> {
    match layout {
        Some(layout) => layout.render(statement).map_err(MigrateError::Cluster),
        None => Ok(vec![ClusterStatement {
            sql: statement.to_owned(),
            adds_column: added_column(statement)
                .map(|(table, column)| (database.to_owned(), table, column)),
            sharded_alter: None,
        }]),
    }
}

/// FNV-1a 64 of the file text, hex: enough to notice an edited migration.
pub fn checksum(sql: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Quotes a ClickHouse identifier with backticks.
pub fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_drops_comments() {
        let sql = "-- a comment\nCREATE TABLE a (x UInt8)\nENGINE = Memory;\n\n-- b\nSELECT 1;\n";
        assert_eq!(
            statements(sql),
            vec!["CREATE TABLE a (x UInt8)\nENGINE = Memory", "SELECT 1"]
        );
    }

    #[test]
    fn recognises_rebuilt_tables() {
        assert_eq!(
            rebuilt_table("CREATE TABLE IF NOT EXISTS plays_minute_rebuilt\n(\n x UInt8\n)"),
            Some("plays_minute".to_owned())
        );
        assert_eq!(
            rebuilt_table("CREATE TABLE IF NOT EXISTS plays_minute (x UInt8)"),
            None
        );
        assert_eq!(
            rebuilt_table("CREATE TABLE IF NOT EXISTS _rebuilt (x UInt8)"),
            None
        );
        assert_eq!(
            rebuilt_table("DROP TABLE IF EXISTS daily_top_rebuilt"),
            None
        );
    }

    #[test]
    fn recognises_added_columns() {
        assert_eq!(
            added_column("ALTER TABLE plays_minute ADD COLUMN claim_id UInt64 DEFAULT 0"),
            Some(("plays_minute".to_owned(), "claim_id".to_owned()))
        );
        assert_eq!(
            added_column("alter table t\n  add column c String"),
            Some(("t".to_owned(), "c".to_owned()))
        );
        assert_eq!(added_column("ALTER TABLE t DELETE WHERE 1"), None);
        assert_eq!(added_column("CREATE TABLE t (x UInt8)"), None);
    }

    #[test]
    fn migrations_are_numbered_in_order_and_named_after_their_version() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1);
            assert!(migration
                .name
                .starts_with(&format!("{:04}_", migration.version)));
            assert!(!statements(migration.sql).is_empty());
        }
    }

    #[test]
    fn every_migration_file_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| m.name.to_owned()).collect();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn statements_avoid_features_missing_on_clickhouse_18() {
        for migration in MIGRATIONS {
            let upper = migration.sql.to_uppercase();
            for banned in ["TTL", "LOWCARDINALITY", "DATETIME64", "MAP(", "CODEC("] {
                assert!(!upper.contains(banned), "{} uses {banned}", migration.name);
            }
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("topk"), "`topk`");
        assert_eq!(quote_identifier("a`b"), "`a\\`b`");
    }
}
