//! The pipeline on a real ClickHouse cluster: ZooKeeper and 2 shards × 2 replicas on loopback
//! (`scripts/stack.sh up cluster`, which these tests run themselves: it is idempotent and takes
//! seconds once ZooKeeper is installed). The schema laid out by the migrations, the whole
//! pipeline against the brute force and the single node, the cleanup on every shard, a replica
//! killed mid-ingest, ZooKeeper stopped for 30 s, a rollup with a shard
//! short of a replica, a restore from the S3 archive. Their own binary, like the outage tests, so the cluster's four
//! servers are not started beside the `it` suite.

mod claims;
mod cleanup;
mod faults;
mod pipeline;
mod restore;
mod rollup;
mod schema;

use std::sync::OnceLock;

use topk_core::db::ClickHouseOptions;

/// Starts the local cluster (if not running) and returns its nodes' HTTP endpoints; once per
/// test process (the script rewrites the env file the endpoints are read from).
pub fn cluster_up() -> Vec<String> {
    static URLS: OnceLock<Vec<String>> = OnceLock::new();
    URLS.get_or_init(start_cluster).clone()
}

fn start_cluster() -> Vec<String> {
    stack_script(&["up", "cluster"]);
    topk_tests::stack::cluster_node_urls()
}

/// The cluster's ZooKeeper (`host:port`), where the aggregators claim and commit.
pub fn zookeeper() -> String {
    cluster_up();
    let env = std::fs::read_to_string(topk_tests::stack::repo_root().join(".stack/cluster/env"))
        .expect("scripts/stack.sh up cluster writes .stack/cluster/env");
    env.lines()
        .find_map(|line| line.strip_prefix("export TOPK_CLUSTER_ZOOKEEPER="))
        .expect("TOPK_CLUSTER_ZOOKEEPER in .stack/cluster/env")
        .to_owned()
}

/// The cluster's name in `remote_servers` (scripts/stack.sh).
pub const CLUSTER: &str = "topk";

/// The pid of cluster node `chN` (from its pid file).
pub fn node_pid(node: u32) -> u32 {
    let path = topk_tests::stack::repo_root().join(format!(".stack/cluster/ch{node}/ch{node}.pid"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .trim()
        .parse()
        .expect("a pid")
}

/// Starts the cluster's stopped servers again (`scripts/stack.sh up cluster` starts only what
/// is not running).
pub fn restart_stopped_nodes() {
    stack_script(&["up", "cluster"]);
}

pub use topk_tests::stack::run_script as stack_script;

/// Runs `topk-rollup` with `args` against `options` (its database, cluster and settings),
/// its summary lines captured.
pub fn topk_rollup(options: &ClickHouseOptions, args: &[&str]) -> std::process::Output {
    std::process::Command::new(topk_tests::process::binary_path("topk-rollup"))
        .env("TOPK_CLICKHOUSE_URL", &options.clickhouse_url)
        .env("TOPK_CLICKHOUSE_DATABASE", &options.clickhouse_database)
        .env("TOPK_CLICKHOUSE_CLUSTER", &options.clickhouse_cluster)
        .env(
            "TOPK_CLICKHOUSE_CLUSTER_NODES",
            options.clickhouse_cluster_nodes.join(","),
        )
        .env(
            "TOPK_CLICKHOUSE_SETTINGS",
            options.clickhouse_settings.join(","),
        )
        .env("RUST_LOG", "warn")
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run topk-rollup")
}

/// Serializes the tests that stop parts of the cluster against every other test of this
/// binary: they all share the cluster.
pub async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    cluster_lock().write().await
}

/// Taken by tests that only use the cluster: [`SHARED_AT_ONCE`] at a time, never during a
/// fault test.
pub async fn shared() -> Shared {
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SHARED_AT_ONCE);
    let slot = SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed");
    Shared {
        _slot: slot,
        _read: cluster_lock().read().await,
    }
}

/// How many tests share the cluster at once, whatever `--test-threads` says: each server runs
/// `ON CLUSTER` statements one at a time, so on a 2-core machine more tests at once only queue
/// up behind each other's DDL (`distributed_ddl_task_timeout`).
const SHARED_AT_ONCE: usize = 2;

/// The cluster, shared with other tests until dropped.
pub struct Shared {
    _slot: tokio::sync::SemaphorePermit<'static>,
    _read: tokio::sync::RwLockReadGuard<'static, ()>,
}

fn cluster_lock() -> &'static tokio::sync::RwLock<()> {
    static LOCK: OnceLock<tokio::sync::RwLock<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::RwLock::new(()))
}
