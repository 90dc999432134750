//! Outage tests: they stop and restart services of the shared local stack, so they live in
//! their own test binary (cargo runs test binaries one after another, never beside `it`),
//! and run one at a time (`--test-threads 1` is not needed: one lock serializes them).

mod clickhouse_outage;
mod s3_outage;

use std::sync::OnceLock;

/// Serializes the tests of this binary: each stops a service everyone needs.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

pub use topk_tests::stack::run_script as stack_script;
