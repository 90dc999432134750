//! Producing generated messages to Kafka, keyed by user id, with the idempotent producer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::generate::GeneratedMessage;

/// How many sends may be awaiting acknowledgement at once.
const MAX_IN_FLIGHT: usize = 10_000;

pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("message.timeout.ms", "120000")
        .create()?)
}

/// The highest acknowledged offset of each partition written to.
pub type LastOffsets = HashMap<i32, i64>;

/// Sends every message and waits for every acknowledgement. `rate_per_sec` of 0 means as
/// fast as the broker takes them. `progress` is called with the count sent so far. Returns
/// the highest offset acknowledged per partition.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    messages: &[GeneratedMessage],
    rate_per_sec: u64,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<LastOffsets> {
    let mut last_offsets = LastOffsets::new();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for (index, message) in messages.iter().enumerate() {
        if rate_per_sec > 0 {
            let due = started + Duration::from_secs_f64(index as f64 / rate_per_sec as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            acknowledged(in_flight.next().await, &mut last_offsets)?;
        }
        let record = FutureRecord::to(topic)
            .key(message.key.as_bytes())
            .payload(&message.payload);
        in_flight.push(producer.send(record, Duration::from_secs(60)));
        if (index + 1) % 10_000 == 0 {
            progress(index + 1);
        }
    }
    while let Some(result) = in_flight.next().await {
        acknowledged(Some(result), &mut last_offsets)?;
    }
    progress(messages.len());
    Ok(last_offsets)
}

type SendResult = Result<
    rdkafka::producer::future_producer::Delivery,
    (rdkafka::error::KafkaError, rdkafka::message::OwnedMessage),
>;

fn acknowledged(result: Option<SendResult>, last_offsets: &mut LastOffsets) -> anyhow::Result<()> {
    match result {
        None => Ok(()),
        Some(Ok(delivery)) => {
            let last = last_offsets
                .entry(delivery.partition)
                .or_insert(delivery.offset);
            *last = (*last).max(delivery.offset);
            Ok(())
        }
        Some(Err((error, _))) => Err(anyhow::anyhow!("producing a play event failed: {error}")),
    }
}

/// Creates each topic with `partitions` partitions unless it exists already.
pub async fn ensure_topics(brokers: &str, topics: &[(String, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}
