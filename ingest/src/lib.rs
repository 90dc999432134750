//! `topk-ingest`: apps post play events over HTTP; each valid one is produced to the plays
//! topic and acknowledged to the client only after Kafka acknowledged it.
//!
//! - [`app`]: the router with its layers and [`serve`] with graceful shutdown (the producer's
//!   queue flushed last).
//! - [`routes`]: `POST /v1/plays` and the operational routes; [`body`]: a body cut into
//!   events; the events are checked by the contract the aggregator applies
//!   (`topk_core::event`).
//! - [`producer`]: the idempotent Kafka producer; [`rate_limit`]: token buckets per caller.
//! - [`error`]: every failure and its HTTP status; [`config`]: options; [`state`]: what
//!   requests share; [`openapi`]: the API description served at `/openapi.json`.
//!
//! Authentication (JWT) and the HTTP edge (connection cap, header-read timeout) are
//! `topk-api`'s, shared as its library.

pub mod app;
pub mod body;
pub mod config;
pub mod error;
pub mod openapi;
pub mod producer;
pub mod rate_limit;
pub mod routes;
pub mod state;

pub use app::{app, serve};
pub use state::IngestState;
