//! Table names and the rows written to and read from them. `sql/` holds the DDL and
//! `sql/README.md` explains each table; these types must match those columns in order.

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

pub const PLAYS_MINUTE: &str = "plays_minute";
pub const INGEST_CHECKPOINTS: &str = "ingest_checkpoints";
pub const DAILY_TOP: &str = "daily_top";
pub const ROLLUP_PROGRESS: &str = "rollup_progress";
pub const SCHEMA_MIGRATIONS: &str = "schema_migrations";

/// How many songs the rollup keeps per user and day.
pub const DAILY_TOP_SIZE: usize = 50;

/// A count of plays of one song by one user in one UTC minute, from one flush.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct MinuteRow {
    pub user_id: String,
    pub song_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub minute: DateTime<Utc>,
    pub plays: u64,
    pub topic: String,
    pub kafka_partition: u32,
    /// The last Kafka offset covered by the flush that wrote this row.
    pub flush_offset: u64,
}

/// The progress of one flush of one Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub topic: String,
    pub kafka_partition: u32,
    /// The last offset whose events are counted in `plays_minute` (inclusive).
    pub flush_offset: u64,
    /// Where to re-read from, without counting, to rebuild the duplicate filter.
    pub dedup_replay_from: u64,
    /// The duplicate filter's watermark (highest event time seen) just before
    /// `dedup_replay_from`, epoch ms.
    pub watermark_ms: i64,
    pub events: u64,
    pub minute_rows: u64,
    pub consumer_group: String,
    pub worker: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub flushed_at: DateTime<Utc>,
}

/// One of a user's top songs of one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DailyTopRow {
    #[serde(with = "clickhouse::serde::chrono::date")]
    pub day: NaiveDate,
    pub user_id: String,
    /// 1-based rank: plays descending, then song_id ascending.
    pub rank: u16,
    pub song_id: String,
    pub plays: u64,
    /// How many distinct songs the user played that day.
    pub user_songs: u64,
    /// 1 when the user played more songs that day than were kept.
    pub user_truncated: u8,
    /// The plays of the last kept song when truncated (an upper bound for every song not
    /// kept), else 0.
    pub user_cutoff_plays: u64,
}

/// One completed rollup of one day.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct RollupProgressRow {
    #[serde(with = "clickhouse::serde::chrono::date")]
    pub day: NaiveDate,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub rolled_up_at: DateTime<Utc>,
    pub minute_rows_read: u64,
    pub plays_read: u64,
    pub users: u64,
    pub rows_written: u64,
    pub seconds: f64,
}
