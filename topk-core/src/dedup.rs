//! The duplicate filter: the same `event_id` delivered again within a horizon counts once.
//!
//! One filter per Kafka partition (messages are keyed by `user_id`, so an event's retries
//! share its partition). The horizon is measured in event time, so that decisions depend
//! only on the partition's contents and never on wall clocks: the partition's *watermark*
//! is the highest event time seen so far, and an id is remembered until the watermark has
//! moved `horizon` past where it stood when the id was last seen. A late event (an old `ts`)
//! is therefore remembered as long as a fresh one, which is what a client retry needs.
//!
//! The filter can be rebuilt exactly after a restart: [`Deduplicator::replay_point`] names
//! the lowest offset still remembered and the watermark just before it; a new filter
//! started with that watermark and fed the partition from that offset up to the checkpoint
//! remembers exactly the same ids until exactly the same watermarks (ids last seen before
//! that offset are forgotten in both), so it decides every later event the same way.

use std::collections::HashMap;

/// Bytes of bookkeeping per remembered id on top of the id itself: the hash slot (with the
/// table's spare capacity) and the heap allocation of the id.
const ENTRY_OVERHEAD_BYTES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sighting {
    /// Offset of the id's latest delivery.
    offset: i64,
    /// The watermark just before that delivery.
    watermark_before: i64,
    /// The watermark just after it: the id is remembered while the watermark stays within
    /// `horizon` of this.
    watermark_after: i64,
}

#[derive(Debug, Clone)]
pub struct Deduplicator {
    horizon_ms: i64,
    watermark_ms: i64,
    seen: HashMap<Box<str>, Sighting>,
    id_bytes: usize,
}

/// What the filter says of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen within the horizon: count it.
    First,
    /// Seen within the horizon: skip it.
    Duplicate,
}

/// Where to re-read a partition from to rebuild its filter, and the watermark to start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPoint {
    pub offset: i64,
    pub watermark_ms: i64,
}

impl Deduplicator {
    /// A filter for a partition read from its beginning.
    pub fn new(horizon_ms: i64) -> Self {
        Self::starting_at(horizon_ms, i64::MIN)
    }

    /// A filter that resumes at a [`ReplayPoint`] (the watermark before its offset).
    pub fn starting_at(horizon_ms: i64, watermark_ms: i64) -> Self {
        Self {
            horizon_ms,
            watermark_ms,
            seen: HashMap::new(),
            id_bytes: 0,
        }
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    fn remembers(&self, sighting: &Sighting) -> bool {
        self.watermark_ms.saturating_sub(sighting.watermark_after) <= self.horizon_ms
    }

    /// Decides on one event delivered at `offset` (offsets must increase) and remembers it.
    pub fn observe(&mut self, event_id: &str, ts_ms: i64, offset: i64) -> Verdict {
        let watermark_before = self.watermark_ms;
        self.watermark_ms = self.watermark_ms.max(ts_ms);
        let sighting = Sighting {
            offset,
            watermark_before,
            watermark_after: self.watermark_ms,
        };
        if let Some(previous) = self.seen.get(event_id).copied() {
            let verdict = if self.remembers(&previous) {
                Verdict::Duplicate
            } else {
                Verdict::First
            };
            // Every delivery restarts the horizon: an id is remembered after its latest
            // sighting, so a rebuilt filter (which sees only recent sightings) agrees.
            self.seen.insert(event_id.into(), sighting);
            return verdict;
        }
        self.id_bytes += event_id.len();
        self.seen.insert(event_id.into(), sighting);
        Verdict::First
    }

    /// Forgets ids that fell out of the horizon and returns where to re-read from to rebuild
    /// this filter; `None` when nothing is remembered (then re-reading starts after the
    /// checkpoint, with the current watermark).
    pub fn compact(&mut self) -> Option<ReplayPoint> {
        let watermark = self.watermark_ms;
        let horizon = self.horizon_ms;
        let mut freed = 0usize;
        self.seen.retain(|id, sighting| {
            let keep = watermark.saturating_sub(sighting.watermark_after) <= horizon;
            if !keep {
                freed += id.len();
            }
            keep
        });
        self.id_bytes -= freed;
        self.replay_point()
    }

    /// The lowest remembered offset and the watermark just before it.
    pub fn replay_point(&self) -> Option<ReplayPoint> {
        self.seen
            .values()
            .filter(|sighting| self.remembers(sighting))
            .min_by_key(|sighting| sighting.offset)
            .map(|sighting| ReplayPoint {
                offset: sighting.offset,
                watermark_ms: sighting.watermark_before,
            })
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// An estimate of the memory held, for the aggregator's memory cap.
    pub fn estimated_bytes(&self) -> usize {
        self.id_bytes + self.seen.len() * ENTRY_OVERHEAD_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const MINUTE: i64 = 60_000;

    #[test]
    fn a_retry_within_the_horizon_is_a_duplicate() {
        let mut filter = Deduplicator::new(10 * MINUTE);
        assert_eq!(filter.observe("a", 1_000, 0), Verdict::First);
        assert_eq!(filter.observe("b", 2_000, 1), Verdict::First);
        assert_eq!(filter.observe("a", 1_000, 2), Verdict::Duplicate);
    }

    #[test]
    fn a_late_event_is_remembered_like_a_fresh_one() {
        let mut filter = Deduplicator::new(10 * MINUTE);
        assert_eq!(filter.observe("now", 100 * MINUTE, 0), Verdict::First);
        // An event from an hour earlier, then its retry a little later.
        assert_eq!(filter.observe("late", 40 * MINUTE, 1), Verdict::First);
        assert_eq!(filter.observe("x", 105 * MINUTE, 2), Verdict::First);
        assert_eq!(filter.observe("late", 40 * MINUTE, 3), Verdict::Duplicate);
    }

    #[test]
    fn an_id_is_forgotten_once_the_watermark_moved_past_the_horizon() {
        let mut filter = Deduplicator::new(10 * MINUTE);
        assert_eq!(filter.observe("a", 0, 0), Verdict::First);
        assert_eq!(filter.observe("b", 11 * MINUTE, 1), Verdict::First);
        assert_eq!(
            filter.compact(),
            Some(ReplayPoint {
                offset: 1,
                watermark_ms: 0
            })
        );
        assert_eq!(filter.len(), 1);
        assert_eq!(filter.observe("a", 0, 2), Verdict::First);
    }

    /// Decisions after offset `cut` of an uninterrupted filter and of one rebuilt from the
    /// replay point taken at `cut`.
    fn decisions_after_restart(
        events: &[(u8, i64)],
        cut: usize,
        horizon: i64,
    ) -> (Vec<Verdict>, Vec<Verdict>) {
        let mut uninterrupted = Deduplicator::new(horizon);
        let mut before_cut = Deduplicator::new(horizon);
        let mut expected = Vec::new();
        for (offset, (id, ts)) in events.iter().enumerate() {
            let verdict = uninterrupted.observe(&id.to_string(), *ts, offset as i64);
            if offset >= cut {
                expected.push(verdict);
            } else {
                before_cut.observe(&id.to_string(), *ts, offset as i64);
            }
        }
        let point = before_cut.compact().unwrap_or(ReplayPoint {
            offset: cut as i64,
            watermark_ms: before_cut.watermark_ms(),
        });
        let mut rebuilt = Deduplicator::starting_at(horizon, point.watermark_ms);
        for (offset, (id, ts)) in events
            .iter()
            .enumerate()
            .take(cut)
            .skip(point.offset as usize)
        {
            rebuilt.observe(&id.to_string(), *ts, offset as i64);
        }
        let actual = events
            .iter()
            .enumerate()
            .skip(cut)
            .map(|(offset, (id, ts))| rebuilt.observe(&id.to_string(), *ts, offset as i64))
            .collect();
        (expected, actual)
    }

    proptest! {
        #[test]
        fn rebuilt_filter_decides_like_the_original(
            events in proptest::collection::vec((0u8..40, 0i64..30 * MINUTE), 1..200),
            cut_share in 0.0f64..1.0,
        ) {
            let cut = ((events.len() as f64) * cut_share) as usize;
            let (expected, actual) = decisions_after_restart(&events, cut, 10 * MINUTE);
            prop_assert_eq!(expected, actual);
        }

        #[test]
        fn without_eviction_each_id_counts_once(ids in proptest::collection::vec(0u16..500, 0..500)) {
            let mut filter = Deduplicator::new(i64::MAX / 4);
            let firsts = ids
                .iter()
                .enumerate()
                .filter(|(offset, id)| filter.observe(&id.to_string(), 0, *offset as i64) == Verdict::First)
                .count();
            prop_assert_eq!(firsts, ids.iter().collect::<HashSet<_>>().len());
        }
    }
}
