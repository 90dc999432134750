//! Integration tests against the real local stack (`scripts/stack.sh up`).
//! One test binary; each module is one area of the product.

mod aggregator;
mod api;
mod archive;
mod archive_ingest;
mod catalog;
mod charts;
mod exactly_once;
mod foundation;
mod ingest;
mod proxy;
mod restore;
mod rollup;
