//! Ranking a user's songs of the window, and deciding whether that ranking is exact.
//!
//! The store sums, per song, the plays it knows: exact per-minute counts for today and for
//! days not rolled up yet, and the counts in the stored daily top lists of rolled-up days. A
//! rolled-up day whose list was truncated (the user played more songs than were kept) hides
//! the songs it dropped, but bounds them: a dropped song had at most that day's *cutoff* (the
//! plays of the last kept song) on that day. So every song's true total `t` satisfies
//!
//! ```text
//! known ≤ t ≤ known + hidden_bound,   hidden_bound = Σ cutoffs of the truncated days whose list lacks the song
//! ```
//!
//! and a song that appears in no row at all ("unseen") has `0 ≤ t ≤ B`, `B` = the sum of the
//! cutoffs of all truncated days.
//!
//! The answer ranks by known plays (descending, then `song_id` ascending) and is `exact` when
//! every completion of the hidden counts within those bounds yields the same list with the
//! same plays. With `N` = limit and `last` = the N-th listed song, that holds iff
//!
//! 1. every listed song has `hidden_bound = 0`: otherwise its true count may be higher than
//!    the one shown (and it could also move up the list);
//! 2. if the list is full (`N` songs), no other song can reach `last`: for each unlisted seen
//!    song, `known + hidden_bound` is below `last.plays`, or equal with a `song_id` that sorts
//!    after `last.song_id`; and `B < last.plays` for unseen songs, whose ids are unknown and may
//!    sort first, so a tie is already a possible change;
//! 3. if the list is not full, `B = 0`: any hidden play of an unseen song would add it.
//!
//! Necessity: each failure names one completion that changes the list (raise that song's
//! hidden counts to their bounds). Sufficiency: when 1 holds the listed songs' counts and
//! order are certain, and 2 and 3 keep everyone else out. The `song_id` of the 50th kept
//! song could sharpen the bound by one play for ids sorting before it; we do not use it, so
//! `exact` may be false in such a tie where a finer argument would prove it — never the reverse.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Deserialize;

/// One song as the top-songs query returns it.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct StoredSong {
    pub song_id: String,
    /// The plays the store knows for certain.
    pub plays: u64,
    /// `(day number, cutoff)` of every truncated rolled-up day whose stored list holds the
    /// song. Every row of a truncated day carries that day's cutoff.
    pub truncated_days_present: Vec<(u16, u64)>,
}

/// One line of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankedSong {
    pub rank: u32,
    pub song_id: String,
    pub plays: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranking {
    pub songs: Vec<RankedSong>,
    pub exact: bool,
}

#[derive(Debug)]
struct Tally {
    song_id: String,
    known_plays: u64,
    hidden_bound: u64,
}

/// The top `limit` songs by plays (descending), then `song_id` (ascending), and whether the
/// list is exact (see the module documentation).
pub fn rank(stored: Vec<StoredSong>, limit: usize) -> Ranking {
    debug_assert!(limit >= 1, "a ranking lists at least one song");
    let limit = limit.max(1);
    let mut cutoff_by_day: BTreeMap<u16, u64> = BTreeMap::new();
    for song in &stored {
        for &(day, cutoff) in &song.truncated_days_present {
            cutoff_by_day.insert(day, cutoff);
        }
    }
    let unseen_bound: u64 = cutoff_by_day.values().sum();
    let mut tallies: Vec<Tally> = stored
        .into_iter()
        .filter(|song| song.plays > 0)
        .map(|song| {
            let present_cutoffs: u64 = song
                .truncated_days_present
                .iter()
                .map(|&(_, cutoff)| cutoff)
                .sum();
            Tally {
                hidden_bound: unseen_bound.saturating_sub(present_cutoffs),
                known_plays: song.plays,
                song_id: song.song_id,
            }
        })
        .collect();

    let by_rank = |a: &Tally, b: &Tally| -> Ordering {
        b.known_plays
            .cmp(&a.known_plays)
            .then_with(|| a.song_id.cmp(&b.song_id))
    };
    if tallies.len() > limit {
        tallies.select_nth_unstable_by(limit - 1, by_rank);
    }
    let listed_count = tallies.len().min(limit);
    tallies[..listed_count].sort_unstable_by(by_rank);
    let (listed, unlisted) = tallies.split_at(listed_count);

    let listed_counts_certain = listed.iter().all(|song| song.hidden_bound == 0);
    let nobody_else_can_enter = match listed.last() {
        Some(last) if listed.len() == limit => {
            let seen_stay_out = unlisted.iter().all(|song| {
                let most = song.known_plays.saturating_add(song.hidden_bound);
                most < last.known_plays || (most == last.known_plays && song.song_id > last.song_id)
            });
            seen_stay_out && unseen_bound < last.known_plays
        }
        _ => unseen_bound == 0,
    };

    let songs = listed
        .iter()
        .zip(1u32..)
        .map(|(song, rank)| RankedSong {
            rank,
            song_id: song.song_id.clone(),
            plays: song.known_plays,
        })
        .collect();
    Ranking {
        songs,
        exact: listed_counts_certain && nobody_else_can_enter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn song(id: &str, plays: u64, present: &[(u16, u64)]) -> StoredSong {
        StoredSong {
            song_id: id.to_owned(),
            plays,
            truncated_days_present: present.to_vec(),
        }
    }

    fn ids(ranking: &Ranking) -> Vec<&str> {
        ranking
            .songs
            .iter()
            .map(|song| song.song_id.as_str())
            .collect()
    }

    #[test]
    fn orders_by_plays_then_song_id_and_numbers_ranks() {
        let ranking = rank(
            vec![
                song("b", 3, &[]),
                song("c", 5, &[]),
                song("a", 3, &[]),
                song("d", 1, &[]),
            ],
            3,
        );
        assert_eq!(ids(&ranking), ["c", "a", "b"]);
        assert_eq!(
            ranking.songs.iter().map(|s| s.rank).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(ranking.exact);
    }

    #[test]
    fn no_songs_is_an_exact_empty_list() {
        assert_eq!(
            rank(Vec::new(), 10),
            Ranking {
                songs: Vec::new(),
                exact: true
            }
        );
    }

    #[test]
    fn truncation_that_cannot_matter_keeps_exact() {
        // Day 1 kept "a" and "b" and dropped songs with at most 1 play.
        let ranking = rank(vec![song("a", 9, &[(1, 1)]), song("b", 7, &[(1, 1)])], 2);
        assert!(ranking.exact);
    }

    #[test]
    fn an_unseen_song_that_could_tie_the_last_is_not_exact() {
        let ranking = rank(vec![song("a", 9, &[(1, 4)]), song("b", 4, &[(1, 4)])], 2);
        assert_eq!(ids(&ranking), ["a", "b"]);
        assert!(!ranking.exact);
    }

    #[test]
    fn a_seen_song_missing_from_a_truncated_day_can_enter() {
        // "c" was dropped from day 1 (cutoff 2): up to 1 + 2 = 3 plays, more than "b".
        let ranking = rank(
            vec![
                song("a", 9, &[(1, 2)]),
                song("b", 2, &[(1, 2)]),
                song("c", 1, &[]),
            ],
            2,
        );
        assert_eq!(ids(&ranking), ["a", "b"]);
        assert!(!ranking.exact);
    }

    #[test]
    fn a_listed_song_with_hidden_plays_is_not_exact() {
        // "b" is listed, but day 1 dropped it: its count may be too low.
        let ranking = rank(
            vec![
                song("a", 20, &[(1, 2)]),
                song("x", 2, &[(1, 2)]),
                song("b", 10, &[]),
            ],
            2,
        );
        assert_eq!(ids(&ranking), ["a", "b"]);
        assert!(!ranking.exact);
    }

    #[test]
    fn a_short_list_is_exact_only_without_truncation() {
        assert!(rank(vec![song("a", 2, &[])], 10).exact);
        assert!(!rank(vec![song("a", 2, &[(3, 1)])], 10).exact);
    }

    /// A view of the store in the interval model: songs with known plays and the truncated
    /// days whose lists hold them, and every truncated day's cutoff.
    #[derive(Debug, Clone)]
    struct View {
        known: BTreeMap<String, u64>,
        present: BTreeMap<String, BTreeSet<u16>>,
        cutoffs: BTreeMap<u16, u64>,
        limit: usize,
    }

    impl View {
        fn stored(&self) -> Vec<StoredSong> {
            self.known
                .iter()
                .map(|(id, &plays)| StoredSong {
                    song_id: id.clone(),
                    plays,
                    truncated_days_present: self.present[id]
                        .iter()
                        .map(|day| (*day, self.cutoffs[day]))
                        .collect(),
                })
                .collect()
        }
    }

    fn top_list(totals: &BTreeMap<String, u64>, limit: usize) -> Vec<(String, u64)> {
        let mut list: Vec<(String, u64)> = totals
            .iter()
            .filter(|(_, plays)| **plays > 0)
            .map(|(id, plays)| (id.clone(), *plays))
            .collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list.truncate(limit);
        list
    }

    /// Brute force: every completion of the hidden counts within their bounds, including one
    /// unseen song whose id ("") sorts before every other; exact iff all give the same list.
    fn oracle_exact(view: &View, shown: &[(String, u64)]) -> bool {
        let mut songs: Vec<String> = view.known.keys().cloned().collect();
        songs.push(String::new());
        let mut hidden_slots: Vec<(usize, u64)> = Vec::new();
        for (index, id) in songs.iter().enumerate() {
            for (day, cutoff) in &view.cutoffs {
                let holds = view.present.get(id).is_some_and(|days| days.contains(day));
                if !holds {
                    hidden_slots.push((index, *cutoff));
                }
            }
        }
        let mut values = vec![0u64; hidden_slots.len()];
        loop {
            let mut totals: BTreeMap<String, u64> = songs
                .iter()
                .map(|id| (id.clone(), view.known.get(id).copied().unwrap_or(0)))
                .collect();
            for ((song_index, _), value) in hidden_slots.iter().zip(&values) {
                *totals.get_mut(&songs[*song_index]).unwrap() += value;
            }
            if top_list(&totals, view.limit) != shown {
                return false;
            }
            // Next completion (odometer).
            let mut position = 0;
            loop {
                if position == values.len() {
                    return true;
                }
                if values[position] < hidden_slots[position].1 {
                    values[position] += 1;
                    break;
                }
                values[position] = 0;
                position += 1;
            }
        }
    }

    fn views() -> impl Strategy<Value = View> {
        let cutoffs = prop::collection::vec(1u64..=2, 0..=2);
        (cutoffs, 1usize..=4, 1usize..=3).prop_flat_map(|(cutoffs, song_count, limit)| {
            let day_count = cutoffs.len();
            let per_song = (prop::collection::vec(any::<bool>(), day_count), 0u64..=4);
            (
                Just(cutoffs),
                prop::collection::vec(per_song, song_count),
                Just(limit),
            )
                .prop_map(|(cutoffs, per_song, limit)| {
                    let cutoffs: BTreeMap<u16, u64> = (0u16..).zip(cutoffs).collect();
                    let mut known = BTreeMap::new();
                    let mut present = BTreeMap::new();
                    for (index, (holds, extra)) in per_song.into_iter().enumerate() {
                        let id = format!("s{index}");
                        let days: BTreeSet<u16> = (0u16..)
                            .zip(holds)
                            .filter(|(_, holds)| *holds)
                            .map(|(day, _)| day)
                            .collect();
                        // A kept song has at least the cutoff on each day that kept it.
                        let floor: u64 = days.iter().map(|day| cutoffs[day]).sum();
                        known.insert(id.clone(), floor + extra.max(u64::from(floor == 0)));
                        present.insert(id, days);
                    }
                    // A truncated day always keeps songs; drop days no song holds.
                    let cutoffs = cutoffs
                        .into_iter()
                        .filter(|(day, _)| present.values().any(|days| days.contains(day)))
                        .collect();
                    View {
                        known,
                        present,
                        cutoffs,
                        limit,
                    }
                })
        })
    }

    /// A user's true per-day counts, some days rolled up into top `keep` lists.
    fn truths() -> impl Strategy<Value = (Vec<BTreeMap<String, u64>>, Vec<bool>, usize, usize)> {
        let day =
            prop::collection::btree_map((0u8..6).prop_map(|n| format!("s{n}")), 1u64..=4, 0..6);
        (
            prop::collection::vec(day, 1..=4),
            prop::collection::vec(any::<bool>(), 4),
            1usize..=3,
            1usize..=4,
        )
    }

    /// What the rollup stores for one day: the top `keep` songs with the day's cutoff.
    fn roll_up(counts: &BTreeMap<String, u64>, keep: usize) -> (Vec<(String, u64)>, Option<u64>) {
        let kept = top_list(counts, keep);
        let truncated = counts.len() > keep;
        let cutoff = truncated.then(|| kept.last().map_or(0, |(_, plays)| *plays));
        (kept, cutoff)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// `exact` is precisely "every completion within the bounds gives the same list".
        #[test]
        fn exact_matches_brute_force_over_all_completions(view in views()) {
            let ranking = rank(view.stored(), view.limit);
            let shown: Vec<(String, u64)> = ranking
                .songs
                .iter()
                .map(|song| (song.song_id.clone(), song.plays))
                .collect();
            prop_assert_eq!(ranking.exact, oracle_exact(&view, &shown));
        }

        /// Against the rollup's real semantics: when `exact`, the list equals the top list of
        /// the untruncated counts; without truncation it is always exact.
        #[test]
        fn exact_lists_equal_the_untruncated_top_list(
            (days, rolled, keep, limit) in truths()
        ) {
            let mut truth: BTreeMap<String, u64> = BTreeMap::new();
            let mut stored: BTreeMap<String, StoredSong> = BTreeMap::new();
            let mut any_truncated = false;
            for (day_number, counts) in (0u16..).zip(&days) {
                for (id, plays) in counts {
                    *truth.entry(id.clone()).or_default() += plays;
                }
                let visible: Vec<(String, u64)> = if rolled[usize::from(day_number)] {
                    let (kept, cutoff) = roll_up(counts, keep);
                    any_truncated |= cutoff.is_some();
                    for (id, _) in &kept {
                        if let Some(cutoff) = cutoff {
                            stored
                                .entry(id.clone())
                                .or_insert_with(|| song(id, 0, &[]))
                                .truncated_days_present
                                .push((day_number, cutoff));
                        }
                    }
                    kept
                } else {
                    counts.iter().map(|(id, plays)| (id.clone(), *plays)).collect()
                };
                for (id, plays) in visible {
                    stored.entry(id.clone()).or_insert_with(|| song(&id, 0, &[])).plays += plays;
                }
            }
            let ranking = rank(stored.into_values().collect(), limit);
            let shown: Vec<(String, u64)> = ranking
                .songs
                .iter()
                .map(|song| (song.song_id.clone(), song.plays))
                .collect();
            if ranking.exact {
                prop_assert_eq!(shown, top_list(&truth, limit));
            }
            if !any_truncated {
                prop_assert!(ranking.exact);
            }
        }
    }
}
