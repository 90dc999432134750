//! Driving the aggregator end to end: produce generated events, run `topk-aggregator`
//! processes, wait until they drained the topic, and read back what they wrote.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use clickhouse::Row;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde::Deserialize;
use topk_core::coordination::Coordinator;
use topk_core::db::ClickHouseOptions;
use topk_core::keeper::KeeperOptions;
use topk_loadgen::generate::{
    expected_minute_counts, expected_row_counts, GeneratedMessage, MinuteCounts, RowCounts,
};

use crate::process::ChildProcess;
use crate::stack;

/// One test's pipeline: its database, topics and consumer group.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub clickhouse: ClickHouseOptions,
    pub topic: String,
    pub dead_letter_topic: String,
    pub group: String,
    pub partitions: i32,
    /// Where the aggregators claim and commit: ClickHouse (empty) or the cluster's ZooKeeper.
    pub keeper: KeeperOptions,
    /// The highest acknowledged offset per partition of everything produced so far.
    produced: std::sync::Arc<std::sync::Mutex<HashMap<i32, i64>>>,
}

impl Pipeline {
    pub async fn new(test_name: &str, partitions: i32) -> Self {
        let clickhouse = stack::fresh_database(test_name).await;
        Self::with_database(clickhouse, test_name, partitions).await
    }

    /// A pipeline on `clickhouse` with fresh topics named after the test.
    async fn with_database(
        clickhouse: ClickHouseOptions,
        test_name: &str,
        partitions: i32,
    ) -> Self {
        let topic = stack::fresh_topic(test_name, partitions).await;
        let dead_letter_topic = stack::fresh_topic(&format!("{test_name}_dlq"), 1).await;
        Self {
            clickhouse,
            group: format!("{topic}-aggregators"),
            topic,
            dead_letter_topic,
            partitions,
            keeper: KeeperOptions::default(),
            produced: Default::default(),
        }
    }

    /// A pipeline whose database is laid out on the ClickHouse cluster `cluster`, reached at
    /// `clickhouse_url` (one of its nodes), written with `insert_distributed_sync = 1` (a
    /// flush's rows are on their shards before its commit is written), claims and commits
    /// through the cluster's ZooKeeper (`keeper_hosts`), as production runs a cluster.
    pub async fn on_cluster(
        test_name: &str,
        partitions: i32,
        clickhouse_url: &str,
        cluster: &str,
        keeper_hosts: &str,
    ) -> Self {
        let clickhouse = stack::fresh_cluster_database(test_name, clickhouse_url, cluster).await;
        let mut pipeline = Self::with_database(clickhouse, test_name, partitions).await;
        // A root of its own: a test's database name is reused by its next run, its Keeper
        // nodes would outlive the database (the aggregator refuses such nodes).
        pipeline.keeper = KeeperOptions {
            keeper_hosts: keeper_hosts.to_owned(),
            keeper_root: format!("/topk-tests/{}", pipeline.topic),
        };
        pipeline
    }

    /// Where this pipeline's claims and commits are decided.
    pub fn coordinator(&self) -> Coordinator {
        Coordinator::new(&self.keeper, &self.clickhouse.clickhouse_database)
            .expect("valid keeper options")
    }

    /// This pipeline's ClickHouse options with another endpoint (another node of a cluster).
    pub fn through(&self, clickhouse_url: &str) -> Self {
        let mut other = self.clone();
        other.clickhouse.clickhouse_url = clickhouse_url.to_owned();
        other
    }

    /// Arguments for `topk-aggregator` with a short flush interval and no metrics port.
    pub fn aggregator_args(&self, extra: &[&str]) -> Vec<String> {
        self.aggregator_args_to(&self.clickhouse.clickhouse_url, extra)
    }

    /// [`Self::aggregator_args`] with another ClickHouse endpoint (a fault proxy's); a flag
    /// in `extra` replaces its default.
    pub fn aggregator_args_to(&self, clickhouse_url: &str, extra: &[&str]) -> Vec<String> {
        let defaults: Vec<String> = [
            "--kafka-brokers",
            &stack::kafka_brokers(),
            "--plays-topic",
            &self.topic,
            "--dead-letter-topic",
            &self.dead_letter_topic,
            "--kafka-group-id",
            &self.group,
            "--clickhouse-url",
            clickhouse_url,
            "--clickhouse-database",
            &self.clickhouse.clickhouse_database,
            "--flush-interval-ms",
            "500",
            "--metrics-listen",
            "",
            "--shutdown-timeout-ms",
            "20000",
            "--s3-endpoint",
            &stack::setting("TOPK_S3_ENDPOINT", "http://127.0.0.1:13900"),
            "--s3-region",
            &stack::setting("TOPK_S3_REGION", "garage"),
            "--s3-bucket",
            &stack::s3_bucket(),
            "--s3-force-path-style",
            "true",
            "--s3-prefix",
            &self.archive_prefix(),
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        let mut defaults = defaults;
        if self.keeper.enabled() {
            defaults.extend([
                "--keeper-hosts".to_owned(),
                self.keeper.keeper_hosts.clone(),
                "--keeper-root".to_owned(),
                self.keeper.keeper_root.clone(),
            ]);
        }
        if !self.clickhouse.clickhouse_cluster.is_empty() {
            defaults.extend([
                "--clickhouse-cluster".to_owned(),
                self.clickhouse.clickhouse_cluster.clone(),
                "--clickhouse-cluster-nodes".to_owned(),
                self.clickhouse.clickhouse_cluster_nodes.join(","),
                "--clickhouse-settings".to_owned(),
                self.clickhouse.clickhouse_settings.join(","),
            ]);
        }
        // A flag in `extra` replaces its default (clap refuses a flag given twice).
        let mut args: Vec<String> = defaults
            .chunks(2)
            .filter(|pair| !extra.contains(&pair[0].as_str()))
            .flatten()
            .cloned()
            .collect();
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    }

    /// The S3 prefix of this pipeline's raw-event archive (one per test run).
    pub fn archive_prefix(&self) -> String {
        format!("it/{}", self.topic)
    }

    pub fn start_aggregator(&self, label: &str, extra: &[&str]) -> ChildProcess {
        self.start_aggregator_to(&self.clickhouse.clickhouse_url, label, extra)
    }

    /// Starts an aggregator that reaches ClickHouse at `clickhouse_url` (a fault proxy's).
    pub fn start_aggregator_to(
        &self,
        clickhouse_url: &str,
        label: &str,
        extra: &[&str],
    ) -> ChildProcess {
        let log_label = format!("{}-{label}", self.clickhouse.clickhouse_database);
        let credentials = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
            .map(|name| (name.to_owned(), stack::setting(name, "")));
        ChildProcess::start(
            "topk-aggregator",
            &log_label,
            &self.aggregator_args_to(clickhouse_url, extra),
            &credentials,
        )
    }

    pub async fn produce(&self, messages: &[GeneratedMessage]) {
        let producer = topk_loadgen::produce::producer(&stack::kafka_brokers()).expect("producer");
        self.produce_with(&producer, messages).await;
    }

    /// Produces one record per batch. tansu 0.6.0 answers a fetch from an offset inside a
    /// record batch with the next batch (checked: fetching from 1003 of 1000-record batches
    /// returns 2000 first), so a consumer resuming mid-batch skips records; Apache Kafka
    /// returns the batch holding the offset. Tests in which the aggregator pauses and resumes
    /// at arbitrary offsets produce this way; the aggregator reports any gap
    /// (`topk_aggregator_offset_gaps_total`).
    pub async fn produce_unbatched(&self, messages: &[GeneratedMessage]) {
        let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", stack::kafka_brokers())
            .set("enable.idempotence", "true")
            .set("batch.num.messages", "1")
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        self.produce_with(&producer, messages).await;
    }

    async fn produce_with(
        &self,
        producer: &rdkafka::producer::FutureProducer,
        messages: &[GeneratedMessage],
    ) {
        let last_offsets =
            topk_loadgen::produce::produce_all(producer, &self.topic, messages, 0, |_| {})
                .await
                .expect("produce generated events");
        let mut produced = self.produced.lock().expect("produced offsets");
        for (partition, offset) in last_offsets {
            let last = produced.entry(partition).or_insert(offset);
            *last = (*last).max(offset);
        }
    }

    /// Records an acknowledged offset of a record produced by the test itself.
    pub fn record_produced(&self, partition: i32, offset: i64) {
        let mut produced = self.produced.lock().expect("produced offsets");
        let last = produced.entry(partition).or_insert(offset);
        *last = (*last).max(offset);
    }

    /// The end offset (last acknowledged + 1) of every partition produced to. Taken from the
    /// producer's acknowledgements: tansu's watermark answers were seen to lag behind.
    pub fn end_offsets(&self) -> HashMap<i32, i64> {
        let produced = self.produced.lock().expect("produced offsets");
        (0..self.partitions)
            .map(|partition| {
                (
                    partition,
                    produced.get(&partition).map_or(0, |last| last + 1),
                )
            })
            .collect()
    }

    /// The last committed offset of each partition (what counts, see
    /// `topk_core::committed`).
    pub async fn checkpoints(&self) -> HashMap<i32, i64> {
        topk_core::committed::CommittedFlushes::read(&self.clickhouse.client())
            .await
            .map(|committed| {
                committed
                    .counted_through()
                    .into_iter()
                    .filter(|(_, offset)| *offset >= 0)
                    .map(|(partition, offset)| (partition as i32, offset))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the checkpoints moved past `before` (some flush of a running aggregator
    /// landed). Panics after `timeout`.
    pub async fn wait_for_progress(&self, before: &HashMap<i32, i64>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.checkpoints().await;
            if now
                .iter()
                .any(|(partition, offset)| before.get(partition).is_none_or(|old| offset > old))
            {
                return;
            }
            assert!(Instant::now() < deadline, "no flush within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every produced offset is checkpointed. Panics after `timeout`.
    pub async fn wait_until_drained(&self, timeout: Duration) {
        let ends = self.end_offsets();
        let deadline = Instant::now() + timeout;
        loop {
            let checkpoints = self.checkpoints().await;
            let drained = ends.iter().all(|(partition, end)| {
                *end == 0
                    || checkpoints
                        .get(partition)
                        .is_some_and(|done| done + 1 >= *end)
            });
            if drained {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not drained after {timeout:?}: end offsets {ends:?}, checkpoints {checkpoints:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Per-(user, song, minute) sums of the committed minute rows (what every reader counts:
    /// the `plays_minute_committed` view).
    pub async fn minute_counts(&self) -> MinuteCounts {
        #[derive(Row, Deserialize)]
        struct Sum {
            user_id: String,
            song_id: String,
            minute: u32,
            plays: u64,
        }
        let rows: Vec<Sum> = self
            .clickhouse
            .client()
            .query(
                "SELECT user_id, song_id, toUInt32(minute) AS minute, sum(plays) AS plays \
                 FROM plays_minute_committed GROUP BY user_id, song_id, minute",
            )
            .fetch_all()
            .await
            .expect("read minute sums");
        rows.into_iter()
            .map(|row| ((row.user_id, row.song_id, i64::from(row.minute)), row.plays))
            .collect()
    }

    /// Per-(user, song, minute, region) sums of the committed minute rows: plays and
    /// chart-eligible plays (what the charts count).
    pub async fn row_counts(&self) -> RowCounts {
        #[derive(Row, Deserialize)]
        struct Sum {
            user_id: String,
            song_id: String,
            minute: u32,
            region: String,
            plays: u64,
            chart_plays: u64,
        }
        let rows: Vec<Sum> = self
            .clickhouse
            .client()
            .query(
                "SELECT user_id, song_id, toUInt32(minute) AS minute, region, sum(plays) AS plays, \
                 sum(chart_plays) AS chart_plays \
                 FROM plays_minute_committed GROUP BY user_id, song_id, minute, region",
            )
            .fetch_all()
            .await
            .expect("read minute sums per region");
        rows.into_iter()
            .map(|row| {
                (
                    (row.user_id, row.song_id, i64::from(row.minute), row.region),
                    (row.plays, row.chart_plays),
                )
            })
            .collect()
    }

    /// Per-(user, song, minute, region) sums of the committed rows of `chart_minute` (the
    /// chart plays ordered by time), read with the committed rule every reader applies.
    pub async fn chart_minute_counts(&self) -> BTreeMap<(String, String, i64, String), u64> {
        let client = self.clickhouse.client();
        let committed = topk_core::committed::CommittedFlushes::read(&client)
            .await
            .expect("read what counts");
        let query = client.query(&format!(
            "SELECT user_id, song_id, toInt64(toUInt32(minute)) AS minute, region, \
             sum(chart_plays) AS chart_plays FROM chart_minute WHERE {} \
             GROUP BY user_id, song_id, minute, region",
            topk_core::committed::CommittedFlushes::condition("")
        ));
        let rows: Vec<(String, String, i64, String, u64)> = committed
            .bind(query)
            .fetch_all()
            .await
            .expect("read chart_minute sums");
        rows.into_iter()
            .map(|(user, song, minute, region, plays)| ((user, song, minute, region), plays))
            .collect()
    }

    /// Every message on the dead-letter topic: payload and headers.
    pub fn dead_letters(&self, expected: usize, timeout: Duration) -> Vec<DeadLetter> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", stack::kafka_brokers())
            .set("group.id", format!("{}-reader", self.dead_letter_topic))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer
            .subscribe(&[&self.dead_letter_topic])
            .expect("subscribe");
        let deadline = Instant::now() + timeout;
        let mut letters = Vec::new();
        // Read until `expected` arrived and then a quiet second, to catch extras too.
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    quiet_since = Instant::now();
                    let headers = message.headers().map_or_else(HashMap::new, |headers| {
                        headers
                            .iter()
                            .map(|header| {
                                let value = header
                                    .value
                                    .map(|v| String::from_utf8_lossy(v).into_owned());
                                (header.key.to_owned(), value.unwrap_or_default())
                            })
                            .collect()
                    });
                    letters.push(DeadLetter {
                        payload: message.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
                Some(Err(error)) => panic!("reading dead letters: {error}"),
                None if letters.len() >= expected
                    && quiet_since.elapsed() > Duration::from_secs(1) =>
                {
                    break
                }
                None => {}
            }
        }
        letters
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Pipeline {
    /// A reader of this pipeline's raw-event archive, and its segments of the plays topic
    /// (objects dated yesterday to tomorrow: a test's events are archived today).
    pub async fn archive_segments(
        &self,
    ) -> (topk_archive::ArchiveReader, Vec<topk_archive::SegmentKey>) {
        let reader = topk_archive::ArchiveReader::new(
            stack::s3_client().await,
            stack::s3_bucket(),
            self.archive_prefix(),
        );
        let today = chrono::Utc::now().date_naive();
        let dates = today - chrono::Days::new(1)..=today + chrono::Days::new(1);
        let segments = reader
            .list_segments(&self.topic, dates)
            .await
            .expect("list archive segments");
        (reader, segments)
    }

    /// Asserts the committed rows hold exactly the valid, distinct plays of `messages`: the
    /// users' per-minute counts ([`Self::assert_counts_equal`]), per region the plays and the
    /// chart-eligible plays (the aggregator's default `--chart-min-played-ms`), and the same
    /// chart-eligible plays in `chart_minute`.
    pub async fn assert_rows_equal(
        &self,
        messages: &[GeneratedMessage],
        aggregator: &ChildProcess,
    ) {
        self.assert_counts_equal(&expected_minute_counts(messages), aggregator)
            .await;
        let expected = expected_row_counts(messages, topk_core::event::DEFAULT_CHART_MIN_PLAYED_MS);
        let actual = self.row_counts().await;
        if expected == actual {
            // The charts' own copy, ordered by time, holds the same chart plays.
            let expected_chart: BTreeMap<(String, String, i64, String), u64> = expected
                .into_iter()
                .filter(|(_, (_, chart_plays))| *chart_plays > 0)
                .map(|(key, (_, chart_plays))| (key, chart_plays))
                .collect();
            let chart = self.chart_minute_counts().await;
            if chart != expected_chart {
                let differing: Vec<String> = expected_chart
                    .iter()
                    .filter(|(key, plays)| chart.get(*key) != Some(*plays))
                    .map(|(key, plays)| {
                        format!("{key:?}: expected {plays}, got {:?}", chart.get(key))
                    })
                    .chain(
                        chart
                            .iter()
                            .filter(|(key, _)| !expected_chart.contains_key(*key))
                            .map(|(key, plays)| format!("{key:?}: expected none, got {plays}")),
                    )
                    .collect();
                panic!(
                    "{} chart_minute keys differ; first: {}\n{}",
                    differing.len(),
                    differing.into_iter().take(5).collect::<Vec<_>>().join("; "),
                    aggregator.log_tail(30)
                );
            }
            return;
        }
        let mut lines = Vec::new();
        for key in expected
            .keys()
            .chain(actual.keys().filter(|key| !expected.contains_key(*key)))
        {
            let want = expected.get(key).copied().unwrap_or_default();
            let got = actual.get(key).copied().unwrap_or_default();
            if want != got {
                lines.push(format!(
                    "{key:?}: expected (plays, chart plays) {want:?}, got {got:?}"
                ));
            }
        }
        panic!(
            "{} region/chart keys differ; first: {}\n{}",
            lines.len(),
            lines.into_iter().take(5).collect::<Vec<_>>().join("; "),
            aggregator.log_tail(30)
        );
    }

    /// Asserts ClickHouse's per-minute sums equal `expected`, showing the differences and
    /// the aggregator's last log lines otherwise.
    pub async fn assert_counts_equal(&self, expected: &MinuteCounts, aggregator: &ChildProcess) {
        let actual = self.minute_counts().await;
        if *expected == actual {
            return;
        }
        panic!(
            "{}\n{}",
            count_difference(expected, &actual),
            aggregator.log_tail(30)
        );
    }
}

/// Waits `duration`, asserting every half second that the aggregator still runs.
pub async fn assert_keeps_running(aggregator: &mut ChildProcess, duration: Duration) {
    let started = Instant::now();
    while started.elapsed() < duration {
        assert!(
            aggregator.is_running(),
            "aggregator exited:\n{}",
            aggregator.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Describes how two count tables differ, for assertion messages (first few keys).
pub fn count_difference(expected: &MinuteCounts, actual: &MinuteCounts) -> String {
    let mut lines = Vec::new();
    for (key, want) in expected {
        let got = actual.get(key).copied().unwrap_or(0);
        if got != *want {
            lines.push(format!("{key:?}: expected {want}, got {got}"));
        }
    }
    for (key, got) in actual {
        if !expected.contains_key(key) {
            lines.push(format!("{key:?}: expected 0, got {got}"));
        }
    }
    let total_expected: u64 = expected.values().sum();
    let total_actual: u64 = actual.values().sum();
    format!(
        "{} keys differ (total plays expected {total_expected}, got {total_actual}); first: {}",
        lines.len(),
        lines.into_iter().take(5).collect::<Vec<_>>().join("; ")
    )
}
