//! ClickHouse access: connection options shared by every binary and client construction.
//!
//! Every statement the project issues must run on ClickHouse 18.16 (the local test server)
//! and on current releases (production). The official client's schema validation needs
//! `RowBinaryWithNamesAndTypes`, which 18.16 lacks, so it is switched off here, once.

use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

/// ClickHouse connection options, flattened into each binary's config.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ClickHouseOptions {
    /// ClickHouse HTTP endpoint.
    #[arg(
        long,
        env = "TOPK_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,
    /// Database holding the topk tables.
    #[arg(long, env = "TOPK_CLICKHOUSE_DATABASE", default_value = "topk")]
    pub clickhouse_database: String,
    /// ClickHouse user.
    #[arg(long, env = "TOPK_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,
    /// ClickHouse password.
    #[arg(
        long,
        env = "TOPK_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true
    )]
    pub clickhouse_password: String,
    /// The ClickHouse cluster (its name in `remote_servers`) the schema is laid out on; empty
    /// for a single server. See deploy/clickhouse-cluster/README.md.
    #[arg(long, env = "TOPK_CLICKHOUSE_CLUSTER", default_value = "")]
    #[serde(default)]
    pub clickhouse_cluster: String,
    /// With `--clickhouse-cluster`: the HTTP endpoints of every node of the cluster,
    /// comma-separated. An `ALTER` of a sharded table (the cleanup of uncommitted rows, the
    /// rollup's and the prune's partition changes, a restore, a migration) then goes to one
    /// replica of each shard directly instead of `ON CLUSTER`, which stops a node's DDL worker
    /// on ClickHouse 18.x (deploy/clickhouse-cluster/README.md). Empty: `ON CLUSTER`.
    #[arg(long, env = "TOPK_CLICKHOUSE_CLUSTER_NODES", value_delimiter = ',')]
    #[serde(default)]
    pub clickhouse_cluster_nodes: Vec<String>,
    /// ClickHouse settings sent with every query, comma-separated `name=value` pairs (e.g.
    /// `log_queries=1`, or `insert_quorum=2` on a replicated cluster). A profile in the
    /// server's users.xml does the same for a user.
    #[arg(
        long,
        env = "TOPK_CLICKHOUSE_SETTINGS",
        value_delimiter = ',',
        value_parser = parse_setting
    )]
    #[serde(default)]
    pub clickhouse_settings: Vec<String>,
}

/// Sent with every query on a cluster (before `--clickhouse-settings`, which can replace
/// them): a `Distributed` read skips a replica more than 30 s behind its shard (a replica
/// restarted after an outage, fetching what it missed) and fails rather than read from one
/// when every replica of a shard is that far behind (ClickHouse's defaults are 300 s and
/// reading the stale replica anyway, which answers counts short without saying so).
pub const CLUSTER_READ_SETTINGS: [(&str, &str); 2] = [
    ("max_replica_delay_for_distributed_queries", "30"),
    ("fallback_to_stale_replicas_for_distributed_queries", "0"),
];

/// Accepts `name=value` with a setting name of letters, digits and underscores.
/// An empty value (e.g. `TOPK_CLICKHOUSE_SETTINGS=`) sets nothing.
fn parse_setting(pair: &str) -> Result<String, String> {
    let pair = pair.trim();
    if pair.is_empty() {
        return Ok(String::new());
    }
    let (name, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("ClickHouse setting `{pair}` is not name=value"))?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{name}` is not a ClickHouse setting name"));
    }
    Ok(format!("{name}={}", value.trim()))
}

impl ClickHouseOptions {
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        Self {
            clickhouse_url: url.into(),
            clickhouse_database: database.into(),
            clickhouse_user: "default".to_owned(),
            clickhouse_password: String::new(),
            clickhouse_settings: Vec::new(),
            clickhouse_cluster: String::new(),
            clickhouse_cluster_nodes: Vec::new(),
        }
    }

    /// The cluster layout, when the schema lives on a cluster.
    pub fn cluster_layout(&self) -> Option<crate::cluster::ClusterLayout> {
        (!self.clickhouse_cluster.is_empty()).then(|| {
            let nodes = crate::cluster::nodes::ClusterNodes::new(
                self.clickhouse_cluster_nodes.iter().map(String::as_str),
                |url| self.client_at(url),
            );
            crate::cluster::ClusterLayout::new(&self.clickhouse_cluster, &self.clickhouse_database)
                .with_nodes(nodes)
        })
    }

    /// Where statements below the tables go (see [`crate::cluster::Placement`]).
    pub fn placement(&self) -> crate::cluster::Placement {
        self.cluster_layout().map_or(
            crate::cluster::Placement::SingleNode,
            crate::cluster::Placement::Cluster,
        )
    }

    /// A client bound to the topk database.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client()
            .with_database(&self.clickhouse_database)
    }

    /// A client bound to no particular database (for `CREATE DATABASE`).
    pub fn server_client(&self) -> clickhouse::Client {
        self.client_at(&self.clickhouse_url)
    }

    /// A client of the server at `url` with these options' credentials and settings, bound to
    /// no particular database.
    fn client_at(&self, url: &str) -> clickhouse::Client {
        let mut client = clickhouse::Client::default()
            .with_url(url)
            .with_user(&self.clickhouse_user)
            .with_password(&self.clickhouse_password)
            .with_validation(false);
        if !self.clickhouse_cluster.is_empty() {
            for (name, value) in CLUSTER_READ_SETTINGS {
                client = client.with_setting(name, value);
            }
        }
        // After the defaults: a setting named here replaces a default.
        for setting in &self.clickhouse_settings {
            if let Some((name, value)) = setting.split_once('=') {
                client = client.with_setting(name, value);
            }
        }
        client
    }
}

/// Answers whether the server accepts queries.
pub async fn ping(client: &clickhouse::Client) -> Result<(), clickhouse::error::Error> {
    client.query("SELECT 1").fetch_one::<u8>().await.map(|_| ())
}

/// Waits until the server answers, polling every 200 ms, for at most `timeout`.
pub async fn wait_until_ready(
    client: &clickhouse::Client,
    timeout: Duration,
) -> Result<(), clickhouse::error::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match ping(client).await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_name_value_pairs() {
        assert_eq!(
            parse_setting(" log_queries = 1 "),
            Ok("log_queries=1".to_owned())
        );
        assert!(parse_setting("log_queries").is_err());
        assert_eq!(parse_setting(""), Ok(String::new()));
        assert!(parse_setting("=1").is_err());
        assert!(parse_setting("max execution=1").is_err());
    }
}
