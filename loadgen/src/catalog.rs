//! A sample song catalog for the generator's songs (`song-1` .. `song-N`): made-up titles,
//! artists with about a dozen songs each, albums, a genre per artist and a length, as NDJSON
//! lines that `topk-catalog load` takes. The same seed gives the same catalog.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The genres of the sample catalog.
pub const GENRES: [&str; 12] = [
    "pop",
    "rock",
    "hip-hop",
    "electronic",
    "r&b",
    "indie",
    "jazz",
    "classical",
    "latin",
    "country",
    "metal",
    "k-pop",
];

const WORDS: [&str; 32] = [
    "Midnight",
    "Golden",
    "River",
    "Echo",
    "Neon",
    "Paper",
    "Summer",
    "Ghost",
    "Velvet",
    "Satellite",
    "Wild",
    "Glass",
    "Honey",
    "Thunder",
    "Silver",
    "Ocean",
    "Fire",
    "Lonely",
    "Electric",
    "Broken",
    "Sugar",
    "Highway",
    "Dream",
    "Shadow",
    "Crystal",
    "Northern",
    "Lights",
    "Heart",
    "City",
    "Rain",
    "Stars",
    "Blue",
];

/// Songs per artist, on average.
const SONGS_PER_ARTIST: u64 = 12;

fn phrase(rng: &mut StdRng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The catalog of `songs` songs, one NDJSON line each.
pub fn sample_catalog(songs: u64, seed: u64) -> impl Iterator<Item = String> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00ca_7a10);
    let artists = songs.div_ceil(SONGS_PER_ARTIST).max(1);
    let artist_names: Vec<String> = (0..artists)
        .map(|_| format!("The {}", phrase(&mut rng, 2)))
        .collect();
    (1..=songs).map(move |song| {
        let artist = rng.random_range(0..artists);
        let artist_rng = &mut StdRng::seed_from_u64(seed ^ artist);
        let genre = GENRES[artist_rng.random_range(0..GENRES.len())];
        let album = format!("{} Vol. {}", phrase(artist_rng, 1), song % 3 + 1);
        let words = rng.random_range(1..=3);
        json!({
            "song_id": format!("song-{song}"),
            "title": phrase(&mut rng, words),
            "artist_id": format!("artist-{artist}"),
            "artist_name": artist_names[artist as usize],
            "album": album,
            "genre": genre,
            "duration_ms": rng.random_range(90_000..420_000),
        })
        .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_song_has_an_entry_and_the_seed_decides_them() {
        let lines: Vec<String> = sample_catalog(100, 7).collect();
        assert_eq!(lines.len(), 100);
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["song_id"], "song-1");
        assert!(GENRES.contains(&first["genre"].as_str().unwrap()));
        assert_eq!(lines, sample_catalog(100, 7).collect::<Vec<_>>());
        assert_ne!(lines, sample_catalog(100, 8).collect::<Vec<_>>());
    }
}
