//! A model of the store's read path, checked against brute force by a property test.
//!
//! The world: one Kafka partition whose flushes commit plays of a few users over the 7-day
//! window, claims that take over (capping their parent, sometimes leaving uncommitted rows
//! behind), rollups of days at random moments (each a snapshot of what was committed then:
//! per user the top 50 with truncation facts, and the heads it read), late plays into days
//! already rolled up, and operators pruning a rolled-up day's minute rows.
//!
//! At random moments the real planning code ([`ReadPlan::source`], [`WindowPlan::new`], the
//! commit rule of `topk_core::committed`, the snapshot heads of `topk_core::snapshots`) and an
//! in-memory twin of the query's SQL decide what is read; the real ranking then ranks it. The
//! answer must equal the brute-force top list over the committed plays, and be exact, unless a
//! pruned day makes it unprovable — in which case `exact` must be false whenever it differs.
//! Counts never go down between two moments while no day is pruned.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use proptest::prelude::*;
use topk_core::committed::{CommittedFlushes, PartitionCommits, SnapshotHeads};
use topk_core::schema::RollupProgressRow;
use topk_core::snapshots::DayHeads;
use topk_core::window::{day_number, Window};

use super::{DaySource, ReadPlan, WindowPlan};
use crate::ranking::{rank, StoredSong};

const TOP: usize = topk_core::schema::DAILY_TOP_SIZE;

#[derive(Debug, Clone)]
struct Row {
    user: u8,
    song: String,
    day: NaiveDate,
    plays: u64,
    claim: u64,
    seq: u64,
}

#[derive(Debug, Clone, Default)]
struct TopList {
    songs: Vec<(String, u64)>,
    user_songs: usize,
}

#[derive(Debug, Clone)]
struct Snapshot {
    progress: RollupProgressRow,
    lists: BTreeMap<u8, TopList>,
}

#[derive(Debug, Clone)]
enum Op {
    /// A committed flush: plays of one user on one day (day index 6 = today).
    Commit {
        user: u8,
        day: usize,
        songs: usize,
        seed: u64,
    },
    /// A flush whose rows land and whose commit never does (a crash), then a takeover.
    Crash {
        user: u8,
        day: usize,
        songs: usize,
        seed: u64,
    },
    /// A clean takeover (the previous owner released the partition).
    Handover,
    Rollup {
        day: usize,
    },
    Prune {
        day: usize,
    },
    Query,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..3, 0usize..7, 1usize..90, any::<u64>())
            .prop_map(|(user, day, songs, seed)| Op::Commit { user, day, songs, seed }),
        1 => (0u8..3, 0usize..7, 1usize..40, any::<u64>())
            .prop_map(|(user, day, songs, seed)| Op::Crash { user, day, songs, seed }),
        1 => Just(Op::Handover),
        3 => (0usize..6).prop_map(|day| Op::Rollup { day }),
        2 => Just(Op::Query),
    ]
}

fn pruning_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => op(),
        1 => (0usize..6).prop_map(|day| Op::Prune { day }),
    ]
}

struct World {
    now: DateTime<Utc>,
    days: Vec<NaiveDate>,
    rows: Vec<Row>,
    /// Claims oldest first: (id, last committed flush, released, cap set by its successor).
    claims: Vec<(u64, u64, bool, Option<u64>)>,
    snapshots: BTreeMap<NaiveDate, Snapshot>,
    pruned: BTreeSet<NaiveDate>,
    next_snapshot: u64,
}

impl World {
    fn new() -> Self {
        let now: DateTime<Utc> = "2026-11-24T15:30:00Z".parse().unwrap();
        let window = Window::last_week(now);
        let mut days = window.previous_days();
        days.push(window.today());
        Self {
            now,
            days,
            rows: Vec::new(),
            claims: vec![(1 << 32, 0, false, None)],
            snapshots: BTreeMap::new(),
            pruned: BTreeSet::new(),
            next_snapshot: 1,
        }
    }

    fn newest(&mut self) -> &mut (u64, u64, bool, Option<u64>) {
        self.claims.last_mut().expect("a claim")
    }

    /// Plays of `songs` songs of the user's library (skewed towards its head), at most 3 each.
    fn plays(user: u8, songs: usize, seed: u64) -> Vec<(String, u64)> {
        let mut state = seed | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..songs)
            .map(|_| {
                let draw = (next() % 10_000) as f64 / 10_000.0;
                let song = (draw * draw * 150.0) as u64;
                (format!("u{user}-s{song}"), 1 + next() % 3)
            })
            .collect()
    }

    fn write(&mut self, user: u8, day: usize, songs: usize, seed: u64, commit: bool) {
        let (claim, max_seq, _, _) = *self.newest();
        let seq = max_seq + 1;
        for (song, plays) in Self::plays(user, songs, seed) {
            self.rows.push(Row {
                user,
                song,
                day: self.days[day],
                plays,
                claim,
                seq,
            });
        }
        if commit {
            self.newest().1 = seq;
        }
    }

    fn take_over(&mut self, released: bool) {
        let (id, max_seq, _, _) = *self.newest();
        let parent = self.newest();
        parent.2 = released;
        parent.3 = Some(max_seq);
        self.claims.push((((id >> 32) + 1) << 32, 0, false, None));
    }

    fn committed(&self) -> CommittedFlushes {
        let (newest, newest_max_seq, _, _) = *self.claims.last().expect("a claim");
        let mut capped_claim_ids = Vec::new();
        let mut capped_max_seqs = Vec::new();
        for (id, _, released, cap) in &self.claims[..self.claims.len() - 1] {
            if !released {
                capped_claim_ids.push(*id);
                capped_max_seqs.push(cap.unwrap_or(0));
            }
        }
        capped_claim_ids.push(newest);
        capped_max_seqs.push(newest_max_seq);
        CommittedFlushes::from_rows(vec![PartitionCommits {
            consumer_group: "g".to_owned(),
            topic: "plays".to_owned(),
            kafka_partition: 0,
            newest_claim_id: newest,
            capped_claim_ids,
            capped_max_seqs,
            newest_max_seq,
            counted_through: 0,
            last_commit_at: self.now,
        }])
        .expect("one owner")
    }

    fn counted<'a>(&'a self, committed: &'a CommittedFlushes) -> impl Iterator<Item = &'a Row> {
        self.rows
            .iter()
            .filter(move |row| committed.counts(0, row.claim, row.seq))
    }

    fn roll_up(&mut self, day: usize) {
        let day = self.days[day];
        let committed = self.committed();
        let mut per_user: BTreeMap<u8, BTreeMap<String, u64>> = BTreeMap::new();
        for row in self.counted(&committed).filter(|row| row.day == day) {
            *per_user
                .entry(row.user)
                .or_default()
                .entry(row.song.clone())
                .or_default() += row.plays;
        }
        let lists = per_user
            .into_iter()
            .map(|(user, songs)| {
                let user_songs = songs.len();
                let mut ranked: Vec<(String, u64)> = songs.into_iter().collect();
                ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                ranked.truncate(TOP);
                (
                    user,
                    TopList {
                        songs: ranked,
                        user_songs,
                    },
                )
            })
            .collect();
        let heads = SnapshotHeads::of(&committed);
        self.next_snapshot += 1;
        let progress = RollupProgressRow {
            day,
            rolled_up_at: self.now,
            minute_rows_read: 1,
            plays_read: 1,
            users: 0,
            rows_written: 0,
            seconds: 0.0,
            snapshot_id: self.next_snapshot,
            snapshot_partitions: heads.partitions,
            snapshot_newest_claim_ids: heads.claim_ids,
            snapshot_newest_max_seqs: heads.max_seqs,
        };
        self.snapshots.insert(day, Snapshot { progress, lists });
    }

    /// What the store's plan would read now.
    fn plan(&self) -> ReadPlan {
        let committed = self.committed();
        let snapshots: BTreeMap<NaiveDate, RollupProgressRow> = self
            .snapshots
            .iter()
            .map(|(day, snapshot)| (*day, snapshot.progress.clone()))
            .collect();
        let heads = DayHeads::of(snapshots.values());
        // From the commits, which a prune of minute rows leaves in place.
        let late_days = self
            .counted(&committed)
            .filter(|row| snapshots.contains_key(&row.day))
            .filter(|row| heads.is_new(row.day, 0, row.claim, row.seq))
            .map(|row| row.day)
            .collect();
        let minute_days = self
            .rows
            .iter()
            .map(|row| row.day)
            .filter(|day| !self.pruned.contains(day))
            .collect();
        ReadPlan {
            first_day: self.days[0],
            last_day: *self.days.last().expect("today"),
            committed,
            snapshots,
            late_days,
            minute_days,
            data_through: None,
        }
    }

    /// The query's answer for `user`, evaluated in memory the way its SQL reads the tables.
    fn stored_songs(&self, plan: &ReadPlan, user: u8) -> Vec<StoredSong> {
        let window = Window::last_week(self.now);
        let window_plan = WindowPlan::new(&window, plan);
        let today = window.today();
        let mut songs: BTreeMap<String, (u64, Vec<(u16, u64)>)> = BTreeMap::new();
        let mut add = |song: &str, plays: u64, truncated_day: Option<(u16, u64)>| {
            let entry = songs.entry(song.to_owned()).or_default();
            entry.0 += plays;
            entry.1.extend(truncated_day);
        };
        // daily_top branch: the current snapshots of the days read from top lists.
        let mut truncated_days: Vec<u16> = Vec::new();
        for (day, snapshot) in &self.snapshots {
            let number = day_number(*day);
            if !window_plan
                .snapshot_ids
                .contains(&snapshot.progress.snapshot_id)
            {
                continue;
            }
            let Some(list) = snapshot.lists.get(&user) else {
                continue;
            };
            let truncated = list.user_songs > TOP;
            let only = window_plan.top_lists_only_days.contains(&number);
            if truncated && !only {
                truncated_days.push(number);
                continue;
            }
            let cutoff = list.songs.last().map_or(0, |(_, plays)| *plays);
            for (song, plays) in &list.songs {
                add(song, *plays, truncated.then_some((number, cutoff)));
            }
        }
        // The first query's minute rows, then the truncated days' query (only when a list
        // was truncated).
        for row in self.counted(&plan.committed) {
            if row.user != user || self.pruned.contains(&row.day) || row.day > today {
                continue;
            }
            let number = day_number(row.day);
            let late_row = window_plan
                .late_heads
                .is_new(row.day, 0, row.claim, row.seq);
            let first = window_plan.first_query_reads(number, late_row);
            let second = !truncated_days.is_empty()
                && window_plan.truncated_query_reads(&truncated_days, number, late_row);
            assert!(!(first && second), "a row read twice: {row:?}");
            if first || second {
                add(&row.song, row.plays, None);
            }
        }
        songs
            .into_iter()
            .map(|(song_id, (plays, truncated_days_present))| StoredSong {
                song_id,
                plays,
                truncated_days_present,
            })
            .collect()
    }

    /// The brute-force top list of `user` over every committed play of the window.
    fn brute_force(&self, user: u8, limit: usize) -> Vec<(String, u64)> {
        let committed = self.committed();
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for row in self.counted(&committed).filter(|row| row.user == user) {
            *totals.entry(row.song.clone()).or_default() += row.plays;
        }
        let mut ranked: Vec<(String, u64)> = totals.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(limit);
        ranked
    }
}

fn run(ops: Vec<Op>, limit: usize) -> Result<(), TestCaseError> {
    let mut world = World::new();
    let mut previous: BTreeMap<u8, BTreeMap<String, u64>> = BTreeMap::new();
    for op in ops.into_iter().chain([Op::Query]) {
        match op {
            Op::Commit {
                user,
                day,
                songs,
                seed,
            } => world.write(user, day, songs, seed, true),
            Op::Crash {
                user,
                day,
                songs,
                seed,
            } => {
                world.write(user, day, songs, seed, false);
                world.take_over(false);
            }
            Op::Handover => world.take_over(true),
            Op::Rollup { day } => world.roll_up(day),
            Op::Prune { day } => {
                if world.snapshots.contains_key(&world.days[day]) {
                    world.pruned.insert(world.days[day]);
                }
            }
            Op::Query => {
                let plan = world.plan();
                let complete = !WindowPlan::new(&Window::last_week(world.now), &plan).plays_lost;
                for user in 0..3u8 {
                    let mut answer = rank(world.stored_songs(&plan, user), limit);
                    answer.exact &= complete;
                    let shown: Vec<(String, u64)> = answer
                        .songs
                        .iter()
                        .map(|song| (song.song_id.clone(), song.plays))
                        .collect();
                    let truth = world.brute_force(user, limit);
                    if world.pruned.is_empty() {
                        prop_assert!(answer.exact, "user {user}: not exact");
                        prop_assert_eq!(&shown, &truth, "user {}", user);
                        // Counts never go down.
                        let full: BTreeMap<String, u64> =
                            rank(world.stored_songs(&plan, user), usize::MAX)
                                .songs
                                .into_iter()
                                .map(|song| (song.song_id, song.plays))
                                .collect();
                        for (song, before) in previous.get(&user).into_iter().flatten() {
                            let after = full.get(song).copied().unwrap_or(0);
                            prop_assert!(after >= *before, "{}: {} -> {}", song, before, after);
                        }
                        previous.insert(user, full);
                    } else if answer.exact {
                        prop_assert_eq!(&shown, &truth, "user {} (exact with pruned days)", user);
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_union_ranks_like_brute_force(ops in prop::collection::vec(op(), 1..40), limit in prop::sample::select(vec![1usize, 3, 10, 50])) {
        run(ops, limit)?;
    }

    #[test]
    fn with_pruned_days_exact_answers_are_still_right(ops in prop::collection::vec(pruning_op(), 1..40)) {
        run(ops, 10)?;
    }
}

#[test]
fn a_truncated_heavy_day_with_late_plays_is_exact() {
    let ops = vec![
        Op::Commit {
            user: 0,
            day: 2,
            songs: 85,
            seed: 7,
        },
        Op::Rollup { day: 2 },
        Op::Query,
        Op::Commit {
            user: 0,
            day: 2,
            songs: 20,
            seed: 9,
        },
        Op::Crash {
            user: 0,
            day: 2,
            songs: 30,
            seed: 11,
        },
        Op::Query,
        Op::Rollup { day: 2 },
    ];
    run(ops, 10).unwrap();
    // The model itself sees truncation: otherwise the test would prove little.
    let mut world = World::new();
    world.write(0, 2, 85, 7, true);
    world.roll_up(2);
    let list = &world.snapshots[&world.days[2]].lists[&0];
    assert!(list.user_songs > TOP, "{} songs", list.user_songs);
    assert!(matches!(
        world.plan().source(world.days[2], world.days[6]),
        DaySource::TopLists { late: false, .. }
    ));
}
