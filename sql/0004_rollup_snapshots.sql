-- Exact top lists for every user: each rollup of a day writes a new *snapshot* of the day's
-- top 50 lists into daily_top (rows tagged snapshot_id), and then records it in
-- rollup_progress together with exactly what it read: for each Kafka partition, the newest
-- claim and its last committed flush at that moment (snapshot_* columns). Readers use the
-- latest recorded snapshot of a day, add the plays committed after it (minute rows beyond
-- those heads), and read a user's minute rows of a day instead of a truncated list. Older
-- snapshots are deleted later by the rollup. Rows written before schema 4 have snapshot_id 0:
-- such a day counts as not rolled up until it is rolled up again.

ALTER TABLE daily_top ADD COLUMN snapshot_id UInt64 DEFAULT 0;

ALTER TABLE rollup_progress ADD COLUMN snapshot_id UInt64 DEFAULT 0;

ALTER TABLE rollup_progress ADD COLUMN snapshot_partitions Array(UInt64);

ALTER TABLE rollup_progress ADD COLUMN snapshot_newest_claim_ids Array(UInt64);

ALTER TABLE rollup_progress ADD COLUMN snapshot_newest_max_seqs Array(UInt64);
