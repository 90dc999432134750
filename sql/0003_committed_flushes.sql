-- Exactly-once under real faults: claims fence old owners, and a flush counts only once it is
-- committed by the claim that wrote it. The argument is in aggregator/src/checkpoint.rs; what
-- analysts should read is in sql/README.md (the *_committed views).

-- One row per claim of a Kafka partition by an aggregator. The newest claim of a partition (the
-- highest claim_id: epoch << 32 | partition << 16 | random) owns its flushes; rows of older
-- claims count only up to the flush sequence recorded for them here, whatever their timing.
CREATE TABLE IF NOT EXISTS ingest_claims
(
    consumer_group String,
    topic String,
    kafka_partition UInt32,
    claim_id UInt64,
    worker String,
    claimed_at DateTime('UTC'),
    parent_claim_id UInt64,
    parent_max_seq UInt64,
    parent_released UInt8,
    base_offset Int64,
    base_replay_from Int64,
    base_watermark_ms Int64,
    capped_claim_ids Array(UInt64),
    capped_max_seqs Array(UInt64)
)
ENGINE = MergeTree
ORDER BY (kafka_partition, claim_id);

-- One row per committed flush of one partition, written after the flush's minute rows (a
-- single-block insert: atomic). Replaces ingest_checkpoints (schema 2), which stays as history.
CREATE TABLE IF NOT EXISTS flush_commits
(
    consumer_group String,
    topic String,
    kafka_partition UInt32,
    claim_id UInt64,
    flush_seq UInt64,
    flush_offset Int64,
    dedup_replay_from Int64,
    watermark_ms Int64,
    events UInt64,
    minute_rows UInt64,
    minute_days Array(Date),
    released UInt8,
    worker String,
    flushed_at DateTime('UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(flushed_at)
ORDER BY (kafka_partition, claim_id, flush_seq);

-- Which claim and flush wrote each minute row. Rows written before schema 3 belong to one
-- legacy claim per partition (epoch 0: partition << 16 | 1), their flush sequence being their
-- flush_offset.
ALTER TABLE plays_minute ADD COLUMN claim_id UInt64 DEFAULT bitOr(bitShiftLeft(toUInt64(kafka_partition), 16), 1);

ALTER TABLE plays_minute ADD COLUMN flush_seq UInt64 DEFAULT flush_offset;

-- The legacy claims and their last commit, from the schema-2 checkpoints (once).
INSERT INTO flush_commits
SELECT
    consumer_group, topic, kafka_partition,
    bitOr(bitShiftLeft(toUInt64(kafka_partition), 16), 1) AS claim_id,
    max(flush_offset) AS flush_seq,
    toInt64(max(flush_offset)),
    toInt64(argMax(dedup_replay_from, flush_offset)),
    argMax(watermark_ms, flush_offset),
    sum(events), sum(minute_rows), CAST([] AS Array(Date)), toUInt8(0), 'schema-2 checkpoints',
    max(flushed_at)
FROM ingest_checkpoints
GROUP BY consumer_group, topic, kafka_partition
HAVING (SELECT count() FROM flush_commits WHERE claim_id < 4294967296) = 0;

INSERT INTO ingest_claims
SELECT
    consumer_group, topic, kafka_partition,
    bitOr(bitShiftLeft(toUInt64(kafka_partition), 16), 1) AS claim_id,
    'schema-2 checkpoints', min(flushed_at), toUInt64(0), toUInt64(0), toUInt8(0),
    toInt64(-1), toInt64(0), toInt64(-9223372036854775808),
    CAST([] AS Array(UInt64)), CAST([] AS Array(UInt64))
FROM ingest_checkpoints
GROUP BY consumer_group, topic, kafka_partition
HAVING (SELECT count() FROM ingest_claims WHERE claim_id < 4294967296) = 0;

-- What counts, per partition: the newest claim's flushes up to its latest commit, and older
-- claims' flushes except those capped (capped_* pairs: claim, last flush_seq that counts).
-- counted_through is the last Kafka offset whose events are counted.
CREATE VIEW IF NOT EXISTS committed_flushes AS
SELECT
    consumer_group,
    topic,
    kafka_partition,
    newest_claim_id,
    arrayConcat(older_capped_claim_ids, [newest_claim_id]) AS capped_claim_ids,
    arrayConcat(older_capped_max_seqs, [newest_max_seq]) AS capped_max_seqs,
    newest_max_seq,
    if(newest_max_seq > 0, newest_flush_offset, base_offset) AS counted_through,
    if(newest_max_seq > 0, newest_flushed_at, claimed_at) AS last_commit_at
FROM
(
    SELECT
        consumer_group,
        topic,
        kafka_partition,
        max(claim_id) AS newest_claim_id,
        argMax(capped_claim_ids, claim_id) AS older_capped_claim_ids,
        argMax(capped_max_seqs, claim_id) AS older_capped_max_seqs,
        argMax(base_offset, claim_id) AS base_offset,
        argMax(claimed_at, claim_id) AS claimed_at
    FROM ingest_claims
    GROUP BY consumer_group, topic, kafka_partition
) AS claims
ANY LEFT JOIN
(
    SELECT
        kafka_partition,
        claim_id AS newest_claim_id,
        max(flush_seq) AS newest_max_seq,
        argMax(flush_offset, flush_seq) AS newest_flush_offset,
        max(flushed_at) AS newest_flushed_at
    FROM flush_commits
    WHERE (kafka_partition, claim_id) IN
        (SELECT kafka_partition, max(claim_id) FROM ingest_claims GROUP BY kafka_partition)
    GROUP BY kafka_partition, claim_id
) AS heads USING (kafka_partition, newest_claim_id);

-- plays_minute without the rows of flushes that are not (or never will be) committed: what
-- every reader counts. Always sum(plays).
CREATE VIEW IF NOT EXISTS plays_minute_committed AS
WITH
    (SELECT (arrayConcat([toUInt64(4294967296)], groupArray(toUInt64(kafka_partition))),
             arrayConcat([toUInt64(0)], groupArray(newest_claim_id)),
             arrayConcat([toUInt64(0)], groupArrayArray(capped_claim_ids)),
             arrayConcat([toUInt64(0)], groupArrayArray(capped_max_seqs)))
     FROM committed_flushes) AS committed
SELECT user_id, song_id, minute, plays, topic, kafka_partition, flush_offset, claim_id, flush_seq
FROM plays_minute
WHERE claim_id <= transform(toUInt64(kafka_partition), tupleElement(committed, 1), tupleElement(committed, 2), toUInt64(0))
    AND flush_seq <= transform(claim_id, tupleElement(committed, 3), tupleElement(committed, 4), toUInt64(18446744073709551615));

-- Committed plays per user, song and UTC day.
CREATE VIEW IF NOT EXISTS plays_daily_committed AS
SELECT toDate(minute) AS day, user_id, song_id, sum(plays) AS plays
FROM plays_minute_committed
GROUP BY day, user_id, song_id;
