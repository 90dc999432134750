//! The running local stack and per-test resources on it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use topk_core::db::ClickHouseOptions;
use topk_core::migrate::quote_identifier;

/// The repository root (the tests crate lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent")
        .to_owned()
}

fn stack_env_file() -> HashMap<String, String> {
    let dir =
        std::env::var("TOPK_STACK_DIR").map_or_else(|_| repo_root().join(".stack"), PathBuf::from);
    let Ok(text) = std::fs::read_to_string(dir.join("env")) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| {
            (
                name.to_owned(),
                value.trim_matches('\'').trim_matches('"').to_owned(),
            )
        })
        .collect()
}

/// One setting: the env var, else the stack's env file, else `default`.
pub fn setting(name: &str, default: &str) -> String {
    static FILE: OnceLock<HashMap<String, String>> = OnceLock::new();
    std::env::var(name)
        .ok()
        .or_else(|| FILE.get_or_init(stack_env_file).get(name).cloned())
        .unwrap_or_else(|| default.to_owned())
}

pub fn clickhouse_url() -> String {
    setting("TOPK_CLICKHOUSE_URL", "http://127.0.0.1:18123")
}

pub fn kafka_brokers() -> String {
    setting("TOPK_KAFKA_BROKERS", "127.0.0.1:19092")
}

/// A name for a per-test resource: `prefix_test_name`, made safe for ClickHouse and Kafka.
pub fn resource_name(prefix: &str, test_name: &str) -> String {
    let cleaned: String = test_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{cleaned}")
}

/// A fresh, migrated database for one test (dropped first if a previous run left it).
pub async fn fresh_database(test_name: &str) -> ClickHouseOptions {
    let options = ClickHouseOptions::new(clickhouse_url(), resource_name("topk_test", test_name));
    options
        .server_client()
        .query(&format!(
            "DROP DATABASE IF EXISTS {}",
            quote_identifier(&options.clickhouse_database)
        ))
        .execute()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "ClickHouse at {} is not reachable ({error}); start the stack with scripts/stack.sh up",
                options.clickhouse_url
            )
        });
    topk_core::migrate::migrate(&options)
        .await
        .expect("migrations apply to a fresh database");
    options
}

/// The HTTP endpoints of the local cluster's nodes (`scripts/stack.sh up cluster` writes them
/// to `.stack/cluster/env`).
pub fn cluster_node_urls() -> Vec<String> {
    let path = repo_root().join(".stack/cluster/env");
    let env = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!("{} (scripts/stack.sh up cluster): {error}", path.display())
    });
    env.lines()
        .find_map(|line| line.strip_prefix("export TOPK_CLUSTER_CLICKHOUSE_URLS="))
        .expect("TOPK_CLUSTER_CLICKHOUSE_URLS in .stack/cluster/env")
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A fresh database laid out on the ClickHouse cluster `cluster` (both databases dropped on
/// every node first), reached at `clickhouse_url`, written with `insert_distributed_sync = 1`,
/// its sharded tables altered node by node (`--clickhouse-cluster-nodes`, every node of the
/// local cluster).
pub async fn fresh_cluster_database(
    test_name: &str,
    clickhouse_url: &str,
    cluster: &str,
) -> ClickHouseOptions {
    let mut options = ClickHouseOptions::new(clickhouse_url, resource_name("topk_test", test_name));
    options.clickhouse_cluster = cluster.to_owned();
    options.clickhouse_cluster_nodes = cluster_node_urls();
    options.clickhouse_settings = vec!["insert_distributed_sync=1".to_owned()];
    let layout = options.cluster_layout().expect("a cluster");
    for database in [layout.database.clone(), layout.local_database()] {
        options
            .server_client()
            .query(&format!(
                "DROP DATABASE IF EXISTS {} ON CLUSTER {}",
                quote_identifier(&database),
                quote_identifier(cluster)
            ))
            .execute()
            .await
            .unwrap_or_else(|error| panic!("dropping {database} on cluster {cluster}: {error}"));
    }
    topk_core::migrate::migrate(&options)
        .await
        .expect("migrations apply to a fresh cluster database");
    options
}

/// A new topic with `partitions` partitions, named after the test plus a unique suffix (the
/// broker keeps topics of earlier runs).
pub async fn fresh_topic(test_name: &str, partitions: i32) -> String {
    let suffix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    let topic = format!("{}-{suffix}", resource_name("t", test_name));
    create_topic(&kafka_brokers(), &topic, partitions).await;
    topic
}

/// Creates `topic` with `partitions` partitions on `brokers`.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&new_topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap_or_else(|error| {
            panic!(
                "Kafka broker at {brokers} is not reachable ({error}); start the stack with scripts/stack.sh up"
            )
        });
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
}

/// The S3 client for the stack's Garage (credentials through the standard AWS env vars).
pub async fn s3_client() -> aws_sdk_s3::Client {
    let access_key = setting("AWS_ACCESS_KEY_ID", "");
    let secret_key = setting("AWS_SECRET_ACCESS_KEY", "");
    assert!(
        !access_key.is_empty(),
        "no S3 credentials: start the stack with scripts/stack.sh up (it writes .stack/env)"
    );
    let credentials =
        aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "topk-stack");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(setting(
            "TOPK_S3_REGION",
            "garage",
        )))
        .endpoint_url(setting("TOPK_S3_ENDPOINT", "http://127.0.0.1:13900"))
        .force_path_style(true)
        .credentials_provider(credentials)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

pub fn s3_bucket() -> String {
    setting("TOPK_S3_BUCKET", "topk-archive")
}

/// Runs `scripts/stack.sh ARGS` and panics if it fails (tests that stop and start parts of
/// the stack).
pub fn run_script(args: &[&str]) {
    let script = repo_root().join("scripts/stack.sh");
    let status = std::process::Command::new(&script)
        .args(args)
        .status()
        .unwrap_or_else(|error| panic!("running {}: {error}", script.display()));
    assert!(status.success(), "scripts/stack.sh {args:?} failed");
}

/// A consumer of `brokers` assigned every partition of `topic` from its beginning (no group
/// coordination; `group` only names it), offsets never committed.
pub fn consumer_from_beginning(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}
