//! Benchmark: the API against its ceiling, the same query sent straight to ClickHouse.
//!
//! Loads a reference dataset (default 100 000 users × 7 days of committed minute rows,
//! Zipf-distributed songs, the six previous days rolled up by the real rollup; 1 % heavy
//! listeners whose every day is truncated, see `api/dataset.rs`). Then, with `wrk` and the
//! same number of connections (the API's concurrency limit), in alternating rounds so that a
//! change in the machine's load hits both alike:
//!
//! 1. ClickHouse's HTTP interface with the exact SQL the API sends for a random user (for
//!    heavy listeners, whose every rolled-up day is truncated, the API's two queries as one
//!    statement: the first, and the minute rows of the truncated days);
//! 2. the API (in this process, HS256 auth on) for a random user;
//!
//! for all users, then for the light and the heavy listeners alone, and prints req/s, p50 and
//! p99 of both with the ratios against the targets (≥ 85 % of the direct req/s, p99 < 1.3 ×
//! the direct p99). Then overload, with a client here that separates
//! accepted (200) from shed (503) latencies: the limit's worth of connections (the baseline),
//! requests arriving at 4 × the capacity so measured (open loop), and 4 × the limit in
//! connections each re-sending as soon as it is answered (closed loop, no back-off).
//!
//! `cargo bench -p topk-tests --bench api`. Env: TOPK_BENCH_USERS (100000),
//! TOPK_BENCH_SECONDS per measured run (15), TOPK_BENCH_LIMIT concurrency limit (16),
//! TOPK_BENCH_KEEP=1 keeps the database afterwards; needs `wrk`.

use std::process::Command;

use anyhow::bail;
use chrono::{DateTime, Utc};
use topk_api::config::{ApiConfig, AuthMode};
use topk_api::{AppState, Clock};
use topk_core::window::Window;
use topk_tests::stack;

use dataset::load;
use driver::Target;
use setup::{env_number, run_benchmark};
use wrk::{WrkResult, WrkTarget};

// A bench target is its own crate root, so its modules are found by path.
#[path = "api/dataset.rs"]
mod dataset;
#[path = "api/driver.rs"]
mod driver;
#[path = "api/setup.rs"]
mod setup;
#[path = "api/wrk.rs"]
mod wrk;

/// At least 32 bytes: the API refuses shorter HS256 secrets.
const JWT_SECRET: &str = "topk-bench-secret-at-least-32-bytes";
const JWT_AUDIENCE: &str = "topk-api";
/// The API-versus-ceiling comparison alternates this many rounds of each.
const ROUNDS: u64 = 3;

fn main() -> anyhow::Result<()> {
    run_benchmark(run())
}

async fn run() -> anyhow::Result<()> {
    let users = env_number("TOPK_BENCH_USERS", 100_000);
    let seconds = env_number("TOPK_BENCH_SECONDS", 15);
    let limit = env_number("TOPK_BENCH_LIMIT", 16);
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed (apt-get install wrk)");
    }
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism()?,
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
    let now: DateTime<Utc> = "2026-11-24T12:00:00Z".parse()?;
    let options = stack::fresh_database("bench_api").await;
    let cohorts = load(&options, users, now).await?;

    let mut config = ApiConfig::with_clickhouse(options.clone());
    config.auth_mode = AuthMode::Hs256;
    config.jwt_hs256_secret = JWT_SECRET.to_owned();
    config.jwt_audience = JWT_AUDIENCE.to_owned();
    config.max_concurrent_requests = u32::try_from(limit)?;
    let state = AppState::from_config(&config)?.with_clock(Clock::Fixed(now));
    let window = Window::last_week(now);
    let sql = state
        .store()
        .songs_in_window_sql("__USER__", &window)
        .await?;
    let truncated_sql = state
        .store()
        .truncated_days_sql("__USER__", &window, &window.previous_days())
        .await?;
    let heavy_sql = format!("SELECT song_id, total_plays FROM ({sql}) UNION ALL {truncated_sql}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_port = listener.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(topk_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let authorization = format!("Bearer {}", read_any_token()?);

    let without_rule = without_commit_rule(&sql)?;
    let direct = WrkTarget {
        url: options.clickhouse_url.trim_end_matches('/').to_owned(),
        method: "POST",
        path: format!(
            "/?database={}&default_format=RowBinary",
            options.clickhouse_database
        ),
        body: sql,
        authorization: String::new(),
    };
    let direct_without_rule = WrkTarget {
        body: without_rule,
        ..direct.clone()
    };
    let direct_heavy = WrkTarget {
        body: heavy_sql,
        ..direct.clone()
    };
    let api = WrkTarget {
        url: format!("http://127.0.0.1:{api_port}"),
        method: "GET",
        path: "/v1/users/__USER__/top-songs".to_owned(),
        body: String::new(),
        authorization: authorization.clone(),
    };
    println!("warm-up (3 s each)");
    direct.run(0..users, limit, 3)?;
    api.run(0..users, limit, 3)?;
    let round_seconds = seconds.div_ceil(ROUNDS).max(2);
    println!(
        "measuring: {limit} connections, {ROUNDS} alternating rounds of {round_seconds} s per cohort"
    );
    println!(
        "{:<40} {:>8} {:>8} {:>8} {:>13} {:>13}",
        "", "req/s", "p50 ms", "p99 ms", "API µs/req", "machine busy"
    );
    for (cohort, range, direct) in [
        ("all users", 0..users, &direct),
        ("light listeners", cohorts.light.clone(), &direct),
        ("heavy listeners", cohorts.heavy.clone(), &direct_heavy),
    ] {
        let mut direct_rounds = Vec::new();
        let mut api_rounds = Vec::new();
        for _ in 0..ROUNDS {
            direct_rounds.push(direct.run(range.clone(), limit, round_seconds)?);
            api_rounds.push(api.run(range.clone(), limit, round_seconds)?);
        }
        let direct_result = WrkResult::combine(&direct_rounds);
        let api_result = WrkResult::combine(&api_rounds);
        if api_result.not_ok > 0 || direct_result.not_ok > 0 {
            bail!("unexpected statuses: direct {direct_result:?}, api {api_result:?}");
        }
        direct_result.print(&format!("{cohort}: clickhouse http (ceiling)"));
        api_result.print(&format!("{cohort}: topk-api"));
        let throughput_ratio =
            api_result.requests_per_second() / direct_result.requests_per_second();
        let p99_ratio = api_result.p99_ms / direct_result.p99_ms;
        println!(
            "{cohort}: api/ceiling req/s {:.1} % (target ≥ 85 %: {}), p99 {p99_ratio:.2} × (target < 1.3 ×: {})",
            throughput_ratio * 100.0,
            verdict(throughput_ratio >= 0.85),
            verdict(p99_ratio < 1.3)
        );
    }
    // What counting committed flushes only costs: the ceiling's SQL with and without the rule.
    let mut with_rule = Vec::new();
    let mut without = Vec::new();
    for _ in 0..ROUNDS {
        with_rule.push(direct.run(0..users, limit, round_seconds)?);
        without.push(direct_without_rule.run(0..users, limit, round_seconds)?);
    }
    let with_rule = WrkResult::combine(&with_rule);
    let without = WrkResult::combine(&without);
    with_rule.print("ceiling, committed flushes only");
    without.print("ceiling, every row (no commit rule)");
    println!(
        "the commit rule costs {:.1} % of the ceiling's req/s, p99 {:.2} ×",
        (1.0 - with_rule.requests_per_second() / without.requests_per_second()) * 100.0,
        with_rule.p99_ms / without.p99_ms
    );

    println!();
    let target = Target {
        port: api_port,
        authorization,
        users,
    };
    let connections = usize::try_from(limit)?;
    let nominal = target.closed_loop(connections, seconds)?;
    let capacity = nominal.ok.0.len() as f64 / nominal.seconds;
    let open = target.open_loop(4.0 * capacity, seconds)?;
    let storm = target.closed_loop(4 * connections, seconds)?;
    let heading = format!("API overload (concurrency limit {limit})");
    println!(
        "{heading:<42} {:>7} {:>8} {:>8} {:>7} {:>8} {:>8}",
        "200/s", "p50 ms", "p99 ms", "shed/s", "p50 ms", "p99 ms"
    );
    nominal.print(&format!("{connections} connections (1 ×, baseline)"));
    open.print(&format!(
        "arrivals at 4 × capacity ({:.0}/s)",
        4.0 * capacity
    ));
    storm.print(&format!("{} connections, no back-off", 4 * connections));
    println!(
        "accepted p99 vs baseline: {:.2} × at 4 × arrivals, {:.2} × with 4 × connections",
        open.ok.percentile(99.0) / nominal.ok.percentile(99.0),
        storm.ok.percentile(99.0) / nominal.ok.percentile(99.0)
    );

    let _ = stop.send(());
    server.await??;
    if std::env::var("TOPK_BENCH_KEEP").is_ok_and(|keep| keep == "1") {
        println!("kept database {}", options.clickhouse_database);
        return Ok(());
    }
    options
        .server_client()
        .query(&format!(
            "DROP DATABASE {}",
            topk_core::migrate::quote_identifier(&options.clickhouse_database)
        ))
        .execute()
        .await?;
    Ok(())
}

/// `sql` without the commit rule's condition (`topk_core::committed`), for measuring its cost.
fn without_commit_rule(sql: &str) -> anyhow::Result<String> {
    const START: &str = "(claim_id <= transform(toUInt64(kafka_partition)";
    const END: &str = "toUInt64(18446744073709551615)))";
    let Some(start) = sql.find(START) else {
        bail!("the commit rule is not in the SQL: {sql}");
    };
    let Some(length) = sql[start..].find(END) else {
        bail!("the commit rule does not end in the SQL: {sql}");
    };
    Ok(format!(
        "{}1{}",
        &sql[..start],
        &sql[start + length + END.len()..]
    ))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn read_any_token() -> anyhow::Result<String> {
    let claims = serde_json::json!({
        "sub": "bench",
        "scope": "topk:read:any",
        "aud": JWT_AUDIENCE,
        "exp": Utc::now().timestamp() + 3600,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?)
}
