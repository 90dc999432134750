-- topk on a ClickHouse cluster: the tables of sql/0001_minute_plays.sql and sql/0002_daily_top.sql
-- (same columns, same ORDER BY and partitioning) as ReplicatedMergeTree, the two big tables
-- sharded by user behind Distributed tables. See README.md next to this file for the layout,
-- the reasoning and what the code needs before it can run on it.
--
-- Cluster `topk` (remote_servers in config.d/topk-cluster.xml, internal_replication = true),
-- macros {shard} and {replica} on every node, ClickHouse Keeper for replication. Apply once,
-- from any node, before anything else touches the cluster:
--   clickhouse-client --multiquery < schema.sql
-- then run `topk-rollup migrate` against database `topk`: every table already exists, so it
-- only records the migration versions (which the API's /readyz checks).
--
-- Two databases with the same table names:
--   topk_local  the shards' own data (one user's rows on exactly one shard)
--   topk        what the binaries connect to: Distributed tables named like the single-node
--               ones, plus the small tables replicated to every node.

CREATE DATABASE IF NOT EXISTS topk_local ON CLUSTER topk;
CREATE DATABASE IF NOT EXISTS topk ON CLUSTER topk;

-- Per-minute play counts, sharded by user (written by topk-aggregator).
-- replicated_deduplication_window = 0: the aggregator's exactly-once protocol deletes the rows
-- of an unfinished flush and writes them again; block deduplication would silently drop a
-- re-insert identical to the deleted block.
CREATE TABLE IF NOT EXISTS topk_local.plays_minute ON CLUSTER topk
(
    user_id String,
    song_id String,
    minute DateTime('UTC'),
    plays UInt64,
    topic String,
    kafka_partition UInt32,
    flush_offset UInt64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/topk_local/plays_minute', '{replica}')
PARTITION BY toDate(minute)
ORDER BY (user_id, minute, song_id)
SETTINGS replicated_deduplication_window = 0;

CREATE TABLE IF NOT EXISTS topk.plays_minute ON CLUSTER topk
AS topk_local.plays_minute
ENGINE = Distributed(topk, topk_local, plays_minute, cityHash64(user_id));

-- Each user's top 50 songs per UTC day, sharded like plays_minute (written by topk-rollup,
-- one REPLACE PARTITION per day and shard).
CREATE TABLE IF NOT EXISTS topk_local.daily_top ON CLUSTER topk
(
    day Date,
    user_id String,
    rank UInt16,
    song_id String,
    plays UInt64,
    user_songs UInt64,
    user_truncated UInt8,
    user_cutoff_plays UInt64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/topk_local/daily_top', '{replica}')
PARTITION BY day
ORDER BY (user_id, day, rank);

CREATE TABLE IF NOT EXISTS topk.daily_top ON CLUSTER topk
AS topk_local.daily_top
ENGINE = Distributed(topk, topk_local, daily_top, cityHash64(user_id));

-- Small tables, not sharded: one replica on every node of the cluster (a Keeper path without
-- {shard}), so any node answers them locally and completely.

-- Flush checkpoints (one row per partition per flush; a few thousand rows a day).
CREATE TABLE IF NOT EXISTS topk.ingest_checkpoints ON CLUSTER topk
(
    topic String,
    kafka_partition UInt32,
    flush_offset UInt64,
    dedup_replay_from UInt64,
    watermark_ms Int64,
    events UInt64,
    minute_rows UInt64,
    consumer_group String,
    worker String,
    flushed_at DateTime('UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/topk/ingest_checkpoints', '{replica}')
ORDER BY (topic, kafka_partition, flush_offset);

-- One row per completed rollup of a day, written after every shard swapped the day in.
CREATE TABLE IF NOT EXISTS topk.rollup_progress ON CLUSTER topk
(
    day Date,
    rolled_up_at DateTime('UTC'),
    minute_rows_read UInt64,
    plays_read UInt64,
    users UInt64,
    rows_written UInt64,
    seconds Float64
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/topk/rollup_progress', '{replica}')
ORDER BY (day, rolled_up_at);

-- Applied migrations (topk_core::migrate creates the single-node version of this table).
CREATE TABLE IF NOT EXISTS topk.schema_migrations ON CLUSTER topk
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime('UTC')
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/topk/schema_migrations', '{replica}')
ORDER BY version;
