//! The rollup job against the real ClickHouse: minute rows are written directly (no
//! aggregator), and every daily table is compared with a brute-force top 50 computed here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use topk_core::cluster::Placement;
use topk_core::db::ClickHouseOptions;
use topk_core::schema::{DailyTopRow, MinuteRow, RollupProgressRow, DAILY_TOP_SIZE};
use topk_core::window::day_start;
use topk_rollup::day_state::RollUpReason;
use topk_rollup::prune::{list_day_partitions, PruneStep};
use topk_rollup::staging::{list_staging_tables, staging_table_name};
use topk_rollup::{DayOutcome, DayResult, RollupJob};
use topk_tests::stack;

/// The first generated day; tests place "now" relative to it.
fn day(offset: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 10)
        .unwrap()
        .checked_add_days(Days::new(offset))
        .unwrap()
}

/// `hours` into day `offset`.
fn at(offset: u64, hours: i64) -> DateTime<Utc> {
    day_start(day(offset)) + chrono::Duration::hours(hours)
}

/// Minute rows for `users` users on `day`. Users cycle through the shapes the top 50 must
/// get right: fewer than 50 songs, exactly 50, 51, many, all songs tied, absent that day.
/// Play counts are small so ties around rank 50 are common; a (user, song) is split over
/// several rows, some in the same minute (as two aggregator flushes would write them).
fn generate_day(rng: &mut StdRng, day: NaiveDate, users: usize) -> Vec<MinuteRow> {
    let mut rows = Vec::new();
    for user_index in 0..users {
        let (song_count, tied) = match user_index % 6 {
            0 => (rng.random_range(1..DAILY_TOP_SIZE), false),
            1 => (DAILY_TOP_SIZE, false),
            2 => (DAILY_TOP_SIZE + 1, false),
            3 => (rng.random_range(DAILY_TOP_SIZE + 2..300), false),
            4 => (70, true),
            _ => continue,
        };
        let mut songs = BTreeSet::new();
        while songs.len() < song_count {
            // Unpadded ids, so "s10" sorts before "s9" as ClickHouse compares strings.
            songs.insert(format!("s{}", rng.random_range(0..600)));
        }
        for song_id in songs {
            let plays: u64 = if tied { 2 } else { rng.random_range(1..=12) };
            let mut left = plays;
            let mut minute = day_start(day) + chrono::Duration::minutes(rng.random_range(0..1440));
            while left > 0 {
                let row_plays = rng.random_range(1..=left.min(4));
                left -= row_plays;
                rows.push(MinuteRow {
                    user_id: format!("user-{user_index}"),
                    song_id: song_id.clone(),
                    minute,
                    plays: row_plays,
                    topic: "plays".to_owned(),
                    kafka_partition: (user_index % 4) as u32,
                    flush_offset: rng.random_range(0..1_000_000),
                    claim_id: 0,
                    flush_seq: 0,
                    region: String::new(),
                    chart_plays: 0,
                });
                if rng.random_bool(0.7) {
                    minute = day_start(day) + chrono::Duration::minutes(rng.random_range(0..1440));
                }
            }
        }
    }
    rows
}

fn generate(seed: u64, days: impl IntoIterator<Item = NaiveDate>, users: usize) -> Vec<MinuteRow> {
    let mut rng = StdRng::seed_from_u64(seed);
    days.into_iter()
        .flat_map(|day| generate_day(&mut rng, day, users))
        .collect()
}

/// Writes `rows` as committed flushes (one per partition), as the aggregator would.
async fn insert(options: &ClickHouseOptions, rows: &[MinuteRow]) {
    topk_tests::committed::write_committed(options, rows).await;
}

/// The oracle: each user's top 50 per day by plays descending then song_id ascending.
fn brute_force_top(rows: &[MinuteRow]) -> Vec<DailyTopRow> {
    let mut plays: HashMap<(NaiveDate, &str), HashMap<&str, u64>> = HashMap::new();
    for row in rows {
        *plays
            .entry((row.minute.date_naive(), &row.user_id))
            .or_default()
            .entry(&row.song_id)
            .or_default() += row.plays;
    }
    let mut expected = Vec::new();
    for ((day, user_id), songs) in plays {
        let mut ranked: Vec<(&str, u64)> = songs.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let user_songs = ranked.len() as u64;
        let truncated = ranked.len() > DAILY_TOP_SIZE;
        ranked.truncate(DAILY_TOP_SIZE);
        let cutoff = if truncated {
            ranked[DAILY_TOP_SIZE - 1].1
        } else {
            0
        };
        for (index, (song_id, song_plays)) in ranked.into_iter().enumerate() {
            expected.push(DailyTopRow {
                day,
                user_id: user_id.to_owned(),
                rank: (index + 1) as u16,
                song_id: song_id.to_owned(),
                plays: song_plays,
                user_songs,
                user_truncated: u8::from(truncated),
                user_cutoff_plays: cutoff,
                snapshot_id: 0,
            });
        }
    }
    expected.sort_by(|a, b| (a.day, &a.user_id, a.rank).cmp(&(b.day, &b.user_id, b.rank)));
    expected
}

/// `assert_eq!` for top lists, reporting the first difference instead of both whole tables.
#[track_caller]
fn assert_same_rows(actual: &[DailyTopRow], expected: &[DailyTopRow]) {
    if let Some(index) =
        (0..actual.len().max(expected.len())).find(|i| actual.get(*i) != expected.get(*i))
    {
        panic!(
            "daily_top differs at row {index} ({} rows vs {} expected):\n  actual:   {:?}\n  expected: {:?}",
            actual.len(),
            expected.len(),
            actual.get(index),
            expected.get(index)
        );
    }
}

fn on_days(rows: Vec<DailyTopRow>, days: &BTreeSet<NaiveDate>) -> Vec<DailyTopRow> {
    rows.into_iter()
        .filter(|row| days.contains(&row.day))
        .collect()
}

/// The rows of each day's current snapshot (the one readers read), snapshot ids zeroed.
async fn daily_top(client: &clickhouse::Client) -> Vec<DailyTopRow> {
    topk_tests::committed::current_daily_top(client, &Placement::SingleNode)
        .await
        .unwrap()
}

/// Rows of snapshots no rollup recorded: what a rollup killed while writing leaves.
async fn unrecorded_snapshot_rows(client: &clickhouse::Client) -> u64 {
    client
        .query(
            "SELECT count() FROM daily_top WHERE snapshot_id NOT IN \
             (SELECT snapshot_id FROM rollup_progress)",
        )
        .fetch_one()
        .await
        .unwrap()
}

async fn progress_rows(client: &clickhouse::Client) -> Vec<RollupProgressRow> {
    client
        .query("SELECT ?fields FROM rollup_progress ORDER BY day, snapshot_id")
        .fetch_all()
        .await
        .unwrap()
}

/// Per day, the figures of its latest rollup that do not depend on timing:
/// (minute rows read, plays read, users, rows written).
async fn latest_figures(client: &clickhouse::Client) -> BTreeMap<NaiveDate, (u64, u64, u64, u64)> {
    progress_rows(client)
        .await
        .into_iter()
        .map(|row| {
            (
                row.day,
                (
                    row.minute_rows_read,
                    row.plays_read,
                    row.users,
                    row.rows_written,
                ),
            )
        })
        .collect()
}

/// What the latest rollup of each day must have recorded, for the given rows.
fn expected_figures(
    rows: &[MinuteRow],
    days: &BTreeSet<NaiveDate>,
) -> BTreeMap<NaiveDate, (u64, u64, u64, u64)> {
    let top = brute_force_top(rows);
    days.iter()
        .map(|day| {
            let of_day = rows.iter().filter(|row| row.minute.date_naive() == *day);
            let minute_rows = of_day.clone().count() as u64;
            let plays = of_day.map(|row| row.plays).sum();
            let top_of_day = top.iter().filter(|row| row.day == *day);
            let users = top_of_day.clone().filter(|row| row.rank == 1).count() as u64;
            (*day, (minute_rows, plays, users, top_of_day.count() as u64))
        })
        .collect()
}

/// The job as the binary builds it, with `slices` concurrent queries per day.
fn job(options: &ClickHouseOptions, now: DateTime<Utc>, slices: u32) -> RollupJob {
    RollupJob {
        slices,
        ..RollupJob::new(options.client(), now)
    }
}

async fn run(options: &ClickHouseOptions, now: DateTime<Utc>) -> Vec<DayOutcome> {
    job(options, now, 2).run(|_| {}).await.unwrap()
}

fn rolled_up_days(outcomes: &[DayOutcome]) -> Vec<NaiveDate> {
    outcomes
        .iter()
        .filter(|outcome| matches!(outcome.result, DayResult::RolledUp { .. }))
        .map(|outcome| outcome.day)
        .collect()
}

fn days(range: std::ops::RangeInclusive<u64>) -> BTreeSet<NaiveDate> {
    range.map(day).collect()
}

#[tokio::test]
async fn rollup_of_eight_days_equals_brute_force_top_50() {
    let options = stack::fresh_database("rollup_eight_days").await;
    let client = options.client();
    let rows = generate(1, (0..8).map(day), 60);
    insert(&options, &rows).await;

    // A dry run reports the six complete days of the window and writes nothing.
    let dry = RollupJob {
        dry_run: true,
        ..job(&options, at(7, 12), 2)
    }
    .run(|_| {})
    .await
    .unwrap();
    assert_eq!(dry.len(), 6);
    assert!(dry.iter().all(|outcome| matches!(
        outcome.result,
        DayResult::WouldRollUp {
            reason: RollUpReason::NeverRolledUp,
            ..
        }
    )));
    assert!(daily_top(&client).await.is_empty());
    assert!(progress_rows(&client).await.is_empty());

    // Day 0 is outside the window and day 7 is today: neither is rolled up.
    assert_eq!(
        rolled_up_days(&run(&options, at(7, 12)).await),
        days(1..=6).into_iter().collect::<Vec<_>>()
    );
    // A backfill covers the old day; the next night covers day 7 and nothing else.
    let backfilled = job(&options, at(7, 12), 1)
        .backfill(day(0), day(0), |_| {})
        .await
        .unwrap();
    assert_eq!(rolled_up_days(&backfilled), vec![day(0)]);
    assert_eq!(rolled_up_days(&run(&options, at(8, 0)).await), vec![day(7)]);

    let expected = brute_force_top(&rows);
    assert!(expected
        .iter()
        .any(|row| row.user_truncated == 1 && row.rank == 50));
    assert!(expected.iter().any(|row| row.user_songs < 50));
    assert_same_rows(&daily_top(&client).await, &expected);
    assert_eq!(
        latest_figures(&client).await,
        expected_figures(&rows, &days(0..=7))
    );
    assert!(list_staging_tables(&client).await.unwrap().is_empty());
}

#[tokio::test]
async fn second_run_changes_nothing() {
    let options = stack::fresh_database("rollup_second_run").await;
    let client = options.client();
    insert(&options, &generate(2, (0..8).map(day), 30)).await;
    assert_eq!(rolled_up_days(&run(&options, at(7, 1)).await).len(), 6);
    let top_before = daily_top(&client).await;
    let progress_before = progress_rows(&client).await;

    let second = run(&options, at(7, 2)).await;
    assert_eq!(second.len(), 6);
    assert!(second
        .iter()
        .all(|outcome| matches!(outcome.result, DayResult::UpToDate { .. })));
    assert_same_rows(&daily_top(&client).await, &top_before);
    assert_eq!(progress_rows(&client).await, progress_before);
}

#[tokio::test]
async fn late_minute_rows_are_picked_up_by_the_next_run() {
    let options = stack::fresh_database("rollup_late_rows").await;
    let client = options.client();
    let mut rows = generate(3, (0..8).map(day), 30);
    insert(&options, &rows).await;
    run(&options, at(7, 1)).await;

    // Late plays for day 3: a new song that takes user-1's first place, and a new user.
    let late_minute = day_start(day(3)) + chrono::Duration::minutes(1439);
    let late: Vec<MinuteRow> = [("user-1", "late-hit", 1_000), ("late-user", "s1", 3)]
        .into_iter()
        .map(|(user_id, song_id, plays)| MinuteRow {
            user_id: user_id.to_owned(),
            song_id: song_id.to_owned(),
            minute: late_minute,
            plays,
            topic: "plays".to_owned(),
            kafka_partition: 0,
            flush_offset: 2_000_000,
            claim_id: 0,
            flush_seq: 0,
            region: String::new(),
            chart_plays: 0,
        })
        .collect();
    insert(&options, &late).await;
    rows.extend(late);

    let outcomes = job(&options, at(7, 2), 1).run(|_| {}).await.unwrap();
    assert_eq!(rolled_up_days(&outcomes), vec![day(3)]);
    let day_3 = outcomes
        .iter()
        .find(|outcome| outcome.day == day(3))
        .unwrap();
    assert!(
        matches!(
            day_3.result,
            DayResult::RolledUp {
                reason: RollUpReason::LateData,
                ..
            }
        ),
        "{day_3}"
    );
    let top = daily_top(&client).await;
    assert_same_rows(&top, &on_days(brute_force_top(&rows), &days(1..=6)));
    assert!(top
        .iter()
        .any(|row| row.day == day(3) && row.song_id == "late-hit" && row.rank == 1));
    assert_eq!(
        latest_figures(&client).await,
        expected_figures(&rows, &days(1..=6))
    );
}

#[tokio::test]
async fn concurrent_runs_swap_in_identical_complete_days() {
    let options = stack::fresh_database("rollup_concurrent").await;
    let client = options.client();
    let rows = generate(4, (0..8).map(day), 60);
    insert(&options, &rows).await;
    // One query per day against three concurrent slices: both must build the same days.
    let single = job(&options, at(7, 1), 1);
    let sliced = job(&options, at(7, 1), 3);
    let (first, second) = tokio::join!(single.run(|_| {}), sliced.run(|_| {}));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.len() + second.len(), 12);
    assert!(first.iter().chain(&second).all(|outcome| !outcome.failed()));
    assert_same_rows(
        &daily_top(&client).await,
        &on_days(brute_force_top(&rows), &days(1..=6)),
    );
    assert_eq!(
        latest_figures(&client).await,
        expected_figures(&rows, &days(1..=6))
    );
    assert!(list_staging_tables(&client).await.unwrap().is_empty());
}

/// Builds `topk-rollup` and returns its path. Cargo sets `CARGO_BIN_EXE_*` only for tests of
/// the binary's own package, so this test builds it (a no-op when it is fresh) into the
/// target dir this test binary runs from: `<target>/<profile>/deps/it-<hash>` ->
/// `<target>/<profile>/topk-rollup`.
fn rollup_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let test_exe = std::env::current_exe().unwrap();
        let profile_dir = test_exe
            .parent()
            .and_then(|deps| deps.parent())
            .unwrap()
            .to_owned();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "topk-rollup",
                "--bin",
                "topk-rollup",
                "--profile",
            ])
            .arg(&profile)
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(stack::repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p topk-rollup failed");
        profile_dir.join("topk-rollup")
    })
}

fn rollup_command(options: &ClickHouseOptions, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(rollup_binary());
    command
        .env("TOPK_CLICKHOUSE_URL", &options.clickhouse_url)
        .env("TOPK_CLICKHOUSE_DATABASE", &options.clickhouse_database)
        .env("RUST_LOG", "warn")
        .args(args)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Every day that has rows in `daily_top` must hold exactly the reference's rows: a reader
/// never sees half a day, whenever the job was killed.
fn assert_only_complete_days(actual: &[DailyTopRow], reference: &[DailyTopRow]) {
    let present: BTreeSet<NaiveDate> = actual.iter().map(|row| row.day).collect();
    assert_same_rows(actual, &on_days(reference.to_vec(), &present));
}

const KILLS: usize = 6;

#[tokio::test]
async fn run_killed_with_sigkill_then_rerun_equals_an_uninterrupted_run() {
    let now_arg = at(7, 1).to_rfc3339();
    let run_args = ["--now", now_arg.as_str(), "run"];
    let uninterrupted = stack::fresh_database("rollup_sigkill_reference").await;
    let rows = generate(5, (0..8).map(day), 1_500);
    insert(&uninterrupted, &rows).await;
    // Build (or find) the binary first: the timed run below sets the kill delays.
    rollup_binary();
    let started = Instant::now();
    let status = rollup_command(&uninterrupted, &run_args)
        .status()
        .await
        .unwrap();
    let full_run = started.elapsed();
    assert!(status.success());
    let reference = daily_top(&uninterrupted.client()).await;
    assert_same_rows(&reference, &on_days(brute_force_top(&rows), &days(1..=6)));

    let killed = stack::fresh_database("rollup_sigkill_killed").await;
    let client = killed.client();
    for table in ["plays_minute", "ingest_claims", "flush_commits"] {
        client
            .query(&format!(
                "INSERT INTO {table} SELECT * FROM `{}`.{table}",
                uninterrupted.clickhouse_database
            ))
            .execute()
            .await
            .unwrap();
    }
    // Even iterations kill after a random delay (any phase: start-up, planning, between
    // days, between a snapshot and its progress row); odd ones wait until the job is inside
    // a day's rollup (rows of a snapshot not recorded yet exist) and kill it a few ms later.
    let mut rng = StdRng::seed_from_u64(6);
    let mut interrupted = 0;
    for iteration in 0..KILLS {
        let unrecorded_before = unrecorded_snapshot_rows(&client).await;
        let mut child = rollup_command(&killed, &run_args).spawn().unwrap();
        if iteration % 2 == 0 {
            // A quarter of a full run at most, so work is left for the later kills.
            let delay = rng.random_range(0..(full_run.as_millis() as u64 / 4).max(1));
            tokio::time::sleep(Duration::from_millis(delay)).await;
        } else {
            let deadline = Instant::now() + Duration::from_secs(30);
            while unrecorded_snapshot_rows(&client).await == unrecorded_before
                && child.try_wait().unwrap().is_none()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        }
        if child.try_wait().unwrap().is_none() {
            child.start_kill().unwrap();
            let status = child.wait().await.unwrap();
            if status.signal() == Some(9) {
                interrupted += 1;
            }
        } else {
            child.wait().await.unwrap();
        }
        // Progress rows first: ClickHouse may still finish an insert the killed job had sent
        // whole, so a progress row can appear after the top lists were read (never before
        // its rows).
        let progress = progress_rows(&client).await;
        let top = daily_top(&client).await;
        assert_only_complete_days(&top, &reference);
        // A day the API may read (it has a progress row) has its top lists in place.
        let present: BTreeSet<NaiveDate> = top.iter().map(|row| row.day).collect();
        for progress in progress {
            let in_reference = reference.iter().any(|row| row.day == progress.day);
            assert_eq!(
                present.contains(&progress.day),
                in_reference,
                "{}",
                progress.day
            );
        }
    }
    // Rows of a snapshot never recorded prove a kill landed inside a day's rollup.
    let left_behind = unrecorded_snapshot_rows(&client).await;
    eprintln!(
        "sigkill: uninterrupted run took {full_run:?}; {interrupted} of {KILLS} kills hit a \
         running job, {left_behind} inside a day's rollup"
    );
    assert!(
        interrupted >= 3 && left_behind >= 1,
        "too few kills hit the job mid-work (full run {full_run:?})"
    );

    let status = rollup_command(&killed, &run_args).status().await.unwrap();
    assert!(status.success());
    assert_same_rows(&daily_top(&client).await, &reference);
    assert_eq!(
        latest_figures(&client).await,
        latest_figures(&uninterrupted.client()).await
    );
}

#[tokio::test]
async fn binary_exit_codes() {
    let options = stack::fresh_database("rollup_exit_codes").await;
    let code = |args: &'static [&'static str], options: ClickHouseOptions| async move {
        rollup_command(&options, args)
            .status()
            .await
            .unwrap()
            .code()
    };
    assert_eq!(
        code(&["--now", "2026-11-17T01:00:00Z"], options.clone()).await,
        Some(0)
    );
    assert_eq!(code(&["--no-such-flag"], options.clone()).await, Some(2));
    assert_eq!(
        code(
            &["backfill", "--from", "2026-11-12", "--to", "2026-11-11"],
            options.clone()
        )
        .await,
        Some(2)
    );
    assert_eq!(
        code(
            &[
                "--now",
                "2026-11-17T01:00:00Z",
                "backfill",
                "--from",
                "2026-11-12",
                "--to",
                "2026-11-17"
            ],
            options.clone()
        )
        .await,
        Some(2)
    );
    let unreachable = ClickHouseOptions::new("http://127.0.0.1:1", "topk");
    assert_eq!(code(&["run"], unreachable).await, Some(1));
    let unmigrated = ClickHouseOptions::new(
        options.clickhouse_url.clone(),
        "topk_test_rollup_never_created",
    );
    assert_eq!(code(&["run"], unmigrated).await, Some(1));
}

#[tokio::test]
async fn prune_drops_exactly_the_partitions_outside_the_window_and_retention() {
    let options = stack::fresh_database("rollup_prune").await;
    let client = options.client();
    let mut rows = generate(7, (0..10).map(day), 12);
    insert(&options, &rows).await;
    let now = at(9, 10); // window: days 3..=9, complete days 3..=8
    for old_day in [day(0), day(2)] {
        job(&options, now, 2)
            .backfill(old_day, old_day, |_| {})
            .await
            .unwrap();
    }
    run(&options, now).await;
    // Day 2 gets a late row after its rollup; day 1 was never rolled up.
    let mut late = rows
        .iter()
        .find(|row| row.minute.date_naive() == day(2))
        .unwrap()
        .clone();
    late.flush_offset += 1;
    insert(&options, std::slice::from_ref(&late)).await;
    rows.push(late);
    let clock_now = Utc::now();
    let stale = staging_table_name(day(4), clock_now - chrono::Duration::hours(30), 1);
    let fresh = staging_table_name(day(5), clock_now - chrono::Duration::hours(1), 2);
    for name in [&stale, &fresh] {
        client
            .query(&format!("CREATE TABLE {name} AS daily_top"))
            .execute()
            .await
            .unwrap();
    }
    let state = || async {
        (
            list_day_partitions(&client, &Placement::SingleNode, "plays_minute")
                .await
                .unwrap(),
            list_day_partitions(&client, &Placement::SingleNode, "daily_top")
                .await
                .unwrap(),
            list_staging_tables(&client).await.unwrap(),
        )
    };
    let initial = state().await;
    assert_eq!(initial.0, (0..=9).map(day).collect::<Vec<_>>());
    assert_eq!(initial.1, [0, 2, 3, 4, 5, 6, 7, 8].map(day).to_vec());

    let dry = RollupJob {
        dry_run: true,
        ..job(&options, now, 2)
    }
    .prune(8, |_| {})
    .await
    .unwrap();
    let planned: Vec<PruneStep> = dry.iter().map(|outcome| outcome.step.clone()).collect();
    assert_eq!(
        planned,
        vec![
            PruneStep::DropMinutePartition(day(0)),
            PruneStep::KeepMinutePartition {
                day: day(1),
                changed_since_rollup: false
            },
            // Day 2, the day before the window, is kept whatever its state: local weeks
            // (`?tz=`) start in it.
            PruneStep::DropDailyPartition(day(0)),
            PruneStep::DropStagingTable(stale.clone()),
        ]
    );
    assert_eq!(state().await, initial, "a dry run drops nothing");

    // Retention 8 days: daily partitions from day 2 on stay.
    job(&options, now, 2).prune(8, |_| {}).await.unwrap();
    let after = state().await;
    assert_eq!(after.0, (1..=9).map(day).collect::<Vec<_>>());
    assert_eq!(after.1, (2..=8).map(day).collect::<Vec<_>>());
    assert_eq!(after.2, vec![fresh.clone()]);
    // Retention 7 (the default): day 2's top lists go too; the unsafe minute days still stay.
    job(&options, now, 2).prune(7, |_| {}).await.unwrap();
    let after = state().await;
    assert_eq!(after.0, (1..=9).map(day).collect::<Vec<_>>());
    assert_eq!(after.1, (3..=8).map(day).collect::<Vec<_>>());
    // Once backfilled, their minute rows can go.
    job(&options, now, 2)
        .backfill(day(1), day(2), |_| {})
        .await
        .unwrap();
    job(&options, now, 2).prune(7, |_| {}).await.unwrap();
    let after = state().await;
    // Day 2, the day before the window, stays: local weeks (`?tz=`) start in it.
    assert_eq!(after.0, (2..=9).map(day).collect::<Vec<_>>());
    assert_eq!(after.1, (3..=8).map(day).collect::<Vec<_>>());
    // The window's top lists were never touched.
    assert_same_rows(
        &daily_top(&client).await,
        &on_days(brute_force_top(&rows), &days(3..=8)),
    );
    // A backfill of a pruned day keeps its rollup instead of replacing it with nothing.
    let kept = job(&options, now, 2)
        .backfill(day(0), day(0), |_| {})
        .await
        .unwrap();
    assert!(
        matches!(kept[0].result, DayResult::KeptRollupOfPrunedDay { .. }),
        "{}",
        kept[0]
    );
}
