//! Rollup throughput: one day of minute rows (5 M by default, `TOPK_BENCH_ROLLUP_ROWS` to
//! change it) rolled up into daily top 50s, against ClickHouse's own scan of the same rows
//! (`SELECT count() FROM (.. GROUP BY user_id, song_id)`), the floor any rollup pays.
//! Target: the rollup costs at most ~2x that scan.
//!
//! Run: `cargo bench -p topk-tests --bench rollup` (needs the local stack's ClickHouse);
//! `TOPK_ROLLUP_SLICES` sets the rollup's slices as for the binary.

use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use topk_core::schema::{MinuteRow, RollupProgressRow};
use topk_core::window::day_start;
use topk_tests::stack;

const DEFAULT_ROWS: u64 = 5_000_000;
const USERS: u64 = 50_000;
const CATALOG_SONGS: u64 = 300_000;
const REPEATS: usize = 3;
const TARGET_RATIO: f64 = 2.0;
/// The floor: ClickHouse's own aggregation of the day per (user, song).
const SCAN: &str = "SELECT count() FROM (SELECT user_id, song_id, sum(plays) FROM plays_minute \
                    WHERE minute >= toDateTime(?) AND minute < toDateTime(?) \
                    GROUP BY user_id, song_id)";

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn rows_per_second(rows: u64, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64()
}

/// A stable pseudo-random number for `value` (splitmix64's finalizer).
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Writes `rows` minute rows of `day` shaped like a day of listening: a few heavy users and
/// many light ones; each user has a repertoire of 10 to 160 songs (drawn from a catalog of
/// 300 k) and plays favourites more; mostly one play per row.
async fn load_day(options: &topk_core::db::ClickHouseOptions, day: NaiveDate, rows: u64) {
    let mut claims = Vec::new();
    for partition in 0..8 {
        claims.push(topk_tests::committed::claim(options, "plays", partition).await);
    }
    let mut rng = StdRng::seed_from_u64(7);
    let client = options.client();
    let mut insert = client.insert::<MinuteRow>("plays_minute").await.unwrap();
    let start = day_start(day);
    for index in 0..rows {
        let user = (rng.random::<f64>().powi(2) * USERS as f64) as u64;
        let repertoire = 10 + mix(user) % 150;
        let favourite = (rng.random::<f64>().powi(2) * repertoire as f64) as u64;
        let song = mix(user * 1_000 + favourite) % CATALOG_SONGS;
        let row = MinuteRow {
            user_id: format!("user-{user}"),
            song_id: format!("song-{song}"),
            minute: start + chrono::Duration::minutes(rng.random_range(0..1440)),
            plays: if rng.random_bool(0.8) {
                1
            } else {
                rng.random_range(2..=3)
            },
            topic: "plays".to_owned(),
            kafka_partition: (index % 8) as u32,
            flush_offset: index,
            claim_id: claims[(index % 8) as usize].claim_id,
            flush_seq: 1,
            region: String::new(),
            chart_plays: 0,
        };
        insert.write(&row).await.unwrap();
    }
    insert.end().await.unwrap();
    for claim in &claims {
        topk_tests::committed::commit_first_flush(options, "plays", claim, rows as i64, &[day])
            .await;
    }
}

/// The machine's 1-minute load average (the benchmark shares 2 cores with whatever runs).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Runs [`SCAN`] over `day` and returns how many (user, song) pairs it found.
async fn scan_pairs(client: &clickhouse::Client, day: NaiveDate) -> u64 {
    client
        .query(SCAN)
        .bind(day_start(day).timestamp())
        .bind(day_start(day).timestamp() + 86_400)
        .fetch_one()
        .await
        .unwrap()
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::var("TOPK_BENCH_ROLLUP_ROWS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_ROWS);
    let slices: u32 = std::env::var("TOPK_ROLLUP_SLICES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(topk_rollup::rollup::DEFAULT_SLICES)
        .max(1);
    let day = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap();
    let options = stack::fresh_database("bench_rollup").await;
    let client = options.client();

    let started = Instant::now();
    load_day(&options, day, rows).await;
    let load = started.elapsed();
    // One part per partition, as background merges leave a day long before its rollup.
    client
        .query("OPTIMIZE TABLE plays_minute FINAL")
        .execute()
        .await
        .unwrap();
    let pairs = scan_pairs(&client, day).await;
    let plays: u64 = client
        .query("SELECT sum(plays) FROM plays_minute")
        .fetch_one()
        .await
        .unwrap();

    // Interleaved, so load from other processes on the machine hits every variant alike.
    // The rollup runs once as one query per day and once split into `slices` queries.
    let load_before = load_average();
    let mut scans = Vec::new();
    let mut single_query = Vec::new();
    let mut sliced = Vec::new();
    let mut last_progress: Option<RollupProgressRow> = None;
    for _ in 0..REPEATS {
        let started = Instant::now();
        let scanned = scan_pairs(&client, day).await;
        scans.push(started.elapsed());
        assert_eq!(scanned, pairs);
        for (variant_slices, timings) in [(1, &mut single_query), (slices, &mut sliced)] {
            let started = Instant::now();
            let progress = topk_rollup::roll_up_day(
                &client,
                &topk_core::cluster::Placement::SingleNode,
                day,
                variant_slices,
            )
            .await
            .unwrap();
            timings.push(started.elapsed());
            assert_eq!(progress.minute_rows_read, rows);
            assert_eq!(progress.plays_read, plays);
            if let Some(previous) = &last_progress {
                assert_eq!(
                    (progress.users, progress.rows_written),
                    (previous.users, previous.rows_written)
                );
            }
            last_progress = Some(progress);
        }
    }
    let progress = last_progress.expect("at least one rollup");
    let scan = median(scans);

    println!(
        "rollup benchmark: {rows} minute rows of {day}, {pairs} (user, song) pairs, {} users, \
         {} top rows written; load average {load_before} before, {} after",
        progress.users,
        progress.rows_written,
        load_average()
    );
    println!(
        "  load (RowBinary insert + generation):  {:>7.2} s  {:>10.0} rows/s",
        load.as_secs_f64(),
        rows_per_second(rows, load)
    );
    println!(
        "  clickhouse scan, GROUP BY user, song:   {:>7.3} s  {:>10.0} rows/s  (median of {REPEATS})",
        scan.as_secs_f64(),
        rows_per_second(rows, scan)
    );
    for (label, timings) in [
        ("rollup, 1 query".to_owned(), single_query),
        (format!("rollup, {slices} slices"), sliced),
    ] {
        let rollup = median(timings);
        let ratio = rollup.as_secs_f64() / scan.as_secs_f64();
        let verdict = if ratio <= TARGET_RATIO {
            "within"
        } else {
            "ABOVE"
        };
        println!(
            "  {label:<38} {:>7.3} s  {:>10.0} rows/s  = {ratio:.2}x the scan, {verdict} the \
             {TARGET_RATIO:.1}x target",
            rollup.as_secs_f64(),
            rows_per_second(rows, rollup)
        );
    }

    options
        .server_client()
        .query(&format!(
            "DROP DATABASE IF EXISTS `{}`",
            options.clickhouse_database
        ))
        .execute()
        .await
        .unwrap();
}
