-- Each user's top 50 songs per UTC day, written by topk-rollup. A day's partition is replaced
-- as a whole (REPLACE PARTITION from a staging table), so readers never see half a day.
-- user_* columns repeat, on every row of a (user, day), what the API needs to decide
-- whether a top 10 built from stored top-50 lists is exact.
CREATE TABLE IF NOT EXISTS daily_top
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
ENGINE = MergeTree
PARTITION BY day
ORDER BY (user_id, day, rank);

-- One row per completed rollup of a day; the latest row per day is the day's state.
-- The API reads a previous day from daily_top only when a row here says it is rolled up.
CREATE TABLE IF NOT EXISTS rollup_progress
(
    day Date,
    rolled_up_at DateTime('UTC'),
    minute_rows_read UInt64,
    plays_read UInt64,
    users UInt64,
    rows_written UInt64,
    seconds Float64
)
ENGINE = MergeTree
ORDER BY (day, rolled_up_at);
