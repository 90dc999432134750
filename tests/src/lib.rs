//! Test harness for the integration tests: where the local stack is, and per-test isolation.
//!
//! Endpoints come from the env vars `scripts/stack.sh env` prints; when one is unset, the
//! harness reads the file `stack.sh up` writes (`.stack/env`), then falls back to the stack's
//! default loopback ports. Every test gets its own ClickHouse database and Kafka topics,
//! named after the test, so tests can run in parallel against one stack.

pub mod api;
pub mod committed;
pub mod ingest;
pub mod pipeline;
pub mod process;
pub mod proxy;
pub mod stack;
