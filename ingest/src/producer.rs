//! The Kafka side: validated play events produced to the plays topic, keyed by `user_id`, with
//! an idempotent producer (`enable.idempotence=true`, which implies `acks=all`: every in-sync
//! replica has the event before the broker acknowledges it, and a retried send is not
//! written twice).
//!
//! [`PlayProducer::produce`] returns only when Kafka acknowledged every event, or fails when
//! one was not acknowledged within the deadline. A failure says nothing about the others:
//! some may be on the topic. The client is told to retry the whole request with the same
//! `event_id`s, and the aggregator counts an `event_id` once.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use topk_core::event::PlayEvent;

use crate::config::IngestConfig;

/// Why events were not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka did not acknowledge within {0:?}")]
    Deadline(Duration),
    #[error("the producer's queue is full")]
    QueueFull,
    #[error("kafka refused an event: {0}")]
    Kafka(KafkaError),
    #[error("the producer dropped an event before its acknowledgement")]
    Canceled,
}

impl ProduceError {
    /// The metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Deadline(_) => "deadline",
            Self::QueueFull => "queue_full",
            Self::Kafka(_) => "kafka_error",
            Self::Canceled => "canceled",
        }
    }
}

#[derive(Clone)]
pub struct PlayProducer {
    producer: FutureProducer,
    topic: String,
    deadline: Duration,
}

impl std::fmt::Debug for PlayProducer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PlayProducer")
            .field("topic", &self.topic)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl PlayProducer {
    pub fn new(config: &IngestConfig) -> Result<Self, KafkaError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.kafka_linger_ms.to_string())
            .set("batch.num.messages", "10000")
            // What librdkafka does not deliver by the deadline it drops from its queue: the
            // client was answered 503 by then and retries.
            .set("message.timeout.ms", config.kafka_deadline_ms.to_string())
            .create()?;
        Ok(Self {
            producer,
            topic: config.plays_topic.clone(),
            deadline: config.kafka_deadline(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces `events` and waits until Kafka acknowledged every one, at most the deadline.
    pub async fn produce(&self, events: &[PlayEvent]) -> Result<(), ProduceError> {
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let payload = serde_json::to_vec(event).expect("a PlayEvent serializes");
            let record = FutureRecord::to(&self.topic)
                .key(event.user_id.as_bytes())
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(ProduceError::QueueFull)
                }
                Err((error, _)) => return Err(ProduceError::Kafka(error)),
            }
        }
        let acknowledged = try_join_all(deliveries.into_iter().map(|delivery| async {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(ProduceError::Kafka(error)),
                Err(_canceled) => Err(ProduceError::Canceled),
            }
        }));
        let remaining = self.deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, acknowledged).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(ProduceError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )))) => Err(ProduceError::Deadline(self.deadline)),
            Ok(Err(error)) => Err(error),
            Err(_elapsed) => Err(ProduceError::Deadline(self.deadline)),
        }
    }

    /// Whether the broker answers a metadata request for the topic within `timeout`.
    pub async fn check_topic(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = producer.client().fetch_metadata(Some(&topic), timeout)?;
            let known = metadata
                .topics()
                .iter()
                .any(|found| found.name() == topic && found.error().is_none());
            if known {
                Ok(())
            } else {
                Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))
            }
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Waits until the producer's queue is empty (on shutdown), at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Events still in the producer's queue.
    pub fn queued(&self) -> i32 {
        self.producer.in_flight_count()
    }
}
