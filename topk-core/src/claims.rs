//! Claims: how a writer takes a Kafka partition over, so that no writer before it can ever
//! again add rows that count ("fencing").
//!
//! A claim is one row of `ingest_claims`. Its id is `epoch << 32 | partition << 16 | random`:
//! ids order claims of a partition by epoch, are unique across partitions, and a higher id is
//! a newer claim. Every minute row and commit a writer writes carries its claim id; see
//! [`crate::committed`] for how readers use it.
//!
//! Taking partition `p` over ([`claim_partition`]):
//!
//! 1. Read the claims of `p`; the newest is the *parent* (the previous owner, possibly still
//!    running: paused, partitioned away, or with a request stuck in the network).
//! 2. Insert the new claim with one `INSERT .. SELECT` that the server evaluates at once: it
//!    is written only if the parent is still the newest claim, and it records the parent's
//!    latest commit (`parent_max_seq`) *as the server sees it at that moment*. From then on
//!    the parent's flushes above `parent_max_seq` never count, whenever they land: a commit
//!    that landed before the claim is counted and resumed after, one that lands later is
//!    void. Unless the parent's last commit says it released the partition cleanly, the
//!    parent is added to the claim's capped list with that sequence; so are claims that lost
//!    a race to become newest (cap 0).
//! 3. Read back: the claim is ours only if it is now the one newest claim of `p`. Otherwise
//!    (a concurrent claim), start again.
//!
//! The claim records where it resumes (the parent's latest commit: its offset and duplicate
//! filter replay point), so the new owner re-reads exactly what the parent had not
//! committed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;

use crate::schema::{ClaimRow, FLUSH_COMMITS, INGEST_CLAIMS};

/// Kafka partitions a claim id has room for.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// How often [`claim_partition`] retries when another claim of the partition got in first.
pub(crate) const CLAIM_ATTEMPTS: u32 = 8;

/// The claim id of `epoch` for `partition`, with `random` breaking ties between claimers
/// that race for the same epoch.
pub fn claim_id(epoch: u64, partition: u32, random: u16) -> u64 {
    debug_assert!(partition < MAX_PARTITIONS);
    (epoch << 32) | (u64::from(partition) << 16) | u64::from(random)
}

pub fn epoch_of(claim_id: u64) -> u64 {
    claim_id >> 32
}

/// Who claims: the consumer group, the topic and this worker (for operators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOwner {
    pub consumer_group: String,
    pub topic: String,
    pub worker: String,
}

/// Where a partition resumes once claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The last offset counted, or `None` when nothing of the partition was ever counted.
    pub counted_through: Option<i64>,
    /// Where to start reading: the duplicate filter's replay point (re-read without
    /// counting), or the beginning of the partition.
    pub read_from: Option<i64>,
    /// The duplicate filter's watermark just before `read_from`.
    pub watermark_ms: i64,
}

/// A partition this writer owns until a newer claim exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub claim_id: u64,
    pub kafka_partition: u32,
    pub parent_claim_id: u64,
    /// The parent's last flush that counts.
    pub parent_max_seq: u64,
    pub parent_released: bool,
    pub resume: ResumePoint,
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error(
        "the database holds the claims of consumer group {found_group} on topic {found_topic}, \
         this writer is group {group} on topic {topic}: one database serves one aggregator \
         group on one topic (run a canary group against a database of its own)"
    )]
    OtherOwner {
        found_group: String,
        found_topic: String,
        group: String,
        topic: String,
    },
    #[error("partition {0} is beyond the {MAX_PARTITIONS} partitions a claim id can name")]
    PartitionTooHigh(u32),
    #[error("partition {partition}: another claim got in first {CLAIM_ATTEMPTS} times in a row")]
    Contended { partition: u32 },
    #[error(transparent)]
    Keeper(#[from] crate::keeper::KeeperError),
    #[error(
        "partition {partition}: the newest claim in Keeper is {found}, a claim this writer \
         made is not its parent; claims of this database are being made outside Keeper \
         (every aggregator and restore of a database must use the same --keeper-hosts)"
    )]
    Diverged { partition: u32, found: u64 },
    #[error(
        "partition {partition}: Keeper names claim {claim}, which ClickHouse has never seen, \
         nor its parent (the database was dropped or recreated, or points at another \
         database's Keeper nodes): remove {path} in Keeper, or use another --keeper-root; if \
         a replica is merely behind, this resolves itself"
    )]
    KeeperAhead {
        partition: u32,
        claim: u64,
        path: String,
    },
}

#[derive(Debug, Row, Deserialize)]
pub(crate) struct ClaimLink {
    claim_id: u64,
    parent_claim_id: u64,
}

impl ClaimLink {
    pub(crate) fn id(&self) -> u64 {
        self.claim_id
    }
}

#[derive(Debug, Row, Deserialize)]
struct Owner {
    consumer_group: String,
    topic: String,
}

/// Fails when the database holds claims of another consumer group or topic.
pub async fn check_owner(
    client: &clickhouse::Client,
    owner: &ClaimOwner,
) -> Result<(), ClaimError> {
    let owners: Vec<Owner> = client
        .query(&format!(
            "SELECT DISTINCT consumer_group, topic FROM {INGEST_CLAIMS} LIMIT 10"
        ))
        .fetch_all()
        .await?;
    match owners
        .into_iter()
        .find(|found| found.consumer_group != owner.consumer_group || found.topic != owner.topic)
    {
        None => Ok(()),
        Some(found) => Err(ClaimError::OtherOwner {
            found_group: found.consumer_group,
            found_topic: found.topic,
            group: owner.consumer_group.clone(),
            topic: owner.topic.clone(),
        }),
    }
}

/// Takes `partition` over (see the module docs). Retries when a concurrent claim gets in
/// first; ClickHouse errors are returned to the caller to retry.
pub async fn claim_partition(
    client: &clickhouse::Client,
    owner: &ClaimOwner,
    partition: u32,
) -> Result<Claim, ClaimError> {
    if partition >= MAX_PARTITIONS {
        return Err(ClaimError::PartitionTooHigh(partition));
    }
    check_owner(client, owner).await?;
    for _ in 0..CLAIM_ATTEMPTS {
        if let Attempt::Claimed(claim) = try_claim(client, owner, partition, None).await? {
            return Ok(claim);
        }
        contention_pause().await;
    }
    Err(ClaimError::Contended { partition })
}

/// Renews this writer's claim `current` of `partition` (after a write whose outcome is
/// unknown): a new claim whose parent is `current`, recording `current`'s latest commit.
/// `Ok(None)` when `current` is no longer the newest claim: another writer took over.
pub async fn renew_claim(
    client: &clickhouse::Client,
    owner: &ClaimOwner,
    partition: u32,
    current: u64,
) -> Result<Option<Claim>, ClaimError> {
    for _ in 0..CLAIM_ATTEMPTS {
        match try_claim(client, owner, partition, Some(current)).await? {
            Attempt::Claimed(claim) => return Ok(Some(claim)),
            Attempt::NotNewest => return Ok(None),
            Attempt::Raced => contention_pause().await,
        }
    }
    Err(ClaimError::Contended { partition })
}

pub(crate) async fn contention_pause() {
    let pause = Duration::from_millis(u64::from(rand::random::<u8>()) + 10);
    tokio::time::sleep(pause).await;
}

enum Attempt {
    Claimed(Claim),
    /// Another claim got in at the same time: try again.
    Raced,
    /// The claim to renew is no longer the newest.
    NotNewest,
}

async fn try_claim(
    client: &clickhouse::Client,
    owner: &ClaimOwner,
    partition: u32,
    expected_parent: Option<u64>,
) -> Result<Attempt, ClaimError> {
    let links: Vec<ClaimLink> = client
        .query(&format!(
            "SELECT claim_id, parent_claim_id FROM {INGEST_CLAIMS} WHERE kafka_partition = ?"
        ))
        .bind(partition)
        .fetch_all()
        .await?;
    let newest = links.iter().map(|link| link.claim_id).max();
    if let (Some(expected), Some(newest)) = (expected_parent, newest) {
        if newest != expected {
            // Our own renewal of `expected` that landed although we saw no answer (a
            // timeout): adopt it rather than take it for another owner.
            let row = read_claim(client, partition, newest).await?;
            if row.parent_claim_id == expected && row.worker == owner.worker {
                return Ok(Attempt::Claimed(claim_of(&row)));
            }
            return Ok(Attempt::NotNewest);
        }
    }
    let parent = match newest {
        Some(newest) => Some(read_claim(client, partition, newest).await?),
        None => None,
    };
    let (inherited_ids, inherited_seqs) = inherited_caps(parent.as_ref(), &links);
    let parent_id = parent.as_ref().map_or(0, |row| row.claim_id);
    let epoch = parent.as_ref().map_or(1, |row| epoch_of(row.claim_id) + 1);
    let new_id = claim_id(epoch, partition, rand::random());
    let (base_offset, base_replay_from, base_watermark_ms) =
        parent.as_ref().map_or((-1, 0, i64::MIN), |row| {
            (row.base_offset, row.base_replay_from, row.base_watermark_ms)
        });
    // One statement, evaluated by the server at once: written only while the parent is the
    // newest claim, recording the parent's latest commit as the server sees it now.
    let sql = format!(
        "INSERT INTO {INGEST_CLAIMS} (consumer_group, topic, kafka_partition, claim_id, worker, \
         claimed_at, parent_claim_id, parent_max_seq, parent_released, base_offset, \
         base_replay_from, base_watermark_ms, capped_claim_ids, capped_max_seqs) \
         SELECT ?, ?, toUInt32(?), toUInt64(?), ?, now(), toUInt64(?), head_seq, head_released, \
         if(head_seq > 0, head_offset, toInt64(?)), if(head_seq > 0, head_replay_from, toInt64(?)), \
         if(head_seq > 0, head_watermark_ms, toInt64(?)), \
         if(head_released = 1 OR toUInt64(?) = 0, CAST(? AS Array(UInt64)), \
            arrayConcat(CAST(? AS Array(UInt64)), [toUInt64(?)])), \
         if(head_released = 1 OR toUInt64(?) = 0, CAST(? AS Array(UInt64)), \
            arrayConcat(CAST(? AS Array(UInt64)), [head_seq])) \
         FROM (SELECT max(flush_seq) AS head_seq, argMax(released, flush_seq) AS head_released, \
         argMax(flush_offset, flush_seq) AS head_offset, \
         argMax(dedup_replay_from, flush_seq) AS head_replay_from, \
         argMax(watermark_ms, flush_seq) AS head_watermark_ms \
         FROM {FLUSH_COMMITS} WHERE kafka_partition = ? AND claim_id = ?) \
         WHERE (SELECT max(claim_id) FROM {INGEST_CLAIMS} WHERE kafka_partition = ?) = ?"
    );
    client
        .query(&sql)
        .bind(&owner.consumer_group)
        .bind(&owner.topic)
        .bind(partition)
        .bind(new_id)
        .bind(&owner.worker)
        .bind(parent_id)
        .bind(base_offset)
        .bind(base_replay_from)
        .bind(base_watermark_ms)
        .bind(parent_id)
        .bind(&inherited_ids)
        .bind(&inherited_ids)
        .bind(parent_id)
        .bind(parent_id)
        .bind(&inherited_seqs)
        .bind(&inherited_seqs)
        .bind(partition)
        .bind(parent_id)
        .bind(partition)
        .bind(parent_id)
        .execute()
        .await?;
    let newest: Vec<ClaimRow> = client
        .query(&format!(
            "SELECT ?fields FROM {INGEST_CLAIMS} WHERE kafka_partition = ? AND claim_id = \
             (SELECT max(claim_id) FROM {INGEST_CLAIMS} WHERE kafka_partition = ?)"
        ))
        .bind(partition)
        .bind(partition)
        .fetch_all()
        .await?;
    // Two rows with our id: another claimer drew the same random tie-breaker; both retry.
    let [ours] = newest.as_slice() else {
        return Ok(Attempt::Raced);
    };
    if ours.claim_id != new_id || ours.worker != owner.worker {
        return Ok(Attempt::Raced);
    }
    Ok(Attempt::Claimed(claim_of(ours)))
}

pub(crate) fn claim_of(row: &ClaimRow) -> Claim {
    Claim {
        claim_id: row.claim_id,
        kafka_partition: row.kafka_partition,
        parent_claim_id: row.parent_claim_id,
        parent_max_seq: row.parent_max_seq,
        parent_released: row.parent_released == 1,
        resume: resume_point(row),
    }
}

pub(crate) async fn read_claim(
    client: &clickhouse::Client,
    partition: u32,
    claim_id: u64,
) -> Result<ClaimRow, clickhouse::error::Error> {
    client
        .query(&format!(
            "SELECT ?fields FROM {INGEST_CLAIMS} WHERE kafka_partition = ? AND claim_id = ? \
             LIMIT 1"
        ))
        .bind(partition)
        .bind(claim_id)
        .fetch_one()
        .await
}

/// The capped claims a new claim inherits: its parent's list, plus every older claim of the
/// partition that is not an ancestor of the parent (it lost a race to become newest, so
/// none of its rows count), with cap 0 unless already capped.
pub(crate) fn inherited_caps(
    parent: Option<&ClaimRow>,
    links: &[ClaimLink],
) -> (Vec<u64>, Vec<u64>) {
    let Some(parent) = parent else {
        return (Vec::new(), Vec::new());
    };
    let mut caps: BTreeMap<u64, u64> = parent
        .capped_claim_ids
        .iter()
        .copied()
        .zip(parent.capped_max_seqs.iter().copied())
        .collect();
    let parents: BTreeMap<u64, u64> = links
        .iter()
        .map(|link| (link.claim_id, link.parent_claim_id))
        .collect();
    let mut ancestors = BTreeSet::new();
    let mut next = Some(parent.claim_id);
    while let Some(claim) = next {
        if !ancestors.insert(claim) {
            break;
        }
        next = parents.get(&claim).copied().filter(|id| *id != 0);
    }
    for link in links {
        if link.claim_id < parent.claim_id && !ancestors.contains(&link.claim_id) {
            caps.entry(link.claim_id).or_insert(0);
        }
    }
    caps.into_iter().unzip()
}

fn resume_point(claim: &ClaimRow) -> ResumePoint {
    if claim.base_offset < 0 {
        return ResumePoint {
            counted_through: None,
            read_from: None,
            watermark_ms: i64::MIN,
        };
    }
    ResumePoint {
        counted_through: Some(claim.base_offset),
        read_from: Some(claim.base_replay_from.min(claim.base_offset + 1)),
        watermark_ms: claim.base_watermark_ms,
    }
}

/// The newest claim of each of `partitions` that has one (the fence check before a flush).
pub async fn newest_claims(
    client: &clickhouse::Client,
    partitions: &[u32],
) -> Result<BTreeMap<u32, u64>, clickhouse::error::Error> {
    let rows: Vec<(u32, u64)> = client
        .query(&format!(
            "SELECT kafka_partition, max(claim_id) FROM {INGEST_CLAIMS} \
             WHERE has(CAST(? AS Array(UInt32)), kafka_partition) GROUP BY kafka_partition"
        ))
        .bind(partitions)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(claim_id: u64, parent: u64, capped: &[(u64, u64)]) -> ClaimRow {
        ClaimRow {
            consumer_group: "g".to_owned(),
            topic: "plays".to_owned(),
            kafka_partition: 0,
            claim_id,
            worker: "w".to_owned(),
            claimed_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            parent_claim_id: parent,
            parent_max_seq: 0,
            parent_released: 0,
            base_offset: -1,
            base_replay_from: 0,
            base_watermark_ms: 0,
            capped_claim_ids: capped.iter().map(|(id, _)| *id).collect(),
            capped_max_seqs: capped.iter().map(|(_, seq)| *seq).collect(),
        }
    }

    fn link(claim_id: u64, parent_claim_id: u64) -> ClaimLink {
        ClaimLink {
            claim_id,
            parent_claim_id,
        }
    }

    #[test]
    fn ids_order_by_epoch_and_name_their_partition() {
        let id = claim_id(3, 7, 0xffff);
        assert_eq!(epoch_of(id), 3);
        assert_eq!((id >> 16) & 0xffff, 7);
        assert!(claim_id(4, 0, 0) > claim_id(3, 65_535, 0xffff));
    }

    #[test]
    fn a_claim_that_lost_the_race_is_capped_at_nothing() {
        // 1 <- 2 <- 4 is the line of owners; 3 (same epoch as 4's parent... a concurrent
        // claimer) never became anyone's parent.
        let links = [link(1, 0), link(2, 1), link(3, 1), link(4, 2)];
        let parent = row(4, 2, &[(1, 10)]);
        let (ids, seqs) = inherited_caps(Some(&parent), &links);
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(seqs, vec![10, 0]);
        assert_eq!(inherited_caps(None, &links), (Vec::new(), Vec::new()));
    }

    #[test]
    fn resume_point_reads_from_the_replay_point() {
        let mut claim = row(5, 4, &[]);
        assert_eq!(resume_point(&claim).read_from, None);
        claim.base_offset = 99;
        claim.base_replay_from = 80;
        claim.base_watermark_ms = 1_000;
        assert_eq!(
            resume_point(&claim),
            ResumePoint {
                counted_through: Some(99),
                read_from: Some(80),
                watermark_ms: 1_000
            }
        );
        claim.base_replay_from = 500;
        assert_eq!(resume_point(&claim).read_from, Some(100));
    }
}
