//! Benchmark: end-to-end staleness — a play produced to Kafka until the API answers with it —
//! under load, with the default settings (the aggregator's flush interval, the API's plan
//! cache): the original design's freshness SLO, p95 ≤ 5 s at 10 000 events/s.
//!
//! Load: `TOPK_BENCH_RATE` events/s (10 000) for `TOPK_BENCH_SECONDS` (300) on a topic of
//! `TOPK_BENCH_PARTITIONS` partitions (8), produced with `linger.ms` `TOPK_BENCH_LINGER_MS` (5),
//! users and songs Zipf-distributed (200 000 users,
//! 50 000 songs), every play of the current minute; one `topk-aggregator` (the release
//! build, default settings). Every 500 ms a *marker* play of a fresh user is produced with
//! the load; a poller asks the API (in this process, default settings, on a port) for that
//! user every 100 ms until the marker's song shows. Prints p50/p95/p99/max of
//! produce-to-visible beside the target, also per minute of the run and split into produce ->
//! acknowledged by the broker and acknowledged -> visible; how far `data_through` trailed the
//! answer; the aggregator's consumer lag (its metrics, each second); its flush attempts over
//! 1 s with each step's time (its "slow flush" log lines); the rate actually produced and
//! counted; and ClickHouse's active parts per partition of the tables the aggregator writes
//! at the end (merges keeping up with 1 s flushes).
//!
//! **Charts** (`TOPK_BENCH_CHART_MARKERS`, 1: on): the markers' songs are in the catalog under a
//! genre of their own, and a second poller asks that genre's `1h` chart every 250 ms until
//! each marker's song is on it: produce-to-visible of the charts (issue 14's staleness target,
//! the same p95 ≤ 5 s). Each marker song's id sorts before the older ones', so the pending
//! markers are always on the chart's first page.
//!
//! `cargo build --release -p topk-aggregator && cargo bench -p topk-tests --bench staleness`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::SeedableRng;
use rand_distr::{Distribution, Zipf};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::Mutex;
use topk_api::config::ApiConfig;
use topk_api::AppState;
use topk_tests::pipeline::Pipeline;
use topk_tests::process::http_get;
use topk_tests::stack;

/// The target: p95 of produce-to-visible.
const TARGET_P95: Duration = Duration::from_secs(5);
/// One marker play this often.
const MARKER_EVERY: Duration = Duration::from_millis(500);
/// The poller asks for each unseen marker this often.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// The chart poller asks for the markers' chart this often.
const CHART_POLL_EVERY: Duration = Duration::from_millis(250);
/// The catalog genre of the markers' songs.
const MARKER_GENRE: &str = "staleness-marker";

/// The song of marker `index`: ids that sort before every earlier marker's.
fn marker_song(index: u64) -> String {
    format!("marker-song-{:07}", 9_999_999u64.saturating_sub(index))
}

/// Polls the markers' genre chart until every pending marker's song is on it (see the module
/// docs); returns each marker's produce-to-visible.
async fn poll_chart_markers(
    port: u16,
    pending: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Duration> {
    let mut visible = Vec::new();
    let uri = format!("/v1/charts/top-songs?scope=genre&genre={MARKER_GENRE}&window=1h&limit=100");
    loop {
        let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
        if stopping && pending.lock().await.is_empty() {
            return visible;
        }
        if let Some((200, body)) = http_get(port, &uri).await {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let on_chart: std::collections::HashSet<String> = json["songs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|song| song["song_id"].as_str().map(str::to_owned))
                .collect();
            pending.lock().await.retain(|(song, produced)| {
                if on_chart.contains(song) {
                    visible.push(produced.elapsed());
                    false
                } else {
                    true
                }
            });
        }
        tokio::time::sleep(CHART_POLL_EVERY).await;
    }
}

/// The catalog entries of the markers' songs, under [`MARKER_GENRE`].
async fn load_marker_catalog(client: &clickhouse::Client, markers: u64) -> anyhow::Result<()> {
    let mut insert = client
        .insert::<topk_core::schema::SongRow>(topk_core::schema::SONGS)
        .await?;
    let now = Utc::now();
    for index in 0..markers {
        insert
            .write(&topk_core::schema::SongRow {
                song_id: marker_song(index),
                title: format!("Marker {index}"),
                artist_id: "marker-artist".to_owned(),
                artist_name: "Markers".to_owned(),
                album: String::new(),
                genre: MARKER_GENRE.to_owned(),
                duration_ms: 0,
                version: u64::try_from(now.timestamp_millis())?,
                loaded_at: now,
            })
            .await?;
    }
    insert.end().await?;
    Ok(())
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `p50 .. p95 .. p99 .. max ..` of `values`.
fn p50_p95_p99_max(values: &[Duration]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort();
    format!(
        "p50 {:?}  p95 {:?}  p99 {:?}  max {:?}",
        percentile(&sorted, 50.0),
        percentile(&sorted, 95.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or_default()
    )
}

fn play(event_id: &str, user: &str, song: &str, ts_ms: i64) -> String {
    format!(r#"{{"event_id":"{event_id}","user_id":"{user}","song_id":"{song}","ts":{ts_ms}}}"#)
}

/// A marker produced and not yet seen in the API.
struct Marker {
    user: String,
    song: String,
    produced: Instant,
    /// How long after `produced` the broker acknowledged it (set when it does).
    acked: Arc<std::sync::OnceLock<Duration>>,
}

#[derive(Default)]
struct Observations {
    staleness: Vec<Duration>,
    /// How far `data_through` was behind the moment the marker became visible.
    data_through_lag: Vec<Duration>,
    /// Produce -> acknowledged by the broker, and acknowledged -> visible in the API.
    acked: Vec<Duration>,
    after_ack: Vec<Duration>,
    /// Each marker's staleness by the minute of the run it was produced in.
    by_minute: std::collections::BTreeMap<u64, Vec<Duration>>,
}

async fn poll_markers(
    started: Instant,
    port: u16,
    pending: Arc<Mutex<Vec<Marker>>>,
    seen: Arc<Mutex<Observations>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
        let markers: Vec<(String, String, Instant, Option<Duration>)> = pending
            .lock()
            .await
            .iter()
            .map(|marker| {
                (
                    marker.user.clone(),
                    marker.song.clone(),
                    marker.produced,
                    marker.acked.get().copied(),
                )
            })
            .collect();
        if stopping && markers.is_empty() {
            return;
        }
        for (user, song, produced, acked) in markers {
            let Some((200, body)) =
                http_get(port, &format!("/v1/users/{user}/top-songs?limit=1")).await
            else {
                continue;
            };
            if !body.contains(&format!("\"{song}\"")) {
                continue;
            }
            let visible = produced.elapsed();
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let lag = json["data_through"]
                .as_str()
                .and_then(|through| chrono::DateTime::parse_from_rfc3339(through).ok())
                .and_then(|through| (Utc::now() - through.with_timezone(&Utc)).to_std().ok());
            let mut observations = seen.lock().await;
            observations.staleness.push(visible);
            observations
                .by_minute
                .entry(produced.duration_since(started).as_secs() / 60)
                .or_default()
                .push(visible);
            if let Some(lag) = lag {
                observations.data_through_lag.push(lag);
            }
            if let Some(acked) = acked {
                observations.acked.push(acked);
                observations.after_ack.push(visible.saturating_sub(acked));
            }
            pending.lock().await.retain(|marker| marker.user != user);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rate = env_number("TOPK_BENCH_RATE", 10_000);
    let seconds = env_number("TOPK_BENCH_SECONDS", 300);
    let partitions = i32::try_from(env_number("TOPK_BENCH_PARTITIONS", 8))?;
    // The producer's batching (librdkafka `linger.ms`; 5, librdkafka's default and topk-ingest's).
    // tansu stores each produced batch as one object and lists them all on every fetch, so
    // fewer, larger batches keep the local broker's fetches cheap for longer.
    let linger_ms = env_number("TOPK_BENCH_LINGER_MS", 5);
    println!(
        "staleness: {rate} events/s for {seconds} s on {partitions} partitions, one marker \
         every {MARKER_EVERY:?}; default aggregator and API settings; producer linger.ms \
         {linger_ms}"
    );
    let pipeline = Pipeline::new("bench_staleness", partitions).await;
    // The aggregator's default flush interval (the test pipeline's shorter one replaced).
    let defaults: topk_aggregator::config::AggregatorConfig =
        topk_core::config::load_from(["topk-aggregator"])?;
    let flush_interval = defaults.flush_interval_ms.to_string();
    println!("  aggregator flush interval {flush_interval} ms (its default)");
    let metrics_port = topk_tests::process::free_port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut aggregator = pipeline.start_aggregator(
        "bench-staleness",
        &[
            "--flush-interval-ms",
            &flush_interval,
            "--metrics-listen",
            &metrics_listen,
        ],
    );
    // The aggregator's consumer lag (librdkafka's statistics, every 5 s), summed over the
    // partitions, once a second.
    let lag_samples = Arc::new(Mutex::new(Vec::<u64>::new()));
    let lag_sampler = {
        let samples = lag_samples.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some((200, body)) = http_get(metrics_port, "/metrics").await else {
                    continue;
                };
                let lag: f64 = body
                    .lines()
                    .filter(|line| line.starts_with("topk_aggregator_consumer_lag{"))
                    .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                    .filter(|lag| *lag > 0.0)
                    .sum();
                samples.lock().await.push(lag as u64);
            }
        })
    };
    let config = ApiConfig::with_clickhouse(pipeline.clickhouse.clone());
    let state = AppState::from_config(&config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(topk_api::serve(listener, state, async {
        let _ = api_stopped.await;
    }));

    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", stack::kafka_brokers())
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let pending = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(Observations::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chart_markers = env_number("TOPK_BENCH_CHART_MARKERS", 1) == 1;
    let chart_pending = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let chart_poller = if chart_markers {
        let most = seconds * 1000 / u64::try_from(MARKER_EVERY.as_millis())? + 10;
        load_marker_catalog(&pipeline.clickhouse.client(), most).await?;
        Some(tokio::spawn(poll_chart_markers(
            port,
            chart_pending.clone(),
            stop.clone(),
        )))
    } else {
        None
    };
    let started = Instant::now();
    let poller = tokio::spawn(poll_markers(
        started,
        port,
        pending.clone(),
        seen.clone(),
        stop.clone(),
    ));

    let users = Zipf::new(200_000.0, 1.1)?;
    let songs = Zipf::new(50_000.0, 1.1)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut produced: u64 = 0;
    let mut markers: u64 = 0;
    let mut next_marker = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = rate.div_ceil(100);
    let mut deliveries = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let tick_started = Instant::now();
        let now_ms = Utc::now().timestamp_millis();
        for _ in 0..per_tick {
            let user = format!("u{}", users.sample(&mut rng) as u64);
            let song = format!("s{}", songs.sample(&mut rng) as u64);
            let payload = play(&format!("e{produced}"), &user, &song, now_ms);
            produced += 1;
            let record = FutureRecord::to(&pipeline.topic)
                .key(&user)
                .payload(&payload);
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => anyhow::bail!("produce: {error}"),
            }
        }
        if Instant::now() >= next_marker {
            next_marker += MARKER_EVERY;
            let user = format!("marker-{markers}");
            let song = marker_song(markers);
            let payload = play(&format!("m{markers}"), &user, &song, now_ms);
            markers += 1;
            let record = FutureRecord::to(&pipeline.topic)
                .key(&user)
                .payload(&payload);
            if let Ok(delivery) = producer.send_result(record) {
                let produced = Instant::now();
                let acked = Arc::new(std::sync::OnceLock::new());
                if chart_markers {
                    chart_pending.lock().await.push((song.clone(), produced));
                }
                pending.lock().await.push(Marker {
                    user,
                    song,
                    produced,
                    acked: acked.clone(),
                });
                tokio::spawn(async move {
                    if let Ok(Ok(_)) = delivery.await {
                        let _ = acked.set(produced.elapsed());
                    }
                });
            }
        }
        if deliveries.len() > 50_000 {
            for delivery in deliveries.drain(..) {
                delivery.await?.map_err(|(error, _)| error)?;
            }
        }
        if let Some(rest) = tick.checked_sub(tick_started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    for delivery in deliveries.drain(..) {
        delivery.await?.map_err(|(error, _)| error)?;
    }
    producer.flush(Duration::from_secs(30))?;
    let produce_seconds = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let drained = tokio::time::timeout(Duration::from_secs(120), poller).await;
    let unseen = pending.lock().await.len();
    if drained.is_err() {
        println!("  {unseen} markers not visible 120 s after the load ended");
    }

    let observations = seen.lock().await;
    let mut staleness = observations.staleness.clone();
    staleness.sort();
    let mut lag = observations.data_through_lag.clone();
    lag.sort();
    println!(
        "  produced {produced} events + {markers} markers in {produce_seconds:.0} s: {:.0} events/s",
        produced as f64 / produce_seconds
    );
    println!(
        "  produce -> visible in the API ({} markers, {unseen} never seen): p50 {:?}  p95 {:?}  \
         p99 {:?}  max {:?}   target p95 <= {TARGET_P95:?}: {}",
        staleness.len(),
        percentile(&staleness, 50.0),
        percentile(&staleness, 95.0),
        percentile(&staleness, 99.0),
        staleness.last().copied().unwrap_or_default(),
        if percentile(&staleness, 95.0) <= TARGET_P95 && unseen == 0 {
            "met"
        } else {
            "MISSED"
        }
    );
    for (minute, staleness) in &observations.by_minute {
        let mut staleness = staleness.clone();
        staleness.sort();
        println!(
            "    produced in minute {}: p50 {:?}  p95 {:?}  max {:?}",
            minute + 1,
            percentile(&staleness, 50.0),
            percentile(&staleness, 95.0),
            staleness.last().copied().unwrap_or_default()
        );
    }
    if let Some(chart_poller) = chart_poller {
        let chart_staleness =
            match tokio::time::timeout(Duration::from_secs(60), chart_poller).await {
                Ok(Ok(visible)) => visible,
                _ => Vec::new(),
            };
        let chart_unseen = chart_pending.lock().await.len();
        let mut sorted = chart_staleness.clone();
        sorted.sort();
        println!(
            "  produce -> visible in the charts (genre {MARKER_GENRE}, 1h, polled every \
             {CHART_POLL_EVERY:?}; {} markers, {chart_unseen} never seen): {}   target p95 <= \
             {TARGET_P95:?}: {}",
            sorted.len(),
            p50_p95_p99_max(&sorted),
            if percentile(&sorted, 95.0) <= TARGET_P95 && chart_unseen == 0 && !sorted.is_empty() {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    println!(
        "  of which produce -> acknowledged by the broker: {}",
        p50_p95_p99_max(&observations.acked)
    );
    println!(
        "  and acknowledged -> visible: {}",
        p50_p95_p99_max(&observations.after_ack)
    );
    println!(
        "  data_through behind the clock when a marker showed: p50 {:?}  p95 {:?}  max {:?}",
        percentile(&lag, 50.0),
        percentile(&lag, 95.0),
        lag.last().copied().unwrap_or_default()
    );
    drop(observations);
    lag_sampler.abort();
    let mut lags = lag_samples.lock().await.clone();
    lags.sort_unstable();
    println!(
        "  consumer lag (events not yet consumed, all partitions; sampled each second): p50 {}  \
         p95 {}  max {}",
        percentile(&lags, 50.0),
        percentile(&lags, 95.0),
        lags.last().copied().unwrap_or_default()
    );
    pipeline.wait_until_drained(Duration::from_secs(300)).await;
    println!(
        "  aggregator drained the topic {:.0} s after the load ended",
        started.elapsed().as_secs_f64() - produce_seconds
    );
    let client = pipeline.clickhouse.client();
    let parts: Vec<(String, String, u64, u64)> = client
        .query(
            "SELECT table, partition, count(), sum(rows) FROM system.parts \
             WHERE database = currentDatabase() AND active \
             AND table IN ('plays_minute', 'flush_commits') \
             GROUP BY table, partition ORDER BY table, partition",
        )
        .fetch_all()
        .await?;
    for (table, partition, count, rows) in parts {
        println!("  active parts: {table} partition {partition}: {count} parts, {rows} rows");
    }
    assert!(aggregator.is_running(), "{}", aggregator.log_tail(20));
    print_slow_flushes(&aggregator.log());
    aggregator.terminate(Duration::from_secs(60));
    let _ = stop_api.send(());
    let _ = server.await;
    Ok(())
}

/// The aggregator's "slow flush" lines (attempts over 1 s, each with its steps' times): how
/// many, and the time of each step summed over them, so a tail can be put on a step.
fn print_slow_flushes(log: &str) {
    let mut count = 0;
    let mut slowest = (0u64, String::new());
    let mut per_step: std::collections::BTreeMap<String, u64> = Default::default();
    for line in log.lines().filter(|line| line.contains("slow flush")) {
        count += 1;
        let took: u64 = line
            .split_once("took_ms=")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|took| took.parse().ok())
            .unwrap_or(0);
        let steps = line.split_once("steps=").map_or("", |(_, rest)| rest);
        for step in steps.split(", ") {
            let mut words = step.split_whitespace();
            if let (Some(name), Some(ms)) = (words.next(), words.next()) {
                *per_step.entry(name.to_owned()).or_default() += ms.parse::<u64>().unwrap_or(0);
            }
        }
        if took > slowest.0 {
            slowest = (took, steps.to_owned());
        }
    }
    println!("  flush attempts over 1 s: {count}; their steps summed (ms): {per_step:?}");
    if count > 0 {
        println!("  slowest: {} ms ({})", slowest.0, slowest.1);
    }
}
