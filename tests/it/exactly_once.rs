//! Exactly-once under the faults that happen, one test per way it could break (the cases of
//! `aggregator/src/checkpoint.rs`). Each runs the real aggregator against the real broker and
//! ClickHouse; where a kill cannot produce the case, a fault-injecting proxy between the
//! aggregator and ClickHouse does (`topk_tests::proxy`): it holds a write past its deadline,
//! drops the response of a committed insert, or resets connections.

use std::time::{Duration, Instant};

use chrono::Utc;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use topk_core::schema::MinuteRow;
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec, MinuteCounts};
use topk_tests::pipeline::Pipeline;
use topk_tests::process::{free_port, http_get};
use topk_tests::proxy::{Action, FaultProxy, Rule};
use topk_tests::stack;

/// Inserts of minute rows (the SQL is in the URL, table names backtick-quoted).
const ROWS_INSERT: &str = "INSERT INTO `plays_minute`";
/// Inserts of flush commits.
const COMMITS_INSERT: &str = "INSERT INTO `flush_commits`";

fn spec(events: u64, seed: u64) -> GeneratorSpec {
    let mut spec = GeneratorSpec::new(events, Utc::now());
    spec.seed = seed;
    spec.users = 500;
    spec.songs = 2_000;
    spec.duplicate_share = 0.02;
    spec.malformed_share = 0.01;
    spec.late_share = 0.02;
    spec
}

fn static_member(id: &str) -> [String; 2] {
    [
        "--kafka-consumer-properties".to_owned(),
        format!("group.instance.id={id}"),
    ]
}

/// After a static member was SIGKILLed, before its successor (the same `group.instance.id`)
/// starts: tansu expires the killed member's session (10 s) even after the successor joined,
/// evicts the successor with it and does not assign the partitions again (the test broker's
/// group stall; CI saw case 5 starve for 60 s). Apache Kafka hands the successor the
/// member's partitions at once.
async fn outwait_killed_member_session() {
    tokio::time::sleep(Duration::from_secs(12)).await;
}

fn args<'a>(strings: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    strings
        .iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect()
}

async fn proxy() -> FaultProxy {
    FaultProxy::start(&stack::clickhouse_url()).await
}

/// Waits until `condition` holds, panicking with `what` after `timeout`.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Case 1: a worker whose flush is held past its revoke deadline while another worker takes
/// its partitions over writes that flush's rows after the new owner resumed. They must never
/// count. (Before claims, the new owner re-counted those offsets and the late rows were
/// counted a second time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case1_a_late_write_of_a_fenced_worker_never_counts() {
    let pipeline = Pipeline::new("case1_fencing", 2).await;
    let messages = generate(&spec(6_000, 101));
    let (first, second) = messages.split_at(messages.len() / 2);
    let proxy = proxy().await;
    let mut worker_a = pipeline.start_aggregator_to(
        &proxy.url(),
        "worker-a",
        &[
            "--worker-id",
            "worker-a",
            "--shards",
            "1",
            "--shutdown-timeout-ms",
            "3000",
        ],
    );
    pipeline.produce_unbatched(first).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;

    // A's next flush of minute rows is held in the network.
    let held = proxy.add_rule(Rule::new(ROWS_INSERT, Action::Hold).times(1));
    pipeline.produce_unbatched(second).await;
    assert!(
        held.wait_for_hit(Duration::from_secs(60)).await,
        "worker A never flushed:\n{}",
        worker_a.log_tail(20)
    );
    // B joins: A must let its partitions go and gives up on the held flush at its deadline.
    let worker_b = pipeline.start_aggregator("worker-b", &["--worker-id", "worker-b"]);
    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    // Now A's write lands, long after its partitions moved.
    held.release();
    assert!(
        held.wait_for_held_forwarded(1, Duration::from_secs(30))
            .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    pipeline.assert_rows_equal(&messages, &worker_b).await;
    assert!(worker_a.is_running(), "{}", worker_a.log_tail(20));
    worker_a.kill_hard();
}

/// Case 2: the commit of a flush lands but its response is lost. Whether it committed must
/// be read from ClickHouse: a worker that assumed it had not (and removed the flush's rows
/// before writing them again) lost the flush for good when it was killed in between. Then
/// random kills after more lost responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case2_a_commit_whose_response_is_lost_counts_once() {
    let pipeline = Pipeline::new("case2_ambiguous_commit", 2).await;
    let messages = generate(&spec(12_000, 102));
    let slices: Vec<&[_]> = messages.chunks(messages.len() / 6 + 1).collect();
    let member = static_member("case2-worker");
    let proxy = proxy().await;
    let start = |label: &str| {
        pipeline.start_aggregator_to(&proxy.url(), label, &args(&member, &["--shards", "1"]))
    };
    // A second worker, never killed and writing straight to ClickHouse, joins first and so
    // leads the consumer group. The test broker (tansu) keeps an expired leader as the leader
    // of the next generation and the group never forms again (CI: case 2 starved after a
    // kill, 3 runs of 3 on one day); with the leader alive, a killed member's session expiry
    // is an ordinary rebalance, as on Apache Kafka. Each worker owns one partition.
    let leader_member = static_member("case2-leader");
    let mut leader = pipeline.start_aggregator("leader", &args(&leader_member, &["--shards", "1"]));
    eventually(
        Duration::from_secs(60),
        "the leader owns the partitions",
        || async { leader.log().contains("partitions claimed") },
    )
    .await;
    let mut worker = start("first");
    pipeline.produce_unbatched(slices[0]).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;

    // The commit lands, its response is lost; every later write of minute rows fails; the
    // worker is killed while retrying.
    let lost = proxy.add_rule(Rule::new(COMMITS_INSERT, Action::DropResponseAfterForward).times(1));
    pipeline.produce_unbatched(slices[1]).await;
    assert!(lost.wait_for_hit(Duration::from_secs(60)).await);
    let failing = proxy.add_rule(Rule::new(ROWS_INSERT, Action::Reset));
    pipeline.produce_unbatched(slices[2]).await;
    assert!(
        failing.wait_for_hit(Duration::from_secs(60)).await,
        "{}",
        worker.log_tail(20)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.kill_hard();
    proxy.clear_rules();
    worker = start("after-lost-response");
    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    let produced_so_far = slices[0].len() + slices[1].len() + slices[2].len();
    pipeline
        .assert_counts_equal(
            &expected_minute_counts(&messages[..produced_so_far]),
            &worker,
        )
        .await;

    // More lost responses, each followed by a kill at a random moment.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for (round, slice) in slices[3..].iter().enumerate() {
        let lost =
            proxy.add_rule(Rule::new(COMMITS_INSERT, Action::DropResponseAfterForward).times(1));
        pipeline.produce_unbatched(slice).await;
        assert!(lost.wait_for_hit(Duration::from_secs(60)).await);
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_500))).await;
        worker.kill_hard();
        proxy.clear_rules();
        worker = start(&format!("round-{round}"));
    }
    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    pipeline.assert_rows_equal(&messages, &worker).await;
    assert_eq!(
        worker.terminate(Duration::from_secs(30)),
        Some(0),
        "{}",
        worker.log_tail(30)
    );
    assert_eq!(leader.terminate(Duration::from_secs(30)), Some(0));
}

/// Case 3: taking over a partition after a crash must not depend on counting leftover rows
/// first, nor wait for other work on the table: here a mutation that never finishes (one
/// that fails on every attempt, as a broken manual DELETE does) sits on `plays_minute` while
/// a worker takes over from a crashed one. (Before, the takeover waited for every unfinished
/// mutation of the table: 120 s per partition with leftover rows, blocking consumption.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case3_takeover_never_waits_for_other_mutations() {
    let pipeline = Pipeline::new("case3_stuck_mutation", 2).await;
    let messages = generate(&spec(6_000, 103));
    let (first, second) = messages.split_at(messages.len() / 2);
    let member = static_member("case3-worker");
    let proxy = proxy().await;
    let mut worker = pipeline.start_aggregator_to(&proxy.url(), "first", &args(&member, &[]));
    pipeline.produce_unbatched(first).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    // A flush whose rows land and whose commit never does, then a crash.
    let failing = proxy.add_rule(Rule::new(COMMITS_INSERT, Action::Reset));
    pipeline.produce_unbatched(second).await;
    assert!(failing.wait_for_hit(Duration::from_secs(60)).await);
    worker.kill_hard();
    proxy.clear_rules();

    let client = pipeline.clickhouse.client();
    client
        .query(
            "INSERT INTO plays_minute (user_id, song_id, minute, plays, topic, kafka_partition, \
             flush_offset) VALUES ('stuck', 'stuck', now(), 1, 'none', 999, 0)",
        )
        .execute()
        .await
        .unwrap();
    client
        .query("ALTER TABLE plays_minute DELETE WHERE throwIf(user_id = 'stuck') = 1")
        .execute()
        .await
        .unwrap();
    outwait_killed_member_session().await;
    let worker = pipeline.start_aggregator("after-crash", &args(&member, &[]));
    pipeline.wait_until_drained(Duration::from_secs(90)).await;
    pipeline.assert_rows_equal(&messages, &worker).await;
    drop(worker);
    // The stuck mutation would retry forever: drop the database with it.
    client
        .query(&format!(
            "DROP DATABASE {}",
            topk_core::migrate::quote_identifier(&pipeline.clickhouse.clickhouse_database)
        ))
        .execute()
        .await
        .unwrap();
}

/// Case 4: rows of flushes that never committed are invisible to readers: a rollup running
/// while they are there (and while a new owner takes over and repairs) builds the day from
/// committed rows only, and the API answers from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case4_readers_never_see_uncommitted_flushes() {
    let pipeline = Pipeline::new("case4_readers", 2).await;
    // Everything happened yesterday, so the rollup has a day to roll up.
    let yesterday_noon = Utc::now() - chrono::Duration::days(1);
    let yesterday_noon = yesterday_noon
        .date_naive()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let mut generated = GeneratorSpec::new(8_000, yesterday_noon);
    generated.seed = 104;
    generated.users = 300;
    generated.songs = 800;
    generated.spread_ms = 6 * 3_600_000;
    // Malformed events are made relative to the generator's "now" (yesterday): one "too far
    // in the future" then is valid by a record stamped today. None here.
    generated.malformed_share = 0.0;
    let messages = generate(&generated);
    let (first, second) = messages.split_at(messages.len() / 2);
    let proxy = proxy().await;
    let member = static_member("case4-worker");
    let mut worker = pipeline.start_aggregator_to(&proxy.url(), "first", &args(&member, &[]));
    pipeline.produce_unbatched(first).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    let failing = proxy.add_rule(Rule::new(COMMITS_INSERT, Action::Reset));
    pipeline.produce_unbatched(second).await;
    assert!(failing.wait_for_hit(Duration::from_secs(60)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.kill_hard();
    proxy.clear_rules();
    let raw: u64 = pipeline
        .clickhouse
        .client()
        .query("SELECT sum(plays) FROM plays_minute")
        .fetch_one()
        .await
        .unwrap();
    let committed_first: u64 = expected_minute_counts(first).values().sum();
    assert!(
        raw > committed_first,
        "the failed flush left rows ({raw} plays in the table, {committed_first} committed)"
    );

    // The rollup of yesterday, now: only the committed flushes count.
    let day = yesterday_noon.date_naive();
    let job = topk_rollup::RollupJob::new(pipeline.clickhouse.client(), Utc::now());
    job.backfill(day, day, |_| {}).await.unwrap();
    assert_same_top(
        &daily_top_of(&pipeline, day).await,
        &top_50(&expected_minute_counts(first), day),
    );
    // A new owner takes over (and cleans up) while the rollup runs again.
    outwait_killed_member_session().await;
    let worker = pipeline.start_aggregator("takeover", &args(&member, &[]));
    let rollup = job.backfill(day, day, |_| {});
    let drained = pipeline.wait_until_drained(Duration::from_secs(120));
    let (rolled, ()) = tokio::join!(rollup, drained);
    rolled.unwrap();
    job.backfill(day, day, |_| {}).await.unwrap();
    let expected = expected_minute_counts(&messages);
    pipeline.assert_rows_equal(&messages, &worker).await;
    assert_same_top(&daily_top_of(&pipeline, day).await, &top_50(&expected, day));
    topk_tests::api::assert_api_equals_brute_force(&pipeline.clickhouse, &expected).await;
}

/// Case 5: a replay after a crash decides every record as the first read did. A play 5 min 5 s
/// ahead of its record's timestamp is rejected; its retry, sent 6 s later, is valid and
/// counts. Read by the wall clock, the replay after a crash would admit the first copy into
/// the duplicate filter and drop the retry. Also: plays just inside and just outside the
/// window's oldest day and a three-day-old play with its retry after the crash count as in
/// a run without the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case5_a_replay_decides_every_record_as_the_first_read() {
    let pipeline = Pipeline::new("case5_replay", 1).await;
    let member = static_member("case5-worker");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack::kafka_brokers())
        .set("enable.idempotence", "true")
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // The worker holds the partition before the plays are made, so that it reads them at once
    // (a play 5 min 5 s ahead is then still too far ahead when first read).
    let mut worker = pipeline.start_aggregator("first", &args(&member, &[]));
    let client = pipeline.clickhouse.client();
    eventually(
        Duration::from_secs(60),
        "the worker claimed the partition",
        || async {
            client
                .query("SELECT count() FROM ingest_claims")
                .fetch_one::<u64>()
                .await
                .unwrap_or(0)
                > 0
        },
    )
    .await;
    let now_ms = Utc::now().timestamp_millis();
    let oldest_day_start = topk_core::window::Window::last_week(Utc::now())
        .from
        .timestamp_millis();
    let play = |id: &str, song: &str, ts: i64| {
        format!(r#"{{"event_id":"{id}","user_id":"u","song_id":"{song}","ts":{ts}}}"#)
    };
    let three_days_ago = now_ms - 3 * 86_400_000;
    let first_pass = [
        play("valid", "s-valid", now_ms),
        play("ahead", "s-ahead", now_ms + 5 * 60_000 + 5_000),
        play("old", "s-old", three_days_ago),
        play("inside", "s-inside", oldest_day_start + 60_000),
        play("outside", "s-outside", oldest_day_start - 60_000),
    ];
    for payload in &first_pass {
        send(&pipeline, &producer, payload).await;
    }
    pipeline.wait_until_drained(Duration::from_secs(60)).await;
    worker.kill_hard();
    // The retries arrive after the crash: the future play is no longer too far ahead.
    outwait_killed_member_session().await;
    for payload in [&first_pass[1], &first_pass[2]] {
        send(&pipeline, &producer, payload).await;
    }
    let worker = pipeline.start_aggregator("after-crash", &args(&member, &[]));
    pipeline.wait_until_drained(Duration::from_secs(60)).await;
    let minute = |ts: i64| ts.div_euclid(60_000) * 60;
    let key = |song: &str, ts: i64| ("u".to_owned(), song.to_owned(), minute(ts));
    let expected: MinuteCounts = [
        (key("s-valid", now_ms), 1),
        // The retry of the play that was ahead: valid when it arrived.
        (key("s-ahead", now_ms + 5 * 60_000 + 5_000), 1),
        // The old play counts once: its retry is a duplicate.
        (key("s-old", three_days_ago), 1),
        (key("s-inside", oldest_day_start + 60_000), 1),
    ]
    .into_iter()
    .collect();
    pipeline.assert_counts_equal(&expected, &worker).await;
    // The first read rejected the play that was ahead (and the one too old), nothing else.
    let mut reasons: Vec<(String, String)> = pipeline
        .dead_letters(2, Duration::from_secs(30))
        .into_iter()
        .map(|letter| {
            let payload = String::from_utf8_lossy(&letter.payload).into_owned();
            (payload, letter.headers["topk-dlq-reason"].clone())
        })
        .collect();
    reasons.sort();
    let mut expected_reasons = vec![
        (first_pass[1].clone(), "ts_in_future".to_owned()),
        (first_pass[4].clone(), "ts_too_old".to_owned()),
    ];
    expected_reasons.sort();
    assert_eq!(reasons, expected_reasons);
}

async fn send(pipeline: &Pipeline, producer: &FutureProducer, payload: &str) {
    let record = FutureRecord::to(&pipeline.topic).key("u").payload(payload);
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("delivered");
    pipeline.record_produced(delivery.partition, delivery.offset);
}

/// Case 6: a day changed since its rollup is rolled up again even when the change leaves its
/// row count and play total as they were (a play removed, another added).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case6_a_change_with_equal_totals_is_rolled_up() {
    let options = stack::fresh_database("case6_late_data").await;
    let day = Utc::now().date_naive() - chrono::Days::new(2);
    let at = day.and_hms_opt(10, 0, 0).unwrap().and_utc();
    let row = |song: &str, plays: u64| MinuteRow {
        user_id: "u".to_owned(),
        song_id: song.to_owned(),
        minute: at,
        plays,
        topic: "plays".to_owned(),
        kafka_partition: 0,
        flush_offset: 0,
        claim_id: 0,
        flush_seq: 0,
        region: String::new(),
        chart_plays: 0,
    };
    topk_tests::committed::write_committed(&options, &[row("a", 3), row("b", 2), row("x", 1)])
        .await;
    let job = topk_rollup::RollupJob::new(options.client(), Utc::now());
    job.backfill(day, day, |_| {}).await.unwrap();
    // One play of "x" removed, one play of "y" added: same rows, same plays.
    let client = options.client();
    client
        .query("ALTER TABLE plays_minute DELETE WHERE song_id = 'x'")
        .execute()
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the delete finished", || async {
        client
            .query(
                "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
                 AND is_done = 0",
            )
            .fetch_one::<u64>()
            .await
            .unwrap()
            == 0
    })
    .await;
    topk_tests::committed::write_committed(&options, &[row("y", 1)]).await;
    let outcomes = job.run(|_| {}).await.unwrap();
    let rolled: Vec<_> = outcomes
        .iter()
        .filter(|outcome| {
            outcome.day == day && matches!(outcome.result, topk_rollup::DayResult::RolledUp { .. })
        })
        .collect();
    assert_eq!(rolled.len(), 1, "{outcomes:?}");
    let songs: Vec<String> = client
        .query(
            "SELECT song_id FROM daily_top WHERE day = toDate(?) AND snapshot_id = \
             (SELECT max(snapshot_id) FROM rollup_progress WHERE day = toDate(?)) ORDER BY rank",
        )
        .bind(day.to_string())
        .bind(day.to_string())
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(songs, ["a", "b", "y"]);
}

/// The current snapshot of `day` in `daily_top`: (user, rank, song, plays).
async fn daily_top_of(pipeline: &Pipeline, day: chrono::NaiveDate) -> Vec<TopRow> {
    pipeline
        .clickhouse
        .client()
        .query(
            "SELECT user_id, rank, song_id, plays FROM daily_top WHERE day = toDate(?) \
             AND snapshot_id = (SELECT max(snapshot_id) FROM rollup_progress WHERE day = toDate(?)) \
             ORDER BY user_id, rank",
        )
        .bind(day.to_string())
        .bind(day.to_string())
        .fetch_all()
        .await
        .unwrap()
}

type TopRow = (String, u16, String, u64);

/// `assert_eq!` for top lists, showing the first difference instead of both lists.
#[track_caller]
fn assert_same_top(actual: &[TopRow], expected: &[TopRow]) {
    if let Some(index) = (0..actual.len().max(expected.len()))
        .find(|index| actual.get(*index) != expected.get(*index))
    {
        panic!(
            "daily_top differs at row {index} ({} rows, {} expected): {:?} vs {:?}",
            actual.len(),
            expected.len(),
            actual.get(index),
            expected.get(index)
        );
    }
}

/// Each user's top 50 of `day` by brute force: (user, rank, song, plays).
fn top_50(counts: &MinuteCounts, day: chrono::NaiveDate) -> Vec<TopRow> {
    let mut per_user: std::collections::BTreeMap<&str, std::collections::BTreeMap<&str, u64>> =
        Default::default();
    for ((user, song, minute), plays) in counts {
        if chrono::DateTime::from_timestamp(*minute, 0)
            .unwrap()
            .date_naive()
            == day
        {
            *per_user.entry(user).or_default().entry(song).or_default() += plays;
        }
    }
    let mut rows = Vec::new();
    for (user, songs) in per_user {
        let mut ranked: Vec<(&str, u64)> = songs.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for ((song, plays), rank) in ranked.into_iter().take(50).zip(1u16..) {
            rows.push((user.to_owned(), rank, song.to_owned(), plays));
        }
    }
    rows
}

/// Case 8: a worker that holds no partition while a partition has records nobody consumes
/// says so (`/healthz` 503, `topk_aggregator_unconsumed_partitions`), so that an orchestrator
/// restarts it. Here the owner of the only partition is paused (SIGSTOP): the test broker
/// parks the group until it resumes (Apache Kafka would evict it after `session.timeout.ms`),
/// and the second worker, which joined meanwhile, holds nothing. Once the owner resumes, the
/// group recovers and the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case8_a_worker_without_partitions_reports_records_nobody_consumes() {
    let pipeline = Pipeline::new("case8_unconsumed", 1).await;
    let messages = generate(&spec(4_000, 108));
    let expected = expected_minute_counts(&messages);
    let (first, second) = messages.split_at(messages.len() / 2);
    let owner = pipeline.start_aggregator("owner", &["--worker-id", "owner"]);
    pipeline.produce_unbatched(first).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    owner.signal("STOP");
    pipeline.produce_unbatched(second).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut idle = pipeline.start_aggregator(
        "idle",
        &["--worker-id", "idle", "--metrics-listen", listen.as_str()],
    );
    // tansu usually parks the group while its owner is paused; sometimes it hands the
    // partition to the new member at once (as Apache Kafka does after the session timeout):
    // then nobody starves and there is nothing to report, only the counts to check.
    let reported = async {
        loop {
            if let Some((503, body)) = http_get(port, "/healthz").await {
                return Some(body);
            }
            if idle.log().contains("partitions claimed") {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let reported = tokio::time::timeout(Duration::from_secs(150), reported)
        .await
        .unwrap_or_else(|_| panic!("/healthz never reported it:\n{}", idle.log_tail(20)));
    let Some(body) = reported else {
        eprintln!("case 8: the broker gave the idle worker the partition at once; no starvation to report this run");
        owner.signal("CONT");
        pipeline.wait_until_drained(Duration::from_secs(180)).await;
        pipeline.assert_counts_equal(&expected, &idle).await;
        assert!(idle.is_running(), "{}", idle.log_tail(20));
        return;
    };
    assert!(body.contains("holds no partition"), "{body}");
    let (_, metrics) = http_get(port, "/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("topk_aggregator_unconsumed_partitions 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("topk_aggregator_assigned_partitions 0"),
        "{metrics}"
    );
    owner.signal("CONT");
    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    pipeline.assert_rows_equal(&messages, &idle).await;
    assert!(idle.is_running(), "{}", idle.log_tail(20));
}
