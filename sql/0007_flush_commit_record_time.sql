-- Freshness: each commit records the Kafka timestamp (ms) of the newest record its flush
-- counted, so readers can say up to when a partition's plays are counted (the API's
-- `data_through`: the oldest of the partitions' newest counted records). 0: not recorded
-- (commits written before this migration, and restores).
ALTER TABLE flush_commits ADD COLUMN records_through_ms Int64 DEFAULT 0;
