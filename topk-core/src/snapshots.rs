//! Rollup snapshots: which snapshot of a day's top lists is current, and which days had
//! plays committed after their current snapshot was taken. The rollup decides what to roll
//! up again with these, and the API what to add to a day's top lists; one definition serves
//! both.
//!
//! A rollup of day D writes its top lists into `daily_top` tagged with a snapshot id, then
//! records the snapshot in `rollup_progress` with the heads of what it read
//! ([`SnapshotHeads`]). The current snapshot of D is the recorded one with the highest id;
//! rows of other snapshots are never read. A snapshot id of 0 is a rollup from before schema
//! 4, which recorded nothing of what it read: such a day is treated as not rolled up.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;

use crate::committed::{CommittedFlushes, SnapshotHeads};
use crate::schema::{
    ChartSnapshotRow, RollupProgressRow, CHART_SNAPSHOTS, FLUSH_COMMITS, ROLLUP_PROGRESS,
};
use crate::window::{day_from_number, day_number};

/// A recorded snapshot of one day and the heads of what it read: a daily rollup
/// ([`RollupProgressRow`]) or a chart rollup ([`ChartSnapshotRow`]).
pub trait DaySnapshot {
    fn day(&self) -> NaiveDate;
    /// Per Kafka partition: (partition, newest claim, its last committed flush).
    fn heads(&self) -> (&[u64], &[u64], &[u64]);
}

impl DaySnapshot for RollupProgressRow {
    fn day(&self) -> NaiveDate {
        self.day
    }

    fn heads(&self) -> (&[u64], &[u64], &[u64]) {
        (
            &self.snapshot_partitions,
            &self.snapshot_newest_claim_ids,
            &self.snapshot_newest_max_seqs,
        )
    }
}

impl DaySnapshot for ChartSnapshotRow {
    fn day(&self) -> NaiveDate {
        self.day
    }

    fn heads(&self) -> (&[u64], &[u64], &[u64]) {
        (
            &self.snapshot_partitions,
            &self.snapshot_newest_claim_ids,
            &self.snapshot_newest_max_seqs,
        )
    }
}

/// The latest rollup of every day from `first` to `last` (inclusive) that has one (with
/// snapshot id 0 for a rollup from before schema 4).
pub async fn latest_rollups(
    client: &clickhouse::Client,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<BTreeMap<NaiveDate, RollupProgressRow>, clickhouse::error::Error> {
    let rows: Vec<RollupProgressRow> = client
        .query(&format!(
            "SELECT ?fields FROM {ROLLUP_PROGRESS} WHERE day >= toDate(?) AND day <= toDate(?) \
             ORDER BY day, snapshot_id DESC, rolled_up_at DESC LIMIT 1 BY day"
        ))
        .bind(first.to_string())
        .bind(last.to_string())
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|row| (row.day, row)).collect())
}

/// The heads a rollup recorded.
pub fn recorded_heads(progress: &RollupProgressRow) -> SnapshotHeads {
    SnapshotHeads {
        partitions: progress.snapshot_partitions.clone(),
        claim_ids: progress.snapshot_newest_claim_ids.clone(),
        max_seqs: progress.snapshot_newest_max_seqs.clone(),
    }
}

/// The heads of several days' snapshots as one lookup keyed by
/// `day_number * 65536 + kafka_partition` (the form readers bind into SQL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayHeads {
    pub keys: Vec<u64>,
    pub claim_ids: Vec<u64>,
    pub max_seqs: Vec<u64>,
}

impl DayHeads {
    pub fn of<'a, S: DaySnapshot + 'a>(snapshots: impl IntoIterator<Item = &'a S>) -> Self {
        let mut heads = Self::default();
        for snapshot in snapshots {
            let day = u64::from(day_number(snapshot.day()));
            let (partitions, claim_ids, max_seqs) = snapshot.heads();
            for ((partition, claim_id), max_seq) in partitions.iter().zip(claim_ids).zip(max_seqs) {
                heads.keys.push(day * 65_536 + partition);
                heads.claim_ids.push(*claim_id);
                heads.max_seqs.push(*max_seq);
            }
        }
        heads
    }

    /// Whether a row of `day` (that counts now) was committed after that day's snapshot.
    pub fn is_new(
        &self,
        day: NaiveDate,
        kafka_partition: u32,
        claim_id: u64,
        flush_seq: u64,
    ) -> bool {
        let key = u64::from(day_number(day)) * 65_536 + u64::from(kafka_partition);
        let head = self
            .keys
            .iter()
            .position(|candidate| *candidate == key)
            .map_or((0, 0), |index| {
                (self.claim_ids[index], self.max_seqs[index])
            });
        (claim_id, flush_seq) > head
    }

    /// The SQL condition "committed after its day's snapshot" for a row whose day number is
    /// `day_expression`, over `kafka_partition`, `claim_id`, `flush_seq`; six placeholders
    /// for [`Self::bind`].
    pub fn condition(day_expression: &str) -> String {
        let key = format!("toUInt64({day_expression}) * 65536 + kafka_partition");
        let head = || {
            format!(
                "transform({key}, CAST(? AS Array(UInt64)), CAST(? AS Array(UInt64)), toUInt64(0))"
            )
        };
        let (head_claim, head_seq) = (head(), head());
        format!("(claim_id > {head_claim} OR (claim_id = {head_claim} AND flush_seq > {head_seq}))")
    }

    pub fn bind(&self, query: clickhouse::query::Query) -> clickhouse::query::Query {
        // A sentinel key no row has keeps the arrays non-empty (18.16's transform refuses
        // empty arrays).
        let mut keys = vec![u64::MAX];
        keys.extend_from_slice(&self.keys);
        let mut claim_ids = vec![0];
        claim_ids.extend_from_slice(&self.claim_ids);
        let mut max_seqs = vec![0];
        max_seqs.extend_from_slice(&self.max_seqs);
        query
            .bind(&keys)
            .bind(&claim_ids)
            .bind(&keys)
            .bind(&claim_ids)
            .bind(&keys)
            .bind(max_seqs)
    }
}

/// The days among `snapshots` (current snapshots, by day) for which a flush that counts in
/// `committed` wrote minute rows after the day's snapshot was taken.
pub async fn days_with_new_commits<S: DaySnapshot>(
    client: &clickhouse::Client,
    committed: &CommittedFlushes,
    snapshots: &BTreeMap<NaiveDate, S>,
) -> Result<BTreeSet<NaiveDate>, clickhouse::error::Error> {
    let found: Vec<u16> = new_commit_values(
        client,
        committed,
        snapshots,
        "arrayJoin(minute_days)",
        "toUInt16(value)",
    )
    .await?;
    Ok(found.into_iter().map(day_from_number).collect())
}

/// The distinct `value`s (`value_expression` over a commit's row, an `arrayJoin` of one of
/// its arrays) of the commits that count in `committed`, list a day of `snapshots` and came
/// after that day's snapshot; `day_of_value` is the day number of a value.
async fn new_commit_values<S: DaySnapshot, T>(
    client: &clickhouse::Client,
    committed: &CommittedFlushes,
    snapshots: &BTreeMap<NaiveDate, S>,
    value_expression: &str,
    day_of_value: &str,
) -> Result<Vec<T>, clickhouse::error::Error>
where
    T: clickhouse::RowOwned + clickhouse::RowRead,
{
    if snapshots.is_empty() {
        return Ok(Vec::new());
    }
    let days: Vec<u16> = snapshots.keys().copied().map(day_number).collect();
    let heads = DayHeads::of(snapshots.values());
    let query = client
        .query(&format!(
            "SELECT DISTINCT value FROM (SELECT {value_expression} AS value, kafka_partition, \
             claim_id, flush_seq FROM {FLUSH_COMMITS} \
             WHERE hasAny(minute_days, CAST(? AS Array(Date))) AND {committed}) \
             WHERE has(CAST(? AS Array(UInt16)), toUInt16({day_of_value})) AND {new}",
            committed = CommittedFlushes::condition(""),
            new = DayHeads::condition(day_of_value),
        ))
        .bind(&days);
    let query = committed.bind(query).bind(&days);
    heads.bind(query).fetch_all().await
}

/// The latest chart rollup of every day from `first` to `last` (inclusive) that has one.
pub async fn latest_chart_snapshots(
    client: &clickhouse::Client,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<BTreeMap<NaiveDate, ChartSnapshotRow>, clickhouse::error::Error> {
    let rows: Vec<ChartSnapshotRow> = client
        .query(&format!(
            "SELECT ?fields FROM {CHART_SNAPSHOTS} WHERE day >= toDate(?) AND day <= toDate(?) \
             ORDER BY day, snapshot_id DESC LIMIT 1 BY day"
        ))
        .bind(first.to_string())
        .bind(last.to_string())
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|row| (row.day, row)).collect())
}

/// The hours (hours since 1970) of the days of `snapshots` (current chart snapshots, by day)
/// for which a flush that counts in `committed` wrote minute rows after the day's snapshot was
/// taken (`flush_commits.minute_hours`; commits from before schema 10 list none, and cannot
/// come after a chart snapshot).
pub async fn hours_with_new_commits(
    client: &clickhouse::Client,
    committed: &CommittedFlushes,
    snapshots: &BTreeMap<NaiveDate, ChartSnapshotRow>,
) -> Result<BTreeSet<u32>, clickhouse::error::Error> {
    let found: Vec<u32> = new_commit_values(
        client,
        committed,
        snapshots,
        "arrayJoin(minute_hours)",
        "intDiv(value, 24)",
    )
    .await?;
    Ok(found.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn snapshot(day: NaiveDate, heads: &[(u64, u64, u64)]) -> RollupProgressRow {
        RollupProgressRow {
            day,
            rolled_up_at: DateTime::from_timestamp(0, 0).unwrap(),
            minute_rows_read: 1,
            plays_read: 1,
            users: 1,
            rows_written: 1,
            seconds: 0.0,
            snapshot_id: 5,
            snapshot_partitions: heads.iter().map(|head| head.0).collect(),
            snapshot_newest_claim_ids: heads.iter().map(|head| head.1).collect(),
            snapshot_newest_max_seqs: heads.iter().map(|head| head.2).collect(),
        }
    }

    #[test]
    fn day_heads_compare_against_their_own_days_snapshot() {
        let first = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
        let second = first.succ_opt().unwrap();
        let heads = DayHeads::of([
            &snapshot(first, &[(0, 10, 3), (1, 20, 7)]),
            &snapshot(second, &[(0, 10, 9)]),
        ]);
        assert!(!heads.is_new(first, 0, 10, 3));
        assert!(heads.is_new(first, 0, 10, 4));
        assert!(!heads.is_new(second, 0, 10, 4));
        assert!(
            heads.is_new(second, 1, 5, 1),
            "partition 1 had no claim then"
        );
        assert!(heads.is_new(first, 1, 21, 1));
        assert_eq!(DayHeads::condition("d").matches('?').count(), 6);
    }
}
