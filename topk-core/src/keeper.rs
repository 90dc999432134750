//! Claims and commits through ZooKeeper or ClickHouse Keeper: the compare-and-set a
//! ClickHouse cluster cannot give.
//!
//! On one ClickHouse server a claim is one `INSERT … SELECT` that the server evaluates at
//! once ([`crate::claims`]). On a cluster the coordination tables are replicated, and two
//! workers reaching two replicas could both claim the same partition from the same parent
//! (each replica sees its own claim as the newest). So on a cluster the partition's state —
//! its newest claim and that claim's latest commit — lives in one versioned node per Kafka
//! partition, `<root>/<database>/partitions/<partition>`, and every change is a
//! compare-and-set on the node's version ([`crate::coordination`] says what is written
//! when). ZooKeeper orders writes linearizably, so of two claims from the same parent one
//! fails, and a commit of a fenced claim fails.
//!
//! The node holds JSON ([`PartitionNode`]): the newest claim's row and its latest commit's
//! row, exactly the rows mirrored into `ingest_claims` and `flush_commits`, where readers
//! apply the committed rule ([`crate::committed`]) on whichever replica they reach.

use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use crate::schema::{ClaimRow, FlushCommitRow};

/// How long connecting (a session) may take before the call fails and is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The session timeout asked of the server (it may negotiate another).
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);

/// Where claims and commits are coordinated, flattened into the aggregator's and the
/// rollup job's config.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
pub struct KeeperOptions {
    /// ZooKeeper or ClickHouse Keeper servers (`host:port,host:port`) through which the
    /// aggregators claim partitions and commit flushes. Required when aggregators write
    /// through more than one ClickHouse node (a cluster: any node then works, and losing one
    /// does not stop ingestion). Empty: claims and commits are made in ClickHouse, and every
    /// aggregator must write through the same server. Every aggregator and `topk-rollup
    /// restore` of a database must use the same setting.
    #[arg(long, env = "TOPK_KEEPER_HOSTS", default_value = "")]
    #[serde(default)]
    pub keeper_hosts: String,
    /// The path under which topk keeps its nodes (one per Kafka partition, below
    /// `<root>/<database>/partitions`).
    #[arg(long, env = "TOPK_KEEPER_ROOT", default_value = "/topk")]
    #[serde(default = "default_root")]
    pub keeper_root: String,
}

fn default_root() -> String {
    "/topk".to_owned()
}

impl KeeperOptions {
    pub fn new(hosts: impl Into<String>) -> Self {
        Self {
            keeper_hosts: hosts.into(),
            keeper_root: default_root(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.keeper_hosts.trim().is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("keeper {hosts}: {error}")]
    Keeper { hosts: String, error: zk::Error },
    #[error("keeper {hosts}: no session within {CONNECT_TIMEOUT:?}")]
    Connect { hosts: String },
    #[error("keeper node {path}: {error}")]
    Corrupt {
        path: String,
        error: serde_json::Error,
    },
    #[error("keeper root `{0}` must be an absolute path without a trailing slash")]
    BadRoot(String),
}

/// The state of one Kafka partition: its newest claim and that claim's latest commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionNode {
    pub claim: ClaimRow,
    /// The newest claim's latest commit (`None` until it commits a flush).
    pub head: Option<FlushCommitRow>,
}

/// A node read with the version a compare-and-set must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub node: PartitionNode,
    pub version: i32,
}

/// A connection to ZooKeeper / ClickHouse Keeper, re-established when its session ends.
#[derive(Debug)]
pub struct Keeper {
    hosts: String,
    partitions_path: String,
    client: tokio::sync::Mutex<Option<zk::Client>>,
}

impl Keeper {
    /// No connection is made until the first call.
    pub fn new(options: &KeeperOptions, database: &str) -> Result<Self, KeeperError> {
        let root = options.keeper_root.trim();
        if !root.starts_with('/') || (root.len() > 1 && root.ends_with('/')) {
            return Err(KeeperError::BadRoot(root.to_owned()));
        }
        let root = root.trim_end_matches('/');
        Ok(Self {
            hosts: options.keeper_hosts.trim().to_owned(),
            partitions_path: format!("{root}/{database}/partitions"),
            client: tokio::sync::Mutex::new(None),
        })
    }

    pub fn hosts(&self) -> &str {
        &self.hosts
    }

    /// The node of `partition` (for operators).
    pub fn partition_path(&self, partition: u32) -> String {
        self.path(partition)
    }

    fn path(&self, partition: u32) -> String {
        format!("{}/{partition}", self.partitions_path)
    }

    fn error(&self, error: zk::Error) -> KeeperError {
        KeeperError::Keeper {
            hosts: self.hosts.clone(),
            error,
        }
    }

    /// The session's client, connecting first when there is none or it has ended.
    async fn client(&self) -> Result<zk::Client, KeeperError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            if !client.state().is_terminated() {
                return Ok(client.clone());
            }
        }
        *slot = None;
        let connect = zk::Client::connector()
            .with_session_timeout(SESSION_TIMEOUT)
            .with_connection_timeout(CONNECT_TIMEOUT)
            .connect(&self.hosts);
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(self.error(error)),
            Err(_) => {
                return Err(KeeperError::Connect {
                    hosts: self.hosts.clone(),
                })
            }
        };
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        client
            .mkdir(&self.partitions_path, &options)
            .await
            .map_err(|error| self.error(error))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forgets the session after an error that ends it, so that the next call connects.
    async fn on_error(&self, error: zk::Error) -> KeeperError {
        if matches!(error, zk::Error::SessionExpired | zk::Error::ClientClosed) {
            *self.client.lock().await = None;
        }
        self.error(error)
    }

    /// The partition's node, or `None` when no claim was ever made through Keeper.
    pub async fn read(&self, partition: u32) -> Result<Option<Versioned>, KeeperError> {
        let client = self.client().await?;
        let path = self.path(partition);
        match client.get_data(&path).await {
            Ok((data, stat)) => {
                let node = serde_json::from_slice(&data)
                    .map_err(|error| KeeperError::Corrupt { path, error })?;
                Ok(Some(Versioned {
                    node,
                    version: stat.version,
                }))
            }
            Err(zk::Error::NoNode) => Ok(None),
            Err(error) => Err(self.on_error(error).await),
        }
    }

    /// Creates the partition's node; `Ok(false)` when it exists already.
    pub async fn create(&self, partition: u32, node: &PartitionNode) -> Result<bool, KeeperError> {
        let client = self.client().await?;
        let data = serde_json::to_vec(node).map_err(|error| KeeperError::Corrupt {
            path: self.path(partition),
            error,
        })?;
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match client.create(&self.path(partition), &data, &options).await {
            Ok(_) => Ok(true),
            Err(zk::Error::NodeExists) => Ok(false),
            Err(error) => Err(self.on_error(error).await),
        }
    }

    /// Replaces the partition's node if it is still at `version`; `Ok(false)` when it
    /// changed since. An error leaves the outcome unknown: read the node to find out (the
    /// same compare-and-set sent again cannot apply twice).
    pub async fn replace(
        &self,
        partition: u32,
        node: &PartitionNode,
        version: i32,
    ) -> Result<bool, KeeperError> {
        let client = self.client().await?;
        let data = serde_json::to_vec(node).map_err(|error| KeeperError::Corrupt {
            path: self.path(partition),
            error,
        })?;
        match client
            .set_data(&self.path(partition), &data, Some(version))
            .await
        {
            Ok(_) => Ok(true),
            Err(zk::Error::BadVersion) => Ok(false),
            Err(error) => Err(self.on_error(error).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_must_be_absolute() {
        for bad in ["topk", "/topk/", ""] {
            let options = KeeperOptions {
                keeper_hosts: "127.0.0.1:2181".to_owned(),
                keeper_root: bad.to_owned(),
            };
            assert!(Keeper::new(&options, "db").is_err(), "{bad:?}");
        }
        let keeper = Keeper::new(&KeeperOptions::new("127.0.0.1:2181"), "db").expect("valid");
        assert_eq!(keeper.path(7), "/topk/db/partitions/7");
    }
}
