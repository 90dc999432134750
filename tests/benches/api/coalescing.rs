//! Coalescing against one query per request and against ClickHouse's own ceiling.

use topk_api::store::CoalesceCounts;
use topk_api::AppState;

use crate::verdict;
use crate::wrk::{WrkResult, WrkTarget};

/// The targets compared, each for a random user of all of them.
pub struct Paths<'a> {
    /// The API's per-request query straight to ClickHouse (the ceiling of one query per
    /// request).
    pub direct: &'a WrkTarget,
    /// The API reading each request alone (`--coalesce false`).
    pub alone: &'a WrkTarget,
    /// The API coalescing, and its state (for its batch counts).
    pub coalesced: &'a WrkTarget,
    pub coalesced_state: &'a AppState,
}

/// Targets: the coalesced API at ≥ 3 × the ceiling's req/s with p99 ≤ 100 ms; a lone
/// request's p50 within 5 ms of one read alone.
const THROUGHPUT_TARGET: f64 = 3.0;
const P99_TARGET_MS: f64 = 100.0;
const LONE_P50_TARGET_MS: f64 = 5.0;

/// Alternating rounds of the three paths at 16 and 64 connections, then one connection.
pub fn compare(
    paths: &Paths<'_>,
    users: u64,
    rounds: u64,
    round_seconds: u64,
) -> anyhow::Result<()> {
    let counts = || {
        paths
            .coalesced_state
            .store()
            .coalesce_counts()
            .unwrap_or_default()
    };
    println!();
    println!(
        "coalescing: {rounds} alternating rounds of {round_seconds} s per path and connection count"
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>13} {:>13}",
        "", "req/s", "p50 ms", "p99 ms", "API µs/req", "machine busy"
    );
    for connections in [16, 64] {
        let mut direct = Vec::new();
        let mut alone = Vec::new();
        let mut coalesced = Vec::new();
        let before = counts();
        for _ in 0..rounds {
            direct.push(paths.direct.run(0..users, connections, round_seconds)?);
            alone.push(paths.alone.run(0..users, connections, round_seconds)?);
            coalesced.push(paths.coalesced.run(0..users, connections, round_seconds)?);
        }
        let batches = batch_size(before, counts());
        let direct = checked(&direct);
        let alone = checked(&alone);
        let coalesced = checked(&coalesced);
        print(
            &direct,
            &format!("{connections} conn: clickhouse http (ceiling)"),
        );
        print(
            &alone,
            &format!("{connections} conn: topk-api, one query per request"),
        );
        print(
            &coalesced,
            &format!("{connections} conn: topk-api, coalesced"),
        );
        let ratio = coalesced.requests_per_second() / direct.requests_per_second();
        println!(
            "{connections} conn: coalesced/ceiling req/s {ratio:.2} × (target ≥ {THROUGHPUT_TARGET} ×: {}), \
             p99 {:.1} ms (target ≤ {P99_TARGET_MS} ms: {}), coalesced/alone req/s {:.2} ×, \
             {batches:.1} requests per batch",
            verdict(ratio >= THROUGHPUT_TARGET),
            coalesced.p99_ms,
            verdict(coalesced.p99_ms <= P99_TARGET_MS),
            coalesced.requests_per_second() / alone.requests_per_second(),
        );
    }
    let mut alone = Vec::new();
    let mut coalesced = Vec::new();
    let before = counts();
    for _ in 0..rounds {
        alone.push(paths.alone.run(0..users, 1, round_seconds)?);
        coalesced.push(paths.coalesced.run(0..users, 1, round_seconds)?);
    }
    let batches = batch_size(before, counts());
    let alone = checked(&alone);
    let coalesced = checked(&coalesced);
    print(&alone, "1 conn: topk-api, one query per request");
    print(&coalesced, "1 conn: topk-api, coalesced");
    let added = coalesced.p50_ms - alone.p50_ms;
    println!(
        "1 conn: a lone request's p50 {added:+.2} ms coalesced (target within {LONE_P50_TARGET_MS} ms: {}), \
         {batches:.2} requests per batch",
        verdict(added.abs() <= LONE_P50_TARGET_MS)
    );
    Ok(())
}

/// Requests per batch between two readings of the counts.
fn batch_size(before: CoalesceCounts, after: CoalesceCounts) -> f64 {
    (after.requests - before.requests) as f64 / (after.batches - before.batches).max(1) as f64
}

/// The rounds together.
fn checked(rounds: &[WrkResult]) -> WrkResult {
    WrkResult::combine(rounds)
}

/// Prints `result` as `label`, with how many of its answers were not 200 (e.g. 503 at the
/// query timeout when one query per request cannot keep up): reported, not hidden.
fn print(result: &WrkResult, label: &str) {
    result.print(label);
    if result.not_ok > 0 {
        println!(
            "  ({} of {} answers were not 200: {:.0} 200/s; their latencies are in the percentiles)",
            result.not_ok,
            result.requests,
            result.requests.saturating_sub(result.not_ok) as f64 / result.seconds
        );
    }
}
