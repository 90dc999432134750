//! Rebuilds `plays_minute` from the archive.
//!
//! [`rebuild_minute_counts`] replays a topic's archived records, partition by partition in
//! offset order, through the aggregator's own rules: [`parse_play_event`] against the 7-day
//! window, then one [`Deduplicator`] per partition, then a count per (user, song, UTC minute).
//! [`restore_days`] then swaps each rebuilt day into `plays_minute` atomically (one
//! `REPLACE PARTITION` per day from a staging table), so readers never see half a day and a
//! second run leaves the same table. The rollup must be re-run for those days afterwards.
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
use topk_core::db::ClickHouseOptions;
use topk_core::dedup::{Deduplicator, Verdict};
use topk_core::event::parse_play_event;
use topk_core::migrate::quote_identifier;
use topk_core::schema::{MinuteRow, INGEST_CHECKPOINTS, PLAYS_MINUTE};
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
    /// The last offset to count per partition (inclusive); partitions absent from the map
    /// count nothing. Pass the aggregator's checkpoints ([`checkpointed_offsets`]) so the
    /// restored table holds exactly what the aggregator had counted: records archived past a
    /// checkpoint (a crash between archiving and checkpointing) are counted by the
    /// aggregator's own replay, and must not be counted twice. `None` counts every archived
    /// record (the checkpoints are gone too).
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
            counted_up_to: None,
        }
    }
}

/// What the replay of one partition found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionMinutes {
    pub counts: MinuteCounts,
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
}

/// The replay of one partition, record by record (no I/O, so it is unit-testable).
#[derive(Debug, Clone)]
pub struct PartitionReplay {
    deduplicator: Deduplicator,
    event_days: RangeInclusive<NaiveDate>,
    counted_up_to: Option<i64>,
    minutes: PartitionMinutes,
}

impl PartitionReplay {
    pub fn new(
        event_days: RangeInclusive<NaiveDate>,
        dedup_horizon_ms: i64,
        counted_up_to: Option<i64>,
    ) -> Self {
        Self {
            deduplicator: Deduplicator::new(dedup_horizon_ms),
            event_days,
            counted_up_to,
            minutes: PartitionMinutes::default(),
        }
    }

    /// Replays one record; records must come in offset order.
    ///
    /// The aggregator checks an event against the window ending when it consumed the event.
    /// That moment is not archived; the record's Kafka timestamp (when the broker or producer
    /// stamped it, normally moments earlier) stands in for it. The two differ only for events
    /// within those moments of the window's start or of the 5-minute future limit. A record
    /// without a timestamp is checked against the contract only.
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
        let window = record
            .timestamp_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map_or(
                Window {
                    from: DateTime::<Utc>::MIN_UTC,
                    to: DateTime::<Utc>::MAX_UTC,
                },
                Window::last_week,
            );
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
        *self
            .minutes
            .counts
            .entry((event.user_id, event.song_id, minute_bucket_secs(event.ts)))
            .or_default() += 1;
    }

    pub fn finish(self) -> PartitionMinutes {
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
            for (key, plays) in &minutes.counts {
                *totals.entry(key.clone()).or_default() += plays;
            }
        }
        totals
    }

    /// The `plays_minute` rows of one day: one per (partition, user, song, minute), each
    /// marked with the topic, the partition and its last replayed offset.
    pub fn rows_for_day(&self, day: NaiveDate) -> Vec<MinuteRow> {
        let mut rows = Vec::new();
        for (partition, minutes) in &self.partitions {
            let flush_offset = minutes.last_offset.unwrap_or(0).max(0) as u64;
            for ((user_id, song_id, minute_secs), plays) in &minutes.counts {
                let minute = DateTime::<Utc>::from_timestamp(*minute_secs, 0)
                    .expect("minute of a parsed event is a valid time");
                if minute.date_naive() != day {
                    continue;
                }
                rows.push(MinuteRow {
                    user_id: user_id.clone(),
                    song_id: song_id.clone(),
                    minute,
                    plays: *plays,
                    topic: self.topic.clone(),
                    kafka_partition: *partition as u32,
                    flush_offset,
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

/// Replaces every day of `rebuilt.event_days` in `plays_minute` with the rebuilt rows, one
/// atomic `REPLACE PARTITION` per day (a day with no rebuilt rows is dropped: it ends up
/// empty). Running it
/// twice leaves the same table. Rows the aggregator writes for those days meanwhile are
/// replaced too: restore days the aggregator no longer receives events for, or stop it.
pub async fn restore_days(
    clickhouse: &ClickHouseOptions,
    rebuilt: &RebuiltMinutes,
) -> Result<Vec<RestoredDay>, ArchiveError> {
    let client = clickhouse.client();
    let staging = quote_identifier(STAGING_TABLE);
    let target = quote_identifier(PLAYS_MINUTE);
    let mut restored = Vec::new();
    let days = rebuilt
        .event_days
        .start()
        .iter_days()
        .take_while(|day| day <= rebuilt.event_days.end());
    for day in days {
        let rows = rebuilt.rows_for_day(day);
        let partition = day.format("%Y-%m-%d").to_string();
        if rows.is_empty() {
            // ClickHouse 26.6+ refuses REPLACE PARTITION from an empty source partition (older
            // releases silently dropped the target's); an empty day is a plain drop.
            client
                .query(&format!("ALTER TABLE {target} DROP PARTITION ?"))
                .bind(&partition)
                .execute()
                .await?;
        } else {
            client
                .query(&format!("DROP TABLE IF EXISTS {staging}"))
                .execute()
                .await?;
            client
                .query(&format!("CREATE TABLE {staging} AS {target}"))
                .execute()
                .await?;
            let mut insert = client.insert::<MinuteRow>(STAGING_TABLE).await?;
            for row in &rows {
                insert.write(row).await?;
            }
            insert.end().await?;
            client
                .query(&format!(
                    "ALTER TABLE {target} REPLACE PARTITION ? FROM {staging}"
                ))
                .bind(&partition)
                .execute()
                .await?;
        }
        let plays = rows.iter().map(|row| row.plays).sum();
        tracing::info!(%day, rows = rows.len(), plays, "day restored");
        restored.push(RestoredDay {
            day,
            rows: rows.len() as u64,
            plays,
        });
    }
    client
        .query(&format!("DROP TABLE IF EXISTS {staging}"))
        .execute()
        .await?;
    Ok(restored)
}

/// The aggregator's checkpoint of each partition of `topic`: the last offset counted in
/// `plays_minute`. Empty when the aggregator never checkpointed the topic.
pub async fn checkpointed_offsets(
    clickhouse: &ClickHouseOptions,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, ArchiveError> {
    let rows: Vec<(u32, u64)> = clickhouse
        .client()
        .query(&format!(
            "SELECT kafka_partition, max(flush_offset) FROM {} WHERE topic = ? \
             GROUP BY kafka_partition",
            quote_identifier(INGEST_CHECKPOINTS)
        ))
        .bind(topic)
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|(partition, offset)| (partition as i32, offset as i64))
        .collect())
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
            let mut replay = PartitionReplay::new(days.clone(), DEFAULT_DEDUP_HORIZON_MS, limit);
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

    fn all_days_rows(rebuilt: &RebuiltMinutes) -> u64 {
        let days = rebuilt.event_days.clone();
        days.start()
            .iter_days()
            .take_while(|day| day <= days.end())
            .flat_map(|day| rebuilt.rows_for_day(day))
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
        assert!(rebuilt.rows_for_day(day("2026-11-24")).is_empty());
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
        let row = &rebuilt.rows_for_day(day("2026-11-23"))[0];
        assert_eq!((row.kafka_partition, row.flush_offset), (0, 99));
    }
}
