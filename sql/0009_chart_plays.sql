-- Charts ride the same committed flushes as the users' own counts: each minute row also says
-- where the plays happened and how many of them count for the charts.
-- `region`: the plays' ISO 3166-1 alpha-2 code, '' when the events did not say (a user's plays
-- of one song in one minute from two regions are two rows). `chart_plays`: how many of the
-- row's plays are chart-eligible (played at least the aggregator's --chart-min-played-ms, or
-- of unknown length); rows written before this migration count all their plays.
ALTER TABLE plays_minute ADD COLUMN region String DEFAULT '';

ALTER TABLE plays_minute ADD COLUMN chart_plays UInt64 DEFAULT plays;

-- plays_minute_committed again, same rule (0005), with the two columns.
DROP TABLE IF EXISTS plays_minute_committed;

CREATE VIEW IF NOT EXISTS plays_minute_committed AS
WITH
    (SELECT (arrayConcat([toUInt64(4294967296)], arraySort(groupArray(toUInt64(kafka_partition)))),
             arrayConcat([toUInt64(0)], arraySort((claim, partition) -> partition, groupArray(newest_claim_id), groupArray(toUInt64(kafka_partition)))),
             arrayConcat([toUInt64(0)], arraySort(groupArrayArray(capped_claim_ids))),
             arrayConcat([toUInt64(0)], arraySort((seq, claim) -> claim, groupArrayArray(capped_max_seqs), groupArrayArray(capped_claim_ids))))
     FROM committed_flushes) AS committed
SELECT user_id, song_id, minute, plays, topic, kafka_partition, flush_offset, claim_id, flush_seq, region, chart_plays
FROM plays_minute
WHERE claim_id <= transform(toUInt64(kafka_partition), tupleElement(committed, 1), tupleElement(committed, 2), toUInt64(0))
    AND flush_seq <= transform(claim_id, tupleElement(committed, 3), tupleElement(committed, 4), toUInt64(18446744073709551615));
