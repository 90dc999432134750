//! The S3 store down for 30 s in the middle of ingestion: the aggregator keeps consuming up
//! to its budget, checkpoints nothing past unarchived events, and recovers by itself; the
//! archive and the counts are complete and exact afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use topk_loadgen::generate::{expected_minute_counts, generate, GeneratorSpec};
use topk_tests::pipeline::{assert_keeps_running, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_of_30_seconds_loses_nothing_from_archive_or_counts() {
    let _exclusive = crate::exclusive().await;
    let pipeline = Pipeline::new("outage_s3", 3).await;
    let mut spec = GeneratorSpec::new(60_000, Utc::now());
    spec.seed = 8;
    let messages = generate(&spec);
    let expected = expected_minute_counts(&messages);
    let (before, during) = messages.split_at(20_000);

    let mut aggregator =
        pipeline.start_aggregator("outage-s3", &["--max-retry-backoff-ms", "2000"]);
    pipeline.produce_unbatched(before).await;
    pipeline.wait_until_drained(Duration::from_secs(120)).await;
    let checkpoints_before = pipeline.checkpoints().await;

    crate::stack_script(&["down", "s3"]);
    let outage_started = Instant::now();
    pipeline.produce_unbatched(during).await;
    assert_keeps_running(
        &mut aggregator,
        Duration::from_secs(30).saturating_sub(outage_started.elapsed()),
    )
    .await;
    // Nothing past the archived events was checkpointed while S3 was down.
    assert_eq!(
        pipeline.checkpoints().await,
        checkpoints_before,
        "checkpoints moved without the archive"
    );
    crate::stack_script(&["up", "s3"]);

    pipeline.wait_until_drained(Duration::from_secs(300)).await;
    pipeline.assert_counts_equal(&expected, &aggregator).await;
    assert_eq!(aggregator.terminate(Duration::from_secs(30)), Some(0));

    let (reader, segments) = pipeline.archive_segments().await;
    let mut offsets: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for segment in &segments {
        for record in reader.read_segment(segment).await.unwrap() {
            offsets
                .entry(record.partition)
                .or_default()
                .insert(record.offset);
        }
    }
    for (partition, end) in pipeline.end_offsets() {
        let archived = offsets.get(&partition).map_or(0, BTreeSet::len) as i64;
        assert_eq!(archived, end, "archived offsets of partition {partition}");
    }
}
