//! The reference dataset: 7 days of committed minute rows for Zipf-listening users, the six
//! previous days rolled up by the real rollup job.
//!
//! Two cohorts: the first 1 % of users (`u0..`) are heavy listeners — 200 to 400 plays a day
//! over personal libraries of 3 000 songs, Zipf-distributed, so every one of their days is
//! truncated to 50 songs and their answers read minute rows; the others are light listeners,
//! 1 to 45 plays a day (heavy-tailed, about 12 on average), never truncated.

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use topk_core::cluster::Placement;
use topk_core::db::ClickHouseOptions;
use topk_core::schema::{MinuteRow, DAILY_TOP, PLAYS_MINUTE};
use topk_core::window::day_start;

const CATALOG_SONGS: u64 = 200_000;
const HEAVY_LIBRARY: u64 = 3_000;

/// Which users are which.
#[derive(Debug, Clone)]
pub struct Cohorts {
    pub heavy: Range<u64>,
    pub light: Range<u64>,
}

/// The dataset in a database named after `name` (TOPK_BENCH_DATABASE, default `bench_api`):
/// loaded afresh, or with TOPK_BENCH_REUSE=1 the one an earlier run with the same `users` and
/// TOPK_BENCH_KEEP=1 left there (migrated to this build's schema first).
#[allow(dead_code, reason = "the cluster benchmark loads databases of its own")]
pub async fn load_or_reuse(
    users: u64,
    now: DateTime<Utc>,
) -> anyhow::Result<(ClickHouseOptions, Cohorts)> {
    let name = std::env::var("TOPK_BENCH_DATABASE").unwrap_or_else(|_| "bench_api".to_owned());
    if std::env::var("TOPK_BENCH_REUSE").is_ok_and(|reuse| reuse == "1") {
        let options = ClickHouseOptions::new(
            topk_tests::stack::clickhouse_url(),
            topk_tests::stack::resource_name("topk_test", &name),
        );
        let loaded_users: Result<u64, _> = options
            .client()
            .query("SELECT uniqExact(user_id) FROM plays_minute")
            .fetch_one()
            .await;
        if loaded_users.as_ref().is_ok_and(|loaded| *loaded == users) {
            // A migration may have rewritten tables (schema 6): merged before measuring.
            topk_core::migrate::migrate(&options).await?;
            wait_for_merges(&options).await?;
            println!(
                "dataset: reusing {} ({users} users)",
                options.clickhouse_database
            );
            let heavy_users = (users / 100).max(1);
            return Ok((
                options,
                Cohorts {
                    heavy: 0..heavy_users,
                    light: heavy_users..users,
                },
            ));
        }
        println!("dataset: nothing to reuse ({loaded_users:?} users), loading");
    }
    let options = topk_tests::stack::fresh_database(&name).await;
    let cohorts = load(&options, users, now).await?;
    Ok((options, cohorts))
}

/// Loads `users` users × 7 days ending at `now` and rolls up the six previous days.
pub async fn load(
    options: &ClickHouseOptions,
    users: u64,
    now: DateTime<Utc>,
) -> anyhow::Result<Cohorts> {
    let client = options.client();
    let started = Instant::now();
    let heavy_users = (users / 100).max(1);
    let catalog = Zipf::new(CATALOG_SONGS as f64, 1.1)?;
    let library = Zipf::new(HEAVY_LIBRARY as f64, 1.0)?;
    let mut rng = StdRng::seed_from_u64(42);
    let today = now.date_naive();
    let claim = topk_tests::committed::claim(options, "plays", 0).await;
    let mut minute_rows = 0u64;
    let mut plays_total = 0u64;
    let mut days = Vec::new();
    for offset in (0..=6u64).rev() {
        let day: NaiveDate = today - Days::new(offset);
        days.push(day);
        let minutes_in_day = if offset == 0 {
            (now - day_start(today)).num_minutes()
        } else {
            1_440
        };
        let share_of_day = minutes_in_day as f64 / 1_440.0;
        let mut insert = client.insert::<MinuteRow>(PLAYS_MINUTE).await?;
        for user in 0..users {
            let heavy = user < heavy_users;
            let full_day = if heavy {
                rng.random_range(200..=400)
            } else {
                ((5.0 / rng.random::<f64>().powf(0.7)) as u64).clamp(1, 45)
            };
            let plays = ((full_day as f64 * share_of_day).round() as u64).max(1);
            let mut counts: HashMap<(u64, i64), u64> = HashMap::new();
            for _ in 0..plays {
                // Each user's own favourites: the Zipf rank shifted per user.
                let song = if heavy {
                    let rank = library.sample(&mut rng) as u64;
                    (rank * 7 + user * 7_919) % CATALOG_SONGS
                } else {
                    let rank = catalog.sample(&mut rng) as u64;
                    (rank + user * 7_919) % CATALOG_SONGS
                };
                let minute = rng.random_range(0..minutes_in_day.max(1));
                *counts.entry((song, minute)).or_default() += 1;
            }
            plays_total += plays;
            let user_id = format!("u{user}");
            for ((song, minute), song_plays) in counts {
                insert
                    .write(&MinuteRow {
                        user_id: user_id.clone(),
                        song_id: format!("s{song}"),
                        minute: day_start(day) + chrono::Duration::minutes(minute),
                        plays: song_plays,
                        topic: "plays".to_owned(),
                        kafka_partition: 0,
                        flush_offset: 0,
                        claim_id: claim.claim_id,
                        flush_seq: 1,
                        region: String::new(),
                        chart_plays: 0,
                    })
                    .await?;
                minute_rows += 1;
            }
        }
        insert.end().await?;
        println!(
            "loaded {day}: {minute_rows} minute rows, {plays_total} plays so far ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    topk_tests::committed::commit_first_flush(options, "plays", &claim, 0, &days).await;
    let rollup_started = Instant::now();
    let mut job = topk_rollup::RollupJob::new(client.clone(), now);
    job.placement = options.placement();
    let outcomes = job
        .backfill(days[0], days[5], |outcome| println!("{outcome}"))
        .await?;
    anyhow::ensure!(
        outcomes.iter().all(|outcome| !outcome.failed()),
        "rollup failed"
    );
    let truncated: u64 = client
        .query("SELECT count() FROM daily_top WHERE rank = 1 AND user_truncated = 1")
        .fetch_one()
        .await?;
    let daily_rows: u64 = client
        .query("SELECT count() FROM daily_top")
        .fetch_one()
        .await?;
    println!(
        "dataset: {users} users × 7 days ({heavy_users} heavy listeners), {minute_rows} minute rows \
         ({plays_total} plays), {daily_rows} daily top rows ({truncated} truncated user-days), \
         loaded in {:.1} s, rolled up in {:.1} s",
        rollup_started.duration_since(started).as_secs_f64(),
        rollup_started.elapsed().as_secs_f64()
    );
    wait_for_merges(options).await?;
    Ok(Cohorts {
        heavy: 0..heavy_users,
        light: heavy_users..users,
    })
}

/// Background merges right after a bulk load would compete with the measured runs.
async fn wait_for_merges(options: &ClickHouseOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = options.client();
    let placement = options.placement();
    // Not on a cluster: 18.16 fails `OPTIMIZE … ON CLUSTER … FINAL` on replicated tables
    // ("Unknown log entry type: 0"); the merges already running are waited for.
    if placement == Placement::SingleNode {
        for table in [DAILY_TOP, PLAYS_MINUTE] {
            client
                .query(&format!("OPTIMIZE TABLE {table} FINAL"))
                .execute()
                .await?;
        }
    }
    loop {
        let merges: u64 = client
            .query(&format!(
                "SELECT count() FROM {merges}",
                merges = match &placement {
                    Placement::SingleNode =>
                        "system.merges WHERE database = currentDatabase()".to_owned(),
                    Placement::Cluster(layout) => format!(
                        "cluster('{}', system.merges) WHERE database = '{}'",
                        layout.cluster,
                        layout.local_database()
                    ),
                }
            ))
            .fetch_one()
            .await?;
        if merges == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("merged in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
