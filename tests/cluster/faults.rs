//! Faults of the cluster during ingestion: a replica killed mid-ingest and restarted. The
//! aggregator writes through a node that stays up; the killed replica's shard keeps taking
//! rows on its other replica, and the restarted replica catches up by replication.

use std::time::Duration;

use chrono::Utc;
use topk_core::db::ClickHouseOptions;
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec};
use topk_tests::pipeline::Pipeline;

use crate::{cluster_up, node_pid, restart_stopped_nodes, CLUSTER};

/// Per-user play sums of one node's local minute table.
async fn local_sums(url: &str, database: &str) -> Vec<(String, u64)> {
    let client = ClickHouseOptions::new(url, database).client();
    let _ = client
        .query("SYSTEM SYNC REPLICA plays_minute")
        .execute()
        .await;
    client
        .query("SELECT user_id, sum(plays) FROM plays_minute GROUP BY user_id ORDER BY user_id")
        .fetch_all()
        .await
        .unwrap_or_else(|error| panic!("local sums on {url}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_ingest_loses_nothing_and_catches_up_when_restarted() {
    let _exclusive = crate::exclusive().await;
    let urls = cluster_up();
    let pipeline = Pipeline::on_cluster("cluster_replica_kill", 4, &urls[0], CLUSTER).await;
    let mut spec = GeneratorSpec::new(40_000, Utc::now());
    spec.users = 2_000;
    spec.songs = 6_000;
    spec.seed = 21;
    spec.late_share = 0.2;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);
    let (before, during) = messages.split_at(15_000);

    let mut aggregator = pipeline.start_aggregator("replica-kill", &[]);
    pipeline.produce_unbatched(before).await;
    let progress = pipeline.checkpoints().await;
    pipeline
        .wait_for_progress(&progress, Duration::from_secs(60))
        .await;

    // ch4: the second replica of shard 2 (the aggregator writes through ch1).
    let pid = node_pid(4);
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success(),
        "kill ch4"
    );
    pipeline.produce_unbatched(during).await;
    let progress = pipeline.checkpoints().await;
    pipeline
        .wait_for_progress(&progress, Duration::from_secs(60))
        .await;
    assert!(aggregator.is_running(), "{}", aggregator.log_tail(20));
    restart_stopped_nodes();

    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    // The restarted replica replicates again only once the killed process's ZooKeeper
    // session expired (its `is_active` node outlives it: 30 s), then fetches what it missed.
    // Until then a read through it sees its shard short (it prefers its own replica): what a
    // reader meets on a lagging replica.
    let local = format!("{}_local", pipeline.clickhouse.clickhouse_database);
    let caught_up = std::time::Instant::now() + Duration::from_secs(180);
    while local_sums(&urls[3], &local).await != local_sums(&urls[2], &local).await {
        assert!(
            std::time::Instant::now() < caught_up,
            "ch4 did not catch up with ch3 in 180 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Every node then answers exactly (a Distributed read may still meet a replica that is
    // catching up on the claims and commits: waited for, bounded).
    for url in &urls {
        let through = pipeline.through(url);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while through.minute_counts().await != expected {
            assert!(
                std::time::Instant::now() < deadline,
                "counts through {url} still differ after 120 s"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        through.assert_counts_equal(&expected, &aggregator).await;
    }
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_stopped_for_30_seconds_mid_ingest_loses_nothing() {
    let _exclusive = crate::exclusive().await;
    let urls = cluster_up();
    let pipeline = Pipeline::on_cluster("cluster_zookeeper_outage", 4, &urls[0], CLUSTER).await;
    let mut spec = GeneratorSpec::new(30_000, Utc::now());
    spec.users = 2_000;
    spec.songs = 6_000;
    spec.seed = 22;
    spec.late_share = 0.2;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);
    let (before, during) = messages.split_at(10_000);

    let mut aggregator =
        pipeline.start_aggregator("zookeeper-outage", &["--max-retry-backoff-ms", "2000"]);
    pipeline.produce_unbatched(before).await;
    let progress = pipeline.checkpoints().await;
    pipeline
        .wait_for_progress(&progress, Duration::from_secs(60))
        .await;

    // Replicated tables turn read-only without ZooKeeper: every flush fails until it is back.
    crate::stack_script(&["down", "zookeeper"]);
    let outage_started = std::time::Instant::now();
    pipeline.produce_unbatched(during).await;
    topk_tests::pipeline::assert_keeps_running(
        &mut aggregator,
        Duration::from_secs(30).saturating_sub(outage_started.elapsed()),
    )
    .await;
    crate::stack_script(&["up", "zookeeper"]);

    pipeline.wait_until_drained(Duration::from_secs(300)).await;
    for url in &urls {
        pipeline
            .through(url)
            .assert_counts_equal(&expected, &aggregator)
            .await;
    }
    let log = std::fs::read_to_string(&aggregator.log_path).unwrap_or_default();
    assert!(
        log.contains("flush failed, retrying"),
        "no flush failed while ZooKeeper was down"
    );
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));
    // 18.16 keeps failing `ON CLUSTER` DDL on a server that outlived its ZooKeeper session:
    // restart the servers for the tests after this one.
    crate::stack_script(&["down", "cluster"]);
    crate::stack_script(&["up", "cluster"]);
}
