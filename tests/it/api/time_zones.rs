//! The user's own week (`?tz=`): from local midnight six days before the local date, for a
//! zone east of UTC (Europe/Berlin, UTC+1 in November) and one west (America/Los_Angeles,
//! UTC-8), each just before and just after local midnight, against a brute force over the
//! minute rows from local midnight. Realistic listeners over eight UTC days (heavy ones
//! truncated, so their days need minute rows), every full day rolled up, the day before the
//! UTC week included; songs played heavily in the half hour on either side of each week's
//! start, so an edge read from UTC midnight (or from the wrong local midnight) shows; and
//! late plays committed after the rollup, on the partial first day and on a full day.

use chrono::{DateTime, Duration, Utc};
use topk_loadgen::generate::MinuteCounts;
use topk_loadgen::listeners::{generate_listeners, minute_counts};
use topk_loadgen::oracle::top_songs;
use topk_tests::stack;

use super::exactness::{listeners_spec, rows_of};
use super::*;

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// (zone, now, where its week starts): the starts worked out by hand from the zones' offsets.
fn cases() -> Vec<(&'static str, DateTime<Utc>, DateTime<Utc>)> {
    vec![
        // 23:59:30 in Berlin on the 24th, then 00:00:30 on the 25th.
        (
            "Europe/Berlin",
            at("2026-11-24T22:59:30Z"),
            at("2026-11-17T23:00:00Z"),
        ),
        (
            "Europe/Berlin",
            at("2026-11-24T23:00:30Z"),
            at("2026-11-18T23:00:00Z"),
        ),
        // 23:59:30 in Los Angeles on the 23rd, then 00:00:30 on the 24th.
        (
            "America/Los_Angeles",
            at("2026-11-24T07:59:30Z"),
            at("2026-11-17T08:00:00Z"),
        ),
        (
            "America/Los_Angeles",
            at("2026-11-24T08:00:30Z"),
            at("2026-11-18T08:00:00Z"),
        ),
    ]
}

fn add(counts: &mut MinuteCounts, user: &str, song: &str, minute: DateTime<Utc>, plays: u64) {
    *counts
        .entry((user.to_owned(), song.to_owned(), minute.timestamp()))
        .or_default() += plays;
}

async fn answer(app: &Router, user: &str, tz: &str) -> Reply {
    let path: String = user.bytes().map(|byte| format!("%{byte:02X}")).collect();
    get(app, &format!("/v1/users/{path}/top-songs?tz={tz}"), None).await
}

fn app_at(config: &ApiConfig, now: DateTime<Utc>) -> Router {
    topk_api::app(
        AppState::from_config(config)
            .unwrap()
            .with_clock(Clock::Fixed(now)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_weeks_east_and_west_of_utc_are_exact_across_local_midnight() {
    let options = stack::fresh_database("api_time_zones").await;
    let last_now = at("2026-11-24T23:00:30Z");
    // Eight UTC days of plays: the UTC week up to the last "now", and the week a day earlier
    // (other songs), which reaches into the day before the UTC week.
    let mut counts = minute_counts(&generate_listeners(&listeners_spec(last_now)).plays);
    let mut earlier = listeners_spec(last_now - Duration::days(1));
    earlier.seed = 12;
    for (key, plays) in minute_counts(&generate_listeners(&earlier).plays) {
        *counts.entry(key).or_default() += plays;
    }
    let users: Vec<String> = counts
        .keys()
        .map(|(user, _, _)| user.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // Every third user played one song a lot just before each week's start, and another
    // just after it.
    for (index, user) in users.iter().enumerate().step_by(3) {
        for (case, (_, _, start)) in cases().into_iter().enumerate() {
            let before = 300 + index as u64;
            add(
                &mut counts,
                user,
                &format!("before-{case}"),
                start - Duration::minutes(30),
                before,
            );
            add(
                &mut counts,
                user,
                &format!("after-{case}"),
                start + Duration::minutes(30),
                before / 2,
            );
        }
    }
    topk_tests::committed::write_committed(&options, &rows_of(&counts)).await;
    // Every full day rolled up, the day before the UTC week (11-17) too.
    let job = topk_rollup::RollupJob::new(options.client(), last_now);
    let outcomes = job
        .backfill(
            "2026-11-17".parse().unwrap(),
            "2026-11-23".parse().unwrap(),
            |_| {},
        )
        .await
        .unwrap();
    assert!(
        outcomes.iter().all(|outcome| !outcome.failed()),
        "{outcomes:?}"
    );
    let truncated = super::exactness::truncated_user_days(&options).await;
    assert!(
        truncated > 100,
        "heavy listeners' days are truncated ({truncated})"
    );

    // Late plays committed after the rollup: on the partial first days (11-17 and 11-18, a
    // quarter of an hour after the weeks' starts) and on a full day.
    let mut late = MinuteCounts::new();
    for (index, user) in users.iter().enumerate().skip(1).step_by(5) {
        for (case, (_, _, start)) in cases().into_iter().enumerate() {
            add(
                &mut late,
                user,
                &format!("late-edge-{case}"),
                start + Duration::minutes(15),
                40,
            );
        }
        add(
            &mut late,
            user,
            "late-full-day",
            at("2026-11-20T12:00:00Z"),
            25 + index as u64,
        );
    }
    topk_tests::committed::write_committed(&options, &rows_of(&late)).await;
    for (key, plays) in late {
        *counts.entry(key).or_default() += plays;
    }

    let config = config(options.clone());
    for (tz, now, start) in cases() {
        let app = app_at(&config, now);
        let mut wrong = Vec::new();
        for user in &users {
            let reply = answer(&app, user, tz).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            assert_eq!(
                reply.body["window"]["from"],
                start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "{tz} at {now}"
            );
            assert_eq!(reply.body["window"]["tz"], tz);
            let truth = top_songs(
                &counts,
                user,
                start.timestamp_millis(),
                now.timestamp_millis(),
                10,
            );
            let shown = song_list(&reply.body);
            if shown != truth || reply.body["exact"] != true {
                wrong.push(format!(
                    "{user}: exact={}, shown {shown:?}, truth {truth:?}",
                    reply.body["exact"]
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{tz} at {now}: {} of {} users wrong, first: {}",
            wrong.len(),
            users.len(),
            wrong[0]
        );
    }

    // Without tz: the UTC week, as before.
    let now = at("2026-11-24T10:15:30Z");
    let app = app_at(&config, now);
    let utc_start = at("2026-11-18T00:00:00Z");
    for user in users.iter().step_by(4) {
        let path: String = user.bytes().map(|byte| format!("%{byte:02X}")).collect();
        let reply = get(&app, &format!("/v1/users/{path}/top-songs"), None).await;
        assert_eq!(reply.body["window"]["tz"], "UTC");
        let truth = top_songs(
            &counts,
            user,
            utc_start.timestamp_millis(),
            now.timestamp_millis(),
            10,
        );
        assert_eq!(song_list(&reply.body), truth, "{user}");
    }
}

#[tokio::test]
async fn an_unknown_time_zone_is_a_400() {
    let options = stack::fresh_database("api_time_zone_errors").await;
    let app = fixed_app(&config(options));
    for tz in ["Mars/Olympus_Mons", "europe/berlin", "", "%2B01:00"] {
        let reply = get(&app, &format!("/v1/users/alice/top-songs?tz={tz}"), None).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_time_zone");
    }
    let reply = get(&app, "/v1/users/alice/top-songs?tz=UTC&tz=UTC", None).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    let reply = get(&app, "/v1/users/alice/top-songs?tz=Asia/Kathmandu", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // 10:15:30 UTC is 16:00:30 in Kathmandu (UTC+5:45): its week starts at 18:15 UTC.
    assert_eq!(reply.body["window"]["from"], "2026-11-17T18:15:00Z");
}
