//! The HTTP API against the real ClickHouse. Minute rows are written as committed flushes
//! (`topk_tests::committed`), some days are rolled up by the real rollup job, and every answer
//! is compared with a brute-force top list over the minute rows.
//!
//! - [`results`]: the window, the ranking, `exact`, bad input;
//! - [`auth`]: HS256 and RS256 tokens, who may read whom;
//! - [`conformance`]: the OpenAPI document against the live server (schemathesis).
//! - [`operations`]: ClickHouse down or slow, readiness, shedding, request ids, OpenAPI, a real
//!   socket, graceful shutdown, the binary and its metrics.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Days, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;
use topk_api::config::{ApiConfig, AuthMode};
use topk_api::{AppState, Clock};
use topk_core::db::ClickHouseOptions;
use topk_core::schema::MinuteRow;
use topk_core::window::day_start;
use tower::ServiceExt;

/// "Now" of the fixed-clock tests: the window is 2026-11-18 .. 2026-11-24T10:15:30Z.
pub(crate) fn now() -> DateTime<Utc> {
    "2026-11-24T10:15:30Z".parse().unwrap()
}

fn day(offset_from_today: u64) -> NaiveDate {
    now()
        .date_naive()
        .checked_sub_days(Days::new(offset_from_today))
        .unwrap()
}

/// Auth off, and a query timeout long enough for a loaded CI machine: these tests check
/// answers; the timeout's own behaviour is tested in `operations`.
pub(crate) fn config(clickhouse: ClickHouseOptions) -> ApiConfig {
    let mut config = ApiConfig::with_clickhouse(clickhouse);
    config.auth_mode = AuthMode::Off;
    config.query_timeout_ms = topk_tests::api::QUERY_TIMEOUT_MS;
    config
}

pub(crate) fn fixed_app(config: &ApiConfig) -> Router {
    topk_api::app(
        AppState::from_config(config)
            .unwrap()
            .with_clock(Clock::Fixed(now())),
    )
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

pub(crate) async fn get(app: &Router, uri: &str, token: Option<&str>) -> Reply {
    request(app, "GET", uri, token).await
}

async fn request(app: &Router, method: &str, uri: &str, token: Option<&str>) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(builder.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        headers,
        body,
    }
}

/// A 4xx/5xx with the JSON error shape and the given code.
#[track_caller]
pub(crate) fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], code, "{}", reply.body);
    assert!(reply.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

fn song_list(body: &Value) -> Vec<(String, u64)> {
    body["songs"]
        .as_array()
        .unwrap_or_else(|| panic!("no songs in {body}"))
        .iter()
        .enumerate()
        .map(|(index, song)| {
            assert_eq!(song["rank"], index + 1);
            (
                song["song_id"].as_str().unwrap().to_owned(),
                song["plays"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Plays per (user, day, song): what really happened.
type Counts = BTreeMap<(String, NaiveDate), BTreeMap<String, u64>>;

fn top_list(totals: &BTreeMap<String, u64>, limit: usize) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = totals
        .iter()
        .map(|(id, plays)| (id.clone(), *plays))
        .collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(limit);
    list
}

/// The oracle: a user's top list over the raw minute rows inside the window.
fn brute_force(rows: &[MinuteRow], user_id: &str, limit: usize) -> Vec<(String, u64)> {
    let from = day_start(day(6));
    let mut totals = BTreeMap::new();
    for row in rows.iter().filter(|row| row.user_id == user_id) {
        if row.minute >= from && row.minute.timestamp() <= now().timestamp() {
            *totals.entry(row.song_id.clone()).or_default() += row.plays;
        }
    }
    top_list(&totals, limit)
}

/// Minute rows holding `counts`, each count split over one to three rows (some in the same
/// minute, as two aggregator flushes write them); today's rows lie before "now".
fn minute_rows(rng: &mut StdRng, counts: &Counts) -> Vec<MinuteRow> {
    let mut rows = Vec::new();
    for ((user_id, day), songs) in counts {
        let minutes_in_day = if *day == now().date_naive() {
            615
        } else {
            1440
        };
        for (song_id, plays) in songs {
            let mut left = *plays;
            let mut minute = rng.random_range(0..minutes_in_day);
            while left > 0 {
                let row_plays = rng.random_range(1..=left.min(3));
                left -= row_plays;
                rows.push(MinuteRow {
                    user_id: user_id.clone(),
                    song_id: song_id.clone(),
                    minute: day_start(*day) + chrono::Duration::minutes(minute),
                    plays: row_plays,
                    topic: "plays".to_owned(),
                    kafka_partition: rng.random_range(0..3),
                    flush_offset: rng.random_range(0..1_000_000),
                    claim_id: 0,
                    flush_seq: 0,
                    region: String::new(),
                    chart_plays: 0,
                });
                if rng.random_bool(0.5) {
                    minute = rng.random_range(0..minutes_in_day);
                }
            }
        }
    }
    rows
}

/// Rolls `days` up with the real rollup job, "now" being the tests' fixed now.
async fn roll_up(options: &ClickHouseOptions, days: &[NaiveDate]) {
    let job = topk_rollup::RollupJob::new(options.client(), now());
    for day in days {
        let outcomes = job.backfill(*day, *day, |_| {}).await.unwrap();
        assert!(
            outcomes.iter().all(|outcome| !outcome.failed()),
            "{outcomes:?}"
        );
    }
}

mod auth;
mod coalescing;
mod conformance;
mod exactness;
mod operations;
mod results;
mod time_zones;
