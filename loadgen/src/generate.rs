//! Deterministic generation of play events, with the ground truth for each one.
//!
//! Users and songs follow Zipf distributions (a few heavy users, a few hit songs). A chosen
//! share of events is re-sent (a client retry: same payload, a few events later), a share is
//! malformed (cycling through every [`RejectReason`]), and a share is late (a valid play from
//! earlier in the window). The same seed always gives the same events.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};
use topk_core::event::{PlayEvent, RejectReason, MAX_ID_BYTES};
use topk_core::window::{minute_bucket_secs, Window, MAX_FUTURE_SKEW_MS};

/// What to generate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeneratorSpec {
    pub events: u64,
    pub users: u64,
    pub songs: u64,
    /// Zipf exponent for users (and songs): larger means more skewed.
    pub zipf_exponent: f64,
    pub seed: u64,
    /// Share of events sent twice (0..1).
    pub duplicate_share: f64,
    /// Share of events that break the contract (0..1).
    pub malformed_share: f64,
    /// Share of valid events from earlier in the 7-day window (0..1).
    pub late_share: f64,
    /// Valid event times spread over this many ms before `now`.
    pub spread_ms: i64,
    /// The generation's "now": times are chosen relative to it.
    pub now: DateTime<Utc>,
}

impl GeneratorSpec {
    pub fn new(events: u64, now: DateTime<Utc>) -> Self {
        Self {
            events,
            users: 1_000,
            songs: 5_000,
            zipf_exponent: 1.1,
            seed: 42,
            duplicate_share: 0.01,
            malformed_share: 0.01,
            late_share: 0.0,
            spread_ms: 10 * 60 * 1000,
            now,
        }
    }
}

/// What one generated message is, so tests can compute the expected outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Truth {
    /// A valid, first delivery.
    Valid(PlayEvent),
    /// A second delivery of an event sent earlier.
    Duplicate { event_id: String },
    /// A payload that breaks the contract, and why.
    Malformed(RejectReason),
}

/// One Kafka message to produce.
#[derive(Debug, Clone)]
pub struct GeneratedMessage {
    pub key: String,
    pub payload: Vec<u8>,
    pub truth: Truth,
}

/// The expected minute table: plays per (user, song, minute start in epoch seconds).
pub type MinuteCounts = BTreeMap<(String, String, i64), u64>;

/// Generates `spec.events` messages (duplicates included in that count).
pub fn generate(spec: &GeneratorSpec) -> Vec<GeneratedMessage> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let user_dist = Zipf::new(spec.users.max(1) as f64, spec.zipf_exponent).expect("zipf users");
    let song_dist = Zipf::new(spec.songs.max(1) as f64, spec.zipf_exponent).expect("zipf songs");
    let window = Window::last_week(spec.now);
    let now_ms = spec.now.timestamp_millis();
    let window_span_ms = now_ms - window.from.timestamp_millis();
    let mut messages: Vec<GeneratedMessage> = Vec::with_capacity(spec.events as usize);
    // Retries are sent a few messages after the original, like a client resend.
    let mut pending_retries: Vec<(u64, GeneratedMessage)> = Vec::new();
    let mut malformed_index = 0usize;
    let mut sequence = 0u64;
    while (messages.len() as u64) < spec.events {
        let position = messages.len() as u64;
        if let Some(index) = pending_retries.iter().position(|(due, _)| *due <= position) {
            let (_, retry) = pending_retries.swap_remove(index);
            messages.push(retry);
            continue;
        }
        sequence += 1;
        let user_id = format!("user-{}", user_dist.sample(&mut rng) as u64);
        let song_id = format!("song-{}", song_dist.sample(&mut rng) as u64);
        let event_id = format!("ev-{}-{sequence}", spec.seed);
        if rng.random_bool(spec.malformed_share.clamp(0.0, 1.0)) {
            let reason = RejectReason::ALL[malformed_index % RejectReason::ALL.len()];
            malformed_index += 1;
            let payload = malformed_payload(reason, &event_id, &user_id, &song_id, &window);
            messages.push(GeneratedMessage {
                key: user_id,
                payload,
                truth: Truth::Malformed(reason),
            });
            continue;
        }
        // Times go forward through the spread with the position, with jitter, like a live
        // stream; late events come from anywhere earlier in the window.
        let ts = if rng.random_bool(spec.late_share.clamp(0.0, 1.0)) {
            now_ms - rng.random_range(spec.spread_ms..window_span_ms.max(spec.spread_ms + 1))
        } else {
            let progress = position as f64 / spec.events.max(1) as f64;
            let base = now_ms - spec.spread_ms + (progress * spec.spread_ms as f64) as i64;
            (base - rng.random_range(0..5_000)).max(window.from.timestamp_millis())
        };
        let mut event = PlayEvent::new(event_id.clone(), user_id.clone(), song_id, ts);
        // Most clients say where and how long; older ones say neither.
        if rng.random_bool(0.8) {
            event.region = Some(REGIONS[rng.random_range(0..REGIONS.len())].to_owned());
            event.played_ms = Some(rng.random_range(1_000..400_000));
        }
        let payload = serde_json::to_vec(&event).expect("serialize event");
        if rng.random_bool(spec.duplicate_share.clamp(0.0, 1.0)) {
            let due = position + rng.random_range(1..50);
            pending_retries.push((
                due,
                GeneratedMessage {
                    key: user_id.clone(),
                    payload: payload.clone(),
                    truth: Truth::Duplicate { event_id },
                },
            ));
        }
        messages.push(GeneratedMessage {
            key: user_id,
            payload,
            truth: Truth::Valid(event),
        });
    }
    messages
}

/// The regions generated plays come from.
pub const REGIONS: [&str; 8] = ["US", "DE", "BR", "JP", "GB", "FR", "IN", "MX"];

fn malformed_payload(
    reason: RejectReason,
    event_id: &str,
    user_id: &str,
    song_id: &str,
    window: &Window,
) -> Vec<u8> {
    let ok_ts = window.to.timestamp_millis() - 1_000;
    let text = match reason {
        RejectReason::MalformedJson => format!(r#"{{"event_id":"{event_id}","user_id":"#),
        RejectReason::MissingField => {
            format!(r#"{{"event_id":"{event_id}","user_id":"{user_id}","ts":{ok_ts}}}"#)
        }
        RejectReason::EmptyField => format!(
            r#"{{"event_id":"{event_id}","user_id":"{user_id}","song_id":"","ts":{ok_ts}}}"#
        ),
        RejectReason::IdTooLong => format!(
            r#"{{"event_id":"{event_id}","user_id":"{user_id}","song_id":"{}","ts":{ok_ts}}}"#,
            "s".repeat(MAX_ID_BYTES + 1)
        ),
        RejectReason::IdControlCharacter => format!(
            r#"{{"event_id":"{event_id}","user_id":"{user_id}\u0001","song_id":"{song_id}","ts":{ok_ts}}}"#
        ),
        RejectReason::InvalidTs => format!(
            r#"{{"event_id":"{event_id}","user_id":"{user_id}","song_id":"{song_id}","ts":"last tuesday"}}"#
        ),
        RejectReason::TsInFuture => format!(
            r#"{{"event_id":"{event_id}","user_id":"{user_id}","song_id":"{song_id}","ts":{}}}"#,
            window.to.timestamp_millis() + MAX_FUTURE_SKEW_MS + 3_600_000
        ),
        RejectReason::TsTooOld => format!(
            r#"{{"event_id":"{event_id}","user_id":"{user_id}","song_id":"{song_id}","ts":{}}}"#,
            window.from.timestamp_millis() - 86_400_000
        ),
        // Lower case, as a careless client sends it.
        RejectReason::InvalidRegion => format!(
            r#"{{"event_id":"{event_id}","user_id":"{user_id}","song_id":"{song_id}","ts":{ok_ts},"region":"de"}}"#
        ),
        RejectReason::InvalidPlayedMs => format!(
            r#"{{"event_id":"{event_id}","user_id":"{user_id}","song_id":"{song_id}","ts":{ok_ts},"played_ms":-5}}"#
        ),
    };
    text.into_bytes()
}

/// The events that count, in order: the valid ones, each `event_id` once (its first delivery).
pub fn counted_events(messages: &[GeneratedMessage]) -> impl Iterator<Item = &PlayEvent> {
    let mut seen_event_ids: HashSet<&str> = HashSet::new();
    messages
        .iter()
        .filter_map(move |message| match &message.truth {
            Truth::Valid(event) if seen_event_ids.insert(&event.event_id) => Some(event),
            _ => None,
        })
}

/// The brute-force oracle: per-minute counts of the valid, distinct events.
pub fn expected_minute_counts(messages: &[GeneratedMessage]) -> MinuteCounts {
    let mut counts = MinuteCounts::new();
    for event in counted_events(messages) {
        count_play(&mut counts, &event.user_id, &event.song_id, event.ts);
    }
    counts
}

/// Plays and chart-eligible plays per (user, song, minute start in epoch seconds, region):
/// what the committed `plays_minute` rows sum to per key (`region` `""` when not said).
pub type RowCounts = BTreeMap<(String, String, i64, String), (u64, u64)>;

/// The brute-force oracle of the charts' side: per (user, song, minute, region), the valid,
/// distinct events and those of them played at least `chart_min_played_ms` (or of unknown
/// length).
pub fn expected_row_counts(messages: &[GeneratedMessage], chart_min_played_ms: u64) -> RowCounts {
    let mut counts = RowCounts::new();
    for event in counted_events(messages) {
        let entry = counts
            .entry((
                event.user_id.clone(),
                event.song_id.clone(),
                minute_bucket_secs(event.ts),
                event.region.clone().unwrap_or_default(),
            ))
            .or_default();
        entry.0 += 1;
        entry.1 += u64::from(event.chart_eligible(chart_min_played_ms));
    }
    counts
}

/// Counts one play in its (user, song, minute) row.
pub fn count_play(counts: &mut MinuteCounts, user_id: &str, song_id: &str, ts_ms: i64) {
    let key = (
        user_id.to_owned(),
        song_id.to_owned(),
        minute_bucket_secs(ts_ms),
    );
    *counts.entry(key).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use topk_core::event::parse_play_event;

    fn spec(events: u64) -> GeneratorSpec {
        let mut spec = GeneratorSpec::new(events, Utc::now());
        spec.duplicate_share = 0.05;
        spec.malformed_share = 0.05;
        spec.late_share = 0.05;
        spec
    }

    #[test]
    fn same_seed_same_events() {
        let spec = spec(2_000);
        let first: Vec<Vec<u8>> = generate(&spec).into_iter().map(|m| m.payload).collect();
        let second: Vec<Vec<u8>> = generate(&spec).into_iter().map(|m| m.payload).collect();
        assert_eq!(first, second);
    }

    #[test]
    fn truth_matches_what_the_parser_decides() {
        let spec = spec(5_000);
        let window = Window::last_week(spec.now);
        let messages = generate(&spec);
        assert_eq!(messages.len(), 5_000);
        let mut kinds = [0usize; 3];
        for message in &messages {
            let parsed = parse_play_event(&message.payload, &window);
            match &message.truth {
                Truth::Valid(event) => {
                    kinds[0] += 1;
                    assert_eq!(parsed.as_ref(), Ok(event));
                    assert_eq!(message.key, event.user_id);
                }
                Truth::Duplicate { event_id } => {
                    kinds[1] += 1;
                    assert_eq!(&parsed.unwrap().event_id, event_id);
                }
                Truth::Malformed(reason) => {
                    kinds[2] += 1;
                    assert_eq!(parsed.unwrap_err().reason, *reason);
                }
            }
        }
        assert!(kinds.iter().all(|count| *count > 0), "{kinds:?}");
    }

    #[test]
    fn oracle_counts_each_valid_event_once() {
        let messages = generate(&spec(3_000));
        let valid = messages
            .iter()
            .filter(|m| matches!(m.truth, Truth::Valid(_)))
            .count() as u64;
        let total: u64 = expected_minute_counts(&messages).values().sum();
        assert_eq!(total, valid);
    }
}
