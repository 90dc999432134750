//! One archive object: the records of one (topic, partition) over one offset range, as
//! zstd-compressed NDJSON, and the key it is stored under.
//!
//! Key layout (offsets zero-padded so keys sort by offset):
//! `{prefix}/{topic}/date=YYYY-MM-DD/partition=NNNNN/{first_offset:020}-{last_offset:020}.ndjson.zst`.
//! The date is the UTC day of the first record's Kafka timestamp (today when it has none), so
//! the same records always give the same key and the same bytes: a replay after a crash
//! rewrites an object instead of adding a different one, except when the replay starts at
//! another offset, which the reader handles (overlapping ranges count each offset once).

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};

use crate::error::ArchiveError;
use crate::record::{decode_ndjson, encode_ndjson, ArchiveRecord};

/// The zstd level: level 3 compresses play-event JSON about 6-8x at a few hundred MB/s.
const ZSTD_LEVEL: i32 = 3;

const SEGMENT_SUFFIX: &str = ".ndjson.zst";

/// The prefix with exactly one trailing slash, or nothing for an empty prefix.
pub(crate) fn normalized_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// The key prefix of one topic's objects of one date: `{prefix}/{topic}/date=YYYY-MM-DD/`.
pub fn date_prefix(prefix: &str, topic: &str, date: NaiveDate) -> String {
    format!(
        "{}{topic}/date={}/",
        normalized_prefix(prefix),
        date.format("%Y-%m-%d")
    )
}

/// Where one segment is stored, and what the key says about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentKey {
    pub topic: String,
    /// The UTC day of the first record's Kafka timestamp.
    pub date: NaiveDate,
    pub partition: i32,
    pub first_offset: i64,
    /// Inclusive.
    pub last_offset: i64,
    /// The full object key.
    pub object_key: String,
}

impl SegmentKey {
    pub fn new(
        prefix: &str,
        topic: &str,
        date: NaiveDate,
        partition: i32,
        first_offset: i64,
        last_offset: i64,
    ) -> Self {
        let object_key = format!(
            "{}partition={partition:05}/{first_offset:020}-{last_offset:020}{SEGMENT_SUFFIX}",
            date_prefix(prefix, topic, date)
        );
        Self {
            topic: topic.to_owned(),
            date,
            partition,
            first_offset,
            last_offset,
            object_key,
        }
    }

    /// Reads a key written by [`SegmentKey::new`] with the same prefix; `None` for any other
    /// object.
    pub fn parse(prefix: &str, object_key: &str) -> Option<Self> {
        let rest = object_key.strip_prefix(&normalized_prefix(prefix))?;
        let mut parts = rest.split('/');
        let topic = parts.next()?;
        let date =
            NaiveDate::parse_from_str(parts.next()?.strip_prefix("date=")?, "%Y-%m-%d").ok()?;
        let partition_text = parts.next()?.strip_prefix("partition=")?;
        let (first_text, last_text) = parts
            .next()?
            .strip_suffix(SEGMENT_SUFFIX)?
            .split_once('-')?;
        if parts.next().is_some() || topic.is_empty() {
            return None;
        }
        let partition: i32 = partition_text.parse().ok()?;
        let first_offset: i64 = first_text.parse().ok()?;
        let last_offset: i64 = last_text.parse().ok()?;
        let key = Self::new(prefix, topic, date, partition, first_offset, last_offset);
        // Only the canonical spelling (padding included) is ours.
        (key.object_key == object_key && first_offset <= last_offset).then_some(key)
    }
}

impl fmt::Display for SegmentKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.object_key)
    }
}

/// The records of one (topic, partition) for one offset range, checked to form a segment.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveSegment<'a> {
    topic: &'a str,
    partition: i32,
    records: &'a [ArchiveRecord],
}

impl<'a> ArchiveSegment<'a> {
    /// Checks that `records` are non-empty, all of `partition`, with non-negative, strictly
    /// increasing offsets (Kafka offsets may have gaps, never repeats).
    pub fn new(
        topic: &'a str,
        partition: i32,
        records: &'a [ArchiveRecord],
    ) -> Result<Self, ArchiveError> {
        let invalid = |detail: String| ArchiveError::InvalidSegment {
            topic: topic.to_owned(),
            partition,
            detail,
        };
        if topic.is_empty() || topic.contains('/') {
            return Err(invalid(format!("topic {topic:?} cannot be part of a key")));
        }
        if partition < 0 {
            return Err(invalid("negative partition".to_owned()));
        }
        let Some(first) = records.first() else {
            return Err(invalid("no records".to_owned()));
        };
        if first.offset < 0 {
            return Err(invalid(format!("negative offset {}", first.offset)));
        }
        if let Some(stray) = records.iter().find(|record| record.partition != partition) {
            return Err(invalid(format!(
                "record at offset {} is of partition {}",
                stray.offset, stray.partition
            )));
        }
        if let Some(pair) = records
            .windows(2)
            .find(|pair| pair[0].offset >= pair[1].offset)
        {
            return Err(invalid(format!(
                "offset {} follows offset {}",
                pair[1].offset, pair[0].offset
            )));
        }
        Ok(Self {
            topic,
            partition,
            records,
        })
    }

    pub fn first_offset(&self) -> i64 {
        self.records[0].offset
    }

    pub fn last_offset(&self) -> i64 {
        self.records[self.records.len() - 1].offset
    }

    pub fn records(&self) -> &'a [ArchiveRecord] {
        self.records
    }

    /// The UTC day of the first record's Kafka timestamp, or today without one.
    pub fn date(&self) -> NaiveDate {
        self.records[0]
            .timestamp_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or_else(Utc::now)
            .date_naive()
    }

    pub fn key(&self, prefix: &str) -> SegmentKey {
        SegmentKey::new(
            prefix,
            self.topic,
            self.date(),
            self.partition,
            self.first_offset(),
            self.last_offset(),
        )
    }

    /// The object's bytes: zstd-compressed NDJSON, the same for the same records.
    pub fn encode(&self) -> Vec<u8> {
        zstd::bulk::compress(&encode_ndjson(self.records), ZSTD_LEVEL)
            .expect("zstd compresses an in-memory buffer")
    }
}

/// Decodes an object and checks its records against its key.
pub fn decode_segment(key: &SegmentKey, bytes: &[u8]) -> Result<Vec<ArchiveRecord>, ArchiveError> {
    let corrupt = |detail: String| ArchiveError::CorruptSegment {
        key: key.object_key.clone(),
        detail,
    };
    let text =
        zstd::stream::decode_all(bytes).map_err(|error| corrupt(format!("zstd: {error}")))?;
    let records = decode_ndjson(&text).map_err(corrupt)?;
    ArchiveSegment::new(&key.topic, key.partition, &records)
        .map_err(|error| corrupt(error.to_string()))?;
    let (first, last) = (records[0].offset, records[records.len() - 1].offset);
    if (first, last) != (key.first_offset, key.last_offset) {
        return Err(corrupt(format!(
            "records span offsets {first}..={last}, the key says {}..={}",
            key.first_offset, key.last_offset
        )));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(partition: i32, offsets: &[i64]) -> Vec<ArchiveRecord> {
        offsets
            .iter()
            .map(|offset| ArchiveRecord {
                partition,
                offset: *offset,
                // 2026-11-23T23:59:59Z
                timestamp_ms: Some(1_795_478_399_000 + offset),
                key: None,
                payload: format!("payload {offset}").into_bytes(),
            })
            .collect()
    }

    #[test]
    fn key_layout_is_the_documented_one_and_parses_back() {
        let batch = records(3, &[7, 8, 10]);
        let segment = ArchiveSegment::new("plays", 3, &batch).unwrap();
        let key = segment.key("raw/");
        assert_eq!(
            key.object_key,
            "raw/plays/date=2026-11-23/partition=00003/00000000000000000007-00000000000000000010.ndjson.zst"
        );
        assert_eq!(SegmentKey::parse("raw", &key.object_key), Some(key.clone()));
        assert_eq!(SegmentKey::parse("other", &key.object_key), None);
        let unprefixed = segment.key("");
        assert!(unprefixed.object_key.starts_with("plays/date="));
        assert_eq!(
            SegmentKey::parse("", &unprefixed.object_key),
            Some(unprefixed)
        );
    }

    #[test]
    fn foreign_keys_are_not_segments() {
        for object_key in [
            "raw/plays/date=2026-11-23/partition=00003/7-10.ndjson.zst",
            "raw/plays/date=2026-11-23/partition=00003/00000000000000000010-00000000000000000007.ndjson.zst",
            "raw/plays/date=2026-13-01/partition=00003/00000000000000000007-00000000000000000010.ndjson.zst",
            "raw/plays/date=2026-11-23/notes.txt",
        ] {
            assert_eq!(SegmentKey::parse("raw", object_key), None, "{object_key}");
        }
    }

    #[test]
    fn same_records_same_key_and_bytes() {
        let batch = records(0, &[1, 2, 3]);
        let first = ArchiveSegment::new("plays", 0, &batch).unwrap();
        let again = batch.clone();
        let second = ArchiveSegment::new("plays", 0, &again).unwrap();
        assert_eq!(first.key("raw"), second.key("raw"));
        assert_eq!(first.encode(), second.encode());
        assert_eq!(
            decode_segment(&first.key("raw"), &first.encode()).unwrap(),
            batch
        );
    }

    #[test]
    fn rejects_what_is_not_a_segment() {
        assert!(ArchiveSegment::new("plays", 0, &[]).is_err());
        assert!(ArchiveSegment::new("plays", 1, &records(0, &[1])).is_err());
        assert!(ArchiveSegment::new("plays", 0, &records(0, &[2, 2])).is_err());
        assert!(ArchiveSegment::new("plays", 0, &records(0, &[3, 1])).is_err());
        assert!(ArchiveSegment::new("a/b", 0, &records(0, &[1])).is_err());
    }

    #[test]
    fn decode_catches_corruption_and_key_mismatch() {
        let batch = records(0, &[5, 6]);
        let segment = ArchiveSegment::new("plays", 0, &batch).unwrap();
        let key = segment.key("raw");
        let mut damaged = segment.encode();
        damaged.truncate(damaged.len() / 2);
        assert!(matches!(
            decode_segment(&key, &damaged),
            Err(ArchiveError::CorruptSegment { .. })
        ));
        let wrong_range = SegmentKey::new("raw", "plays", key.date, 0, 5, 9);
        assert!(decode_segment(&wrong_range, &segment.encode()).is_err());
    }
}
