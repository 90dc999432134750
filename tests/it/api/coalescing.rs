//! Coalescing: concurrent requests sharing ClickHouse queries get the answers they would get
//! alone (brute force, heavy listeners' truncated days, late plays), a failing batch fails
//! each of its requests as a lone request would fail (500 for a refused query, 503 for an
//! outage), and a lone request does not wait for a batch to fill.

use std::time::{Duration, Instant};

use chrono::Utc;
use topk_api::store::CoalesceCounts;
use topk_loadgen::generate::MinuteCounts;
use topk_loadgen::listeners::{generate_listeners, minute_counts};
use topk_loadgen::oracle::top_songs;
use topk_tests::stack;

use super::exactness::{listeners_spec, previous_days, roll_up_all, rows_of};
use super::*;

/// `config` with coalescing on, batches of at most `max_batch` and `max_queries` at once,
/// and room for every request the tests send at once.
fn coalescing(mut config: ApiConfig, max_batch: u32, max_queries: u32) -> ApiConfig {
    config.coalesce = true;
    config.coalesce_window_ms = 5;
    config.coalesce_max_batch = max_batch;
    config.coalesce_max_queries = max_queries;
    config.max_concurrent_requests = 1_000;
    config
}

fn user_path(user: &str, limit: usize) -> String {
    let path: String = user.bytes().map(|byte| format!("%{byte:02X}")).collect();
    format!("/v1/users/{path}/top-songs?limit={limit}")
}

/// Every user's answer, `at_once` requests in flight at any time (ClickHouse refuses more
/// than 100 queries at once: one query per request must stay below).
async fn concurrent_replies(
    app: &Router,
    users: &[String],
    limit: usize,
    at_once: usize,
) -> Vec<Reply> {
    use futures::StreamExt;
    futures::stream::iter(users)
        .map(|user| async move { get(app, &user_path(user, limit), None).await })
        .buffered(at_once)
        .collect()
        .await
}

fn counts(state: &AppState) -> CoalesceCounts {
    state.store().coalesce_counts().expect("coalescing is on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_answers_equal_brute_force_and_lone_answers() {
    let options = stack::fresh_database("api_coalesced_answers").await;
    let now = Utc::now();
    let traffic = generate_listeners(&listeners_spec(now));
    let mut counts_of_plays = minute_counts(&traffic.plays);
    topk_tests::committed::write_committed(&options, &rows_of(&counts_of_plays)).await;
    roll_up_all(&options, now).await;
    // Late plays into rolled-up days of every seventh listener (heavy ones included),
    // committed after the rollup.
    let mut late = MinuteCounts::new();
    for (index, listener) in traffic.listeners.iter().step_by(7).enumerate() {
        let day = previous_days(now)[index % 6];
        let minute = topk_core::window::day_start(day).timestamp() + 3_600 * (index as i64 % 20);
        let key = (
            listener.user_id.clone(),
            format!("late-hit-{index}"),
            minute,
        );
        *late.entry(key.clone()).or_default() += 40;
        *counts_of_plays.entry(key).or_default() += 40;
    }
    topk_tests::committed::write_committed(&options, &rows_of(&late)).await;
    let truncated_user_days = super::exactness::truncated_user_days(&options).await;
    assert!(
        truncated_user_days > 100,
        "heavy listeners' days are truncated ({truncated_user_days})"
    );

    let coalesced_state =
        AppState::from_config(&coalescing(config(options.clone()), 16, 2)).unwrap();
    let coalesced = topk_api::app(coalesced_state.clone());
    let mut alone_config = config(options.clone());
    alone_config.coalesce = false;
    alone_config.max_concurrent_requests = 1_000;
    let alone_state = AppState::from_config(&alone_config).unwrap();
    assert_eq!(alone_state.store().coalesce_counts(), None);
    let alone = topk_api::app(alone_state);

    let mut users: Vec<String> = traffic
        .listeners
        .iter()
        .map(|listener| listener.user_id.clone())
        .collect();
    // Twice each, and users without plays: requests for one user share its answer.
    users.extend(users.clone());
    users.push("nobody-listened".to_owned());
    let window = topk_core::window::Window::last_week(now);
    let mut wrong = Vec::new();
    for limit in [10, 50] {
        let coalesced_replies = concurrent_replies(&coalesced, &users, limit, 64).await;
        let alone_replies = concurrent_replies(&alone, &users, limit, 32).await;
        for ((user, together), by_itself) in
            users.iter().zip(&coalesced_replies).zip(&alone_replies)
        {
            assert_eq!(together.status, StatusCode::OK, "{}", together.body);
            assert_eq!(by_itself.status, StatusCode::OK, "{}", by_itself.body);
            let truth = top_songs(
                &counts_of_plays,
                user,
                window.from.timestamp_millis(),
                window.to.timestamp_millis(),
                limit,
            );
            let shown = song_list(&together.body);
            if shown != truth || together.body["exact"] != true {
                wrong.push(format!(
                    "{user} (limit {limit}): exact={}, shown {shown:?}, truth {truth:?}",
                    together.body["exact"]
                ));
            }
            assert_eq!(together.body["songs"], by_itself.body["songs"], "{user}");
            assert_eq!(together.body["exact"], by_itself.body["exact"], "{user}");
        }
    }
    assert!(
        wrong.is_empty(),
        "{} answers wrong, first: {}",
        wrong.len(),
        wrong[0]
    );
    let done = counts(&coalesced_state);
    assert_eq!(done.requests, 2 * users.len() as u64);
    assert!(
        done.batches * 4 <= done.requests,
        "requests were read in batches: {done:?}"
    );
}

/// Writes one committed play today for each of `users`.
async fn plays_today(options: &ClickHouseOptions, users: &[String]) {
    let minute = Utc::now() - chrono::Duration::minutes(1);
    let rows: Vec<MinuteRow> = users
        .iter()
        .map(|user| MinuteRow {
            user_id: user.clone(),
            song_id: "s1".to_owned(),
            minute,
            plays: 1,
            topic: "plays".to_owned(),
            kafka_partition: 0,
            flush_offset: 0,
            claim_id: 0,
            flush_seq: 0,
            region: String::new(),
            chart_plays: 0,
        })
        .collect();
    topk_tests::committed::write_committed(options, &rows).await;
}

/// A batch whose query fails fails each of its requests with the error a lone request would
/// get: a query ClickHouse refuses is a 500 for each, ClickHouse unreachable a 503 with
/// `Retry-After` for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_fails_each_request_as_a_lone_one_would() {
    let users: Vec<String> = (0..24).map(|index| format!("user-{index}")).collect();
    let options = stack::fresh_database("api_coalesced_broken").await;
    plays_today(&options, &users).await;
    options
        .client()
        .query("RENAME TABLE daily_top TO daily_top_renamed")
        .execute()
        .await
        .unwrap();
    // One query at a time: the requests that arrive while the first is read share the next.
    let refused_state = AppState::from_config(&coalescing(config(options), 64, 1)).unwrap();
    let refused = topk_api::app(refused_state.clone());
    for reply in concurrent_replies(&refused, &users, 10, users.len()).await {
        assert_error(&reply, StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
        assert!(!reply.headers.contains_key(header::RETRY_AFTER));
        assert!(
            !reply.body.to_string().contains("daily_top"),
            "{}",
            reply.body
        );
    }
    let done = counts(&refused_state);
    assert_eq!(done.requests, users.len() as u64);
    assert!(done.batches < done.requests, "a batch failed: {done:?}");

    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = config(ClickHouseOptions::new(
        format!("http://127.0.0.1:{port}"),
        "topk",
    ));
    let unreachable_state = AppState::from_config(&coalescing(unreachable, 64, 1)).unwrap();
    let down = topk_api::app(unreachable_state.clone());
    for reply in concurrent_replies(&down, &users, 10, users.len()).await {
        assert_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
        );
        assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    }
    let done = counts(&unreachable_state);
    assert_eq!(done.requests, users.len() as u64);
    assert!(done.batches < done.requests, "a batch failed: {done:?}");
}

/// With a batch window far longer than a query, requests one after the other are each
/// answered at once, each in a batch of its own: nothing waits for a batch to fill while no
/// other query runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_does_not_wait_for_a_batch_to_fill() {
    let users: Vec<String> = (0..5).map(|index| format!("user-{index}")).collect();
    let options = stack::fresh_database("api_coalesced_lone").await;
    plays_today(&options, &users).await;
    let mut lone = coalescing(config(options), 64, 2);
    lone.coalesce_window_ms = 3_000;
    let state = AppState::from_config(&lone).unwrap();
    let app = topk_api::app(state.clone());
    for user in &users {
        let started = Instant::now();
        let reply = get(&app, &user_path(user, 10), None).await;
        let took = started.elapsed();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(song_list(&reply.body), [("s1".to_owned(), 1)]);
        assert!(took < Duration::from_millis(1_500), "{user}: {took:?}");
    }
    assert_eq!(
        counts(&state),
        CoalesceCounts {
            batches: users.len() as u64,
            requests: users.len() as u64
        }
    );
}
