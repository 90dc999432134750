//! Restore from the S3 archive on the cluster: after ingesting (valid, duplicate, malformed
//! and late events) and rolling up, both sharded tables are emptied on every node; a restore
//! run through another node brings back, on every node, the same counts, the same daily
//! tables and the same API answers, and a second run changes nothing.

use std::time::Duration;

use chrono::Utc;
use topk_archive::ArchiveReader;
use topk_core::db::ClickHouseOptions;
use topk_core::schema::DailyTopRow;
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec};
use topk_rollup::restore::{restore, RestoreRequest};
use topk_rollup::RollupJob;
use topk_tests::pipeline::Pipeline;
use topk_tests::stack;

use crate::{cluster_up, zookeeper, CLUSTER};

async fn daily_top(options: &ClickHouseOptions) -> Vec<DailyTopRow> {
    topk_tests::committed::current_daily_top(&options.client(), &options.placement())
        .await
        .expect("read daily_top")
}

fn job(options: &ClickHouseOptions) -> RollupJob {
    let mut job = RollupJob::new(options.client(), Utc::now());
    job.placement = options.placement();
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_on_the_cluster_rebuilds_every_shard_and_replica_from_the_archive() {
    let _shared = crate::shared().await;
    let urls = cluster_up();
    let pipeline =
        Pipeline::on_cluster("cluster_restore", 3, &urls[0], CLUSTER, &zookeeper()).await;
    let mut spec = GeneratorSpec::new(15_000, Utc::now());
    spec.seed = 41;
    spec.users = 400;
    spec.songs = 2_000;
    spec.late_share = 0.4;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);
    pipeline.produce(&messages).await;
    let mut aggregator = pipeline.start_aggregator("cluster-restore", &[]);
    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));

    let through_ch2 = pipeline.through(&urls[1]).clickhouse;
    let rolled = job(&through_ch2).run(|_| {}).await.expect("rollup");
    assert!(rolled.iter().all(|outcome| !outcome.failed()));
    let daily_before = daily_top(&through_ch2).await;
    assert!(!daily_before.is_empty());

    // Lost on every node: both sharded tables emptied on each replica.
    let local = format!("{}_local", pipeline.clickhouse.clickhouse_database);
    for url in &urls {
        for table in ["plays_minute", "daily_top"] {
            ClickHouseOptions::new(url, &local)
                .client()
                .query(&format!("TRUNCATE TABLE {table}"))
                .execute()
                .await
                .unwrap_or_else(|error| panic!("truncate {table} on {url}: {error}"));
        }
    }
    assert!(pipeline.minute_counts().await.is_empty());

    let reader = ArchiveReader::new(
        stack::s3_client().await,
        stack::s3_bucket(),
        pipeline.archive_prefix(),
    );
    let window = topk_core::window::Window::last_week(Utc::now());
    let request = RestoreRequest {
        topic: pipeline.topic.clone(),
        from: window.from.date_naive(),
        to: window.today(),
        dedup_horizon_ms: 600_000,
        chart_min_played_ms: topk_core::event::DEFAULT_CHART_MIN_PLAYED_MS,
        consumer_group: pipeline.group.clone(),
        force: true,
    };
    let through_ch3 = pipeline.through(&urls[2]).clickhouse;
    for attempt in 0..2 {
        let outcomes = restore(
            &job(&through_ch3),
            &through_ch3,
            &pipeline.coordinator(),
            &reader,
            &request,
            |_| {},
        )
        .await
        .unwrap_or_else(|error| panic!("restore attempt {attempt}: {error}"));
        assert!(outcomes.iter().all(|outcome| !outcome.failed()));
        for url in &urls {
            let through = pipeline.through(url);
            assert!(
                through.minute_counts().await == expected,
                "minute counts through {url} after restore {attempt}"
            );
            assert!(
                daily_top(&through.clickhouse).await == daily_before,
                "daily_top through {url} after restore {attempt}"
            );
        }
        topk_tests::api::assert_api_equals_brute_force(
            &pipeline.through(&urls[3]).clickhouse,
            &expected,
        )
        .await;
    }
}
