//! The rollup on the cluster when a shard cannot take its snapshot: a replica of shard 2 is
//! down. Each snapshot insert needs every replica of its shard (quorum), so the day fails,
//! no progress row is written, and every user's answer still comes, exactly, from the minute
//! rows. With the replica back, a rerun records the day, and the snapshot is on both replicas
//! of its shard the moment the rollup returns.

use std::time::{Duration, Instant};

use chrono::Utc;
use topk_core::db::ClickHouseOptions;
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec};
use topk_tests::pipeline::Pipeline;

use crate::{cluster_up, node_pid, restart_stopped_nodes, topk_rollup, zookeeper, CLUSTER};

/// How many replicas of `table` in `database` the node at `url` sees active.
async fn active_replicas(url: &str, database: &str, table: &str) -> u8 {
    ClickHouseOptions::new(url, database)
        .client()
        .query(
            "SELECT active_replicas FROM system.replicas \
             WHERE database = currentDatabase() AND table = ?",
        )
        .bind(table)
        .fetch_one()
        .await
        .unwrap_or_else(|error| panic!("system.replicas on {url}: {error}"))
}

/// The current snapshot of every recorded day, as the node `options` reaches sees them.
async fn current_snapshots(options: &ClickHouseOptions) -> Vec<u64> {
    options
        .client()
        .query("SELECT max(snapshot_id) FROM rollup_progress GROUP BY day")
        .fetch_all()
        .await
        .expect("rollup_progress")
}

/// Rows of the snapshots `snapshot_ids` in one node's local `daily_top`, without waiting for
/// replication.
async fn local_snapshot_rows(url: &str, local: &str, snapshot_ids: &[u64]) -> u64 {
    let ids: Vec<String> = snapshot_ids.iter().map(u64::to_string).collect();
    ClickHouseOptions::new(url, local)
        .client()
        .query(&format!(
            "SELECT count() FROM daily_top WHERE snapshot_id IN ({})",
            ids.join(", ")
        ))
        .fetch_one()
        .await
        .unwrap_or_else(|error| panic!("daily_top on {url}: {error}"))
}

async fn recorded_days(options: &ClickHouseOptions) -> u64 {
    options
        .client()
        .query("SELECT count() FROM rollup_progress")
        .fetch_one()
        .await
        .expect("rollup_progress")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollup_with_a_replica_of_a_shard_down_records_nothing_and_answers_stay_exact() {
    let _exclusive = crate::exclusive().await;
    let urls = cluster_up();
    let pipeline = Pipeline::on_cluster(
        "cluster_rollup_shard_down",
        2,
        &urls[0],
        CLUSTER,
        &zookeeper(),
    )
    .await;
    let mut spec = GeneratorSpec::new(12_000, Utc::now());
    spec.users = 800;
    spec.songs = 3_000;
    spec.seed = 31;
    spec.late_share = 0.2;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);
    let mut aggregator = pipeline.start_aggregator("rollup-shard-down", &[]);
    pipeline.produce(&messages).await;
    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));

    // ch4 (shard 2, replica 2) down, and known to be down by its shard's other replica once
    // its ZooKeeper session expired (a quorum insert then fails at once instead of waiting).
    let local = format!("{}_local", pipeline.clickhouse.clickhouse_database);
    let pid = node_pid(4);
    assert!(std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(90);
    while active_replicas(&urls[2], &local, "daily_top").await > 1 {
        assert!(
            Instant::now() < deadline,
            "ch3 still sees ch4 active after 90 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let through_ch1 = pipeline.through(&urls[0]).clickhouse;
    let failed = topk_rollup(&through_ch1, &["run"]);
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(
        !failed.status.success(),
        "the rollup succeeded with a replica of shard 2 down:\n{stdout}"
    );
    assert!(stdout.contains("failed:"), "{stdout}");
    assert_eq!(
        recorded_days(&through_ch1).await,
        0,
        "a day was recorded although shard 2 could not take its snapshot:\n{stdout}"
    );
    // Every user, on either shard, answered exactly from the minute rows (a partial snapshot
    // is on shard 1 and on ch3: never read, no progress row names it).
    topk_tests::api::assert_api_equals_brute_force(&through_ch1, &expected).await;

    // The replica back: a rerun records the days (it can take a moment before shard 2 takes
    // quorum inserts again: the failed one is completed once ch4 fetched its part).
    restart_stopped_nodes();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let rerun = topk_rollup(&through_ch1, &["run"]);
        if rerun.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollup still fails 180 s after ch4 came back:\n{}",
            String::from_utf8_lossy(&rerun.stdout)
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(recorded_days(&through_ch1).await > 0);
    // On both replicas of shard 2 at once: the progress row came after the quorum.
    let snapshots = current_snapshots(&through_ch1).await;
    let on_ch3 = local_snapshot_rows(&urls[2], &local, &snapshots).await;
    let on_ch4 = local_snapshot_rows(&urls[3], &local, &snapshots).await;
    assert!(on_ch3 > 0, "shard 2 holds snapshot rows");
    assert_eq!(on_ch4, on_ch3, "ch4 lacks rows of a recorded snapshot");
    topk_tests::api::assert_api_equals_brute_force(&through_ch1, &expected).await;
}
