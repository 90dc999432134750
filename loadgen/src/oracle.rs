//! The brute-force truth over a minute table: what a user's top list must be.
//!
//! Works on any [`MinuteCounts`] (from [`crate::generate::expected_minute_counts`] or
//! [`crate::listeners::minute_counts`]) and ranks as the API does: plays descending, then
//! `song_id` ascending in byte order, as ClickHouse compares strings.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use crate::generate::MinuteCounts;

/// The minute rows of one user: (song, minute start in epoch seconds, plays).
fn user_rows<'a>(
    counts: &'a MinuteCounts,
    user_id: &'a str,
) -> impl Iterator<Item = (&'a str, i64, u64)> + 'a {
    counts
        .range((user_id.to_owned(), String::new(), i64::MIN)..)
        .take_while(move |((user, _, _), _)| user == user_id)
        .map(|((_, song, minute), plays)| (song.as_str(), *minute, *plays))
}

/// The brute-force top list: a user's songs by plays (descending, then `song_id` ascending in
/// byte order, as ClickHouse compares strings), over the minutes that start in
/// `[from_ms, to_ms]` — the rule the API's minute query uses, which for a minute-aligned
/// `from_ms` is the distinct plays with `ts` in `[from_ms, to_ms]`.
pub fn top_songs(
    counts: &MinuteCounts,
    user_id: &str,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> Vec<(String, u64)> {
    let mut per_song: BTreeMap<&str, u64> = BTreeMap::new();
    for (song, minute_secs, plays) in user_rows(counts, user_id) {
        if (from_ms..=to_ms).contains(&(minute_secs * 1000)) {
            *per_song.entry(song).or_default() += plays;
        }
    }
    let mut ranked: Vec<(String, u64)> = per_song
        .into_iter()
        .map(|(song, plays)| (song.to_owned(), plays))
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(limit);
    ranked
}

/// A user's plays per UTC day and song.
pub fn per_day_counts(
    counts: &MinuteCounts,
    user_id: &str,
) -> BTreeMap<NaiveDate, BTreeMap<String, u64>> {
    let mut days: BTreeMap<NaiveDate, BTreeMap<String, u64>> = BTreeMap::new();
    for (song, minute_secs, plays) in user_rows(counts, user_id) {
        let day = DateTime::<Utc>::from_timestamp(minute_secs, 0)
            .map_or(NaiveDate::MIN, |time| time.date_naive());
        *days
            .entry(day)
            .or_default()
            .entry(song.to_owned())
            .or_default() += plays;
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    #[test]
    fn oracle_ranks_by_plays_then_song_id_bytes() {
        let minute = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().timestamp();
        let mut counts = MinuteCounts::new();
        let rows = [
            ("u", "s-9", "2026-11-24T10:00:00Z", 2),
            ("u", "s-10", "2026-11-24T10:01:00Z", 2),
            ("u", "S-z", "2026-11-24T10:02:00Z", 1),
            ("u", "s-a", "2026-11-24T10:02:00Z", 1),
            ("u", "s-a", "2026-11-24T11:00:00Z", 1),
            ("u", "s-old", "2026-11-23T23:59:00Z", 9),
            ("v", "s-0", "2026-11-24T10:00:00Z", 7),
            ("ua", "s-0", "2026-11-24T10:00:00Z", 7),
        ];
        for (user, song, at, plays) in rows {
            counts.insert((user.to_owned(), song.to_owned(), minute(at)), plays);
        }
        let day_start_ms = minute("2026-11-24T00:00:00Z") * 1000;
        let owned = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
            list.iter()
                .map(|(song, plays)| ((*song).to_owned(), *plays))
                .collect()
        };
        assert_eq!(
            top_songs(&counts, "u", day_start_ms, day_start_ms + DAY_MS - 1, 10),
            owned(&[("s-10", 2), ("s-9", 2), ("s-a", 2), ("S-z", 1)])
        );
        // The end is inclusive and a minute counts when it starts inside the range.
        let ten_past_ms = minute("2026-11-24T10:02:00Z") * 1000;
        assert_eq!(
            top_songs(&counts, "u", day_start_ms, ten_past_ms, 3),
            owned(&[("s-10", 2), ("s-9", 2), ("S-z", 1)])
        );
        assert_eq!(
            top_songs(&counts, "u", day_start_ms - DAY_MS, day_start_ms - 1, 10),
            owned(&[("s-old", 9)])
        );
        let days = per_day_counts(&counts, "u");
        assert_eq!(days.len(), 2);
        assert_eq!(
            days[&NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()]["s-a"],
            2
        );
    }
}
