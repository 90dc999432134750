-- The song catalog: what a song_id is (title, artist, album, genre, length), loaded from a
-- file by `topk-catalog load` and read by the API (`GET /v1/songs/{song_id}`,
-- `?include=metadata`), the genre and artist charts, and analysts.
-- A load inserts a row only for a song that is new or whose fields changed, stamped with the
-- load's `version` (epoch milliseconds): loading the same file again inserts nothing. A song's
-- current entry is its row with the highest version; read `songs_current` (its
-- `current_version` is that version: 18.16 refuses an alias named like the column).
-- `genre` is lower case ('' when not known); `duration_ms` 0 when not known.
CREATE TABLE IF NOT EXISTS songs
(
    song_id String,
    title String,
    artist_id String,
    artist_name String,
    album String,
    genre String,
    duration_ms UInt32,
    version UInt64,
    loaded_at DateTime('UTC')
)
ENGINE = MergeTree
ORDER BY (song_id, version);

-- Each song's current entry: one row per song.
CREATE VIEW IF NOT EXISTS songs_current AS
SELECT
    song_id,
    argMax(title, version) AS title,
    argMax(artist_id, version) AS artist_id,
    argMax(artist_name, version) AS artist_name,
    argMax(album, version) AS album,
    argMax(genre, version) AS genre,
    argMax(duration_ms, version) AS duration_ms,
    max(version) AS current_version
FROM songs
GROUP BY song_id;
