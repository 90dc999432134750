//! Operations: ClickHouse down or slow, readiness, load shedding, request ids, OpenAPI, a real
//! socket with graceful shutdown, and the binary with its metrics and SIGTERM.

use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use topk_core::schema::MinuteRow;
use topk_tests::process::ChildProcess;
use topk_tests::stack;

use super::*;

/// The API's config with ClickHouse expected on a local `port`.
fn config_for_port(port: u16) -> ApiConfig {
    config(ClickHouseOptions::new(
        format!("http://127.0.0.1:{port}"),
        "topk",
    ))
}

/// A local port nothing listens on.
async fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `count` top-songs requests hold a permit of the concurrency limit (`limit`).
async fn wait_until_in_flight(state: &AppState, limit: u32, count: usize) {
    let permits = state.in_flight();
    let deadline = Instant::now() + Duration::from_secs(10);
    while limit as usize - permits.available_permits() < count {
        assert!(Instant::now() < deadline, "requests did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A "ClickHouse" that accepts connections and never answers.
async fn silent_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test]
async fn clickhouse_unreachable_or_slow_is_a_fast_503() {
    let port = closed_port().await;
    let mut unreachable = config_for_port(port);
    unreachable.query_timeout_ms = 2000;
    let app = fixed_app(&unreachable);
    for uri in ["/v1/users/u/top-songs", "/readyz"] {
        let reply = get(&app, uri, None).await;
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
        );
        assert_eq!(reply.headers[header::RETRY_AFTER], "1");
        assert!(
            !reply.body.to_string().contains("127.0.0.1"),
            "no internals leak: {}",
            reply.body
        );
    }
    assert_eq!(get(&app, "/healthz", None).await.status, StatusCode::OK);

    let (silent_port, silent) = silent_server().await;
    let mut slow = config_for_port(silent_port);
    slow.query_timeout_ms = 300;
    let app = fixed_app(&slow);
    for uri in ["/v1/users/u/top-songs", "/readyz"] {
        let started = Instant::now();
        let reply = get(&app, uri, None).await;
        let took = started.elapsed();
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
        );
        assert_eq!(reply.headers[header::RETRY_AFTER], "1");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }
    silent.abort();
}

#[tokio::test]
async fn readyz_checks_the_schema_version() {
    let options = stack::fresh_database("api_readyz").await;
    let app = fixed_app(&config(options.clone()));
    let ready = get(&app, "/readyz", None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(
        ready.body["schema_version"],
        topk_core::migrate::latest_version()
    );

    let bare = ClickHouseOptions::new(
        options.clickhouse_url.clone(),
        format!("{}_bare", options.clickhouse_database),
    );
    let quoted = topk_core::migrate::quote_identifier(&bare.clickhouse_database);
    let server = bare.server_client();
    server
        .query(&format!("DROP DATABASE IF EXISTS {quoted}"))
        .execute()
        .await
        .unwrap();
    server
        .query(&format!("CREATE DATABASE {quoted}"))
        .execute()
        .await
        .unwrap();
    let not_migrated = get(&fixed_app(&config(bare)), "/readyz", None).await;
    assert_error(
        &not_migrated,
        StatusCode::SERVICE_UNAVAILABLE,
        "schema_not_ready",
    );
    assert_eq!(not_migrated.headers[header::RETRY_AFTER], "1");
    server
        .query(&format!("DROP DATABASE {quoted}"))
        .execute()
        .await
        .unwrap();
}

#[tokio::test]
async fn excess_requests_are_shed_at_once() {
    let (silent_port, silent) = silent_server().await;
    let mut limited = config_for_port(silent_port);
    limited.max_concurrent_requests = 2;
    limited.query_timeout_ms = 1500;
    let state = AppState::from_config(&limited).unwrap();
    let app = topk_api::app(state.clone());
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get(&app, "/v1/users/u/top-songs", None).await })
        })
        .collect();
    wait_until_in_flight(&state, limited.max_concurrent_requests, 2).await;
    let started = Instant::now();
    let shed = get(&app, "/v1/users/v/top-songs", None).await;
    // Answered at once, not after the 1.5 s the requests in flight wait.
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_error(&shed, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(shed.headers[header::RETRY_AFTER], "1");
    // The limit covers both top-songs routes; health and metrics stay outside it.
    assert_error(
        &get(&app, "/v1/me/top-songs", None).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    );
    assert_eq!(get(&app, "/healthz", None).await.status, StatusCode::OK);
    for task in in_flight {
        let reply = task.await.unwrap();
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
        );
    }
    // Permits are back: the next request is let through (and times out on the silent server).
    let after = get(&app, "/v1/users/v/top-songs", None).await;
    assert_error(
        &after,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    );
    silent.abort();
}

#[tokio::test]
async fn request_ids_and_openapi() {
    let options = stack::fresh_database("api_request_ids").await;
    let app = fixed_app(&config(options));
    let fresh = get(&app, "/healthz", None).await;
    let generated = fresh.headers["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let echoed = app
        .clone()
        .oneshot(
            Request::get("/v1/users/u/top-songs?limit=0")
                .header("x-request-id", "req-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-42");

    let document = get(&app, "/openapi.json", None).await;
    assert_eq!(document.status, StatusCode::OK);
    assert!(document.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document.body["paths"].as_object().unwrap();
    for path in [
        "/v1/users/{user_id}/top-songs",
        "/v1/me/top-songs",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            paths[path]["get"].is_object(),
            "{path} missing from {paths:?}"
        );
        // Every documented path is served (no 404).
        let concrete = path.replace("{user_id}", "u");
        assert_ne!(
            get(&app, &concrete, None).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

/// One HTTP/1.1 request over a real socket; returns the status and the body.
async fn http_get(port: u16, path: &str) -> (u16, String) {
    topk_tests::process::http_get(port, path)
        .await
        .unwrap_or_else(|| panic!("no answer on port {port} for {path}"))
}

/// A real socket, the real clock, and graceful shutdown: a request in flight when shutdown
/// starts still gets its answer, and the server then stops.
#[tokio::test]
async fn serves_a_socket_with_the_system_clock_and_drains_on_shutdown() {
    let options = stack::fresh_database("api_socket").await;
    let current_minute = Utc::now();
    let row = MinuteRow {
        user_id: "live".to_owned(),
        song_id: "now-song".to_owned(),
        minute: current_minute
            - chrono::Duration::seconds(i64::from(current_minute.timestamp() as u32 % 60)),
        plays: 4,
        topic: "plays".to_owned(),
        kafka_partition: 0,
        flush_offset: 1,
        claim_id: 0,
        flush_seq: 0,
    };
    topk_tests::committed::write_committed(&options, &[row]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = AppState::from_config(&config(options)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(topk_api::serve(listener, state, async {
        let _ = stopped.await;
    }));

    let (status, body) = http_get(port, "/v1/users/live/top-songs").await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(song_list(&reply), [("now-song".to_owned(), 4)]);
    let to: DateTime<Utc> = reply["window"]["to"].as_str().unwrap().parse().unwrap();
    assert!(
        (Utc::now() - to).num_seconds().abs() < 30,
        "window ends now: {to}"
    );
    let from: DateTime<Utc> = reply["window"]["from"].as_str().unwrap().parse().unwrap();
    assert_eq!(from, day_start(to.date_naive() - Days::new(6)));

    // A slow request in flight during shutdown: point a second server at a silent ClickHouse.
    let (silent_port, silent) = silent_server().await;
    let mut slow = config_for_port(silent_port);
    slow.query_timeout_ms = 800;
    let slow_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_port = slow_listener.local_addr().unwrap().port();
    let (slow_stop, slow_stopped) = tokio::sync::oneshot::channel::<()>();
    let slow_state = AppState::from_config(&slow).unwrap();
    let slow_server = tokio::spawn(topk_api::serve(slow_listener, slow_state.clone(), async {
        let _ = slow_stopped.await;
    }));
    let in_flight = tokio::spawn(http_get(slow_port, "/v1/users/u/top-songs"));
    wait_until_in_flight(&slow_state, slow.max_concurrent_requests, 1).await;
    slow_stop.send(()).unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 503, "the request in flight is answered: {body}");
    tokio::time::timeout(Duration::from_secs(5), slow_server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(("127.0.0.1", slow_port)).await.is_err(),
        "stopped listening"
    );
    silent.abort();

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The binary: flags, `/metrics` in a process of its own (one Prometheus recorder per
/// process), and SIGTERM ends it cleanly.
#[tokio::test]
async fn binary_serves_metrics_and_stops_on_sigterm() {
    let options = stack::fresh_database("api_binary").await;
    let port = closed_port().await;
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--clickhouse-url",
        &options.clickhouse_url,
        "--clickhouse-database",
        &options.clickhouse_database,
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let mut child = ChildProcess::start("topk-api", "api-binary", &args, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "topk-api did not listen; see {}",
            child.log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(port, "/readyz").await.0, 200);
    assert_eq!(http_get(port, "/v1/users/someone/top-songs").await.0, 200);
    assert_eq!(
        http_get(port, "/v1/users/someone/top-songs?limit=x")
            .await
            .0,
        400
    );
    let (status, metrics) = http_get(port, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        r#"http_requests_total{route="/v1/users/{user_id}/top-songs",status="200"} 1"#,
        r#"http_requests_total{route="/v1/users/{user_id}/top-songs",status="400"} 1"#,
        r#"http_requests_total{route="/readyz",status="200"} 1"#,
        "http_request_duration_seconds_bucket{",
        r#"clickhouse_query_duration_seconds_bucket{query="top_songs",outcome="ok""#,
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    assert_eq!(
        child.terminate(Duration::from_secs(10)),
        Some(0),
        "see {}",
        child.log_path.display()
    );
}
