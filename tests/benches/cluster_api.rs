//! Benchmark: the API's read capacity on the local cluster with one and with two replicas of
//! each shard serving (issue 12's figure), beside the single server for reference.
//!
//! Loads the API benchmark's reference dataset (`api/dataset.rs`, default 20 000 users ×
//! 7 days, the six previous days rolled up) into the cluster (`scripts/stack.sh up cluster`,
//! started here if it is not running) and into the single-node stack. Then, with `wrk` and the
//! same number of connections, in alternating rounds, the API (in this process, auth off):
//!
//! 1. through ch1, each shard read from **one replica** (`load_balancing = in_order`,
//!    `prefer_localhost_replica = 0`: always the shard's first replica, ch1 and ch3);
//! 2. through ch1, each shard read from **both replicas** (`load_balancing = random`,
//!    `prefer_localhost_replica = 0`);
//! 3. against the single server (the reference).
//!
//! and prints req/s, p50, p99, and how many queries each node answered (`system.events`), so
//! the spread is seen, not assumed. All four servers share this machine's cores: a second
//! replica adds no CPU here, it only spreads the same work. On separate hosts, read capacity
//! grows with the replicas that serve.
//!
//! `cargo bench -p topk-tests --bench cluster_api`. Env: TOPK_BENCH_USERS (20000),
//! TOPK_BENCH_SECONDS per configuration (15), TOPK_BENCH_LIMIT connections (16); needs `wrk`
//! and the single-node stack running (`scripts/stack.sh up`).

use std::process::Command;

use anyhow::bail;
use chrono::{DateTime, Utc};
use topk_api::config::{ApiConfig, AuthMode};
use topk_api::{AppState, Clock};
use topk_core::db::ClickHouseOptions;
use topk_tests::stack;

use dataset::load;
use setup::{env_number, run_benchmark};
use wrk::{WrkResult, WrkTarget};

#[path = "api/dataset.rs"]
mod dataset;
#[path = "api/setup.rs"]
mod setup;
#[path = "api/wrk.rs"]
mod wrk;

const ROUNDS: u64 = 3;

fn main() -> anyhow::Result<()> {
    run_benchmark(run())
}

/// A running API: its URL and the means to stop it.
struct RunningApi {
    target: WrkTarget,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_api(options: ClickHouseOptions, now: DateTime<Utc>) -> anyhow::Result<RunningApi> {
    let mut config = ApiConfig::with_clickhouse(options);
    config.auth_mode = AuthMode::Off;
    config.max_concurrent_requests = 64;
    let state = AppState::from_config(&config)?.with_clock(Clock::Fixed(now));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(topk_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Ok(RunningApi {
        target: WrkTarget {
            url: format!("http://127.0.0.1:{port}"),
            method: "GET",
            path: "/v1/users/__USER__/top-songs".to_owned(),
            body: String::new(),
            authorization: String::new(),
        },
        stop,
        server,
    })
}

/// Queries each node has answered since it started (`system.events`, event `Query`).
async fn queries_per_node(urls: &[String]) -> anyhow::Result<Vec<u64>> {
    let mut counts = Vec::new();
    for url in urls {
        let count: u64 = ClickHouseOptions::new(url, "system")
            .client()
            .query("SELECT value FROM system.events WHERE event = 'Query'")
            .fetch_one()
            .await?;
        counts.push(count);
    }
    Ok(counts)
}

async fn run() -> anyhow::Result<()> {
    let users = env_number("TOPK_BENCH_USERS", 20_000);
    let seconds = env_number("TOPK_BENCH_SECONDS", 15);
    let connections = env_number("TOPK_BENCH_LIMIT", 16);
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed (apt-get install wrk)");
    }
    stack::run_script(&["up", "cluster"]);
    let env = std::fs::read_to_string(stack::repo_root().join(".stack/cluster/env"))?;
    let urls: Vec<String> = env
        .lines()
        .find_map(|line| line.strip_prefix("export TOPK_CLUSTER_CLICKHOUSE_URLS="))
        .ok_or_else(|| anyhow::anyhow!("no TOPK_CLUSTER_CLICKHOUSE_URLS in .stack/cluster/env"))?
        .split(',')
        .map(str::to_owned)
        .collect();
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism()?,
        std::fs::read_to_string("/proc/loadavg")?.trim()
    );
    let now: DateTime<Utc> = "2026-11-24T12:00:00Z".parse()?;
    let cluster = stack::fresh_cluster_database("bench_cluster_api", &urls[0], "topk").await;
    println!("loading the cluster (through {})", urls[0]);
    let cohorts = load(&cluster, users, now).await?;
    println!(
        "cohorts: {} heavy listeners, {} light",
        cohorts.heavy.end - cohorts.heavy.start,
        cohorts.light.end - cohorts.light.start
    );
    let single = stack::fresh_database("bench_cluster_api_single").await;
    println!("loading the single server");
    load(&single, users, now).await?;

    let with_settings = |settings: &[&str]| {
        let mut options = cluster.clone();
        options
            .clickhouse_settings
            .extend(settings.iter().map(|setting| (*setting).to_owned()));
        options
    };
    let configurations = [
        (
            "cluster, 1 replica per shard",
            with_settings(&["load_balancing=in_order", "prefer_localhost_replica=0"]),
        ),
        (
            "cluster, 2 replicas per shard",
            with_settings(&["load_balancing=random", "prefer_localhost_replica=0"]),
        ),
        ("single server", single.clone()),
    ];
    let mut apis = Vec::new();
    for (_, options) in &configurations {
        apis.push(start_api(options.clone(), now).await?);
    }
    println!("warm-up (3 s each)");
    for api in &apis {
        api.target.run(0..users, connections, 3)?;
    }
    let round_seconds = seconds.div_ceil(ROUNDS).max(2);
    println!(
        "measuring: {connections} connections, {ROUNDS} alternating rounds of {round_seconds} s each"
    );
    let mut rounds: Vec<Vec<WrkResult>> = apis.iter().map(|_| Vec::new()).collect();
    let mut node_queries = vec![vec![0u64; urls.len()]; apis.len()];
    for _ in 0..ROUNDS {
        for (index, api) in apis.iter().enumerate() {
            let before = queries_per_node(&urls).await?;
            rounds[index].push(api.target.run(0..users, connections, round_seconds)?);
            let after = queries_per_node(&urls).await?;
            for (node, (after, before)) in after.iter().zip(&before).enumerate() {
                node_queries[index][node] += after - before;
            }
        }
    }
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>13} {:>13}   queries answered by ch1 ch2 ch3 ch4",
        "", "req/s", "p50 ms", "p99 ms", "API µs/req", "machine busy"
    );
    let mut results = Vec::new();
    for (index, (label, _)) in configurations.iter().enumerate() {
        let result = WrkResult::combine(&rounds[index]);
        if result.not_ok > 0 {
            bail!("{label}: {} requests did not answer 200", result.not_ok);
        }
        result.print(label);
        if index < 2 {
            println!("{:<30} {:?}", "", node_queries[index]);
        }
        results.push(result);
    }
    println!(
        "2 replicas / 1 replica per shard: req/s {:.2} ×, p99 {:.2} × (the four servers share {} cores here)",
        results[1].requests_per_second() / results[0].requests_per_second(),
        results[1].p99_ms / results[0].p99_ms,
        std::thread::available_parallelism()?
    );
    println!(
        "cluster (2 replicas) / single server: req/s {:.2} ×",
        results[1].requests_per_second() / results[2].requests_per_second()
    );
    for api in apis {
        let _ = api.stop.send(());
        api.server.await??;
    }
    Ok(())
}
