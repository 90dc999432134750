//! The aggregator end to end: generated events through the real broker into the real
//! ClickHouse, compared with a brute-force count of the valid, distinct events.

use std::collections::HashMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec, Truth};
use topk_tests::pipeline::Pipeline;

// Tests in which an aggregator resumes a partition from a checkpoint (a restart, a
// rebalance) produce one record per batch: tansu skips to the next batch when a fetch starts
// inside one (see `Pipeline::produce_unbatched`).
const STATIC_MEMBER: &[&str] = &[
    "--kafka-consumer-properties",
    "group.instance.id=sigkill-worker",
];

fn spec(events: u64, seed: u64) -> GeneratorSpec {
    let mut spec = GeneratorSpec::new(events, chrono::Utc::now());
    spec.seed = seed;
    spec.users = 2_000;
    spec.songs = 10_000;
    spec.duplicate_share = 0.01;
    spec.malformed_share = 0.01;
    spec.late_share = 0.01;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_equal_brute_force_and_dead_letters_hold_the_malformed() {
    let pipeline = Pipeline::new("aggregator_exact_counts", 4).await;
    let messages = generate(&spec(100_000, 7));
    pipeline.produce(&messages).await;
    let mut aggregator = pipeline.start_aggregator("exact", &[]);
    pipeline.wait_until_drained(Duration::from_secs(180)).await;

    pipeline.assert_rows_equal(&messages, &aggregator).await;

    // Every malformed payload is on the dead-letter topic once, with its reason.
    let mut expected_letters: HashMap<Vec<u8>, Vec<&'static str>> = HashMap::new();
    for message in &messages {
        if let Truth::Malformed(reason) = message.truth {
            expected_letters
                .entry(message.payload.clone())
                .or_default()
                .push(reason.as_str());
        }
    }
    let malformed_count: usize = expected_letters.values().map(Vec::len).sum();
    assert!(
        malformed_count > 500,
        "the generator made {malformed_count} malformed events"
    );
    let letters = pipeline.dead_letters(malformed_count, Duration::from_secs(60));
    assert_eq!(letters.len(), malformed_count, "dead letters");
    for letter in &letters {
        let reason = letter
            .headers
            .get("topk-dlq-reason")
            .expect("reason header");
        let reasons = expected_letters
            .get_mut(&letter.payload)
            .unwrap_or_else(|| {
                panic!(
                    "unexpected dead letter {:?}",
                    String::from_utf8_lossy(&letter.payload)
                )
            });
        let position = reasons
            .iter()
            .position(|expected| expected == reason)
            .unwrap_or_else(|| {
                panic!(
                    "reason {reason} for {:?}, expected {reasons:?}",
                    String::from_utf8_lossy(&letter.payload)
                )
            });
        reasons.swap_remove(position);
        assert!(letter.headers.contains_key("topk-source-partition"));
        assert!(letter.headers.contains_key("topk-source-offset"));
        assert!(!letter.headers["topk-dlq-detail"].is_empty());
    }
    assert_eq!(
        aggregator.terminate(Duration::from_secs(30)),
        Some(0),
        "clean exit on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_when_killed_repeatedly() {
    let pipeline = Pipeline::new("aggregator_sigkill", 4).await;
    let messages = generate(&spec(100_000, 11));
    // Produce in five slices while the aggregator is being killed: each run is killed at a
    // random moment after its first flush landed, which puts kills before, during and after
    // flushes. Every run uses the same static group membership (group.instance.id), as a
    // restarted pod would: tansu, the test broker, never evicts a SIGKILLed dynamic member,
    // so a replacement would wait forever; with a static id it takes over in seconds.
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let slices: Vec<&[_]> = messages.chunks(messages.len() / 5 + 1).collect();
    let mut kills = 0;
    for (index, slice) in slices.iter().enumerate() {
        let before = pipeline.checkpoints().await;
        let mut aggregator = pipeline.start_aggregator(&format!("run-{index}"), STATIC_MEMBER);
        pipeline.produce_unbatched(slice).await;
        pipeline
            .wait_for_progress(&before, Duration::from_secs(60))
            .await;
        let delay = Duration::from_millis(rng.random_range(0..1_500));
        tokio::time::sleep(delay).await;
        assert!(
            aggregator.is_running(),
            "aggregator died by itself:\n{}",
            aggregator.log_tail(20)
        );
        aggregator.kill_hard();
        kills += 1;
    }
    assert!(kills >= 5);
    let mut aggregator = pipeline.start_aggregator("final", STATIC_MEMBER);
    pipeline.wait_until_drained(Duration::from_secs(240)).await;
    pipeline.assert_rows_equal(&messages, &aggregator).await;
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));
}

/// Memory pauses on batched input, the way production producers batch. After a pause the
/// aggregator resumes each partition exactly after the last record it took, usually inside a
/// record batch. The test broker (tansu) answers a fetch from inside a batch with the next
/// batch, so each such resume first sees an offset gap: the aggregator must read the
/// partition again from further back, never give it up or count past the gap. (Apache Kafka
/// delivers the batch holding the offset, and the gap never appears.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pauses_inside_record_batches_lose_nothing() {
    let pipeline = Pipeline::new("aggregator_batched_pauses", 2).await;
    let messages = generate(&spec(60_000, 41));
    pipeline.produce(&messages).await;
    let mut aggregator = pipeline.start_aggregator("batched", &["--memory-limit-mb", "10"]);
    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    pipeline.assert_rows_equal(&messages, &aggregator).await;
    let log = aggregator.log();
    println!(
        "memory pauses: {}, offset gaps answered by reading again: {}",
        log.matches("memory budget reached").count(),
        log.matches("records missing before this offset").count()
    );
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aggregators_share_partitions_and_one_stops_mid_run() {
    let pipeline = Pipeline::new("aggregator_two_workers", 4).await;
    let messages = generate(&spec(100_000, 23));
    let (first_half, second_half) = messages.split_at(messages.len() / 2);
    let mut first = pipeline.start_aggregator("worker-a", &["--worker-id", "worker-a"]);
    let mut second = pipeline.start_aggregator("worker-b", &["--worker-id", "worker-b"]);
    pipeline.produce_unbatched(first_half).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One worker leaves mid-run: the other takes its partitions over.
    assert_eq!(
        second.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        second.log_tail(20)
    );
    pipeline.produce_unbatched(second_half).await;
    pipeline.wait_until_drained(Duration::from_secs(240)).await;
    pipeline.assert_rows_equal(&messages, &first).await;
    assert_eq!(first.terminate(Duration::from_secs(30)), Some(0));
}

/// A crash between a flush's minute rows and its commit leaves rows that must never count
/// (possibly in one day partition of two). This plants such rows directly — a claim of the
/// partition with rows and no commit, as a worker that crashed right after claiming and
/// writing would leave — so the case is exercised every run rather than only when a random
/// kill happens to land there. The next owner claims over it, counts exactly, and removes
/// the rows in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_an_unfinished_flush_never_count_and_are_removed() {
    use topk_core::schema::MinuteRow;
    let pipeline = Pipeline::new("aggregator_unfinished_flush", 2).await;
    let messages = generate(&spec(20_000, 31));
    let (first_half, second_half) = messages.split_at(messages.len() / 2);
    pipeline.produce_unbatched(first_half).await;
    let mut aggregator = pipeline.start_aggregator("before-crash", &[]);
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));

    // The "crashed flush": rows in two day partitions, never committed.
    let now = chrono::Utc::now();
    let planted: Vec<MinuteRow> = [now, now - chrono::Duration::days(1)]
        .into_iter()
        .map(|minute| MinuteRow {
            user_id: "user-1".to_owned(),
            song_id: "song-1".to_owned(),
            minute: chrono::DateTime::from_timestamp(minute.timestamp() / 60 * 60, 0).unwrap(),
            plays: 1_000,
            topic: pipeline.topic.clone(),
            kafka_partition: 0,
            flush_offset: 0,
            claim_id: 0,
            flush_seq: 0,
            region: String::new(),
            chart_plays: 0,
        })
        .collect();
    let crashed =
        topk_tests::committed::write_uncommitted(&pipeline.clickhouse, &pipeline.group, &planted)
            .await;
    // Never counted, even before anyone took the partition over.
    pipeline
        .assert_counts_equal(&expected_minute_counts(first_half), &aggregator)
        .await;

    pipeline.produce_unbatched(second_half).await;
    // (The delay protects a cluster from a writer that died with its node, see
    // tests/cluster/cleanup.rs; shortened here.)
    let mut aggregator = pipeline.start_aggregator("after-crash", &["--cleanup-delay-ms", "2000"]);
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    pipeline.assert_rows_equal(&messages, &aggregator).await;
    // The new owner removes the rows in the background, after its delay.
    let client = pipeline.clickhouse.client();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: u64 = client
            .query("SELECT count() FROM plays_minute WHERE claim_id = ?")
            .bind(crashed[0].claim_id)
            .fetch_one()
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} planted rows still there:\n{}",
            aggregator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));
}

/// A SIGTERM that arrives while a worker is still starting (connecting, checking the schema,
/// joining the group) is a request to stop cleanly: exit code 0, not death by the signal's
/// default action. The signal is sent once the worker has printed its first line (so the
/// process is past `exec`), then again later into startup. (Before, the handler was installed
/// only after startup: this failed with the process killed by the signal, the way a deploy
/// that stops a worker in its first moments would see it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_startup_stops_cleanly() {
    let pipeline = Pipeline::new("aggregator_early_sigterm", 1).await;
    for delay_ms in [0, 0, 0, 20, 50, 100] {
        let mut aggregator = pipeline.start_aggregator(&format!("early-{delay_ms}"), &[]);
        let started = std::time::Instant::now();
        // Log files are appended to across runs: wait for a line naming this run's topic.
        while !aggregator.log_tail(3).contains(&pipeline.topic) {
            assert!(started.elapsed() < Duration::from_secs(10), "no output");
            std::thread::sleep(Duration::from_millis(1));
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        assert_eq!(
            aggregator.terminate(Duration::from_secs(30)),
            Some(0),
            "SIGTERM {delay_ms} ms after the first line: {}",
            aggregator.log_tail(20)
        );
    }
}

/// tansu answers a fetch from inside a record batch with the next batch; inside a partition's
/// *last* batch it answers nothing at all, and no later record shows the gap. A worker that
/// resumes there (here: a previous owner committed through the middle of the last batch; in
/// CI it was a memory pause) must notice that the broker holds records after its position and
/// read from further back. (Before, the partition's tail was never counted: seen in CI as
/// 162 records of a partition never consumed, "not drained".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_inside_the_last_record_batch_is_noticed() {
    let pipeline = Pipeline::new("aggregator_last_batch", 1).await;
    let mut spec = spec(3_000, 78);
    spec.duplicate_share = 0.0;
    spec.malformed_share = 0.0;
    spec.late_share = 0.0;
    let messages = generate(&spec);
    pipeline.produce(&messages).await;
    let last = pipeline.end_offsets()[&0] - 1;
    let counted_through = last - 20;
    topk_tests::committed::commit_through_in(
        &pipeline.clickhouse,
        &pipeline.group,
        &pipeline.topic,
        0,
        counted_through,
    )
    .await;
    let aggregator = pipeline.start_aggregator("last-batch", &[]);
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    // One partition: offsets are the messages' positions.
    let tail = &messages[usize::try_from(counted_through + 1).unwrap()..];
    pipeline
        .assert_counts_equal(&expected_minute_counts(tail), &aggregator)
        .await;
}
