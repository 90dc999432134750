//! A Kafka message as the aggregator keeps it after polling: owned, so it can cross from the
//! polling thread to a shard.

use rdkafka::message::{BorrowedMessage, Headers, Message};
use topk_archive::ArchiveRecord;

/// The archive's record (partition, offset, timestamp, key, payload) plus the headers the
/// dead-letter topic passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub raw: ArchiveRecord,
    pub headers: Vec<(String, Vec<u8>)>,
    /// How often the poller had positioned this partition when it fetched the record (see
    /// `PartitionState::generation`).
    pub generation: u64,
}

impl ConsumedRecord {
    pub fn from_message(message: &BorrowedMessage<'_>, generation: u64) -> Self {
        let headers = message.headers().map_or_else(Vec::new, |headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        });
        Self {
            raw: ArchiveRecord {
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            },
            headers,
            generation,
        }
    }

    pub fn partition(&self) -> i32 {
        self.raw.partition
    }

    pub fn offset(&self) -> i64 {
        self.raw.offset
    }

    /// Rough memory held, for the memory cap.
    pub fn estimated_bytes(&self) -> usize {
        128 + self.raw.payload.len()
            + self.raw.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(key, value)| key.len() + value.len() + 48)
                .sum::<usize>()
    }
}
