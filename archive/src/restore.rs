//! Rebuilds `plays_minute` from the archive.
//!
//! [`rebuild_minute_counts`] replays a topic's archived records, partition by partition in
//! offset order, through the aggregator's own rules: [`parse_play_event`] against the 7-day
//! window ending at the record's timestamp, then one [`Deduplicator`] per partition, then a
//! count per (user, song, UTC minute). [`restore_days`] then commits the restored rows under
//! the restore's own claims (see `topk_core::claims`: the restore takes the partitions over
//! like a writer, so a stray aggregator is fenced) and swaps each rebuilt day into
//! `plays_minute` atomically (one `REPLACE PARTITION` per day from a staging table), so
//! readers never see half a day and a second run leaves the same table. The rollup must be
//! re-run for those days afterwards.
//!
//! Which object dates to scan: an event of day D is consumed at the earliest a few minutes
//! before D (the contract allows event times up to 5 minutes in the future) and at the latest
//! on D+6 (older events fall out of the 7-day window), and a segment is filed under the date
//! of its first record. [`object_dates_for`] therefore scans D-1 through D+7. The duplicate
//! filter of a partition sees every record of those dates in offset order; the first delivery
//! of any event of day D is among them, so it decides each event of D as the aggregator did.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::Instant;

use chrono::{DateTime, Days, NaiveDate, Utc};
use futures::TryStreamExt;
use topk_core::claims::ClaimOwner;
use topk_core::cluster::{ClusterLayout, Placement};
use topk_core::committed::CommittedFlushes;
use topk_core::coordination::{keeper_commit, CommitOutcome, Coordinator};
use topk_core::db::ClickHouseOptions;
use topk_core::dedup::ReplayPoint;
use topk_core::dedup::{Deduplicator, Verdict};
use topk_core::event::parse_play_event;
use topk_core::migrate::quote_identifier;
use topk_core::schema::{FlushCommitRow, MinuteRow, CHART_MINUTE, FLUSH_COMMITS, PLAYS_MINUTE};
use topk_core::window::{minute_bucket_secs, utc_day_of_ms, Window, WINDOW_DAYS};

use crate::error::ArchiveError;
use crate::reader::{plan_partitions, ArchiveReader};
use crate::record::ArchiveRecord;

/// The aggregator's default duplicate horizon (10 minutes of event time).
pub const DEFAULT_DEDUP_HORIZON_MS: i64 = 10 * 60 * 1000;

/// The staging table a day is built in before it replaces the day in `plays_minute`.
const STAGING_TABLE: &str = "plays_minute_restore_staging";

/// Segments between two progress lines while reading one partition.
const PROGRESS_EVERY_SEGMENTS: usize = 100;

/// (user_id, song_id, minute start in epoch seconds); the same key as the load generator's
/// oracle, so tests compare the two directly.
pub type MinuteKey = (String, String, i64);

/// Plays per minute key.
pub type MinuteCounts = BTreeMap<MinuteKey, u64>;

/// The key of one restored `plays_minute` row: a [`MinuteKey`] and the region (`""`: not said).
pub type RowKey = (String, String, i64, String);

/// A restored row's plays and its chart-eligible plays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowTally {
    pub plays: u64,
    pub chart_plays: u64,
}

/// Plays per row key.
pub type RowCounts = BTreeMap<RowKey, RowTally>;

/// The object dates whose segments can hold the events of `event_days` (see module docs).
pub fn object_dates_for(event_days: &RangeInclusive<NaiveDate>) -> RangeInclusive<NaiveDate> {
    let first = event_days
        .start()
        .checked_sub_days(Days::new(1))
        .unwrap_or(*event_days.start());
    let last = event_days
        .end()
        .checked_add_days(Days::new(u64::from(WINDOW_DAYS)))
        .unwrap_or(*event_days.end());
    first..=last
}

/// What to rebuild.
#[derive(Debug, Clone)]
pub struct RebuildRequest {
    pub topic: String,
    /// The object dates to read (normally [`object_dates_for`] of `event_days`).
    pub object_dates: RangeInclusive<NaiveDate>,
    /// The UTC days of event time to count.
    pub event_days: RangeInclusive<NaiveDate>,
    /// The aggregator's duplicate horizon.
    pub dedup_horizon_ms: i64,
    /// The aggregators' `--chart-min-played-ms`: the shortest play that counts for the charts.
    pub chart_min_played_ms: u64,
    /// The last offset to count per partition (inclusive); partitions absent from the map
    /// count nothing. Pass what the aggregator had committed (the restore's claims resume
    /// there) so the restored table holds exactly what the aggregator had counted: records
    /// archived past a commit (a crash between archiving and committing) are counted by the
    /// aggregator's own replay, and must not be counted twice. `None` counts every archived
    /// record (the commits are gone too).
    pub counted_up_to: Option<BTreeMap<i32, i64>>,
}

impl RebuildRequest {
    /// A request for `event_days` of `topic` with the default horizon, scanning
    /// [`object_dates_for`] those days and counting every archived record.
    pub fn new(topic: impl Into<String>, event_days: RangeInclusive<NaiveDate>) -> Self {
        Self {
            topic: topic.into(),
            object_dates: object_dates_for(&event_days),
            event_days,
            dedup_horizon_ms: DEFAULT_DEDUP_HORIZON_MS,
            chart_min_played_ms: topk_core::event::DEFAULT_CHART_MIN_PLAYED_MS,
            counted_up_to: None,
        }
    }
}

/// What the replay of one partition found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionMinutes {
    pub counts: RowCounts,
    /// The highest offset replayed: the `flush_offset` of the partition's restored rows.
    pub last_offset: Option<i64>,
    pub segments_read: usize,
    pub segments_covered: usize,
    pub records: u64,
    /// Records that break the contract or fall outside the window (not counted).
    pub rejected: u64,
    /// Valid records the duplicate filter dropped.
    pub duplicates: u64,
    /// First deliveries of events whose day is outside the requested days.
    pub other_days: u64,
    /// Records past the partition's `counted_up_to` (read, not replayed).
    pub past_checkpoint: u64,
    /// Plays counted for the requested days.
    pub plays: u64,
    /// Where an aggregator resuming after `last_offset` would rebuild its duplicate filter
    /// from (the filter's replay point at the end of the replay).
    pub replay_point: Option<ReplayPoint>,
}

/// The replay of one partition, record by record (no I/O, so it is unit-testable).
#[derive(Debug, Clone)]
pub struct PartitionReplay {
    deduplicator: Deduplicator,
    event_days: RangeInclusive<NaiveDate>,
    counted_up_to: Option<i64>,
    chart_min_played_ms: u64,
    minutes: PartitionMinutes,
}

impl PartitionReplay {
    pub fn new(
        event_days: RangeInclusive<NaiveDate>,
        dedup_horizon_ms: i64,
        chart_min_played_ms: u64,
        counted_up_to: Option<i64>,
    ) -> Self {
        Self {
            deduplicator: Deduplicator::new(dedup_horizon_ms),
            event_days,
            counted_up_to,
            chart_min_played_ms,
            minutes: PartitionMinutes::default(),
        }
    }

    /// Replays one record; records must come in offset order. Each record is judged against
    /// the window ending at its Kafka timestamp, exactly as the aggregator judged it
    /// (`Window::for_record`).
    pub fn observe(&mut self, record: &ArchiveRecord) {
        debug_assert!(
            self.minutes
                .last_offset
                .is_none_or(|last| record.offset > last),
            "records are replayed in offset order"
        );
        self.minutes.records += 1;
        if self
            .counted_up_to
            .is_some_and(|limit| record.offset > limit)
        {
            self.minutes.past_checkpoint += 1;
            return;
        }
        self.minutes.last_offset = Some(record.offset);
        let window = Window::for_record(record.timestamp_ms);
        let Ok(event) = parse_play_event(&record.payload, &window) else {
            self.minutes.rejected += 1;
            return;
        };
        if self
            .deduplicator
            .observe(&event.event_id, event.ts, record.offset)
            == Verdict::Duplicate
        {
            self.minutes.duplicates += 1;
            return;
        }
        if !utc_day_of_ms(event.ts).is_some_and(|day| self.event_days.contains(&day)) {
            self.minutes.other_days += 1;
            return;
        }
        self.minutes.plays += 1;
        let chart = event.chart_eligible(self.chart_min_played_ms);
        let minute = minute_bucket_secs(event.ts);
        let tally = self
            .minutes
            .counts
            .entry((
                event.user_id,
                event.song_id,
                minute,
                event.region.unwrap_or_default(),
            ))
            .or_default();
        tally.plays += 1;
        tally.chart_plays += u64::from(chart);
    }

    pub fn finish(mut self) -> PartitionMinutes {
        self.minutes.replay_point = Some(self.deduplicator.compact().unwrap_or(ReplayPoint {
            offset: self.minutes.last_offset.map_or(0, |offset| offset + 1),
            watermark_ms: self.deduplicator.watermark_ms(),
        }));
        self.minutes
    }
}

/// The rebuilt minute counts of one topic for some days.
#[derive(Debug, Clone)]
pub struct RebuiltMinutes {
    pub topic: String,
    pub event_days: RangeInclusive<NaiveDate>,
    pub partitions: BTreeMap<i32, PartitionMinutes>,
}

impl RebuiltMinutes {
    /// Plays per minute key over all partitions.
    pub fn totals(&self) -> MinuteCounts {
        let mut totals = MinuteCounts::new();
        for minutes in self.partitions.values() {
            for ((user_id, song_id, minute, _), tally) in &minutes.counts {
                *totals
                    .entry((user_id.clone(), song_id.clone(), *minute))
                    .or_default() += tally.plays;
            }
        }
        totals
    }

    /// The `plays_minute` rows of one day: one per (partition, user, song, minute), each
    /// marked with the topic, the partition, its last replayed offset and the
    /// `(claim_id, flush_seq)` in `commits` that makes it count (partitions without one have
    /// no rows).
    pub fn rows_for_day(
        &self,
        day: NaiveDate,
        commits: &BTreeMap<i32, RestoreCommit>,
    ) -> Vec<MinuteRow> {
        let mut rows = Vec::new();
        for (partition, minutes) in &self.partitions {
            let Some(commit) = commits.get(partition) else {
                continue;
            };
            let flush_offset = minutes.last_offset.unwrap_or(0).max(0) as u64;
            for ((user_id, song_id, minute_secs, region), tally) in &minutes.counts {
                let minute = DateTime::<Utc>::from_timestamp(*minute_secs, 0)
                    .expect("minute of a parsed event is a valid time");
                if minute.date_naive() != day {
                    continue;
                }
                rows.push(MinuteRow {
                    user_id: user_id.clone(),
                    song_id: song_id.clone(),
                    minute,
                    plays: tally.plays,
                    topic: self.topic.clone(),
                    kafka_partition: *partition as u32,
                    flush_offset,
                    claim_id: commit.claim_id,
                    flush_seq: RESTORE_FLUSH_SEQ,
                    region: region.clone(),
                    chart_plays: tally.chart_plays,
                });
            }
        }
        rows
    }
}

/// Replays the archive of `request.topic` (see the module docs) and returns the minute counts
/// of `request.event_days`. Logs progress per partition.
pub async fn rebuild_minute_counts(
    reader: &ArchiveReader,
    request: &RebuildRequest,
) -> Result<RebuiltMinutes, ArchiveError> {
    let started = Instant::now();
    let segments = reader
        .list_segments(&request.topic, request.object_dates.clone())
        .await?;
    let plans = plan_partitions(segments);
    tracing::info!(
        topic = %request.topic,
        object_dates = %format_days(&request.object_dates),
        partitions = plans.len(),
        segments = plans.values().map(|plan| plan.segments.len() + plan.covered_segments).sum::<usize>(),
        "archive listed"
    );
    let mut partitions = BTreeMap::new();
    for (partition, plan) in plans {
        if !plan.gaps.is_empty() {
            tracing::warn!(
                partition,
                gaps = plan.gaps.len(),
                first_gap = ?plan.gaps[0],
                "offsets missing between segments (missing objects, or offsets without messages)"
            );
        }
        let counted_up_to = request
            .counted_up_to
            .as_ref()
            .map(|limits| limits.get(&partition).copied().unwrap_or(-1));
        let mut replay = PartitionReplay::new(
            request.event_days.clone(),
            request.dedup_horizon_ms,
            request.chart_min_played_ms,
            counted_up_to,
        );
        let mut batches = std::pin::pin!(reader.partition_records(&plan));
        let mut segments_read = 0usize;
        while let Some(batch) = batches.try_next().await? {
            segments_read += 1;
            for record in &batch {
                replay.observe(record);
            }
            if segments_read % PROGRESS_EVERY_SEGMENTS == 0 {
                tracing::info!(
                    partition,
                    segments_read,
                    segments = plan.segments.len(),
                    "reading archive"
                );
            }
        }
        let mut minutes = replay.finish();
        minutes.segments_read = segments_read;
        minutes.segments_covered = plan.covered_segments;
        tracing::info!(
            partition,
            segments_read,
            segments_covered = plan.covered_segments,
            records = minutes.records,
            plays = minutes.plays,
            rejected = minutes.rejected,
            duplicates = minutes.duplicates,
            past_checkpoint = minutes.past_checkpoint,
            last_offset = ?minutes.last_offset,
            "partition replayed"
        );
        partitions.insert(partition, minutes);
    }
    tracing::info!(
        topic = %request.topic,
        seconds = started.elapsed().as_secs_f64(),
        "archive replayed"
    );
    Ok(RebuiltMinutes {
        topic: request.topic.clone(),
        event_days: request.event_days.clone(),
        partitions,
    })
}

/// What the restore wrote for one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredDay {
    pub day: NaiveDate,
    pub rows: u64,
    pub plays: u64,
}

/// The flush sequence of the restore's one flush per claim.
pub const RESTORE_FLUSH_SEQ: u64 = 1;

/// How a partition's restored rows count: the restore's claim of the partition, and where
/// the aggregator resumes after the restore (the restored rows cover the partition up to
/// `flush_offset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreCommit {
    pub claim_id: u64,
    pub flush_offset: i64,
    pub dedup_replay_from: i64,
    pub watermark_ms: i64,
}

/// Replaces every day of `rebuilt.event_days` in `plays_minute` with the rebuilt rows:
/// first one released commit per partition of `commits` (so the rows count from the moment
/// they are swapped in), then one atomic `REPLACE PARTITION` per day (a day with no rebuilt
/// rows is dropped: it ends up empty). Running it twice leaves the same table.
pub async fn restore_days(
    clickhouse: &ClickHouseOptions,
    coordinator: &Coordinator,
    rebuilt: &RebuiltMinutes,
    owner: &ClaimOwner,
    commits: &BTreeMap<i32, RestoreCommit>,
) -> Result<Vec<RestoredDay>, ArchiveError> {
    let client = clickhouse.client();
    let days: Vec<NaiveDate> = rebuilt
        .event_days
        .start()
        .iter_days()
        .take_while(|day| day <= rebuilt.event_days.end())
        .collect();
    let mut rows = Vec::new();
    for (partition, commit) in commits {
        let row_days: Vec<u16> = days
            .iter()
            .copied()
            .filter(|day| {
                rebuilt.partitions.get(partition).is_some_and(|minutes| {
                    minutes
                        .counts
                        .keys()
                        .any(|(_, _, minute, _)| utc_day_of_ms(minute * 1000) == Some(*day))
                })
            })
            .map(topk_core::window::day_number)
            .collect();
        rows.push(FlushCommitRow {
            consumer_group: owner.consumer_group.clone(),
            topic: owner.topic.clone(),
            kafka_partition: u32::try_from(*partition).unwrap_or_default(),
            claim_id: commit.claim_id,
            flush_seq: RESTORE_FLUSH_SEQ,
            flush_offset: commit.flush_offset,
            dedup_replay_from: commit.dedup_replay_from,
            watermark_ms: commit.watermark_ms,
            events: rebuilt
                .partitions
                .get(partition)
                .map_or(0, |minutes| minutes.records),
            minute_rows: 0,
            minute_days: row_days,
            released: 1,
            worker: owner.worker.clone(),
            flushed_at: Utc::now(),
            records_through_ms: 0,
            minute_hours: rebuilt
                .partitions
                .get(partition)
                .map_or_else(Vec::new, |minutes| {
                    topk_core::window::days_and_hours(minutes.counts.keys().filter_map(
                        |(_, _, minute, _)| chrono::DateTime::from_timestamp(*minute, 0),
                    ))
                    .1
                }),
        });
    }
    commit_restored(&client, coordinator, &rows).await?;
    let placement = clickhouse.placement();
    let mut restored = Vec::new();
    for day in days {
        let rows = rebuilt.rows_for_day(day, commits);
        if rows.is_empty() {
            // ClickHouse 26.6+ refuses REPLACE PARTITION from an empty source partition (older
            // releases silently dropped the target's); an empty day is a plain drop.
            placement
                .alter(
                    &client,
                    PLAYS_MINUTE,
                    &format!("DROP PARTITION '{}'", day.format("%Y-%m-%d")),
                    &[("replication_alter_partitions_sync", "2")],
                )
                .await?;
        } else {
            match &placement {
                Placement::SingleNode => replace_day(&client, day, &rows).await?,
                Placement::Cluster(layout) => {
                    replace_day_on_cluster(&client, &placement, layout, day, &rows).await?;
                }
            }
        }
        rebuild_chart_day(&client, &placement, day).await?;
        let plays = rows.iter().map(|row| row.plays).sum();
        tracing::info!(%day, rows = rows.len(), plays, "day restored");
        restored.push(RestoredDay {
            day,
            rows: rows.len() as u64,
            plays,
        });
    }
    match &placement {
        Placement::SingleNode => {
            client
                .query(&format!(
                    "DROP TABLE IF EXISTS {}",
                    quote_identifier(STAGING_TABLE)
                ))
                .execute()
                .await?;
        }
        Placement::Cluster(layout) => {
            for statement in layout.drop_sharded_copy(STAGING_TABLE) {
                client.query(&statement).execute().await?;
            }
        }
    }
    Ok(restored)
}

/// The chart rows (`chart_minute`) of `day` again, from its restored minute rows (same tags).
/// Readers can meet the day's charts empty for the moment in between (a restore runs with the
/// aggregators stopped, in an incident).
async fn rebuild_chart_day(
    client: &clickhouse::Client,
    placement: &Placement,
    day: NaiveDate,
) -> Result<(), ArchiveError> {
    let partition = day.format("%Y-%m-%d").to_string();
    placement
        .alter(
            client,
            CHART_MINUTE,
            &format!("DROP PARTITION '{partition}'"),
            &[("replication_alter_partitions_sync", "2")],
        )
        .await?;
    let settings = placement
        .all_replicas_insert_settings(client)
        .await
        .map_err(ArchiveError::Cluster)?;
    let mut copy = client.query(&format!(
        "INSERT INTO {CHART_MINUTE} SELECT minute, region, song_id, user_id, chart_plays, \
         kafka_partition, claim_id, flush_seq FROM {PLAYS_MINUTE} \
         WHERE toDate(minute) = toDate(?) AND chart_plays > 0"
    ));
    for (name, value) in &settings {
        copy = copy.with_setting(*name, value.clone());
    }
    copy.bind(&partition).execute().await?;
    Ok(())
}

/// One day swapped in on a single server: the rows into a fresh staging table, then one
/// atomic `REPLACE PARTITION`.
async fn replace_day(
    client: &clickhouse::Client,
    day: NaiveDate,
    rows: &[MinuteRow],
) -> Result<(), ArchiveError> {
    let staging = quote_identifier(STAGING_TABLE);
    let target = quote_identifier(PLAYS_MINUTE);
    client
        .query(&format!("DROP TABLE IF EXISTS {staging}"))
        .execute()
        .await?;
    client
        .query(&format!("CREATE TABLE {staging} AS {target}"))
        .execute()
        .await?;
    let mut insert = client.insert::<MinuteRow>(STAGING_TABLE).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    client
        .query(&format!(
            "ALTER TABLE {target} REPLACE PARTITION ? FROM {staging}"
        ))
        .bind(day.format("%Y-%m-%d").to_string())
        .execute()
        .await?;
    Ok(())
}

/// One day swapped in on a cluster, shard by shard: the rows go through a sharded staging
/// table (its own replicated local tables behind a `Distributed` table) to each user's shard,
/// on every replica of it (quorum), then each shard's partition is replaced from its staging
/// rows ([`Placement::alter`]), every replica waited for (`replication_alter_partitions_sync
/// = 2`).
///
/// ClickHouse 18.16 refuses `REPLACE PARTITION` in `ON CLUSTER` DDL ("Unsupported type of
/// ALTER query"; sent to each shard, `--clickhouse-cluster-nodes`, it takes it); there the
/// day is dropped on every shard and copied in from the staging
/// table (quorum again): the same rows, but readers can meet the day empty or partly copied
/// for the seconds in between (a restore runs with the aggregators stopped, in an incident).
async fn replace_day_on_cluster(
    client: &clickhouse::Client,
    placement: &Placement,
    layout: &ClusterLayout,
    day: NaiveDate,
    rows: &[MinuteRow],
) -> Result<(), ArchiveError> {
    let partition = day.format("%Y-%m-%d").to_string();
    let settings = placement
        .all_replicas_insert_settings(client)
        .await
        .map_err(ArchiveError::Cluster)?;
    for statement in layout.drop_sharded_copy(STAGING_TABLE) {
        client.query(&statement).execute().await?;
    }
    let show_create: String = client
        .query(&format!(
            "SHOW CREATE TABLE {}",
            layout.local_table(PLAYS_MINUTE)
        ))
        .fetch_one()
        .await?;
    for statement in layout
        .sharded_copy(&show_create, PLAYS_MINUTE, STAGING_TABLE)
        .map_err(ArchiveError::Cluster)?
    {
        client.query(&statement).execute().await?;
    }
    let mut insert = client.insert::<MinuteRow>(STAGING_TABLE).await?;
    for (name, value) in &settings {
        insert = insert.with_setting(*name, value.clone());
    }
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    let replaced = placement
        .alter(
            client,
            PLAYS_MINUTE,
            &format!(
                "REPLACE PARTITION '{partition}' FROM {}",
                layout.local_table(STAGING_TABLE)
            ),
            &[("replication_alter_partitions_sync", "2")],
        )
        .await;
    match replaced {
        Ok(()) => Ok(()),
        Err(error)
            if error
                .to_string()
                .contains("Unsupported type of ALTER query") =>
        {
            tracing::info!(
                %day,
                "the server refuses REPLACE PARTITION ON CLUSTER (ClickHouse before 19.x): \
                 dropping the day on every shard and copying it in"
            );
            placement
                .alter(
                    client,
                    PLAYS_MINUTE,
                    &format!("DROP PARTITION '{partition}'"),
                    &[("replication_alter_partitions_sync", "2")],
                )
                .await?;
            let mut copy = client.query(&format!(
                "INSERT INTO {PLAYS_MINUTE} SELECT * FROM {STAGING_TABLE} WHERE toDate(minute) = toDate(?)"
            ));
            for (name, value) in &settings {
                copy = copy.with_setting(*name, value.clone());
            }
            copy.bind(&partition).execute().await?;
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Commits the restore's released commits: one insert, or through Keeper one
/// compare-and-set per partition (an aggregator that claimed a partition meanwhile fails the
/// restore, which can be run again).
async fn commit_restored(
    client: &clickhouse::Client,
    coordinator: &Coordinator,
    rows: &[FlushCommitRow],
) -> Result<(), ArchiveError> {
    let Some(keeper) = coordinator.keeper() else {
        let mut insert = client.insert::<FlushCommitRow>(FLUSH_COMMITS).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        return Ok(());
    };
    for row in rows {
        let outcome = keeper_commit(keeper, client, row)
            .await
            .map_err(|error| ArchiveError::Claim(error.to_string()))?;
        if outcome == CommitOutcome::Fenced {
            return Err(ArchiveError::Claim(format!(
                "partition {} was claimed by another writer during the restore (stop the \
                 aggregators first)",
                row.kafka_partition
            )));
        }
    }
    Ok(())
}

/// Claims, for a restore, every partition that has a commit (see `topk_core::claims`: a
/// running writer is fenced), returning for each where the restored rows end: where the
/// partition was committed through.
pub async fn claim_committed_partitions(
    client: &clickhouse::Client,
    coordinator: &Coordinator,
    owner: &ClaimOwner,
    committed: &CommittedFlushes,
) -> Result<BTreeMap<i32, RestoreCommit>, ArchiveError> {
    let mut commits = BTreeMap::new();
    for partition in committed.partitions() {
        let claim = coordinator
            .claim_partition(client, owner, partition.kafka_partition)
            .await
            .map_err(|error| ArchiveError::Claim(error.to_string()))?;
        commits.insert(
            partition.kafka_partition as i32,
            RestoreCommit {
                claim_id: claim.claim_id,
                flush_offset: claim.resume.counted_through.unwrap_or(-1),
                dedup_replay_from: claim.resume.read_from.unwrap_or(0),
                watermark_ms: claim.resume.watermark_ms,
            },
        );
    }
    Ok(commits)
}

/// Claims, for a restore into a database where nothing was ever committed, every replayed
/// partition: everything archived counts, and an aggregator resumes after it.
pub async fn claim_replayed_partitions(
    client: &clickhouse::Client,
    coordinator: &Coordinator,
    owner: &ClaimOwner,
    rebuilt: &RebuiltMinutes,
) -> Result<BTreeMap<i32, RestoreCommit>, ArchiveError> {
    let mut commits = BTreeMap::new();
    for (partition, minutes) in &rebuilt.partitions {
        let kafka_partition =
            u32::try_from(*partition).map_err(|error| ArchiveError::Claim(error.to_string()))?;
        let claim = coordinator
            .claim_partition(client, owner, kafka_partition)
            .await
            .map_err(|error| ArchiveError::Claim(error.to_string()))?;
        let replay = minutes.replay_point.unwrap_or(ReplayPoint {
            offset: 0,
            watermark_ms: i64::MIN,
        });
        commits.insert(
            *partition,
            RestoreCommit {
                claim_id: claim.claim_id,
                flush_offset: minutes.last_offset.unwrap_or(-1),
                dedup_replay_from: replay.offset,
                watermark_ms: replay.watermark_ms,
            },
        );
    }
    Ok(commits)
}

/// The offsets a restore counts each partition up to (`None`: every archived record).
pub fn counted_up_to(commits: &BTreeMap<i32, RestoreCommit>) -> Option<BTreeMap<i32, i64>> {
    (!commits.is_empty()).then(|| {
        commits
            .iter()
            .map(|(partition, commit)| (*partition, commit.flush_offset))
            .collect()
    })
}

fn format_days(days: &RangeInclusive<NaiveDate>) -> String {
    format!("{}..={}", days.start(), days.end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec};

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn object_dates_cover_early_and_late_arrivals() {
        let dates = object_dates_for(&(day("2026-11-20")..=day("2026-11-21")));
        assert_eq!(dates, day("2026-11-19")..=day("2026-11-28"));
    }

    /// Wraps generated messages as the archive would hold them: one partition per user
    /// (keyed like Kafka), offsets in order, consumed `consumed_after_ms` after `spec.now`.
    fn archived(spec: &GeneratorSpec, partitions: i32) -> Vec<Vec<ArchiveRecord>> {
        let mut by_partition = vec![Vec::new(); partitions as usize];
        for message in generate(spec) {
            let partition = (message.key.bytes().fold(7u32, |hash, byte| {
                hash.wrapping_mul(31).wrapping_add(u32::from(byte))
            }) % partitions as u32) as usize;
            let records: &mut Vec<ArchiveRecord> = &mut by_partition[partition];
            records.push(ArchiveRecord {
                partition: partition as i32,
                offset: records.len() as i64,
                timestamp_ms: Some(spec.now.timestamp_millis()),
                key: Some(message.key.into_bytes()),
                payload: message.payload,
            });
        }
        by_partition
    }

    fn replay_all(
        partitions: &[Vec<ArchiveRecord>],
        days: RangeInclusive<NaiveDate>,
        limits: Option<&BTreeMap<i32, i64>>,
    ) -> RebuiltMinutes {
        let mut rebuilt = RebuiltMinutes {
            topic: "plays".to_owned(),
            event_days: days.clone(),
            partitions: BTreeMap::new(),
        };
        for (partition, records) in partitions.iter().enumerate() {
            let limit = limits.map(|limits| limits.get(&(partition as i32)).copied().unwrap_or(-1));
            let mut replay = PartitionReplay::new(
                days.clone(),
                DEFAULT_DEDUP_HORIZON_MS,
                topk_core::event::DEFAULT_CHART_MIN_PLAYED_MS,
                limit,
            );
            records.iter().for_each(|record| replay.observe(record));
            rebuilt.partitions.insert(partition as i32, replay.finish());
        }
        rebuilt
    }

    fn spec() -> GeneratorSpec {
        let now = DateTime::parse_from_rfc3339("2026-11-24T00:04:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut spec = GeneratorSpec::new(6_000, now);
        spec.duplicate_share = 0.05;
        spec.malformed_share = 0.05;
        // Late retries fall outside the duplicate horizon and count twice by the aggregator's
        // rules, while the oracle counts every event once: keep them out of exact comparisons.
        spec.late_share = 0.0;
        spec
    }

    #[test]
    fn replay_counts_exactly_what_the_oracle_expects() {
        let spec = spec();
        let expected = expected_minute_counts(&generate(&spec));
        let all_days = day("2026-11-17")..=day("2026-11-24");
        let rebuilt = replay_all(&archived(&spec, 3), all_days, None);
        assert_eq!(rebuilt.totals(), expected);
        let rows: u64 = all_days_rows(&rebuilt);
        assert_eq!(rows, expected.values().sum::<u64>());
        let rejected: u64 = rebuilt
            .partitions
            .values()
            .map(|minutes| minutes.rejected)
            .sum();
        assert!(rejected > 0, "malformed events were generated and rejected");
        let duplicates: u64 = rebuilt
            .partitions
            .values()
            .map(|minutes| minutes.duplicates)
            .sum();
        assert!(duplicates > 0, "retries were generated and dropped");
    }

    /// A commit for every replayed partition, as a restore would make.
    fn commits(rebuilt: &RebuiltMinutes) -> BTreeMap<i32, RestoreCommit> {
        rebuilt
            .partitions
            .keys()
            .map(|partition| {
                let commit = RestoreCommit {
                    claim_id: (1 << 32) | (*partition as u64) << 16,
                    flush_offset: 0,
                    dedup_replay_from: 0,
                    watermark_ms: 0,
                };
                (*partition, commit)
            })
            .collect()
    }

    fn all_days_rows(rebuilt: &RebuiltMinutes) -> u64 {
        let days = rebuilt.event_days.clone();
        days.start()
            .iter_days()
            .take_while(|day| day <= days.end())
            .flat_map(|day| rebuilt.rows_for_day(day, &commits(rebuilt)))
            .map(|row| row.plays)
            .sum()
    }

    #[test]
    fn only_the_requested_days_are_counted() {
        let spec = spec();
        let one_day = day("2026-11-23")..=day("2026-11-23");
        let expected: MinuteCounts = expected_minute_counts(&generate(&spec))
            .into_iter()
            .filter(|((_, _, minute), _)| utc_day_of_ms(minute * 1000) == Some(day("2026-11-23")))
            .collect();
        assert!(!expected.is_empty(), "the spread crosses midnight");
        let rebuilt = replay_all(&archived(&spec, 2), one_day, None);
        assert_eq!(rebuilt.totals(), expected);
        assert!(rebuilt
            .rows_for_day(day("2026-11-24"), &commits(&rebuilt))
            .is_empty());
    }

    #[test]
    fn records_past_the_checkpoint_are_not_counted() {
        let spec = spec();
        let archive = archived(&spec, 2);
        let limits = BTreeMap::from([(0, 99)]);
        let days = day("2026-11-17")..=day("2026-11-24");
        let rebuilt = replay_all(&archive, days.clone(), Some(&limits));
        assert_eq!(rebuilt.partitions[&0].last_offset, Some(99));
        assert_eq!(rebuilt.partitions[&1].last_offset, None);
        assert_eq!(rebuilt.partitions[&1].plays, 0);
        let first_hundred = replay_all(&[archive[0][..100].to_vec()], days, None);
        assert_eq!(
            rebuilt.partitions[&0].counts,
            first_hundred.partitions[&0].counts
        );
        let row = &rebuilt.rows_for_day(day("2026-11-23"), &commits(&rebuilt))[0];
        assert_eq!((row.kafka_partition, row.flush_offset), (0, 99));
        assert_eq!((row.claim_id, row.flush_seq), (1 << 32, RESTORE_FLUSH_SEQ));
        // Without a commit, a partition restores nothing.
        assert!(rebuilt
            .rows_for_day(day("2026-11-23"), &BTreeMap::new())
            .is_empty());
    }
}
