//! Benchmark: the aggregator end to end against a plain rdkafka consume of the same topic
//! (the broker's ceiling on this machine). Prints events/s of both, their ratio against the
//! 90 % target, and the aggregator's CPU seconds per million events.
//!
//! Needs the stack (`scripts/stack.sh up`) and a release build of the aggregator:
//! `cargo build --release -p topk-aggregator && cargo bench -p topk-tests --bench aggregator`.
//! `TOPK_BENCH_EVENTS` sets the number of events (default 3 000 000).

use std::time::{Duration, Instant};

use rdkafka::message::Message;
use topk_loadgen::generate::{generate, GeneratorSpec};
use topk_tests::pipeline::Pipeline;
use topk_tests::stack;

/// Reads every partition from the beginning (assigned directly: the broker's fetch ceiling,
/// without group coordination) and returns how long it took from the first message.
fn plain_consume(topic: &str, partitions: i32, events: usize) -> Duration {
    let consumer = stack::consumer_from_beginning(
        &stack::kafka_brokers(),
        &format!("{topic}-plain-{}", std::process::id()),
        topic,
        partitions,
    );
    let mut consumed = 0usize;
    let mut payload_bytes = 0usize;
    let mut started: Option<Instant> = None;
    while consumed < events {
        // Joining the group takes a few seconds; after that a gap of 10 s means trouble.
        let wait = if started.is_some() { 10 } else { 60 };
        match consumer.poll(Duration::from_secs(wait)) {
            Some(Ok(message)) => {
                started.get_or_insert_with(Instant::now);
                // Touch the payload, as any consumer must.
                payload_bytes += message.payload().map_or(0, <[u8]>::len);
                consumed += 1;
            }
            Some(Err(error)) => panic!("consume: {error}"),
            None => panic!("no message for {wait} s after {consumed}"),
        }
    }
    assert!(payload_bytes > 0);
    started.expect("consumed something").elapsed()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command: utime is the 14th field, stime the 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let events: u64 = std::env::var("TOPK_BENCH_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3_000_000);
    let pipeline = Pipeline::new("bench_aggregator", 4).await;
    let mut spec = GeneratorSpec::new(events, chrono::Utc::now());
    spec.users = 100_000;
    spec.songs = 200_000;
    let messages = generate(&spec);
    let produce_started = Instant::now();
    pipeline.produce(&messages).await;
    println!(
        "produced {} events to {} in {:.1} s",
        messages.len(),
        pipeline.topic,
        produce_started.elapsed().as_secs_f64()
    );

    let plain = plain_consume(&pipeline.topic, pipeline.partitions, messages.len());
    let plain_rate = messages.len() as f64 / plain.as_secs_f64();
    println!(
        "plain rdkafka consume: {:.0} events/s ({:.2} s)",
        plain_rate,
        plain.as_secs_f64()
    );

    let started = Instant::now();
    // The whole backlog lies within one duplicate horizon (10 min of event time), so the
    // filter remembers every id: give it room (about 150 B per id), or the memory budget
    // pauses consumption and the figure measures the budget, not the aggregator.
    let memory_limit_mb = (messages.len() as u64 * 500 / 1_048_576)
        .max(512)
        .to_string();
    println!("aggregator --memory-limit-mb {memory_limit_mb}");
    let mut aggregator =
        pipeline.start_aggregator("bench", &["--memory-limit-mb", &memory_limit_mb]);
    pipeline.wait_until_drained(Duration::from_secs(600)).await;
    let took = started.elapsed();
    let cpu = cpu_seconds(aggregator.pid());
    let rate = messages.len() as f64 / took.as_secs_f64();
    println!(
        "aggregator end to end (start, consume, count, flush to ClickHouse, checkpoint): {:.0} events/s ({:.2} s)",
        rate,
        took.as_secs_f64()
    );
    println!(
        "ratio: {:.0} % of the plain consume rate (target >= 90 %)",
        100.0 * rate / plain_rate
    );
    println!(
        "aggregator CPU: {:.2} s user+system, {:.2} CPU s per million events",
        cpu,
        cpu / (messages.len() as f64 / 1e6)
    );
    let _ = aggregator.terminate(Duration::from_secs(30));
}
