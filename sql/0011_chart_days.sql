-- Charts read fewer rows (see sql/README.md, "Charts"): the chart rollup's snapshots gain
-- all-regions rows (region '*') and whole-day rows, and listeners become uniqCombined(14)
-- states (approximate beyond a few hundred listeners: a 7-day chart's listeners merge a few
-- states a song instead of millions of user ids). chart_hourly and chart_rollups are replaced
-- by chart_hours and chart_snapshots (new names: a replicated table cannot be made again under
-- its old name in one step on a cluster); they hold only rows derived from chart_minute, so the
-- next `topk-rollup run` snapshots every day again, and until then the API reads the minute rows.
-- Nothing reads or writes chart_hourly and chart_rollups any more. They are left in place: drop
-- them by hand once no older binary runs.

-- Chart plays and listeners per (UTC hour, region, song) of one snapshot of a day's complete
-- hours, and per (UTC hour, '*', song) for all regions together. `plays` are capped per user,
-- song, region and hour; `listeners` is the set of users with a counted play, as a
-- uniqCombined(14) state (merge with uniqCombinedMerge(14), across hours and days too).
CREATE TABLE IF NOT EXISTS chart_hours
(
    day Date,
    hour DateTime('UTC'),
    region String,
    song_id String,
    plays UInt64,
    listeners AggregateFunction(uniqCombined(14), String),
    snapshot_id UInt64
)
ENGINE = MergeTree
PARTITION BY day
ORDER BY (snapshot_id, region, hour, song_id);

-- The same snapshot's hours summed per (region, song) and per ('*', song): the day up to the
-- snapshot's hours_through in one row per song.
CREATE TABLE IF NOT EXISTS chart_days
(
    day Date,
    region String,
    song_id String,
    plays UInt64,
    listeners AggregateFunction(uniqCombined(14), String),
    snapshot_id UInt64
)
ENGINE = MergeTree
PARTITION BY day
ORDER BY (snapshot_id, region, song_id);

-- One row per recorded chart snapshot of a day (as chart_rollups was): its chart_hours and
-- chart_days rows hold the day's hours before hours_through, counted with user_hour_cap, from
-- the commits up to its heads. The highest snapshot_id of a day is current.
CREATE TABLE IF NOT EXISTS chart_snapshots
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
