//! The OpenAPI document against the live server: schemathesis (PyPI; installed by
//! `scripts/install-schemathesis.sh`, which `scripts/test.sh` runs) generates requests from
//! `/openapi.json` — valid ones, and ones that break the schema on purpose — and checks every
//! answer against the document (status codes, headers, bodies, content types, no 5xx, rejected
//! invalid input, accepted valid input, 405 for other methods). The API binary runs with auth
//! off and with HS256 auth on (a token with the read-any scope), each against a database with
//! plays in it.

use std::time::Duration;

use topk_core::schema::{MinuteRow, SongRow, SONGS};
use topk_tests::process::ChildProcess;
use topk_tests::stack;

const SECRET: &str = "conformance-test-secret-of-32-bytes-or-more";

fn schemathesis() -> String {
    let path = std::env::var("TOPK_SCHEMATHESIS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/topk/schemathesis-venv/bin/schemathesis",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    assert!(
        std::path::Path::new(&path).exists(),
        "schemathesis not found at {path}: run scripts/install-schemathesis.sh (scripts/test.sh does)"
    );
    path
}

/// Starts `topk-api` on a free port with `extra` arguments; returns it and its port. The
/// query timeout is the loaded-CI one: a 503 for a slow query is not what schemathesis tests.
async fn start_api(database: &str, label: &str, extra: &[&str]) -> (ChildProcess, u16) {
    let port = topk_tests::process::free_port();
    let mut args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--clickhouse-url",
        &stack::clickhouse_url(),
        "--clickhouse-database",
        database,
        "--query-timeout-ms",
        &topk_tests::api::QUERY_TIMEOUT_MS.to_string(),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let child = ChildProcess::start("topk-api", label, &args, &[]);
    child
        .wait_until_listening(port, Duration::from_secs(10))
        .await;
    (child, port)
}

/// What schemathesis is told beyond the document: a chart request valid by the document alone
/// may still be a 400, for rules between parameters that OpenAPI 3.0 cannot state (`scope=region`
/// needs `region` and no other scope takes it; `as_of` at most 24 hours back). Every other
/// operation must accept every request the document allows.
const CONFIG: &str = r#"
[[operations]]
include-path = "/v1/charts/top-songs"
checks.positive_data_acceptance.expected-statuses = ["2XX", "3XX", "400", "401", "403", "404", "409", "429", "5XX"]
"#;

/// Runs schemathesis against the API on `port`; panics with its report unless it found nothing.
fn run_schemathesis(port: u16, headers: &[String]) {
    let config = std::env::temp_dir().join(format!("topk-schemathesis-{port}.toml"));
    std::fs::write(&config, CONFIG).expect("write the schemathesis config");
    let mut command = std::process::Command::new(schemathesis());
    command
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            "60",
            "--seed",
            "20261130",
        ])
        .env("NO_COLOR", "1")
        .current_dir(std::env::temp_dir());
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.output().expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}"
    );
    assert!(report.contains("passed"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_server_under_schemathesis() {
    let options = stack::fresh_database("api_conformance").await;
    let now = chrono::Utc::now();
    let minute = now - chrono::Duration::seconds(now.timestamp() % 60);
    let rows: Vec<MinuteRow> = (0..20)
        .map(|song| MinuteRow {
            user_id: format!("u{}", song % 3),
            song_id: format!("s{song}"),
            minute,
            plays: 1 + song,
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
    // Half of the songs are in the catalog: `include=metadata` answers entries and nulls.
    let mut insert = options
        .client()
        .insert::<SongRow>(SONGS)
        .await
        .expect("insert songs");
    for song in (0..20).step_by(2) {
        insert
            .write(&SongRow {
                song_id: format!("s{song}"),
                title: format!("Title {song}"),
                artist_id: "a1".to_owned(),
                artist_name: "Artist".to_owned(),
                album: if song % 4 == 0 {
                    String::new()
                } else {
                    "Album".to_owned()
                },
                genre: "pop".to_owned(),
                duration_ms: if song % 4 == 0 { 0 } else { 180_000 },
                version: 1,
                loaded_at: now,
            })
            .await
            .expect("write song");
    }
    insert.end().await.expect("insert songs");
    let database = options.clickhouse_database.clone();

    let (mut open, port) = start_api(&database, "api-conformance-open", &[]).await;
    run_schemathesis(port, &[]);
    assert_eq!(open.terminate(Duration::from_secs(10)), Some(0));

    let (mut guarded, port) = start_api(
        &database,
        "api-conformance-auth",
        &[
            "--auth-mode",
            "hs256",
            "--jwt-hs256-secret",
            SECRET,
            "--jwt-audience",
            "topk-api",
        ],
    )
    .await;
    let claims = serde_json::json!({
        "sub": "u0",
        "scope": "topk:read:any",
        "aud": "topk-api",
        "exp": now.timestamp() + 3600,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    run_schemathesis(port, &[format!("Authorization: Bearer {token}")]);
    assert_eq!(guarded.terminate(Duration::from_secs(10)), Some(0));
}
