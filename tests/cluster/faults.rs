//! Faults of the cluster during ingestion: a replica killed mid-ingest and restarted, a
//! replica far behind its shard (not read), ZooKeeper stopped for 30 s. In the first, the
//! aggregator writes through a node that stays up; the killed replica's shard keeps taking
//! rows on its other replica, and the restarted replica catches up by replication.

use std::time::Duration;

use chrono::Utc;
use topk_core::db::ClickHouseOptions;
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec};
use topk_tests::pipeline::Pipeline;

use crate::{cluster_up, node_pid, restart_stopped_nodes, zookeeper, CLUSTER};

/// The traffic of the tests that kill or cut off part of the cluster mid-ingest: `events`
/// plays of 2 000 users over 6 000 songs, a fifth of them late.
pub fn fault_traffic(events: u64, seed: u64) -> GeneratorSpec {
    let mut spec = GeneratorSpec::new(events, Utc::now());
    spec.users = 2_000;
    spec.songs = 6_000;
    spec.seed = seed;
    spec.late_share = 0.2;
    spec
}

/// Per-user play sums of one node's local minute table.
pub async fn local_sums(url: &str, database: &str) -> Vec<(String, u64)> {
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
    let pipeline =
        Pipeline::on_cluster("cluster_replica_kill", 4, &urls[0], CLUSTER, &zookeeper()).await;
    let messages = generate(&fault_traffic(40_000, 21));
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
    let pipeline = Pipeline::on_cluster(
        "cluster_zookeeper_outage",
        4,
        &urls[0],
        CLUSTER,
        &zookeeper(),
    )
    .await;
    let messages = generate(&fault_traffic(30_000, 22));
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
    let log = aggregator.log();
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

/// One node's own answer about its replica of `plays_minute`: seconds behind, and its local
/// play total.
async fn replica_state(url: &str, local: &str) -> (u64, u64) {
    let client = ClickHouseOptions::new(url, local).client();
    let delay: u64 = client
        .query(
            "SELECT toUInt64(absolute_delay) FROM system.replicas \
             WHERE database = currentDatabase() AND table = 'plays_minute'",
        )
        .fetch_one()
        .await
        .unwrap_or_else(|error| panic!("system.replicas on {url}: {error}"));
    let plays: u64 = client
        .query("SELECT sum(plays) FROM plays_minute")
        .fetch_one()
        .await
        .unwrap_or_else(|error| panic!("plays on {url}: {error}"));
    (delay, plays)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_far_behind_its_shard_is_not_read() {
    let _exclusive = crate::exclusive().await;
    let urls = cluster_up();
    let pipeline = Pipeline::on_cluster(
        "cluster_lagging_replica",
        2,
        &urls[0],
        CLUSTER,
        &zookeeper(),
    )
    .await;
    let mut spec = GeneratorSpec::new(8_000, Utc::now());
    spec.users = 600;
    spec.songs = 2_000;
    spec.seed = 23;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);
    let (before, during) = messages.split_at(3_000);
    let local = format!("{}_local", pipeline.clickhouse.clickhouse_database);
    let ch4_local = ClickHouseOptions::new(&urls[3], &local).client();

    let mut aggregator = pipeline.start_aggregator("lagging-replica", &[]);
    pipeline.produce(before).await;
    let progress = pipeline.checkpoints().await;
    pipeline
        .wait_for_progress(&progress, Duration::from_secs(60))
        .await;
    // ch4 stops fetching what its shard's other replica takes (each flush's rows for shard 2
    // go to ch3 or ch4, at random): it falls behind while every flush still commits.
    ch4_local
        .query("SYSTEM STOP FETCHES plays_minute")
        .execute()
        .await
        .expect("stop fetches on ch4");
    // In 10 parts, each drained before the next: many flushes, so that some of shard 2's
    // rows surely go to ch3 (the Distributed table picks one of its replicas per insert; a
    // few flushes can all land on ch4, which then is not behind: CI met it).
    for part in during.chunks(during.len().div_ceil(10)) {
        pipeline.produce(part).await;
        pipeline.wait_until_drained(Duration::from_secs(120)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (delay, ch4_plays) = replica_state(&urls[3], &local).await;
        let (_, ch3_plays) = replica_state(&urls[2], &local).await;
        assert!(ch4_plays <= ch3_plays);
        if delay > 30 {
            assert!(ch4_plays < ch3_plays, "ch4 is not behind ch3");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ch4's delay stayed at {delay} s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // ch4 prefers its own replica. With ClickHouse's defaults (a replica up to 300 s behind
    // is read, and a staler one too when no other is fresh) its answers are short; the
    // binaries' settings on a cluster read shard 2 from ch3 instead.
    let through_ch4 = pipeline.through(&urls[3]);
    let mut with_defaults = through_ch4.clone();
    with_defaults.clickhouse.clickhouse_settings.extend([
        "max_replica_delay_for_distributed_queries=300".to_owned(),
        "fallback_to_stale_replicas_for_distributed_queries=1".to_owned(),
    ]);
    assert!(
        with_defaults.minute_counts().await != expected,
        "with ClickHouse's defaults a read through ch4 was not short: the test shows nothing"
    );
    through_ch4
        .assert_counts_equal(&expected, &aggregator)
        .await;
    topk_tests::api::assert_api_equals_brute_force(&through_ch4.clickhouse, &expected).await;

    ch4_local
        .query("SYSTEM START FETCHES plays_minute")
        .execute()
        .await
        .expect("start fetches on ch4");
    let caught_up = std::time::Instant::now() + Duration::from_secs(120);
    while local_sums(&urls[3], &local).await != local_sums(&urls[2], &local).await {
        assert!(
            std::time::Instant::now() < caught_up,
            "ch4 did not catch up with ch3 in 120 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    with_defaults
        .assert_counts_equal(&expected, &aggregator)
        .await;
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));
}
