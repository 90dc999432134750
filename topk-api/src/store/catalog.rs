//! Reading song metadata from the catalog (`songs`, loaded by `topk-catalog`): one indexed
//! query for a whole answer's songs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use topk_core::schema::{SongEntry, SONGS};

/// A song's current catalog entry, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SongMetadata {
    pub song_id: String,
    pub title: String,
    pub artist_id: String,
    pub artist_name: String,
    /// `null` when the catalog does not say.
    pub album: Option<String>,
    /// Lower case; `null` when the catalog does not say.
    pub genre: Option<String>,
    /// `null` when the catalog does not say.
    pub duration_ms: Option<u32>,
}

impl From<SongEntry> for SongMetadata {
    fn from(row: SongEntry) -> Self {
        let known = |text: String| (!text.is_empty()).then_some(text);
        Self {
            song_id: row.song_id,
            title: row.title,
            artist_id: row.artist_id,
            artist_name: row.artist_name,
            album: known(row.album),
            genre: known(row.genre),
            duration_ms: (row.duration_ms > 0).then_some(row.duration_ms),
        }
    }
}

/// The current entries of `song_ids` (not empty) that the catalog has, by song.
pub(super) async fn read_metadata(
    client: &clickhouse::Client,
    song_ids: &[&str],
) -> Result<HashMap<String, SongMetadata>, clickhouse::error::Error> {
    debug_assert!(!song_ids.is_empty());
    let placeholders = vec!["?"; song_ids.len()].join(", ");
    let sql = format!(
        "SELECT song_id, argMax(title, version), argMax(artist_id, version), \
         argMax(artist_name, version), argMax(album, version), argMax(genre, version), \
         argMax(duration_ms, version) \
         FROM {SONGS} PREWHERE song_id IN ({placeholders}) GROUP BY song_id"
    );
    let mut query = client.query(&sql);
    for song_id in song_ids {
        query = query.bind(*song_id);
    }
    let rows: Vec<SongEntry> = query.fetch_all().await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.song_id.clone(), SongMetadata::from(row)))
        .collect())
}
