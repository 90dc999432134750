//! What the three topk binaries (`topk-aggregator`, `topk-rollup`, `topk-api`) share.
//!
//! - [`event`]: the play-event contract and its validation.
//! - [`window`]: minute buckets, UTC days and the 7-day window.
//! - [`schema`]: table names and the row types written to and read from ClickHouse.
//! - [`chart`]: what counts for the charts (the per-user cap) and their windows.
//! - [`snapshots`]: the current rollup snapshot of a day, and the days with plays committed
//!   since theirs (what the rollup and the API both decide by).
//! - [`dedup`]: the duplicate filter (same `event_id` within a horizon counts once).
//! - [`claims`]: how a writer takes a Kafka partition over and fences the writers before it.
//! - [`coordination`]: where claims and commits are decided: ClickHouse (one server) or
//!   ZooKeeper / ClickHouse Keeper ([`keeper`], a cluster).
//! - [`committed`]: which minute rows count (committed flushes): the rule every reader applies.
//! - [`db`]: ClickHouse connection options and client construction.
//! - [`migrate`]: the versioned SQL migrations in `sql/` and the runner that applies them.
//! - [`cluster`]: how those migrations are laid out on a ClickHouse cluster.
//! - [`config`]: layered configuration (file, then env, then flags).
//! - [`shutdown`]: graceful stop on SIGTERM/SIGINT, handlers installed at startup.
//! - [`telemetry`]: tracing and Prometheus metrics setup shared by every binary.

pub mod chart;
pub mod claims;
pub mod cluster;
pub mod committed;
pub mod config;
pub mod coordination;
pub mod db;
pub mod dedup;
pub mod event;
pub mod keeper;
pub mod migrate;
pub mod schema;
pub mod shutdown;
pub mod snapshots;
pub mod telemetry;
pub mod window;
