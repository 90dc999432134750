//! Restore from the S3 archive: after the aggregator ingested events (valid, duplicate,
//! malformed and late) and the rollup ran, truncating the minute and daily tables and running
//! restore gives the same counts, the same daily tables and the same API answers.

use std::time::Duration;

use chrono::Utc;
use topk_archive::ArchiveReader;
use topk_core::schema::DailyTopRow;
use topk_loadgen::generate::{generate, GeneratorSpec};
use topk_rollup::restore::{restore, RestoreRequest};
use topk_rollup::RollupJob;
use topk_tests::pipeline::Pipeline;
use topk_tests::stack;

async fn daily_top(pipeline: &Pipeline) -> Vec<DailyTopRow> {
    topk_tests::committed::current_daily_top(
        &pipeline.clickhouse.client(),
        &pipeline.clickhouse.placement(),
    )
    .await
    .expect("read daily_top")
}

/// The API's answers (songs and `exact`) for the heaviest users.
async fn api_answers(pipeline: &Pipeline) -> Vec<serde_json::Value> {
    let app = topk_tests::api::app(&pipeline.clickhouse);
    let mut answers = Vec::new();
    for user in 1..=25 {
        let body = topk_tests::api::top_songs_body(&app, &format!("user-{user}")).await;
        answers.push(serde_json::json!({"songs": body["songs"], "exact": body["exact"]}));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_tables_are_rebuilt_from_the_archive() {
    let pipeline = Pipeline::new("restore_from_archive", 3).await;
    let mut spec = GeneratorSpec::new(30_000, Utc::now());
    spec.seed = 61;
    spec.users = 300;
    spec.songs = 400;
    spec.late_share = 0.4; // previous days get plays, so the rollup has days to roll up
    let messages = generate(&spec);
    pipeline.produce(&messages).await;
    let mut aggregator = pipeline.start_aggregator("restore", &[]);
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));

    let job = RollupJob::new(pipeline.clickhouse.client(), Utc::now());
    let rolled = job.run(|_| {}).await.expect("rollup");
    assert!(rolled.iter().any(|outcome| !outcome.failed()));

    let counts_before = pipeline.minute_counts().await;
    let rows_before = pipeline.row_counts().await;
    pipeline.assert_rows_equal(&messages, &aggregator).await;
    let daily_before = daily_top(&pipeline).await;
    let answers_before = api_answers(&pipeline).await;
    assert!(!daily_before.is_empty() && !counts_before.is_empty());

    for table in ["plays_minute", "daily_top"] {
        pipeline
            .clickhouse
            .client()
            .query(&format!("TRUNCATE TABLE {table}"))
            .execute()
            .await
            .expect("truncate");
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
        force: false,
    };
    // The aggregator committed moments ago: a restore refuses unless told it is stopped.
    let refused = restore(
        &job,
        &pipeline.clickhouse,
        &pipeline.coordinator(),
        &reader,
        &request,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("--force"), "{refused}");
    let request = RestoreRequest {
        force: true,
        ..request
    };
    for attempt in 0..2 {
        restore(
            &job,
            &pipeline.clickhouse,
            &pipeline.coordinator(),
            &reader,
            &request,
            |_| {},
        )
        .await
        .unwrap_or_else(|error| panic!("restore attempt {attempt}: {error}"));
        assert!(
            pipeline.minute_counts().await == counts_before,
            "minute counts after restore {attempt}"
        );
        assert!(
            pipeline.row_counts().await == rows_before,
            "regions and chart plays after restore {attempt}"
        );
        assert!(
            daily_top(&pipeline).await == daily_before,
            "daily_top after restore {attempt}"
        );
        assert_eq!(
            api_answers(&pipeline).await,
            answers_before,
            "API after restore {attempt}"
        );
    }
}
