//! Which minute rows count: the one rule every reader applies (the API, the rollup, the
//! restore, the tests, and analysts through the `plays_minute_committed` view).
//!
//! A writer claims a Kafka partition before it writes (see [`crate::claims`]); each of its
//! flushes writes minute rows tagged `(claim_id, flush_seq)` and then one commit row. For
//! each partition the `committed_flushes` view (sql/0003) names the newest claim and a list
//! of *capped* claims with the last flush sequence of each that counts. A minute row counts
//! when
//!
//! 1. its claim is not newer than the partition's newest claim (a claim made after this
//!    snapshot was taken has nothing committed in it yet), and
//! 2. its `flush_seq` is at most its claim's cap, for capped claims (the newest claim is
//!    capped at its latest commit; a claim that was taken over from without a clean release
//!    at the flush its successor resumed after; a claim that lost a race at 0). Older claims
//!    that released their partition cleanly are not capped: every row they wrote counts.
//!
//! The rule lives in SQL (the view, so analysts get it too) and is applied here by binding a
//! snapshot of the view as arrays into each reader's query ([`CommittedFlushes::condition`]),
//! or in Rust ([`CommittedFlushes::counts`]) where rows are already in memory. A snapshot
//! only grows over time on one server: a later snapshot counts every row an earlier one did.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::schema::COMMITTED_FLUSHES;

/// Sentinels that keep the bound arrays non-empty (ClickHouse 18.16's `transform` refuses
/// empty arrays): a partition number no Kafka partition has, and claim id 0, which no claim
/// has (legacy claims are below 2^32 and hash to 0 with probability 2^-32).
const NO_PARTITION: u64 = 1 << 32;
const NO_CLAIM: u64 = 0;

/// One partition's row of the `committed_flushes` view.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct PartitionCommits {
    pub consumer_group: String,
    pub topic: String,
    pub kafka_partition: u32,
    pub newest_claim_id: u64,
    pub capped_claim_ids: Vec<u64>,
    pub capped_max_seqs: Vec<u64>,
    pub newest_max_seq: u64,
    /// The last Kafka offset whose events are counted (-1: none).
    pub counted_through: i64,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub last_commit_at: DateTime<Utc>,
}

/// A snapshot of what counts, per Kafka partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommittedFlushes {
    partitions: BTreeMap<u32, PartitionCommits>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommittedError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(
        "the database holds claims of more than one consumer group or topic ({0}); one \
         database serves one aggregator group on one topic"
    )]
    MixedOwners(String),
}

/// The four arrays a snapshot binds into SQL, in [`CommittedFlushes::condition`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedArrays {
    pub partitions: Vec<u64>,
    pub newest_claim_ids: Vec<u64>,
    pub capped_claim_ids: Vec<u64>,
    pub capped_max_seqs: Vec<u64>,
}

impl CommittedFlushes {
    /// Reads the current snapshot from the `committed_flushes` view.
    pub async fn read(client: &clickhouse::Client) -> Result<Self, CommittedError> {
        let rows: Vec<PartitionCommits> = client
            .query(&format!(
                "SELECT ?fields FROM {COMMITTED_FLUSHES} ORDER BY kafka_partition"
            ))
            .fetch_all()
            .await?;
        Self::from_rows(rows)
    }

    pub fn from_rows(rows: Vec<PartitionCommits>) -> Result<Self, CommittedError> {
        let owners: std::collections::BTreeSet<(String, String)> = rows
            .iter()
            .map(|row| (row.consumer_group.clone(), row.topic.clone()))
            .collect();
        if owners.len() > 1 {
            let listed: Vec<String> = owners
                .iter()
                .map(|(group, topic)| format!("group {group} on topic {topic}"))
                .collect();
            return Err(CommittedError::MixedOwners(listed.join(", ")));
        }
        Ok(Self {
            partitions: rows
                .into_iter()
                .map(|row| (row.kafka_partition, row))
                .collect(),
        })
    }

    /// Nothing counts (an empty database).
    pub fn none() -> Self {
        Self::default()
    }

    pub fn partitions(&self) -> impl Iterator<Item = &PartitionCommits> {
        self.partitions.values()
    }

    pub fn partition(&self, kafka_partition: u32) -> Option<&PartitionCommits> {
        self.partitions.get(&kafka_partition)
    }

    /// The last counted offset of every partition with a claim (-1: none yet).
    pub fn counted_through(&self) -> BTreeMap<u32, i64> {
        self.partitions
            .iter()
            .map(|(partition, commits)| (*partition, commits.counted_through))
            .collect()
    }

    /// Whether a minute row (or commit row) of `kafka_partition` written by flush
    /// `flush_seq` of claim `claim_id` counts in this snapshot: the same rule as the SQL
    /// of [`Self::condition`].
    pub fn counts(&self, kafka_partition: u32, claim_id: u64, flush_seq: u64) -> bool {
        let Some(commits) = self.partitions.get(&kafka_partition) else {
            return false;
        };
        if claim_id > commits.newest_claim_id {
            return false;
        }
        let cap = self
            .partitions
            .values()
            .flat_map(|partition| {
                partition
                    .capped_claim_ids
                    .iter()
                    .zip(&partition.capped_max_seqs)
            })
            .find(|(capped, _)| **capped == claim_id)
            .map_or(u64::MAX, |(_, max_seq)| *max_seq);
        flush_seq <= cap
    }

    /// The snapshot as the arrays [`Self::condition`] binds.
    pub fn arrays(&self) -> CommittedArrays {
        let mut arrays = CommittedArrays {
            partitions: vec![NO_PARTITION],
            newest_claim_ids: vec![NO_CLAIM],
            capped_claim_ids: vec![NO_CLAIM],
            capped_max_seqs: vec![0],
        };
        for commits in self.partitions.values() {
            arrays.partitions.push(u64::from(commits.kafka_partition));
            arrays.newest_claim_ids.push(commits.newest_claim_id);
            arrays
                .capped_claim_ids
                .extend_from_slice(&commits.capped_claim_ids);
            arrays
                .capped_max_seqs
                .extend_from_slice(&commits.capped_max_seqs);
        }
        arrays
    }

    /// The SQL condition "this row counts", over the columns `kafka_partition`, `claim_id`
    /// and `flush_seq` (each prefixed with `prefix`, e.g. `"m."`). It has four `?`
    /// placeholders: bind them with [`Self::bind`], in the position the condition takes in
    /// the query.
    pub fn condition(prefix: &str) -> String {
        format!(
            "({prefix}claim_id <= transform(toUInt64({prefix}kafka_partition), \
             CAST(? AS Array(UInt64)), CAST(? AS Array(UInt64)), toUInt64(0)) \
             AND {prefix}flush_seq <= transform({prefix}claim_id, CAST(? AS Array(UInt64)), \
             CAST(? AS Array(UInt64)), toUInt64(18446744073709551615)))"
        )
    }

    /// Binds this snapshot's arrays to the four placeholders of one [`Self::condition`].
    pub fn bind(&self, query: clickhouse::query::Query) -> clickhouse::query::Query {
        self.arrays().bind(query)
    }
}

/// The compact form of a snapshot that says what is *new* since: for each partition, the
/// newest claim and its last committed flush then (the *head*). A row that counts now was
/// counted by the snapshot unless its `(claim_id, flush_seq)` is above its partition's head:
/// caps of older claims never change once a newer claim exists, so everything that counts
/// now and was written by an older claim already counted then. The rollup records the heads
/// of what it read, so readers can add exactly the plays committed after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotHeads {
    pub partitions: Vec<u64>,
    pub claim_ids: Vec<u64>,
    pub max_seqs: Vec<u64>,
}

impl SnapshotHeads {
    pub fn of(committed: &CommittedFlushes) -> Self {
        let mut heads = Self::default();
        for commits in committed.partitions.values() {
            heads.partitions.push(u64::from(commits.kafka_partition));
            heads.claim_ids.push(commits.newest_claim_id);
            heads.max_seqs.push(commits.newest_max_seq);
        }
        heads
    }

    fn head(&self, kafka_partition: u32) -> (u64, u64) {
        self.partitions
            .iter()
            .position(|partition| *partition == u64::from(kafka_partition))
            .map_or((0, 0), |index| {
                (self.claim_ids[index], self.max_seqs[index])
            })
    }

    /// Whether a row (that counts now) was committed after this snapshot.
    pub fn is_new(&self, kafka_partition: u32, claim_id: u64, flush_seq: u64) -> bool {
        (claim_id, flush_seq) > self.head(kafka_partition)
    }

    /// The SQL condition "committed after the snapshot" over `kafka_partition`, `claim_id`
    /// and `flush_seq` (prefixed with `prefix`), with six placeholders for [`Self::bind`].
    pub fn condition(prefix: &str) -> String {
        let head = |values: &str| {
            format!(
                "transform(toUInt64({prefix}kafka_partition), CAST(? AS Array(UInt64)),                  CAST(? AS Array({values})), toUInt64(0))"
            )
        };
        let head_claim = head("UInt64");
        let head_seq = head("UInt64");
        format!(
            "({prefix}claim_id > {head_claim} OR ({prefix}claim_id = {head_claim}              AND {prefix}flush_seq > {head_seq}))"
        )
    }

    /// Binds the six placeholders of one [`Self::condition`].
    pub fn bind(&self, query: clickhouse::query::Query) -> clickhouse::query::Query {
        let mut partitions = vec![NO_PARTITION];
        partitions.extend_from_slice(&self.partitions);
        let mut claim_ids = vec![NO_CLAIM];
        claim_ids.extend_from_slice(&self.claim_ids);
        let mut max_seqs = vec![0];
        max_seqs.extend_from_slice(&self.max_seqs);
        query
            .bind(&partitions)
            .bind(&claim_ids)
            .bind(&partitions)
            .bind(&claim_ids)
            .bind(&partitions)
            .bind(max_seqs)
    }
}

impl CommittedArrays {
    /// Binds the four arrays to the placeholders of one [`CommittedFlushes::condition`].
    pub fn bind(&self, query: clickhouse::query::Query) -> clickhouse::query::Query {
        query
            .bind(&self.partitions)
            .bind(&self.newest_claim_ids)
            .bind(&self.capped_claim_ids)
            .bind(&self.capped_max_seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(
        kafka_partition: u32,
        newest: u64,
        newest_max_seq: u64,
        older: &[(u64, u64)],
    ) -> PartitionCommits {
        let mut capped_claim_ids: Vec<u64> = older.iter().map(|(id, _)| *id).collect();
        let mut capped_max_seqs: Vec<u64> = older.iter().map(|(_, seq)| *seq).collect();
        capped_claim_ids.push(newest);
        capped_max_seqs.push(newest_max_seq);
        PartitionCommits {
            consumer_group: "g".to_owned(),
            topic: "plays".to_owned(),
            kafka_partition,
            newest_claim_id: newest,
            capped_claim_ids,
            capped_max_seqs,
            newest_max_seq,
            counted_through: 100,
            last_commit_at: DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    const EPOCH: u64 = 1 << 32;

    #[test]
    fn newest_claim_counts_up_to_its_latest_commit() {
        let committed =
            CommittedFlushes::from_rows(vec![partition(0, 3 * EPOCH + 7, 5, &[])]).unwrap();
        assert!(committed.counts(0, 3 * EPOCH + 7, 5));
        assert!(!committed.counts(0, 3 * EPOCH + 7, 6), "in flight");
        assert!(
            !committed.counts(0, 4 * EPOCH, 1),
            "claimed after the snapshot"
        );
        assert!(
            !committed.counts(1, 3 * EPOCH + 7, 1),
            "no claim on partition 1"
        );
    }

    #[test]
    fn older_claims_count_fully_unless_capped() {
        let released = EPOCH + 1;
        let crashed = 2 * EPOCH + 1;
        let lost_race = 2 * EPOCH + 2;
        let committed = CommittedFlushes::from_rows(vec![partition(
            0,
            3 * EPOCH,
            0,
            &[(crashed, 9), (lost_race, 0)],
        )])
        .unwrap();
        assert!(committed.counts(0, released, 1_000));
        assert!(committed.counts(0, crashed, 9));
        assert!(!committed.counts(0, crashed, 10));
        assert!(!committed.counts(0, lost_race, 1));
        assert!(!committed.counts(0, 3 * EPOCH, 1));
    }

    #[test]
    fn arrays_carry_sentinels_and_every_partition() {
        let committed = CommittedFlushes::from_rows(vec![
            partition(0, EPOCH, 2, &[]),
            partition(3, 2 * EPOCH, 4, &[(EPOCH + 5, 1)]),
        ])
        .unwrap();
        let arrays = committed.arrays();
        assert_eq!(arrays.partitions, vec![NO_PARTITION, 0, 3]);
        assert_eq!(arrays.newest_claim_ids, vec![0, EPOCH, 2 * EPOCH]);
        assert_eq!(
            arrays.capped_claim_ids,
            vec![0, EPOCH, EPOCH + 5, 2 * EPOCH]
        );
        assert_eq!(arrays.capped_max_seqs, vec![0, 2, 1, 4]);
        assert_eq!(CommittedFlushes::none().arrays().partitions.len(), 1);
    }

    #[test]
    fn condition_has_four_placeholders_and_the_prefix() {
        let sql = CommittedFlushes::condition("m.");
        assert_eq!(sql.matches('?').count(), 4);
        assert!(sql.contains("m.claim_id <= transform(toUInt64(m.kafka_partition)"));
        assert!(sql.contains("m.flush_seq <= transform(m.claim_id"));
    }

    #[test]
    fn heads_tell_what_is_new_since_a_snapshot() {
        let then = CommittedFlushes::from_rows(vec![partition(0, 2 * EPOCH, 5, &[])]).unwrap();
        let heads = SnapshotHeads::of(&then);
        assert!(!heads.is_new(0, 2 * EPOCH, 5));
        assert!(heads.is_new(0, 2 * EPOCH, 6));
        assert!(heads.is_new(0, 3 * EPOCH, 1));
        assert!(
            !heads.is_new(0, EPOCH, 100),
            "older claims' rows counted then"
        );
        assert!(
            heads.is_new(1, EPOCH, 1),
            "a partition without a claim then"
        );
        let sql = SnapshotHeads::condition("");
        assert_eq!(sql.matches('?').count(), 6);
    }

    #[test]
    fn two_owners_are_refused() {
        let mut other = partition(1, EPOCH, 1, &[]);
        other.consumer_group = "canary".to_owned();
        let error =
            CommittedFlushes::from_rows(vec![partition(0, EPOCH, 1, &[]), other]).unwrap_err();
        assert!(error.to_string().contains("group canary"), "{error}");
    }
}
