//! The state of one assigned Kafka partition inside a shard: the duplicate filter, the counts
//! since the last flush, dead letters awaiting acknowledgement, and where the checkpoint is.

use chrono::Utc;
use topk_core::dedup::{Deduplicator, ReplayPoint, Verdict};
use topk_core::event::{parse_play_event, RejectReason};
use topk_core::schema::{CheckpointRow, MinuteRow};
use topk_core::window::Window;

use topk_archive::ArchiveRecord;

use crate::buffer::MinuteBuffer;
use crate::checkpoint::{offset_column, ResumePoint};
use crate::dead_letter::{DeadLetterQueue, PendingDeadLetter};
use crate::record::ConsumedRecord;

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Counted,
    Duplicate,
    Rejected(RejectReason),
    /// Re-read below the checkpoint only to rebuild the duplicate filter.
    Replayed,
    /// Delivered again by Kafka (at or below what was already processed).
    Skipped,
}

pub struct PartitionState {
    pub partition: i32,
    /// The last offset counted in ClickHouse.
    counted_through: Option<i64>,
    /// The last offset processed (counted in memory or re-read).
    processed_through: Option<i64>,
    dedup: Deduplicator,
    buffer: MinuteBuffer,
    dead_letters: Vec<PendingDeadLetter>,
    dead_letter_bytes: usize,
    /// Every record consumed since the last flush, for the archive (when archiving).
    raw_records: Option<Vec<ArchiveRecord>>,
    raw_bytes: usize,
    events_since_flush: u64,
}

/// One partition's share of a flush.
pub struct PartitionFlush {
    pub partition: i32,
    pub rows: Vec<MinuteRow>,
    pub checkpoint: CheckpointRow,
    pub dead_letters: Vec<PendingDeadLetter>,
    /// The raw records this flush covers, archived before its checkpoint.
    pub raw_records: Vec<ArchiveRecord>,
    /// Whether `raw_records` already reached the archive (a retried flush skips it).
    pub archived: bool,
}

impl PartitionState {
    pub fn resume(
        partition: i32,
        resume: &ResumePoint,
        dedup_horizon_ms: i64,
        archive: bool,
    ) -> Self {
        Self {
            partition,
            counted_through: resume.counted_through,
            processed_through: resume.read_from.map(|offset| offset - 1),
            dedup: Deduplicator::starting_at(dedup_horizon_ms, resume.watermark_ms),
            buffer: MinuteBuffer::default(),
            dead_letters: Vec::new(),
            dead_letter_bytes: 0,
            raw_records: archive.then(Vec::new),
            raw_bytes: 0,
            events_since_flush: 0,
        }
    }

    /// Decides on one record against the window ending now, and keeps it for the archive.
    pub fn process(
        &mut self,
        record: ConsumedRecord,
        window: &Window,
        dead_letters: &DeadLetterQueue,
    ) -> Outcome {
        let outcome = self.decide(&record, window, dead_letters);
        let newly_consumed = !matches!(outcome, Outcome::Replayed | Outcome::Skipped);
        if let (true, Some(raw_records)) = (newly_consumed, self.raw_records.as_mut()) {
            self.raw_bytes += record.estimated_bytes();
            raw_records.push(record.raw);
        }
        outcome
    }

    fn decide(
        &mut self,
        record: &ConsumedRecord,
        window: &Window,
        dead_letters: &DeadLetterQueue,
    ) -> Outcome {
        debug_assert_eq!(record.partition(), self.partition);
        if self
            .processed_through
            .is_some_and(|processed| record.offset() <= processed)
        {
            return Outcome::Skipped;
        }
        if let Some(processed) = self.processed_through {
            if record.offset() > processed + 1 {
                // Legitimate on compacted or transactional topics; on the plays topic it
                // means records were skipped, so it is logged and counted.
                tracing::warn!(
                    partition = self.partition,
                    after = processed,
                    next = record.offset(),
                    "gap in offsets"
                );
                metrics::counter!("topk_aggregator_offset_gaps_total").increment(1);
            }
        }
        self.processed_through = Some(record.offset());
        let parsed = parse_play_event(&record.raw.payload, window);
        let replaying = self
            .counted_through
            .is_some_and(|counted| record.offset() <= counted);
        if replaying {
            if let Ok(event) = parsed {
                self.dedup
                    .observe(&event.event_id, event.ts, record.offset());
            }
            return Outcome::Replayed;
        }
        self.events_since_flush += 1;
        match parsed {
            Ok(event) => match self
                .dedup
                .observe(&event.event_id, event.ts, record.offset())
            {
                Verdict::First => {
                    self.buffer.add(event);
                    Outcome::Counted
                }
                Verdict::Duplicate => Outcome::Duplicate,
            },
            Err(rejection) => {
                let letter = dead_letters.send(record, &rejection);
                self.dead_letter_bytes += letter.estimated_bytes();
                self.dead_letters.push(letter);
                Outcome::Rejected(rejection.reason)
            }
        }
    }

    /// Whether records past the checkpoint are waiting to be flushed.
    pub fn has_unflushed(&self) -> bool {
        match (self.processed_through, self.counted_through) {
            (Some(processed), Some(counted)) => processed > counted,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    pub fn buffered_rows(&self) -> usize {
        self.buffer.rows()
    }

    /// Memory a flush frees: counts, dead letters and records awaiting the archive.
    pub fn flushable_bytes(&self) -> usize {
        self.buffer.estimated_bytes() + self.dead_letter_bytes + self.raw_bytes
    }

    /// Memory of the duplicate filter (freed only as the watermark moves on).
    pub fn dedup_bytes(&self) -> usize {
        self.dedup.estimated_bytes()
    }

    /// Takes everything since the last flush, if anything, as one partition's flush.
    pub fn take_flush(
        &mut self,
        topic: &str,
        consumer_group: &str,
        worker: &str,
    ) -> Option<PartitionFlush> {
        if !self.has_unflushed() {
            return None;
        }
        let flush_offset = self
            .processed_through
            .expect("has_unflushed implies a processed offset");
        let replay = self.dedup.compact().unwrap_or(ReplayPoint {
            offset: flush_offset + 1,
            watermark_ms: self.dedup.watermark_ms(),
        });
        let partition_column = u32::try_from(self.partition).expect("partitions are not negative");
        let rows = self
            .buffer
            .drain_rows(topic, partition_column, offset_column(flush_offset));
        let checkpoint = CheckpointRow {
            topic: topic.to_owned(),
            kafka_partition: partition_column,
            flush_offset: offset_column(flush_offset),
            dedup_replay_from: offset_column(replay.offset),
            watermark_ms: replay.watermark_ms,
            events: std::mem::take(&mut self.events_since_flush),
            minute_rows: rows.len() as u64,
            consumer_group: consumer_group.to_owned(),
            worker: worker.to_owned(),
            flushed_at: Utc::now(),
        };
        self.dead_letter_bytes = 0;
        self.raw_bytes = 0;
        let raw_records = self
            .raw_records
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        Some(PartitionFlush {
            partition: self.partition,
            rows,
            checkpoint,
            dead_letters: std::mem::take(&mut self.dead_letters),
            archived: raw_records.is_empty(),
            raw_records,
        })
    }

    /// Records that a flush up to `offset` reached its checkpoint.
    pub fn flushed_through(&mut self, offset: i64) {
        debug_assert!(self.counted_through.is_none_or(|counted| offset >= counted));
        self.counted_through = Some(offset);
    }

    pub fn counted_through(&self) -> Option<i64> {
        self.counted_through
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record(offset: i64, event_id: &str, ts: i64) -> ConsumedRecord {
        ConsumedRecord {
            raw: ArchiveRecord {
                partition: 0,
                offset,
                timestamp_ms: Some(ts),
                key: Some(b"u".to_vec()),
                payload: format!(
                    r#"{{"event_id":"{event_id}","user_id":"u","song_id":"s","ts":{ts}}}"#
                )
                .into_bytes(),
            },
            headers: Vec::new(),
        }
    }

    fn no_broker() -> DeadLetterQueue {
        // Creating a producer does not connect; valid records never reach it.
        DeadLetterQueue::new("127.0.0.1:1", "dead", "plays").unwrap()
    }

    #[test]
    fn replays_below_the_checkpoint_count_only_after_it() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let window = Window::last_week(now);
        let ts = now.timestamp_millis() - 1_000;
        let dead_letters = no_broker();
        let resume = ResumePoint {
            counted_through: Some(2),
            read_from: Some(1),
            watermark_ms: i64::MIN,
        };
        let mut state = PartitionState::resume(0, &resume, 600_000, true);
        let outcomes: Vec<Outcome> = [
            record(0, "a", ts), // below the replay point: Kafka delivered it anyway
            record(1, "b", ts),
            record(2, "c", ts),
            record(3, "b", ts), // a retry of an event counted before the crash
            record(4, "d", ts),
            record(4, "d", ts), // delivered twice by Kafka
        ]
        .into_iter()
        .map(|record| state.process(record, &window, &dead_letters))
        .collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Skipped,
                Outcome::Replayed,
                Outcome::Replayed,
                Outcome::Duplicate,
                Outcome::Counted,
                Outcome::Skipped,
            ]
        );
        let flush = state.take_flush("plays", "group", "worker").unwrap();
        assert_eq!(flush.checkpoint.flush_offset, 4);
        assert_eq!(flush.rows.iter().map(|row| row.plays).sum::<u64>(), 1);
        // Only records consumed past the checkpoint go to the archive (once each).
        let archived: Vec<i64> = flush
            .raw_records
            .iter()
            .map(|record| record.offset)
            .collect();
        assert_eq!(archived, vec![3, 4]);
        assert!(!flush.archived);
        state.flushed_through(4);
        assert!(!state.has_unflushed());
        assert!(state.take_flush("plays", "group", "worker").is_none());
    }
}
