//! The state of one assigned Kafka partition inside a shard: its claim, the duplicate filter,
//! the counts since the last flush, dead letters awaiting acknowledgement, and where reading
//! and counting stand.

use chrono::Utc;
use topk_core::claims::Claim;
use topk_core::dedup::{Deduplicator, ReplayPoint, Verdict};
use topk_core::event::{parse_play_event, RejectReason};
use topk_core::schema::{FlushCommitRow, MinuteRow};
use topk_core::window::Window;

use topk_archive::ArchiveRecord;

use crate::buffer::MinuteBuffer;
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
    /// Delivered again by Kafka (at or below what was already processed), or fetched before
    /// the partition was last re-positioned.
    Skipped,
    /// Records are missing before this one: nothing is processed until the partition is
    /// read again from `expected`.
    Gap {
        expected: i64,
    },
}

/// Which claim a partition's flushes are written under, and the next flush's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimState {
    pub claim_id: u64,
    pub next_seq: u64,
}

impl ClaimState {
    pub fn new(claim: &Claim) -> Self {
        Self {
            claim_id: claim.claim_id,
            next_seq: 1,
        }
    }
}

pub struct PartitionState {
    pub partition: i32,
    /// The claim this partition is written under.
    pub claim: ClaimState,
    /// The poller's positioning of the partition this state reads (records fetched before a
    /// later seek carry an older generation and are dropped).
    pub generation: u64,
    /// The last offset counted in ClickHouse.
    counted_through: Option<i64>,
    /// The last offset processed (counted in memory or re-read).
    processed_through: Option<i64>,
    /// Set after a gap: the offset the partition is being re-read from.
    awaiting: Option<i64>,
    /// Set once re-reading could not close a gap below the checkpoint: the next such gap is
    /// read past.
    accept_gap_below_checkpoint: bool,
    dedup: Deduplicator,
    /// Where the claim said to rebuild the duplicate filter from: the replay point every
    /// commit must keep until the re-read has passed what was counted.
    resumed_replay: Option<ReplayPoint>,
    buffer: MinuteBuffer,
    dead_letters: Vec<PendingDeadLetter>,
    dead_letter_bytes: usize,
    /// Every record consumed since the last flush, for the archive (when archiving).
    raw_records: Option<Vec<ArchiveRecord>>,
    raw_bytes: usize,
    events_since_flush: u64,
    /// The Kafka timestamp (ms) of the newest record decided since the claim (0: none), which
    /// each commit records (readers' `data_through`).
    records_through_ms: i64,
}

/// One partition's share of a flush.
pub struct PartitionFlush {
    pub partition: i32,
    pub rows: Vec<MinuteRow>,
    pub commit: FlushCommitRow,
    /// The last offset counted before this flush (`None`: nothing).
    pub previous_offset: Option<i64>,
    pub dead_letters: Vec<PendingDeadLetter>,
    /// The raw records this flush covers, archived before its commit.
    pub raw_records: Vec<ArchiveRecord>,
    /// Whether `raw_records` already reached the archive (a retried flush skips it).
    pub archived: bool,
    /// Whether `rows` were inserted under the current tags (a retry of only the commit,
    /// through Keeper, skips them; a retag writes them again).
    pub rows_written: bool,
}

impl PartitionFlush {
    /// Moves this flush (rows and commit) to `claim`'s flush `flush_seq`: a retry after the
    /// claim it was first tagged with was replaced.
    pub fn retag(&mut self, claim_id: u64, flush_seq: u64) {
        for row in &mut self.rows {
            row.claim_id = claim_id;
            row.flush_seq = flush_seq;
        }
        self.commit.claim_id = claim_id;
        self.commit.flush_seq = flush_seq;
        self.rows_written = false;
    }

    pub fn flush_offset(&self) -> i64 {
        self.commit.flush_offset
    }
}

impl PartitionState {
    pub fn resume(
        partition: i32,
        claim: &Claim,
        generation: u64,
        dedup_horizon_ms: i64,
        chart_min_played_ms: u64,
        archive: bool,
    ) -> Self {
        let resume = &claim.resume;
        Self {
            partition,
            claim: ClaimState::new(claim),
            generation,
            counted_through: resume.counted_through,
            processed_through: resume.read_from.map(|offset| offset - 1),
            awaiting: None,
            accept_gap_below_checkpoint: false,
            dedup: Deduplicator::starting_at(dedup_horizon_ms, resume.watermark_ms),
            resumed_replay: resume.read_from.map(|offset| ReplayPoint {
                offset,
                watermark_ms: resume.watermark_ms,
            }),
            buffer: MinuteBuffer::new(chart_min_played_ms),
            dead_letters: Vec::new(),
            dead_letter_bytes: 0,
            raw_records: archive.then(Vec::new),
            raw_bytes: 0,
            events_since_flush: 0,
            records_through_ms: 0,
        }
    }

    /// Decides on one record (against the window ending at the record's own timestamp, so a
    /// replay decides it the same way), and keeps it for the archive.
    pub fn process(&mut self, record: ConsumedRecord, dead_letters: &DeadLetterQueue) -> Outcome {
        let outcome = self.decide(&record, dead_letters);
        let newly_consumed = matches!(
            outcome,
            Outcome::Counted | Outcome::Duplicate | Outcome::Rejected(_)
        );
        if let (true, Some(raw_records)) = (newly_consumed, self.raw_records.as_mut()) {
            self.raw_bytes += record.estimated_bytes();
            raw_records.push(record.raw);
        }
        outcome
    }

    fn decide(&mut self, record: &ConsumedRecord, dead_letters: &DeadLetterQueue) -> Outcome {
        debug_assert_eq!(record.partition(), self.partition);
        if record.generation != self.generation || self.awaiting.is_some() {
            return Outcome::Skipped;
        }
        if let Some(processed) = self.processed_through {
            if record.offset() <= processed {
                return Outcome::Skipped;
            }
            let expected = processed + 1;
            let accepted =
                self.accept_gap_below_checkpoint && self.gap_is_below_checkpoint(expected);
            if record.offset() > expected && !accepted {
                // Records were skipped (a broker answering a fetch from inside a batch with
                // the next one, retention, compaction): never count past them silently.
                self.awaiting = Some(expected);
                return Outcome::Gap { expected };
            }
            self.accept_gap_below_checkpoint = false;
        }
        self.processed_through = Some(record.offset());
        let window = Window::for_record(record.raw.timestamp_ms);
        let parsed = parse_play_event(&record.raw.payload, &window);
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
        if let Some(timestamp_ms) = record.raw.timestamp_ms {
            self.records_through_ms = self.records_through_ms.max(timestamp_ms);
        }
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

    /// The partition was positioned again (generation `generation`) at the offset a gap
    /// asked for: records of that generation are processed again.
    pub fn repositioned(&mut self, generation: u64) {
        self.generation = generation;
        self.awaiting = None;
    }

    /// Whether the records up to the processed offset are all in the filter, i.e. whether a
    /// gap lies within the part re-read only to rebuild the duplicate filter.
    pub fn gap_is_below_checkpoint(&self, expected: i64) -> bool {
        self.counted_through
            .is_some_and(|counted| expected <= counted)
    }

    /// Accepts the next gap below the checkpoint, which re-reading could not close (the
    /// records are gone from Kafka): the filter is rebuilt without them.
    pub fn accept_gap_below_checkpoint(&mut self) {
        self.accept_gap_below_checkpoint = true;
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

    /// Takes everything since the last flush as one partition's flush, tagged with the next
    /// flush of the claim. With `release`, a flush is taken even when nothing is new (an
    /// empty commit that records the clean release of the claim).
    pub fn take_flush(
        &mut self,
        topic: &str,
        consumer_group: &str,
        worker: &str,
        release: bool,
    ) -> Option<PartitionFlush> {
        if !self.has_unflushed() && !release {
            return None;
        }
        let flush_offset = if self.has_unflushed() {
            self.processed_through
                .expect("has_unflushed implies a processed offset")
        } else {
            self.counted_through.unwrap_or(-1)
        };
        // An empty filter means "nothing to replay" only once the re-read has passed what
        // was counted: a partition released before then (a rebalance right after the claim)
        // must hand its own replay point on, or the next owner forgets the event ids counted
        // before and counts their retries again.
        let replaying = self.processed_through < self.counted_through;
        let replay = match (self.dedup.compact(), self.resumed_replay) {
            (Some(point), _) => point,
            (None, Some(resumed)) if replaying => resumed,
            (None, _) => ReplayPoint {
                offset: flush_offset + 1,
                watermark_ms: self.dedup.watermark_ms(),
            },
        };
        let partition_column = u32::try_from(self.partition).expect("partitions are not negative");
        let flush_seq = self.claim.next_seq;
        self.claim.next_seq += 1;
        let rows = self.buffer.drain_rows(
            topic,
            partition_column,
            u64::try_from(flush_offset.max(0)).expect("non-negative"),
            (self.claim.claim_id, flush_seq),
        );
        // The days (ClickHouse `Date` numbers) and hours of the rows' minutes, few distinct.
        let (minute_days, minute_hours) =
            topk_core::window::days_and_hours(rows.iter().map(|row| row.minute));
        let commit = FlushCommitRow {
            consumer_group: consumer_group.to_owned(),
            topic: topic.to_owned(),
            kafka_partition: partition_column,
            claim_id: self.claim.claim_id,
            flush_seq,
            flush_offset,
            dedup_replay_from: replay.offset,
            watermark_ms: replay.watermark_ms,
            events: std::mem::take(&mut self.events_since_flush),
            minute_rows: rows.len() as u64,
            minute_days,
            released: u8::from(release),
            worker: worker.to_owned(),
            flushed_at: Utc::now(),
            records_through_ms: self.records_through_ms,
            minute_hours,
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
            commit,
            previous_offset: self.counted_through,
            dead_letters: std::mem::take(&mut self.dead_letters),
            archived: raw_records.is_empty(),
            rows_written: false,
            raw_records,
        })
    }

    /// Records that a flush up to `offset` was committed, and the claim to go on with.
    pub fn committed_through(&mut self, offset: i64, claim: ClaimState) {
        debug_assert!(self.counted_through.is_none_or(|counted| offset >= counted));
        self.counted_through = Some(offset);
        self.claim = claim;
    }

    pub fn counted_through(&self) -> Option<i64> {
        self.counted_through
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use topk_core::claims::ResumePoint;

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
            generation: 0,
        }
    }

    fn no_broker() -> DeadLetterQueue {
        // Creating a producer does not connect; valid records never reach it.
        DeadLetterQueue::new("127.0.0.1:1", "dead", "plays").unwrap()
    }

    fn claim(resume: ResumePoint) -> Claim {
        Claim {
            claim_id: 7 << 32,
            kafka_partition: 0,
            parent_claim_id: 0,
            parent_max_seq: 0,
            parent_released: false,
            resume,
        }
    }

    #[test]
    fn a_release_before_the_replay_keeps_the_replay_point() {
        let resume = ResumePoint {
            counted_through: Some(4),
            read_from: Some(0),
            watermark_ms: 1_000,
        };
        let mut state = PartitionState::resume(0, &claim(resume), 0, 600_000, 30_000, false);
        let flush = state
            .take_flush("plays", "group", "worker", true)
            .expect("a release always commits");
        assert_eq!(flush.commit.flush_offset, 4);
        assert_eq!(flush.commit.dedup_replay_from, 0);
        assert_eq!(flush.commit.watermark_ms, 1_000);
    }

    #[test]
    fn replays_below_the_checkpoint_count_only_after_it() {
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let ts = now.timestamp_millis() - 1_000;
        let dead_letters = no_broker();
        let resume = ResumePoint {
            counted_through: Some(2),
            read_from: Some(1),
            watermark_ms: i64::MIN,
        };
        let mut state = PartitionState::resume(0, &claim(resume), 0, 600_000, 30_000, true);
        let outcomes: Vec<Outcome> = [
            record(0, "a", ts), // below the replay point: Kafka delivered it anyway
            record(1, "b", ts),
            record(2, "c", ts),
            record(3, "b", ts), // a retry of an event counted before the crash
            record(4, "d", ts),
            record(4, "d", ts), // delivered twice by Kafka
        ]
        .into_iter()
        .map(|record| state.process(record, &dead_letters))
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
        let flush = state.take_flush("plays", "group", "worker", false).unwrap();
        assert_eq!(flush.commit.flush_offset, 4);
        assert_eq!(flush.commit.flush_seq, 1);
        assert_eq!(flush.previous_offset, Some(2));
        assert_eq!(flush.rows.iter().map(|row| row.plays).sum::<u64>(), 1);
        assert!(flush
            .rows
            .iter()
            .all(|row| row.claim_id == 7 << 32 && row.flush_seq == 1));
        assert_eq!(flush.commit.minute_days.len(), 1);
        // Only records consumed past the checkpoint go to the archive (once each).
        let archived: Vec<i64> = flush
            .raw_records
            .iter()
            .map(|record| record.offset)
            .collect();
        assert_eq!(archived, vec![3, 4]);
        assert!(!flush.archived);
        let next_claim = state.claim.clone();
        state.committed_through(4, next_claim);
        assert!(!state.has_unflushed());
        assert!(state
            .take_flush("plays", "group", "worker", false)
            .is_none());
        let release = state.take_flush("plays", "group", "worker", true).unwrap();
        assert_eq!((release.commit.flush_seq, release.commit.released), (2, 1));
        assert_eq!(release.commit.flush_offset, 4);
        assert!(release.rows.is_empty());
    }

    #[test]
    fn a_gap_stops_the_partition_until_it_is_read_again() {
        let ts = Utc::now().timestamp_millis();
        let dead_letters = no_broker();
        let resume = ResumePoint {
            counted_through: Some(9),
            read_from: Some(10),
            watermark_ms: i64::MIN,
        };
        let mut state = PartitionState::resume(0, &claim(resume), 0, 600_000, 30_000, false);
        assert_eq!(
            state.process(record(10, "a", ts), &dead_letters),
            Outcome::Counted
        );
        assert_eq!(
            state.process(record(12, "c", ts), &dead_letters),
            Outcome::Gap { expected: 11 }
        );
        // Until re-read from 11 (a new generation), nothing more is processed.
        assert_eq!(
            state.process(record(13, "d", ts), &dead_letters),
            Outcome::Skipped
        );
        state.repositioned(1);
        let mut again = record(11, "b", ts);
        again.generation = 1;
        assert_eq!(state.process(again, &dead_letters), Outcome::Counted);
        let stale = record(12, "c", ts);
        assert_eq!(state.process(stale, &dead_letters), Outcome::Skipped);
        let flush = state.take_flush("plays", "g", "w", false).unwrap();
        assert_eq!(flush.commit.flush_offset, 11);
    }

    #[test]
    fn the_window_is_the_records_own() {
        // A play 6 minutes ahead of its record's timestamp is rejected however late it is
        // read: a replay decides it the same way.
        let dead_letters = no_broker();
        let resume = ResumePoint {
            counted_through: None,
            read_from: None,
            watermark_ms: i64::MIN,
        };
        let mut state = PartitionState::resume(0, &claim(resume), 0, 600_000, 30_000, false);
        let record_time = Utc::now().timestamp_millis() - 3_600_000;
        let mut ahead = record(0, "a", record_time + 6 * 60_000);
        ahead.raw.timestamp_ms = Some(record_time);
        assert_eq!(
            state.decide(&ahead, &dead_letters),
            Outcome::Rejected(RejectReason::TsInFuture)
        );
    }
}
