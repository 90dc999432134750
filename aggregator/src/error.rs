//! The aggregator's errors.

#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("dead-letter topic: {0}")]
    DeadLetter(String),
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] std::io::Error),
    #[error("{0}")]
    Fatal(String),
    #[error("shutdown deadline passed with unflushed partitions: {0:?} (they are re-read on the next start)")]
    ShutdownIncomplete(Vec<i32>),
}
