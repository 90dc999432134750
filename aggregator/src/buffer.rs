//! The in-memory counts of one partition since its last flush: plays per
//! (user, song, UTC minute, region), and how many of them count for the charts.

use std::collections::HashMap;

use chrono::DateTime;
use topk_core::event::PlayEvent;
use topk_core::schema::MinuteRow;
use topk_core::window::minute_bucket_secs;

/// Bytes of bookkeeping per buffered row on top of its ids: the hash slot (with the table's
/// spare capacity) and two heap allocations, as measured against resident memory before rows
/// had a region (a region's two bytes are counted with the ids; its allocation is not).
const ROW_OVERHEAD_BYTES: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MinuteKey {
    user_id: Box<str>,
    song_id: Box<str>,
    minute_secs: i64,
    /// `""` when the events did not say.
    region: Box<str>,
}

/// A row's plays and its chart-eligible plays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    plays: u64,
    chart_plays: u64,
}

#[derive(Debug)]
pub struct MinuteBuffer {
    counts: HashMap<MinuteKey, Tally>,
    id_bytes: usize,
    /// The shortest play that counts for the charts.
    chart_min_played_ms: u64,
}

impl MinuteBuffer {
    /// An empty buffer counting plays of at least `chart_min_played_ms` for the charts.
    pub fn new(chart_min_played_ms: u64) -> Self {
        Self {
            counts: HashMap::new(),
            id_bytes: 0,
            chart_min_played_ms,
        }
    }

    /// Counts one play.
    pub fn add(&mut self, event: PlayEvent) {
        let chart = event.chart_eligible(self.chart_min_played_ms);
        let key = MinuteKey {
            user_id: event.user_id.into_boxed_str(),
            song_id: event.song_id.into_boxed_str(),
            minute_secs: minute_bucket_secs(event.ts),
            region: event.region.unwrap_or_default().into_boxed_str(),
        };
        let key_bytes = key.user_id.len() + key.song_id.len() + key.region.len();
        let tally = self.counts.entry(key).or_insert_with(|| {
            self.id_bytes += key_bytes;
            Tally::default()
        });
        tally.plays += 1;
        tally.chart_plays += u64::from(chart);
    }

    pub fn rows(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn estimated_bytes(&self) -> usize {
        self.id_bytes + self.counts.len() * ROW_OVERHEAD_BYTES
    }

    /// Empties the buffer into rows tagged with the flush that will write them: its last
    /// offset and its `(claim_id, flush_seq)`.
    pub fn drain_rows(
        &mut self,
        topic: &str,
        partition: u32,
        flush_offset: u64,
        (claim_id, flush_seq): (u64, u64),
    ) -> Vec<MinuteRow> {
        self.id_bytes = 0;
        self.counts
            .drain()
            .map(|(key, tally)| MinuteRow {
                user_id: key.user_id.into(),
                song_id: key.song_id.into(),
                minute: DateTime::from_timestamp(key.minute_secs, 0)
                    .expect("minute of a validated event is a valid time"),
                plays: tally.plays,
                topic: topic.to_owned(),
                kafka_partition: partition,
                flush_offset,
                claim_id,
                flush_seq,
                region: key.region.into(),
                chart_plays: tally.chart_plays,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(user: &str, song: &str, ts: i64) -> PlayEvent {
        PlayEvent::new(format!("{user}-{song}-{ts}"), user, song, ts)
    }

    #[test]
    fn counts_per_user_song_and_minute() {
        let mut buffer = MinuteBuffer::new(30_000);
        buffer.add(play("u", "s", 1_000));
        buffer.add(play("u", "s", 59_999));
        buffer.add(play("u", "s", 60_000));
        buffer.add(play("v", "s", 1_000));
        assert_eq!(buffer.rows(), 3);
        assert!(buffer.estimated_bytes() > 0);
        let mut rows = buffer.drain_rows("plays", 3, 42, (9, 2));
        rows.sort_by(|a, b| (&a.user_id, a.minute).cmp(&(&b.user_id, b.minute)));
        let summary: Vec<(String, i64, u64)> = rows
            .iter()
            .map(|row| (row.user_id.clone(), row.minute.timestamp(), row.plays))
            .collect();
        assert_eq!(
            summary,
            vec![("u".into(), 0, 2), ("u".into(), 60, 1), ("v".into(), 0, 1)]
        );
        assert!(rows
            .iter()
            .all(|row| row.kafka_partition == 3 && row.flush_offset == 42 && row.flush_seq == 2));
        assert!(buffer.is_empty());
        assert_eq!(buffer.estimated_bytes(), 0);
        assert!(rows
            .iter()
            .all(|row| row.region.is_empty() && row.chart_plays == row.plays));
    }

    #[test]
    fn regions_are_rows_of_their_own_and_short_plays_do_not_count_for_charts() {
        let mut buffer = MinuteBuffer::new(30_000);
        let with = |region: Option<&str>, played_ms: Option<u64>| {
            let mut event = play("u", "s", 1_000);
            event.region = region.map(str::to_owned);
            event.played_ms = played_ms;
            event
        };
        buffer.add(with(Some("DE"), Some(30_000)));
        buffer.add(with(Some("DE"), Some(29_999)));
        buffer.add(with(Some("DE"), None));
        buffer.add(with(Some("FR"), Some(5_000)));
        buffer.add(with(None, Some(200_000)));
        let mut rows: Vec<(String, u64, u64)> = buffer
            .drain_rows("plays", 0, 1, (1, 1))
            .into_iter()
            .map(|row| (row.region, row.plays, row.chart_plays))
            .collect();
        rows.sort();
        assert_eq!(
            rows,
            [
                (String::new(), 1, 1),
                ("DE".to_owned(), 3, 2),
                ("FR".to_owned(), 1, 0)
            ]
        );
    }
}
