//! The song catalog against the real ClickHouse: `topk-catalog load` (the binary) from NDJSON
//! and CSV, idempotent reloads, changes, rejected lines; the API's `GET /v1/songs/{song_id}`
//! and `?include=metadata`.

use std::path::Path;
use std::process::Command;

use axum::http::StatusCode;
use serde_json::{json, Value};
use topk_core::db::ClickHouseOptions;
use topk_core::schema::MinuteRow;
use topk_tests::process::binary_path;
use topk_tests::stack;

use crate::api::{assert_error, config, fixed_app, get, now};

struct Run {
    code: Option<i32>,
    stderr: String,
}

/// Runs `topk-catalog load <file> <args>` against `options`' database.
fn load(options: &ClickHouseOptions, file: &Path, args: &[&str]) -> Run {
    let output = Command::new(binary_path("topk-catalog"))
        .arg("load")
        .arg(file)
        .args(args)
        .env("TOPK_CLICKHOUSE_URL", &options.clickhouse_url)
        .env("TOPK_CLICKHOUSE_DATABASE", &options.clickhouse_database)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run topk-catalog");
    Run {
        code: output.status.code(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The current catalog, by song: (title, genre, duration_ms).
async fn current(options: &ClickHouseOptions) -> Vec<(String, String, String, u32)> {
    options
        .client()
        .query("SELECT song_id, title, genre, duration_ms FROM songs_current ORDER BY song_id")
        .fetch_all()
        .await
        .expect("read songs_current")
}

async fn stored_rows(options: &ClickHouseOptions) -> u64 {
    options
        .client()
        .query("SELECT count() FROM songs")
        .fetch_one()
        .await
        .expect("count songs")
}

fn song_line(id: u32) -> String {
    let genre = ["Rock", "Pop", "Hip-Hop"][id as usize % 3];
    json!({
        "song_id": format!("s{id}"), "title": format!("Song {id}"), "artist_id": format!("a{}", id % 7),
        "artist_name": format!("Artist {}", id % 7), "album": if id % 2 == 0 { json!(format!("Album {}", id / 10)) } else { Value::Null },
        "genre": genre, "duration_ms": 120_000 + id
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_loads_once_reloads_as_nothing_and_reports_its_bad_lines() {
    let options = stack::fresh_database("catalog_load").await;
    let dir = tempfile::tempdir().unwrap();
    // 300 songs, with bad lines spread through them.
    let mut lines: Vec<String> = (0..300).map(song_line).collect();
    lines.insert(10, "not json".to_owned());
    lines.insert(
        20,
        r#"{"song_id":"s-no-title","artist_id":"a","artist_name":"n"}"#.to_owned(),
    );
    lines.insert(30, song_line(5)); // s5 again
    lines.insert(
        40,
        r#"{"song_id":"s-bad","title":"t","artist_id":"a","artist_name":"n","duration_ms":"3:07"}"#
            .to_owned(),
    );
    lines.insert(50, String::new());
    let ndjson = dir.path().join("songs.ndjson");
    std::fs::write(&ndjson, lines.join("\n")).unwrap();
    let rejects = dir.path().join("rejects.ndjson");

    let first = load(
        &options,
        &ndjson,
        &["--batch-rows", "64", "--rejects", rejects.to_str().unwrap()],
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(
        first.stderr.contains(
            "304 lines in" // 305 lines, one blank
        ) && first
            .stderr
            .contains("300 new, 0 changed, 0 unchanged, 4 rejected; 300 rows inserted"),
        "{}",
        first.stderr
    );
    assert!(
        first
            .stderr
            .contains("rejected line 11: the line is not JSON"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("rejected line 21: title is missing"),
        "{}",
        first.stderr
    );
    assert!(
        first
            .stderr
            .contains("rejected line 31: song_id \"s5\" is already on line 6"),
        "{}",
        first.stderr
    );
    let listed: Vec<Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[3]["line"], 41);
    assert!(listed[3]["reason"]
        .as_str()
        .unwrap()
        .starts_with("duration_ms"));

    let catalog = current(&options).await;
    assert_eq!(catalog.len(), 300);
    let s3 = catalog.iter().find(|song| song.0 == "s3").unwrap();
    assert_eq!(
        (s3.1.as_str(), s3.2.as_str(), s3.3),
        ("Song 3", "rock", 120_003)
    );
    assert_eq!(stored_rows(&options).await, 300);

    // The same file again: nothing is new, nothing is inserted.
    let again = load(&options, &ndjson, &[]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("0 new, 0 changed, 300 unchanged, 4 rejected; 0 rows inserted"),
        "{}",
        again.stderr
    );
    assert_eq!(stored_rows(&options).await, 300);

    // A CSV with one song changed, one unchanged and one new; columns in another order.
    let csv = dir.path().join("update.csv");
    std::fs::write(
        &csv,
        "title,song_id,artist_id,artist_name,album,genre,duration_ms\n\
         Song 3 (Remastered),s3,a3,Artist 3,,Rock,120003\n\
         Song 4,s4,a4,Artist 4,Album 0,Pop,120004\n\
         \"New, Song\",s-new,a9,Artist 9,,Jazz,\n",
    )
    .unwrap();
    let update = load(&options, &csv, &["--max-rejected", "0"]);
    assert_eq!(update.code, Some(0), "{}", update.stderr);
    assert!(
        update
            .stderr
            .contains("1 new, 1 changed, 1 unchanged, 0 rejected; 2 rows inserted"),
        "{}",
        update.stderr
    );
    let catalog = current(&options).await;
    assert_eq!(catalog.len(), 301);
    let s3 = catalog.iter().find(|song| song.0 == "s3").unwrap();
    assert_eq!(s3.1, "Song 3 (Remastered)");
    let new = catalog.iter().find(|song| song.0 == "s-new").unwrap();
    assert_eq!(
        (new.1.as_str(), new.2.as_str(), new.3),
        ("New, Song", "jazz", 0)
    );

    // More rejected lines than allowed: the valid ones load, the run fails.
    let strict = load(&options, &ndjson, &["--max-rejected", "3"]);
    assert_eq!(strict.code, Some(1), "{}", strict.stderr);
    assert!(
        strict
            .stderr
            .contains("4 lines were rejected, more than --max-rejected 3"),
        "{}",
        strict.stderr
    );
    // s3 is back to the file's entry.
    let catalog = current(&options).await;
    assert_eq!(
        catalog.iter().find(|song| song.0 == "s3").unwrap().1,
        "Song 3"
    );

    // A file that is not there, and a CSV without a required column: clear errors, exit 1.
    let missing = load(&options, &dir.path().join("nope.ndjson"), &[]);
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("nope.ndjson"), "{}", missing.stderr);
    let headless = dir.path().join("headless.csv");
    std::fs::write(&headless, "song_id,title\ns1,t\n").unwrap();
    let refused = load(&options, &headless, &[]);
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("no `artist_id` column"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_songs_and_top_lists_with_their_metadata() {
    let options = stack::fresh_database("catalog_api").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("songs.ndjson");
    std::fs::write(&file, (0..5).map(song_line).collect::<Vec<_>>().join("\n")).unwrap();
    let loaded = load(&options, &file, &[]);
    assert_eq!(loaded.code, Some(0), "{}", loaded.stderr);
    let minute = now() - chrono::Duration::seconds(now().timestamp() % 60);
    // s0..s4 are in the catalog, s9 is not.
    let rows: Vec<MinuteRow> = [("s1", 5), ("s2", 3), ("s9", 4)]
        .into_iter()
        .map(|(song, plays)| MinuteRow {
            user_id: "listener".to_owned(),
            song_id: song.to_owned(),
            minute,
            plays,
            topic: "plays".to_owned(),
            kafka_partition: 0,
            flush_offset: 1,
            claim_id: 0,
            flush_seq: 0,
            region: String::new(),
            chart_plays: 0,
        })
        .collect();
    topk_tests::committed::write_committed(&options, &rows).await;
    let app = fixed_app(&config(options.clone()));

    let song = get(&app, "/v1/songs/s2", None).await;
    assert_eq!(song.status, StatusCode::OK, "{}", song.body);
    assert_eq!(
        song.body,
        json!({"song_id": "s2", "title": "Song 2", "artist_id": "a2", "artist_name": "Artist 2",
               "album": "Album 0", "genre": "hip-hop", "duration_ms": 120_002})
    );
    let odd = get(&app, "/v1/songs/s1", None).await;
    assert_eq!(odd.body["album"], Value::Null);
    assert_error(
        &get(&app, "/v1/songs/s9", None).await,
        StatusCode::NOT_FOUND,
        "song_not_found",
    );
    assert_error(
        &get(&app, "/v1/songs/s%07", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_song_id",
    );
    assert_error(
        &get(&app, "/v1/songs/s1?x=1", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );

    // Without include, no metadata; with it, each song's entry or null.
    let plain = get(&app, "/v1/users/listener/top-songs", None).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.body);
    assert!(plain.body["songs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|song| song.get("metadata").is_none()));
    let rich = get(&app, "/v1/users/listener/top-songs?include=metadata", None).await;
    assert_eq!(rich.status, StatusCode::OK, "{}", rich.body);
    let songs = rich.body["songs"].as_array().unwrap();
    let summary: Vec<(&str, u64, Value)> = songs
        .iter()
        .map(|song| {
            (
                song["song_id"].as_str().unwrap(),
                song["plays"].as_u64().unwrap(),
                song["metadata"]["title"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("s1", 5, json!("Song 1")),
            ("s9", 4, Value::Null),
            ("s2", 3, json!("Song 2"))
        ]
    );
    assert!(songs[1].get("metadata").is_some_and(Value::is_null));
    assert_ne!(plain.headers["etag"], rich.headers["etag"]);
    assert_error(
        &get(&app, "/v1/users/listener/top-songs?include=lyrics", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}
