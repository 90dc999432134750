//! What a generated week looks like, per tier: enough to see whether it is realistic.

use std::collections::HashMap;
use std::fmt;

use super::{ListenerSpec, ListenerTier, ListenerTraffic, DAY_MS, HOUR_MS};

/// The rank whose plays tell a long tail (many songs played once) from a short playlist.
const TAIL_RANK: usize = 50;

/// Smallest, middle and largest of a set of values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spread {
    pub min: u64,
    pub median: u64,
    pub max: u64,
}

impl Spread {
    fn of(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        Self {
            min: values.first().copied().unwrap_or_default(),
            median: values.get(values.len() / 2).copied().unwrap_or_default(),
            max: values.last().copied().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}/{}", self.min, self.median, self.max)
    }
}

/// One tier of a generated week. "User-days" are the window's full days (not today).
#[derive(Debug, Clone, PartialEq)]
pub struct TierStats {
    pub tier: ListenerTier,
    pub users: u64,
    /// Distinct plays delivered (each event id once).
    pub plays: u64,
    /// Second deliveries of an event id.
    pub retries: u64,
    /// Plays first delivered an hour or more after they were played.
    pub late_plays: u64,
    /// Distinct plays per user-day.
    pub plays_per_day: Spread,
    /// Distinct songs per user-day.
    pub songs_per_day: Spread,
    /// Share of user-days with more than 50 distinct songs.
    pub share_days_over_50_songs: f64,
    /// Plays of a user-day's most played song.
    pub top_song_plays: Spread,
    /// Plays of a user-day's 50th song (0 when the day had fewer songs).
    pub song_50_plays: Spread,
}

impl fmt::Display for TierStats {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "tier {} (library {}..{}): {} users, {} plays, {} retries, {} late; per user-day \
             (min/median/max): plays {}, distinct songs {}, top song's plays {}, 50th song's \
             plays {}; {:.1}% of user-days have > 50 songs",
            self.tier,
            self.tier.library_min,
            self.tier.library_max,
            self.users,
            self.plays,
            self.retries,
            self.late_plays,
            self.plays_per_day,
            self.songs_per_day,
            self.top_song_plays,
            self.song_50_plays,
            self.share_days_over_50_songs * 100.0
        )
    }
}

/// Per-tier statistics of `traffic`, generated from `spec`.
pub fn tier_stats(spec: &ListenerSpec, traffic: &ListenerTraffic) -> Vec<TierStats> {
    let window = spec.window();
    let window_from_ms = window.from.timestamp_millis();
    let full_days = window.previous_days().len() as i64;
    let listener_of: HashMap<&str, usize> = traffic
        .listeners
        .iter()
        .enumerate()
        .map(|(number, listener)| (listener.user_id.as_str(), number))
        .collect();
    let mut stats: Vec<TierStats> = spec
        .tiers
        .iter()
        .map(|tier| TierStats {
            tier: tier.clone(),
            users: u64::from(tier.users),
            plays: 0,
            retries: 0,
            late_plays: 0,
            plays_per_day: Spread::default(),
            songs_per_day: Spread::default(),
            share_days_over_50_songs: 0.0,
            top_song_plays: Spread::default(),
            song_50_plays: Spread::default(),
        })
        .collect();
    // Plays per song of each (listener, full day).
    let mut user_days: HashMap<(usize, i64), HashMap<&str, u64>> = HashMap::new();
    for play in &traffic.plays {
        let listener = listener_of[&*play.user_id];
        let tier = &mut stats[traffic.listeners[listener].tier];
        if play.retry {
            tier.retries += 1;
            continue;
        }
        tier.plays += 1;
        if play.arrival_ms - play.ts_ms >= HOUR_MS {
            tier.late_plays += 1;
        }
        let day = (play.ts_ms - window_from_ms).div_euclid(DAY_MS);
        if day < full_days {
            *user_days
                .entry((listener, day))
                .or_default()
                .entry(&*play.song_id)
                .or_default() += 1;
        }
    }
    let mut per_tier_days: Vec<Vec<Vec<u64>>> = vec![Vec::new(); stats.len()];
    for ((listener, _), songs) in user_days {
        let mut plays: Vec<u64> = songs.into_values().collect();
        plays.sort_unstable_by(|a, b| b.cmp(a));
        per_tier_days[traffic.listeners[listener].tier].push(plays);
    }
    for (tier, days) in stats.iter_mut().zip(per_tier_days) {
        let over_50 = days.iter().filter(|plays| plays.len() > TAIL_RANK).count();
        tier.share_days_over_50_songs = over_50 as f64 / days.len().max(1) as f64;
        tier.plays_per_day = Spread::of(days.iter().map(|plays| plays.iter().sum()).collect());
        tier.songs_per_day = Spread::of(days.iter().map(|plays| plays.len() as u64).collect());
        tier.top_song_plays = Spread::of(days.iter().map(|plays| plays[0]).collect());
        tier.song_50_plays = Spread::of(
            days.iter()
                .map(|plays| plays.get(TAIL_RANK - 1).copied().unwrap_or_default())
                .collect(),
        );
    }
    stats
}
