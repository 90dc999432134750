//! Realistic listeners: a week of plays per user, shaped like real traffic, from a seed.
//!
//! Fixtures shaped to pass (a heavy user who plays the same 12 songs every day) hide what real
//! traffic finds. Here every user has a personal library of thousands of songs drawn from a
//! global catalogue (popular songs first, so users share hits), plays it with a Zipf taste
//! that drifts a little every day (a few new favourites), at times that follow a daily shape
//! in the user's own time zone. Delivery is as messy as real clients make it: plays made
//! offline wait on the device and arrive when it reconnects, hours or days later, and clients
//! resend plays they got no acknowledgement for.
//!
//! The result is what has *arrived* by the spec's `now`: [`Play`]s in arrival order (the
//! order to produce them in), each event id delivered once or twice. [`to_messages`] turns
//! them into the [`GeneratedMessage`]s the rest of the crate produces and checks, and
//! [`minute_counts`] and [`top_songs`] are the brute-force truth to compare against.
//!
//! Delivery follows a client's queue: each user's plays are sent in the order they were
//! played, one after the other. A play made online is sent within seconds; a play made
//! during an offline period is sent when the period ends, with the rest of the backlog. A
//! resent play comes 1 s to 3 min after the first delivery for an online play, and right
//! after it (before the user's next delivery) for a play from the offline backlog, so every
//! resend falls inside the aggregator's duplicate horizon (10 minutes of event time) in any
//! partition that also carries current traffic, and in a partition holding this user alone.

mod assemble;
mod ids;
mod random;
mod stats;
mod week;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use topk_core::event::PlayEvent;
use topk_core::window::Window;

use crate::generate::{count_play, GeneratedMessage, MinuteCounts, Truth};
use assemble::{in_parallel, plays_in_arrival_order};
use week::{Simulator, World};

pub use crate::oracle::{per_day_counts, top_songs};
pub use ids::{EventId, InlineId, SongId};
pub use stats::{tier_stats, Spread, TierStats};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// One group of similar users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerTier {
    pub users: u32,
    /// Plays on a full day (each day varies by [`ListenerSpec::daily_variation`]).
    pub plays_per_day: u32,
    /// Zipf exponent of the user's taste over their own library: 1.0 is typical, 0.8 is a
    /// listener with broader taste.
    pub zipf_exponent: f64,
    /// Each user's library size is drawn uniformly from `library_min..=library_max`.
    pub library_min: u32,
    pub library_max: u32,
}

impl ListenerTier {
    /// A tier with libraries of 2 000 to 5 000 songs.
    pub fn new(users: u32, plays_per_day: u32, zipf_exponent: f64) -> Self {
        Self {
            users,
            plays_per_day,
            zipf_exponent,
            library_min: 2_000,
            library_max: 5_000,
        }
    }
}

impl fmt::Display for ListenerTier {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}x{}@{}",
            self.users, self.plays_per_day, self.zipf_exponent
        )
    }
}

/// `USERSxPLAYS_PER_DAY` or `USERSxPLAYS_PER_DAY@ZIPF_EXPONENT`, e.g. `100x300@0.8`.
impl FromStr for ListenerTier {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{text:?} is not USERSxPLAYS_PER_DAY[@ZIPF_EXPONENT]");
        let (counts, exponent) = text.split_once('@').unwrap_or((text, "1.0"));
        let (users, plays) = counts.split_once('x').ok_or_else(usage)?;
        let users: u32 = users.trim().parse().map_err(|_| usage())?;
        let plays_per_day: u32 = plays.trim().parse().map_err(|_| usage())?;
        let zipf_exponent: f64 = exponent.trim().parse().map_err(|_| usage())?;
        if !(zipf_exponent.is_finite() && zipf_exponent >= 0.0) {
            return Err(format!(
                "{text:?}: the Zipf exponent must be a non-negative number"
            ));
        }
        Ok(Self::new(users, plays_per_day, zipf_exponent))
    }
}

/// What to generate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenerSpec {
    pub tiers: Vec<ListenerTier>,
    /// Songs in the global catalogue that libraries are drawn from.
    pub catalogue_songs: u32,
    /// Zipf exponent of the catalogue's popularity: libraries are drawn popular songs first.
    pub catalogue_zipf_exponent: f64,
    /// Songs per user and day that rise from deep in the library into the top 10.
    pub new_favourites_per_day: u32,
    /// A day's plays vary uniformly by up to this share around the tier's plays per day.
    pub daily_variation: f64,
    /// Share of listening time spent offline (0..1): those plays arrive when the device
    /// reconnects, an hour to five days later.
    pub offline_share: f64,
    /// Share of plays made online that the client sends twice (0..1).
    pub retry_share: f64,
    /// Share of offline plays sent twice, right after their late first delivery (0..1).
    pub offline_retry_share: f64,
    pub seed: u64,
    /// The generation's "now": plays span the 7-day window ending here, and only what has
    /// arrived by then is generated.
    pub now: DateTime<Utc>,
}

impl ListenerSpec {
    /// 100 light (30 plays a day), 100 regular (100) and 50 heavy (300) listeners, Zipf 1.0.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            tiers: vec![
                ListenerTier::new(100, 30, 1.0),
                ListenerTier::new(100, 100, 1.0),
                ListenerTier::new(50, 300, 1.0),
            ],
            catalogue_songs: 200_000,
            catalogue_zipf_exponent: 1.0,
            new_favourites_per_day: 3,
            daily_variation: 0.2,
            offline_share: 0.03,
            retry_share: 0.01,
            offline_retry_share: 0.05,
            seed: 42,
            now,
        }
    }

    pub fn window(&self) -> Window {
        Window::last_week(self.now)
    }
}

/// One delivery of a play to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Play {
    pub event_id: EventId,
    /// Shared by the user's plays.
    pub user_id: Arc<str>,
    pub song_id: SongId,
    /// When the song was played, epoch milliseconds.
    pub ts_ms: i64,
    /// When this delivery reached the broker, epoch milliseconds (never after `now`).
    pub arrival_ms: i64,
    /// A client's resend of an event id delivered before.
    pub retry: bool,
}

impl Play {
    pub fn event(&self) -> PlayEvent {
        PlayEvent::new(
            self.event_id.to_string(),
            self.user_id.to_string(),
            self.song_id.to_string(),
            self.ts_ms,
        )
    }
}

/// One generated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub user_id: String,
    /// Index into [`ListenerSpec::tiers`].
    pub tier: usize,
    /// Place in the tier.
    pub index: u32,
    pub library_size: u32,
    pub utc_offset_hours: i64,
}

/// A generated week: the users and every delivery that arrived by `now`, in arrival order.
#[derive(Debug, Clone)]
pub struct ListenerTraffic {
    pub listeners: Vec<Listener>,
    pub plays: Vec<Play>,
}

/// Generates the listeners of `spec` and their week of plays, on every core. The same spec
/// always gives the same traffic; a user's plays depend only on the seed, their tier's
/// settings and their place in it.
pub fn generate_listeners(spec: &ListenerSpec) -> ListenerTraffic {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    generate_on_threads(spec, threads)
}

fn generate_on_threads(spec: &ListenerSpec, threads: usize) -> ListenerTraffic {
    let world = World::new(spec);
    let users: Vec<(usize, u32)> = spec
        .tiers
        .iter()
        .enumerate()
        .flat_map(|(tier_index, tier)| (0..tier.users).map(move |index| (tier_index, index)))
        .collect();
    // Users in consecutive runs of about equal work: the runs' deliveries in run order are
    // what one thread would have produced.
    let plays_of =
        |(tier_index, _): &(usize, u32)| u64::from(spec.tiers[*tier_index].plays_per_day).max(1);
    let simulated = in_parallel(threads, &users, plays_of, |first_number, run| {
        let mut simulator = Simulator::new(&world);
        let mut deliveries = Vec::new();
        let listeners: Vec<Listener> = run
            .iter()
            .zip(first_number..)
            .map(|(&(tier_index, index), number)| {
                simulator.listen(tier_index, index, number as u32, &mut deliveries)
            })
            .collect();
        (listeners, deliveries)
    });
    let mut listeners = Vec::with_capacity(users.len());
    let mut runs = Vec::with_capacity(simulated.len());
    for (run_listeners, run_deliveries) in simulated {
        listeners.extend(run_listeners);
        runs.push(run_deliveries);
    }
    let plays = plays_in_arrival_order(spec.seed, &listeners, &runs, threads);
    ListenerTraffic { listeners, plays }
}

/// The Kafka messages of `plays`, in the same order: keyed by user id, a first delivery is
/// [`Truth::Valid`] and a resend [`Truth::Duplicate`] with the same payload.
pub fn to_messages(plays: &[Play]) -> Vec<GeneratedMessage> {
    plays
        .iter()
        .map(|play| {
            let event = play.event();
            let payload = serde_json::to_vec(&event).expect("serialize event");
            let truth = if play.retry {
                Truth::Duplicate {
                    event_id: event.event_id,
                }
            } else {
                Truth::Valid(event)
            };
            GeneratedMessage {
                key: play.user_id.to_string(),
                payload,
                truth,
            }
        })
        .collect()
}

/// The expected minute table of `plays`: each event id counted once, as
/// [`crate::generate::expected_minute_counts`] counts the messages of [`to_messages`].
pub fn minute_counts(plays: &[Play]) -> MinuteCounts {
    let mut counts = MinuteCounts::new();
    for play in plays.iter().filter(|play| !play.retry) {
        count_play(&mut counts, &play.user_id, &play.song_id, play.ts_ms);
    }
    counts
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::Instant;

    use chrono::{NaiveDate, TimeZone};
    use topk_core::dedup::{Deduplicator, Verdict};
    use topk_core::event::parse_play_event;

    use super::*;
    use crate::generate::expected_minute_counts;

    /// The aggregator's default duplicate horizon.
    const DEDUP_HORIZON_MS: i64 = 600_000;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 17, 42, 13).unwrap()
            + chrono::Duration::milliseconds(517)
    }

    fn small_spec() -> ListenerSpec {
        let mut spec = ListenerSpec::new(now());
        spec.tiers = vec![
            ListenerTier::new(20, 30, 1.0),
            ListenerTier::new(20, 100, 1.0),
            ListenerTier::new(5, 300, 0.8),
        ];
        spec.offline_share = 0.2;
        spec.retry_share = 0.05;
        spec.offline_retry_share = 0.2;
        spec
    }

    #[test]
    fn same_seed_same_plays() {
        let spec = small_spec();
        let first = generate_listeners(&spec);
        assert_eq!(first.plays, generate_listeners(&spec).plays);
        assert_eq!(first.listeners, generate_listeners(&spec).listeners);
        let mut other_seed = spec;
        other_seed.seed += 1;
        assert_ne!(first.plays, generate_listeners(&other_seed).plays);
    }

    #[test]
    fn the_number_of_threads_changes_nothing() {
        let spec = small_spec();
        let on_one = generate_on_threads(&spec, 1);
        let on_three = generate_on_threads(&spec, 3);
        assert_eq!(on_one.plays, on_three.plays);
        assert_eq!(on_one.listeners, on_three.listeners);
    }

    #[test]
    fn plays_are_in_arrival_order_and_valid_now() {
        let spec = small_spec();
        let window = spec.window();
        let plays = generate_listeners(&spec).plays;
        assert!(plays
            .windows(2)
            .all(|pair| pair[0].arrival_ms <= pair[1].arrival_ms));
        for message in to_messages(&plays) {
            let event = parse_play_event(&message.payload, &window).expect("valid event");
            assert_eq!(message.key, event.user_id);
        }
    }

    #[test]
    fn each_event_id_counts_once() {
        let plays = generate_listeners(&small_spec()).plays;
        let first_deliveries: Vec<&Play> = plays.iter().filter(|play| !play.retry).collect();
        let distinct_ids: HashSet<&str> = plays.iter().map(|play| play.event_id.as_str()).collect();
        assert_eq!(distinct_ids.len(), first_deliveries.len());
        assert!(plays.len() > first_deliveries.len(), "no retries generated");
        let counts = minute_counts(&plays);
        assert_eq!(counts.values().sum::<u64>(), first_deliveries.len() as u64);
        assert_eq!(counts, expected_minute_counts(&to_messages(&plays)));
    }

    #[test]
    fn retries_share_event_id_and_payload_and_come_soon_after() {
        let plays = generate_listeners(&small_spec()).plays;
        let messages = to_messages(&plays);
        let mut first_delivery: HashMap<&str, usize> = HashMap::new();
        let mut previous_of_user: HashMap<&str, usize> = HashMap::new();
        let (mut online_retries, mut offline_retries) = (0, 0);
        for (position, (play, message)) in plays.iter().zip(&messages).enumerate() {
            let user_previous = previous_of_user.insert(&play.user_id, position);
            if !play.retry {
                assert!(matches!(message.truth, Truth::Valid(_)));
                first_delivery.insert(play.event_id.as_str(), position);
                continue;
            }
            assert_eq!(
                message.truth,
                Truth::Duplicate {
                    event_id: play.event_id.to_string()
                }
            );
            let first = first_delivery[play.event_id.as_str()];
            assert_eq!(messages[first].payload, message.payload);
            assert_eq!(messages[first].key, message.key);
            let resent_after_ms = play.arrival_ms - plays[first].arrival_ms;
            if resent_after_ms < 1_000 {
                // A resend from an offline backlog is the user's very next delivery.
                offline_retries += 1;
                assert_eq!(user_previous, Some(first));
                assert!((1..=20).contains(&resent_after_ms), "{resent_after_ms}");
            } else {
                online_retries += 1;
                assert!(resent_after_ms <= 180_000, "{resent_after_ms}");
                assert!(plays[first].arrival_ms - play.ts_ms < HOUR_MS, "{play:?}");
            }
        }
        assert!(online_retries > 0 && offline_retries > 0);
    }

    /// Runs the aggregator's duplicate filter over the plays, one filter per partition as
    /// `partition_of` assigns user ids, and checks it counts exactly the first deliveries.
    fn assert_filter_agrees(plays: &[Play], partition_of: impl Fn(&str) -> u64) {
        let mut filters: HashMap<u64, (Deduplicator, i64)> = HashMap::new();
        for play in plays {
            let (filter, offset) = filters
                .entry(partition_of(&play.user_id))
                .or_insert_with(|| (Deduplicator::new(DEDUP_HORIZON_MS), 0));
            *offset += 1;
            let verdict = filter.observe(&play.event_id, play.ts_ms, *offset);
            let expected = if play.retry {
                Verdict::Duplicate
            } else {
                Verdict::First
            };
            assert_eq!(verdict, expected, "{play:?}");
        }
    }

    #[test]
    fn retries_fall_inside_the_duplicate_horizon() {
        let plays = generate_listeners(&small_spec()).plays;
        let user_hash = |user_id: &str| -> u64 {
            user_id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
            })
        };
        assert_filter_agrees(&plays, |_| 0);
        assert_filter_agrees(&plays, |user_id| user_hash(user_id) % 4);
        assert_filter_agrees(&plays, user_hash);
    }

    #[test]
    fn late_plays_arrive_after_play_inside_the_window() {
        let spec = small_spec();
        let now_ms = spec.now.timestamp_millis();
        let plays = generate_listeners(&spec).plays;
        let mut late = 0usize;
        let mut days_late = 0usize;
        for play in &plays {
            assert!(
                play.ts_ms < play.arrival_ms && play.arrival_ms <= now_ms,
                "{play:?}"
            );
            assert!(play.arrival_ms - play.ts_ms <= 5 * DAY_MS, "{play:?}");
            let window_at_arrival =
                Window::last_week(DateTime::<Utc>::from_timestamp_millis(play.arrival_ms).unwrap());
            assert_eq!(window_at_arrival.admits(play.ts_ms), Ok(()), "{play:?}");
            late += usize::from(play.arrival_ms - play.ts_ms >= HOUR_MS);
            days_late += usize::from(play.arrival_ms - play.ts_ms >= DAY_MS);
        }
        let share = late as f64 / plays.len() as f64;
        assert!((0.05..0.4).contains(&share), "late share {share}");
        assert!(days_late > 0);
    }

    #[test]
    fn today_holds_only_the_plays_up_to_now() {
        let spec = small_spec();
        let window = spec.window();
        let today_start_ms = topk_core::window::day_start(window.today()).timestamp_millis();
        let counts = minute_counts(&generate_listeners(&spec).plays);
        let today: u64 = counts
            .iter()
            .filter(|((_, _, minute), _)| minute * 1000 >= today_start_ms)
            .map(|(_, plays)| plays)
            .sum();
        let last_full_day: u64 = counts
            .iter()
            .filter(|((_, _, minute), _)| {
                (today_start_ms - DAY_MS..today_start_ms).contains(&(minute * 1000))
            })
            .map(|(_, plays)| plays)
            .sum();
        assert!(counts
            .keys()
            .all(|(_, _, minute)| minute * 1000 <= spec.now.timestamp_millis()));
        // 17:42 UTC: most of the day's listening is still to come in the Americas.
        assert!(
            today > last_full_day / 5 && today < last_full_day,
            "{today} of {last_full_day}"
        );
    }

    #[test]
    fn tiers_parse_from_text() {
        assert_eq!("100x300@0.8".parse(), Ok(ListenerTier::new(100, 300, 0.8)));
        assert_eq!("50x30".parse(), Ok(ListenerTier::new(50, 30, 1.0)));
        for bad in ["", "50", "x30", "50x", "50x30@", "50x30@-1", "50x30@nan"] {
            assert!(bad.parse::<ListenerTier>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tier_statistics_are_realistic() {
        let mut spec = ListenerSpec::new(now());
        let mut small_library = ListenerTier::new(200, 100, 1.0);
        small_library.library_max = 2_000;
        spec.tiers = vec![
            ListenerTier::new(300, 30, 1.0),
            ListenerTier::new(300, 100, 1.0),
            small_library,
            ListenerTier::new(200, 100, 0.8),
            ListenerTier::new(100, 300, 1.0),
        ];
        let started = Instant::now();
        let traffic = generate_listeners(&spec);
        println!(
            "generated {} deliveries of {} listeners in {:.2?}",
            traffic.plays.len(),
            traffic.listeners.len(),
            started.elapsed()
        );
        let stats = tier_stats(&spec, &traffic);
        for tier in &stats {
            println!("{tier}");
        }
        let [light, regular, small_library, broad, heavy] = stats.as_slice() else {
            panic!("one entry per tier");
        };
        assert!(light.share_days_over_50_songs < 0.01);
        assert!(light.top_song_plays.median >= 3);
        for tier in [regular, small_library, broad, heavy] {
            assert!(tier.share_days_over_50_songs > 0.9, "{tier}");
            assert_eq!(tier.song_50_plays.median, 1, "{tier}");
        }
        assert!(
            heavy.songs_per_day.median > 150 && heavy.top_song_plays.median >= 20,
            "{heavy}"
        );
        assert!(broad.songs_per_day.median > regular.songs_per_day.median);
        let all_plays: u64 = stats.iter().map(|tier| tier.plays).sum();
        let late: u64 = stats.iter().map(|tier| tier.late_plays).sum();
        let retries: u64 = stats.iter().map(|tier| tier.retries).sum();
        assert!(
            (0.005..0.08).contains(&(late as f64 / all_plays as f64)),
            "{late}"
        );
        assert!(
            (0.005..0.03).contains(&(retries as f64 / all_plays as f64)),
            "{retries}"
        );
    }

    #[test]
    fn new_favourites_change_the_top_over_the_week() {
        // How many of the first full day's top 5 are still in the last full day's top 5.
        let kept_favourites = |new_favourites_per_day: u32| -> usize {
            let mut spec = ListenerSpec::new(now());
            spec.tiers = vec![ListenerTier::new(20, 300, 1.0)];
            spec.new_favourites_per_day = new_favourites_per_day;
            let traffic = generate_listeners(&spec);
            let counts = minute_counts(&traffic.plays);
            let days = spec.window().previous_days();
            let top_of = |user_id: &str, day: NaiveDate| -> HashSet<String> {
                let from_ms = topk_core::window::day_start(day).timestamp_millis();
                top_songs(&counts, user_id, from_ms, from_ms + DAY_MS - 1, 5)
                    .into_iter()
                    .map(|(song, _)| song)
                    .collect()
            };
            traffic
                .listeners
                .iter()
                .map(|listener| {
                    let first = top_of(&listener.user_id, days[0]);
                    let last = top_of(&listener.user_id, days[days.len() - 1]);
                    first.intersection(&last).count()
                })
                .sum()
        };
        let steady = kept_favourites(0);
        let drifting = kept_favourites(3);
        assert!(
            steady > 20 * 2 && drifting < steady / 2,
            "{steady} vs {drifting}"
        );
    }

    #[test]
    fn users_share_songs() {
        let counts = minute_counts(&generate_listeners(&small_spec()).plays);
        let user_songs: HashSet<(&str, &str)> = counts
            .keys()
            .map(|(user, song, _)| (user.as_str(), song.as_str()))
            .collect();
        let songs: HashSet<&str> = user_songs.iter().map(|(_, song)| *song).collect();
        assert!(songs.len() < user_songs.len() * 3 / 4, "users share songs");
    }

    #[test]
    fn a_thousand_heavy_listeners() {
        let mut spec = ListenerSpec::new(now());
        spec.tiers = vec![ListenerTier::new(1_000, 300, 1.0)];
        let started = Instant::now();
        let plays = generate_listeners(&spec).plays;
        println!(
            "1000 users x 7 days x 300 plays: {} deliveries in {:.2?}",
            plays.len(),
            started.elapsed()
        );
        // Six full days and most of today, less the offline plays not delivered yet.
        assert!(
            (1_800_000..2_100_000).contains(&plays.len()),
            "{}",
            plays.len()
        );
    }
}
