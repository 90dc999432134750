//! The API in-process against a test's database: one user's answer, and every user's answer
//! checked against the brute force.

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use chrono::Utc;
use serde_json::Value;
use topk_core::db::ClickHouseOptions;
use topk_loadgen::generate::MinuteCounts;
use tower::ServiceExt;

/// The query timeout of the tests that check answers (the default, 2 s, is for serving; a
/// loaded CI machine running the whole suite has taken longer for a heavy listener's two
/// queries). The timeout itself is tested in `tests/it/api/operations.rs`.
pub const QUERY_TIMEOUT_MS: u64 = 30_000;

/// The API's router on `clickhouse`'s database, with the default configuration (no auth)
/// but a [`QUERY_TIMEOUT_MS`] query timeout.
pub fn app(clickhouse: &ClickHouseOptions) -> Router {
    let mut config = topk_api::config::ApiConfig::with_clickhouse(clickhouse.clone());
    config.query_timeout_ms = QUERY_TIMEOUT_MS;
    topk_api::app(topk_api::AppState::from_config(&config).expect("api state"))
}

/// The JSON body of `GET /v1/users/{user}/top-songs` (the user id percent-encoded); panics
/// unless the answer is a success.
pub async fn top_songs_body(app: &Router, user: &str) -> Value {
    let path: String = user.bytes().map(|byte| format!("%{byte:02X}")).collect();
    let request = Request::get(format!("/v1/users/{path}/top-songs"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(
        status.is_success(),
        "user {user}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// The JSON body of `GET /v1/charts/top-songs?<query>`; panics unless the answer is a success.
pub async fn chart_body(app: &Router, query: &str) -> Value {
    let request = Request::get(format!("/v1/charts/top-songs?{query}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    assert!(
        status.is_success(),
        "chart {query}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap()
}

/// A chart answer's songs as (rank, song, plays, listeners, prev_rank), in rank order.
pub fn chart_songs(body: &Value) -> Vec<(u64, String, u64, u64, Option<u64>)> {
    body["songs"]
        .as_array()
        .unwrap_or_else(|| panic!("no songs in {body}"))
        .iter()
        .map(|song| {
            (
                song["rank"].as_u64().unwrap(),
                song["song_id"].as_str().unwrap().to_owned(),
                song["plays"].as_u64().unwrap(),
                song["listeners"].as_u64().unwrap(),
                song["prev_rank"].as_u64(),
            )
        })
        .collect()
}

/// The (song, plays) list of an answer, in rank order.
pub fn song_list(body: &Value) -> Vec<(String, u64)> {
    body["songs"]
        .as_array()
        .unwrap_or_else(|| panic!("no songs in {body}"))
        .iter()
        .map(|song| {
            (
                song["song_id"].as_str().unwrap().to_owned(),
                song["plays"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The API's answer for every user of `expected` equals a brute-force top 10 over the
/// window ending now, and says `exact`.
pub async fn assert_api_equals_brute_force(
    clickhouse: &ClickHouseOptions,
    expected: &MinuteCounts,
) {
    let app = app(clickhouse);
    let window = topk_core::window::Window::last_week(Utc::now());
    let users: std::collections::BTreeSet<&str> =
        expected.keys().map(|(user, _, _)| user.as_str()).collect();
    for user in users {
        let truth = topk_loadgen::oracle::top_songs(
            expected,
            user,
            window.from.timestamp_millis(),
            window.to.timestamp_millis(),
            10,
        );
        let body = top_songs_body(&app, user).await;
        assert_eq!(song_list(&body), truth, "user {user}");
        assert_eq!(body["exact"], true, "user {user}");
    }
}
