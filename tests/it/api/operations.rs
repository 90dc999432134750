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
        // Every documented path is served (no 404), except `/v1/me` without auth, which the
        // document of such a server lists as 404 only.
        let concrete = path.replace("{user_id}", "u");
        let served = get(&app, &concrete, None).await;
        if path == "/v1/me/top-songs" {
            assert_error(&served, StatusCode::NOT_FOUND, "auth_disabled");
            assert!(paths[path]["get"]["responses"]["404"].is_object());
        } else {
            assert_ne!(served.status, StatusCode::NOT_FOUND, "{path}");
        }
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
        region: String::new(),
        chart_plays: 0,
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

    stop_server(stop, server).await;
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
    child
        .wait_until_listening(port, Duration::from_secs(10))
        .await;
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

/// One committed play of `song` for `user` in the fixed clock's current minute.
fn play_now(user: &str, song: &str, plays: u64) -> MinuteRow {
    let current = now();
    MinuteRow {
        user_id: user.to_owned(),
        song_id: song.to_owned(),
        minute: current - chrono::Duration::seconds(current.timestamp() % 60),
        plays,
        topic: "plays".to_owned(),
        kafka_partition: 0,
        flush_offset: 1,
        claim_id: 0,
        flush_seq: 0,
        region: String::new(),
        chart_plays: 0,
    }
}

/// `GET uri` with `If-None-Match: if_none_match`: status, headers and body bytes.
async fn get_if_none_match(
    app: &Router,
    uri: &str,
    if_none_match: &str,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let request = Request::get(uri)
        .header(header::IF_NONE_MATCH, if_none_match)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, bytes.to_vec())
}

/// Answers are private, revalidated with a weak ETag over their content: a matching
/// `If-None-Match` gets a 304 without a body; new plays change the tag.
#[tokio::test]
async fn a_matching_if_none_match_gets_a_304_and_new_plays_a_new_etag() {
    let options = stack::fresh_database("api_etag").await;
    topk_tests::committed::write_committed(&options, &[play_now("etag-user", "s1", 3)]).await;
    // No reuse of the read plan (which flushes are committed): the new play below is seen at
    // once.
    let mut fresh = config(options.clone());
    fresh.rolled_days_cache_ms = 0;
    let app = fixed_app(&fresh);
    let uri = "/v1/users/etag-user/top-songs";
    let first = get(&app, uri, None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let etag = first.headers[header::ETAG].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/\"") && etag.len() == 36, "{etag}");
    assert_eq!(first.headers[header::CACHE_CONTROL], "private, no-cache");
    assert_eq!(first.headers[header::VARY], "Authorization");
    // Asked again (generated_at differs): the same tag.
    assert_eq!(
        get(&app, uri, None).await.headers[header::ETAG],
        etag.as_str()
    );

    for if_none_match in [etag.clone(), format!("\"other\", {etag}"), "*".to_owned()] {
        let (status, headers, body) = get_if_none_match(&app, uri, &if_none_match).await;
        assert_eq!(
            status,
            StatusCode::NOT_MODIFIED,
            "If-None-Match: {if_none_match}"
        );
        assert!(body.is_empty());
        assert_eq!(headers[header::ETAG], etag.as_str());
        assert_eq!(headers[header::VARY], "Authorization");
    }
    let (status, _, body) = get_if_none_match(&app, uri, "W/\"0000\"").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.is_empty());

    // A new play: the answer changes, and so does its tag.
    topk_tests::committed::write_committed(&options, &[play_now("etag-user", "s2", 5)]).await;
    let (status, headers, _) = get_if_none_match(&app, uri, &etag).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(headers[header::ETAG], etag.as_str());
}

/// A query ClickHouse refuses (here a table renamed by hand) is a bug, not an outage: 500,
/// no `Retry-After`, nothing of ClickHouse's message in the body. (ClickHouse down is the
/// 503 of `clickhouse_unreachable_or_slow_is_a_fast_503`.)
#[tokio::test]
async fn a_query_clickhouse_refuses_is_a_500_not_a_503() {
    let options = stack::fresh_database("api_broken_query").await;
    topk_tests::committed::write_committed(&options, &[play_now("u", "s1", 1)]).await;
    options
        .client()
        .query("RENAME TABLE daily_top TO daily_top_renamed")
        .execute()
        .await
        .unwrap();
    let app = fixed_app(&config(options));
    let reply = get(&app, "/v1/users/u/top-songs", None).await;
    assert_error(&reply, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert!(!reply.headers.contains_key(header::RETRY_AFTER));
    assert!(
        !reply.body.to_string().contains("daily_top"),
        "no internals leak: {}",
        reply.body
    );
}

/// Serves an API with `config`'s edge limits on a socket; returns its port and the means to
/// stop it.
async fn serve_edge(
    config: &ApiConfig,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = AppState::from_config(config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(topk_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    (port, stop, server)
}

/// Reads until the peer closes the connection (Ok(bytes read)) or `within` passes (Err).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>, ()> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(count) => received.extend_from_slice(&buffer[..count]),
            }
        }
    };
    tokio::time::timeout(within, read).await.map_err(|_| ())?;
    Ok(received)
}

/// A client that sends half a request's headers and then nothing is disconnected at the
/// header-read timeout; so is a kept-alive connection left idle after an answer.
#[tokio::test]
async fn a_slow_header_client_and_an_idle_connection_are_dropped_at_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let mut config = config_for_port(closed_port().await);
    config.header_read_timeout_ms = 600;
    let (port, stop, server) = serve_edge(&config).await;

    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: topk\r\nX-Slow: ")
        .await
        .unwrap();
    let closed = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(
        closed.is_ok(),
        "the slow client was not disconnected in 5 s"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "disconnected after {took:?} (timeout 600 ms)"
    );

    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: topk\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut idle, Duration::from_secs(5))
        .await
        .expect("the idle kept-alive connection was not closed in 5 s");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(started.elapsed() >= Duration::from_millis(500));

    stop_server(stop, server).await;
}

/// With `max_connections` open, a further client is not served until one of them closes.
#[tokio::test]
async fn the_connection_cap_holds() {
    use tokio::io::AsyncWriteExt;
    let mut config = config_for_port(closed_port().await);
    config.max_connections = 2;
    config.header_read_timeout_ms = 30_000;
    let (port, stop, server) = serve_edge(&config).await;

    let first = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let second = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: topk\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut third, Duration::from_millis(1500))
            .await
            .is_err(),
        "a third connection was served beside two open ones (cap 2)"
    );
    drop(first);
    let answer = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("the waiting client was not served once a connection closed");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(second);
    stop_server(stop, server).await;
}

/// Stops a server started with a oneshot shutdown and waits (at most 5 s) until it returned Ok.
async fn stop_server(
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped within 5 s")
        .expect("the server task did not panic")
        .expect("the server returned Ok");
}
