-- Charts (see sql/README.md for what counts: chart-eligible plays, each user capped per song,
-- region and UTC hour).
--
-- chart_minute: the chart-eligible minute rows again, ordered by time instead of by user, so
-- that a chart reads an hour's plays without touching the rest of the day. Written by
-- topk-aggregator in the same flush as the plays_minute rows, before the flush's commit, with
-- the same claim_id and flush_seq: a row counts exactly when its plays_minute row does (read it
-- through the committed rule, as chart_minute_committed does).
CREATE TABLE IF NOT EXISTS chart_minute
(
    minute DateTime('UTC'),
    region String,
    song_id String,
    user_id String,
    chart_plays UInt64,
    kafka_partition UInt32,
    claim_id UInt64,
    flush_seq UInt64
)
ENGINE = MergeTree
PARTITION BY toDate(minute)
ORDER BY (minute, region, song_id, user_id);

-- The chart rows of the minute rows written before this migration (once: stop the aggregators
-- while migrating, as for every migration that copies rows).
INSERT INTO chart_minute
SELECT minute, region, song_id, user_id, chart_plays, kafka_partition, claim_id, flush_seq
FROM plays_minute
WHERE chart_plays > 0 AND (SELECT count() FROM chart_minute) = 0;

-- Which UTC hours (hours since 1970) each flush wrote minute rows for, beside minute_days:
-- how readers find plays committed after an hour was rolled up. Commits written before this
-- migration have none.
ALTER TABLE flush_commits ADD COLUMN minute_hours Array(UInt32);

-- Chart plays and listeners per (UTC hour, region, song), written by topk-rollup: one snapshot
-- of a day's complete hours at a time (snapshot_id), recorded in chart_rollups. `plays` are
-- capped per user; `listeners` is the set of users with a counted play (uniqExact state: merge
-- with uniqExactMerge, across hours too). Read a day's current snapshot only.
CREATE TABLE IF NOT EXISTS chart_hourly
(
    day Date,
    hour DateTime('UTC'),
    region String,
    song_id String,
    plays UInt64,
    listeners AggregateFunction(uniqExact, String),
    snapshot_id UInt64
)
ENGINE = MergeTree
PARTITION BY day
ORDER BY (snapshot_id, hour, region, song_id);

-- One row per recorded chart snapshot of a day: it holds the day's hours before
-- hours_through, counted with user_hour_cap, from the commits up to its heads (per Kafka
-- partition the newest claim and its last committed flush). The highest snapshot_id of a day is
-- current.
CREATE TABLE IF NOT EXISTS chart_rollups
(
    day Date,
    snapshot_id UInt64,
    hours_through DateTime('UTC'),
    user_hour_cap UInt64,
    rolled_up_at DateTime('UTC'),
    minute_rows_read UInt64,
    chart_rows UInt64,
    seconds Float64,
    snapshot_partitions Array(UInt64),
    snapshot_newest_claim_ids Array(UInt64),
    snapshot_newest_max_seqs Array(UInt64)
)
ENGINE = MergeTree
ORDER BY (day, snapshot_id);
