//! The schema on a ClickHouse cluster (`deploy/clickhouse-cluster/README.md`): how each
//! single-node migration statement of `sql/` is laid out when `clickhouse_cluster` is set.
//!
//! Two databases: `<db>_local` holds the shards' own rows of the sharded tables
//! ([`SHARDED_TABLES`], `ReplicatedMergeTree` under a `{shard}` path), and `<db>` (what the
//! binaries connect to) holds a `Distributed` table of the same name in front of each, plus
//! the small tables, each replicated to every node (a path without `{shard}`), and the views.
//! DDL runs `ON CLUSTER`, except an `ALTER`: of a table replicated to every node it runs once
//! and replicates; of a sharded table it runs on one replica of each shard (through
//! [`nodes::ClusterNodes`] when the nodes are configured, else `ON CLUSTER`, which ClickHouse
//! 18.16 gets wrong). Data statements run once, through `<db>`.
//!
//! Block deduplication is off on every replicated table (`replicated_deduplication_window =
//! 0`): exactness comes from claims and commits, and deduplication would silently drop a
//! legitimate insert identical to an earlier one.

pub mod nodes;

use crate::migrate::quote_identifier;
use nodes::ClusterNodes;

/// The tables sharded by user, with their sharding key: one user's rows live on one shard.
pub const SHARDED_TABLES: &[(&str, &str)] = &[
    ("plays_minute", "cityHash64(user_id)"),
    ("daily_top", "cityHash64(user_id)"),
    ("chart_minute", "cityHash64(user_id)"),
];

/// Where the schema lives on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLayout {
    /// The cluster's name in `remote_servers`.
    pub cluster: String,
    /// The database the binaries connect to.
    pub database: String,
    /// Every node's HTTP endpoint, for the `ALTER`s of sharded tables (empty: `ON CLUSTER`).
    pub nodes: ClusterNodes,
}

/// One statement of the cluster rendering, and the table whose column it adds (for the
/// migration runner's "column already there" check), as `(database, table, column)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatement {
    pub sql: String,
    pub adds_column: Option<(String, String, String)>,
    /// Set when `sql` is an `ALTER` of a sharded table's local tables: run it with
    /// [`ClusterLayout::alter_local_tables`] (`sql` is its `ON CLUSTER` form).
    pub sharded_alter: Option<ShardedAlter>,
}

/// An `ALTER` of the local tables of a sharded table: `ALTER TABLE <db>_local.<table>
/// <command>` on every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedAlter {
    pub table: String,
    pub command: String,
}

impl ClusterLayout {
    pub fn new(cluster: impl Into<String>, database: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            database: database.into(),
            nodes: ClusterNodes::default(),
        }
    }

    /// This layout with its nodes reached one by one for sharded `ALTER`s.
    pub fn with_nodes(mut self, nodes: ClusterNodes) -> Self {
        self.nodes = nodes;
        self
    }

    /// Warns when sharded `ALTER`s would run `ON CLUSTER` on a server whose DDL worker can
    /// stop for good on them (ClickHouse before 20.x; see [`nodes`]).
    pub async fn warn_if_alters_are_unsafe(&self, client: &clickhouse::Client) {
        if !self.nodes.is_empty() {
            return;
        }
        let version = client.query("SELECT version()").fetch_one::<String>().await;
        if let Ok(version) = version {
            let major: u32 = version
                .split('.')
                .next()
                .and_then(|major| major.parse().ok())
                .unwrap_or(u32::MAX);
            if major < 20 {
                tracing::warn!(
                    %version,
                    "ALTERs of sharded tables run ON CLUSTER, which can stop a node's DDL \
                     worker on this ClickHouse release: set --clickhouse-cluster-nodes"
                );
            }
        }
    }

    /// Runs `ALTER TABLE <db>_local.<table> <command>` on every shard of the sharded `table`
    /// (one replica each; replication brings it to the others), `settings` sent with it:
    /// through [`ClusterNodes`] when configured, else `ON CLUSTER` through `client`.
    pub async fn alter_local_tables(
        &self,
        client: &clickhouse::Client,
        table: &str,
        command: &str,
        settings: &[(&str, &str)],
    ) -> Result<(), clickhouse::error::Error> {
        if self.nodes.is_empty() {
            let target = format!(
                "{} {}",
                self.qualified(&self.local_database(), table),
                self.on_cluster()
            );
            return execute_alter(client, &target, command, settings).await;
        }
        self.nodes
            .alter_each_shard(
                client,
                &self.cluster,
                &self.local_database(),
                table,
                command,
                settings,
            )
            .await
    }

    /// The database of the shards' own rows.
    pub fn local_database(&self) -> String {
        format!("{}_local", self.database)
    }

    fn on_cluster(&self) -> String {
        format!("ON CLUSTER {}", quote_identifier(&self.cluster))
    }

    fn qualified(&self, database: &str, table: &str) -> String {
        format!("{}.{}", quote_identifier(database), quote_identifier(table))
    }

    /// Both databases, on every node.
    pub fn create_databases(&self) -> Vec<String> {
        [self.database.clone(), self.local_database()]
            .iter()
            .map(|database| {
                format!(
                    "CREATE DATABASE IF NOT EXISTS {} {}",
                    quote_identifier(database),
                    self.on_cluster()
                )
            })
            .collect()
    }

    /// The statements that lay out one single-node migration statement on the cluster.
    pub fn render(&self, statement: &str) -> Result<Vec<ClusterStatement>, String> {
        let words: Vec<&str> = statement.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|word| word.to_uppercase()).collect();
        let starts = |prefix: &[&str]| {
            upper.len() >= prefix.len() && prefix.iter().zip(&upper).all(|(a, b)| a == b)
        };
        if starts(&["CREATE", "TABLE", "IF", "NOT", "EXISTS"]) {
            let name = table_name(words.get(5).copied())?;
            if crate::migrate::rebuilt_table(statement).is_some() {
                // A table rebuilt with new settings (`topk_core::migrate`): not laid out on a
                // cluster yet, whose tables keep their settings.
                return Ok(Vec::new());
            }
            let rest = after_words(statement, 6);
            return self.render_create_table(&name, rest);
        }
        if starts(&["CREATE", "VIEW", "IF", "NOT", "EXISTS"]) {
            let name = table_name(words.get(5).copied())?;
            let rest = after_words(statement, 6);
            return Ok(vec![plain(format!(
                "CREATE VIEW IF NOT EXISTS {} {} {}",
                self.qualified(&self.database, &name),
                self.on_cluster(),
                self.qualify_tables(rest)
            ))]);
        }
        if starts(&["ALTER", "TABLE"]) && upper.get(3).is_some_and(|word| word == "ADD") {
            let name = table_name(words.get(2).copied())?;
            let column = words
                .get(5)
                .filter(|_| upper.get(4).is_some_and(|word| word == "COLUMN"))
                .ok_or_else(|| format!("cannot lay out on a cluster: {statement}"))?
                .trim_matches('`')
                .to_owned();
            let rest = after_words(statement, 3);
            if !is_sharded(&name) {
                // One replica set spans every node: the ALTER replicates to all of them
                // through ZooKeeper (`ON CLUSTER` would run it once per shard, twice here).
                return Ok(vec![ClusterStatement {
                    sql: format!(
                        "ALTER TABLE {} {rest}",
                        self.qualified(&self.database, &name),
                    ),
                    adds_column: Some((self.database.clone(), name, column)),
                    sharded_alter: None,
                }]);
            }
            // The local tables take the column; the Distributed table in front holds no data
            // and is made again from them (18.16 refuses ALTER .. ON CLUSTER on a table that
            // is not replicated when the cluster's shards are).
            let local = self.local_database();
            let adds = |database: &str| Some((database.to_owned(), name.clone(), column.clone()));
            return Ok(vec![
                ClusterStatement {
                    sql: format!(
                        "ALTER TABLE {} {} {rest}",
                        self.qualified(&local, &name),
                        self.on_cluster()
                    ),
                    adds_column: adds(&local),
                    sharded_alter: Some(ShardedAlter {
                        table: name.clone(),
                        command: rest.to_owned(),
                    }),
                },
                ClusterStatement {
                    sql: format!(
                        "DROP TABLE IF EXISTS {} {}",
                        self.qualified(&self.database, &name),
                        self.on_cluster()
                    ),
                    adds_column: adds(&self.database),
                    sharded_alter: None,
                },
                ClusterStatement {
                    sql: self.distributed_table(&name)?,
                    adds_column: adds(&self.database),
                    sharded_alter: None,
                },
            ]);
        }
        if starts(&["DROP", "TABLE", "IF", "EXISTS"]) && words.len() == 5 {
            let name = table_name(words.get(4).copied())?;
            if is_sharded(&name) {
                return Err(format!("dropping the sharded table {name} is not laid out"));
            }
            return Ok(vec![plain(format!(
                "DROP TABLE IF EXISTS {} {}",
                self.qualified(&self.database, &name),
                self.on_cluster()
            ))]);
        }
        if starts(&["INSERT", "INTO"]) {
            return Ok(vec![plain(statement.to_owned())]);
        }
        Err(format!(
            "cannot lay out on a cluster (teach topk_core::cluster this statement): {statement}"
        ))
    }

    fn render_create_table(&self, name: &str, rest: &str) -> Result<Vec<ClusterStatement>, String> {
        let engine_at = rest.find("ENGINE = MergeTree").ok_or_else(|| {
            format!("table {name}: only `ENGINE = MergeTree` tables are laid out")
        })?;
        let (columns, engine) = rest.split_at(engine_at);
        let engine = engine.trim_start_matches("ENGINE = MergeTree");
        let settings = if engine.contains("SETTINGS") {
            return Err(format!(
                "table {name}: merge its SETTINGS with the cluster's"
            ));
        } else {
            "SETTINGS replicated_deduplication_window = 0"
        };
        let database = if is_sharded(name) {
            self.local_database()
        } else {
            self.database.clone()
        };
        let shard_path = if is_sharded(name) { "{shard}" } else { "all" };
        let mut rendered = vec![plain(format!(
            "CREATE TABLE IF NOT EXISTS {} {} {columns}ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard_path}/{database}/{name}', '{{replica}}'){engine} {settings}",
            self.qualified(&database, name),
            self.on_cluster(),
            engine = engine.trim_end(),
        ))];
        if is_sharded(name) {
            rendered.push(plain(self.distributed_table(name)?));
        }
        Ok(rendered)
    }
}

impl ClusterLayout {
    /// Names every table after `FROM` or `JOIN` with the database: each node runs `ON
    /// CLUSTER` DDL in its default database, not the initiator's.
    fn qualify_tables(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 64);
        let mut previous_keyword = false;
        let mut rest = sql;
        while !rest.is_empty() {
            let word_start = rest
                .find(|c: char| !c.is_whitespace())
                .unwrap_or(rest.len());
            out.push_str(&rest[..word_start]);
            rest = &rest[word_start..];
            if rest.is_empty() {
                break;
            }
            let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let word = &rest[..word_end];
            let bare = word.trim_end_matches([',', ')', ';']);
            let is_table = previous_keyword
                && !bare.is_empty()
                && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if is_table {
                out.push_str(&self.qualified(&self.database, bare));
                out.push_str(&word[bare.len()..]);
            } else {
                out.push_str(word);
            }
            previous_keyword = matches!(word.to_uppercase().as_str(), "FROM" | "JOIN");
            rest = &rest[word_end..];
        }
        out
    }

    /// The `Distributed` table in front of a sharded table's local tables.
    fn distributed_table(&self, name: &str) -> Result<String, String> {
        let (_, key) = SHARDED_TABLES
            .iter()
            .find(|(table, _)| *table == name)
            .ok_or_else(|| format!("{name} is not sharded"))?;
        let local = self.local_database();
        Ok(format!(
            "CREATE TABLE IF NOT EXISTS {} {} AS {} ENGINE = Distributed({}, {}, {}, {key})",
            self.qualified(&self.database, name),
            self.on_cluster(),
            self.qualified(&local, name),
            quote_identifier(&self.cluster),
            quote_identifier(&local),
            quote_identifier(name),
        ))
    }

    /// A sharded work table laid out like the sharded table `table` (a restore's staging
    /// table): its local replicated tables under their own ZooKeeper path, and the
    /// `Distributed` table in front, both `ON CLUSTER`. `show_create_local` is the answer of
    /// `SHOW CREATE TABLE <db>_local.<table>` (the engine clause with the columns of today's
    /// schema, which the migrations built up over several statements).
    pub fn sharded_copy(
        &self,
        show_create_local: &str,
        table: &str,
        copy: &str,
    ) -> Result<Vec<String>, String> {
        let (_, key) = SHARDED_TABLES
            .iter()
            .find(|(name, _)| *name == table)
            .ok_or_else(|| format!("{table} is not sharded"))?;
        let local = self.local_database();
        let body = show_create_local
            .find('(')
            .map(|start| &show_create_local[start..])
            .ok_or_else(|| format!("no column list in `{show_create_local}`"))?;
        let path = format!("/{local}/{table}'");
        if body.matches(&path).count() != 1 {
            return Err(format!(
                "`{table}` is not a ReplicatedMergeTree at the layout's path (…{path}): {body}"
            ));
        }
        let body = body.replace(&path, &format!("/{local}/{copy}'"));
        Ok(vec![
            format!(
                "CREATE TABLE {} {} {body}",
                self.qualified(&local, copy),
                self.on_cluster()
            ),
            format!(
                "CREATE TABLE {} {} AS {} ENGINE = Distributed({}, {}, {}, {key})",
                self.qualified(&self.database, copy),
                self.on_cluster(),
                self.qualified(&local, copy),
                quote_identifier(&self.cluster),
                quote_identifier(&local),
                quote_identifier(copy),
            ),
        ])
    }

    /// Drops what [`Self::sharded_copy`] made, if it is there.
    pub fn drop_sharded_copy(&self, copy: &str) -> Vec<String> {
        [self.database.clone(), self.local_database()]
            .iter()
            .map(|database| {
                format!(
                    "DROP TABLE IF EXISTS {} {}",
                    self.qualified(database, copy),
                    self.on_cluster()
                )
            })
            .collect()
    }

    /// The local tables of `table` on every shard, qualified (no `ON CLUSTER`).
    pub fn local_table(&self, table: &str) -> String {
        self.qualified(&self.local_database(), table)
    }
}

/// Where statements that reach below the tables go: the parts and mutations of a table's data,
/// and the table an `ALTER` changes. On a single server the table itself; on a cluster a
/// sharded table's data lives in `<db>_local` on every shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Placement {
    #[default]
    SingleNode,
    Cluster(ClusterLayout),
}

impl Placement {
    /// `FROM system.<system_table> WHERE` (its rows about `table`'s data, every shard's on a
    /// cluster), ready for more conditions after `AND`.
    pub fn system_rows_of(&self, system_table: &str, table: &str) -> String {
        let table_literal = format!("'{}'", table.replace('\\', "\\\\").replace('\'', "\\'"));
        match self {
            Placement::Cluster(layout) if is_sharded(table) => format!(
                "FROM cluster('{}', system.{system_table}) WHERE database = '{}' AND table = {table_literal}",
                layout.cluster.replace('\'', ""),
                layout.local_database().replace('\'', ""),
            ),
            _ => format!(
                "FROM system.{system_table} WHERE database = currentDatabase() AND table = {table_literal}"
            ),
        }
    }

    /// The settings of an insert into a sharded table whose rows must be on *every* replica of
    /// their shard when it returns (a rollup snapshot, before the progress row that makes
    /// readers use it): on a cluster a synchronous `Distributed` insert with `insert_quorum`
    /// = the replicas of the smallest shard (read from `system.clusters`), so a shard with a
    /// replica down fails the insert (within a minute) instead of leaving that replica without the rows. None on
    /// a single server.
    ///
    /// ClickHouse 18.16 runs one quorum insert per table at a time ("Quorum for previous write
    /// has not been satisfied yet" for a second one): callers issue these inserts one after
    /// the other.
    pub async fn all_replicas_insert_settings(
        &self,
        client: &clickhouse::Client,
    ) -> Result<Vec<(&'static str, String)>, String> {
        let Placement::Cluster(layout) = self else {
            return Ok(Vec::new());
        };
        let replicas: u64 = client
            .query(
                "SELECT toUInt64(min(replicas)) FROM (SELECT shard_num, count() AS replicas \
                 FROM system.clusters WHERE cluster = ? GROUP BY shard_num)",
            )
            .bind(&layout.cluster)
            .fetch_one()
            .await
            .map_err(|error| format!("reading cluster `{}`: {error}", layout.cluster))?;
        if replicas == 0 {
            return Err(format!(
                "cluster `{}` is not in the server's system.clusters (remote_servers)",
                layout.cluster
            ));
        }
        let mut settings = vec![("insert_distributed_sync", "1".to_owned())];
        if replicas > 1 {
            settings.push(("insert_quorum", replicas.to_string()));
            // A replica that died a moment ago still counts as alive until its ZooKeeper
            // session expires; fail within a minute instead of the default ten.
            settings.push(("insert_quorum_timeout", "60000".to_owned()));
        }
        Ok(settings)
    }

    /// Runs `ALTER TABLE <table> <command>` (`settings` sent with it) where `table`'s data
    /// lives: on a cluster, a sharded table's local tables on every shard
    /// ([`ClusterLayout::alter_local_tables`]) or once for a table replicated to every node.
    pub async fn alter(
        &self,
        client: &clickhouse::Client,
        table: &str,
        command: &str,
        settings: &[(&str, &str)],
    ) -> Result<(), clickhouse::error::Error> {
        let target = match self {
            Placement::Cluster(layout) if is_sharded(table) => {
                return layout
                    .alter_local_tables(client, table, command, settings)
                    .await;
            }
            Placement::Cluster(layout) => layout.qualified(&layout.database, table),
            Placement::SingleNode => quote_identifier(table),
        };
        execute_alter(client, &target, command, settings).await
    }
}

/// `ALTER TABLE <target> <command>` through `client`, `settings` sent with it.
pub(crate) async fn execute_alter(
    client: &clickhouse::Client,
    target: &str,
    command: &str,
    settings: &[(&str, &str)],
) -> Result<(), clickhouse::error::Error> {
    let mut query = client.query(&format!("ALTER TABLE {target} {command}"));
    for (name, value) in settings {
        query = query.with_setting(*name, *value);
    }
    query.execute().await
}

fn plain(sql: String) -> ClusterStatement {
    ClusterStatement {
        sql,
        adds_column: None,
        sharded_alter: None,
    }
}

pub fn is_sharded(table: &str) -> bool {
    SHARDED_TABLES.iter().any(|(name, _)| *name == table)
}

fn table_name(word: Option<&str>) -> Result<String, String> {
    let word = word.ok_or("a statement without a table name")?;
    let name = word.trim_matches('`');
    if name.contains('.') || name.is_empty() {
        return Err(format!(
            "`{word}`: migrations name tables without a database"
        ));
    }
    Ok(name.to_owned())
}

/// The text after the first `count` whitespace-separated words, layout kept.
fn after_words(statement: &str, count: usize) -> &str {
    let mut rest = statement.trim_start();
    for _ in 0..count {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::{statements, MIGRATIONS};

    fn layout() -> ClusterLayout {
        ClusterLayout::new("topk", "topk")
    }

    #[test]
    fn a_sharded_copy_gets_its_own_replication_path_and_a_distributed_table() {
        let show = "CREATE TABLE topk_local.plays_minute ( user_id String,  minute DateTime('UTC')) \
                    ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/topk_local/plays_minute', \
                    '{replica}') PARTITION BY toDate(minute) ORDER BY (user_id, minute) \
                    SETTINGS replicated_deduplication_window = 0, index_granularity = 8192";
        let statements = layout()
            .sharded_copy(show, "plays_minute", "plays_minute_restore_staging")
            .unwrap();
        assert_eq!(
            statements[0],
            "CREATE TABLE `topk_local`.`plays_minute_restore_staging` ON CLUSTER `topk` \
             ( user_id String,  minute DateTime('UTC')) ENGINE = ReplicatedMergeTree(\
             '/clickhouse/tables/{shard}/topk_local/plays_minute_restore_staging', '{replica}') \
             PARTITION BY toDate(minute) ORDER BY (user_id, minute) \
             SETTINGS replicated_deduplication_window = 0, index_granularity = 8192"
        );
        assert_eq!(
            statements[1],
            "CREATE TABLE `topk`.`plays_minute_restore_staging` ON CLUSTER `topk` AS \
             `topk_local`.`plays_minute_restore_staging` ENGINE = Distributed(`topk`, \
             `topk_local`, `plays_minute_restore_staging`, cityHash64(user_id))"
        );
        assert!(layout()
            .sharded_copy(
                "CREATE TABLE x (a UInt8) ENGINE = MergeTree ORDER BY a",
                "plays_minute",
                "c"
            )
            .is_err());
        assert!(layout().sharded_copy(show, "ingest_claims", "c").is_err());
        assert_eq!(
            layout().drop_sharded_copy("c"),
            vec![
                "DROP TABLE IF EXISTS `topk`.`c` ON CLUSTER `topk`",
                "DROP TABLE IF EXISTS `topk_local`.`c` ON CLUSTER `topk`"
            ]
        );
    }

    #[test]
    fn a_sharded_table_is_replicated_per_shard_behind_a_distributed_table() {
        let rendered = layout()
            .render("CREATE TABLE IF NOT EXISTS plays_minute\n(\n    user_id String\n)\nENGINE = MergeTree\nPARTITION BY toDate(minute)\nORDER BY (user_id, minute)")
            .unwrap();
        assert_eq!(rendered.len(), 2);
        assert!(rendered[0].sql.starts_with(
            "CREATE TABLE IF NOT EXISTS `topk_local`.`plays_minute` ON CLUSTER `topk` (\n    user_id String\n)\nENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/topk_local/plays_minute', '{replica}')\nPARTITION BY toDate(minute)\nORDER BY (user_id, minute) SETTINGS replicated_deduplication_window = 0"
        ), "{}", rendered[0].sql);
        assert_eq!(
            rendered[1].sql,
            "CREATE TABLE IF NOT EXISTS `topk`.`plays_minute` ON CLUSTER `topk` AS `topk_local`.`plays_minute` ENGINE = Distributed(`topk`, `topk_local`, `plays_minute`, cityHash64(user_id))"
        );
    }

    #[test]
    fn a_small_table_is_replicated_to_every_node() {
        let rendered = layout()
            .render(
                "CREATE TABLE IF NOT EXISTS flush_commits (x UInt8) ENGINE = MergeTree ORDER BY x",
            )
            .unwrap();
        assert_eq!(rendered.len(), 1);
        assert!(rendered[0]
            .sql
            .contains("`topk`.`flush_commits` ON CLUSTER `topk` (x UInt8) ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/topk/flush_commits', '{replica}') ORDER BY x"));
    }

    #[test]
    fn an_added_column_reaches_the_local_and_the_distributed_table() {
        let rendered = layout()
            .render("ALTER TABLE plays_minute ADD COLUMN flush_seq UInt64 DEFAULT flush_offset")
            .unwrap();
        let sql: Vec<&str> = rendered.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(
            sql,
            [
                "ALTER TABLE `topk_local`.`plays_minute` ON CLUSTER `topk` ADD COLUMN flush_seq UInt64 DEFAULT flush_offset",
                "DROP TABLE IF EXISTS `topk`.`plays_minute` ON CLUSTER `topk`",
                "CREATE TABLE IF NOT EXISTS `topk`.`plays_minute` ON CLUSTER `topk` AS `topk_local`.`plays_minute` ENGINE = Distributed(`topk`, `topk_local`, `plays_minute`, cityHash64(user_id))",
            ]
        );
        assert_eq!(
            rendered[0].adds_column,
            Some((
                "topk_local".into(),
                "plays_minute".into(),
                "flush_seq".into()
            ))
        );
        assert_eq!(
            rendered[0].sharded_alter,
            Some(ShardedAlter {
                table: "plays_minute".into(),
                command: "ADD COLUMN flush_seq UInt64 DEFAULT flush_offset".into()
            })
        );
        assert!(rendered[1..].iter().all(|s| s.sharded_alter.is_none()));
    }

    #[test]
    fn a_column_added_to_a_small_table_is_added_once_and_replicated() {
        let rendered = layout()
            .render("ALTER TABLE rollup_progress ADD COLUMN snapshot_id UInt64 DEFAULT 0")
            .unwrap();
        assert_eq!(rendered.len(), 1);
        assert_eq!(
            rendered[0].sql,
            "ALTER TABLE `topk`.`rollup_progress` ADD COLUMN snapshot_id UInt64 DEFAULT 0"
        );
    }

    #[test]
    fn a_sharded_table_is_inspected_on_every_shard() {
        let placement = Placement::Cluster(layout());
        assert_eq!(
            placement.system_rows_of("parts", "plays_minute"),
            "FROM cluster('topk', system.parts) WHERE database = 'topk_local' AND table = 'plays_minute'"
        );
        assert_eq!(
            Placement::SingleNode.system_rows_of("parts", "plays_minute"),
            "FROM system.parts WHERE database = currentDatabase() AND table = 'plays_minute'"
        );
    }

    #[test]
    fn a_view_names_its_tables_with_the_database() {
        let rendered = layout()
            .render("CREATE VIEW IF NOT EXISTS v AS\nSELECT a FROM plays_minute\nANY LEFT JOIN (SELECT b FROM system.tables) USING (a) WHERE x IN (SELECT y FROM ingest_claims)")
            .unwrap();
        assert_eq!(
            rendered[0].sql,
            "CREATE VIEW IF NOT EXISTS `topk`.`v` ON CLUSTER `topk` AS\nSELECT a FROM `topk`.`plays_minute`\nANY LEFT JOIN (SELECT b FROM system.tables) USING (a) WHERE x IN (SELECT y FROM `topk`.`ingest_claims`)"
        );
    }

    #[test]
    fn every_migration_statement_can_be_laid_out() {
        for migration in MIGRATIONS {
            for statement in statements(migration.sql) {
                layout()
                    .render(&statement)
                    .unwrap_or_else(|error| panic!("{}: {error}", migration.name));
            }
        }
    }
}
