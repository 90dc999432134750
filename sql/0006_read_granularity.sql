-- plays_minute and daily_top with index_granularity = 256 (was 8192): the API reads a few
-- users' rows per query (one user, or a coalesced batch: user_id IN (..)), and each user's
-- rows of a day are a few dozen; at 8192 every user read decompresses 8192-row granules in
-- every day partition. Same columns, partitioning and sorting key (user_id first) as before.
--
-- ClickHouse 18.16 cannot alter index_granularity, so each table is made anew as
-- `<table>_rebuilt` and the migration runner (topk_core::migrate, "rebuilt tables") copies
-- the rows, checks the count, swaps the names and drops the old table. Stop the aggregators and
-- the rollup while it runs (rows written to the old table during the copy would be lost: the
-- count check refuses the swap when it sees them). On a cluster the tables keep their
-- granularity (not laid out there yet: deploy/clickhouse-cluster/README.md).
CREATE TABLE IF NOT EXISTS plays_minute_rebuilt
(
    user_id String,
    song_id String,
    minute DateTime('UTC'),
    plays UInt64,
    topic String,
    kafka_partition UInt32,
    flush_offset UInt64,
    claim_id UInt64 DEFAULT bitOr(bitShiftLeft(toUInt64(kafka_partition), 16), 1),
    flush_seq UInt64 DEFAULT flush_offset
)
ENGINE = MergeTree
PARTITION BY toDate(minute)
ORDER BY (user_id, minute, song_id)
SETTINGS index_granularity = 256;

CREATE TABLE IF NOT EXISTS daily_top_rebuilt
(
    day Date,
    user_id String,
    rank UInt16,
    song_id String,
    plays UInt64,
    user_songs UInt64,
    user_truncated UInt8,
    user_cutoff_plays UInt64,
    snapshot_id UInt64 DEFAULT 0
)
ENGINE = MergeTree
PARTITION BY day
ORDER BY (user_id, day, rank)
SETTINGS index_granularity = 256;
