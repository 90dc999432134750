//! The schema on a real ClickHouse cluster: ZooKeeper and 2 shards × 2 replicas on loopback
//! (`scripts/stack.sh up cluster`, which these tests run themselves: it is idempotent and
//! takes seconds once ZooKeeper is installed). Their own binary, like the outage tests, so
//! the cluster's four servers are not started beside the `it` suite.

mod cleanup;
mod pipeline;
mod schema;

use std::process::Command;
use std::sync::OnceLock;

/// Starts the local cluster (if not running) and returns its nodes' HTTP endpoints; once per
/// test process (the script rewrites the env file the endpoints are read from).
pub fn cluster_up() -> Vec<String> {
    static URLS: OnceLock<Vec<String>> = OnceLock::new();
    URLS.get_or_init(start_cluster).clone()
}

fn start_cluster() -> Vec<String> {
    let script = topk_tests::stack::repo_root().join("scripts/stack.sh");
    let status = Command::new(&script)
        .args(["up", "cluster"])
        .status()
        .unwrap_or_else(|error| panic!("running {}: {error}", script.display()));
    assert!(status.success(), "scripts/stack.sh up cluster failed");
    let env = std::fs::read_to_string(topk_tests::stack::repo_root().join(".stack/cluster/env"))
        .expect("scripts/stack.sh up cluster writes .stack/cluster/env");
    env.lines()
        .find_map(|line| line.strip_prefix("export TOPK_CLUSTER_CLICKHOUSE_URLS="))
        .expect("TOPK_CLUSTER_CLICKHOUSE_URLS in .stack/cluster/env")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// The cluster's name in `remote_servers` (scripts/stack.sh).
pub const CLUSTER: &str = "topk";
