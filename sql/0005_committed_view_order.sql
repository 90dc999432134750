-- plays_minute_committed again (same columns, same rule), with the committed-claims arrays of
-- its scalar subquery in a fixed order. On a cluster, ClickHouse evaluates that subquery more
-- than once for one query over the Distributed plays_minute, and groupArray's order can differ
-- between evaluations; 18.16 then refuses the query ("Different expressions with the same
-- alias committed"). Each array is sorted by its keys (partitions, claim ids: unique).
DROP TABLE IF EXISTS plays_minute_committed;

CREATE VIEW IF NOT EXISTS plays_minute_committed AS
WITH
    (SELECT (arrayConcat([toUInt64(4294967296)], arraySort(groupArray(toUInt64(kafka_partition)))),
             arrayConcat([toUInt64(0)], arraySort((claim, partition) -> partition, groupArray(newest_claim_id), groupArray(toUInt64(kafka_partition)))),
             arrayConcat([toUInt64(0)], arraySort(groupArrayArray(capped_claim_ids))),
             arrayConcat([toUInt64(0)], arraySort((seq, claim) -> claim, groupArrayArray(capped_max_seqs), groupArrayArray(capped_claim_ids))))
     FROM committed_flushes) AS committed
SELECT user_id, song_id, minute, plays, topic, kafka_partition, flush_offset, claim_id, flush_seq
FROM plays_minute
WHERE claim_id <= transform(toUInt64(kafka_partition), tupleElement(committed, 1), tupleElement(committed, 2), toUInt64(0))
    AND flush_seq <= transform(claim_id, tupleElement(committed, 3), tupleElement(committed, 4), toUInt64(18446744073709551615));
