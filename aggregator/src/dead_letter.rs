//! The dead-letter topic: every event that breaks the contract is produced there with its
//! original key, payload and headers, plus headers saying why and where it came from:
//! `topk-dlq-reason` (a stable label, see `RejectReason::as_str`), `topk-dlq-detail`,
//! `topk-source-topic`, `topk-source-partition`, `topk-source-offset`.
//!
//! Dead letters are confirmed (acknowledged by the broker) before the flush whose checkpoint
//! covers their offsets, so none is lost. After a crash, a replayed range may produce some
//! again: consumers of the dead-letter topic deduplicate on (source partition, offset).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use topk_core::event::Rejection;

use crate::error::AggregatorError;
use crate::record::ConsumedRecord;

pub const REASON_HEADER: &str = "topk-dlq-reason";
pub const DETAIL_HEADER: &str = "topk-dlq-detail";
pub const SOURCE_TOPIC_HEADER: &str = "topk-source-topic";
pub const SOURCE_PARTITION_HEADER: &str = "topk-source-partition";
pub const SOURCE_OFFSET_HEADER: &str = "topk-source-offset";

/// How often one dead letter is re-sent before the flush gives up (and retries later).
const SEND_ATTEMPTS: usize = 5;

#[derive(Clone)]
pub struct DeadLetterQueue {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
}

/// A dead letter on its way to the broker; kept until the broker acknowledged it.
pub struct PendingDeadLetter {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    delivery: Option<DeliveryFuture>,
    confirmed: bool,
}

impl PendingDeadLetter {
    pub fn estimated_bytes(&self) -> usize {
        128 + self.payload.len() + self.key.as_ref().map_or(0, Vec::len)
    }
}

impl DeadLetterQueue {
    pub fn new(brokers: &str, topic: &str, source_topic: &str) -> Result<Self, AggregatorError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            source_topic: source_topic.to_owned(),
        })
    }

    /// Starts sending one rejected record; never blocks.
    pub fn send(&self, record: &ConsumedRecord, rejection: &Rejection) -> PendingDeadLetter {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 5);
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let partition = record.partition().to_string();
        let offset = record.offset().to_string();
        for (key, value) in [
            (REASON_HEADER, rejection.reason.as_str()),
            (DETAIL_HEADER, rejection.detail.as_str()),
            (SOURCE_TOPIC_HEADER, self.source_topic.as_str()),
            (SOURCE_PARTITION_HEADER, partition.as_str()),
            (SOURCE_OFFSET_HEADER, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut pending = PendingDeadLetter {
            key: record.raw.key.clone(),
            payload: record.raw.payload.clone(),
            headers,
            delivery: None,
            confirmed: false,
        };
        pending.delivery = self.start(&pending);
        pending
    }

    fn start(&self, pending: &PendingDeadLetter) -> Option<DeliveryFuture> {
        let mut future_record = FutureRecord::<[u8], [u8]>::to(&self.topic)
            .payload(&pending.payload)
            .headers(pending.headers.clone());
        if let Some(key) = &pending.key {
            future_record = future_record.key(key);
        }
        // A full local queue is not an error: `confirm` sends it again.
        self.producer.send_result(future_record).ok()
    }

    /// Waits until the broker acknowledged every pending dead letter, re-sending failures.
    pub async fn confirm(
        &self,
        pending: &mut Vec<PendingDeadLetter>,
    ) -> Result<(), AggregatorError> {
        for letter in pending.iter_mut().filter(|letter| !letter.confirmed) {
            let mut attempts = 0;
            loop {
                let outcome = match letter.delivery.take() {
                    Some(delivery) => match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(error.to_string()),
                        Err(_) => Err("delivery canceled".to_owned()),
                    },
                    None => Err("local queue full".to_owned()),
                };
                let Err(error) = outcome else {
                    letter.confirmed = true;
                    break;
                };
                attempts += 1;
                if attempts >= SEND_ATTEMPTS {
                    // Put it back so the retried flush sends it again.
                    letter.delivery = self.start(letter);
                    return Err(AggregatorError::DeadLetter(error));
                }
                tracing::warn!(%error, attempts, "dead letter not acknowledged, sending again");
                tokio::time::sleep(Duration::from_millis(100 * attempts as u64)).await;
                letter.delivery = self.start(letter);
            }
        }
        pending.clear();
        Ok(())
    }

    /// Flushes the producer's queue (on shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
