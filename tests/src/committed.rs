//! Writing minute rows into ClickHouse the way a writer does — claim the partition, write the
//! rows tagged with the claim, commit — for tests that need rows without running the
//! aggregator; and planting rows of a flush that never committed (what a crash leaves).

use std::collections::BTreeMap;

use chrono::Utc;
use topk_core::claims::{claim_partition, Claim, ClaimOwner};
use topk_core::db::ClickHouseOptions;
use topk_core::schema::{
    ChartMinuteRow, FlushCommitRow, MinuteRow, CHART_MINUTE, FLUSH_COMMITS, PLAYS_MINUTE,
};
use topk_core::window::day_number;

/// The consumer group of the rows tests write directly.
pub const TEST_GROUP: &str = "topk-tests";

fn owner(topic: &str) -> ClaimOwner {
    owner_in(TEST_GROUP, topic)
}

fn owner_in(group: &str, topic: &str) -> ClaimOwner {
    ClaimOwner {
        consumer_group: group.to_owned(),
        topic: topic.to_owned(),
        worker: "test-writer".to_owned(),
    }
}

fn by_partition(rows: &[MinuteRow]) -> BTreeMap<u32, Vec<MinuteRow>> {
    let mut grouped: BTreeMap<u32, Vec<MinuteRow>> = BTreeMap::new();
    for row in rows {
        grouped
            .entry(row.kafka_partition)
            .or_default()
            .push(row.clone());
    }
    grouped
}

async fn insert<T: clickhouse::RowOwned + clickhouse::RowWrite>(
    client: &clickhouse::Client,
    table: &str,
    rows: &[T],
) {
    let mut insert = client.insert::<T>(table).await.expect("start insert");
    for row in rows {
        insert.write(row).await.expect("write row");
    }
    insert.end().await.expect("end insert");
}

/// Claims each partition of `rows` (group [`TEST_GROUP`], the rows' topic), writes the rows as
/// the claim's first flush and commits it, released. The rows then count, as a flush of the
/// aggregator's would; each call is a new flush (a new claim) per partition. Returns the
/// claims.
pub async fn write_committed(clickhouse: &ClickHouseOptions, rows: &[MinuteRow]) -> Vec<Claim> {
    let client = clickhouse.client();
    let mut claims = Vec::new();
    for (partition, mut rows) in by_partition(rows) {
        let topic = rows[0].topic.clone();
        let claim = claim_partition(&client, &owner(&topic), partition)
            .await
            .expect("claim a partition");
        let flush_offset = rows
            .iter()
            .map(|row| row.flush_offset as i64)
            .max()
            .unwrap_or(0)
            .max(claim.resume.counted_through.unwrap_or(-1));
        for row in &mut rows {
            row.claim_id = claim.claim_id;
            row.flush_seq = 1;
        }
        insert_with_chart_rows(&client, &rows).await;
        let (minute_days, minute_hours) =
            topk_core::window::days_and_hours(rows.iter().map(|row| row.minute));
        let commit = FlushCommitRow {
            consumer_group: TEST_GROUP.to_owned(),
            topic,
            kafka_partition: partition,
            claim_id: claim.claim_id,
            flush_seq: 1,
            flush_offset,
            dedup_replay_from: flush_offset + 1,
            watermark_ms: 0,
            events: rows.iter().map(|row| row.plays).sum(),
            minute_rows: rows.len() as u64,
            minute_days,
            released: 1,
            worker: "test-writer".to_owned(),
            flushed_at: Utc::now(),
            records_through_ms: 0,
            minute_hours,
        };
        insert(&client, FLUSH_COMMITS, &[commit]).await;
        claims.push(claim);
    }
    claims
}

/// Claims each partition of `rows` for consumer group `group` and writes the rows as the
/// claim's first flush without committing it: what a worker leaves when it crashes between
/// its minute rows and its commit. They must never count, whoever claims the partition next.
pub async fn write_uncommitted(
    clickhouse: &ClickHouseOptions,
    group: &str,
    rows: &[MinuteRow],
) -> Vec<Claim> {
    let client = clickhouse.client();
    let mut claims = Vec::new();
    for (partition, mut rows) in by_partition(rows) {
        let claim = claim_partition(&client, &owner_in(group, &rows[0].topic), partition)
            .await
            .expect("claim a partition");
        for row in &mut rows {
            row.claim_id = claim.claim_id;
            row.flush_seq = 1;
        }
        insert_with_chart_rows(&client, &rows).await;
        claims.push(claim);
    }
    claims
}

/// Claims `partition` and commits it through `flush_offset` without rows: the state an
/// aggregator leaves once it counted the partition that far (for tests of readers that
/// depend on where partitions are committed, such as the restore).
pub async fn commit_through(
    clickhouse: &ClickHouseOptions,
    topic: &str,
    partition: u32,
    flush_offset: i64,
) -> Claim {
    commit_through_in(clickhouse, TEST_GROUP, topic, partition, flush_offset).await
}

/// [`commit_through`] for consumer group `group` (an aggregator of that group resumes right
/// after `flush_offset`).
pub async fn commit_through_in(
    clickhouse: &ClickHouseOptions,
    group: &str,
    topic: &str,
    partition: u32,
    flush_offset: i64,
) -> Claim {
    let client = clickhouse.client();
    let claim = claim_partition(&client, &owner_in(group, topic), partition)
        .await
        .expect("claim a partition");
    let commit = FlushCommitRow {
        consumer_group: group.to_owned(),
        topic: topic.to_owned(),
        kafka_partition: partition,
        claim_id: claim.claim_id,
        flush_seq: 1,
        flush_offset,
        dedup_replay_from: flush_offset + 1,
        watermark_ms: 0,
        events: 0,
        minute_rows: 0,
        minute_days: Vec::new(),
        released: 1,
        worker: "test-writer".to_owned(),
        flushed_at: Utc::now(),
        records_through_ms: 0,
        minute_hours: Vec::new(),
    };
    insert(&client, FLUSH_COMMITS, &[commit]).await;
    claim
}

/// Claims `partition` for a test writer that streams its own rows (tagged with the claim's id
/// and flush 1) and then calls [`commit_first_flush`].
pub async fn claim(clickhouse: &ClickHouseOptions, topic: &str, partition: u32) -> Claim {
    claim_partition(&clickhouse.client(), &owner(topic), partition)
        .await
        .expect("claim a partition")
}

/// Commits flush 1 of `claim`, released, through `flush_offset`, listing `minute_days`.
pub async fn commit_first_flush(
    clickhouse: &ClickHouseOptions,
    topic: &str,
    claim: &Claim,
    flush_offset: i64,
    minute_days: &[chrono::NaiveDate],
) {
    let commit = FlushCommitRow {
        consumer_group: TEST_GROUP.to_owned(),
        topic: topic.to_owned(),
        kafka_partition: claim.kafka_partition,
        claim_id: claim.claim_id,
        flush_seq: 1,
        flush_offset,
        dedup_replay_from: flush_offset + 1,
        watermark_ms: 0,
        events: 0,
        minute_rows: 0,
        minute_days: minute_days.iter().copied().map(day_number).collect(),
        released: 1,
        worker: "test-writer".to_owned(),
        flushed_at: Utc::now(),
        records_through_ms: 0,
        minute_hours: Vec::new(),
    };
    insert(&clickhouse.client(), FLUSH_COMMITS, &[commit]).await;
}

/// Inserts minute rows and their chart rows (`chart_minute`), as a flush of the aggregator
/// writes them.
pub async fn insert_with_chart_rows(client: &clickhouse::Client, rows: &[MinuteRow]) {
    insert(client, PLAYS_MINUTE, rows).await;
    let chart_rows: Vec<ChartMinuteRow> = rows.iter().filter_map(ChartMinuteRow::of).collect();
    if !chart_rows.is_empty() {
        insert(client, CHART_MINUTE, &chart_rows).await;
    }
}

/// The rows of each day's current rollup snapshot (the one readers read), snapshot ids zeroed
/// so that two runs compare equal, ordered by day, user and rank. On a cluster `GLOBAL IN`:
/// against a `Distributed` table a plain `IN` subquery runs on each shard, in its default
/// database. Not on a single server: there 18.16's `GLOBAL IN` missed current snapshots in
/// `tests/it/rollup.rs`'s kill test (2 runs of 3) where `IN` finds them.
pub async fn current_daily_top(
    client: &clickhouse::Client,
    placement: &topk_core::cluster::Placement,
) -> Result<Vec<topk_core::schema::DailyTopRow>, clickhouse::error::Error> {
    let in_operator = match placement {
        topk_core::cluster::Placement::SingleNode => "IN",
        topk_core::cluster::Placement::Cluster(_) => "GLOBAL IN",
    };
    client
        .query(&format!(
            "SELECT day, user_id, rank, song_id, plays, user_songs, user_truncated, \
             user_cutoff_plays, toUInt64(0) AS snapshot_id FROM (SELECT * FROM daily_top \
             WHERE (day, snapshot_id) {in_operator} \
             (SELECT day, max(snapshot_id) FROM rollup_progress GROUP BY day)) \
             ORDER BY day, user_id, rank"
        ))
        .fetch_all()
        .await
}
