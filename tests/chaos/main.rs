//! Long fault runs against the real stack, in their own binary (they restart ClickHouse, so
//! they never run beside other tests) and ignored by default:
//!
//! ```sh
//! cargo test -p topk-tests --test chaos -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - [`chaos_rounds_keep_counts_and_answers_exact`]: two aggregators, rounds of a random fault
//!   during Zipf traffic with duplicates and late plays; after each round drains, the counts
//!   equal the brute force and the API's answer for every user equals a brute-force top 10.
//! - [`a_stalled_group_is_reported_and_never_over_counted`]: the consumer-group stall of the test broker
//!   (tansu 0.6.0), scripted: the workers report it, and nothing is ever over-counted.
//!
//! What the test broker cannot take is said where it matters: tansu never evicts a member
//! killed with SIGKILL (so workers use static membership, as a StatefulSet would), and when the
//! group's *leader* is expired after its session timeout (a pause past it), tansu 0.6.0 keeps
//! it as leader of the next generation although it is no longer a member: every SyncGroup then
//! answers "rebalance in progress", and the group stalls for good (every member revoked, none
//! assigned; the broker's `coordinator/group/administrator.rs`, Formed `missed_heartbeat` never
//! clears the leader). Neither restarting the workers nor restarting the broker (with its
//! SQLite storage) reliably clears it: tried here, each recovered it in some runs and not in
//! others. Apache Kafka evicts such members after `session.timeout.ms` and elects a new
//! leader. So the chaos rounds give their workers a session timeout (30 s) longer than their
//! pauses (15 s): a pause freezes a worker mid-flight, with its requests in flight, but does
//! not move its partitions. A write of a worker whose partitions moved is exactly_once case 1
//! (`tests/it/exactly_once.rs`); the stall itself is [`a_stalled_group_is_reported_and_never_over_counted`].
//! If a round still stalls, the test does what an orchestrator does on the workers' failing
//! `/healthz`: it restarts them, and counts it.

use std::time::{Duration, Instant};

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratedMessage, GeneratorSpec};
use topk_tests::pipeline::Pipeline;
use topk_tests::process::{free_port, http_get, ChildProcess};
use topk_tests::proxy::{Action, FaultProxy, Rule};
use topk_tests::stack;

fn stack_script(args: &[&str]) {
    let status = std::process::Command::new(stack::repo_root().join("scripts/stack.sh"))
        .args(args)
        .status()
        .expect("run scripts/stack.sh");
    assert!(status.success(), "scripts/stack.sh {args:?} failed");
}

/// One aggregator of the chaos runs: a static member reaching ClickHouse through its own
/// fault proxy, with a metrics endpoint.
struct Worker {
    id: String,
    proxy: FaultProxy,
    metrics_port: u16,
    process: Option<ChildProcess>,
    starts: usize,
    /// Longer than any pause of the rounds (see the module documentation).
    session_timeout_ms: u64,
}

impl Worker {
    async fn new(id: &str, session_timeout_ms: u64) -> Self {
        let metrics_port = free_port();
        Self {
            id: id.to_owned(),
            proxy: FaultProxy::start(&stack::clickhouse_url()).await,
            metrics_port,
            process: None,
            starts: 0,
            session_timeout_ms,
        }
    }

    fn start(&mut self, pipeline: &Pipeline) {
        self.starts += 1;
        let member = format!(
            "group.instance.id={},session.timeout.ms={}",
            self.id, self.session_timeout_ms
        );
        let listen = format!("127.0.0.1:{}", self.metrics_port);
        self.process = Some(pipeline.start_aggregator_to(
            &self.proxy.url(),
            &format!("{}-{}", self.id, self.starts),
            &[
                "--worker-id",
                &self.id,
                "--kafka-consumer-properties",
                &member,
                "--metrics-listen",
                &listen,
                "--shutdown-timeout-ms",
                "5000",
            ],
        ));
    }

    fn process(&mut self) -> &mut ChildProcess {
        self.process.as_mut().expect("started")
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_hard();
        }
    }

    fn restart(&mut self, pipeline: &Pipeline) {
        self.kill();
        self.start(pipeline);
    }

    async fn healthz(&self) -> Option<(u16, String)> {
        http_get(self.metrics_port, "/healthz").await
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(self.metrics_port, "/metrics").await?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    }
}

/// Waits until every produced offset is committed. When nothing moves for `stall_after`,
/// restarts every worker (what an orchestrator does on their failing `/healthz`) and goes on;
/// returns how many restarts it took, or `None` when `max_restarts` did not get it moving.
async fn try_drain(
    pipeline: &Pipeline,
    workers: &mut [Worker],
    stall_after: Duration,
    max_restarts: usize,
) -> Option<usize> {
    let ends = pipeline.end_offsets();
    let mut restarts = 0;
    let mut last = pipeline.checkpoints().await;
    let mut moved_at = Instant::now();
    loop {
        let now = pipeline.checkpoints().await;
        let drained = ends.iter().all(|(partition, end)| {
            *end == 0 || now.get(partition).is_some_and(|done| done + 1 >= *end)
        });
        if drained {
            return Some(restarts);
        }
        if now != last {
            last = now;
            moved_at = Instant::now();
        }
        if moved_at.elapsed() >= stall_after {
            if restarts == max_restarts {
                return None;
            }
            restarts += 1;
            println!("  no progress for {stall_after:?}: restarting the workers");
            for worker in workers.iter_mut() {
                worker.restart(pipeline);
            }
            moved_at = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// [`try_drain`] that fails the test after 5 restarts.
async fn drain(pipeline: &Pipeline, workers: &mut [Worker], stall_after: Duration) -> usize {
    try_drain(pipeline, workers, stall_after, 5)
        .await
        .expect("still stalled after 5 restarts of the workers")
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Pause,
    ClickHouseRestart,
    ProxyReset,
    ProxyHold,
}

const FAULTS: [Fault; 5] = [
    Fault::Kill,
    Fault::Pause,
    Fault::ClickHouseRestart,
    Fault::ProxyReset,
    Fault::ProxyHold,
];

fn rounds() -> usize {
    std::env::var("TOPK_CHAOS_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 20 rounds of faults (≈ 15–25 min); run with --ignored"]
async fn chaos_rounds_keep_counts_and_answers_exact() {
    let rounds = rounds();
    let pipeline = Pipeline::new("chaos_rounds", 4).await;
    let mut spec = GeneratorSpec::new(3_000 * rounds as u64, Utc::now());
    spec.seed = 2026;
    spec.users = 2_000;
    spec.songs = 20_000;
    spec.duplicate_share = 0.02;
    spec.malformed_share = 0.01;
    spec.late_share = 0.05;
    let messages = generate(&spec);
    let slices: Vec<&[GeneratedMessage]> = messages.chunks(3_000).collect();
    let mut workers = vec![
        Worker::new("chaos-1", 30_000).await,
        Worker::new("chaos-2", 30_000).await,
    ];
    for worker in &mut workers {
        worker.start(&pipeline);
    }
    let mut rng = StdRng::seed_from_u64(20);
    let mut produced = 0usize;
    let mut stall_restarts = 0;
    for (round, slice) in slices.iter().enumerate() {
        let fault = FAULTS[rng.random_range(0..FAULTS.len())];
        let target = rng.random_range(0..workers.len());
        let started = Instant::now();
        let produce = pipeline.produce_unbatched(slice);
        let inject = async {
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..2_000))).await;
        };
        tokio::join!(produce, inject);
        match fault {
            Fault::Kill => {
                workers[target].kill();
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
                workers[target].start(&pipeline);
            }
            Fault::Pause => {
                // Within the chaos workers' 30 s session timeout (see the module docs).
                workers[target].process().signal("STOP");
                tokio::time::sleep(Duration::from_secs(15)).await;
                workers[target].process().signal("CONT");
            }
            Fault::ClickHouseRestart => {
                stack_script(&["down", "clickhouse"]);
                tokio::time::sleep(Duration::from_secs(3)).await;
                stack_script(&["up", "clickhouse"]);
            }
            Fault::ProxyReset => {
                let outage = workers[target].proxy.set_default(Action::Reset);
                tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..8_000))).await;
                drop(outage);
                workers[target].proxy.set_default(Action::Pass);
            }
            Fault::ProxyHold => {
                let rule = if rng.random_bool(0.5) {
                    "INSERT INTO `plays_minute`"
                } else {
                    "INSERT INTO `flush_commits`"
                };
                let held = workers[target]
                    .proxy
                    .add_rule(Rule::new(rule, Action::Hold).times(1));
                held.wait_for_hit(Duration::from_secs(10)).await;
                tokio::time::sleep(Duration::from_secs(rng.random_range(5..20))).await;
                held.release();
                workers[target].proxy.clear_rules();
            }
        }
        produced += slice.len();
        let restarts = drain(&pipeline, &mut workers, Duration::from_secs(60)).await;
        stall_restarts += restarts;
        let expected = expected_minute_counts(&messages[..produced]);
        let reference = workers[0].process.take().expect("running");
        pipeline
            .assert_rows_equal(&messages[..produced], &reference)
            .await;
        workers[0].process = Some(reference);
        topk_tests::api::assert_api_equals_brute_force(&pipeline.clickhouse, &expected).await;
        println!(
            "round {round:2}: {fault:?} on worker {target} -> exact after {:.1} s{}",
            started.elapsed().as_secs_f64(),
            if restarts > 0 {
                format!(" ({restarts} restarts of a stalled group)")
            } else {
                String::new()
            }
        );
    }
    println!("chaos: {rounds} rounds exact; {stall_restarts} group stalls recovered by restarting the workers");
    for worker in &mut workers {
        worker.kill();
    }
}

/// The stall of issue #10, scripted: two static aggregators on four partitions under Zipf
/// traffic at 2 000 events/s; the first is killed and restarted three times, 6 s apart, then
/// the second is paused for 15 s. On tansu 0.6.0 the group then stalls in about half of the
/// runs (every member revoked, none assigned again). It is tried up to four times; when it
/// stalls, every worker must report it (`/healthz` 503 naming the partitions,
/// `topk_aggregator_unconsumed_partitions` > 0). Then the workers are restarted (what an
/// orchestrator does on the failing `/healthz`) up to three times: if the group recovers,
/// every partition must be consumed to its end with exact counts; if it does not (the
/// broker's dangling leader, see the module documentation), nothing may be over-counted. The
/// output says how often the group stalled and how often it did not recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: up to 4 attempts of about a minute each; run with --ignored"]
async fn a_stalled_group_is_reported_and_never_over_counted() {
    let mut stalls = 0;
    let mut not_recovered = 0;
    for attempt in 0..4 {
        let pipeline = Pipeline::new(&format!("chaos_stall_{attempt}"), 4).await;
        let mut spec = GeneratorSpec::new(120_000, Utc::now());
        spec.seed = 40 + attempt;
        spec.users = 5_000;
        spec.songs = 20_000;
        spec.duplicate_share = 0.01;
        let messages = generate(&spec);
        let expected = expected_minute_counts(&messages);
        // The aggregator's default session timeout (10 s), shorter than the pause.
        let mut workers = vec![
            Worker::new("stall-1", 10_000).await,
            Worker::new("stall-2", 10_000).await,
        ];
        for worker in &mut workers {
            worker.start(&pipeline);
        }
        let producer = topk_loadgen::produce::producer(&stack::kafka_brokers()).unwrap();
        let topic = pipeline.topic.clone();
        let traffic = messages.clone();
        let produced = tokio::spawn(async move {
            topk_loadgen::produce::produce_all(&producer, &topic, &traffic, 2_000, |_| {}).await
        });
        tokio::time::sleep(Duration::from_secs(8)).await;
        for _ in 0..3 {
            workers[0].restart(&pipeline);
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        workers[1].process().signal("STOP");
        tokio::time::sleep(Duration::from_secs(15)).await;
        workers[1].process().signal("CONT");
        let last_offsets = produced.await.unwrap().unwrap();
        for (partition, offset) in last_offsets {
            pipeline.record_produced(partition, offset);
        }
        // Stalled: no progress and no partition held by anyone, for 40 s.
        let mut stalled = false;
        let watch_until = Instant::now() + Duration::from_secs(40);
        let mut last = pipeline.checkpoints().await;
        while Instant::now() < watch_until {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = pipeline.checkpoints().await;
            let held = workers[0]
                .metric("topk_aggregator_assigned_partitions")
                .await
                .unwrap_or(0.0)
                + workers[1]
                    .metric("topk_aggregator_assigned_partitions")
                    .await
                    .unwrap_or(0.0);
            if now == last && held == 0.0 {
                stalled = Instant::now() + Duration::from_secs(2) >= watch_until;
            } else {
                stalled = false;
                last = now;
            }
        }
        if stalled {
            stalls += 1;
            println!("attempt {attempt}: the group stalled; checking the workers report it");
            for worker in &workers {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let health = worker.healthz().await;
                    if let Some((503, body)) = &health {
                        assert!(body.contains("holds no partition"), "{body}");
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{} never reported: {health:?}",
                        worker.id
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let unconsumed = worker
                    .metric("topk_aggregator_unconsumed_partitions")
                    .await
                    .unwrap_or(0.0);
                assert!(unconsumed > 0.0, "{} reports {unconsumed}", worker.id);
            }
        } else {
            println!("attempt {attempt}: no stall this time");
        }
        let reference = match try_drain(&pipeline, &mut workers, Duration::from_secs(45), 3).await {
            Some(restarts) => {
                let reference = workers[0].process.take().expect("running");
                pipeline.assert_counts_equal(&expected, &reference).await;
                println!(
                    "attempt {attempt}: every partition consumed to its end, counts exact \
                     ({restarts} worker restarts)"
                );
                reference
            }
            None => {
                // Only a stalled group may fail to drain, and what was counted is never more
                // than the brute force (every flush that counted is a prefix of a partition).
                assert!(stalled, "the group did not drain, and it was not a stall");
                let counted = pipeline.minute_counts().await;
                for (key, plays) in &counted {
                    let truth = expected.get(key).copied().unwrap_or(0);
                    assert!(*plays <= truth, "{key:?}: {plays} counted, {truth} valid");
                }
                not_recovered += 1;
                println!(
                    "attempt {attempt}: still stalled after 3 restarts of the workers (the \
                     broker's dangling leader); nothing over-counted, {} of {} (user, song, \
                     minute) keys counted",
                    counted.len(),
                    expected.len()
                );
                workers[0].process.take().expect("running")
            }
        };
        drop(reference);
        if stalled {
            break;
        }
    }
    println!(
        "the group stalled in {stalls} attempt(s); {not_recovered} not recovered by restarting the workers"
    );
}
