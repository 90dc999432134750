//! One archived Kafka message and its NDJSON line.
//!
//! A line is one JSON object:
//! `{"partition":3,"offset":1207,"timestamp_ms":1795521600000,"key":"user-1","payload":"{...}"}`.
//! `key` and `payload` are the message's bytes as a JSON string when they are valid UTF-8;
//! otherwise they are written as standard base64 (with padding) under `key_b64` /
//! `payload_b64`. A missing key or Kafka timestamp is left out. JSON strings carry every valid
//! UTF-8 text exactly, so every payload, however malformed, comes back byte for byte.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// One consumed Kafka message, valid or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    pub partition: i32,
    pub offset: i64,
    /// The Kafka message timestamp (epoch ms), when the broker gave one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// The wire shape of one line; strings are borrowed from the record when written.
#[derive(Serialize, Deserialize)]
struct WireRecord<'a> {
    partition: i32,
    offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp_ms: Option<i64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    key: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    key_b64: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    payload: Option<Cow<'a, str>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    payload_b64: Option<Cow<'a, str>>,
}

/// Splits bytes into (text, base64) fields: exactly one is set.
fn text_or_base64(bytes: &[u8]) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(Cow::Borrowed(text)), None),
        Err(_) => (None, Some(Cow::Owned(BASE64.encode(bytes)))),
    }
}

fn bytes_from(
    field: &str,
    text: Option<Cow<'_, str>>,
    encoded: Option<Cow<'_, str>>,
) -> Result<Option<Vec<u8>>, String> {
    match (text, encoded) {
        (Some(_), Some(_)) => Err(format!("both {field} and {field}_b64 are set")),
        (Some(text), None) => Ok(Some(text.into_owned().into_bytes())),
        (None, Some(encoded)) => BASE64
            .decode(encoded.as_bytes())
            .map(Some)
            .map_err(|error| format!("{field}_b64 is not base64: {error}")),
        (None, None) => Ok(None),
    }
}

impl ArchiveRecord {
    /// Appends this record as one NDJSON line (newline included).
    pub fn write_line(&self, output: &mut Vec<u8>) {
        let (key, key_b64) = match &self.key {
            Some(key) => text_or_base64(key),
            None => (None, None),
        };
        let (payload, payload_b64) = text_or_base64(&self.payload);
        let wire = WireRecord {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key,
            key_b64,
            payload,
            payload_b64,
        };
        serde_json::to_writer(&mut *output, &wire).expect("a record always serializes to JSON");
        output.push(b'\n');
    }

    /// Decodes one NDJSON line (without its newline).
    pub fn from_line(line: &[u8]) -> Result<Self, String> {
        let wire: WireRecord<'_> =
            serde_json::from_slice(line).map_err(|error| format!("not a record: {error}"))?;
        let key = bytes_from("key", wire.key, wire.key_b64)?;
        let payload = bytes_from("payload", wire.payload, wire.payload_b64)?
            .ok_or_else(|| "neither payload nor payload_b64 is set".to_owned())?;
        Ok(Self {
            partition: wire.partition,
            offset: wire.offset,
            timestamp_ms: wire.timestamp_ms,
            key,
            payload,
        })
    }
}

/// Encodes records as NDJSON, one line each.
pub fn encode_ndjson(records: &[ArchiveRecord]) -> Vec<u8> {
    let payload_bytes: usize = records.iter().map(|record| record.payload.len()).sum();
    let mut output = Vec::with_capacity(payload_bytes + records.len() * 96);
    for record in records {
        record.write_line(&mut output);
    }
    output
}

/// Decodes NDJSON; the error names the 1-based line that failed.
pub fn decode_ndjson(text: &[u8]) -> Result<Vec<ArchiveRecord>, String> {
    text.split(|byte| *byte == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| {
            ArchiveRecord::from_line(line).map_err(|error| format!("line {}: {error}", index + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(payload: &[u8], key: Option<&[u8]>) -> ArchiveRecord {
        ArchiveRecord {
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_795_521_600_000),
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn text_payloads_are_readable_json_strings() {
        let line = encode_ndjson(&[record(br#"{"event_id":"e"}"#, Some(b"user-1"))]);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"partition\":2,\"offset\":41,\"timestamp_ms\":1795521600000,\"key\":\"user-1\",\
             \"payload\":\"{\\\"event_id\\\":\\\"e\\\"}\"}\n"
        );
    }

    #[test]
    fn binary_payloads_are_base64() {
        let line = encode_ndjson(&[record(&[0xff, 0x00, b'\n'], None)]);
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(text.contains("\"payload_b64\":\"/wAK\""), "{text}");
        assert!(!text.contains("\"key"), "{text}");
        assert_eq!(text.matches('\n').count(), 1, "one line per record");
        assert_eq!(
            decode_ndjson(&line).unwrap(),
            vec![record(&[0xff, 0x00, b'\n'], None)]
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let mut text = encode_ndjson(&[record(b"ok", None)]);
        text.extend_from_slice(b"{\"partition\":1,\"offset\":2}\n");
        let error = decode_ndjson(&text).unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
        let both = br#"{"partition":1,"offset":2,"payload":"a","payload_b64":"YQ=="}"#;
        assert!(ArchiveRecord::from_line(both).unwrap_err().contains("both"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_round_trip(
            payloads in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    any::<String>().prop_map(String::into_bytes),
                ],
                0..20,
            ),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            timestamp_ms in proptest::option::of(any::<i64>()),
        ) {
            let records: Vec<ArchiveRecord> = payloads
                .into_iter()
                .enumerate()
                .map(|(index, payload)| ArchiveRecord {
                    partition: 7,
                    offset: index as i64 * 3,
                    timestamp_ms,
                    key: key.clone(),
                    payload,
                })
                .collect();
            let encoded = encode_ndjson(&records);
            prop_assert_eq!(decode_ndjson(&encoded).unwrap(), records);
        }
    }
}
