//! The whole pipeline on the cluster: Zipf traffic with duplicates, late and malformed events
//! counted by an aggregator writing through `Distributed` tables, rolled up, and answered by
//! the API (the users' top songs and every chart), each checked against the brute force and
//! against the same events run through the single-node stack.

use std::time::Duration;

use chrono::{DurationRound, Utc};
use topk_core::chart::{ChartWindow, DEFAULT_USER_HOUR_CAP};
use topk_core::db::ClickHouseOptions;
use topk_core::event::DEFAULT_CHART_MIN_PLAYED_MS;
use topk_core::schema::DailyTopRow;
use topk_loadgen::charts::expected_chart;
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec};
use topk_tests::pipeline::Pipeline;

use crate::{cluster_up, zookeeper, CLUSTER};

/// The rows of each day's current snapshot (what readers read).
async fn daily_top(options: &ClickHouseOptions) -> Vec<DailyTopRow> {
    topk_tests::committed::current_daily_top(&options.client(), &options.placement())
        .await
        .unwrap_or_else(|error| panic!("daily_top through {}: {error}", options.clickhouse_url))
}

fn rollup(options: &ClickHouseOptions) {
    rollup_with(options, &["run"]);
}

fn rollup_with(options: &ClickHouseOptions, args: &[&str]) {
    let output = crate::topk_rollup(options, args);
    assert!(
        output.status.success(),
        "topk-rollup {args:?} on {}:\n{}",
        options.clickhouse_url,
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_on_the_cluster_counts_rolls_up_and_answers_like_the_single_node() {
    let _shared = crate::shared().await;
    let urls = cluster_up();
    let cluster =
        Pipeline::on_cluster("cluster_pipeline", 4, &urls[0], CLUSTER, &zookeeper()).await;
    let single = Pipeline::new("cluster_pipeline_single_node", 4).await;
    let mut spec = GeneratorSpec::new(30_000, Utc::now());
    spec.users = 1_500;
    spec.songs = 4_000;
    spec.seed = 12;
    spec.late_share = 0.3;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);

    let mut on_cluster = cluster.start_aggregator("cluster", &[]);
    let mut on_single_node = single.start_aggregator("single-node", &[]);
    cluster.produce(&messages).await;
    single.produce(&messages).await;
    cluster.wait_until_drained(Duration::from_secs(180)).await;
    single.wait_until_drained(Duration::from_secs(180)).await;

    // Counted exactly, and every node answers the same through the Distributed tables.
    for url in &urls {
        cluster
            .through(url)
            .assert_rows_equal(&messages, &on_cluster)
            .await;
    }
    single.assert_rows_equal(&messages, &on_single_node).await;

    // The rollup on the cluster (run through another node) equals the single node's.
    rollup(&cluster.through(&urls[1]).clickhouse);
    rollup(&single.clickhouse);
    let reference = daily_top(&single.clickhouse).await;
    assert!(
        !reference.is_empty(),
        "the generator spreads plays over past days"
    );
    for url in &urls {
        let rows = daily_top(&cluster.through(url).clickhouse).await;
        assert_eq!(rows.len(), reference.len(), "daily_top rows through {url}");
        assert!(
            rows == reference,
            "daily_top through {url} differs from the single node's"
        );
    }

    // The API on a node of the other shard answers every user exactly.
    topk_tests::api::assert_api_equals_brute_force(
        &cluster.through(&urls[3]).clickhouse,
        &expected,
    )
    .await;

    // Every chart through a node of each shard equals the brute force (the hourly chart rows
    // are replicated to every node, the minute rows read through the Distributed table).
    let as_of = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let as_of_text = as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for url in [&urls[0], &urls[3]] {
        let app = topk_tests::api::app(&cluster.through(url).clickhouse);
        for window in ChartWindow::ALL {
            for (scope, region) in [
                ("scope=global", None),
                ("scope=region&region=DE", Some("DE")),
            ] {
                let body = topk_tests::api::chart_body(
                    &app,
                    &format!("{scope}&window={window}&limit=100&as_of={as_of_text}"),
                )
                .await;
                let span = window.span(as_of);
                let keeps = |event: &topk_core::event::PlayEvent| {
                    region.is_none() || event.region.as_deref() == region
                };
                let expected = expected_chart(
                    &messages,
                    &span,
                    keeps,
                    DEFAULT_USER_HOUR_CAP,
                    DEFAULT_CHART_MIN_PLAYED_MS,
                );
                let previous = expected_chart(
                    &messages,
                    &window.previous(&span),
                    keeps,
                    DEFAULT_USER_HOUR_CAP,
                    DEFAULT_CHART_MIN_PLAYED_MS,
                );
                let wanted: Vec<(u64, String, u64, u64, Option<u64>)> = expected
                    .iter()
                    .take(100)
                    .enumerate()
                    .map(|(index, song)| {
                        let prev_rank = previous
                            .iter()
                            .position(|before| before.song_id == song.song_id)
                            .map(|position| position as u64 + 1);
                        (
                            index as u64 + 1,
                            song.song_id.clone(),
                            song.plays,
                            song.listeners,
                            prev_rank,
                        )
                    })
                    .collect();
                assert_eq!(
                    body["total"],
                    expected.len(),
                    "{scope} {window} through {url}"
                );
                assert_eq!(
                    topk_tests::api::chart_songs(&body),
                    wanted,
                    "{scope} {window} through {url}"
                );
            }
        }
    }

    assert_eq!(on_cluster.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(on_single_node.terminate(Duration::from_secs(30)), Some(0));

    // Nine days on, every rolled-up day's minute partition is out of the window: prune drops
    // the same partitions on every shard as on the single node.
    let later = (Utc::now() + chrono::Duration::days(9)).to_rfc3339();
    rollup_with(
        &cluster.through(&urls[2]).clickhouse,
        &["--now", &later, "prune"],
    );
    rollup_with(&single.clickhouse, &["--now", &later, "prune"]);
    let single_days = minute_partitions(
        &single.clickhouse.clickhouse_url,
        &single.clickhouse.clickhouse_database,
    )
    .await;
    assert!(
        single_days.len() < 7,
        "prune dropped old days: {single_days:?}"
    );
    let local = format!("{}_local", cluster.clickhouse.clickhouse_database);
    for url in &urls {
        let days = minute_partitions(url, &local).await;
        assert!(
            days.iter().all(|day| single_days.contains(day)),
            "{url} keeps {days:?}, the single node {single_days:?}"
        );
    }
}

async fn minute_partitions(url: &str, database: &str) -> Vec<String> {
    ClickHouseOptions::new(url, database)
        .client()
        .query(
            "SELECT DISTINCT partition_id FROM system.parts WHERE database = currentDatabase() \
             AND table = 'plays_minute' AND active ORDER BY partition_id",
        )
        .fetch_all()
        .await
        .unwrap()
}
