//! One listener's week: their library and taste, when they play, and how their client
//! delivers the plays.

use topk_core::window::{Window, WINDOW_DAYS};

use super::random::{mix64, AliasTable, SplitMix64};
use super::{Listener, ListenerSpec, ListenerTier, DAY_MS, HOUR_MS};

/// Offline periods last from an hour to just under five days.
const MIN_OFFLINE_MS: i64 = HOUR_MS;
const MAX_OFFLINE_MS: i64 = 5 * DAY_MS - 10 * 60_000;
/// An online play reaches the broker this long after it was played.
const ONLINE_DELAY_MS: (i64, i64) = (100, 3_000);
/// Consecutive sends from one client are this far apart (a backlog is sent this fast).
const SEND_GAP_MS: (i64, i64) = (2, 30);
/// A resent online play arrives this long after its first delivery (log-uniform).
const RETRY_DELAY_MS: (i64, i64) = (1_000, 180_000);
/// A resent offline play arrives this long after its first delivery.
const OFFLINE_RETRY_DELAY_MS: (i64, i64) = (1, 20);
/// New favourites rise from this rank or deeper into the top [`NEW_FAVOURITE_TOP`].
const NEW_FAVOURITE_FROM_RANK: usize = 50;
const NEW_FAVOURITE_TOP: usize = 10;

/// Relative listening per local hour of the day: quiet at night, a commute bump, an evening
/// peak.
const HOURLY_SHAPE: [f64; 24] = [
    3.0, 2.0, 1.2, 0.8, 0.7, 1.0, 2.5, 4.5, 5.5, 5.0, 4.5, 4.5, 5.0, 5.0, 4.8, 5.0, 5.5, 6.5, 7.5,
    8.5, 9.0, 8.5, 7.0, 5.0,
];

/// Users' UTC offsets in hours: a service used from the Americas to East Asia.
const UTC_OFFSETS_HOURS: [i64; 12] = [-8, -6, -5, -5, -3, 0, 1, 1, 2, 3, 5, 9];

/// A delivery before its ids are spelled out.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivery {
    pub(super) arrival_ms: i64,
    /// The listener's number in the generated set.
    pub(super) listener: u32,
    /// The play's place in its listener's week, in time order.
    pub(super) seq: u32,
    pub(super) retry: bool,
    /// The song's catalogue rank.
    pub(super) song: u32,
    pub(super) ts_ms: i64,
}

/// What every listener's simulation reads.
pub(super) struct World {
    spec: ListenerSpec,
    window: Window,
    catalogue: AliasTable,
    hour_of_day: AliasTable,
    /// Per tier: Zipf weights of the ranks of its largest library.
    tastes: Vec<AliasTable>,
}

impl World {
    pub(super) fn new(spec: &ListenerSpec) -> Self {
        let catalogue = AliasTable::zipf(
            spec.catalogue_songs.max(1) as usize,
            spec.catalogue_zipf_exponent,
        );
        let tastes = spec
            .tiers
            .iter()
            .map(|tier| AliasTable::zipf(library_max(tier, catalogue.len()), tier.zipf_exponent))
            .collect();
        Self {
            spec: spec.clone(),
            window: spec.window(),
            catalogue,
            hour_of_day: AliasTable::new(HOURLY_SHAPE),
            tastes,
        }
    }
}

fn library_max(tier: &ListenerTier, catalogue_songs: usize) -> usize {
    (tier.library_max.max(tier.library_min) as usize).clamp(1, catalogue_songs)
}

/// Reusable buffers of one thread simulating listeners one after the other.
pub(super) struct Simulator<'a> {
    world: &'a World,
    /// One bit per catalogue song: already in the library being drawn.
    in_library: Vec<u64>,
    library: Vec<u32>,
    plays: Vec<(i64, u32)>,
}

impl<'a> Simulator<'a> {
    pub(super) fn new(world: &'a World) -> Self {
        Self {
            world,
            in_library: vec![0; world.catalogue.len().div_ceil(64)],
            library: Vec::new(),
            plays: Vec::new(),
        }
    }

    /// Simulates one user's week, appending what they delivered by `now` to `deliveries`.
    pub(super) fn listen(
        &mut self,
        tier_index: usize,
        index: u32,
        listener_number: u32,
        deliveries: &mut Vec<Delivery>,
    ) -> Listener {
        let world = self.world;
        let tier = &world.spec.tiers[tier_index];
        let mut rng = SplitMix64::new(mix64(
            world.spec.seed ^ mix64(((tier_index as u64) << 32) | u64::from(index)),
        ));
        let library_max = library_max(tier, world.catalogue.len());
        let library_min = (tier.library_min as usize).clamp(1, library_max);
        let library_size = rng.between(library_min as i64, library_max as i64) as usize;
        let utc_offset_hours =
            UTC_OFFSETS_HOURS[rng.below(UTC_OFFSETS_HOURS.len() as u64) as usize];
        self.draw_library(&mut rng, library_size);
        self.play_week(&mut rng, tier_index, utc_offset_hours);
        self.deliver(&mut rng, listener_number, deliveries);
        Listener {
            user_id: format!("listener-{tier_index}-{index}"),
            tier: tier_index,
            index,
            library_size: library_size as u32,
            utc_offset_hours,
        }
    }

    /// Draws a library of `size` distinct catalogue songs by popularity, in the order drawn:
    /// that order is the user's taste (earlier is more loved), so favourites lean to hits
    /// while the long tail is personal.
    fn draw_library(&mut self, rng: &mut SplitMix64, size: usize) {
        let library = &mut self.library;
        let in_library = &mut self.in_library[..];
        library.clear();
        in_library.fill(0);
        // Adds a song unless the library has it; true once the library is full.
        let mut add = |song: usize| {
            let (word, bit) = (song / 64, 1 << (song % 64));
            if in_library[word] & bit == 0 {
                in_library[word] |= bit;
                library.push(song as u32);
            }
            library.len() >= size
        };
        for _ in 0..size.saturating_mul(20) {
            if add(self.world.catalogue.sample(rng)) {
                return;
            }
        }
        // A library close to the whole catalogue: the long tail fills the rest.
        for song in (0..self.world.catalogue.len()).rev() {
            if add(song) {
                return;
            }
        }
    }

    /// The user's plays of the window as (time played, catalogue song), in time order.
    fn play_week(&mut self, rng: &mut SplitMix64, tier_index: usize, utc_offset_hours: i64) {
        let world = self.world;
        let spec = &world.spec;
        let tier = &spec.tiers[tier_index];
        let taste = &world.tastes[tier_index];
        let ranking = &mut self.library[..];
        let plays = &mut self.plays;
        plays.clear();
        let now_ms = spec.now.timestamp_millis();
        let variation = spec.daily_variation.clamp(0.0, 1.0);
        let offset_ms = utc_offset_hours * HOUR_MS;
        for day in 0..i64::from(WINDOW_DAYS) {
            if day > 0 {
                promote_new_favourites(rng, ranking, spec.new_favourites_per_day);
            }
            let day_start_ms = world.window.from.timestamp_millis() + day * DAY_MS;
            let factor = 1.0 - variation + 2.0 * variation * rng.unit();
            let plays_today = (f64::from(tier.plays_per_day) * factor).round() as usize;
            let first_of_day = plays.len();
            for _ in 0..plays_today {
                let rank = taste.sample_below(rng, ranking.len());
                let local_ms =
                    world.hour_of_day.sample(rng) as i64 * HOUR_MS + rng.between(0, HOUR_MS - 1);
                let ts_ms = day_start_ms + (local_ms - offset_ms).rem_euclid(DAY_MS);
                // Today ends at `now`: its plays are the day's plays made so far.
                if ts_ms <= now_ms {
                    plays.push((ts_ms, ranking[rank]));
                }
            }
            plays[first_of_day..].sort_unstable();
        }
    }

    /// Sends the week's plays through the client's queue and keeps what arrived by `now`.
    fn deliver(&self, rng: &mut SplitMix64, listener: u32, deliveries: &mut Vec<Delivery>) {
        let spec = &self.world.spec;
        let now_ms = spec.now.timestamp_millis();
        let window_from_ms = self.world.window.from.timestamp_millis();
        let offline = offline_periods(rng, spec.offline_share, window_from_ms, now_ms);
        let mut next_period = 0usize;
        let mut last_send_ms = i64::MIN / 2;
        for (seq, &(ts_ms, song)) in self.plays.iter().enumerate() {
            while next_period < offline.len() && offline[next_period].1 <= ts_ms {
                next_period += 1;
            }
            let reconnect_ms = offline
                .get(next_period)
                .filter(|(start_ms, _)| *start_ms <= ts_ms)
                .map(|(_, end_ms)| *end_ms);
            let next_send_ms = last_send_ms + rng.between(SEND_GAP_MS.0, SEND_GAP_MS.1);
            let (arrival_ms, retry_ms) = match reconnect_ms {
                Some(reconnect_ms) => {
                    let arrival_ms = reconnect_ms.max(next_send_ms);
                    let (low, high) = OFFLINE_RETRY_DELAY_MS;
                    let retry_ms = rng
                        .chance(spec.offline_retry_share)
                        .then(|| arrival_ms + rng.between(low, high));
                    (arrival_ms, retry_ms)
                }
                None => {
                    let (low, high) = ONLINE_DELAY_MS;
                    let arrival_ms = (ts_ms + rng.between(low, high)).max(next_send_ms);
                    let (low, high) = RETRY_DELAY_MS;
                    let retry_ms = rng
                        .chance(spec.retry_share)
                        .then(|| arrival_ms + rng.log_uniform(low, high));
                    (arrival_ms, retry_ms)
                }
            };
            // The queue is in order: nothing behind a play that has not arrived yet has either.
            if arrival_ms > now_ms {
                return;
            }
            let delivery = Delivery {
                arrival_ms,
                listener,
                seq: seq as u32,
                retry: false,
                song,
                ts_ms,
            };
            deliveries.push(delivery);
            last_send_ms = arrival_ms;
            let Some(retry_ms) = retry_ms else {
                continue;
            };
            if reconnect_ms.is_some() {
                // A backlog resend holds the queue: it goes before the next play.
                last_send_ms = retry_ms;
            }
            if retry_ms <= now_ms {
                deliveries.push(Delivery {
                    arrival_ms: retry_ms,
                    retry: true,
                    ..delivery
                });
            }
        }
    }
}

/// Moves `count` songs from deep in the ranking into the top, pushing the rest down one.
fn promote_new_favourites(rng: &mut SplitMix64, ranking: &mut [u32], count: u32) {
    if ranking.len() <= NEW_FAVOURITE_FROM_RANK {
        return;
    }
    for _ in 0..count {
        let from = rng.between(NEW_FAVOURITE_FROM_RANK as i64, ranking.len() as i64 - 1) as usize;
        let to = rng.below(NEW_FAVOURITE_TOP as u64) as usize;
        ranking[to..=from].rotate_right(1);
    }
}

/// When the user's device was offline: (start, end) in epoch ms, in time order. Online and
/// offline periods alternate so that `share` of the time is spent offline.
fn offline_periods(rng: &mut SplitMix64, share: f64, from_ms: i64, now_ms: i64) -> Vec<(i64, i64)> {
    let mut periods = Vec::new();
    if share <= 0.0 {
        return periods;
    }
    let share = share.min(0.99);
    let mean_offline_ms = (MAX_OFFLINE_MS - MIN_OFFLINE_MS) as f64
        / (MAX_OFFLINE_MS as f64 / MIN_OFFLINE_MS as f64).ln();
    let mean_online_ms = mean_offline_ms * (1.0 - share) / share;
    let mut time_ms = from_ms;
    if rng.chance(share) {
        // Offline since before the window: part of the period has passed already.
        let length_ms = rng.log_uniform(MIN_OFFLINE_MS, MAX_OFFLINE_MS);
        let end_ms = from_ms + (length_ms as f64 * rng.unit()) as i64;
        periods.push((end_ms - length_ms, end_ms));
        time_ms = end_ms;
    }
    loop {
        time_ms += rng.exponential(mean_online_ms) as i64;
        if time_ms > now_ms {
            return periods;
        }
        let length_ms = rng.log_uniform(MIN_OFFLINE_MS, MAX_OFFLINE_MS);
        periods.push((time_ms, time_ms + length_ms));
        time_ms += length_ms;
    }
}
