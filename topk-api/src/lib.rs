//! `topk-api`: each user's top songs of the last 7 days over HTTP.
//!
//! - [`app`]: the router with its layers (request ids, tracing, metrics, load shedding) and
//!   [`serve`] with graceful shutdown.
//! - [`routes`]: handlers and input validation ([`charts`]: the charts' own); [`auth`]: JWT verification and who may read
//!   whom; [`store`]: the ClickHouse queries, requests coalesced into batches; [`ranking`]: the
//!   top list and its exactness.
//! - [`error`]: every failure and its HTTP status; [`config`]: options; [`state`]: what
//!   requests share; [`openapi`]: the API description served at `/openapi.json`.

pub mod app;
pub mod auth;
pub mod charts;
pub mod config;
pub mod edge;
pub mod error;
pub mod openapi;
pub mod ranking;
pub mod routes;
pub mod state;
pub mod store;

pub use app::{app, serve, shutdown_signal};
pub use state::{AppState, Clock};
