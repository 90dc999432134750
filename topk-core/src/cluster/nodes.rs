//! The cluster's nodes, reached one by one: an `ALTER` of a sharded table sent to one replica of
//! each shard instead of `ON CLUSTER`.
//!
//! Why not `ON CLUSTER`: ClickHouse 18.16's DDL worker runs an `ALTER .. ON CLUSTER` of a
//! replicated table once per shard. The shard's replicas race for a lock in ZooKeeper; the
//! winner runs the `ALTER`, marks the task `executed` and lets go of the lock. A loser that
//! looked for the mark just before it was written and takes the lock just after it was let go
//! runs the `ALTER` a second time and fails to write the mark ("Node exists"). That error
//! stops its server's DDL worker for good ("Unexpected ZooKeeper error .. Terminating"), and
//! every later `ON CLUSTER` statement waits for that server until
//! `distributed_ddl_task_timeout`. CI met it twice; 170 `ALTER .. DELETE`s in a row on a busy
//! machine reproduce it (later releases look for the mark again once they hold the lock).
//!
//! With the nodes' HTTP endpoints configured (`--clickhouse-cluster-nodes`), a sharded
//! `ALTER` goes straight to one replica of each shard, and the replicated table replicates it
//! to the others. Replicas are told apart by what makes them replicas of each other: the
//! ZooKeeper path of their table (`system.replicas.zookeeper_path`). A replica that does not
//! answer is skipped for another of its shard (`ON CLUSTER` would wait for it until the
//! timeout); a shard none of whose replicas answers fails the `ALTER`.

use std::collections::BTreeMap;
use std::fmt;

use crate::migrate::quote_identifier;

/// The HTTP endpoints of every node of the cluster, each with a client; empty when not
/// configured (sharded `ALTER`s then run `ON CLUSTER`).
#[derive(Clone, Default)]
pub struct ClusterNodes {
    nodes: Vec<(String, clickhouse::Client)>,
}

impl ClusterNodes {
    /// `urls` with a client for each (`client_for` sets credentials and settings).
    pub fn new<'a>(
        urls: impl IntoIterator<Item = &'a str>,
        client_for: impl Fn(&str) -> clickhouse::Client,
    ) -> Self {
        Self {
            nodes: urls
                .into_iter()
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(|url| (url.to_owned(), client_for(url)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|(url, _)| url.as_str())
    }

    /// Runs `ALTER TABLE <database>.<table> <command>` on one replica of each of `cluster`'s
    /// shards (the shards counted through `client`, the binary's own node), `settings` sent
    /// with each.
    pub async fn alter_each_shard(
        &self,
        client: &clickhouse::Client,
        cluster: &str,
        database: &str,
        table: &str,
        command: &str,
        settings: &[(&str, &str)],
    ) -> Result<(), clickhouse::error::Error> {
        let shards: u64 = client
            .query("SELECT count(DISTINCT shard_num) FROM system.clusters WHERE cluster = ?")
            .bind(cluster)
            .fetch_one()
            .await?;
        let qualified = format!("{}.{}", quote_identifier(database), quote_identifier(table));
        let mut replica_sets: BTreeMap<String, Vec<&(String, clickhouse::Client)>> =
            BTreeMap::new();
        let mut silent = Vec::new();
        for node in &self.nodes {
            let paths = node
                .1
                .query(
                    "SELECT zookeeper_path FROM system.replicas WHERE database = ? AND table = ?",
                )
                .bind(database)
                .bind(table)
                .fetch_all::<String>()
                .await;
            match paths {
                Ok(paths) if !paths.is_empty() => {
                    for path in paths {
                        replica_sets.entry(path).or_default().push(node);
                    }
                }
                Ok(_) => silent.push(format!("{}: no replicated table {qualified}", node.0)),
                Err(error) => silent.push(format!("{}: {error}", node.0)),
            }
        }
        if (replica_sets.len() as u64) < shards {
            return Err(clickhouse::error::Error::Custom(format!(
                "ALTER TABLE {qualified} {command}: {} of the {shards} shards of cluster \
                 `{cluster}` answer through --clickhouse-cluster-nodes ({})",
                replica_sets.len(),
                silent.join("; ")
            )));
        }
        // `replication_alter_partitions_sync = 2` asks for the change on every replica when
        // the ALTER returns. Not relying on each release's reading of it (after a restore on
        // 18.16 the cluster test once found different top lists, cause not proven), the
        // shard's other replicas are synced here (one that does not answer catches up later).
        let every_replica = settings
            .iter()
            .any(|(name, value)| *name == "replication_alter_partitions_sync" && *value == "2");
        for (path, replicas) in &replica_sets {
            let mut failures = Vec::new();
            for (index, (url, node)) in replicas.iter().enumerate() {
                match super::execute_alter(node, &qualified, command, settings).await {
                    Ok(()) => {
                        if every_replica {
                            for (other_url, other) in replicas.iter().skip(index + 1) {
                                let synced = other
                                    .query(&format!("SYSTEM SYNC REPLICA {qualified}"))
                                    .execute()
                                    .await;
                                if let Err(error) = synced {
                                    tracing::warn!(node = %other_url, %path, %error, "a replica could not be synced after an ALTER; it catches up on its own");
                                }
                            }
                        }
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(node = %url, %path, %error, "ALTER failed on a replica; trying the next of its shard");
                        failures.push(format!("{url}: {error}"));
                    }
                }
            }
            if failures.len() == replicas.len() {
                return Err(clickhouse::error::Error::Custom(format!(
                    "ALTER TABLE {qualified} {command}: no replica of {path} took it ({})",
                    failures.join("; ")
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.urls()).finish()
    }
}

impl PartialEq for ClusterNodes {
    fn eq(&self, other: &Self) -> bool {
        self.urls().eq(other.urls())
    }
}

impl Eq for ClusterNodes {}
