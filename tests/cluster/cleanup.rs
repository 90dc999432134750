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

/// Waits until `aggregator`'s log contains `line`.
async fn wait_for_log_line(aggregator: &topk_tests::process::ChildProcess, line: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !aggregator.log().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in the aggregator's log after 120 s:\n{}",
            aggregator.log_tail(30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// A writer that died mid-insert together with its ClickHouse node holds a block number of
/// the table (an ephemeral lock in ZooKeeper) until its session expires. A mutation issued
/// meanwhile cannot finish, and on ClickHouse 18.x each replica that tries to finalize it
/// segfaults (`ReplicatedMergeTreeQueue::tryFinalizeMutations`; docs/operations.md). An
/// aggregator that takes over from a crashed one issues such a mutation, its cleanup: here
/// such a lock is planted, exactly as an insert takes it, in shard 1's minute table while a
/// takeover happens, and released 5 s after the takeover (as the dead writer's session would
/// expire). The cleanup, delayed longer than that, runs after it: every node stays up, the
/// cleanup finishes and the counts are exact. (Without the delay both replicas of shard 1
/// crashed: CI met it twice in `claims::an_aggregator_killed_with_its_node..`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_cleanup_waits_out_a_dead_writers_block_number() {
    use std::time::Duration;

    use topk_loadgen::generate::{expected_minute_counts, generate};
    use zookeeper_client as zk;

    let _exclusive = crate::exclusive().await;
    let urls = cluster_up();
    let pipeline = topk_tests::pipeline::Pipeline::on_cluster(
        "cluster_cleanup_dead_writer",
        2,
        &urls[0],
        CLUSTER,
        &crate::zookeeper(),
    )
    .await;
    let messages = generate(&crate::faults::fault_traffic(8_000, 41));
    let expected = expected_minute_counts(&messages);
    let (first, second) = messages.split_at(4_000);
    let mut crashed = pipeline.start_aggregator("dead-writer-first", &[]);
    pipeline.produce_unbatched(first).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    crashed.kill_hard();

    // The dead writer's lock, in a partition of shard 1's minute table (on ch1 and ch2).
    let local = format!("{}_local", pipeline.clickhouse.clickhouse_database);
    let ch1 = topk_core::db::ClickHouseOptions::new(&urls[0], &local).client();
    let zookeeper_path: String = ch1
        .query("SELECT zookeeper_path FROM system.replicas WHERE database = ? AND table = 'plays_minute'")
        .bind(&local)
        .fetch_one()
        .await
        .unwrap();
    let partition: String = ch1
        .query("SELECT max(partition_id) FROM system.parts WHERE database = ? AND table = 'plays_minute' AND active")
        .bind(&local)
        .fetch_one()
        .await
        .unwrap();
    assert!(!partition.is_empty(), "shard 1 holds minute rows");
    let writer = zk::Client::connect(&crate::zookeeper()).await.unwrap();
    let lock = format!("{zookeeper_path}/temp/abandonable_lock-dead-writer");
    writer
        .create(
            &lock,
            b"",
            &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .unwrap();
    writer
        .create(
            &format!("{zookeeper_path}/block_numbers/{partition}/block-"),
            lock.as_bytes(),
            &zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .unwrap();

    // The crashed member's group session expires (tansu: 10 s), then its successor takes over.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut successor =
        pipeline.start_aggregator("dead-writer-successor", &["--cleanup-delay-ms", "20000"]);
    pipeline.produce_unbatched(second).await;
    wait_for_log_line(&successor, "rows of uncommitted flushes will be removed").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Server time, in whole seconds as system.mutations has it.
    let released_at: u32 = ch1
        .query("SELECT toUInt32(now())")
        .fetch_one()
        .await
        .unwrap();
    drop(writer);
    wait_for_log_line(&successor, "rows of uncommitted flushes removed").await;
    // The cleanup's DELETEs reached shard 1 only after the lock was gone.
    let (mutations, first_created): (u64, u32) = ch1
        .query(
            "SELECT count(), toUInt32(min(create_time)) FROM system.mutations \
             WHERE database = ? AND table = 'plays_minute'",
        )
        .bind(&local)
        .fetch_one()
        .await
        .unwrap();
    assert!(mutations > 0, "no cleanup mutation on shard 1");
    assert!(
        first_created >= released_at,
        "a cleanup DELETE was issued at {first_created}, before the lock was released at {released_at}"
    );

    for (node, url) in urls.iter().enumerate() {
        let alive = topk_core::db::ClickHouseOptions::new(url, "system")
            .client()
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await;
        assert!(
            alive.is_ok(),
            "ch{} is down after the cleanup: {alive:?}",
            node + 1
        );
    }
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    pipeline.assert_counts_equal(&expected, &successor).await;
    assert!(successor.is_running(), "{}", successor.log_tail(20));
    assert_eq!(successor.terminate(Duration::from_secs(30)), Some(0));
}
