//! Loading a catalog file into `songs`: only what is new or changed is inserted.
//!
//! 1. Read the fingerprint of every current entry (`songs_current`).
//! 2. Read the file; each valid line whose song is new, or whose fingerprint differs, becomes a
//!    row stamped with this load's version (later than every version stored, so it becomes
//!    current). A song_id seen earlier in the same file is rejected: which of two entries is
//!    meant cannot be guessed.
//! 3. Insert the rows in batches. A crash between batches leaves the earlier batches current;
//!    loading the file again inserts the rest and nothing twice.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use topk_core::schema::{SongRow, SONGS, SONGS_CURRENT, SONG_ENTRY_COLUMNS};

use crate::config::LoadOptions;
use crate::error::CatalogError;
use crate::song::{fingerprint, Song};
use crate::source::{Line, SongSource};

/// The schema version that adds the catalog.
pub const CATALOG_SCHEMA_VERSION: u32 = 8;
/// How many rejected lines the report lists (all of them go to `--rejects`).
pub const REJECTS_LISTED: usize = 10;
/// Progress is printed at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub path: PathBuf,
    /// Non-blank lines read.
    pub lines: u64,
    /// Songs not in the catalog before.
    pub new: u64,
    /// Songs whose entry changed.
    pub changed: u64,
    /// Songs whose entry is the same as the catalog's.
    pub unchanged: u64,
    /// Lines that failed the checks (duplicates included).
    pub rejected: u64,
    /// Rows inserted (0 on a dry run).
    pub inserted: u64,
    /// The version stamped on the inserted rows.
    pub version: u64,
    pub dry_run: bool,
    pub elapsed: Duration,
    /// The first [`REJECTS_LISTED`] rejected lines: line number and reason.
    pub first_rejects: Vec<(u64, String)>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "catalog: {}: {} lines in {:.1} s: {} new, {} changed, {} unchanged, {} rejected; {} rows {} (version {})",
            self.path.display(),
            self.lines,
            self.elapsed.as_secs_f64(),
            self.new,
            self.changed,
            self.unchanged,
            self.rejected,
            self.inserted,
            if self.dry_run { "would be inserted (dry run)" } else { "inserted" },
            self.version,
        )?;
        for (line, reason) in &self.first_rejects {
            writeln!(formatter, "  rejected line {line}: {reason}")?;
        }
        if self.rejected > self.first_rejects.len() as u64 {
            writeln!(
                formatter,
                "  … and {} more (--rejects FILE lists them all)",
                self.rejected - self.first_rejects.len() as u64
            )?;
        }
        Ok(())
    }
}

/// Where a load is, for progress output.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub lines: u64,
    pub inserted: u64,
    pub rejected: u64,
    pub elapsed: Duration,
}

/// Prints progress to standard error.
pub fn print_progress(progress: &Progress) {
    eprintln!(
        "catalog: {} lines read, {} rows inserted, {} rejected ({:.0} s)",
        progress.lines,
        progress.inserted,
        progress.rejected,
        progress.elapsed.as_secs_f64()
    );
}

/// Loads `options.file` into the catalog behind `client`.
pub async fn load(
    client: &clickhouse::Client,
    options: &LoadOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<LoadReport, CatalogError> {
    let started = Instant::now();
    check_schema(client).await?;
    let source = SongSource::open(&options.file, options.format())?;
    let current = current_fingerprints(client).await?;
    let newest: u64 = client
        .query(&format!("SELECT max(version) FROM {SONGS}"))
        .fetch_one()
        .await
        .map_err(CatalogError::clickhouse(
            "reading the newest catalog version",
        ))?;
    let now = Utc::now();
    let version = u64::try_from(now.timestamp_millis())
        .unwrap_or(0)
        .max(newest + 1);
    let mut rejects = match &options.rejects {
        None => None,
        Some(path) => Some((
            path.clone(),
            std::io::BufWriter::new(std::fs::File::create(path).map_err(|source| {
                CatalogError::WriteRejects {
                    path: path.clone(),
                    source,
                }
            })?),
        )),
    };
    let mut report = LoadReport {
        path: options.file.clone(),
        version,
        dry_run: options.dry_run,
        ..LoadReport::default()
    };
    let mut first_line_of: HashMap<String, u64> = HashMap::new();
    let mut batch: Vec<SongRow> = Vec::new();
    let mut last_progress = Instant::now();
    for line in source {
        let Line { number, song, text } = line?;
        report.lines += 1;
        let song = song.and_then(|song| match first_line_of.get(&song.song_id) {
            Some(first) => Err(format!(
                "song_id {:?} is already on line {first}",
                song.song_id
            )),
            None => {
                first_line_of.insert(song.song_id.clone(), number);
                Ok(song)
            }
        });
        match song {
            Err(reason) => {
                report.rejected += 1;
                if let Some((path, writer)) = &mut rejects {
                    let entry = serde_json::json!({"line": number, "reason": reason, "text": text});
                    writeln!(writer, "{entry}").map_err(|source| CatalogError::WriteRejects {
                        path: path.clone(),
                        source,
                    })?;
                }
                if report.first_rejects.len() < REJECTS_LISTED {
                    report.first_rejects.push((number, reason));
                }
            }
            Ok(song) => match current.get(&song.song_id) {
                Some(current) if *current == fingerprint(&song) => report.unchanged += 1,
                known => {
                    if known.is_some() {
                        report.changed += 1;
                    } else {
                        report.new += 1;
                    }
                    batch.push(row(song, version, now));
                }
            },
        }
        if batch.len() as u64 >= options.batch_rows {
            report.inserted += insert(client, &mut batch, options.dry_run).await?;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            progress(&Progress {
                lines: report.lines,
                inserted: report.inserted,
                rejected: report.rejected,
                elapsed: started.elapsed(),
            });
        }
    }
    report.inserted += insert(client, &mut batch, options.dry_run).await?;
    if let Some((path, mut writer)) = rejects {
        writer
            .flush()
            .map_err(|source| CatalogError::WriteRejects { path, source })?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn row(song: Song, version: u64, now: chrono::DateTime<Utc>) -> SongRow {
    SongRow {
        song_id: song.song_id,
        title: song.title,
        artist_id: song.artist_id,
        artist_name: song.artist_name,
        album: song.album,
        genre: song.genre,
        duration_ms: song.duration_ms,
        version,
        loaded_at: now,
    }
}

/// Inserts and empties `batch` (or only empties it on a dry run); returns the rows it held.
async fn insert(
    client: &clickhouse::Client,
    batch: &mut Vec<SongRow>,
    dry_run: bool,
) -> Result<u64, CatalogError> {
    let rows = batch.len() as u64;
    if rows == 0 || dry_run {
        batch.clear();
        return Ok(rows);
    }
    let result = async {
        let mut insert = client.insert::<SongRow>(SONGS).await?;
        for row in batch.iter() {
            insert.write(row).await?;
        }
        insert.end().await
    }
    .await;
    batch.clear();
    result.map_err(CatalogError::clickhouse("inserting songs"))?;
    Ok(rows)
}

/// The fingerprint of every current catalog entry, by song.
async fn current_fingerprints(
    client: &clickhouse::Client,
) -> Result<HashMap<String, [u8; 16]>, CatalogError> {
    let mut cursor = client
        .query(&format!("SELECT {SONG_ENTRY_COLUMNS} FROM {SONGS_CURRENT}"))
        .fetch::<Song>()
        .map_err(CatalogError::clickhouse("reading the current catalog"))?;
    let mut fingerprints = HashMap::new();
    while let Some(entry) = cursor
        .next()
        .await
        .map_err(CatalogError::clickhouse("reading the current catalog"))?
    {
        fingerprints.insert(entry.song_id.clone(), fingerprint(&entry));
    }
    Ok(fingerprints)
}

async fn check_schema(client: &clickhouse::Client) -> Result<(), CatalogError> {
    let applied = topk_core::migrate::applied_version(client)
        .await
        .map_err(CatalogError::clickhouse("reading the schema version"))?;
    if applied.is_none_or(|version| version < CATALOG_SCHEMA_VERSION) {
        return Err(CatalogError::SchemaOutdated {
            applied,
            needed: CATALOG_SCHEMA_VERSION,
        });
    }
    Ok(())
}
