//! Exactly-once flushes: claims, commits, and why every valid event counts exactly once.
//!
//! # The argument
//!
//! ClickHouse has no transactions across inserts and no compare-and-set, an insert whose rows
//! fall into two day partitions is written as two parts, a crash can happen anywhere, a
//! response can be lost after the server committed, a request can sit in the network and
//! land long after its sender gave up, and a paused worker can wake up after its partitions
//! moved. So neither "the insert returned" nor Kafka's committed offset can say what counts.
//! Instead (see `topk_core::claims` for the protocol and `topk_core::committed` for the rule
//! readers apply):
//!
//! 1. **Claims.** Before it reads a partition a worker *claims* it: a row in `ingest_claims`
//!    whose id is higher than every earlier claim of the partition, inserted by one
//!    statement that the server evaluates at once — written only while the previous claim
//!    (the parent) is the newest, and recording the parent's latest commit as the server
//!    sees it then. The worker resumes exactly after that commit.
//! 2. **Tagged flushes.** Every minute row carries `(claim_id, flush_seq)`; a flush writes
//!    its rows, then one *commit* row per partition (`flush_commits`, a single-block insert:
//!    atomic). A claim's flushes are written one after the other, each only once the
//!    previous one committed, so a claim's commits are `1..=n` with no gaps.
//! 3. **The rule.** A row counts when its claim is the partition's newest and its flush is
//!    committed, or its claim is older and its flush is at most the cap the next claim
//!    recorded (no cap when the older claim's last commit says it released the partition
//!    cleanly, i.e. every request it ever sent was answered). Readers — the API, the
//!    rollup, the restore, the `*_committed` views — apply only this rule.
//!
//! On a ClickHouse cluster the coordination tables are replicated and a statement is atomic
//! only on the replica that runs it, so claims and commits are decided in ZooKeeper /
//! ClickHouse Keeper instead (`--keeper-hosts`): a claim and a commit are compare-and-sets on
//! the partition's versioned node, then mirrored into the same tables, and the rule above is
//! unchanged (see `topk_core::coordination`). A commit whose outcome is unknown is settled by
//! reading the node rather than by renewing the claim, and the flush's rows are not sent again.
//!
//! Every way a flush could be counted twice or not at all, and why it cannot:
//!
//! - **Case 1, fencing** (a paused worker, a slow rolling deploy, a write that outlives its
//!   deadline): the old owner's rows and commits that land after the new claim are above
//!   the cap the new claim recorded, so they never count, whatever their timing. A commit
//!   that landed before the new claim is below the cap and the new owner resumed after it.
//!   Before each flush the worker checks that its claim is still the newest and drops the
//!   partitions it lost without writing them; on a lost assignment it drops them without a
//!   final flush; a revoke bounds its final flush by a deadline and then stops its queries
//!   on the server (`KILL QUERY .. SYNC`) before the partitions are handed on.
//! - **Case 2, ambiguous commits** (a lost response, a timeout): whether a flush committed
//!   is read from ClickHouse, never inferred from the client error. The worker stops its
//!   inserts still running on the server, then renews its claim; the renewed claim records
//!   the latest commit the server has. If it includes the flush, the flush is done; if not,
//!   the flush is retried as the new claim's first, and the old claim is capped below it —
//!   so a part of the failed attempt that lands later (even one still in the network)
//!   never counts. Nothing is deleted to make this work.
//! - **Case 3, repair by count**: correctness no longer depends on a DELETE, or on counting
//!   rows first. Rows that will never count are removed in the background
//!   ([`remove_uncommitted_rows`]): the DELETE is always issued, and only its own mutation
//!   is waited for, so the rollup's or the restore's work never blocks a worker.
//! - **Case 4, readers see uncommitted flushes**: readers count committed flushes only, so a
//!   crash, a flush in flight or a cleanup in progress is invisible to the API, the rollup
//!   and the restore.
//! - **Case 5, replay at the edges**: every record is judged against the window ending at
//!   its own Kafka timestamp (`Window::for_record`), not at the moment it is read, so the
//!   re-read after a crash decides each record — valid, too old, too far in the future —
//!   exactly as the first read did, and rebuilds the same duplicate filter (its replay
//!   point and watermark come with the commit; see `topk_core::dedup`). An offset gap is
//!   never counted past: the partition is read again from the missing offset, then from
//!   further back (a broker that answers a fetch inside a record batch with the next batch
//!   skips the same records again; see `shard::gap_seek_target`), and a gap that persists
//!   after that fails the partition loudly (`/healthz`). A gap no later record shows (no
//!   record arrives although the broker reports more) is re-read the same way
//!   (`consumer::TailWatch`).
//! - **Case 6, late data**: each commit lists the days its rows fall on; the rollup records
//!   exactly which commits it read, so any later commit touching a day is seen, whatever
//!   the totals.
//! - **Case 7, production settings**: the inserts run with `async_insert = 0` where the
//!   server knows the setting (an asynchronous insert would acknowledge before the rows
//!   are in a part); claims and commits carry the consumer group, and a database serves one
//!   group on one topic (a canary group is refused, see `topk_core::claims::check_owner`).
//!   Durability across power loss needs `fsync_after_insert` (docs/operations.md).
//!
//! Two bounds remain, both documented in docs/operations.md: a zombie's commit that the
//! server executes at the very same moment as the new claim may be visible for that moment
//! and then stop counting (it never counts twice); and a claim insert that was stuck in the
//! network and lands late is refused by the server unless its parent is still the newest.

use std::time::Duration;
use topk_core::cluster::Placement;

use topk_core::schema::{CHART_MINUTE, PLAYS_MINUTE};

/// How long a cleanup waits for its own delete mutation before giving up (it is only
/// cleanup: the rows it removes never count).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(600);

/// How long stopping a flush's queries on the server may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure none of `query_ids` is still running on the server: `KILL QUERY .. SYNC`,
/// then a check of `system.processes`. An error means it could not be made sure of (the
/// server is unreachable): the caller tries again later.
pub async fn kill_queries(
    client: &clickhouse::Client,
    query_ids: &[String],
) -> Result<(), clickhouse::error::Error> {
    if query_ids.is_empty() {
        return Ok(());
    }
    let running = || {
        client
            .query("SELECT count() FROM system.processes WHERE has(?, query_id)")
            .bind(query_ids)
    };
    if running().fetch_one::<u64>().await? == 0 {
        return Ok(());
    }
    // ClickHouse 18.16 refuses to kill an insert whose body it is reading ("unkillable
    // stages"): such an insert ends by itself once its body is in or its client is gone,
    // so a refused kill is followed by waiting, like a successful one.
    if let Err(error) = client
        .query("KILL QUERY WHERE has(?, query_id) SYNC")
        .bind(query_ids)
        .execute()
        .await
    {
        tracing::debug!(%error, "KILL QUERY refused; waiting for the queries to end");
    }
    let deadline = tokio::time::Instant::now() + KILL_TIMEOUT;
    loop {
        if running().fetch_one::<u64>().await? == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(clickhouse::error::Error::Custom(format!(
                "queries {query_ids:?} still running after KILL QUERY"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes, in the background and after `delay`, the minute rows of `claim_id` above flush
/// `above_seq`: rows of a flush that will never count (see [`remove_uncommitted_rows`]).
///
/// The delay outlasts ClickHouse's ZooKeeper session timeout, so that an owner that died
/// mid-insert with its node no longer holds a block number of the table. A mutation issued
/// while one is held cannot finish before it is released on any version, and on ClickHouse
/// 18.x every replica that tries to finalize it then segfaults (`tryFinalizeMutations` reads
/// the last of zero finished mutations). A cleanup still waiting when the process exits is
/// dropped: the rows never count, and leave with their day's partition.
pub fn spawn_cleanup(
    client: clickhouse::Client,
    placement: Placement,
    claim_id: u64,
    above_seq: u64,
    delay: Duration,
) {
    tokio::spawn(async move {
        tracing::info!(
            claim = claim_id,
            above_seq,
            ?delay,
            "rows of uncommitted flushes will be removed"
        );
        tokio::time::sleep(delay).await;
        match remove_uncommitted_rows(&client, &placement, claim_id, above_seq).await {
            Ok(()) => tracing::info!(
                claim = claim_id,
                above_seq,
                "rows of uncommitted flushes removed"
            ),
            Err(error) => {
                tracing::warn!(claim = claim_id, above_seq, %error, "removing rows of uncommitted flushes failed (they never count)")
            }
        }
    });
}

/// Deletes the minute rows (and their chart rows) of `claim_id` with `flush_seq > above_seq` and waits for these
/// mutations only. Always issued (never skipped because a count said 0): the rows never
/// count either way, this only frees their space. On a cluster the DELETE runs on every
/// shard's local table ([`Placement::alter`]), and the wait looks at one replica of each shard.
pub async fn remove_uncommitted_rows(
    client: &clickhouse::Client,
    placement: &Placement,
    claim_id: u64,
    above_seq: u64,
) -> Result<(), clickhouse::error::Error> {
    // Literal numbers, so that this mutation can be told apart in system.mutations.
    let command = format!("DELETE WHERE claim_id = {claim_id} AND flush_seq > {above_seq}");
    for table in [PLAYS_MINUTE, CHART_MINUTE] {
        placement.alter(client, table, &command, &[]).await?;
    }
    // This claim id as a whole number in the mutation's text (18.16 shows
    // `DELETE WHERE ..`, current releases `(DELETE WHERE ..)`).
    let ours = format!("(^|[^0-9]){claim_id}([^0-9]|$)");
    let deadline = tokio::time::Instant::now() + CLEANUP_TIMEOUT;
    loop {
        let mut pending = 0;
        for table in [PLAYS_MINUTE, CHART_MINUTE] {
            let table_pending: u64 = client
                .query(&format!(
                    "SELECT count() {} AND is_done = 0 AND match(command, ?)",
                    placement.system_rows_of("mutations", table)
                ))
                .bind(&ours)
                .fetch_one()
                .await?;
            pending += table_pending;
        }
        if pending == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(clickhouse::error::Error::Custom(format!(
                "the delete of claim {claim_id}'s uncommitted rows is not done after {CLEANUP_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
