//! A request body cut into event payloads, before any event is validated.
//!
//! Two formats, chosen by `Content-Type`:
//! - `application/json` (the default when none is sent): one event object, or an array of them;
//! - `application/x-ndjson` (also `application/jsonl`): one event per line, blank lines skipped.
//!
//! Each payload is then checked alone by the event contract
//! ([`topk_core::event::parse_play_event`]), so one bad event (`[{"ts":1}, …]`, a line that is
//! not JSON) is rejected by itself. Only a body that cannot be cut at all, an array that is
//! not JSON, is refused as a whole.

use serde_json::value::RawValue;

/// How the body lists its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Ndjson,
}

/// Why a body is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("content type {0:?} is not supported: send application/json or application/x-ndjson")]
    UnsupportedMediaType(String),
    #[error("the body is not a JSON array of events: {0}")]
    NotAnArray(String),
    #[error("the body holds no event")]
    Empty,
    #[error("the body holds {count} events, at most {max} per request")]
    TooManyEvents { count: usize, max: usize },
}

impl BodyFormat {
    /// The format a `Content-Type` names (parameters such as `charset` are ignored).
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, BodyError> {
        let Some(content_type) = content_type else {
            return Ok(Self::Json);
        };
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media_type.as_str() {
            "application/json" => Ok(Self::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Self::Ndjson),
            _ => Err(BodyError::UnsupportedMediaType(content_type.to_owned())),
        }
    }
}

/// The body's event payloads, in order, at most `max_events` of them.
pub fn split_events(
    body: &[u8],
    format: BodyFormat,
    max_events: usize,
) -> Result<Vec<&[u8]>, BodyError> {
    let payloads: Vec<&[u8]> = match format {
        BodyFormat::Json if body.trim_ascii_start().starts_with(b"[") => {
            serde_json::from_slice::<Vec<&RawValue>>(body)
                .map_err(|error| BodyError::NotAnArray(error.to_string()))?
                .into_iter()
                .map(|raw| raw.get().as_bytes())
                .collect()
        }
        BodyFormat::Json if body.trim_ascii().is_empty() => Vec::new(),
        BodyFormat::Json => vec![body],
        BodyFormat::Ndjson => body
            .split(|byte| *byte == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|line| !line.is_empty())
            .collect(),
    };
    if payloads.is_empty() {
        return Err(BodyError::Empty);
    }
    if payloads.len() > max_events {
        return Err(BodyError::TooManyEvents {
            count: payloads.len(),
            max: max_events,
        });
    }
    Ok(payloads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(payloads: &[&[u8]]) -> Vec<String> {
        payloads
            .iter()
            .map(|payload| String::from_utf8_lossy(payload).into_owned())
            .collect()
    }

    #[test]
    fn content_types() {
        assert_eq!(BodyFormat::from_content_type(None), Ok(BodyFormat::Json));
        assert_eq!(
            BodyFormat::from_content_type(Some("Application/JSON; charset=utf-8")),
            Ok(BodyFormat::Json)
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/x-ndjson")),
            Ok(BodyFormat::Ndjson)
        );
        assert!(matches!(
            BodyFormat::from_content_type(Some("text/plain")),
            Err(BodyError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn one_object_an_array_or_lines() {
        let one = split_events(br#" {"a":1} "#, BodyFormat::Json, 10).unwrap();
        assert_eq!(texts(&one), [r#" {"a":1} "#]);
        let array = split_events(br#"[{"a":1}, 7, {"b":"x\"]"}]"#, BodyFormat::Json, 10).unwrap();
        assert_eq!(texts(&array), [r#"{"a":1}"#, "7", r#"{"b":"x\"]"}"#]);
        let lines = split_events(b"{\"a\":1}\r\n\n  not json\n", BodyFormat::Ndjson, 10).unwrap();
        assert_eq!(texts(&lines), [r#"{"a":1}"#, "not json"]);
    }

    #[test]
    fn refused_as_a_whole() {
        assert!(matches!(
            split_events(b"[{\"a\":1},", BodyFormat::Json, 10),
            Err(BodyError::NotAnArray(_))
        ));
        assert_eq!(
            split_events(b"[]", BodyFormat::Json, 10),
            Err(BodyError::Empty)
        );
        assert_eq!(
            split_events(b"  ", BodyFormat::Json, 10),
            Err(BodyError::Empty)
        );
        assert_eq!(
            split_events(b"\n\n", BodyFormat::Ndjson, 10),
            Err(BodyError::Empty)
        );
        assert_eq!(
            split_events(b"[1,2,3]", BodyFormat::Json, 2),
            Err(BodyError::TooManyEvents { count: 3, max: 2 })
        );
    }
}
