//! The raw-event archive against the real Garage and ClickHouse: segments come back byte for
//! byte, overlapping replays are read with each offset once, and the restore rebuilds the
//! minute table exactly (and the same way twice).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::Row;
use serde::Deserialize;
use topk_archive::restore::{
    claim_committed_partitions, claim_replayed_partitions, counted_up_to, rebuild_minute_counts,
    restore_days, MinuteCounts, RebuildRequest, RebuiltMinutes, RestoredDay,
};
use topk_archive::{ArchiveReader, ArchiveRecord, ArchiveSegment, ArchiveWriter, S3Options};
use topk_core::claims::ClaimOwner;
use topk_core::committed::CommittedFlushes;
use topk_core::coordination::Coordinator;
use topk_core::db::ClickHouseOptions;
use topk_core::schema::MinuteRow;
use topk_loadgen::generate::{
    expected_minute_counts, generate, GeneratedMessage, GeneratorSpec, Truth,
};
use topk_tests::stack;

/// Archive options for one test: the stack's bucket under a prefix no other run uses.
fn archive_options(test_name: &str) -> S3Options {
    let nanos = Utc::now().timestamp_nanos_opt().expect("time in range");
    let mut options = S3Options::new(
        stack::s3_bucket(),
        format!("it/archive/{test_name}/{nanos}"),
    );
    options.s3_endpoint = Some(stack::setting("TOPK_S3_ENDPOINT", "http://127.0.0.1:13900"));
    options.s3_region = Some(stack::setting("TOPK_S3_REGION", "garage"));
    options.s3_force_path_style = true;
    options
}

/// The production client (AWS credential chain) when the stack's credentials are in the
/// environment, as `scripts/test.sh` exports them; else the same client with the credentials
/// the harness reads from the stack's env file.
async fn s3_client(options: &S3Options) -> aws_sdk_s3::Client {
    if std::env::var("AWS_ACCESS_KEY_ID").is_ok() {
        return options.client().await;
    }
    let credentials = aws_sdk_s3::config::Credentials::new(
        stack::setting("AWS_ACCESS_KEY_ID", ""),
        stack::setting("AWS_SECRET_ACCESS_KEY", ""),
        None,
        None,
        "topk-stack",
    );
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .credentials_provider(credentials);
    options.client_from(loader).await
}

async fn writer_and_reader(options: &S3Options) -> (ArchiveWriter, ArchiveReader) {
    let client = s3_client(options).await;
    (
        ArchiveWriter::new(client.clone(), &options.s3_bucket, &options.s3_prefix),
        ArchiveReader::new(client, &options.s3_bucket, &options.s3_prefix),
    )
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

/// Writes `records[first..=last]` (by index) as one segment.
async fn put(
    writer: &ArchiveWriter,
    topic: &str,
    records: &[ArchiveRecord],
    first: usize,
    last: usize,
) {
    let partition = records[first].partition;
    writer
        .put_segment(topic, partition, &records[first..=last])
        .await
        .unwrap_or_else(|error| panic!("put segment {first}..={last}: {error}"));
}

#[tokio::test]
async fn segments_round_trip_byte_for_byte_with_malformed_and_binary_payloads() {
    let options = archive_options("round_trip");
    let (writer, reader) = writer_and_reader(&options).await;
    let spec = {
        let mut spec = GeneratorSpec::new(400, at("2026-11-24T12:00:00Z"));
        spec.malformed_share = 0.3;
        spec
    };
    let mut payloads: Vec<(Option<Vec<u8>>, Vec<u8>)> = generate(&spec)
        .into_iter()
        .map(|message| (Some(message.key.into_bytes()), message.payload))
        .collect();
    payloads.push((None, vec![0xff, 0xfe, 0x00, b'\n', b'"', 0x80]));
    payloads.push((
        Some(vec![0xc3]),
        b"{\"event_id\":\"e\",\"user_id\":".to_vec(),
    ));
    payloads.push((None, Vec::new()));
    payloads.push((None, "line\nbreak \u{0} nul \u{1F3B5}".as_bytes().to_vec()));
    let records: Vec<ArchiveRecord> = payloads
        .into_iter()
        .enumerate()
        .map(|(index, (key, payload))| ArchiveRecord {
            partition: 4,
            offset: 1_000 + index as i64 * 2, // gaps, like transaction markers leave
            timestamp_ms: Some(at("2026-11-24T12:00:00Z").timestamp_millis() + index as i64),
            key,
            payload,
        })
        .collect();
    let malformed = generate(&spec)
        .iter()
        .filter(|message| matches!(message.truth, Truth::Malformed(_)))
        .count();
    assert!(
        malformed > 50,
        "the batch holds malformed payloads: {malformed}"
    );

    let key = writer.put_segment("plays", 4, &records).await.unwrap();
    assert_eq!(
        key.object_key,
        format!(
            "{}/plays/date=2026-11-24/partition=00004/{:020}-{:020}.ndjson.zst",
            options.s3_prefix,
            1_000,
            records.last().unwrap().offset
        )
    );
    // A retry of the same flush writes the same object again, not a second one.
    let again = writer.put_segment("plays", 4, &records).await.unwrap();
    assert_eq!(again, key);

    let stored = s3_client(&options)
        .await
        .get_object()
        .bucket(&options.s3_bucket)
        .key(&key.object_key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let expected_bytes = ArchiveSegment::new("plays", 4, &records).unwrap().encode();
    assert_eq!(
        &stored[..],
        &expected_bytes[..],
        "stored object is the deterministic encoding"
    );

    let listed = reader
        .list_segments("plays", day("2026-11-23")..=day("2026-11-25"))
        .await
        .unwrap();
    assert_eq!(listed, vec![key.clone()]);
    let read_back = reader.read_segment(&key).await.unwrap();
    assert_eq!(read_back, records, "every payload and key byte for byte");
}

#[tokio::test]
async fn overlapping_segments_are_read_with_each_offset_once() {
    let options = archive_options("overlap");
    let (writer, reader) = writer_and_reader(&options).await;
    // Consumed across midnight, so the segments land under two object dates.
    let start_ms = at("2026-11-23T23:59:59.950Z").timestamp_millis();
    let partition_records = |partition: i32, count: usize| -> Vec<ArchiveRecord> {
        (0..count)
            .map(|index| ArchiveRecord {
                partition,
                offset: index as i64,
                timestamp_ms: Some(start_ms + index as i64),
                key: Some(format!("user-{index}").into_bytes()),
                payload: format!("{{\"partition\":{partition},\"offset\":{index}}}").into_bytes(),
            })
            .collect()
    };
    let zero = partition_records(0, 100);
    let one = partition_records(1, 20);
    // The original flushes, then a crash replay with other boundaries, then more flushes.
    for (first, last) in [
        (0, 29),
        (30, 44),
        (20, 79),
        (40, 49),
        (45, 60),
        (61, 99),
        (99, 99),
    ] {
        put(&writer, "plays", &zero, first, last).await;
    }
    for (first, last) in [(0, 6), (7, 19), (3, 12)] {
        put(&writer, "plays", &one, first, last).await;
    }
    // Another topic under the same prefix is not read.
    put(&writer, "other", &partition_records(0, 5), 0, 4).await;

    let segments = reader
        .list_segments("plays", day("2026-11-23")..=day("2026-11-24"))
        .await
        .unwrap();
    assert_eq!(segments.len(), 10);
    let dates: BTreeSet<NaiveDate> = segments.iter().map(|segment| segment.date).collect();
    assert_eq!(
        dates,
        BTreeSet::from([day("2026-11-23"), day("2026-11-24")])
    );
    let only_first_date = reader
        .list_segments("plays", day("2026-11-23")..=day("2026-11-23"))
        .await
        .unwrap();
    assert!(only_first_date.len() < segments.len() && !only_first_date.is_empty());

    let plans = topk_archive::reader::plan_partitions(segments);
    assert_eq!(plans.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert!(plans[&0].covered_segments >= 1, "{:?}", plans[&0]);
    assert_eq!(reader.read_partition(&plans[&0]).await.unwrap(), zero);
    assert_eq!(reader.read_partition(&plans[&1]).await.unwrap(), one);
}

/// One generated message as archived: its partition (by key, like Kafka) and offset.
struct ArchivedMessage {
    message: GeneratedMessage,
    record: ArchiveRecord,
}

/// Spreads generated messages over `partitions` by key, with offsets in order, consumed at
/// `now` plus a millisecond per message (so after every event's time, as live consumption is).
fn archive_messages(spec: &GeneratorSpec, partitions: i32) -> Vec<ArchivedMessage> {
    let mut next_offsets = vec![0i64; partitions as usize];
    generate(spec)
        .into_iter()
        .enumerate()
        .map(|(index, message)| {
            let hash = message.key.bytes().fold(17u32, |hash, byte| {
                hash.wrapping_mul(31).wrapping_add(u32::from(byte))
            });
            let partition = (hash % partitions as u32) as i32;
            let offset = next_offsets[partition as usize];
            next_offsets[partition as usize] += 1;
            let record = ArchiveRecord {
                partition,
                offset,
                timestamp_ms: Some(spec.now.timestamp_millis() + index as i64),
                key: Some(message.key.clone().into_bytes()),
                payload: message.payload.clone(),
            };
            ArchivedMessage { message, record }
        })
        .collect()
}

/// Archives each partition's records as segments with odd, overlapping boundaries (a replay
/// every third flush re-archives part of the previous one).
async fn write_with_odd_boundaries(
    writer: &ArchiveWriter,
    topic: &str,
    archived: &[ArchivedMessage],
    partitions: i32,
) -> usize {
    let mut segments = 0;
    for partition in 0..partitions {
        let records: Vec<ArchiveRecord> = archived
            .iter()
            .filter(|item| item.record.partition == partition)
            .map(|item| item.record.clone())
            .collect();
        let mut first = 0usize;
        let mut flush = 0usize;
        while first < records.len() {
            let length = [137, 61, 250, 13, 499][flush % 5];
            let last = (first + length - 1).min(records.len() - 1);
            put(writer, topic, &records, first, last).await;
            segments += 1;
            if flush % 3 == 2 && first > 40 {
                // The crash replay: from an earlier offset to past this flush's end.
                let replay_last = (last + 7).min(records.len() - 1);
                put(writer, topic, &records, first - 40, replay_last).await;
                segments += 1;
            }
            first = last + 1;
            flush += 1;
        }
    }
    segments
}

#[derive(Debug, Row, Deserialize, PartialEq, Eq)]
struct MinuteSum {
    user_id: String,
    song_id: String,
    minute_secs: u32,
    plays: u64,
}

async fn minute_sums(clickhouse: &ClickHouseOptions) -> MinuteCounts {
    let sums: Vec<MinuteSum> = clickhouse
        .client()
        .query(
            "SELECT user_id, song_id, toUInt32(minute) AS minute_secs, sum(plays) AS plays \
             FROM plays_minute_committed GROUP BY user_id, song_id, minute_secs",
        )
        .fetch_all()
        .await
        .unwrap();
    sums.into_iter()
        .map(|sum| {
            (
                (sum.user_id, sum.song_id, i64::from(sum.minute_secs)),
                sum.plays,
            )
        })
        .collect()
}

/// The committed minute rows, without the claim that wrote them (each restore claims anew).
async fn all_rows(clickhouse: &ClickHouseOptions) -> Vec<MinuteRow> {
    clickhouse
        .client()
        .query(
            "SELECT user_id, song_id, minute, plays, topic, kafka_partition, flush_offset, \
             toUInt64(0) AS claim_id, toUInt64(0) AS flush_seq, region, chart_plays \
             FROM plays_minute_committed \
             ORDER BY user_id, song_id, minute, kafka_partition, region, plays",
        )
        .fetch_all()
        .await
        .unwrap()
}

fn restore_owner() -> ClaimOwner {
    ClaimOwner {
        consumer_group: topk_tests::committed::TEST_GROUP.to_owned(),
        topic: "plays".to_owned(),
        worker: "restore-test".to_owned(),
    }
}

/// Replays `request`'s days and restores them as `topk-rollup restore` does: claims every
/// committed partition first (and counts each up to its commit), or, when nothing was ever
/// committed, every replayed partition.
async fn restore(
    clickhouse: &ClickHouseOptions,
    reader: &ArchiveReader,
    mut request: RebuildRequest,
) -> (RebuiltMinutes, Vec<RestoredDay>) {
    let client = clickhouse.client();
    let owner = restore_owner();
    let committed = CommittedFlushes::read(&client).await.unwrap();
    let mut commits =
        claim_committed_partitions(&client, &Coordinator::ClickHouse, &owner, &committed)
            .await
            .unwrap();
    request.counted_up_to = counted_up_to(&commits);
    let rebuilt = rebuild_minute_counts(reader, &request).await.unwrap();
    if commits.is_empty() {
        commits = claim_replayed_partitions(&client, &Coordinator::ClickHouse, &owner, &rebuilt)
            .await
            .unwrap();
    }
    let restored = restore_days(
        clickhouse,
        &Coordinator::ClickHouse,
        &rebuilt,
        &owner,
        &commits,
    )
    .await
    .unwrap();
    (rebuilt, restored)
}

fn generated_spec() -> GeneratorSpec {
    // Events from 23:56 to 00:06: two event days.
    let mut spec = GeneratorSpec::new(12_000, at("2026-11-24T00:06:00Z"));
    spec.users = 300;
    spec.songs = 800;
    spec.duplicate_share = 0.03;
    spec.malformed_share = 0.03;
    // Late retries fall outside the duplicate horizon (they count twice by the aggregator's
    // rules, once by the oracle): keep them out of the exact comparison.
    spec.late_share = 0.0;
    spec
}

#[tokio::test]
async fn restore_of_generated_events_is_exact_and_idempotent() {
    let options = archive_options("restore");
    let (writer, reader) = writer_and_reader(&options).await;
    let clickhouse = stack::fresh_database("archive_restore").await;
    let spec = generated_spec();
    let partitions = 3;
    let archived = archive_messages(&spec, partitions);
    let segments = write_with_odd_boundaries(&writer, "plays", &archived, partitions).await;
    assert!(segments > 3 * 15, "{segments} segments");
    let messages: Vec<GeneratedMessage> =
        archived.iter().map(|item| item.message.clone()).collect();
    let expected = expected_minute_counts(&messages);
    let event_days: BTreeSet<NaiveDate> = expected
        .keys()
        .map(|(_, _, minute)| DateTime::from_timestamp(*minute, 0).unwrap().date_naive())
        .collect();
    assert_eq!(
        event_days,
        BTreeSet::from([day("2026-11-23"), day("2026-11-24")])
    );

    let days = day("2026-11-22")..=day("2026-11-24");
    let (rebuilt, first_run) = restore(
        &clickhouse,
        &reader,
        RebuildRequest::new("plays", days.clone()),
    )
    .await;
    assert_eq!(rebuilt.totals(), expected);
    let records_read: u64 = rebuilt
        .partitions
        .values()
        .map(|minutes| minutes.records)
        .sum();
    assert_eq!(
        records_read,
        archived.len() as u64,
        "each offset replayed once"
    );

    assert_eq!(
        first_run
            .iter()
            .map(|restored| restored.day)
            .collect::<Vec<_>>(),
        vec![day("2026-11-22"), day("2026-11-23"), day("2026-11-24")]
    );
    assert_eq!(first_run[0].rows, 0);
    assert_eq!(minute_sums(&clickhouse).await, expected);
    let rows_after_first = all_rows(&clickhouse).await;
    let flush_offsets: BTreeMap<u32, u64> = rows_after_first
        .iter()
        .map(|row| (row.kafka_partition, row.flush_offset))
        .collect();
    for (partition, flush_offset) in &flush_offsets {
        let last = archived
            .iter()
            .filter(|item| item.record.partition == *partition as i32)
            .map(|item| item.record.offset)
            .max()
            .unwrap();
        assert_eq!(*flush_offset, last as u64, "partition {partition}");
    }

    // Again, from a fresh read: the same table, no row twice.
    let (_, second_run) = restore(&clickhouse, &reader, RebuildRequest::new("plays", days)).await;
    assert_eq!(second_run, first_run);
    assert_eq!(all_rows(&clickhouse).await, rows_after_first);

    // Restoring one day leaves the other untouched.
    restore(
        &clickhouse,
        &reader,
        RebuildRequest::new("plays", day("2026-11-24")..=day("2026-11-24")),
    )
    .await;
    assert_eq!(all_rows(&clickhouse).await, rows_after_first);
}

#[tokio::test]
async fn restore_counts_only_up_to_the_aggregator_checkpoints() {
    let options = archive_options("restore_checkpoints");
    let (writer, reader) = writer_and_reader(&options).await;
    let clickhouse = stack::fresh_database("archive_restore_checkpoints").await;
    let mut spec = generated_spec();
    spec.events = 4_000;
    spec.seed = 7;
    let archived = archive_messages(&spec, 2);
    write_with_odd_boundaries(&writer, "plays", &archived, 2).await;
    // The aggregator committed partition 0 up to offset 1200 (and once earlier) and never
    // partition 1: what it archived past a commit it counts itself when it replays.
    for flush_offset in [600, 1_200] {
        topk_tests::committed::commit_through(&clickhouse, "plays", 0, flush_offset).await;
    }
    let committed = CommittedFlushes::read(&clickhouse.client()).await.unwrap();
    assert_eq!(committed.counted_through(), BTreeMap::from([(0, 1_200)]));
    let (rebuilt, _) = restore(
        &clickhouse,
        &reader,
        RebuildRequest::new("plays", day("2026-11-23")..=day("2026-11-24")),
    )
    .await;
    assert_eq!(rebuilt.partitions[&0].last_offset, Some(1_200));

    let counted: Vec<GeneratedMessage> = archived
        .iter()
        .filter(|item| item.record.partition == 0 && item.record.offset <= 1_200)
        .map(|item| item.message.clone())
        .collect();
    let expected = expected_minute_counts(&counted);
    assert!(!expected.is_empty());
    assert_eq!(minute_sums(&clickhouse).await, expected);
    let offsets: BTreeSet<(u32, u64)> = all_rows(&clickhouse)
        .await
        .iter()
        .map(|row| (row.kafka_partition, row.flush_offset))
        .collect();
    assert_eq!(offsets, BTreeSet::from([(0, 1_200)]));
}

#[tokio::test]
async fn unreachable_s3_fails_fast_with_a_retryable_error() {
    let mut options = archive_options("unreachable");
    // A loopback port nothing listens on.
    options.s3_endpoint = Some("http://127.0.0.1:9".to_owned());
    options.s3_timeout_secs = 2;
    let writer = ArchiveWriter::new(
        s3_client(&options).await,
        &options.s3_bucket,
        &options.s3_prefix,
    );
    let record = ArchiveRecord {
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: None,
        payload: b"x".to_vec(),
    };
    let started = std::time::Instant::now();
    let error = writer.put_segment("plays", 0, &[record]).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(
        started.elapsed().as_secs() < 10,
        "failed after {:?}",
        started.elapsed()
    );
}
