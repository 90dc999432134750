//! Reading a catalog file line by line: NDJSON (one JSON object per line) or CSV (a header
//! line naming the columns, then one song per line). Each line comes out checked
//! ([`crate::song`]) with its line number; a file that cannot be read stops the load.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::Format;
use crate::error::CatalogError;
use crate::song::{song_from_fields, Fields, Song};

/// One line of the file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based, as an editor shows it.
    pub number: u64,
    /// The song, or why the line is rejected.
    pub song: Result<Song, String>,
    /// The line's text (for the rejection report).
    pub text: String,
}

/// The checked lines of a file (blank lines skipped).
pub struct SongSource {
    path: PathBuf,
    lines: Lines,
}

enum Lines {
    Ndjson {
        reader: Box<dyn BufRead>,
        number: u64,
    },
    Csv {
        reader: csv::Reader<Box<dyn Read>>,
        headers: Vec<String>,
    },
}

impl SongSource {
    /// Opens `path` (`-`: standard input).
    pub fn open(path: &Path, format: Format) -> Result<Self, CatalogError> {
        let input: Box<dyn Read> = if path == Path::new("-") {
            Box::new(std::io::stdin())
        } else {
            Box::new(
                std::fs::File::open(path).map_err(|source| CatalogError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            )
        };
        Self::from_reader(path, input, format)
    }

    /// Reads `input` as the contents of `path`.
    pub fn from_reader(
        path: &Path,
        input: Box<dyn Read>,
        format: Format,
    ) -> Result<Self, CatalogError> {
        let lines = match format {
            Format::Ndjson => Lines::Ndjson {
                reader: Box::new(BufReader::with_capacity(1 << 20, input)),
                number: 0,
            },
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(true)
                    .trim(csv::Trim::Headers)
                    .from_reader(input);
                let headers: Vec<String> = reader
                    .headers()
                    .map_err(|error| CatalogError::Format {
                        path: path.to_owned(),
                        detail: format!("the CSV header line: {error}"),
                    })?
                    .iter()
                    .map(str::to_owned)
                    .collect();
                for required in ["song_id", "title", "artist_id", "artist_name"] {
                    if !headers.iter().any(|header| header == required) {
                        return Err(CatalogError::Format {
                            path: path.to_owned(),
                            detail: format!(
                                "the CSV header line names no `{required}` column (it has: {})",
                                headers.join(",")
                            ),
                        });
                    }
                }
                Lines::Csv { reader, headers }
            }
        };
        Ok(Self {
            path: path.to_owned(),
            lines,
        })
    }

    fn read_error(&self, source: std::io::Error) -> CatalogError {
        CatalogError::Read {
            path: self.path.clone(),
            source,
        }
    }
}

impl Iterator for SongSource {
    type Item = Result<Line, CatalogError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.lines {
            Lines::Ndjson { reader, number } => loop {
                let mut bytes = Vec::new();
                match reader.read_until(b'\n', &mut bytes) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(error) => return Some(Err(self.read_error(error))),
                }
                *number += 1;
                let text = String::from_utf8_lossy(&bytes).trim_end().to_owned();
                if text.trim().is_empty() {
                    continue;
                }
                let song = match std::str::from_utf8(&bytes) {
                    Err(_) => Err("the line is not UTF-8".to_owned()),
                    Ok(_) => match serde_json::from_str::<Value>(&text) {
                        Ok(Value::Object(object)) => {
                            song_from_fields(&object.into_iter().collect::<Fields>())
                        }
                        Ok(_) => Err("the line is not a JSON object".to_owned()),
                        Err(error) => Err(format!("the line is not JSON: {error}")),
                    },
                };
                return Some(Ok(Line {
                    number: *number,
                    song,
                    text,
                }));
            },
            Lines::Csv { reader, headers } => {
                let mut record = csv::ByteRecord::new();
                match reader.read_byte_record(&mut record) {
                    Ok(false) => None,
                    Ok(true) => {
                        let number = record.position().map_or(0, csv::Position::line);
                        let cells: Vec<String> = record
                            .iter()
                            .map(|cell| String::from_utf8_lossy(cell).into_owned())
                            .collect();
                        let text = cells.join(",");
                        let song = if std::str::from_utf8(record.as_slice()).is_err() {
                            Err("the line is not UTF-8".to_owned())
                        } else if cells.len() > headers.len() {
                            Err(format!(
                                "the line has {} cells, the header {}",
                                cells.len(),
                                headers.len()
                            ))
                        } else {
                            let fields: Fields = headers
                                .iter()
                                .cloned()
                                .zip(cells.into_iter().map(Value::String))
                                .collect();
                            song_from_fields(&fields)
                        };
                        Some(Ok(Line { number, song, text }))
                    }
                    Err(error) => match error.kind() {
                        csv::ErrorKind::Io(_) => Some(Err(CatalogError::Format {
                            path: self.path.clone(),
                            detail: error.to_string(),
                        })),
                        _ => {
                            let number = error.position().map_or(0, csv::Position::line);
                            Some(Ok(Line {
                                number,
                                song: Err(format!("the line is not CSV: {error}")),
                                text: String::new(),
                            }))
                        }
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &'static str, format: Format) -> Vec<Line> {
        SongSource::from_reader(Path::new("t"), Box::new(text.as_bytes()), format)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn ndjson_lines_are_numbered_and_blank_ones_skipped() {
        let read = lines(
            "{\"song_id\":\"s1\",\"title\":\"A\",\"artist_id\":\"a\",\"artist_name\":\"N\"}\n\n\
             not json\n[1]\n{\"song_id\":\"s2\",\"title\":\"B\",\"artist_id\":\"a\",\"artist_name\":\"N\",\"duration_ms\":5}",
            Format::Ndjson,
        );
        let summary: Vec<(u64, bool)> = read
            .iter()
            .map(|line| (line.number, line.song.is_ok()))
            .collect();
        assert_eq!(summary, [(1, true), (3, false), (4, false), (5, true)]);
        assert_eq!(read[1].text, "not json");
        assert!(read[2]
            .song
            .as_ref()
            .unwrap_err()
            .contains("not a JSON object"));
    }

    #[test]
    fn csv_columns_are_found_by_header_in_any_order() {
        let read = lines(
            "title,song_id,artist_name,artist_id,genre,duration_ms,extra\n\
             \"Hello, World\",s1,N,a,Rock,1000,x\n\
             B,s2,N,a\n\
             C,s3,N,a,pop,3:00\n\
             D,s4,N,a,pop,1,x,too many\n",
            Format::Csv,
        );
        let song = read[0].song.as_ref().unwrap();
        assert_eq!(
            (
                song.song_id.as_str(),
                song.title.as_str(),
                song.genre.as_str(),
                song.duration_ms
            ),
            ("s1", "Hello, World", "rock", 1000)
        );
        assert_eq!(read[0].number, 2);
        assert!(read[1].song.is_ok(), "missing optional cells");
        assert!(read[2]
            .song
            .as_ref()
            .unwrap_err()
            .starts_with("duration_ms"));
        assert!(read[3].song.as_ref().unwrap_err().contains("8 cells"));
    }

    #[test]
    fn a_csv_file_without_a_required_column_is_refused() {
        let error = SongSource::from_reader(
            Path::new("t.csv"),
            Box::new("song_id,title,artist_name\ns,t,n\n".as_bytes()),
            Format::Csv,
        )
        .err()
        .unwrap();
        assert!(error.to_string().contains("`artist_id`"), "{error}");
    }
}
