-- Charts: chart plays and listeners per (UTC hour, region, song), written by topk-rollup as
-- part of each day's snapshot (the same snapshot_id as the day's daily_top rows, recorded in
-- the same rollup_progress row). `plays` are capped per user (at most the rollup's
-- chart_user_hour_cap plays of one song per user, region and hour; see sql/README.md);
-- `listeners` is the set of users with a counted play (uniqExact state: merge it with
-- uniqExactMerge, across hours too). Readers use the current snapshot of a day only.
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

-- The cap a rollup counted its chart rows with (0: it wrote none, a rollup before schema 10)
-- and how many it wrote.
ALTER TABLE rollup_progress ADD COLUMN chart_user_hour_cap UInt64 DEFAULT 0;

ALTER TABLE rollup_progress ADD COLUMN chart_rows UInt64 DEFAULT 0;
