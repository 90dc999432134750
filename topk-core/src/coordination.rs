//! Where claims and commits are decided: in ClickHouse itself (one server) or in ZooKeeper /
//! ClickHouse Keeper (a cluster). Readers never see the difference: both end in the rows of
//! `ingest_claims` and `flush_commits` that the committed rule reads ([`crate::committed`]).
//!
//! **ClickHouse** ([`Coordinator::ClickHouse`]): a claim is the one `INSERT … SELECT` of
//! [`crate::claims`], a commit a plain insert whose outcome, when unknown, is settled by
//! renewing the claim. Correct only while every writer goes through the same server.
//!
//! **Keeper** ([`Coordinator::Keeper`]): the partition's newest claim and that claim's latest
//! commit are one versioned node ([`crate::keeper`]); the rows in ClickHouse are its
//! *mirror*, written after the node changed:
//!
//! - a **claim** reads the node, writes the node's claim and head commit to the mirror (they
//!   may be missing: their writer may have died right after changing the node), then
//!   replaces the node by the new claim if its version is unchanged — of two claimers from
//!   the same parent one fails and starts again. Then the new claim is mirrored; the claim
//!   is returned only after that, so a writer never commits under an unmirrored claim.
//!   The new claim records the parent's head commit as the parent's cap and resume point,
//!   exactly as the SQL claim does.
//! - a **commit** replaces the node's head by the flush's commit if the node still names
//!   the writer's claim (a newer claim fences it: [`CommitOutcome::Fenced`]), then mirrors the
//!   commit row. A lost answer is settled by reading the node: the head names the flush or
//!   it does not, and the same compare-and-set sent again cannot apply twice. A writer
//!   commits its next flush only after the mirror has the previous one, so only the head
//!   can be missing from the mirror, and the next claim repairs it.
//!
//! What readers see: the mirror lags the node by at most the head commit and the newest
//! claim; a lagging mirror counts the newest flush late, never twice (a claim's cap is the
//! head in the node, which every mirrored commit of the parent is at or below).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::claims::{
    claim_id, claim_of, contention_pause, epoch_of, inherited_caps, Claim, ClaimError, ClaimLink,
    ClaimOwner, CLAIM_ATTEMPTS, MAX_PARTITIONS,
};
use crate::keeper::{Keeper, KeeperOptions, PartitionNode, Versioned};
use crate::schema::{ClaimRow, FlushCommitRow, FLUSH_COMMITS, INGEST_CLAIMS};

/// What became of a commit made through Keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The flush counts (it is in the node and in the mirror).
    Committed,
    /// A newer claim owns the partition: the flush never counts.
    Fenced,
}

/// Where claims and commits are decided (see the module docs).
#[derive(Debug, Clone)]
pub enum Coordinator {
    ClickHouse,
    Keeper(Arc<Keeper>),
}

impl Coordinator {
    /// Keeper when `options` name servers, else ClickHouse. Connects lazily.
    pub fn new(options: &KeeperOptions, database: &str) -> Result<Self, ClaimError> {
        if options.enabled() {
            Ok(Self::Keeper(Arc::new(Keeper::new(options, database)?)))
        } else {
            Ok(Self::ClickHouse)
        }
    }

    pub fn keeper(&self) -> Option<&Keeper> {
        match self {
            Self::ClickHouse => None,
            Self::Keeper(keeper) => Some(keeper),
        }
    }

    /// Takes `partition` over (see [`crate::claims::claim_partition`] for what a claim
    /// records).
    pub async fn claim_partition(
        &self,
        client: &clickhouse::Client,
        owner: &ClaimOwner,
        partition: u32,
    ) -> Result<Claim, ClaimError> {
        let Self::Keeper(keeper) = self else {
            return crate::claims::claim_partition(client, owner, partition).await;
        };
        if partition >= MAX_PARTITIONS {
            return Err(ClaimError::PartitionTooHigh(partition));
        }
        crate::claims::check_owner(client, owner).await?;
        for _ in 0..CLAIM_ATTEMPTS {
            if let Some(claim) = keeper_claim(keeper, client, owner, partition, None).await? {
                return Ok(claim);
            }
            contention_pause().await;
        }
        Err(ClaimError::Contended { partition })
    }

    /// Renews this writer's claim `current` (see [`crate::claims::renew_claim`]);
    /// `Ok(None)` when another writer took the partition over.
    pub async fn renew_claim(
        &self,
        client: &clickhouse::Client,
        owner: &ClaimOwner,
        partition: u32,
        current: u64,
    ) -> Result<Option<Claim>, ClaimError> {
        let Self::Keeper(keeper) = self else {
            return crate::claims::renew_claim(client, owner, partition, current).await;
        };
        for _ in 0..CLAIM_ATTEMPTS {
            match keeper_claim(keeper, client, owner, partition, Some(current)).await {
                Ok(Some(claim)) => return Ok(Some(claim)),
                Ok(None) => contention_pause().await,
                Err(ClaimError::Diverged { .. }) => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        Err(ClaimError::Contended { partition })
    }

    /// The newest claim of each of `partitions` that has one (the fence check before a
    /// flush).
    pub async fn newest_claims(
        &self,
        client: &clickhouse::Client,
        partitions: &[u32],
    ) -> Result<BTreeMap<u32, u64>, ClaimError> {
        let Self::Keeper(keeper) = self else {
            return Ok(crate::claims::newest_claims(client, partitions).await?);
        };
        let mut newest = BTreeMap::new();
        for partition in partitions {
            if let Some(versioned) = keeper.read(*partition).await? {
                newest.insert(*partition, versioned.node.claim.claim_id);
            }
        }
        Ok(newest)
    }
}

/// Commits one flush through Keeper, then mirrors the commit row (module docs). An error
/// leaves the outcome unknown; calling again with the same commit settles it.
pub async fn keeper_commit(
    keeper: &Keeper,
    client: &clickhouse::Client,
    commit: &FlushCommitRow,
) -> Result<CommitOutcome, ClaimError> {
    let outcome = keeper_commit_node(keeper, commit).await?;
    if outcome == CommitOutcome::Committed {
        mirror_commit(client, commit).await?;
    }
    Ok(outcome)
}

/// Commits one flush in its partition's node only; the caller mirrors the commit rows
/// ([`mirror_commits`]) before the partition's next flush. An error leaves the outcome
/// unknown; calling again with the same commit settles it.
pub async fn keeper_commit_node(
    keeper: &Keeper,
    commit: &FlushCommitRow,
) -> Result<CommitOutcome, ClaimError> {
    let partition = commit.kafka_partition;
    loop {
        let Some(Versioned { node, version }) = keeper.read(partition).await? else {
            // Every claim made through Keeper has a node: this claim was not.
            return Ok(CommitOutcome::Fenced);
        };
        if node.claim.claim_id != commit.claim_id {
            return Ok(CommitOutcome::Fenced);
        }
        let committed = node
            .head
            .as_ref()
            .is_some_and(|head| head.flush_seq >= commit.flush_seq);
        if !committed {
            let next = PartitionNode {
                claim: node.claim,
                head: Some(commit.clone()),
            };
            if !keeper.replace(partition, &next, version).await? {
                continue;
            }
        }
        return Ok(CommitOutcome::Committed);
    }
}

/// Writes commit rows committed in Keeper to the mirror in one insert (a flush's
/// partitions). Sent again after an unknown outcome it may write a row twice: harmless,
/// readers take the highest sequence of a claim.
pub async fn mirror_commits(
    client: &clickhouse::Client,
    commits: &[&FlushCommitRow],
) -> Result<(), clickhouse::error::Error> {
    if commits.is_empty() {
        return Ok(());
    }
    let mut insert = client.insert::<FlushCommitRow>(FLUSH_COMMITS).await?;
    for commit in commits {
        insert.write(*commit).await?;
    }
    insert.end().await
}

/// One claim attempt through Keeper: `Ok(None)` when the node changed under it (try again).
/// With `expected_parent`, a renewal: `Err(Diverged)` when the newest claim is another
/// writer's.
async fn keeper_claim(
    keeper: &Keeper,
    client: &clickhouse::Client,
    owner: &ClaimOwner,
    partition: u32,
    expected_parent: Option<u64>,
) -> Result<Option<Claim>, ClaimError> {
    let Some(Versioned { node, version }) = keeper.read(partition).await? else {
        return bootstrap(keeper, client, owner, partition, expected_parent).await;
    };
    if node.claim.consumer_group != owner.consumer_group || node.claim.topic != owner.topic {
        return Err(ClaimError::OtherOwner {
            found_group: node.claim.consumer_group,
            found_topic: node.claim.topic,
            group: owner.consumer_group.clone(),
            topic: owner.topic.clone(),
        });
    }
    // The node's claim or its parent is in the mirror unless the database was recreated
    // under the node (a writer writes its claim to the mirror before anything else, and the
    // claimer before it wrote the parent).
    if node.claim.parent_claim_id != 0
        && !mirrored(
            client,
            partition,
            &[node.claim.claim_id, node.claim.parent_claim_id],
        )
        .await?
    {
        return Err(ClaimError::KeeperAhead {
            partition,
            claim: node.claim.claim_id,
            path: keeper.partition_path(partition),
        });
    }
    if let Some(expected) = expected_parent {
        if node.claim.claim_id != expected {
            // Our own renewal of `expected` that applied although its answer was lost.
            if node.claim.parent_claim_id == expected && node.claim.worker == owner.worker {
                mirror_node(client, &node).await?;
                return Ok(Some(claim_of(&node.claim)));
            }
            return Err(ClaimError::Diverged {
                partition,
                found: node.claim.claim_id,
            });
        }
    }
    // The parent's rows and head may be missing from the mirror (their writer died right
    // after changing the node): readers need them before the parent stops being newest.
    mirror_node(client, &node).await?;
    let claim = successor(
        owner,
        partition,
        &node.claim,
        node.head.as_ref(),
        &node.claim.capped_claim_ids,
        &node.claim.capped_max_seqs,
    );
    let next = PartitionNode { claim, head: None };
    if !keeper.replace(partition, &next, version).await? {
        return Ok(None);
    }
    mirror_node(client, &next).await?;
    Ok(Some(claim_of(&next.claim)))
}

/// The first claim of a partition through Keeper: its parent is the newest claim in
/// ClickHouse, if any (a database that coordinated in ClickHouse until now — switched with
/// every aggregator stopped, see docs/operations.md).
async fn bootstrap(
    keeper: &Keeper,
    client: &clickhouse::Client,
    owner: &ClaimOwner,
    partition: u32,
    expected_parent: Option<u64>,
) -> Result<Option<Claim>, ClaimError> {
    let links: Vec<ClaimLink> = client
        .query(&format!(
            "SELECT claim_id, parent_claim_id FROM {INGEST_CLAIMS} WHERE kafka_partition = ?"
        ))
        .bind(partition)
        .fetch_all()
        .await?;
    let newest = links.iter().map(ClaimLink::id).max();
    if let Some(expected) = expected_parent {
        if newest != Some(expected) {
            return Err(ClaimError::Diverged {
                partition,
                found: newest.unwrap_or(0),
            });
        }
    }
    let claim = match newest {
        None => successor(
            owner,
            partition,
            &no_parent(owner, partition),
            None,
            &[],
            &[],
        ),
        Some(newest) => {
            let parent = crate::claims::read_claim(client, partition, newest).await?;
            let head: Option<FlushCommitRow> = client
                .query(&format!(
                    "SELECT ?fields FROM {FLUSH_COMMITS} WHERE kafka_partition = ? \
                     AND claim_id = ? ORDER BY flush_seq DESC LIMIT 1"
                ))
                .bind(partition)
                .bind(newest)
                .fetch_optional()
                .await?;
            let (ids, seqs) = inherited_caps(Some(&parent), &links);
            successor(owner, partition, &parent, head.as_ref(), &ids, &seqs)
        }
    };
    let node = PartitionNode { claim, head: None };
    if !keeper.create(partition, &node).await? {
        return Ok(None);
    }
    mirror_node(client, &node).await?;
    Ok(Some(claim_of(&node.claim)))
}

/// Claim id 0 with nothing committed: the parent of a partition's first claim.
fn no_parent(owner: &ClaimOwner, partition: u32) -> ClaimRow {
    ClaimRow {
        consumer_group: owner.consumer_group.clone(),
        topic: owner.topic.clone(),
        kafka_partition: partition,
        claim_id: 0,
        worker: String::new(),
        claimed_at: chrono::DateTime::UNIX_EPOCH,
        parent_claim_id: 0,
        parent_max_seq: 0,
        parent_released: 0,
        base_offset: -1,
        base_replay_from: 0,
        base_watermark_ms: i64::MIN,
        capped_claim_ids: Vec::new(),
        capped_max_seqs: Vec::new(),
    }
}

/// The claim that takes over from `parent` whose latest commit is `head`, exactly as the
/// SQL claim of [`crate::claims`] computes it: resume after the head, cap the parent at it
/// unless it released the partition cleanly, inherit the parent's caps (`caps`).
fn successor(
    owner: &ClaimOwner,
    partition: u32,
    parent: &ClaimRow,
    head: Option<&FlushCommitRow>,
    capped_ids: &[u64],
    capped_seqs: &[u64],
) -> ClaimRow {
    let head_seq = head.map_or(0, |head| head.flush_seq);
    let released = head.is_some_and(|head| head.released == 1);
    let (base_offset, base_replay_from, base_watermark_ms) = match head {
        Some(head) if head.flush_seq > 0 => {
            (head.flush_offset, head.dedup_replay_from, head.watermark_ms)
        }
        _ => (
            parent.base_offset,
            parent.base_replay_from,
            parent.base_watermark_ms,
        ),
    };
    let mut capped_claim_ids = capped_ids.to_vec();
    let mut capped_max_seqs = capped_seqs.to_vec();
    if !released && parent.claim_id != 0 {
        capped_claim_ids.push(parent.claim_id);
        capped_max_seqs.push(head_seq);
    }
    let epoch = if parent.claim_id == 0 {
        1
    } else {
        epoch_of(parent.claim_id) + 1
    };
    ClaimRow {
        consumer_group: owner.consumer_group.clone(),
        topic: owner.topic.clone(),
        kafka_partition: partition,
        claim_id: claim_id(epoch, partition, rand::random()),
        worker: owner.worker.clone(),
        claimed_at: now_seconds(),
        parent_claim_id: parent.claim_id,
        parent_max_seq: head_seq,
        parent_released: u8::from(released),
        base_offset,
        base_replay_from,
        base_watermark_ms,
        capped_claim_ids,
        capped_max_seqs,
    }
}

fn now_seconds() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now().timestamp();
    chrono::DateTime::from_timestamp(now, 0).unwrap_or_default()
}

/// Whether any of `claims` of `partition` is in the mirror.
async fn mirrored(
    client: &clickhouse::Client,
    partition: u32,
    claims: &[u64],
) -> Result<bool, clickhouse::error::Error> {
    let found: u64 = client
        .query(&format!(
            "SELECT count() FROM {INGEST_CLAIMS} WHERE kafka_partition = ? \
             AND has(CAST(? AS Array(UInt64)), claim_id)"
        ))
        .bind(partition)
        .bind(claims)
        .fetch_one()
        .await?;
    Ok(found > 0)
}

/// Writes the node's claim and head commit to the mirror where they are missing.
async fn mirror_node(
    client: &clickhouse::Client,
    node: &PartitionNode,
) -> Result<(), clickhouse::error::Error> {
    let claim = &node.claim;
    let present = client
        .query(&format!(
            "SELECT count() FROM {INGEST_CLAIMS} WHERE kafka_partition = ? AND claim_id = ?"
        ))
        .bind(claim.kafka_partition)
        .bind(claim.claim_id);
    insert_unless_present(client, INGEST_CLAIMS, present, claim).await?;
    if let Some(head) = &node.head {
        mirror_commit(client, head).await?;
    }
    Ok(())
}

/// Writes a commit row to the mirror unless it is there already (a duplicate would be
/// harmless: readers take the highest sequence).
async fn mirror_commit(
    client: &clickhouse::Client,
    commit: &FlushCommitRow,
) -> Result<(), clickhouse::error::Error> {
    let present = client
        .query(&format!(
            "SELECT count() FROM {FLUSH_COMMITS} WHERE kafka_partition = ? AND claim_id = ? \
             AND flush_seq = ?"
        ))
        .bind(commit.kafka_partition)
        .bind(commit.claim_id)
        .bind(commit.flush_seq);
    insert_unless_present(client, FLUSH_COMMITS, present, commit).await
}

/// Inserts `row` into `table` when `present` (a `SELECT count()`) finds none like it.
async fn insert_unless_present<T: clickhouse::RowOwned + clickhouse::RowWrite>(
    client: &clickhouse::Client,
    table: &str,
    present: clickhouse::query::Query,
    row: &T,
) -> Result<(), clickhouse::error::Error> {
    if present.fetch_one::<u64>().await? > 0 {
        return Ok(());
    }
    let mut insert = client.insert::<T>(table).await?;
    insert.write(row).await?;
    insert.end().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> ClaimOwner {
        ClaimOwner {
            consumer_group: "g".to_owned(),
            topic: "plays".to_owned(),
            worker: "w2".to_owned(),
        }
    }

    fn commit(claim_id: u64, seq: u64, offset: i64, released: u8) -> FlushCommitRow {
        FlushCommitRow {
            consumer_group: "g".to_owned(),
            topic: "plays".to_owned(),
            kafka_partition: 3,
            claim_id,
            flush_seq: seq,
            flush_offset: offset,
            dedup_replay_from: offset - 10,
            watermark_ms: 77,
            events: 1,
            minute_rows: 1,
            minute_days: Vec::new(),
            released,
            worker: "w1".to_owned(),
            flushed_at: chrono::DateTime::UNIX_EPOCH,
            records_through_ms: 0,
            minute_hours: Vec::new(),
        }
    }

    #[test]
    fn a_successor_caps_an_unreleased_parent_at_its_head_and_resumes_after_it() {
        let mut parent = no_parent(&owner(), 3);
        parent.claim_id = claim_id(4, 3, 9);
        parent.capped_claim_ids = vec![claim_id(2, 3, 1)];
        parent.capped_max_seqs = vec![5];
        let head = commit(parent.claim_id, 7, 1_000, 0);
        let next = successor(
            &owner(),
            3,
            &parent,
            Some(&head),
            &parent.capped_claim_ids,
            &parent.capped_max_seqs,
        );
        assert_eq!(epoch_of(next.claim_id), 5);
        assert!(next.claim_id > parent.claim_id);
        assert_eq!(
            (next.parent_claim_id, next.parent_max_seq),
            (parent.claim_id, 7)
        );
        assert_eq!(
            next.capped_claim_ids,
            vec![claim_id(2, 3, 1), parent.claim_id]
        );
        assert_eq!(next.capped_max_seqs, vec![5, 7]);
        assert_eq!(
            (
                next.base_offset,
                next.base_replay_from,
                next.base_watermark_ms
            ),
            (1_000, 990, 77)
        );
        let resume = claim_of(&next).resume;
        assert_eq!(resume.counted_through, Some(1_000));
    }

    #[test]
    fn a_successor_of_a_released_parent_does_not_cap_it() {
        let mut parent = no_parent(&owner(), 3);
        parent.claim_id = claim_id(1, 3, 9);
        let head = commit(parent.claim_id, 2, 50, 1);
        let next = successor(&owner(), 3, &parent, Some(&head), &[], &[]);
        assert!(next.capped_claim_ids.is_empty());
        assert_eq!(next.parent_released, 1);
    }

    #[test]
    fn a_first_claim_has_epoch_one_and_resumes_at_the_start() {
        let next = successor(&owner(), 3, &no_parent(&owner(), 3), None, &[], &[]);
        assert_eq!(epoch_of(next.claim_id), 1);
        assert_eq!(next.parent_claim_id, 0);
        assert!(next.capped_claim_ids.is_empty());
        assert_eq!(claim_of(&next).resume.counted_through, None);
    }

    #[test]
    fn a_parent_without_commits_is_capped_at_nothing_and_resumes_where_it_did() {
        let mut parent = no_parent(&owner(), 3);
        parent.claim_id = claim_id(3, 3, 1);
        parent.base_offset = 40;
        parent.base_replay_from = 30;
        let next = successor(&owner(), 3, &parent, None, &[], &[]);
        assert_eq!(next.capped_max_seqs, vec![0]);
        assert_eq!((next.base_offset, next.base_replay_from), (40, 30));
    }
}
