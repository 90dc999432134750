//! `topk-loadgen`: realistic play events for the tests, the demo and the benchmarks.

pub mod generate;
pub mod produce;
