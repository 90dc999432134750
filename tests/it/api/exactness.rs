//! Exact answers for every user with realistic listeners: libraries of thousands of songs,
//! Zipf-distributed plays at 30, 100 and 300 plays a day over 7 days, rolled up — heavy
//! listeners' days are truncated to 50 songs, so their answers need the minute rows; late
//! plays into rolled-up days; and a user's counts never going down across a rollup.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use topk_core::db::ClickHouseOptions;
use topk_core::schema::MinuteRow;
use topk_loadgen::generate::MinuteCounts;
use topk_loadgen::listeners::{generate_listeners, minute_counts, ListenerSpec, ListenerTier};
use topk_loadgen::oracle::top_songs;
use topk_tests::stack;

use super::*;

/// Minute rows holding `counts`, spread over 4 Kafka partitions by user.
pub(super) fn rows_of(counts: &MinuteCounts) -> Vec<MinuteRow> {
    counts
        .iter()
        .map(|((user_id, song_id, minute), plays)| MinuteRow {
            user_id: user_id.clone(),
            song_id: song_id.clone(),
            minute: DateTime::from_timestamp(*minute, 0).unwrap(),
            plays: *plays,
            topic: "plays".to_owned(),
            kafka_partition: (user_id.len() % 4) as u32,
            flush_offset: 0,
            claim_id: 0,
            flush_seq: 0,
            region: String::new(),
            chart_plays: 0,
        })
        .collect()
}

pub(super) fn listeners_spec(now: DateTime<Utc>) -> ListenerSpec {
    let mut spec = ListenerSpec::new(now);
    spec.tiers = vec![
        ListenerTier::new(40, 30, 1.0),
        ListenerTier::new(40, 100, 1.0),
        ListenerTier::new(20, 300, 1.0),
        ListenerTier::new(10, 100, 0.8),
    ];
    spec.seed = 11;
    spec
}

/// How many (user, day) top lists are truncated: the days whose answers need minute rows.
pub(super) async fn truncated_user_days(options: &ClickHouseOptions) -> u64 {
    options
        .client()
        .query("SELECT count() FROM daily_top WHERE rank = 1 AND user_truncated = 1")
        .fetch_one()
        .await
        .unwrap()
}

/// The API's answer for `user`: (songs, exact).
async fn answer(app: &Router, user: &str) -> (Vec<(String, u64)>, bool) {
    let path: String = user.bytes().map(|byte| format!("%{byte:02X}")).collect();
    let reply = get(app, &format!("/v1/users/{path}/top-songs"), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    (song_list(&reply.body), reply.body["exact"] == true)
}

/// Asserts the API's answer for every user of `counts` is the brute-force top 10 and exact.
async fn assert_every_user_exact(app: &Router, counts: &MinuteCounts, now: DateTime<Utc>) {
    let window = topk_core::window::Window::last_week(now);
    let users: std::collections::BTreeSet<&str> =
        counts.keys().map(|(user, _, _)| user.as_str()).collect();
    let mut wrong = Vec::new();
    for user in &users {
        let truth = top_songs(
            counts,
            user,
            window.from.timestamp_millis(),
            window.to.timestamp_millis(),
            10,
        );
        let (shown, exact) = answer(app, user).await;
        if shown != truth || !exact {
            wrong.push(format!(
                "{user}: exact={exact}, shown {shown:?}, truth {truth:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} users wrong, first: {}",
        wrong.len(),
        users.len(),
        wrong[0]
    );
}

/// Days of the window before today.
pub(super) fn previous_days(now: DateTime<Utc>) -> Vec<NaiveDate> {
    topk_core::window::Window::last_week(now).previous_days()
}

pub(super) async fn roll_up_all(options: &ClickHouseOptions, now: DateTime<Utc>) {
    let job = topk_rollup::RollupJob::new(options.client(), now);
    let days = previous_days(now);
    let outcomes = job
        .backfill(days[0], *days.last().unwrap(), |_| {})
        .await
        .unwrap();
    assert!(outcomes.iter().all(|outcome| !outcome.failed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realistic_listeners_get_exact_answers_with_late_plays_and_no_rollup_between() {
    let options = stack::fresh_database("api_realistic_listeners").await;
    let now = Utc::now();
    let traffic = generate_listeners(&listeners_spec(now));
    let mut counts = minute_counts(&traffic.plays);
    topk_tests::committed::write_committed(&options, &rows_of(&counts)).await;
    roll_up_all(&options, now).await;
    let truncated_user_days = truncated_user_days(&options).await;
    assert!(
        truncated_user_days > 200,
        "heavy listeners' days are truncated ({truncated_user_days})"
    );
    let config = config(options.clone());
    let app = topk_api::app(AppState::from_config(&config).unwrap());
    assert_every_user_exact(&app, &counts, now).await;

    // Late plays for rolled-up days, committed after their rollup: new favourites of a few
    // heavy and light listeners, days ago — no rollup in between.
    let users: Vec<String> = traffic
        .listeners
        .iter()
        .step_by(7)
        .map(|listener| listener.user_id.clone())
        .collect();
    let mut late = MinuteCounts::new();
    for (index, user) in users.iter().enumerate() {
        let day = previous_days(now)[index % 6];
        let minute = topk_core::window::day_start(day).timestamp() + 3_600 * (index as i64 % 20);
        *late
            .entry((user.clone(), format!("late-hit-{index}"), minute))
            .or_default() += 1_000;
        *counts
            .entry((user.clone(), format!("late-hit-{index}"), minute))
            .or_default() += 1_000;
    }
    topk_tests::committed::write_committed(&options, &rows_of(&late)).await;
    // A new app: the plan a moment later (the served app would see it within its plan TTL).
    let app = topk_api::app(AppState::from_config(&config).unwrap());
    for (index, user) in users.iter().enumerate() {
        let (shown, exact) = answer(&app, user).await;
        assert!(exact);
        assert_eq!(shown[0], (format!("late-hit-{index}"), 1_000), "{user}");
    }
    assert_every_user_exact(&app, &counts, now).await;
}

/// One heavy listener's answer sampled every 100 ms while the days are rolled up one after
/// the other (and plays keep being committed, some for days already rolled up): no song's
/// count ever goes down, and the last answer is the brute force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_counts_never_go_down_across_a_rollup() {
    let options = stack::fresh_database("api_never_down").await;
    let now = Utc::now();
    let mut spec = listeners_spec(now);
    spec.tiers = vec![
        ListenerTier::new(6, 300, 1.0),
        ListenerTier::new(20, 30, 1.0),
    ];
    let traffic = generate_listeners(&spec);
    let mut counts = minute_counts(&traffic.plays);
    topk_tests::committed::write_committed(&options, &rows_of(&counts)).await;
    let heavy = traffic.listeners[0].user_id.clone();
    let mut config = config(options.clone());
    config.rolled_days_cache_ms = 50;
    let app = topk_api::app(AppState::from_config(&config).unwrap());

    let rolled = std::sync::atomic::AtomicBool::new(false);
    let sampling = async {
        let mut samples: Vec<BTreeMap<String, u64>> = Vec::new();
        let mut after_rollup = 0;
        while after_rollup < 3 {
            if rolled.load(std::sync::atomic::Ordering::Relaxed) {
                after_rollup += 1;
            }
            let path: String = heavy.bytes().map(|byte| format!("%{byte:02X}")).collect();
            let reply = get(&app, &format!("/v1/users/{path}/top-songs?limit=50"), None).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body["exact"], true);
            samples.push(song_list(&reply.body).into_iter().collect());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    };
    let rolling = async {
        let job = topk_rollup::RollupJob::new(options.client(), now);
        for (index, day) in previous_days(now).into_iter().enumerate() {
            job.backfill(day, day, |_| {}).await.unwrap();
            // A late play of the heavy listener for a day just rolled up, committed now.
            let late_minute = topk_core::window::day_start(day).timestamp() + 60 * index as i64;
            let late: MinuteCounts =
                [((heavy.clone(), "late-song".to_owned(), late_minute), 2)].into();
            topk_tests::committed::write_committed(&options, &rows_of(&late)).await;
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            // Rolled up again: a new snapshot replaces the first.
            job.run(|_| {}).await.unwrap();
        }
        rolled.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (samples, ()) = tokio::join!(sampling, rolling);
    assert!(samples.len() > 20, "{} samples", samples.len());
    for pair in samples.windows(2) {
        for (song, before) in &pair[0] {
            if let Some(after) = pair[1].get(song) {
                assert!(after >= before, "{song}: {before} -> {after}");
            } else {
                // Left the top 50: only possible when another song passed it.
                let last = pair[1].values().min().copied().unwrap_or(0);
                assert!(
                    last >= *before,
                    "{song} ({before}) dropped out below {last}"
                );
            }
        }
    }
    for (index, day) in previous_days(now).into_iter().enumerate() {
        let late_minute = topk_core::window::day_start(day).timestamp() + 60 * index as i64;
        *counts
            .entry((heavy.clone(), "late-song".to_owned(), late_minute))
            .or_default() += 2;
    }
    let window = topk_core::window::Window::last_week(now);
    let truth: BTreeMap<String, u64> = top_songs(
        &counts,
        &heavy,
        window.from.timestamp_millis(),
        window.to.timestamp_millis(),
        50,
    )
    .into_iter()
    .collect();
    assert_eq!(samples.last().unwrap(), &truth);
}
