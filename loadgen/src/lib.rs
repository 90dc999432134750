//! `topk-loadgen`: realistic play events for the tests, the demo and the benchmarks.
//!
//! - [`generate`]: a stream of events from Zipf users and songs with chosen shares of
//!   duplicates, malformed and late events, each with its ground truth.
//! - [`listeners`]: a week of realistic listeners (personal libraries, daily shape, offline
//!   plays delivered late, client resends), in arrival order.
//! - [`oracle`]: the brute-force top lists of a minute table; [`charts`]: the brute-force
//!   charts of generated events.
//! - [`produce`]: producing either to Kafka.
//! - [`catalog`]: a sample song catalog for the generated songs.

pub mod catalog;
pub mod charts;
pub mod generate;
pub mod listeners;
pub mod oracle;
pub mod produce;
