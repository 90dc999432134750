//! The aggregator's cleanup of rows that never count (`remove_uncommitted_rows`) on the
//! cluster: a mutation cannot run on a `Distributed` table, so it runs on every shard's local
//! table, and the rows are gone from every replica.

use topk_aggregator::checkpoint::remove_uncommitted_rows;

use crate::{cluster_up, CLUSTER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_uncommitted_flushes_are_removed_from_every_shard_and_replica() {
    let _shared = crate::shared().await;
    let urls = cluster_up();
    let options =
        topk_tests::stack::fresh_cluster_database("cluster_cleanup", &urls[0], CLUSTER).await;
    // Flushes 1 to 4 of claim 7 << 32, for 300 users spread over both shards.
    let claim_id: u64 = 7 << 32;
    options
        .client()
        .query(&format!(
            "INSERT INTO plays_minute (user_id, song_id, minute, plays, topic, kafka_partition, \
             flush_offset, claim_id, flush_seq) SELECT concat('user-', toString(number % 300)), \
             'song-1', toDateTime('2026-11-30 10:00:00', 'UTC'), 1, 't', 0, number, {claim_id}, \
             1 + intDiv(number, 300) FROM numbers(1200)"
        ))
        .execute()
        .await
        .unwrap();

    remove_uncommitted_rows(&options.client(), &options.placement(), claim_id, 2)
        .await
        .expect("the cleanup on the cluster");

    let local = format!("{}_local", options.clickhouse_database);
    for url in &urls {
        let client = topk_core::db::ClickHouseOptions::new(url, &local).client();
        let _ = client
            .query("SYSTEM SYNC REPLICA plays_minute")
            .execute()
            .await;
        let above: u64 = client
            .query("SELECT count() FROM plays_minute WHERE flush_seq > 2")
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(above, 0, "rows of flushes 3 and 4 left on {url}");
    }
    let kept: u64 = options
        .client()
        .query("SELECT count() FROM plays_minute")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(kept, 600, "flushes 1 and 2 stay");
}

/// Sharded `ALTER`s go to one replica of each shard (`--clickhouse-cluster-nodes`), not `ON
/// CLUSTER`: on ClickHouse 18.16 the two replicas of a shard can both run an `ON CLUSTER`
/// `ALTER`, and the second one's "Node exists" stops its server's DDL worker for good (CI met
/// it twice; 170 such `ALTER`s in a row on a busy machine reproduce it). Many
/// cleanups in a row: each shard gets each mutation exactly once, on both replicas, and every
/// node still runs `ON CLUSTER` DDL afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cleanups_reach_each_shard_once_and_leave_every_ddl_worker_running() {
    // Under `finished_mutations_to_keep` (100), so every mutation is still listed.
    const CLEANUPS: u64 = 80;
    let _shared = crate::shared().await;
    let urls = cluster_up();
    let options =
        topk_tests::stack::fresh_cluster_database("cluster_many_alters", &urls[0], CLUSTER).await;
    assert_eq!(options.clickhouse_cluster_nodes.len(), 4);
    let placement = options.placement();
    let client = options.client();
    for claim in 1..=CLEANUPS {
        placement
            .alter(
                &client,
                "plays_minute",
                &format!("DELETE WHERE claim_id = {} AND flush_seq > 0", claim << 32),
                &[],
            )
            .await
            .unwrap_or_else(|error| panic!("cleanup {claim}: {error}"));
    }
    let local = format!("{}_local", options.clickhouse_database);
    for url in &urls {
        let node = topk_core::db::ClickHouseOptions::new(url, &local).client();
        let _ = node
            .query("SYSTEM SYNC REPLICA plays_minute")
            .execute()
            .await;
        let mutations: u64 = node
            .query(
                "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
                 AND table = 'plays_minute'",
            )
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(
            mutations, CLEANUPS,
            "{url}: each cleanup once on every replica of each shard"
        );
    }
    // Every node's DDL worker still takes `ON CLUSTER` statements.
    options
        .server_client()
        .query(&format!(
            "CREATE DATABASE IF NOT EXISTS {local} ON CLUSTER {CLUSTER}"
        ))
        .with_setting("distributed_ddl_task_timeout", "60")
        .execute()
        .await
        .expect("every node runs ON CLUSTER DDL after the cleanups");
}
