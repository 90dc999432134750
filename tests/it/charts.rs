//! Charts against the real stack: generated traffic with regions, short plays, spam users
//! and resends goes through Kafka and the aggregator; the rollup writes the complete hours'
//! chart rows (today's too); late plays, of a past day and of today's rolled-up hours, arrive
//! after it. Every chart the API answers (each scope × window,
//! page by page) must equal the brute force over the valid plays (`topk_loadgen::charts`),
//! cap and minimum play length included, and `as_of` in the past must answer the same chart
//! twice.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use serde_json::Value;
use topk_core::chart::{ChartSpan, ChartWindow, DEFAULT_USER_HOUR_CAP};
use topk_core::event::{PlayEvent, DEFAULT_CHART_MIN_PLAYED_MS};
use topk_core::schema::{SongRow, SONGS};
use topk_loadgen::charts::{expected_chart, ExpectedChartSong};
use topk_loadgen::generate::{generate, GeneratedMessage, GeneratorSpec, Truth};
use topk_rollup::charts::{ChartReason, ChartResult};
use topk_rollup::{DayResult, RollupJob};
use topk_tests::pipeline::Pipeline;
use tower::ServiceExt;

const SONGS_IN_CATALOG: u64 = 160;
const GENRES: [&str; 3] = ["rock", "pop", "jazz"];

fn genre_of(song_id: &str) -> Option<&'static str> {
    let number: u64 = song_id.strip_prefix("song-")?.parse().ok()?;
    (number <= SONGS_IN_CATALOG).then(|| GENRES[(number % 3) as usize])
}

fn artist_of(song_id: &str) -> Option<String> {
    let number: u64 = song_id.strip_prefix("song-")?.parse().ok()?;
    (number <= SONGS_IN_CATALOG).then(|| format!("artist-{}", number % 11))
}

/// A catalog of the first [`SONGS_IN_CATALOG`] songs (the rest are unknown to it).
async fn load_catalog(pipeline: &Pipeline) {
    let client = pipeline.clickhouse.client();
    let mut insert = client.insert::<SongRow>(SONGS).await.unwrap();
    for number in 1..=SONGS_IN_CATALOG {
        let song_id = format!("song-{number}");
        insert
            .write(&SongRow {
                title: format!("Song {number}"),
                artist_id: artist_of(&song_id).unwrap(),
                artist_name: format!("Artist {}", number % 11),
                album: String::new(),
                genre: genre_of(&song_id).unwrap().to_owned(),
                duration_ms: 200_000,
                version: 1,
                loaded_at: Utc::now(),
                song_id,
            })
            .await
            .unwrap();
    }
    insert.end().await.unwrap();
}

fn play(
    event_id: String,
    user_id: &str,
    song_id: &str,
    ts: DateTime<Utc>,
    region: Option<&str>,
    played_ms: Option<u64>,
) -> GeneratedMessage {
    let mut event = PlayEvent::new(event_id, user_id, song_id, ts.timestamp_millis());
    event.region = region.map(str::to_owned);
    event.played_ms = played_ms;
    GeneratedMessage {
        key: user_id.to_owned(),
        payload: serde_json::to_vec(&event).unwrap(),
        truth: Truth::Valid(event),
    }
}

/// Users who loop one song far past the cap: one in one hour, one over two hours and two
/// regions, and one whose plays are all too short to count.
fn spam(now: DateTime<Utc>) -> Vec<GeneratedMessage> {
    let hour_ago = now - ChronoDuration::minutes(70);
    let three_hours_ago = now - ChronoDuration::hours(3);
    let mut messages = Vec::new();
    for index in 0..60 {
        let at = hour_ago + ChronoDuration::seconds(index * 31);
        messages.push(play(
            format!("spam-a-{index}"),
            "spammer-a",
            "song-7",
            at,
            Some("DE"),
            Some(31_000),
        ));
        let region = if index % 2 == 0 { "DE" } else { "US" };
        messages.push(play(
            format!("spam-b-{index}"),
            "spammer-b",
            "song-9",
            three_hours_ago + ChronoDuration::minutes(2 * index),
            Some(region),
            None,
        ));
        messages.push(play(
            format!("spam-c-{index}"),
            "spammer-c",
            "song-11",
            at,
            Some("DE"),
            Some(5_000),
        ));
    }
    messages
}

/// Plays of a day that is already rolled up, arriving now (offline plays delivered late).
fn late_plays(day_start: DateTime<Utc>, seed: u64) -> Vec<GeneratedMessage> {
    (0..200)
        .map(|index| {
            let user = format!("user-{}", 1 + (index * 7 + seed) % 40);
            let song = format!("song-{}", 1 + (index * 13) % 30);
            let at = day_start + ChronoDuration::minutes(((index * 37) % 1_440) as i64);
            let region = ["DE", "US", "BR"][(index % 3) as usize];
            play(
                format!("late-{seed}-{index}"),
                &user,
                &song,
                at,
                Some(region),
                Some(60_000),
            )
        })
        .collect()
}

async fn get_json(app: &Router, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A chart scope as the query string says it, and the brute force's filter for it.
struct Scope {
    query: &'static str,
    keeps: fn(&PlayEvent) -> bool,
}

const SCOPES: [Scope; 5] = [
    Scope {
        query: "scope=global",
        keeps: |_| true,
    },
    Scope {
        query: "scope=region&region=DE",
        keeps: |event| event.region.as_deref() == Some("DE"),
    },
    Scope {
        query: "scope=region&region=BR",
        keeps: |event| event.region.as_deref() == Some("BR"),
    },
    Scope {
        query: "scope=genre&genre=Rock",
        keeps: |event| genre_of(&event.song_id) == Some("rock"),
    },
    Scope {
        query: "scope=artist&artist_id=artist-3",
        keeps: |event| artist_of(&event.song_id).as_deref() == Some("artist-3"),
    },
];

fn expected(
    messages: &[GeneratedMessage],
    span: &ChartSpan,
    keeps: fn(&PlayEvent) -> bool,
) -> Vec<ExpectedChartSong> {
    expected_chart(
        messages,
        span,
        keeps,
        DEFAULT_USER_HOUR_CAP,
        DEFAULT_CHART_MIN_PLAYED_MS,
    )
}

/// Reads every page of every scope × window as of `as_of` and compares it with the brute
/// force. Returns how many songs were compared.
async fn assert_every_chart_equals_brute_force(
    app: &Router,
    messages: &[GeneratedMessage],
    as_of: DateTime<Utc>,
) -> usize {
    let mut compared = 0;
    let as_of_text = as_of.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for window in ChartWindow::ALL {
        let span = window.span(as_of);
        for scope in &SCOPES {
            let expected_songs = expected(messages, &span, scope.keeps);
            let previous: HashMap<String, u64> =
                expected(messages, &window.previous(&span), scope.keeps)
                    .into_iter()
                    .enumerate()
                    .map(|(index, song)| (song.song_id, index as u64 + 1))
                    .collect();
            let limit = 23;
            let mut offset = 0;
            loop {
                let uri = format!(
                    "/v1/charts/top-songs?{}&window={window}&limit={limit}&offset={offset}&as_of={}",
                    scope.query,
                    as_of_text.replace('+', "%2B")
                );
                let (status, body) = get_json(app, &uri).await;
                assert_eq!(status, StatusCode::OK, "{uri}: {body}");
                let context = format!("{} {window} offset {offset}", scope.query);
                assert_eq!(
                    body["total"].as_u64(),
                    Some(expected_songs.len() as u64),
                    "{context}: total"
                );
                assert_eq!(
                    body["window"]["from"],
                    span.from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                let answered: Vec<(u64, String, u64, u64, Option<u64>)> = body["songs"]
                    .as_array()
                    .unwrap()
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
                    .collect();
                let wanted: Vec<(u64, String, u64, u64, Option<u64>)> = expected_songs
                    .iter()
                    .enumerate()
                    .skip(offset)
                    .take(limit)
                    .map(|(index, song)| {
                        (
                            index as u64 + 1,
                            song.song_id.clone(),
                            song.plays,
                            song.listeners,
                            previous.get(&song.song_id).copied(),
                        )
                    })
                    .collect();
                assert_eq!(answered, wanted, "{context}");
                compared += answered.len();
                offset += limit;
                if offset >= expected_songs.len() {
                    break;
                }
            }
        }
    }
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_chart_equals_the_brute_force_with_the_cap_short_plays_and_late_plays() {
    let pipeline = Pipeline::new("charts_exact", 4).await;
    let now = Utc::now();
    let mut spec = GeneratorSpec::new(30_000, now);
    spec.seed = 14;
    spec.users = 400;
    spec.songs = 200;
    spec.malformed_share = 0.01;
    // A week of plays (from the window's first midnight), then the last 3 hours densest (the
    // live stream, with plays delivered late from anywhere in the week), so every window has
    // some.
    // Resends only in the dense part: the duplicate filter's horizon is 10 minutes of event
    // time, and the sparse week advances ~20 s per event.
    spec.late_share = 0.0;
    spec.duplicate_share = 0.0;
    spec.spread_ms = 7 * 86_400_000;
    let mut messages = generate(&spec);
    spec.seed = 15;
    spec.events = 6_000;
    spec.late_share = 0.05;
    spec.duplicate_share = 0.02;
    spec.spread_ms = 3 * 3_600_000;
    messages.extend(generate(&spec));
    messages.extend(spam(now));
    load_catalog(&pipeline).await;
    pipeline.produce(&messages).await;
    let mut aggregator = pipeline.start_aggregator("charts", &[]);
    pipeline.wait_until_drained(Duration::from_secs(180)).await;
    // The chart counts ride the users' committed flushes.
    pipeline.assert_rows_equal(&messages, &aggregator).await;

    // The complete hours get their hourly chart rows, today's too.
    let job = RollupJob::new(pipeline.clickhouse.client(), Utc::now());
    let outcomes = job.run(|_| {}).await.unwrap();
    assert!(outcomes.iter().all(|outcome| !outcome.failed()));
    let chart_outcomes = job.charts(|_| {}).await.unwrap();
    assert!(
        chart_outcomes
            .iter()
            .filter(|outcome| matches!(outcome.result, ChartResult::RolledUp { .. }))
            .count()
            >= 6,
        "{chart_outcomes:?}"
    );
    let chart_rows: u64 = pipeline
        .clickhouse
        .client()
        .query("SELECT count() FROM chart_hourly")
        .fetch_one()
        .await
        .unwrap();
    assert!(chart_rows > 1_000, "{chart_rows} chart rows");

    // Offline plays of a rolled-up day, committed after its snapshot: the day is read from
    // its minute rows until it is rolled up again.
    let three_days_ago = (now - ChronoDuration::days(3))
        .duration_trunc(ChronoDuration::days(1))
        .unwrap();
    let mut late = late_plays(three_days_ago, 1);
    // And plays of today's first hours, already rolled up (unless the test runs right after
    // midnight): those hours are read from the minute rows again.
    let today = now.duration_trunc(ChronoDuration::days(1)).unwrap();
    late.extend(
        late_plays(today, 2)
            .into_iter()
            .filter(|message| match &message.truth {
                Truth::Valid(event) => event.ts < now.timestamp_millis() - 3_600_000,
                _ => false,
            }),
    );
    pipeline.produce(&late).await;
    messages.extend(late);
    pipeline.wait_until_drained(Duration::from_secs(120)).await;

    let app = topk_tests::api::app(&pipeline.clickhouse);
    // On a whole minute: the window ends right there, so plays counted later are outside.
    let as_of = Utc::now()
        .duration_trunc(ChronoDuration::minutes(1))
        .unwrap();
    let compared = assert_every_chart_equals_brute_force(&app, &messages, as_of).await;
    assert!(compared > 1_000, "only {compared} songs compared");

    // The spam is capped: spammer-a's 60 plays of song-7 in 31 minutes (one or two clock
    // hours) count 20 an hour.
    let global = expected(&messages, &ChartWindow::Day.span(as_of), |_| true);
    let spammed = global.iter().find(|song| song.song_id == "song-7").unwrap();
    let uncapped = expected_chart(
        &messages,
        &ChartWindow::Day.span(as_of),
        |_| true,
        u64::MAX,
        DEFAULT_CHART_MIN_PLAYED_MS,
    );
    let uncapped_plays = uncapped
        .iter()
        .find(|song| song.song_id == "song-7")
        .unwrap()
        .plays;
    assert!(
        uncapped_plays >= spammed.plays + 20,
        "{uncapped_plays} vs {spammed:?}"
    );

    // Rolled up again (the late day too): the same answers, now from the hourly rows.
    let job = RollupJob::new(pipeline.clickhouse.client(), Utc::now());
    let outcomes = job.run(|_| {}).await.unwrap();
    assert!(outcomes
        .iter()
        .any(|outcome| outcome.day == three_days_ago.date_naive()
            && matches!(outcome.result, DayResult::RolledUp { .. })));
    let chart_outcomes = job.charts(|_| {}).await.unwrap();
    assert!(
        chart_outcomes
            .iter()
            .any(|outcome| outcome.day == three_days_ago.date_naive()
                && matches!(
                    outcome.result,
                    ChartResult::RolledUp {
                        reason: ChartReason::LateData,
                        ..
                    }
                )),
        "{chart_outcomes:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let app = topk_tests::api::app(&pipeline.clickhouse);
    assert_every_chart_equals_brute_force(&app, &messages, as_of).await;

    // `as_of` in the past: the same chart again after newer plays were counted.
    let uri = format!(
        "/v1/charts/top-songs?window=1h&limit=100&as_of={}",
        as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let (_, before) = get_json(&app, &uri).await;
    let newer: Vec<GeneratedMessage> = (0..100)
        .map(|index| {
            play(
                format!("newer-{index}"),
                "user-1",
                "song-1",
                Utc::now(),
                Some("DE"),
                None,
            )
        })
        .collect();
    pipeline.produce(&newer).await;
    pipeline.wait_until_drained(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (_, after) = get_json(&app, &uri).await;
    assert_eq!(before["songs"], after["songs"]);
    assert_eq!(before["total"], after["total"]);
    aggregator.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chart_parameters_get_a_400_with_their_code() {
    let options = topk_tests::stack::fresh_database("charts_bad_parameters").await;
    let app = topk_tests::api::app(&options);
    let now = Utc::now();
    let future =
        (now + ChronoDuration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old = (now - ChronoDuration::hours(25)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (query, code) in [
        ("scope=planet", "invalid_scope"),
        ("scope=region", "invalid_request"),
        ("scope=region&region=XX", "invalid_region"),
        ("scope=genre&genre=", "invalid_genre"),
        ("window=30d", "invalid_window"),
        ("limit=0", "invalid_limit"),
        ("offset=x", "invalid_offset"),
        ("as_of=now", "invalid_as_of"),
        (&format!("as_of={future}"), "invalid_as_of"),
        (&format!("as_of={old}"), "invalid_as_of"),
        ("colour=red", "invalid_request"),
    ] {
        let (status, body) = get_json(&app, &format!("/v1/charts/top-songs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
    }
    // An empty database answers an empty chart.
    let (status, body) = get_json(&app, "/v1/charts/top-songs?window=7d").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total"], 0);
    assert_eq!(body["songs"], serde_json::json!([]));
}
