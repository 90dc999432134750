//! Benchmark: the API against its ceiling, the same query sent straight to ClickHouse, and
//! coalescing against one query per request.
//!
//! Loads a reference dataset (default 100 000 users × 7 days of committed minute rows,
//! Zipf-distributed songs, the six previous days rolled up by the real rollup; 1 % heavy
//! listeners whose every day is truncated, see `api/dataset.rs`). Then, with `wrk`, in
//! alternating rounds so that a change in the machine's load hits every path alike:
//!
//! 1. **ceiling** (part `ceiling`), with as many connections as the API's concurrency limit:
//!    ClickHouse's HTTP interface with the exact SQL the API sends for a random user alone
//!    (for heavy listeners, whose every rolled-up day is truncated, the API's two queries as
//!    one statement: the first, and the minute rows of the truncated days), against the API
//!    reading each request alone (`--coalesce false`; in this process, HS256 auth on), for
//!    all users, then for the light and the heavy listeners alone: req/s, p50 and p99 of both
//!    with the ratios against the targets (≥ 85 % of the direct req/s, p99 < 1.3 × the direct
//!    p99), and what the commit rule costs the ceiling;
//! 2. **coalescing** (part `coalescing`, `api/coalescing.rs`): the direct query, the API
//!    reading each request alone and the API coalescing (its options from the
//!    `TOPK_API_COALESCE_*` env vars, else the defaults), at 16 and 64 connections (a
//!    concurrency limit of 64), against the targets (coalesced ≥ 3 × the ceiling's req/s,
//!    p99 ≤ 100 ms), then one connection: a lone request's p50 alone and coalesced (target:
//!    within 5 ms);
//! 3. **overload** (part `overload`), with a client here that separates accepted (200) from
//!    shed (503) latencies, against the coalescing API with the concurrency limit: the
//!    limit's worth of connections (the baseline), requests arriving at 4 × the capacity so
//!    measured (open loop), and 4 × the limit in connections each re-sending as soon as it is
//!    answered (closed loop, no back-off).
//!
//! `cargo bench -p topk-tests --bench api`. Env: TOPK_BENCH_USERS (100000),
//! TOPK_BENCH_SECONDS per measured run (15), TOPK_BENCH_LIMIT concurrency limit (16),
//! TOPK_BENCH_PARTS (`ceiling,coalescing,overload`), TOPK_BENCH_KEEP=1 keeps the database
//! afterwards, TOPK_BENCH_DATABASE names it (`bench_api`) and TOPK_BENCH_REUSE=1 reuses the
//! one a kept run loaded; needs `wrk`.

use std::process::Command;

use anyhow::bail;
use chrono::{DateTime, Utc};
use topk_api::config::{ApiConfig, AuthMode};
use topk_api::{AppState, Clock};
use topk_core::window::Window;

use dataset::load_or_reuse;
use driver::Target;
use setup::{env_number, run_benchmark};
use wrk::{WrkResult, WrkTarget};

// A bench target is its own crate root, so its modules are found by path.
#[path = "api/coalescing.rs"]
mod coalescing;
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
    let (options, cohorts) = load_or_reuse(users, now).await?;

    let parts = std::env::var("TOPK_BENCH_PARTS")
        .unwrap_or_else(|_| "ceiling,coalescing,overload".to_owned());
    let part = |name: &str| parts.split(',').any(|part| part.trim() == name);

    let api_config = |coalesce: bool, concurrency_limit: u64| -> anyhow::Result<ApiConfig> {
        let mut config = ApiConfig::with_clickhouse(options.clone());
        config.auth_mode = AuthMode::Hs256;
        config.jwt_hs256_secret = JWT_SECRET.to_owned();
        config.jwt_audience = JWT_AUDIENCE.to_owned();
        config.max_concurrent_requests = u32::try_from(concurrency_limit)?;
        config.coalesce = coalesce;
        Ok(config)
    };
    let alone_state =
        AppState::from_config(&api_config(false, limit)?)?.with_clock(Clock::Fixed(now));
    let window = Window::last_week(now);
    let sql = alone_state
        .store()
        .songs_in_window_sql("__USER__", &window)
        .await?;
    let truncated_sql = alone_state
        .store()
        .truncated_days_sql("__USER__", &window, &window.previous_days())
        .await?;
    let heavy_sql = format!(
        "SELECT song_id, total_plays FROM ({sql}) \
         UNION ALL SELECT song_id, total_plays FROM ({truncated_sql})"
    );
    let mut servers = Vec::new();
    let api_port = serve(alone_state, &mut servers).await?;
    let alone_wide_port = serve(
        AppState::from_config(&api_config(false, 64)?)?.with_clock(Clock::Fixed(now)),
        &mut servers,
    )
    .await?;
    let coalesced_state =
        AppState::from_config(&api_config(true, 64)?)?.with_clock(Clock::Fixed(now));
    let coalesced_wide_port = serve(coalesced_state.clone(), &mut servers).await?;
    let coalesced_port = serve(
        AppState::from_config(&api_config(true, limit)?)?.with_clock(Clock::Fixed(now)),
        &mut servers,
    )
    .await?;
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
    let api_on = |port: u16| WrkTarget {
        url: format!("http://127.0.0.1:{port}"),
        method: "GET",
        path: "/v1/users/__USER__/top-songs".to_owned(),
        body: String::new(),
        authorization: authorization.clone(),
    };
    let api = api_on(api_port);
    println!("warm-up (3 s each)");
    direct.run(0..users, limit, 3)?;
    api.run(0..users, limit, 3)?;
    api_on(coalesced_wide_port).run(0..users, 64, 3)?;
    let round_seconds = seconds.div_ceil(ROUNDS).max(2);
    if part("ceiling") {
        ceiling(
            &[&direct, &direct_heavy, &direct_without_rule, &api],
            &cohorts,
            users,
            limit,
            round_seconds,
        )?;
    }
    if part("coalescing") {
        coalescing::compare(
            &coalescing::Paths {
                direct: &direct,
                alone: &api_on(alone_wide_port),
                coalesced: &api_on(coalesced_wide_port),
                coalesced_state: &coalesced_state,
            },
            users,
            ROUNDS,
            round_seconds,
        )?;
    }

    if part("overload") {
        println!();
        let target = Target {
            port: coalesced_port,
            authorization,
            users,
        };
        let connections = usize::try_from(limit)?;
        let nominal = target.closed_loop(connections, seconds)?;
        let capacity = nominal.ok.0.len() as f64 / nominal.seconds;
        let open = target.open_loop(4.0 * capacity, seconds)?;
        let storm = target.closed_loop(4 * connections, seconds)?;
        let heading = format!("API overload (coalescing, concurrency limit {limit})");
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
    }

    for (stop, server) in servers {
        let _ = stop.send(());
        server.await??;
    }
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

type Server = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

/// Serves `state` on a local port until its stop is sent; returns the port.
async fn serve(state: AppState, servers: &mut Vec<Server>) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(topk_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    servers.push((stop, server));
    Ok(port)
}

/// Part 1: the API reading each request alone against the same query sent straight to
/// ClickHouse, per cohort, and what the commit rule costs. `targets`: direct, direct for
/// heavy listeners, direct without the commit rule, the API.
fn ceiling(
    targets: &[&WrkTarget; 4],
    cohorts: &dataset::Cohorts,
    users: u64,
    limit: u64,
    round_seconds: u64,
) -> anyhow::Result<()> {
    let [direct, direct_heavy, direct_without_rule, api] = *targets;
    println!(
        "measuring: {limit} connections, {ROUNDS} alternating rounds of {round_seconds} s per cohort"
    );
    println!(
        "{:<40} {:>8} {:>8} {:>8} {:>13} {:>13}",
        "", "req/s", "p50 ms", "p99 ms", "API µs/req", "machine busy"
    );
    for (cohort, range, direct) in [
        ("all users", 0..users, direct),
        ("light listeners", cohorts.light.clone(), direct),
        ("heavy listeners", cohorts.heavy.clone(), direct_heavy),
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
