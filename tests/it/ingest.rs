//! `topk-ingest` against the real broker: what a batch puts on the topic, what the client is
//! told, the aggregator counting it to the top-10 API, a broker outage, auth and limits.

use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::Router;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use topk_core::event::PlayEvent;
use topk_loadgen::generate::{
    expected_minute_counts, generate, GeneratedMessage, GeneratorSpec, Truth,
};
use topk_tests::ingest::{self, post, read_topic, Answer, PrivateBroker};
use topk_tests::pipeline::Pipeline;
use topk_tests::stack;

const NDJSON: &str = "application/x-ndjson";
const JSON: &str = "application/json";

fn spec(events: u64, seed: u64) -> GeneratorSpec {
    let mut spec = GeneratorSpec::new(events, Utc::now());
    spec.seed = seed;
    spec.users = 40;
    spec.songs = 300;
    spec
}

fn ndjson(messages: &[GeneratedMessage]) -> Vec<u8> {
    let mut body = Vec::new();
    for message in messages {
        body.extend_from_slice(&message.payload);
        body.push(b'\n');
    }
    body
}

/// The events a payload holds, as the ingest writes them to the topic.
fn play_event(payload: &[u8]) -> PlayEvent {
    serde_json::from_slice(payload).expect("a play event")
}

/// Checks every result of an answer against the generator's truth; returns the accepted
/// events.
fn check_results(answer: &Answer, messages: &[GeneratedMessage]) -> Vec<PlayEvent> {
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let results = answer.body["results"].as_array().expect("results");
    assert_eq!(results.len(), messages.len());
    let mut accepted = Vec::new();
    for (index, (message, result)) in messages.iter().zip(results).enumerate() {
        assert_eq!(result["index"], index, "{result}");
        match &message.truth {
            Truth::Malformed(reason) => {
                assert_eq!(result["status"], "rejected", "{result}");
                assert_eq!(result["reason"], reason.as_str(), "{result}");
                assert!(result["detail"].as_str().is_some_and(|d| !d.is_empty()));
            }
            Truth::Valid(_) | Truth::Duplicate { .. } => {
                let event = play_event(&message.payload);
                assert_eq!(result["status"], "accepted", "{result}");
                assert_eq!(result["event_id"], event.event_id.as_str(), "{result}");
                accepted.push(event);
            }
        }
    }
    assert_eq!(answer.body["accepted"], accepted.len());
    assert_eq!(answer.body["rejected"], messages.len() - accepted.len());
    accepted
}

/// The topic's records as events, checked to be keyed by their user; records each offset
/// with the pipeline (what "drained" waits for).
fn events_on_topic(pipeline: &Pipeline, brokers: &str, at_least: usize) -> Vec<PlayEvent> {
    let records = read_topic(
        brokers,
        &pipeline.topic,
        pipeline.partitions,
        at_least,
        Duration::from_secs(60),
    );
    records
        .iter()
        .map(|record| {
            pipeline.record_produced(record.partition, record.offset);
            let event = play_event(&record.payload);
            assert_eq!(record.key, event.user_id.as_bytes(), "keyed by user_id");
            event
        })
        .collect()
}

fn sorted(mut events: Vec<PlayEvent>) -> Vec<PlayEvent> {
    events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_lands_once_rejects_say_why_and_the_aggregator_counts_it_to_the_api() {
    let pipeline = Pipeline::new("ingest_end_to_end", 2).await;
    let brokers = stack::kafka_brokers();
    let app = ingest::app(&brokers, &pipeline.topic, |_| {});
    let mut spec = spec(2_000, 15);
    spec.duplicate_share = 0.02;
    spec.malformed_share = 0.05;
    let messages = generate(&spec);

    let mut posted = Vec::new();
    for batch in messages.chunks(100) {
        let answer = post(&app, ndjson(batch), NDJSON, None).await;
        posted.extend(check_results(&answer, batch));
    }
    let rejected = messages.len() - posted.len();
    assert!(
        rejected > 50,
        "the generator made {rejected} invalid events"
    );

    // Every accepted event is on the topic once per post (the generator's retries were
    // posted twice, so they are there twice), nothing else.
    let on_topic = events_on_topic(&pipeline, &brokers, posted.len());
    assert_eq!(sorted(on_topic), sorted(posted));

    let aggregator = pipeline.start_aggregator("ingest", &[]);
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    let expected = expected_minute_counts(&messages);
    pipeline.assert_counts_equal(&expected, &aggregator).await;
    topk_tests::api::assert_api_equals_brute_force(&pipeline.clickhouse, &expected).await;
}

/// The broker made unreachable by a proxy (see `PrivateBroker` for why not a restart).
/// Relies on librdkafka's idempotent producer, or the ingest's producer reset, producing to
/// tansu again once it is reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_a_503_within_the_deadline_and_retries_count_once() {
    const DEADLINE_MS: u64 = 2_000;
    // The ingest's warnings (why Kafka failed) show with a failure.
    topk_core::telemetry::init();
    let broker = PrivateBroker::start("ingest_broker_down").await;
    let pipeline = Pipeline::new("ingest_broker_down", 2).await;
    stack::create_topic(&broker.address(), &pipeline.topic, pipeline.partitions).await;
    stack::create_topic(&broker.address(), &pipeline.dead_letter_topic, 1).await;
    let app = ingest::app(&broker.address(), &pipeline.topic, |config| {
        config.kafka_deadline_ms = DEADLINE_MS;
    });
    let mut spec = spec(600, 16);
    spec.duplicate_share = 0.0;
    spec.malformed_share = 0.0;
    let messages = generate(&spec);
    let (before, during) = messages.split_at(300);

    let mut acknowledged = Vec::new();
    for batch in before.chunks(100) {
        let answer = post(&app, ndjson(batch), NDJSON, None).await;
        acknowledged.extend(check_results(&answer, batch));
    }

    broker.cut();
    for batch in during.chunks(100) {
        let started = Instant::now();
        let answer = post(&app, ndjson(batch), NDJSON, None).await;
        let took = started.elapsed();
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.body
        );
        assert_eq!(answer.body["error"]["code"], "kafka_unavailable");
        assert_eq!(answer.retry_after(), Some(1));
        assert!(
            took < Duration::from_millis(DEADLINE_MS + 1_000),
            "answered after {took:?}"
        );
    }

    broker.restore();
    // The client retries what was refused, and once more a batch that was acknowledged (its
    // answer lost, say): same event ids, so counted once.
    let retried = during.chunks(100).chain(before.chunks(100).take(1));
    let retrying_since = Instant::now();
    for batch in retried {
        loop {
            let answer = post(&app, ndjson(batch), NDJSON, None).await;
            if answer.status == StatusCode::ACCEPTED {
                acknowledged.extend(check_results(&answer, batch));
                break;
            }
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                answer.body
            );
            assert!(
                retrying_since.elapsed() < Duration::from_secs(90),
                "the broker is back but requests still fail"
            );
            let wait = answer.retry_after().expect("Retry-After");
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    }

    // Nothing acknowledged is lost: every acknowledged event is on the topic (the 503
    // requests may have left some there too: they are retried, so counted once).
    let on_topic = events_on_topic(&pipeline, &broker.address(), acknowledged.len());
    let on_topic_ids: std::collections::HashSet<&str> = on_topic
        .iter()
        .map(|event| event.event_id.as_str())
        .collect();
    for event in &acknowledged {
        assert!(
            on_topic_ids.contains(event.event_id.as_str()),
            "{event:?} lost"
        );
    }
    assert!(on_topic.len() >= acknowledged.len());

    let aggregator = pipeline.start_aggregator(
        "ingest-broker-down",
        &["--kafka-brokers", &broker.address()],
    );
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    let expected = expected_minute_counts(&messages);
    pipeline.assert_counts_equal(&expected, &aggregator).await;
    topk_tests::api::assert_api_equals_brute_force(&pipeline.clickhouse, &expected).await;
}

const SECRET: &str = "integration-test-secret-32-bytes";
const AUDIENCE: &str = "topk-ingest";

fn token(subject: &str, scope: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"sub": subject, "aud": AUDIENCE, "exp": now + 600, "scope": scope});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn event(user_id: &str, n: usize) -> Value {
    json!({
        "event_id": format!("{user_id}-{n}"),
        "user_id": user_id,
        "song_id": format!("song-{}", n % 3),
        "ts": Utc::now().timestamp_millis() - 1_000,
    })
}

fn events(user_id: &str, range: std::ops::Range<usize>) -> String {
    Value::Array(range.map(|n| event(user_id, n)).collect()).to_string()
}

async fn expect(app: &Router, body: String, token: Option<&str>, status: StatusCode) -> Answer {
    let answer = post(app, body, JSON, token).await;
    assert_eq!(answer.status, status, "{}", answer.body);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_plays_for_users_anyones_with_the_scope_rate_limits_and_size_caps() {
    let brokers = stack::kafka_brokers();
    let topic = stack::fresh_topic("ingest_auth", 1).await;
    let app = ingest::app(&brokers, &topic, |config| {
        config.auth_mode = topk_api::config::AuthMode::Hs256;
        config.jwt_hs256_secret = SECRET.to_owned();
        config.jwt_audience = AUDIENCE.to_owned();
        config.max_events_per_request = 10;
        config.max_body_bytes = 4_096;
        config.user_events_per_second = 1;
        config.user_burst_events = 10;
    });
    let alice = token("alice", "openid");
    let gateway = token("gateway", "openid topk:ingest");
    let mut accepted = 0;

    // No token, or a token for another audience: 401 with the Bearer challenge.
    let answer = expect(&app, events("alice", 0..1), None, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        answer.headers[header::WWW_AUTHENTICATE],
        "Bearer realm=\"topk\""
    );

    // A user token posts its own plays...
    expect(
        &app,
        events("alice", 0..1),
        Some(&alice),
        StatusCode::ACCEPTED,
    )
    .await;
    accepted += 1;
    // ...and not a batch holding anyone else's: the whole request is refused.
    let mixed = Value::Array(vec![event("alice", 1), event("bob", 1)]).to_string();
    let answer = expect(&app, mixed, Some(&alice), StatusCode::FORBIDDEN).await;
    assert_eq!(answer.body["error"]["code"], "forbidden");
    assert!(answer.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains("scope=\"topk:ingest\""));

    // Its bucket holds 10 events at 1/s: 9 more pass, the 11th is a 429 with Retry-After.
    expect(
        &app,
        events("alice", 1..10),
        Some(&alice),
        StatusCode::ACCEPTED,
    )
    .await;
    accepted += 9;
    let answer = expect(
        &app,
        events("alice", 10..12),
        Some(&alice),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(answer.body["error"]["code"], "rate_limited");
    let wait = answer.retry_after().expect("Retry-After");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    expect(
        &app,
        events("alice", 10..11),
        Some(&alice),
        StatusCode::ACCEPTED,
    )
    .await;
    accepted += 1;

    // A service token posts anyone's plays; its quota is off by default. Rejected events are
    // listed with their reasons beside the accepted one.
    let mut too_old = event("bob", 2);
    too_old["ts"] = json!(Utc::now().timestamp_millis() - 8 * 86_400_000);
    let mut no_song = event("carol", 3);
    no_song.as_object_mut().unwrap().remove("song_id");
    let batch = Value::Array(vec![event("bob", 1), too_old.clone(), no_song.clone()]).to_string();
    let answer = expect(&app, batch, Some(&gateway), StatusCode::ACCEPTED).await;
    accepted += 1;
    let reasons: Vec<&Value> = answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| &result["reason"])
        .collect();
    assert_eq!(
        reasons,
        [&Value::Null, &json!("ts_too_old"), &json!("missing_field")]
    );
    // Nothing valid: 422, each event with its reason.
    let answer = expect(
        &app,
        Value::Array(vec![too_old, no_song]).to_string(),
        Some(&gateway),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(answer.body["accepted"], 0);
    assert_eq!(answer.body["rejected"], 2);

    // Over the body cap, or more events than a request may hold: 413, nothing accepted.
    let padded = json!([{"event_id": "x", "user_id": "bob", "song_id": "y", "ts": 0, "pad": "p".repeat(5_000)}]);
    let answer = expect(
        &app,
        padded.to_string(),
        Some(&gateway),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(answer.body["error"]["code"], "body_too_large");
    let answer = expect(
        &app,
        events("bob", 100..111),
        Some(&gateway),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(answer.body["error"]["code"], "too_many_events");
    // Neither JSON nor NDJSON: 415.
    let answer = post(
        &app,
        "event_id=1",
        "application/x-www-form-urlencoded",
        Some(&gateway),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // On the topic: exactly the accepted events.
    let records = read_topic(&brokers, &topic, 1, accepted, Duration::from_secs(30));
    let mut ids: Vec<String> = records
        .iter()
        .map(|record| play_event(&record.payload).event_id)
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..11).map(|n| format!("alice-{n}")).collect();
    expected.push("bob-1".to_owned());
    expected.sort();
    assert_eq!(ids, expected);
}

/// `POST /v1/plays` over a real socket (`Connection: close`): the status and the body.
async fn post_over_socket(port: u16, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let request = format!(
        "POST /v1/plays HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("receive");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_counts_in_metrics_and_stops_cleanly_on_sigterm() {
    use topk_tests::process::{free_port, http_get, ChildProcess};
    let brokers = stack::kafka_brokers();
    let topic = stack::fresh_topic("ingest_binary", 1).await;
    let port = free_port();
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--kafka-brokers",
        &brokers,
        "--plays-topic",
        &topic,
    ]
    .map(str::to_owned)
    .to_vec();
    let mut child = ChildProcess::start("topk-ingest", &format!("{topic}-ingest"), &args, &[]);
    child
        .wait_until_listening(port, Duration::from_secs(10))
        .await;
    assert_eq!(
        http_get(port, "/readyz").await.map(|(status, _)| status),
        Some(200)
    );

    let now = Utc::now().timestamp_millis();
    let body = format!(
        "{}\n{}\n{{\"event_id\":\"e3\",\"user_id\":\"u\",\"song_id\":\"s\",\"ts\":1}}\n",
        json!({"event_id": "e1", "user_id": "u", "song_id": "s", "ts": now}),
        json!({"event_id": "e2", "user_id": "u", "song_id": "s", "ts": now}),
    );
    let (status, answer) = post_over_socket(port, &body).await;
    assert_eq!(status, 202, "{answer}");
    let (status, metrics) = http_get(port, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for expected in [
        "topk_ingest_events_accepted_total 2",
        r#"topk_ingest_events_rejected_total{reason="ts_too_old"} 1"#,
        "topk_ingest_kafka_ack_seconds_bucket{",
        r#"http_requests_total{route="/v1/plays",status="202"} 1"#,
    ] {
        assert!(metrics.contains(expected), "{expected} not in\n{metrics}");
    }
    let (status, document) = http_get(port, "/openapi.json").await.expect("openapi");
    assert_eq!(status, 200);
    assert!(document.contains("\"/v1/plays\""));

    assert_eq!(
        child.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        child.log_tail(20)
    );
    assert!(
        child.log_tail(20).contains("producer flushed"),
        "{}",
        child.log_tail(20)
    );
    let records = read_topic(&brokers, &topic, 1, 2, Duration::from_secs(30));
    assert_eq!(records.len(), 2);
}
