//! Table names and the rows written to and read from them. `sql/` holds the DDL and
//! `sql/README.md` explains each table; these types must match those columns in order.

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

pub const PLAYS_MINUTE: &str = "plays_minute";
/// Schema 2's flush checkpoints: history only since schema 3 (see [`FLUSH_COMMITS`]).
pub const INGEST_CHECKPOINTS: &str = "ingest_checkpoints";
pub const INGEST_CLAIMS: &str = "ingest_claims";
pub const FLUSH_COMMITS: &str = "flush_commits";
/// The view that says which flushes count (see [`crate::committed`]).
pub const COMMITTED_FLUSHES: &str = "committed_flushes";
pub const DAILY_TOP: &str = "daily_top";
pub const ROLLUP_PROGRESS: &str = "rollup_progress";
/// The chart-eligible minute rows ordered by time (see [`ChartMinuteRow`]).
pub const CHART_MINUTE: &str = "chart_minute";
/// Chart plays and listeners per (UTC hour, region, song) and per (UTC hour, all regions,
/// song), snapshots of days' complete hours (see [`crate::chart`]).
pub const CHART_HOURS: &str = "chart_hours";
/// The same snapshots' hours summed per (region, song) and per (all regions, song).
pub const CHART_DAYS: &str = "chart_days";
/// The `region` of the rows of [`CHART_HOURS`] and [`CHART_DAYS`] that count every region
/// together (no region code is `*`).
pub const ALL_REGIONS: &str = "*";

/// The recorded chart snapshots (see [`ChartSnapshotRow`]).
pub const CHART_SNAPSHOTS: &str = "chart_snapshots";
pub const SCHEMA_MIGRATIONS: &str = "schema_migrations";
/// The song catalog: one row per song per change (see [`SongRow`]).
pub const SONGS: &str = "songs";
/// Each song's current catalog entry (a view over [`SONGS`]).
pub const SONGS_CURRENT: &str = "songs_current";

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
    /// The claim whose flush wrote this row, and that flush's sequence number in the claim:
    /// the row counts only while that flush is committed (see [`crate::committed`]).
    pub claim_id: u64,
    pub flush_seq: u64,
    /// Where the plays happened (ISO 3166-1 alpha-2), `""` when the events did not say.
    pub region: String,
    /// How many of `plays` count for the charts ([`crate::event::PlayEvent::chart_eligible`]).
    pub chart_plays: u64,
}

/// A minute row's chart-eligible plays, ordered by time (`chart_minute`): written with the
/// [`MinuteRow`] of the same flush, and counting exactly when it does.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct ChartMinuteRow {
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub minute: DateTime<Utc>,
    pub region: String,
    pub song_id: String,
    pub user_id: String,
    pub chart_plays: u64,
    pub kafka_partition: u32,
    pub claim_id: u64,
    pub flush_seq: u64,
}

impl ChartMinuteRow {
    /// The chart row of `row`, `None` when none of its plays count for the charts.
    pub fn of(row: &MinuteRow) -> Option<Self> {
        (row.chart_plays > 0).then(|| Self {
            minute: row.minute,
            region: row.region.clone(),
            song_id: row.song_id.clone(),
            user_id: row.user_id.clone(),
            chart_plays: row.chart_plays,
            kafka_partition: row.kafka_partition,
            claim_id: row.claim_id,
            flush_seq: row.flush_seq,
        })
    }
}

/// One recorded chart snapshot of a day (`chart_snapshots`): its `chart_hours` and
/// `chart_days` rows hold the day's hours before `hours_through`.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct ChartSnapshotRow {
    #[serde(with = "clickhouse::serde::chrono::date")]
    pub day: NaiveDate,
    /// `ms << 16 | random`, like a daily snapshot's: a later snapshot has a higher id.
    pub snapshot_id: u64,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub hours_through: DateTime<Utc>,
    /// The per-user cap its plays were counted with ([`crate::chart`]).
    pub user_hour_cap: u64,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub rolled_up_at: DateTime<Utc>,
    pub minute_rows_read: u64,
    pub chart_rows: u64,
    pub seconds: f64,
    /// What it read (see [`RollupProgressRow::snapshot_partitions`]).
    pub snapshot_partitions: Vec<u64>,
    pub snapshot_newest_claim_ids: Vec<u64>,
    pub snapshot_newest_max_seqs: Vec<u64>,
}

/// A song's catalog entry as `songs_current` holds it (the loader compares with it, the API
/// answers it); [`SongRow`] is the same with the load that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct SongEntry {
    pub song_id: String,
    pub title: String,
    pub artist_id: String,
    pub artist_name: String,
    /// `""` when not known.
    pub album: String,
    /// Lower case; `""` when not known.
    pub genre: String,
    /// 0 when not known.
    pub duration_ms: u32,
}

/// The columns of [`SongEntry`], in order.
pub const SONG_ENTRY_COLUMNS: &str =
    "song_id, title, artist_id, artist_name, album, genre, duration_ms";

/// A song's catalog entry (`songs`): written by `topk-catalog load`, one row per song per
/// change, the highest `version` current.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct SongRow {
    pub song_id: String,
    pub title: String,
    pub artist_id: String,
    pub artist_name: String,
    /// `""` when not known.
    pub album: String,
    /// Lower case; `""` when not known.
    pub genre: String,
    /// 0 when not known.
    pub duration_ms: u32,
    /// The load that wrote the row (epoch milliseconds).
    pub version: u64,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub loaded_at: DateTime<Utc>,
}

/// One claim of a Kafka partition by an aggregator (see `topk_core::claims`).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct ClaimRow {
    pub consumer_group: String,
    pub topic: String,
    pub kafka_partition: u32,
    /// `epoch << 32 | random`: a newer claim has a higher id.
    pub claim_id: u64,
    pub worker: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub claimed_at: DateTime<Utc>,
    /// The claim this one took over from (0: none), and the last of its flushes that counts.
    pub parent_claim_id: u64,
    pub parent_max_seq: u64,
    /// 1 when the parent's owner released the partition right after `parent_max_seq`, so
    /// every row the parent wrote counts.
    pub parent_released: u8,
    /// Where this claim resumed: the last offset counted before it (-1: none), and the
    /// duplicate filter's replay point then.
    pub base_offset: i64,
    pub base_replay_from: i64,
    pub base_watermark_ms: i64,
    /// Older claims whose rows count only up to a flush sequence (0: not at all).
    pub capped_claim_ids: Vec<u64>,
    pub capped_max_seqs: Vec<u64>,
}

/// The commit of one flush of one Kafka partition: its minute rows count from the moment
/// this row exists (and for as long as its claim is not capped below `flush_seq`).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct FlushCommitRow {
    pub consumer_group: String,
    pub topic: String,
    pub kafka_partition: u32,
    pub claim_id: u64,
    pub flush_seq: u64,
    /// The last offset whose events are counted once this flush is (inclusive).
    pub flush_offset: i64,
    /// Where to re-read from, without counting, to rebuild the duplicate filter.
    pub dedup_replay_from: i64,
    /// The duplicate filter's watermark (highest event time seen) just before
    /// `dedup_replay_from`, epoch ms.
    pub watermark_ms: i64,
    pub events: u64,
    pub minute_rows: u64,
    /// The UTC days this flush wrote minute rows for (late-data detection), as ClickHouse
    /// `Date` numbers (days since 1970-01-01, see [`crate::window::day_number`]).
    pub minute_days: Vec<u16>,
    /// 1 on the last flush of a claim whose owner released the partition cleanly.
    pub released: u8,
    pub worker: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub flushed_at: DateTime<Utc>,
    /// The Kafka timestamp (ms) of the newest record this flush counted, 0 when none: what
    /// readers report as how fresh the counts are.
    #[serde(default)]
    pub records_through_ms: i64,
    /// The UTC hours (hours since 1970) this flush wrote minute rows for: how chart readers
    /// find plays committed after an hour was rolled up. Empty on commits before schema 10.
    #[serde(default)]
    pub minute_hours: Vec<u32>,
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
    /// The rollup (see [`RollupProgressRow::snapshot_id`]) that wrote this row.
    pub snapshot_id: u64,
}

/// One completed rollup of one day: the snapshot of the day's top lists it wrote, and what
/// it read.
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
    /// The rows of `daily_top` this rollup wrote carry this id (`ms << 16 | random`: a
    /// later rollup has a higher id). 0: a rollup from before schema 4.
    pub snapshot_id: u64,
    /// What it read: for each Kafka partition, the newest claim and the last committed flush
    /// of that claim (see [`crate::committed::SnapshotHeads`]).
    pub snapshot_partitions: Vec<u64>,
    pub snapshot_newest_claim_ids: Vec<u64>,
    pub snapshot_newest_max_seqs: Vec<u64>,
}
