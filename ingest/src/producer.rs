//! The Kafka side: validated play events produced to the plays topic, keyed by `user_id`, with
//! an idempotent producer (`enable.idempotence=true`, which implies `acks=all`: every in-sync
//! replica has the event before the broker acknowledges it, and a retried send is not
//! written twice).
//!
//! [`PlayProducer::produce`] returns only when Kafka acknowledged every event, or fails when
//! one was not acknowledged within the deadline. A failure says nothing about the others:
//! some may be on the topic. The client is told to retry the whole request with the same
//! `event_id`s, and the aggregator counts an `event_id` once.
//!
//! A broker that refuses an event (rather than not answering) gets a new producer, so a new
//! producer id: an idempotent producer the broker has fenced stays refused otherwise. Seen
//! with tansu 0.6.0 in `tests/it/ingest.rs`: after events timed out in the producer's queue
//! during an outage, librdkafka bumped the producer's epoch (KIP-360) and tansu answered
//! `ProducerFenced`; with a new producer the retries went through. On Apache Kafka the epoch
//! bump works, and a reset would cost nothing but a new producer id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
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
    shared: Arc<Shared>,
}

struct Shared {
    client_config: ClientConfig,
    /// The producer in use, and how often it was replaced ([`PlayProducer::reset`]).
    current: RwLock<(FutureProducer, u64)>,
    resets: AtomicU64,
    topic: String,
    deadline: Duration,
}

impl std::fmt::Debug for PlayProducer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PlayProducer")
            .field("topic", &self.shared.topic)
            .field("deadline", &self.shared.deadline)
            .finish_non_exhaustive()
    }
}

impl PlayProducer {
    pub fn new(config: &IngestConfig) -> Result<Self, KafkaError> {
        let mut client_config = ClientConfig::new();
        client_config
            .set("bootstrap.servers", &config.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.kafka_linger_ms.to_string())
            .set("batch.num.messages", "10000")
            // What librdkafka does not deliver by the deadline it drops from its queue: the
            // client was answered 503 by then and retries.
            .set("message.timeout.ms", config.kafka_deadline_ms.to_string());
        let producer: FutureProducer = client_config.create()?;
        Ok(Self {
            shared: Arc::new(Shared {
                client_config,
                current: RwLock::new((producer, 0)),
                resets: AtomicU64::new(0),
                topic: config.plays_topic.clone(),
                deadline: config.kafka_deadline(),
            }),
        })
    }

    /// The producer in use and its generation (never held across an await).
    fn current(&self) -> (FutureProducer, u64) {
        self.shared
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the producer of `generation` with a new one (once, however many requests saw
    /// it fail). Events still queued in the old one are dropped with it: their requests
    /// were answered 503 and are retried.
    fn reset(&self, generation: u64, cause: &KafkaError) {
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.1 != generation {
            return;
        }
        match self.shared.client_config.create::<FutureProducer>() {
            Ok(producer) => {
                *current = (producer, generation + 1);
                self.shared.resets.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("topk_ingest_producer_resets_total").increment(1);
                tracing::warn!(%cause, "kafka refused an event: producer replaced");
            }
            Err(error) => tracing::error!(%error, %cause, "cannot replace the producer"),
        }
    }

    /// How often the producer was replaced since start.
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::Relaxed)
    }

    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Produces `events` and waits until Kafka acknowledged every one, at most the deadline.
    pub async fn produce(&self, events: &[PlayEvent]) -> Result<(), ProduceError> {
        let (producer, generation) = self.current();
        let outcome = self.produce_with(&producer, events).await;
        if let Err(ProduceError::Kafka(cause)) = &outcome {
            self.reset(generation, cause);
        }
        outcome
    }

    async fn produce_with(
        &self,
        producer: &FutureProducer,
        events: &[PlayEvent],
    ) -> Result<(), ProduceError> {
        let deadline = self.shared.deadline;
        let started = Instant::now();
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events {
            let payload = serde_json::to_vec(event).expect("a PlayEvent serializes");
            let record = FutureRecord::to(&self.shared.topic)
                .key(event.user_id.as_bytes())
                .payload(&payload);
            match producer.send_result(record) {
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
        let remaining = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, acknowledged).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(ProduceError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )))) => Err(ProduceError::Deadline(deadline)),
            Ok(Err(error)) => Err(error),
            Err(_elapsed) => Err(ProduceError::Deadline(deadline)),
        }
    }

    /// Whether the broker answers a metadata request for the topic within `timeout`.
    pub async fn check_topic(&self, timeout: Duration) -> Result<(), KafkaError> {
        let (producer, _) = self.current();
        let topic = self.shared.topic.clone();
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
        self.current().0.flush(timeout)
    }

    /// Events still in the producer's queue.
    pub fn queued(&self) -> i32 {
        self.current().0.in_flight_count()
    }
}
