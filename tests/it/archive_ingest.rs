//! The aggregator's raw-event archive end to end: every consumed offset reaches S3 exactly
//! once per segment, and every malformed payload is there byte for byte.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::Utc;
use topk_archive::reader::plan_partitions;
use topk_loadgen::generate::{generate, GeneratorSpec, Truth};
use topk_tests::pipeline::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_holds_every_consumed_offset_once_and_malformed_payloads_verbatim() {
    let pipeline = Pipeline::new("archive_ingest", 3).await;
    let mut spec = GeneratorSpec::new(30_000, Utc::now());
    spec.seed = 77;
    spec.malformed_share = 0.02;
    spec.duplicate_share = 0.02;
    let messages = generate(&spec);
    pipeline.produce(&messages).await;
    let mut aggregator = pipeline.start_aggregator("archive", &[]);
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));

    let (reader, segments) = pipeline.archive_segments().await;
    assert!(
        !segments.is_empty(),
        "no segment under {}",
        pipeline.archive_prefix()
    );

    // Within each segment (one flush of one partition): consecutive offsets, each once.
    let mut archived_payloads: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut offsets_by_partition: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for segment in &segments {
        let records = reader.read_segment(segment).await.unwrap();
        let offsets: Vec<i64> = records.iter().map(|record| record.offset).collect();
        let expected: Vec<i64> = (segment.first_offset..=segment.last_offset).collect();
        assert_eq!(offsets, expected, "segment {}", segment.object_key);
        for record in records {
            assert_eq!(record.partition, segment.partition);
            offsets_by_partition
                .entry(record.partition)
                .or_default()
                .insert(record.offset);
            *archived_payloads.entry(record.payload).or_default() += 1;
        }
    }
    // Across segments: every produced offset of every partition, none missing.
    let ends = pipeline.end_offsets();
    for (partition, end) in &ends {
        let offsets = offsets_by_partition
            .get(partition)
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            offsets.len() as i64,
            *end,
            "partition {partition} archived offsets: first {:?} last {:?}, all ends {ends:?}",
            offsets.iter().next(),
            offsets.iter().next_back()
        );
        assert_eq!(offsets.iter().next_back().copied(), Some(end - 1));
    }
    // The reader's merged view: each offset exactly once, in order.
    for (partition, plan) in plan_partitions(segments.clone()) {
        let records = reader.read_partition(&plan).await.unwrap();
        let offsets: Vec<i64> = records.iter().map(|record| record.offset).collect();
        assert_eq!(offsets, (0..ends[&partition]).collect::<Vec<_>>());
    }
    // Every malformed payload, byte for byte.
    let malformed: Vec<&Vec<u8>> = messages
        .iter()
        .filter(|message| matches!(message.truth, Truth::Malformed(_)))
        .map(|message| &message.payload)
        .collect();
    assert!(malformed.len() > 300);
    for payload in malformed {
        assert!(
            archived_payloads.contains_key(payload),
            "malformed payload missing from the archive: {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    assert_eq!(
        archived_payloads.values().sum::<usize>(),
        messages.len(),
        "archived records"
    );
}
