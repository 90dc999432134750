//! `topk-rollup migrate` with `clickhouse_cluster` set lays the single-node schema out on the
//! cluster (`topk_core::cluster`): the same tables with the same columns on every node,
//! sharded tables split by user over the shards and replicated within each.

use std::collections::BTreeMap;

use clickhouse::Row;
use serde::Deserialize;
use topk_core::db::ClickHouseOptions;
use topk_core::migrate::{latest_version, migrate, quote_identifier};

use crate::{cluster_up, CLUSTER};

#[derive(Debug, Row, Deserialize, PartialEq, Eq, Clone)]
struct Table {
    name: String,
    engine: String,
}

#[derive(Debug, Row, Deserialize, PartialEq, Eq)]
struct Column {
    table: String,
    name: String,
    r#type: String,
}

fn node(url: &str, database: &str) -> ClickHouseOptions {
    ClickHouseOptions::new(url, database)
}

async fn tables(url: &str, database: &str) -> Vec<Table> {
    node(url, database)
        .server_client()
        .query("SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name")
        .bind(database)
        .fetch_all()
        .await
        .unwrap()
}

async fn columns(url: &str, database: &str) -> Vec<Column> {
    node(url, database)
        .server_client()
        .query(
            "SELECT table, name, type FROM system.columns WHERE database = ? \
             ORDER BY table, name",
        )
        .bind(database)
        .fetch_all()
        .await
        .unwrap()
}

async fn drop_everywhere(url: &str, database: &str) {
    node(url, database)
        .server_client()
        .query(&format!(
            "DROP DATABASE IF EXISTS {} ON CLUSTER {}",
            quote_identifier(database),
            quote_identifier(CLUSTER)
        ))
        .execute()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_lay_the_schema_out_on_every_node_of_the_cluster() {
    let _shared = crate::shared().await;
    let urls = cluster_up();
    assert_eq!(urls.len(), 4, "2 shards × 2 replicas");
    let database = "topk_test_cluster_schema";
    let local = format!("{database}_local");
    let reference = "topk_test_cluster_single_node";
    drop_everywhere(&urls[0], database).await;
    drop_everywhere(&urls[0], &local).await;
    drop_everywhere(&urls[0], reference).await;

    let mut options = node(&urls[0], database);
    options.clickhouse_cluster = CLUSTER.to_owned();
    options.clickhouse_cluster_nodes = urls.clone();
    let first = migrate(&options).await.expect("migrations on the cluster");
    assert_eq!(first.applied.len(), latest_version() as usize);
    let second = migrate(&options).await.expect("migrations again");
    assert!(second.applied.is_empty(), "{second:?}");
    // The single-node schema, for comparison (on node 1, outside the cluster layout).
    migrate(&node(&urls[0], reference)).await.unwrap();
    let reference_tables = tables(&urls[0], reference).await;
    let reference_columns = columns(&urls[0], reference).await;

    for url in &urls {
        let on_node = tables(url, database).await;
        let names: Vec<&str> = on_node.iter().map(|table| table.name.as_str()).collect();
        let expected: Vec<&str> = reference_tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, expected, "tables of {database} on {url}");
        for table in &on_node {
            let single = reference_tables
                .iter()
                .find(|t| t.name == table.name)
                .unwrap();
            let expected_engine = match single.engine.as_str() {
                "View" => "View",
                _ if topk_core::cluster::is_sharded(&table.name) => "Distributed",
                _ => "ReplicatedMergeTree",
            };
            assert_eq!(
                table.engine, expected_engine,
                "{}.{} on {url}",
                database, table.name
            );
        }
        assert_eq!(
            columns(url, database).await,
            reference_columns,
            "columns of {database} on {url}"
        );
        let local_tables: BTreeMap<String, String> = tables(url, &local)
            .await
            .into_iter()
            .map(|table| (table.name, table.engine))
            .collect();
        let expected_local: BTreeMap<String, String> = topk_core::cluster::SHARDED_TABLES
            .iter()
            .map(|(name, _)| (name.to_string(), "ReplicatedMergeTree".to_owned()))
            .collect();
        assert_eq!(local_tables, expected_local, "{local} on {url}");
        // The views answer on every node (they name their tables with the database).
        let committed: u64 = node(url, database)
            .client()
            .query("SELECT count() FROM plays_minute_committed")
            .fetch_one()
            .await
            .unwrap_or_else(|error| panic!("plays_minute_committed on {url}: {error}"));
        assert_eq!(committed, 0);
    }

    // The song catalog, loaded through node 1 by `topk-catalog`, is on every node.
    let file = std::env::temp_dir().join("topk_test_cluster_catalog.csv");
    std::fs::write(
        &file,
        "song_id,title,artist_id,artist_name\ns1,One,a1,A\ns2,Two,a1,A\ns3,Three,a2,B\n",
    )
    .unwrap();
    let load = std::process::Command::new(topk_tests::process::binary_path("topk-catalog"))
        .arg("load")
        .arg(&file)
        .env("TOPK_CLICKHOUSE_URL", &urls[0])
        .env("TOPK_CLICKHOUSE_DATABASE", database)
        .env("TOPK_CLICKHOUSE_CLUSTER", CLUSTER)
        .output()
        .expect("run topk-catalog");
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    for url in &urls {
        let client = node(url, database).client();
        client
            .query("SYSTEM SYNC REPLICA songs")
            .execute()
            .await
            .unwrap_or_else(|error| panic!("sync songs on {url}: {error}"));
        let titles: Vec<String> = client
            .query("SELECT title FROM songs_current ORDER BY song_id")
            .fetch_all()
            .await
            .unwrap_or_else(|error| panic!("songs_current on {url}: {error}"));
        assert_eq!(titles, ["One", "Two", "Three"], "the catalog on {url}");
    }
}

#[derive(Debug, Row, Deserialize)]
struct UserRows {
    user_id: String,
    rows: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minute_rows_land_on_one_shard_per_user_and_on_both_of_its_replicas() {
    let _shared = crate::shared().await;
    let urls = cluster_up();
    let database = "topk_test_cluster_sharding";
    let local = format!("{database}_local");
    drop_everywhere(&urls[0], database).await;
    drop_everywhere(&urls[0], &local).await;
    let mut options = node(&urls[0], database);
    options.clickhouse_cluster = CLUSTER.to_owned();
    options.clickhouse_cluster_nodes = urls.clone();
    options.clickhouse_settings = vec!["insert_distributed_sync=1".to_owned()];
    migrate(&options).await.unwrap();

    // Through the Distributed table of a node of shard 2, synchronously.
    let mut writer = options.clone();
    writer.clickhouse_url = urls[2].clone();
    writer
        .client()
        .query(
            "INSERT INTO plays_minute (user_id, song_id, minute, plays, topic, kafka_partition, \
             flush_offset) SELECT concat('user-', toString(number % 200)), 'song-1', \
             toDateTime('2026-11-30 10:00:00', 'UTC'), 1, 't', 0, number FROM numbers(1000)",
        )
        .execute()
        .await
        .unwrap();

    let mut shard_of_user: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        // Replication is asynchronous: wait until the replica has its shard's rows.
        let client = node(url, &local).client();
        let _ = client
            .query("SYSTEM SYNC REPLICA plays_minute")
            .execute()
            .await;
        let rows: Vec<UserRows> = client
            .query("SELECT user_id, count() AS rows FROM plays_minute GROUP BY user_id ORDER BY user_id")
            .fetch_all()
            .await
            .unwrap();
        let shard = index / 2;
        for user in &rows {
            assert_eq!(user.rows, 5, "{} on {url}", user.user_id);
            let first = *shard_of_user.entry(user.user_id.clone()).or_insert(shard);
            assert_eq!(first, shard, "{} on two shards", user.user_id);
        }
        per_node.push(rows.len());
    }
    assert_eq!(shard_of_user.len(), 200, "every user on some shard");
    assert_eq!(per_node[0], per_node[1], "replicas of shard 1 agree");
    assert_eq!(per_node[2], per_node[3], "replicas of shard 2 agree");
    assert!(
        per_node[0] > 0 && per_node[2] > 0,
        "both shards hold users: {per_node:?}"
    );
    assert_eq!(per_node[0] + per_node[2], 200);
    // Every node answers for the whole table through the Distributed table.
    for url in &urls {
        let total: u64 = node(url, database)
            .client()
            .query("SELECT sum(plays) FROM plays_minute")
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(total, 1000, "through {url}");
    }
}
