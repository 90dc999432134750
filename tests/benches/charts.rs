//! Benchmark: read latency of the charts (`GET /v1/charts/top-songs`) at a realistic scale
//! for this machine, and the rows each chart query reads.
//!
//! Loads, into a fresh database, `TOPK_BENCH_CHART_DAYS` complete days (7: a `7d` window as
//! of today's evening reaches 7 days back) of `TOPK_BENCH_CHART_PLAYS_PER_DAY` plays
//! (10 000 000) plus today up to the fixed clock's hour `TOPK_BENCH_CHART_HOUR` (20): committed
//! minute rows generated inside ClickHouse (`INSERT .. SELECT .. FROM numbers(n)`), 1 000 000
//! users with heavy-tailed activity and a home region among 50 (skewed, 2 % without a region),
//! 200 000 songs of Zipf-like popularity (global hits, regional hits and each user's own
//! favourites), a daily shape over the UTC hours, mostly one play per row, 10 % of plays too
//! short for the charts, and 300 spam users looping one song 120 times in one hour; their chart
//! rows (`chart_minute`) as the aggregator writes them with the same claims. A catalog of the
//! 200 000 songs (12 genres, 20 000 artists). The past days' partitions are merged as they
//! would be long after; the real rollup job then rolls up the complete days' top lists and the
//! charts' rows of every complete hour, today's too, as its recommended schedule (every 10
//! minutes) leaves them for the requests: it last ran 10 minutes before the clock, so today's
//! snapshot ends on the hour before and the requests read 50 to 60 minutes of minute rows (the
//! most an hour's schedule leaves).
//!
//! Then, for each window (1h, 24h, 7d) and scope (global, the biggest region, the smallest,
//! a genre, the artist with the most songs), `TOPK_BENCH_CHART_REQUESTS` (200) sequential requests
//! to the API in-process (fixed clock, `limit=10`, `offset` 0 or 10, `as_of` within the last
//! 10 minutes), or as many as fit in `TOPK_BENCH_CHART_CELL_SECONDS` (120, 0: no limit; at
//! least 10 requests). Every answer must be 200, of a chart with songs, its page as full as the
//! chart allows and well ordered; the latency is only printed: p50/p95/p99/max per window and scope and per window, against
//! the target **p95 < 100 ms for every window**. Then, from `system.query_log` (the API's
//! client sends `log_queries=1` and a marker per window and scope), the median rows and bytes each kind
//! of chart query read, per window; the tables' part counts; the phases' times.
//!
//! The `7d` chart's previous period (its `prev_rank`) reaches 14 days back: with the default
//! 7 days it is mostly empty and cheap; `TOPK_BENCH_CHART_DAYS=14` loads it too.
//!
//! `cargo bench -p topk-tests --bench charts` (needs the local stack's ClickHouse).
//! Small: `TOPK_BENCH_CHART_PLAYS_PER_DAY=300000 TOPK_BENCH_CHART_REQUESTS=20`.
//! The database (`topk_test_bench_charts`) is dropped at the end unless `TOPK_BENCH_KEEP=1`;
//! `TOPK_BENCH_REUSE=1` then measures again on it (migrated to this build's schema; the top
//! lists kept, the charts too unless the migration dropped them) instead of loading the plays
//! anew.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Days, NaiveDate, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use topk_api::charts::ChartResponse;
use topk_api::config::ApiConfig;
use topk_api::{AppState, Clock};
use topk_core::chart::ChartWindow;
use topk_core::db::ClickHouseOptions;
use topk_core::migrate::quote_identifier;
use topk_core::schema::{SongRow, CHART_MINUTE, PLAYS_MINUTE, SONGS};
use topk_core::window::{day_number, day_start};
use tower::ServiceExt;

use setup::{env_number, run_benchmark};

#[path = "api/setup.rs"]
mod setup;

const SONGS_IN_CATALOG: u64 = 200_000;
const USERS: u64 = 1_000_000;
const ARTISTS: u64 = 20_000;
const GENRES: [&str; 12] = [
    "pop",
    "rock",
    "hip-hop",
    "electronic",
    "latin",
    "soul",
    "country",
    "indie",
    "metal",
    "jazz",
    "classical",
    "folk",
];
/// Most listened first: a user's home region is skewed towards the head of the list.
const REGIONS: [&str; 50] = [
    "US", "BR", "GB", "DE", "MX", "FR", "JP", "IN", "ES", "IT", "CA", "AU", "NL", "PL", "TR", "ID",
    "PH", "AR", "CO", "SE", "KR", "CL", "BE", "PT", "AT", "CH", "NO", "DK", "FI", "IE", "NZ", "ZA",
    "CZ", "RO", "HU", "GR", "PE", "TH", "VN", "MY", "SG", "NG", "EG", "SA", "AE", "IL", "UA", "EC",
    "HR", "IS",
];
/// Relative listening per UTC hour (the evenings of Europe and the Americas).
const HOUR_WEIGHTS: [f64; 24] = [
    0.9, 0.8, 0.7, 0.55, 0.45, 0.4, 0.4, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 1.0, 1.05, 1.1, 1.15,
    1.2, 1.25, 1.3, 1.3, 1.25, 1.15, 1.0,
];
/// The mean `plays` of a generated minute row (90 % 1, 8 % 2, 2 % 3).
const MEAN_ROW_PLAYS: f64 = 1.12;
const TOPIC: &str = "plays";
const KAFKA_PARTITIONS: u32 = 4;
/// Users who loop one song 120 times in one hour (2 plays a minute); the first 10 do it in
/// the last hour before the clock, so the `1h` charts see them.
const SPAMMERS: u64 = 300;
const TARGET_P95: Duration = Duration::from_millis(100);
/// A cell (window × scope) sends at least this many requests, whatever its time budget.
const MIN_REQUESTS: u64 = 10;
const PAGE: usize = 10;
/// The setting that marks the API's queries in `system.query_log` (18.16's log has no
/// database column): it only limits the logged query text, far above the charts' length.
const MARKER_SETTING: &str = "log_queries_cut_to_length";

struct Knobs {
    plays_per_day: u64,
    days: u64,
    requests: u64,
    hour: u32,
    cell_seconds: u64,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Self> {
        let knobs = Self {
            plays_per_day: env_number("TOPK_BENCH_CHART_PLAYS_PER_DAY", 10_000_000),
            days: env_number("TOPK_BENCH_CHART_DAYS", 7),
            requests: env_number("TOPK_BENCH_CHART_REQUESTS", 200),
            hour: u32::try_from(env_number("TOPK_BENCH_CHART_HOUR", 20))?,
            cell_seconds: env_number("TOPK_BENCH_CHART_CELL_SECONDS", 120),
        };
        ensure!(
            (1..=23).contains(&knobs.hour),
            "TOPK_BENCH_CHART_HOUR must be 1 to 23"
        );
        ensure!(knobs.days >= 1, "TOPK_BENCH_CHART_DAYS must be at least 1");
        Ok(knobs)
    }
}

/// A chart scope as the query string names it.
struct Scope {
    label: String,
    query: String,
}

/// One window × scope's measurement.
struct Cell {
    window: ChartWindow,
    scope: String,
    latencies: Vec<Duration>,
    total_songs: u64,
}

fn main() -> anyhow::Result<()> {
    run_benchmark(run())
}

async fn run() -> anyhow::Result<()> {
    let run_started = Instant::now();
    let knobs = Knobs::from_env()?;
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism()?,
        load_average()
    );
    let today = NaiveDate::from_ymd_opt(2026, 11, 24).context("a date")?;
    let now = day_start(today) + chrono::Duration::hours(i64::from(knobs.hour));
    let reuse = std::env::var("TOPK_BENCH_REUSE").is_ok_and(|reuse| reuse == "1");
    let (options, loading, merging) = if reuse {
        // The plays a kept run loaded (`TOPK_BENCH_KEEP=1`), migrated to this build's schema.
        let options = ClickHouseOptions::new(
            topk_tests::stack::clickhouse_url(),
            topk_tests::stack::resource_name("topk_test", "bench_charts"),
        );
        topk_core::migrate::migrate(&options).await?;
        let rows: u64 = options
            .client()
            .query(&format!("SELECT count() FROM {CHART_MINUTE}"))
            .fetch_one()
            .await?;
        ensure!(
            rows > 0,
            "TOPK_BENCH_REUSE=1 but {} holds no plays: run with TOPK_BENCH_KEEP=1 first",
            options.clickhouse_database
        );
        println!(
            "reusing {} ({rows} chart rows)",
            options.clickhouse_database
        );
        (options, Duration::ZERO, Duration::ZERO)
    } else {
        let options = topk_tests::stack::fresh_database("bench_charts").await;
        let client = options.client();
        let started = Instant::now();
        load_plays(&options, &knobs, now).await?;
        load_catalog(&client, now).await?;
        let loading = started.elapsed();
        let started = Instant::now();
        merge_past_days(&client, today, knobs.days).await?;
        let merging = started.elapsed();
        println!(
            "merged the past days' minute and chart rows in {:.1} s",
            merging.as_secs_f64()
        );
        (options, loading, merging)
    };

    // Reused: the top lists are kept, and the charts too when this build's schema has them.
    let snapshots: u64 = options
        .client()
        .query("SELECT count() FROM chart_snapshots")
        .fetch_one()
        .await?;
    let (top_lists, charts) = roll_up(
        &options,
        now - chrono::Duration::minutes(10),
        knobs.days,
        reuse,
        reuse && snapshots > 0,
    )
    .await?;
    let started = Instant::now();
    wait_for_merges(&options).await?;
    println!(
        "background merges done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    print_parts(&options, "before the reads").await?;

    let started = Instant::now();
    let marker_base: u64 = 1_000_000_000 + rand::random_range(0..1_000_000u64) * 100;
    let cells = measure(&options, &knobs, now, marker_base).await?;
    let reading = started.elapsed();
    print_latencies(&cells);
    print_rows_read(&options, marker_base, &cells).await?;
    print_listener_error(&options, now).await?;
    print_parts(&options, "at the end").await?;
    println!(
        "phases: loading {:.1} s, merging {:.1} s, rollup {:.1} s (top lists) + {:.1} s (charts), \
         reading {:.1} s; total {:.1} s (load average {})",
        loading.as_secs_f64(),
        merging.as_secs_f64(),
        top_lists.as_secs_f64(),
        charts.as_secs_f64(),
        reading.as_secs_f64(),
        run_started.elapsed().as_secs_f64(),
        load_average()
    );

    if std::env::var("TOPK_BENCH_KEEP").is_ok_and(|keep| keep == "1") {
        println!("kept database {}", options.clickhouse_database);
        return Ok(());
    }
    options
        .server_client()
        .query(&format!(
            "DROP DATABASE {}",
            quote_identifier(&options.clickhouse_database)
        ))
        .execute()
        .await?;
    Ok(())
}

/// The machine's 1-minute load average (the benchmark shares 2 cores with whatever runs).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `HOUR_WEIGHTS` summed up to each hour (inclusive).
fn cumulative_hour_weights() -> Vec<f64> {
    HOUR_WEIGHTS
        .iter()
        .scan(0.0, |sum, weight| {
            *sum += weight;
            Some(*sum)
        })
        .collect()
}

fn sql_list<T: ToString>(values: impl IntoIterator<Item = T>, quoted: bool) -> String {
    let items: Vec<String> = values
        .into_iter()
        .map(|value| {
            if quoted {
                format!("'{}'", value.to_string())
            } else {
                value.to_string()
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The uniform number in `[0, 1)` of a 64-bit hash expression.
fn uniform(hash: &str) -> String {
    format!("({hash} / 18446744073709551616.0)")
}

/// `INSERT .. SELECT` of `rows` minute rows of the first `hours` hours of `day` (see the
/// module docs for their shape). Every value is a number or a fixed name, formatted in.
fn day_rows_sql(day: NaiveDate, hours: u32, rows: u64, claim_ids: &[u64]) -> String {
    let seed = day_number(day);
    let cumulative = cumulative_hour_weights();
    let hours_weight = cumulative[hours as usize - 1];
    let songs = SONGS_IN_CATALOG;
    let random = |stream: u32| uniform(&format!("cityHash64({seed}, number, {stream})"));
    let log_uniform_rank = |unit: &str| format!("(toUInt64(floor(pow({songs}, {unit}))) - 1)");
    format!(
        "INSERT INTO {PLAYS_MINUTE} (user_id, song_id, minute, plays, topic, kafka_partition, \
         flush_offset, claim_id, flush_seq, region, chart_plays) \
         SELECT concat('u', toString(user)), concat('s', toString(song)), \
         toDateTime({day_start} + hour * 3600 + cityHash64({seed}, number, 3) % 60 * 60), \
         plays, '{TOPIC}', toUInt32(partition), number, arrayElement({claims}, partition + 1), \
         toUInt64(1), region, if(cityHash64({seed}, number, 5) % 100 < 10, toUInt64(0), plays) \
         FROM (SELECT number, user, partition, region, plays, hour, \
         multiIf(mode < 50, {global_rank} * 7919 % {songs}, \
                 mode < 70, ({global_rank} + region_index * 1009) * 7919 % {songs}, \
                 {taste_rank} * 7919 % {songs}) AS song \
         FROM (SELECT number, \
         toUInt64(floor({USERS} * pow({user_unit}, 1.7))) AS user, \
         cityHash64(user) % {KAFKA_PARTITIONS} AS partition, \
         toUInt64(floor(50 * pow({region_unit}, 2.2))) AS region_index, \
         if(cityHash64(user, 8) % 100 < 2, '', arrayElement({regions}, region_index + 1)) AS region, \
         cityHash64({seed}, number, 2) % 100 AS mode, \
         multiIf(cityHash64({seed}, number, 4) % 100 < 90, toUInt64(1), \
                 cityHash64({seed}, number, 4) % 100 < 98, toUInt64(2), toUInt64(3)) AS plays, \
         arrayFirstIndex(weight -> weight > {hour_unit} * {hours_weight}, {cumulative}) - 1 AS hour \
         FROM numbers({rows})))",
        day_start = day_start(day).timestamp(),
        claims = sql_list(claim_ids, false),
        regions = sql_list(REGIONS, true),
        cumulative = sql_list(&cumulative, false),
        user_unit = random(1),
        region_unit = uniform("cityHash64(user, 7)"),
        hour_unit = random(6),
        global_rank = log_uniform_rank(&random(9)),
        // One of the user's 30 favourites, themselves of Zipf-like popularity.
        taste_rank = log_uniform_rank(&uniform(&format!(
            "cityHash64(user, 10, cityHash64({seed}, number, 11) % 30)"
        ))),
    )
}

/// [`SPAMMERS`] users each looping one song in one hour of the `hours` hours from `first`.
fn spam_sql(first: DateTime<Utc>, hours: u64, claim_ids: &[u64]) -> String {
    format!(
        "INSERT INTO {PLAYS_MINUTE} (user_id, song_id, minute, plays, topic, kafka_partition, \
         flush_offset, claim_id, flush_seq, region, chart_plays) \
         SELECT concat('spam-', toString(spammer)), \
         concat('s', toString((100 + spammer % 30) * 7919 % {SONGS_IN_CATALOG})), \
         toDateTime({first} + hour * 3600 + number % 60 * 60), toUInt64(2), '{TOPIC}', \
         toUInt32(spammer % {KAFKA_PARTITIONS}), number, \
         arrayElement({claims}, spammer % {KAFKA_PARTITIONS} + 1), toUInt64(1), '{region}', \
         toUInt64(2) \
         FROM (SELECT number, intDiv(number, 60) AS spammer, \
         if(spammer < 10, {last_hour}, cityHash64(spammer, 12) % {hours}) AS hour \
         FROM numbers({rows}))",
        first = first.timestamp(),
        claims = sql_list(claim_ids, false),
        region = REGIONS[0],
        last_hour = hours - 1,
        rows = SPAMMERS * 60,
    )
}

/// Writes every day's minute rows under one claim per partition and commits them.
async fn load_plays(
    options: &ClickHouseOptions,
    knobs: &Knobs,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let client = options.client();
    let mut claims = Vec::new();
    for partition in 0..KAFKA_PARTITIONS {
        claims.push(topk_tests::committed::claim(options, TOPIC, partition).await);
    }
    let claim_ids: Vec<u64> = claims.iter().map(|claim| claim.claim_id).collect();
    let today = now.date_naive();
    let first_day = today - Days::new(knobs.days);
    let cumulative = cumulative_hour_weights();
    let mut days = Vec::new();
    let mut total_rows = 0;
    for day in first_day.iter_days().take_while(|day| *day <= today) {
        let hours = if day == today { knobs.hour } else { 24 };
        let share = cumulative[hours as usize - 1] / cumulative[23];
        let rows = (knobs.plays_per_day as f64 * share / MEAN_ROW_PLAYS).round() as u64;
        let started = Instant::now();
        client
            .query(&day_rows_sql(day, hours, rows, &claim_ids))
            .execute()
            .await
            .with_context(|| format!("loading {day}"))?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "loaded {day} ({hours} h): {rows} minute rows in {seconds:.1} s ({:.0} rows/s)",
            rows as f64 / seconds
        );
        total_rows += rows;
        days.push(day);
    }
    let hours = knobs.days * 24 + u64::from(knobs.hour);
    client
        .query(&spam_sql(day_start(first_day), hours, &claim_ids))
        .execute()
        .await
        .context("loading the spam")?;
    total_rows += SPAMMERS * 60;
    // The chart rows the aggregator writes with each flush: the eligible minute rows again,
    // ordered by time, with the same claim and flush.
    let started = Instant::now();
    for day in &days {
        client
            .query(&format!(
                "INSERT INTO {CHART_MINUTE} (minute, region, song_id, user_id, chart_plays, \
                 kafka_partition, claim_id, flush_seq) \
                 SELECT minute, region, song_id, user_id, chart_plays, kafka_partition, claim_id, \
                 flush_seq FROM {PLAYS_MINUTE} \
                 WHERE minute >= toDateTime({from}) AND minute < toDateTime({to}) \
                 AND chart_plays > 0",
                from = day_start(*day).timestamp(),
                to = day_start(*day).timestamp() + 86_400,
            ))
            .execute()
            .await
            .with_context(|| format!("writing the chart rows of {day}"))?;
    }
    let chart_rows: (u64, u64) = client
        .query(&format!(
            "SELECT count(), sum(chart_plays) FROM {CHART_MINUTE}"
        ))
        .fetch_one()
        .await?;
    println!(
        "chart rows: {} ({} chart plays) in {:.1} s",
        chart_rows.0,
        chart_rows.1,
        started.elapsed().as_secs_f64()
    );
    for claim in &claims {
        topk_tests::committed::commit_first_flush(options, TOPIC, claim, total_rows as i64, &days)
            .await;
    }
    let raw: (u64, u64) = client
        .query(&format!("SELECT count(), sum(plays) FROM {PLAYS_MINUTE}"))
        .fetch_one()
        .await?;
    let counted: (u64, u64, u64) = client
        .query("SELECT count(), sum(plays), sum(chart_plays) FROM plays_minute_committed")
        .fetch_one()
        .await?;
    let eligible: u64 = client
        .query("SELECT countIf(chart_plays > 0) FROM plays_minute_committed")
        .fetch_one()
        .await?;
    ensure!(
        raw == (counted.0, counted.1) && raw.0 == total_rows,
        "every generated row must count: {total_rows} generated, {raw:?} written, {counted:?} \
         committed"
    );
    ensure!(
        chart_rows == (eligible, counted.2),
        "one chart row per eligible minute row: {chart_rows:?}, {eligible} eligible rows with \
         {} chart plays",
        counted.2
    );
    println!(
        "minute rows: {} ({} plays, {} chart plays), all committed",
        counted.0, counted.1, counted.2
    );
    Ok(())
}

/// A stable pseudo-random number for `value` (splitmix64's finalizer).
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Skewed: artist `a0` has the most songs (about 100), most artists a few.
fn artist_of(song: u64) -> u64 {
    let unit = mix(song ^ 0xa7) as f64 / 2f64.powi(64);
    ((unit.powf(1.3) * ARTISTS as f64) as u64).min(ARTISTS - 1)
}

/// Every song in the catalog: genres skewed towards the head of [`GENRES`], artists skewed
/// towards `a0`.
async fn load_catalog(client: &clickhouse::Client, now: DateTime<Utc>) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut insert = client.insert::<SongRow>(SONGS).await?;
    for song in 0..SONGS_IN_CATALOG {
        let unit = mix(song) as f64 / 2f64.powi(64);
        let genre = GENRES[((unit.powf(1.5) * GENRES.len() as f64) as usize).min(GENRES.len() - 1)];
        let artist = artist_of(song);
        insert
            .write(&SongRow {
                song_id: format!("s{song}"),
                title: format!("Song {song}"),
                artist_id: format!("a{artist}"),
                artist_name: format!("Artist {artist}"),
                album: String::new(),
                genre: genre.to_owned(),
                duration_ms: 120_000 + (mix(song ^ 0x5d) % 180_000) as u32,
                version: 1,
                loaded_at: now,
            })
            .await?;
    }
    insert.end().await?;
    println!(
        "catalog: {SONGS_IN_CATALOG} songs, {} genres, {ARTISTS} artists in {:.1} s",
        GENRES.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Rolls up what the rollup job would have by `now`: the complete days' top lists and the
/// charts' hourly rows of every complete hour, today's too (`topk-rollup run`, every 10
/// minutes or so, snapshots today's complete hours; `backfill` rolls up the 7th day back,
/// which `run`'s window leaves out and the `7d` chart reads). Returns the two times.
async fn roll_up(
    options: &ClickHouseOptions,
    now: DateTime<Utc>,
    days: u64,
    keep_top_lists: bool,
    keep_charts: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let mut job = topk_rollup::RollupJob::new(options.client(), now);
    job.placement = options.placement();
    let today = now.date_naive();
    let first_day = today - Days::new(days);
    let yesterday = today - Days::new(1);
    let started = Instant::now();
    let outcomes = if keep_top_lists {
        Vec::new()
    } else {
        job.backfill(first_day, yesterday, |outcome| println!("{outcome}"))
            .await?
    };
    ensure!(
        outcomes.iter().all(|outcome| !outcome.failed()),
        "a rollup of top lists failed"
    );
    let top_lists = started.elapsed();
    let started = Instant::now();
    let mut chart_outcomes = if keep_charts {
        Vec::new()
    } else {
        job.backfill_charts(first_day, yesterday, |outcome| println!("{outcome}"))
            .await?
    };
    chart_outcomes.extend(job.charts(|outcome| println!("{outcome}")).await?);
    ensure!(
        chart_outcomes.iter().all(|outcome| !outcome.failed()),
        "a rollup of charts failed"
    );
    let charts = started.elapsed();
    println!(
        "rolled up {} days' top lists in {:.1} s, charts in {:.1} s",
        outcomes.len(),
        top_lists.as_secs_f64(),
        charts.as_secs_f64()
    );
    Ok((top_lists, charts))
}

/// Merges each complete day's minute and chart rows into one part per table, as background
/// merges leave a day long before its rollup; today's partitions keep what background merges
/// make of them.
async fn merge_past_days(
    client: &clickhouse::Client,
    today: NaiveDate,
    days: u64,
) -> anyhow::Result<()> {
    for back in 1..=days {
        let day = today - Days::new(back);
        for table in [PLAYS_MINUTE, CHART_MINUTE] {
            client
                .query(&format!(
                    "OPTIMIZE TABLE {table} PARTITION ID '{}' FINAL",
                    day.format("%Y%m%d")
                ))
                .execute()
                .await
                .with_context(|| format!("merging {table} of {day}"))?;
        }
    }
    Ok(())
}

/// Waits until no merge of the database runs (they would compete with the measured reads).
async fn wait_for_merges(options: &ClickHouseOptions) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let merges: u64 = options
            .server_client()
            .query("SELECT count() FROM system.merges WHERE database = ?")
            .bind(&options.clickhouse_database)
            .fetch_one()
            .await?;
        if merges == 0 || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn print_parts(options: &ClickHouseOptions, when: &str) -> anyhow::Result<()> {
    let parts: Vec<(String, u64, u64, u64)> = options
        .server_client()
        .query(
            "SELECT table, count(), sum(rows), sum(bytes_on_disk) FROM system.parts \
             WHERE database = ? AND active GROUP BY table ORDER BY table",
        )
        .bind(&options.clickhouse_database)
        .fetch_all()
        .await?;
    println!("active parts {when}:");
    for (table, count, rows, bytes) in parts {
        println!(
            "  {table:<24} {count:>4} parts {rows:>12} rows {:>9.1} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// The API on the bench's database with a fixed clock, its queries logged and marked with
/// `marker`; a query timeout far above any chart's, so that slow charts are measured rather
/// than answered 503.
fn api_state(
    options: &ClickHouseOptions,
    now: DateTime<Utc>,
    marker: u64,
) -> anyhow::Result<AppState> {
    let mut clickhouse = options.clone();
    clickhouse.clickhouse_settings = vec![
        "log_queries=1".to_owned(),
        format!("{MARKER_SETTING}={marker}"),
    ];
    let mut config = ApiConfig::with_clickhouse(clickhouse);
    config.query_timeout_ms = 600_000;
    Ok(AppState::from_config(&config)?.with_clock(Clock::Fixed(now)))
}

fn scopes() -> Vec<Scope> {
    let scope = |label: String, query: String| Scope { label, query };
    vec![
        scope("global".to_owned(), "scope=global".to_owned()),
        scope(
            format!("region {} (biggest)", REGIONS[0]),
            format!("scope=region&region={}", REGIONS[0]),
        ),
        scope(
            format!("region {} (smallest)", REGIONS[49]),
            format!("scope=region&region={}", REGIONS[49]),
        ),
        scope("genre rock".to_owned(), "scope=genre&genre=rock".to_owned()),
        scope(
            "artist a0 (most songs)".to_owned(),
            "scope=artist&artist_id=a0".to_owned(),
        ),
    ]
}

/// The marker of the API state serving `window` and `scope`: `base + window * 10 + scope`.
fn marker_of(base: u64, window: usize, scope: usize) -> u64 {
    base + window as u64 * 10 + scope as u64
}

/// Sends each window × scope's requests, one at a time, and checks every answer.
async fn measure(
    options: &ClickHouseOptions,
    knobs: &Knobs,
    now: DateTime<Utc>,
    marker_base: u64,
) -> anyhow::Result<Vec<Cell>> {
    let mut rng = StdRng::seed_from_u64(11);
    let budget = Duration::from_secs(knobs.cell_seconds);
    let mut cells = Vec::new();
    for (window_index, window) in ChartWindow::ALL.into_iter().enumerate() {
        for (scope_index, scope) in scopes().into_iter().enumerate() {
            let marker = marker_of(marker_base, window_index, scope_index);
            let app = topk_api::app(api_state(options, now, marker)?);
            let started = Instant::now();
            let mut cell = Cell {
                window,
                scope: scope.label,
                latencies: Vec::new(),
                total_songs: 0,
            };
            for request in 0..knobs.requests {
                let over_budget = knobs.cell_seconds > 0 && started.elapsed() > budget;
                if request >= MIN_REQUESTS && over_budget {
                    break;
                }
                let as_of = now - chrono::Duration::seconds(rng.random_range(0..600));
                let offset = if request % 2 == 0 { 0 } else { PAGE };
                let uri = format!(
                    "/v1/charts/top-songs?{}&window={window}&limit={PAGE}&offset={offset}&as_of={}",
                    scope.query,
                    as_of.to_rfc3339_opts(SecondsFormat::Secs, true)
                );
                let sent = Instant::now();
                let response = app
                    .clone()
                    .oneshot(Request::get(&uri).body(Body::empty())?)
                    .await?;
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await?;
                cell.latencies.push(sent.elapsed());
                ensure!(
                    status == StatusCode::OK,
                    "{uri}: {status} {}",
                    String::from_utf8_lossy(&bytes)
                );
                let body: ChartResponse = serde_json::from_slice(&bytes)?;
                check_page(&body, offset).with_context(|| uri.clone())?;
                cell.total_songs = body.total;
            }
            println!(
                "  {window:>3} {:<24} {:>4} requests in {:>6.1} s (load average {})",
                cell.scope,
                cell.latencies.len(),
                started.elapsed().as_secs_f64(),
                load_average()
            );
            cells.push(cell);
        }
    }
    Ok(cells)
}

/// How far the answered listeners (exact up to 1 024, estimated above) are from the exact
/// count, over the top 100 songs of each window's global chart as of `now`: the exact count is
/// the distinct users of the song's chart rows in the window (every chart row has a counted
/// play; the benchmark's rows are all committed).
async fn print_listener_error(
    options: &ClickHouseOptions,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let app = topk_api::app(api_state(options, now, 0)?);
    println!("listeners against the exact count, the top 100 of the global chart as of {now}:");
    for window in ChartWindow::ALL {
        let uri = format!(
            "/v1/charts/top-songs?scope=global&window={window}&limit=100&as_of={}",
            now.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        let response = app
            .clone()
            .oneshot(Request::get(&uri).body(Body::empty())?)
            .await?;
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await?;
        let body: ChartResponse = serde_json::from_slice(&bytes)?;
        let songs: Vec<String> = body.songs.iter().map(|song| song.song_id.clone()).collect();
        let span = window.span(now);
        let exact: Vec<(String, u64)> = options
            .client()
            .query(&format!(
                "SELECT song_id, uniqExact(user_id) FROM {CHART_MINUTE} \
                 WHERE minute >= toDateTime(?) AND minute < toDateTime(?) \
                 AND has(CAST(? AS Array(String)), song_id) GROUP BY song_id"
            ))
            .bind(span.from.timestamp())
            .bind(span.to.timestamp())
            .bind(&songs)
            .fetch_all()
            .await?;
        let errors: Vec<f64> = body
            .songs
            .iter()
            .filter_map(|song| {
                let (_, count) = exact.iter().find(|(id, _)| *id == song.song_id)?;
                Some((song.listeners as f64 - *count as f64).abs() / (*count).max(1) as f64)
            })
            .collect();
        let exact_counts: Vec<u64> = exact.iter().map(|(_, count)| *count).collect();
        let mean = errors.iter().sum::<f64>() / errors.len().max(1) as f64;
        let max = errors.iter().copied().fold(0.0, f64::max);
        println!(
            "  {window:>3}: {} songs with {}..{} listeners: mean error {:.3} %, max {:.3} % \
             (standard error claimed: {:.2} %)",
            errors.len(),
            exact_counts.iter().min().unwrap_or(&0),
            exact_counts.iter().max().unwrap_or(&0),
            mean * 100.0,
            max * 100.0,
            topk_core::chart::LISTENERS_RELATIVE_ERROR * 100.0
        );
    }
    Ok(())
}

/// A chart with songs, a page as full as its total allows, ranked from `offset + 1`, plays
/// not increasing, every song with a listener and no more listeners than plays.
fn check_page(body: &ChartResponse, offset: usize) -> anyhow::Result<()> {
    ensure!(body.total > 0, "an empty chart");
    let expected = usize::try_from(body.total)?
        .saturating_sub(offset)
        .min(PAGE);
    ensure!(
        body.songs.len() == expected,
        "{} songs on the page of a chart of {}",
        body.songs.len(),
        body.total
    );
    for (index, song) in body.songs.iter().enumerate() {
        ensure!(
            song.rank == (offset + index + 1) as u64,
            "rank {}",
            song.rank
        );
        ensure!(
            song.plays > 0 && (1..=song.plays).contains(&song.listeners),
            "{}: {} plays, {} listeners",
            song.song_id,
            song.plays,
            song.listeners
        );
    }
    ensure!(
        body.songs
            .windows(2)
            .all(|pair| pair[0].plays >= pair[1].plays),
        "plays increase down the page"
    );
    Ok(())
}

/// The nearest-rank percentile of sorted `samples`, in milliseconds.
fn percentile_ms(sorted: &[Duration], percent: f64) -> f64 {
    let rank = ((percent / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1_000.0
}

fn print_row(label: &str, latencies: &[Duration], extra: &str) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let p95 = percentile_ms(&sorted, 95.0);
    let verdict = if p95 < TARGET_P95.as_secs_f64() * 1_000.0 {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "{label:<30} {:>5} {:>8.1} {:>8.1} {:>8.1} {:>8.1}  p95 < {} ms: {verdict:<6} {extra}",
        sorted.len(),
        percentile_ms(&sorted, 50.0),
        p95,
        percentile_ms(&sorted, 99.0),
        percentile_ms(&sorted, 100.0),
        TARGET_P95.as_millis()
    );
}

fn print_latencies(cells: &[Cell]) {
    let header = format!(
        "{:<30} {:>5} {:>8} {:>8} {:>8} {:>8}",
        "chart read latency", "reqs", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    println!("\n{header}");
    for cell in cells {
        print_row(
            &format!("{:>3} {}", cell.window, cell.scope),
            &cell.latencies,
            &format!("({} songs in the chart)", cell.total_songs),
        );
    }
    println!("\n{header}");
    for window in ChartWindow::ALL {
        let latencies: Vec<Duration> = cells
            .iter()
            .filter(|cell| cell.window == window)
            .flat_map(|cell| cell.latencies.iter().copied())
            .collect();
        print_row(&format!("{window:>3} all scopes"), &latencies, "");
    }
}

/// The chart queries' kinds, told apart by their text (`topk-api/src/store/charts.rs`); the
/// plan's queries (what counts, the snapshots, late hours) are the rest.
const QUERY_KINDS: [&str; 4] = ["rank", "listeners", "prev_rank", "plan"];

/// The median of `values` (0 when empty).
fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// What each kind of chart query read and took, per window, and per window and scope, from
/// `system.query_log`.
async fn print_rows_read(
    options: &ClickHouseOptions,
    marker_base: u64,
    cells: &[Cell],
) -> anyhow::Result<()> {
    let server = options.server_client();
    server.query("SYSTEM FLUSH LOGS").execute().await?;
    // (marker, kind, failed, read_rows, read_bytes, query_duration_ms) of every finished or
    // failed query the bench's API states sent.
    let logged: Vec<(u64, String, u8, u64, u64, u64)> = server
        .query(&format!(
            "SELECT marker, \
             multiIf(position(query, 'indexOf(ranked') > 0, 'prev_rank', \
                     position(query, 'uniqCombinedMerge') > 0, 'listeners', \
                     position(query, 'length(ranked)') > 0, 'rank', 'plan') AS kind, \
             toUInt8(type != 2), read_rows, read_bytes, query_duration_ms \
             FROM (SELECT type, query, read_rows, read_bytes, query_duration_ms, \
                   toUInt64OrZero(Settings.Values[indexOf(Settings.Names, '{MARKER_SETTING}')]) \
                   AS marker \
                   FROM system.query_log WHERE event_date >= today() - 1 AND type >= 2) \
             WHERE marker >= {marker_base} AND marker < {marker_base} + 30"
        ))
        .fetch_all()
        .await?;
    let of = |marker: &dyn Fn(u64) -> bool, kind: &str| {
        logged
            .iter()
            .filter(|row| marker(row.0) && row.1 == kind)
            .collect::<Vec<_>>()
    };
    println!(
        "\n{:<16} {:>7} {:>6} {:>14} {:>11} {:>9} {:>14}",
        "rows read", "queries", "failed", "median rows", "median MiB", "median ms", "max rows"
    );
    for (window_index, window) in ChartWindow::ALL.into_iter().enumerate() {
        let in_window = |marker: u64| (marker - marker_base) / 10 == window_index as u64;
        for kind in QUERY_KINDS {
            let queries = of(&in_window, kind);
            let failed = queries.iter().filter(|row| row.2 != 0).count();
            let mut rows_read: Vec<u64> = queries.iter().map(|row| row.3).collect();
            let mut bytes: Vec<u64> = queries.iter().map(|row| row.4).collect();
            let mut millis: Vec<u64> = queries.iter().map(|row| row.5).collect();
            println!(
                "{:<16} {:>7} {failed:>6} {:>14} {:>11.1} {:>9} {:>14}",
                format!("{window:>3} {kind}"),
                queries.len(),
                median(&mut rows_read),
                median(&mut bytes) as f64 / (1 << 20) as f64,
                median(&mut millis),
                rows_read.iter().max().copied().unwrap_or(0),
            );
        }
    }
    println!(
        "\n{:<30} {:>10} {:>14} {:>16} {:>14}",
        "median ms per query", "rank", "listeners", "prev_rank", "rank rows"
    );
    for (window_index, window) in ChartWindow::ALL.into_iter().enumerate() {
        for (scope_index, cell) in cells
            .iter()
            .filter(|cell| cell.window == window)
            .enumerate()
        {
            let marker = marker_of(marker_base, window_index, scope_index);
            let is_cell = |logged: u64| logged == marker;
            let [rank, listeners, prev_rank] = ["rank", "listeners", "prev_rank"].map(|kind| {
                let mut millis: Vec<u64> = of(&is_cell, kind).iter().map(|row| row.5).collect();
                median(&mut millis)
            });
            let mut rank_rows: Vec<u64> = of(&is_cell, "rank").iter().map(|row| row.3).collect();
            println!(
                "{:<30} {rank:>10} {listeners:>14} {prev_rank:>16} {:>14}",
                format!("{window:>3} {}", cell.scope),
                median(&mut rank_rows)
            );
        }
    }
    Ok(())
}
