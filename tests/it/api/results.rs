//! The window, the ranking and `exact` against brute force; bad input.

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use topk_core::schema::{MinuteRow, DAILY_TOP_SIZE};
use topk_core::window::day_start;
use topk_tests::stack;

use super::*;

/// Users shaped to test the window and the ranking; see [`window_spanning_rolled_up_days`].
fn generate_counts(rng: &mut StdRng) -> Counts {
    let mut counts = Counts::new();
    let mut add = |user: &str, day: NaiveDate, song: String, plays: u64| {
        *counts
            .entry((user.to_owned(), day))
            .or_default()
            .entry(song)
            .or_default() += plays;
    };
    // Every day of the window, one before it (7), and plays of today after "now" are added
    // as rows only (see the test).
    for offset in 0..=7 {
        for user in 0..30 {
            let user_id = if user == 0 {
                "fan ü/1".to_owned()
            } else {
                format!("user-{user}")
            };
            for _ in 0..rng.random_range(0..30) {
                // Skewed over 25 songs: many small counts, so ties are common.
                let song = (25.0 * rng.random::<f64>().powi(2)) as u32;
                add(&user_id, day(offset), format!("s{song}"), 1);
            }
        }
        // Every day truncated (70 songs), but the head songs dominate: exact all the same.
        for user in 0..3 {
            for head in 0..12u64 {
                add(
                    &format!("heavy-{user}"),
                    day(offset),
                    format!("h{head}"),
                    5 + head + offset,
                );
            }
            for tail in 0..58 {
                add(
                    &format!("heavy-{user}"),
                    day(offset),
                    format!("tail{tail}"),
                    1,
                );
            }
        }
        // Twelve songs with equal plays: only song_id orders them ("t10" < "t2").
        for song in 1..=12 {
            add("ties", day(offset), format!("t{song}"), 1);
        }
    }
    counts
}

/// Rolled up by the real rollup job: 7 (outside the window), 6, 5, 4 and 2 days ago. 3 days
/// ago was rolled up too but its progress row is gone (a rollup that had not finished: its
/// snapshot is never read), 1 day ago was never rolled up: both are read from minute rows.
/// The minute partition of 5 days ago is dropped after its rollup, so that day is read from
/// its top lists alone (the heavy users' truncated lists included: their head songs dominate,
/// so the answer is still exact); every other day keeps its minute rows, so reading a day
/// twice would show. Heavy users' truncated days are read from minute rows.
#[tokio::test]
async fn window_spanning_rolled_up_days() {
    let options = stack::fresh_database("api_window").await;
    let client = options.client();
    let mut rng = StdRng::seed_from_u64(7);
    let counts = generate_counts(&mut rng);
    let mut rows = minute_rows(&mut rng, &counts);
    // Today after "now": outside the window.
    for minute in [616, 900] {
        rows.push(MinuteRow {
            minute: day_start(day(0)) + chrono::Duration::minutes(minute),
            ..rows
                .iter()
                .find(|row| row.user_id == "ties")
                .unwrap()
                .clone()
        });
    }
    topk_tests::committed::write_committed(&options, &rows).await;
    roll_up(&options, &[day(7), day(6), day(5), day(4), day(3), day(2)]).await;
    forget_rollup(&options, day(3)).await;
    client
        .query("ALTER TABLE plays_minute DROP PARTITION ?")
        .bind(day(5).to_string())
        .execute()
        .await
        .unwrap();
    let truncated: u64 = client
        .query("SELECT count() FROM daily_top WHERE user_truncated = 1")
        .fetch_one()
        .await
        .unwrap();
    assert!(truncated > 0, "some days are truncated");

    let app = fixed_app(&config(options));
    let mut users: Vec<&str> = counts.keys().map(|(user, _)| user.as_str()).collect();
    users.dedup();
    assert!(users.len() >= 30);
    for user_id in users {
        let path_user: String = user_id
            .bytes()
            .map(|byte| match byte {
                b'a'..=b'z' | b'0'..=b'9' | b'-' => (byte as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        for limit in [10, 3, 50] {
            let uri = if limit == 10 {
                format!("/v1/users/{path_user}/top-songs")
            } else {
                format!("/v1/users/{path_user}/top-songs?limit={limit}")
            };
            let reply = get(&app, &uri, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
            assert_eq!(reply.body["user_id"], user_id);
            assert_eq!(
                song_list(&reply.body),
                brute_force(&rows, user_id, limit),
                "{user_id} limit {limit}"
            );
            assert_eq!(reply.body["exact"], true, "{user_id} limit {limit}");
        }
    }
    let ties = get(&app, "/v1/users/ties/top-songs", None).await;
    let tied_ids: Vec<String> = song_list(&ties.body)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        tied_ids,
        ["t1", "t10", "t11", "t12", "t2", "t3", "t4", "t5", "t6", "t7"]
    );
    assert_eq!(
        ties.body["window"],
        json!({"from": "2026-11-18T00:00:00Z", "to": "2026-11-24T10:15:30Z", "tz": "UTC"})
    );
    assert!(ties.body["generated_at"]
        .as_str()
        .unwrap()
        .parse::<DateTime<Utc>>()
        .is_ok());

    let nobody = get(&app, "/v1/users/nobody/top-songs", None).await;
    assert_eq!(nobody.status, StatusCode::OK);
    assert_eq!(nobody.body["songs"], json!([]));
    assert_eq!(nobody.body["exact"], true);
}

/// Deletes a day's rollup progress rows (and waits for the mutation): the snapshot that
/// rollup wrote is then never read.
async fn forget_rollup(options: &topk_core::db::ClickHouseOptions, rolled_day: NaiveDate) {
    let client = options.client();
    client
        .query("ALTER TABLE rollup_progress DELETE WHERE day = toDate(?)")
        .bind(rolled_day.to_string())
        .execute()
        .await
        .unwrap();
    for _ in 0..300 {
        let pending: u64 = client
            .query(
                "SELECT count() FROM system.mutations WHERE database = currentDatabase() \
                 AND table = 'rollup_progress' AND is_done = 0",
            )
            .fetch_one()
            .await
            .unwrap();
        if pending == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the delete of {rolled_day}'s progress did not finish");
}

/// A truncated day whose minute rows exist is read from them: the answer is exact. 4 days ago
/// the user played 51 songs; the top 50 kept 50 songs with 2 plays each and dropped
/// "z-hidden" (2 plays, its id sorts last). Today "z-hidden" has 2 more, the "a" songs 3:
/// "z-hidden" truly leads with 4.
///
/// Once the day's minute rows are pruned (an operator dropped them inside the window), only
/// the truncated list is left: "z-hidden" may have up to 4 plays, more than the tenth song's
/// 3, so the list cannot be proven and `exact` says so.
#[tokio::test]
async fn truncated_days_are_exact_until_their_minute_rows_are_pruned() {
    let options = stack::fresh_database("api_truncation").await;
    let mut counts = Counts::new();
    let truncated_day = counts.entry(("hidden".to_owned(), day(4))).or_default();
    for song in 0..DAILY_TOP_SIZE {
        truncated_day.insert(format!("k{song:02}"), 2);
    }
    truncated_day.insert("z-hidden".to_owned(), 2);
    let today = counts.entry(("hidden".to_owned(), day(0))).or_default();
    for song in 1..=10 {
        today.insert(format!("a{song:02}"), 3);
    }
    today.insert("z-hidden".to_owned(), 2);
    let rows = minute_rows(&mut StdRng::seed_from_u64(1), &counts);
    topk_tests::committed::write_committed(&options, &rows).await;
    roll_up(&options, &[day(4)]).await;

    let app = fixed_app(&config(options.clone()));
    let reply = get(&app, "/v1/users/hidden/top-songs", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let truth = brute_force(&rows, "hidden", 10);
    assert_eq!(truth[0], ("z-hidden".to_owned(), 4));
    assert_eq!(song_list(&reply.body), truth);
    assert_eq!(reply.body["exact"], true);

    options
        .client()
        .query("ALTER TABLE plays_minute DROP PARTITION ?")
        .bind(day(4).to_string())
        .execute()
        .await
        .unwrap();
    // A new app: a fresh read plan, which sees the partition gone.
    let app = fixed_app(&config(options));
    let reply = get(&app, "/v1/users/hidden/top-songs", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let shown = song_list(&reply.body);
    assert_ne!(shown, truth);
    assert_eq!(shown.len(), 10);
    assert!(shown
        .iter()
        .all(|(id, plays)| id.starts_with('a') && *plays == 3));
    assert_eq!(reply.body["exact"], false);
    // Even the top 1 is uncertain: "z-hidden" may have 4 plays, more than "a01".
    let top_one = get(&app, "/v1/users/hidden/top-songs?limit=1", None).await;
    assert_eq!(top_one.body["exact"], false);
}

#[tokio::test]
async fn bad_input_is_a_json_4xx() {
    let options = stack::fresh_database("api_bad_input").await;
    let app = fixed_app(&config(options));
    for uri in [
        "/v1/users/u/top-songs?limit=0",
        "/v1/users/u/top-songs?limit=51",
        "/v1/users/u/top-songs?limit=-1",
        "/v1/users/u/top-songs?limit=ten",
        "/v1/users/u/top-songs?limit=",
        "/v1/users/u/top-songs?limit=99999999999999999999999",
    ] {
        assert_error(
            &get(&app, uri, None).await,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        );
    }
    for uri in [
        "/v1/users/u/top-songs?lmit=5",
        "/v1/users/u/top-songs?limit=5&limit=6",
    ] {
        assert_error(
            &get(&app, uri, None).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    let too_long = "x".repeat(129);
    for uri in [
        format!("/v1/users/{too_long}/top-songs"),
        "/v1/users/a%00b/top-songs".to_owned(),
        "/v1/users/a%0Ab/top-songs".to_owned(),
        "/v1/users/%7F/top-songs".to_owned(),
        "/v1/users/%FF%FE/top-songs".to_owned(),
        "/v1/users/%20%C2%85/top-songs".to_owned(),
    ] {
        assert_error(
            &get(&app, &uri, None).await,
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
        );
    }
    let longest = get(
        &app,
        &format!("/v1/users/{}/top-songs", "x".repeat(128)),
        None,
    )
    .await;
    assert_eq!(longest.status, StatusCode::OK, "{}", longest.body);
    let quote = get(&app, "/v1/users/o'brien%5C%27;%20DROP/top-songs", None).await;
    assert_eq!(quote.status, StatusCode::OK, "{}", quote.body);
    assert_eq!(quote.body["user_id"], "o'brien\\'; DROP");

    for uri in [
        "/",
        "/v1/users",
        "/v1/users/u/top-songs/extra",
        "/v2/users/u/top-songs",
    ] {
        assert_error(
            &get(&app, uri, None).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    for method in ["POST", "DELETE", "PUT"] {
        let reply = request(&app, method, "/v1/users/u/top-songs", None).await;
        assert_error(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
    // Without auth there is no "me".
    assert_error(
        &get(&app, "/v1/me/top-songs", None).await,
        StatusCode::NOT_FOUND,
        "auth_disabled",
    );
}
