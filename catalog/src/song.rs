//! One song of a catalog file, checked.
//!
//! Required: `song_id` and `artist_id` (the event contract's id rules: 1 to 128 bytes, no
//! control characters), `title` and `artist_name` (1 to [`MAX_TEXT_BYTES`] bytes after
//! trimming, no control characters). Optional (absent, `null` or empty): `album`, `genre`
//! (stored trimmed and in lower case, so `Hip-Hop` and `hip-hop` are one genre) and
//! `duration_ms` (a whole number of milliseconds up to 24 hours; in CSV, its digits).

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use topk_core::event::check_id;

/// The longest title, artist name, album or genre accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// The longest duration accepted: 24 hours.
pub const MAX_DURATION_MS: u64 = 24 * 3_600_000;

/// A checked catalog entry.
pub use topk_core::schema::SongEntry as Song;

/// A digest of every field of `song`: two entries with the same fingerprint are the same entry.
pub fn fingerprint(song: &Song) -> [u8; 16] {
    let mut hasher = Sha256::new();
    for field in [
        &song.song_id,
        &song.title,
        &song.artist_id,
        &song.artist_name,
        &song.album,
        &song.genre,
    ] {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update(song.duration_ms.to_le_bytes());
    let digest = hasher.finalize();
    let mut fingerprint = [0; 16];
    fingerprint.copy_from_slice(&digest[..16]);
    fingerprint
}

/// The fields of one line, by column name, as JSON values (a CSV cell is a string).
pub type Fields = BTreeMap<String, Value>;

/// Checks one line's fields; the error says what is wrong, for the rejection report.
pub fn song_from_fields(fields: &Fields) -> Result<Song, String> {
    let song_id = id(fields, "song_id")?;
    let title = text(fields, "title", true)?;
    let artist_id = id(fields, "artist_id")?;
    let artist_name = text(fields, "artist_name", true)?;
    let album = text(fields, "album", false)?;
    let genre = text(fields, "genre", false)?.to_lowercase();
    let duration_ms = duration(fields)?;
    Ok(Song {
        song_id,
        title,
        artist_id,
        artist_name,
        album,
        genre,
        duration_ms,
    })
}

/// A field's text: `None` when absent, `null` or (for a CSV cell) empty.
fn optional_text<'a>(fields: &'a Fields, name: &str) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim())),
        Some(other) => Err(format!("{name} {other} is not a string")),
    }
}

fn id(fields: &Fields, name: &str) -> Result<String, String> {
    let value = optional_text(fields, name)?.ok_or_else(|| format!("{name} is missing"))?;
    check_id(name, value).map_err(|rejection| rejection.detail)?;
    Ok(value.to_owned())
}

fn text(fields: &Fields, name: &str, required: bool) -> Result<String, String> {
    let Some(value) = optional_text(fields, name)? else {
        return if required {
            Err(format!("{name} is missing"))
        } else {
            Ok(String::new())
        };
    };
    if value.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "{name} is {} bytes, at most {MAX_TEXT_BYTES}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} contains a control character"));
    }
    Ok(value.to_owned())
}

fn duration(fields: &Fields) -> Result<u32, String> {
    let milliseconds = match fields.get("duration_ms") {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(0),
        Some(Value::String(text)) => text.trim().parse::<u64>().ok(),
        Some(Value::Number(number)) => number.as_u64(),
        Some(_) => None,
    };
    match milliseconds {
        Some(ms) if ms <= MAX_DURATION_MS => Ok(u32::try_from(ms).expect("24 h fits in u32")),
        _ => Err(format!(
            "duration_ms {} is not a whole number of milliseconds from 0 to {MAX_DURATION_MS}",
            fields["duration_ms"]
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Fields {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_full_entry_is_kept_with_its_genre_in_lower_case() {
        let song = song_from_fields(&fields(json!({
            "song_id": "s-1", "title": " Intro ", "artist_id": "a-7", "artist_name": "The xx",
            "album": "xx", "genre": "Indie Pop", "duration_ms": 127000, "extra": [1]
        })))
        .unwrap();
        assert_eq!(song.title, "Intro");
        assert_eq!(song.genre, "indie pop");
        assert_eq!(song.duration_ms, 127_000);
    }

    #[test]
    fn optional_fields_may_be_absent_null_or_empty() {
        for optional in [
            json!({}),
            json!({"album": null, "genre": null, "duration_ms": null}),
            json!({"album": "", "genre": " ", "duration_ms": ""}),
        ] {
            let mut line =
                json!({"song_id": "s", "title": "t", "artist_id": "a", "artist_name": "n"});
            line.as_object_mut()
                .unwrap()
                .extend(optional.as_object().unwrap().clone());
            let song = song_from_fields(&fields(line)).unwrap();
            assert_eq!(
                (song.album.as_str(), song.genre.as_str(), song.duration_ms),
                ("", "", 0)
            );
        }
    }

    #[test]
    fn each_kind_of_bad_line_says_why() {
        let base = json!({"song_id": "s", "title": "t", "artist_id": "a", "artist_name": "n"});
        let with = |key: &str, value: Value| {
            let mut line = base.clone();
            line[key] = value;
            fields(line)
        };
        let cases = [
            (with("song_id", json!("")), "song_id is missing"),
            (
                with("song_id", json!("x".repeat(129))),
                "song_id is 129 bytes",
            ),
            (with("artist_id", json!(7)), "artist_id 7 is not a string"),
            (with("title", Value::Null), "title is missing"),
            (
                with("artist_name", json!("a\u{7}b")),
                "artist_name contains a control character",
            ),
            (
                with("album", json!("x".repeat(MAX_TEXT_BYTES + 1))),
                "album is 1025 bytes",
            ),
            (with("duration_ms", json!(-1)), "duration_ms -1 is not"),
            (
                with("duration_ms", json!("3:07")),
                "duration_ms \"3:07\" is not",
            ),
            (
                with("duration_ms", json!(MAX_DURATION_MS + 1)),
                "duration_ms 86400001 is not",
            ),
        ];
        for (line, expected) in cases {
            let error = song_from_fields(&line).unwrap_err();
            assert!(error.starts_with(expected), "{error} / {expected}");
        }
    }

    #[test]
    fn the_fingerprint_changes_with_any_field() {
        let song = song_from_fields(&fields(json!({
            "song_id": "s", "title": "ab", "artist_id": "a", "artist_name": "c", "duration_ms": 1
        })))
        .unwrap();
        let mut moved = song.clone();
        moved.title = "a".into();
        moved.artist_name = "bc".into();
        assert_ne!(fingerprint(&song), fingerprint(&moved));
        let mut longer = song.clone();
        longer.duration_ms = 2;
        assert_ne!(fingerprint(&song), fingerprint(&longer));
        longer.duration_ms = 1;
        assert_eq!(fingerprint(&song), fingerprint(&longer));
    }
}
