//! The stack itself: Kafka consumer groups and committed offsets, ClickHouse through the
//! official client, S3 against Garage, and the schema migrations.

use std::collections::BTreeSet;
use std::time::Duration;

use clickhouse::Row;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use topk_core::migrate;
use topk_core::schema::MinuteRow;
use topk_tests::stack;

fn group_consumer(group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", stack::kafka_brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

async fn receive(consumer: &StreamConsumer, count: usize) -> Vec<(i64, String)> {
    let mut received = Vec::new();
    while received.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a message within 30 s")
            .expect("no consumer error");
        let payload = String::from_utf8(message.payload().unwrap_or_default().to_vec()).unwrap();
        received.push((message.offset(), payload));
    }
    received
}

#[tokio::test]
async fn kafka_consumer_group_resumes_from_committed_offset() {
    let topic = stack::fresh_topic("kafka_consumer_group", 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack::kafka_brokers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for index in 0..10 {
        let payload = format!("message-{index}");
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }
    let group = format!("{topic}-group");
    let first = group_consumer(&group);
    first.subscribe(&[&topic]).unwrap();
    let received = receive(&first, 6).await;
    assert_eq!(received[0], (0, "message-0".to_owned()));
    // Commit "processed up to offset 5": the next offset to read is 6.
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(6))
        .unwrap();
    first.commit(&offsets, CommitMode::Sync).unwrap();
    drop(first);

    let second = group_consumer(&group);
    second.subscribe(&[&topic]).unwrap();
    let rest = receive(&second, 4).await;
    let offsets_read: Vec<i64> = rest.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets_read, vec![6, 7, 8, 9]);
    assert_eq!(rest[3].1, "message-9");
    let committed = second
        .committed_offsets(
            {
                let mut list = TopicPartitionList::new();
                list.add_partition(&topic, 0);
                list
            },
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(
        committed.find_partition(&topic, 0).unwrap().offset(),
        Offset::Offset(6)
    );
}

#[tokio::test]
async fn clickhouse_insert_and_query_minute_rows() {
    let options = stack::fresh_database("clickhouse_insert_and_query").await;
    let client = options.client();
    let minute = chrono::DateTime::from_timestamp(1_795_521_600, 0).unwrap();
    let mut insert = client.insert::<MinuteRow>("plays_minute").await.unwrap();
    for (song, plays) in [("song-a", 3u64), ("song-b", 5), ("song-a", 4)] {
        insert
            .write(&MinuteRow {
                user_id: "user-1".to_owned(),
                song_id: song.to_owned(),
                minute,
                plays,
                topic: "plays".to_owned(),
                kafka_partition: 0,
                flush_offset: 10,
                claim_id: 0,
                flush_seq: 0,
                region: String::new(),
                chart_plays: 0,
            })
            .await
            .unwrap();
    }
    insert.end().await.unwrap();

    #[derive(Debug, Row, Deserialize, Serialize, PartialEq)]
    struct SongPlays {
        song_id: String,
        plays: u64,
    }
    let top: Vec<SongPlays> = client
        .query(
            "SELECT song_id, sum(plays) AS plays FROM plays_minute WHERE user_id = ? \
             GROUP BY song_id ORDER BY plays DESC, song_id",
        )
        .bind("user-1")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        top,
        vec![
            SongPlays {
                song_id: "song-a".to_owned(),
                plays: 7
            },
            SongPlays {
                song_id: "song-b".to_owned(),
                plays: 5
            },
        ]
    );
    let rows_back: Vec<MinuteRow> = client
        .query("SELECT ?fields FROM plays_minute WHERE song_id = 'song-b'")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows_back.len(), 1);
    assert_eq!(rows_back[0].minute, minute);
}

#[tokio::test]
async fn s3_put_get_list_against_garage() {
    let client = stack::s3_client().await;
    let bucket = stack::s3_bucket();
    let prefix = format!(
        "it/foundation/{}/",
        chrono::Utc::now().timestamp_nanos_opt().unwrap()
    );
    let bodies = [("a.txt", "first object"), ("b.txt", "second object")];
    for (name, body) in bodies {
        client
            .put_object()
            .bucket(&bucket)
            .key(format!("{prefix}{name}"))
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .expect("put object");
    }
    let fetched = client
        .get_object()
        .bucket(&bucket)
        .key(format!("{prefix}b.txt"))
        .send()
        .await
        .expect("get object");
    let bytes = fetched.body.collect().await.unwrap().into_bytes();
    assert_eq!(&bytes[..], b"second object");
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(&prefix)
        .send()
        .await
        .expect("list objects");
    let keys: BTreeSet<String> = listed
        .contents()
        .iter()
        .filter_map(|object| object.key().map(str::to_owned))
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([format!("{prefix}a.txt"), format!("{prefix}b.txt")])
    );
}

#[derive(Debug, Row, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct ColumnInfo {
    table: String,
    name: String,
    #[serde(rename = "type")]
    column_type: String,
}

async fn schema_of(client: &clickhouse::Client, database: &str) -> Vec<ColumnInfo> {
    client
        .query(
            "SELECT table, name, type FROM system.columns WHERE database = ? \
             ORDER BY table, name",
        )
        .bind(database)
        .fetch_all()
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_twice_give_the_same_schema() {
    let options = stack::fresh_database("migrations_twice").await;
    let client = options.client();
    let after_first = schema_of(&client, &options.clickhouse_database).await;
    let second = migrate::migrate(&options).await.unwrap();
    assert!(second.applied.is_empty(), "{second:?}");
    assert_eq!(second.already_applied.len(), migrate::MIGRATIONS.len());
    let after_second = schema_of(&client, &options.clickhouse_database).await;
    assert_eq!(after_first, after_second);
    assert_eq!(
        migrate::applied_version(&client).await.unwrap(),
        Some(migrate::latest_version())
    );

    let columns_of = |table: &str| -> Vec<String> {
        after_first
            .iter()
            .filter(|column| column.table == table)
            .map(|column| format!("{} {}", column.name, column.column_type))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let expect = |table: &str, columns: &[&str]| {
        let mut expected: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        expected.sort();
        assert_eq!(columns_of(table), expected, "columns of {table}");
    };
    expect(
        "plays_minute",
        &[
            "user_id String",
            "song_id String",
            "minute DateTime('UTC')",
            "plays UInt64",
            "topic String",
            "kafka_partition UInt32",
            "flush_offset UInt64",
            "claim_id UInt64",
            "flush_seq UInt64",
            "region String",
            "chart_plays UInt64",
        ],
    );
    expect(
        "songs",
        &[
            "song_id String",
            "title String",
            "artist_id String",
            "artist_name String",
            "album String",
            "genre String",
            "duration_ms UInt32",
            "version UInt64",
            "loaded_at DateTime('UTC')",
        ],
    );
    expect(
        "daily_top",
        &[
            "day Date",
            "user_id String",
            "rank UInt16",
            "song_id String",
            "plays UInt64",
            "user_songs UInt64",
            "user_truncated UInt8",
            "user_cutoff_plays UInt64",
            "snapshot_id UInt64",
        ],
    );
    assert!(!columns_of("ingest_checkpoints").is_empty());
    assert!(!columns_of("rollup_progress").is_empty());
    assert!(!columns_of("ingest_claims").is_empty());
    assert!(!columns_of("flush_commits").is_empty());
    assert!(!columns_of("schema_migrations").is_empty());
}

/// A database migrated before schema 3 (minute rows tagged with flush offsets, checkpoints in
/// `ingest_checkpoints`, daily top lists without snapshots) is upgraded in place: its rows
/// count up to each partition's last checkpoint (rows of a flush that never checkpointed do
/// not), the first claim of a partition resumes exactly at that checkpoint, and days rolled up
/// before schema 4 are read from minute rows until rolled up again.
#[tokio::test]
async fn schema_2_databases_upgrade_in_place() {
    let options = stack::fresh_database("schema_2_upgrade").await;
    let client = options.client();
    // Back to schema 2: drop what migrations 3 and 4 made, re-create the old tables.
    client
        .query("DROP DATABASE IF EXISTS `topk_test_schema_2_upgrade`")
        .execute()
        .await
        .unwrap();
    options
        .server_client()
        .query("CREATE DATABASE `topk_test_schema_2_upgrade`")
        .execute()
        .await
        .unwrap();
    for migration in &topk_core::migrate::MIGRATIONS[..2] {
        for statement in topk_core::migrate::statements(migration.sql) {
            client.query(&statement).execute().await.unwrap();
        }
    }
    client
        .query(
            "CREATE TABLE schema_migrations (version UInt32, name String, checksum String, \
             applied_at DateTime('UTC')) ENGINE = MergeTree ORDER BY version",
        )
        .execute()
        .await
        .unwrap();
    for migration in &topk_core::migrate::MIGRATIONS[..2] {
        client
            .query("INSERT INTO schema_migrations VALUES (?, ?, ?, now())")
            .bind(migration.version)
            .bind(migration.name)
            .bind(topk_core::migrate::checksum(migration.sql))
            .execute()
            .await
            .unwrap();
    }
    // Schema-2 data: partition 0 checkpointed through offset 200 (rows of offsets 150 and
    // 200 count, a crashed flush's row at 260 does not); partition 1 through 50.
    client
        .query(
            "INSERT INTO plays_minute (user_id, song_id, minute, plays, topic, kafka_partition, \
             flush_offset) VALUES ('u', 'a', '2026-11-20 10:00:00', 3, 'plays', 0, 150), \
             ('u', 'a', '2026-11-20 10:00:00', 2, 'plays', 0, 200), \
             ('u', 'b', '2026-11-20 10:01:00', 9, 'plays', 0, 260), \
             ('v', 'c', '2026-11-20 11:00:00', 4, 'plays', 1, 50)",
        )
        .execute()
        .await
        .unwrap();
    client
        .query(
            "INSERT INTO ingest_checkpoints VALUES \
             ('plays', 0, 150, 120, 1000, 10, 1, 'topk-aggregator', 'old', now()), \
             ('plays', 0, 200, 180, 2000, 10, 1, 'topk-aggregator', 'old', now()), \
             ('plays', 1, 50, 40, 3000, 5, 1, 'topk-aggregator', 'old', now())",
        )
        .execute()
        .await
        .unwrap();
    let report = topk_core::migrate::migrate(&options).await.unwrap();
    assert_eq!(
        report.applied,
        (3..=migrate::latest_version()).collect::<Vec<u32>>()
    );
    assert_eq!(
        topk_core::migrate::migrate(&options)
            .await
            .unwrap()
            .already_applied,
        (1..=migrate::latest_version()).collect::<Vec<u32>>()
    );

    #[derive(clickhouse::Row, serde::Deserialize, Debug, PartialEq)]
    struct Sum {
        user_id: String,
        song_id: String,
        plays: u64,
    }
    let counted: Vec<Sum> = client
        .query(
            "SELECT user_id, song_id, sum(plays) AS plays FROM plays_minute_committed \
             GROUP BY user_id, song_id ORDER BY user_id, song_id",
        )
        .fetch_all()
        .await
        .unwrap();
    let sum = |user: &str, song: &str, plays| Sum {
        user_id: user.to_owned(),
        song_id: song.to_owned(),
        plays,
    };
    assert_eq!(counted, vec![sum("u", "a", 5), sum("v", "c", 4)]);
    let owner = topk_core::claims::ClaimOwner {
        consumer_group: "topk-aggregator".to_owned(),
        topic: "plays".to_owned(),
        worker: "new".to_owned(),
    };
    let claim = topk_core::claims::claim_partition(&client, &owner, 0)
        .await
        .unwrap();
    assert_eq!(
        claim.resume,
        topk_core::claims::ResumePoint {
            counted_through: Some(200),
            read_from: Some(180),
            watermark_ms: 2000,
        }
    );
    assert_eq!(claim.parent_max_seq, 200);
    // Still the same rows count once the legacy claim is superseded.
    let still: u64 = client
        .query("SELECT sum(plays) FROM plays_minute_committed")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(still, 9);
    // Another consumer group against this database is refused.
    let canary = topk_core::claims::ClaimOwner {
        consumer_group: "canary".to_owned(),
        ..owner
    };
    let refused = topk_core::claims::claim_partition(&client, &canary, 1)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("one database serves one aggregator group"),
        "{refused}"
    );
}

/// Migration 6 rebuilds `plays_minute` and `daily_top` with `index_granularity = 256`: every
/// row is kept, and a rebuild interrupted at any step is finished by running the migrations
/// again — here `plays_minute` between its two renames (copied, old name moved away) and
/// `daily_top` in the middle of its copy (part of the rows in the new table).
#[tokio::test]
async fn schema_5_databases_rebuild_with_granularity_256_even_after_a_crash() {
    let options = stack::fresh_database("schema_5_rebuild").await;
    let client = options.client();
    client
        .query("DROP DATABASE IF EXISTS `topk_test_schema_5_rebuild`")
        .execute()
        .await
        .unwrap();
    options
        .server_client()
        .query("CREATE DATABASE `topk_test_schema_5_rebuild`")
        .execute()
        .await
        .unwrap();
    client
        .query(
            "CREATE TABLE schema_migrations (version UInt32, name String, checksum String, \
             applied_at DateTime('UTC')) ENGINE = MergeTree ORDER BY version",
        )
        .execute()
        .await
        .unwrap();
    for migration in &topk_core::migrate::MIGRATIONS[..5] {
        for statement in topk_core::migrate::statements(migration.sql) {
            client.query(&statement).execute().await.unwrap();
        }
        client
            .query("INSERT INTO schema_migrations VALUES (?, ?, ?, now())")
            .bind(migration.version)
            .bind(migration.name)
            .bind(topk_core::migrate::checksum(migration.sql))
            .execute()
            .await
            .unwrap();
    }
    let granularity = |table: &'static str| {
        let client = client.clone();
        async move {
            let create: String = client
                .query(&format!("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = '{table}'"))
                .fetch_one()
                .await
                .unwrap();
            create
        }
    };
    assert!(granularity("plays_minute")
        .await
        .contains("index_granularity = 8192"));
    client
        .query(
            "INSERT INTO plays_minute (user_id, song_id, minute, plays, topic, kafka_partition, \
             flush_offset, claim_id, flush_seq) SELECT concat('u', toString(number % 97)), \
             concat('s', toString(number % 13)), toDateTime('2026-11-20 00:00:00') + number * 7, \
             1 + number % 3, 'plays', 0, number, number % 2, if(number % 2 = 0, 0, number) \
             FROM system.numbers LIMIT 20000",
        )
        .execute()
        .await
        .unwrap();
    client
        .query(
            "INSERT INTO daily_top SELECT toDate('2026-11-20'), concat('u', toString(number % 97)), \
             toUInt16(1 + intDiv(number, 97)), concat('s', toString(number)), 5, 60, 1, 2, 7 \
             FROM system.numbers LIMIT 4850",
        )
        .execute()
        .await
        .unwrap();
    let fingerprint = |table: &'static str| {
        let client = client.clone();
        async move {
            client
                // The columns of schema 5 (later migrations add columns).
                .query(&format!(
                    "SELECT count(), sum(cityHash64({})) FROM {table}",
                    if table == "plays_minute" {
                        "user_id, song_id, minute, plays, topic, kafka_partition, flush_offset, \
                         claim_id, flush_seq"
                    } else {
                        "*"
                    }
                ))
                .fetch_one::<(u64, u64)>()
                .await
                .unwrap()
        }
    };
    let plays_before = fingerprint("plays_minute").await;
    // Without claims, the rows of claim 0's flush 0 count (half of them).
    let committed = || {
        let client = client.clone();
        async move {
            client
                .query("SELECT count() FROM plays_minute_committed")
                .fetch_one::<u64>()
                .await
                .unwrap()
        }
    };
    let committed_before = committed().await;
    assert_eq!(committed_before, 10_000);
    let daily_before = fingerprint("daily_top").await;
    // The crash: migration 6's statements ran; plays_minute was copied and renamed away, not
    // yet replaced; daily_top's copy stopped half-way.
    for statement in topk_core::migrate::statements(topk_core::migrate::MIGRATIONS[5].sql) {
        client.query(&statement).execute().await.unwrap();
    }
    for statement in [
        "INSERT INTO plays_minute_rebuilt SELECT * FROM plays_minute",
        "RENAME TABLE plays_minute TO plays_minute_before_rebuild",
        "INSERT INTO daily_top_rebuilt SELECT * FROM daily_top LIMIT 1000",
    ] {
        client.query(statement).execute().await.unwrap();
    }
    let report = topk_core::migrate::migrate(&options).await.unwrap();
    // The rebuild finishes (6), then the migrations after it apply.
    assert_eq!(
        report.applied,
        (6..=migrate::latest_version()).collect::<Vec<_>>()
    );
    assert_eq!(fingerprint("plays_minute").await, plays_before);
    assert_eq!(fingerprint("daily_top").await, daily_before);
    // Rows from before schema 9 have no region and count for the charts in full.
    let (regions, short): (u64, u64) = client
        .query("SELECT countIf(region != ''), countIf(chart_plays != plays) FROM plays_minute")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((regions, short), (0, 0));
    for table in ["plays_minute", "daily_top"] {
        assert!(
            granularity(table).await.contains("index_granularity = 256"),
            "{table}"
        );
    }
    let leftovers: Vec<String> = client
        .query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() \
             AND (endsWith(name, '_rebuilt') OR endsWith(name, '_before_rebuild'))",
        )
        .fetch_all()
        .await
        .unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The views read the new tables.
    assert_eq!(committed().await, committed_before);
    assert!(topk_core::migrate::migrate(&options)
        .await
        .unwrap()
        .applied
        .is_empty());
}
