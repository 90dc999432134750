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
        ],
    );
    assert!(!columns_of("ingest_checkpoints").is_empty());
    assert!(!columns_of("rollup_progress").is_empty());
    assert!(!columns_of("schema_migrations").is_empty());
}
