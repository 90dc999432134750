-- Per-minute play counts written by topk-aggregator.
-- One row per (user, song, UTC minute, flush): a (user, song, minute) may have several rows,
-- so always sum(plays). `kafka_partition` and `flush_offset` say which flush wrote the row;
-- the aggregator uses them to remove the rows of a flush that never reached its checkpoint.
CREATE TABLE IF NOT EXISTS plays_minute
(
    user_id String,
    song_id String,
    minute DateTime('UTC'),
    plays UInt64,
    topic String,
    kafka_partition UInt32,
    flush_offset UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(minute)
ORDER BY (user_id, minute, song_id);

-- Flush checkpoints: one row per (topic, partition) per flush, written after the flush's
-- minute rows. The highest flush_offset of a partition is the last offset whose events are
-- fully counted in plays_minute; the aggregator resumes after it.
CREATE TABLE IF NOT EXISTS ingest_checkpoints
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
ENGINE = MergeTree
ORDER BY (topic, kafka_partition, flush_offset);
