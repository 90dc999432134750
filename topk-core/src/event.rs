//! The play-event contract.
//!
//! A play event is one Kafka message, JSON, keyed by `user_id`:
//! `{"event_id": "...", "user_id": "...", "song_id": "...", "ts": ..., "region": "DE", "played_ms": 183000}`.
//! Ids are non-empty strings of at most [`MAX_ID_BYTES`] bytes without control characters;
//! `ts` is when the play happened, as epoch milliseconds (an integer) or an RFC 3339 string.
//! Two fields are optional (absent or `null`: not known): `region`, where the play happened,
//! an ISO 3166-1 alpha-2 code in upper case (`DE`, `BR`; an unassigned code such as `XX` is
//! rejected), and `played_ms`, how long the song was played, a whole number of milliseconds
//! from 0 up to [`MAX_PLAYED_MS`]. A user's own top songs count every valid play whatever
//! these say; they matter to the charts only ([`PlayEvent::chart_eligible`]).
//! Unknown extra fields are ignored. Anything else is rejected with a [`RejectReason`].

use std::borrow::Cow;
use std::fmt;

use chrono::DateTime;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::window::{OutsideWindow, Window};

/// The longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// The longest `played_ms` accepted: 24 hours. A longer "play" is a client bug.
pub const MAX_PLAYED_MS: u64 = 24 * 3_600_000;

/// The default shortest play that counts for the charts: 30 s, the threshold Spotify Charts
/// and most royalty rules use for a stream.
pub const DEFAULT_CHART_MIN_PLAYED_MS: u64 = 30_000;

/// A valid play event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayEvent {
    pub event_id: String,
    pub user_id: String,
    pub song_id: String,
    /// When the play happened, epoch milliseconds UTC.
    pub ts: i64,
    /// Where the play happened: an assigned ISO 3166-1 alpha-2 code, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How long the song was played, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub played_ms: Option<u64>,
}

impl PlayEvent {
    /// A play of `song_id` by `user_id` at `ts` without the optional fields.
    pub fn new(
        event_id: impl Into<String>,
        user_id: impl Into<String>,
        song_id: impl Into<String>,
        ts: i64,
    ) -> Self {
        Self {
            event_id: event_id.into(),
            user_id: user_id.into(),
            song_id: song_id.into(),
            ts,
            region: None,
            played_ms: None,
        }
    }

    /// Whether the play counts for the charts: played for at least `min_played_ms`. A play
    /// that does not say how long it was played (clients older than the field) counts, so
    /// that charts do not go empty while clients upgrade; the personal top songs count every
    /// valid play regardless.
    pub fn chart_eligible(&self, min_played_ms: u64) -> bool {
        self.played_ms.is_none_or(|played| played >= min_played_ms)
    }
}

/// Why an event was not counted. `as_str` is the stable label used in metrics and in the
/// dead-letter topic's `topk-dlq-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    MalformedJson,
    MissingField,
    EmptyField,
    IdTooLong,
    IdControlCharacter,
    InvalidTs,
    TsInFuture,
    TsTooOld,
    InvalidRegion,
    InvalidPlayedMs,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::MalformedJson,
        RejectReason::MissingField,
        RejectReason::EmptyField,
        RejectReason::IdTooLong,
        RejectReason::IdControlCharacter,
        RejectReason::InvalidTs,
        RejectReason::TsInFuture,
        RejectReason::TsTooOld,
        RejectReason::InvalidRegion,
        RejectReason::InvalidPlayedMs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::EmptyField => "empty_field",
            RejectReason::IdTooLong => "id_too_long",
            RejectReason::IdControlCharacter => "id_control_character",
            RejectReason::InvalidTs => "invalid_ts",
            RejectReason::TsInFuture => "ts_in_future",
            RejectReason::TsTooOld => "ts_too_old",
            RejectReason::InvalidRegion => "invalid_region",
            RejectReason::InvalidPlayedMs => "invalid_played_ms",
        }
    }

    pub fn parse(label: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == label)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A rejected event: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.reason, self.detail)
    }
}

/// The wire shape, borrowed from the payload where possible.
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    song_id: Option<Cow<'a, str>>,
    #[serde(default)]
    ts: Option<WireTs>,
    /// `null` reads as absent; any JSON value is taken so that a wrong type is a reason of
    /// its own, not `malformed_json`.
    #[serde(default)]
    region: Option<serde_json::Value>,
    #[serde(default)]
    played_ms: Option<serde_json::Value>,
}

enum WireTs {
    EpochMillis(i64),
    Text(String),
    Invalid(String),
}

impl<'de> Deserialize<'de> for WireTs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TsVisitor;
        impl Visitor<'_> for TsVisitor {
            type Value = WireTs;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<WireTs, E> {
                Ok(WireTs::EpochMillis(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<WireTs, E> {
                Ok(i64::try_from(value).map_or_else(
                    |_| WireTs::Invalid(format!("{value} is out of range")),
                    WireTs::EpochMillis,
                ))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<WireTs, E> {
                Ok(WireTs::Invalid(format!(
                    "{value} is not a whole number of milliseconds"
                )))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<WireTs, E> {
                Ok(WireTs::Text(value.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<WireTs, E> {
                Ok(WireTs::Invalid(format!("{value} is not a time")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<WireTs, E> {
                Ok(WireTs::Invalid("null is not a time".to_owned()))
            }
        }
        deserializer.deserialize_any(TsVisitor)
    }
}

/// Parses and validates one payload against the contract and the window ending now.
pub fn parse_play_event(payload: &[u8], window: &Window) -> Result<PlayEvent, Rejection> {
    let wire: WireEvent<'_> = serde_json::from_slice(payload)
        .map_err(|error| Rejection::new(RejectReason::MalformedJson, error.to_string()))?;
    let event_id = validate_id("event_id", wire.event_id)?;
    let user_id = validate_id("user_id", wire.user_id)?;
    let song_id = validate_id("song_id", wire.song_id)?;
    let ts = match wire.ts {
        None => return Err(Rejection::new(RejectReason::MissingField, "ts is missing")),
        Some(WireTs::EpochMillis(ms)) => ms,
        Some(WireTs::Text(text)) => DateTime::parse_from_rfc3339(&text)
            .map_err(|error| {
                Rejection::new(
                    RejectReason::InvalidTs,
                    format!("ts {text:?} is not RFC 3339: {error}"),
                )
            })?
            .timestamp_millis(),
        Some(WireTs::Invalid(detail)) => {
            return Err(Rejection::new(
                RejectReason::InvalidTs,
                format!("ts {detail}"),
            ))
        }
    };
    window.admits(ts).map_err(|outside| match outside {
        OutsideWindow::TooOld => Rejection::new(
            RejectReason::TsTooOld,
            format!(
                "ts {ts} is before the window start {}",
                window.from.to_rfc3339()
            ),
        ),
        OutsideWindow::InFuture => Rejection::new(
            RejectReason::TsInFuture,
            format!(
                "ts {ts} is more than 5 minutes after {}",
                window.to.to_rfc3339()
            ),
        ),
    })?;
    let region = wire.region.map(validate_region).transpose()?;
    let played_ms = wire
        .played_ms
        .as_ref()
        .map(validate_played_ms)
        .transpose()?;
    Ok(PlayEvent {
        event_id,
        user_id,
        song_id,
        ts,
        region,
        played_ms,
    })
}

/// Checks a region code: two upper-case letters that ISO 3166-1 assigns to a country or
/// territory. Shared with the API, which takes regions in queries.
pub fn check_region(value: &str) -> Result<(), Rejection> {
    let shaped = value.len() == 2 && value.bytes().all(|byte| byte.is_ascii_uppercase());
    if !shaped {
        return Err(Rejection::new(
            RejectReason::InvalidRegion,
            format!("region {value:?} is not an ISO 3166-1 alpha-2 code (two upper-case letters)"),
        ));
    }
    if !assigned_regions().any(|code| code == value) {
        return Err(Rejection::new(
            RejectReason::InvalidRegion,
            format!("region {value:?} is not an assigned ISO 3166-1 alpha-2 code"),
        ));
    }
    Ok(())
}

/// Every region code [`check_region`] accepts (the API's OpenAPI document lists them).
pub fn assigned_regions() -> impl Iterator<Item = &'static str> {
    isocountry::CountryCode::iter_alpha2().map(isocountry::CountryCode::alpha2)
}

fn validate_region(value: serde_json::Value) -> Result<String, Rejection> {
    match value {
        serde_json::Value::String(text) => check_region(&text).map(|()| text),
        other => Err(Rejection::new(
            RejectReason::InvalidRegion,
            format!("region {other} is not a string"),
        )),
    }
}

fn validate_played_ms(value: &serde_json::Value) -> Result<u64, Rejection> {
    let played = match value {
        serde_json::Value::Number(number) => number.as_u64(),
        _ => None,
    };
    match played {
        Some(played) if played <= MAX_PLAYED_MS => Ok(played),
        _ => Err(Rejection::new(
            RejectReason::InvalidPlayedMs,
            format!(
                "played_ms {value} is not a whole number of milliseconds from 0 to {MAX_PLAYED_MS}"
            ),
        )),
    }
}

/// Checks one id against the contract; shared with the API, which takes user ids in paths.
pub fn check_id(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::new(
            RejectReason::EmptyField,
            format!("{field} is empty"),
        ));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Rejection::new(
            RejectReason::IdTooLong,
            format!("{field} is {} bytes, at most {MAX_ID_BYTES}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::new(
            RejectReason::IdControlCharacter,
            format!("{field} contains a control character"),
        ));
    }
    Ok(())
}

fn validate_id(field: &str, value: Option<Cow<'_, str>>) -> Result<String, Rejection> {
    let Some(value) = value else {
        return Err(Rejection::new(
            RejectReason::MissingField,
            format!("{field} is missing"),
        ));
    };
    check_id(field, &value)?;
    Ok(value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn window() -> Window {
        Window::last_week(Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap())
    }

    fn reject(payload: &str) -> RejectReason {
        parse_play_event(payload.as_bytes(), &window())
            .expect_err(payload)
            .reason
    }

    const NOON_MS: i64 = 1_795_521_600_000; // 2026-11-24T12:00:00Z

    #[test]
    fn accepts_millis_and_rfc3339_and_ignores_extra_fields() {
        let from_millis = parse_play_event(
            format!(r#"{{"event_id":"e","user_id":"u","song_id":"s","ts":{NOON_MS},"x":[1]}}"#)
                .as_bytes(),
            &window(),
        )
        .unwrap();
        assert_eq!(from_millis.ts, NOON_MS);
        let from_text = parse_play_event(
            br#"{"event_id":"e","user_id":"u","song_id":"s","ts":"2026-11-24T13:00:00+01:00"}"#,
            &window(),
        )
        .unwrap();
        assert_eq!(from_text, from_millis);
    }

    #[test]
    fn escaped_ids_are_unescaped() {
        let event = parse_play_event(
            format!(r#"{{"event_id":"e\u00e9","user_id":"u\"q","song_id":"s","ts":{NOON_MS}}}"#)
                .as_bytes(),
            &window(),
        )
        .unwrap();
        assert_eq!(event.event_id, "eé");
        assert_eq!(event.user_id, "u\"q");
    }

    #[test]
    fn rejects_each_kind_of_bad_input_with_its_reason() {
        let ok_ts = NOON_MS;
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let cases = [
            ("not json".to_owned(), RejectReason::MalformedJson),
            ("[1,2]".to_owned(), RejectReason::MalformedJson),
            (
                format!(r#"{{"event_id":7,"user_id":"u","song_id":"s","ts":{ok_ts}}}"#),
                RejectReason::MalformedJson,
            ),
            (
                format!(r#"{{"user_id":"u","song_id":"s","ts":{ok_ts}}}"#),
                RejectReason::MissingField,
            ),
            (
                r#"{"event_id":"e","user_id":"u","song_id":"s"}"#.to_owned(),
                RejectReason::MissingField,
            ),
            (
                format!(r#"{{"event_id":"e","user_id":"","song_id":"s","ts":{ok_ts}}}"#),
                RejectReason::EmptyField,
            ),
            (
                format!(r#"{{"event_id":"e","user_id":"{long}","song_id":"s","ts":{ok_ts}}}"#),
                RejectReason::IdTooLong,
            ),
            (
                format!(r#"{{"event_id":"e","user_id":"u","song_id":"s\u0007","ts":{ok_ts}}}"#),
                RejectReason::IdControlCharacter,
            ),
            (
                r#"{"event_id":"e","user_id":"u","song_id":"s","ts":"yesterday"}"#.to_owned(),
                RejectReason::InvalidTs,
            ),
            (
                r#"{"event_id":"e","user_id":"u","song_id":"s","ts":1.5}"#.to_owned(),
                RejectReason::InvalidTs,
            ),
            (
                format!(
                    r#"{{"event_id":"e","user_id":"u","song_id":"s","ts":{}}}"#,
                    ok_ts + 6 * 60_000
                ),
                RejectReason::TsInFuture,
            ),
            (
                format!(
                    r#"{{"event_id":"e","user_id":"u","song_id":"s","ts":{}}}"#,
                    ok_ts - 8 * 86_400_000
                ),
                RejectReason::TsTooOld,
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(reject(&payload), expected, "{payload}");
        }
    }

    fn parse(payload: &str) -> PlayEvent {
        parse_play_event(payload.as_bytes(), &window()).expect(payload)
    }

    #[test]
    fn region_and_played_ms_are_optional_and_kept() {
        let plain = parse(&format!(
            r#"{{"event_id":"e","user_id":"u","song_id":"s","ts":{NOON_MS}}}"#
        ));
        assert_eq!((plain.region.as_deref(), plain.played_ms), (None, None));
        let nulls = parse(&format!(
            r#"{{"event_id":"e","user_id":"u","song_id":"s","ts":{NOON_MS},"region":null,"played_ms":null}}"#
        ));
        assert_eq!(nulls, plain);
        let full = parse(&format!(
            r#"{{"event_id":"e","user_id":"u","song_id":"s","ts":{NOON_MS},"region":"DE","played_ms":183000}}"#
        ));
        assert_eq!(
            (full.region.as_deref(), full.played_ms),
            (Some("DE"), Some(183_000))
        );
        // What the ingest writes and the archive keeps reads back the same.
        let written = serde_json::to_string(&full).unwrap();
        assert_eq!(parse(&written), full);
        assert!(!serde_json::to_string(&plain).unwrap().contains("region"));
    }

    #[test]
    fn bad_regions_and_play_lengths_are_rejected_with_their_reason() {
        let with = |field: &str| {
            format!(r#"{{"event_id":"e","user_id":"u","song_id":"s","ts":{NOON_MS},{field}}}"#)
        };
        for region in [
            r#""de""#,
            r#""DEU""#,
            r#""XX""#,
            r#""""#,
            "49",
            r#"["DE"]"#,
            r#""D1""#,
        ] {
            assert_eq!(
                reject(&with(&format!(r#""region":{region}"#))),
                RejectReason::InvalidRegion,
                "{region}"
            );
        }
        for played in [
            "-1",
            "1.5",
            r#""30000""#,
            "true",
            &(MAX_PLAYED_MS + 1).to_string(),
        ] {
            assert_eq!(
                reject(&with(&format!(r#""played_ms":{played}"#))),
                RejectReason::InvalidPlayedMs,
                "{played}"
            );
        }
        for region in ["GB", "BR", "JP", "US", "ZA"] {
            check_region(region).unwrap();
        }
    }

    #[test]
    fn a_play_is_chart_eligible_from_the_minimum_length_or_when_its_length_is_unknown() {
        let mut play = PlayEvent::new("e", "u", "s", NOON_MS);
        assert!(play.chart_eligible(DEFAULT_CHART_MIN_PLAYED_MS));
        play.played_ms = Some(DEFAULT_CHART_MIN_PLAYED_MS - 1);
        assert!(!play.chart_eligible(DEFAULT_CHART_MIN_PLAYED_MS));
        play.played_ms = Some(DEFAULT_CHART_MIN_PLAYED_MS);
        assert!(play.chart_eligible(DEFAULT_CHART_MIN_PLAYED_MS));
        play.played_ms = Some(0);
        assert!(play.chart_eligible(0));
    }

    #[test]
    fn reason_labels_round_trip() {
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::parse(reason.as_str()), Some(reason));
        }
    }
}
