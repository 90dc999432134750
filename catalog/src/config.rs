//! `topk-catalog`'s options: file (`--config`), then env, then flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use topk_core::db::ClickHouseOptions;

const AFTER_HELP: &str = "\
File formats (one song per line):
  NDJSON  {\"song_id\":\"s-1\",\"title\":\"Intro\",\"artist_id\":\"a-7\",\"artist_name\":\"The xx\",
           \"album\":\"xx\",\"genre\":\"Indie\",\"duration_ms\":127000}
  CSV     a header line naming the columns (any order, extra columns ignored), then one song
          per line: song_id,title,artist_id,artist_name,album,genre,duration_ms
  song_id, title, artist_id and artist_name are required; album, genre and duration_ms may be
  left out or empty. Genres are stored in lower case.

Exit codes:
  0  loaded (rejected lines are reported, and fail the run only with --max-rejected)
  1  failure: ClickHouse, the file, an outdated schema, or more rejected lines than allowed
  2  bad usage";

/// The song catalog: load songs (title, artist, album, genre, length) into ClickHouse.
#[derive(Debug, Parser, Serialize, Deserialize)]
#[command(name = "topk-catalog", version, about, after_help = AFTER_HELP)]
pub struct CatalogConfig {
    /// TOML file with any of the options below (flat keys, e.g. `clickhouse_url = "..."`);
    /// env vars and flags override it.
    #[arg(long, env = "TOPK_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub clickhouse: ClickHouseOptions,
    #[command(subcommand)]
    pub command: CatalogCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand, Serialize, Deserialize)]
pub enum CatalogCommand {
    /// Load a file of songs: new and changed songs are inserted, unchanged ones skipped (so
    /// loading the same file twice inserts nothing), bad lines reported and skipped.
    Load(LoadOptions),
}

#[derive(Debug, Clone, PartialEq, Eq, Args, Serialize, Deserialize)]
pub struct LoadOptions {
    /// The file to load (`-` reads standard input).
    pub file: PathBuf,
    /// The file's format; by default taken from its name (`.csv`: CSV, anything else: NDJSON).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Songs per insert.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_rows: u64,
    /// Write every rejected line, with its line number and reason, to this file (NDJSON).
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Fail (exit 1) when more lines than this are rejected; the valid lines are still loaded.
    #[arg(long)]
    pub max_rejected: Option<u64>,
    /// Check the file and count what would change, and insert nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Ndjson,
    Csv,
}

impl LoadOptions {
    /// The format named, or the one the file name implies.
    pub fn format(&self) -> Format {
        self.format.unwrap_or_else(|| {
            let csv = self
                .file
                .extension()
                .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"));
            if csv {
                Format::Csv
            } else {
                Format::Ndjson
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        CatalogConfig::command().debug_assert();
    }

    #[test]
    fn the_format_follows_the_file_name_unless_named() {
        let parse = |args: &[&str]| match CatalogConfig::try_parse_from(args).unwrap().command {
            CatalogCommand::Load(options) => options.format(),
        };
        assert_eq!(parse(&["topk-catalog", "load", "songs.CSV"]), Format::Csv);
        assert_eq!(
            parse(&["topk-catalog", "load", "songs.ndjson"]),
            Format::Ndjson
        );
        assert_eq!(parse(&["topk-catalog", "load", "-"]), Format::Ndjson);
        assert_eq!(
            parse(&["topk-catalog", "load", "--format", "csv", "-"]),
            Format::Csv
        );
    }
}
