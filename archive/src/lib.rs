//! The raw-event archive: every Kafka message the aggregator consumes, valid or not, kept on
//! S3 (or an S3-compatible store), and the restore that rebuilds `plays_minute` from it.
//!
//! - [`options`]: [`S3Options`] (bucket, prefix, endpoint, region, path style) and the client,
//!   with credentials from the standard AWS chain only.
//! - [`record`]: [`ArchiveRecord`], one consumed message, and its NDJSON line.
//! - [`segment`]: [`ArchiveSegment`], one object (one partition, one offset range, zstd), and
//!   its [`SegmentKey`] `{prefix}/{topic}/date=YYYY-MM-DD/partition=NNNNN/{first}-{last}.ndjson.zst`.
//! - [`writer`]: [`ArchiveWriter::put_segment`], called by the aggregator once per partition
//!   per flush, before the flush's checkpoint.
//! - [`reader`]: [`ArchiveReader`], which lists segments by date and yields each partition's
//!   records in offset order, each offset once even where replays overlap.
//! - [`restore`]: replays the archive through the aggregator's rules and swaps the rebuilt
//!   days into `plays_minute`.
//! - [`error`]: [`ArchiveError`], retryable or not.
//!
//! `archive/README.md` describes the layout for operators.

pub mod error;
pub mod options;
pub mod reader;
pub mod record;
pub mod restore;
pub mod segment;
pub mod writer;

pub use error::ArchiveError;
pub use options::S3Options;
pub use reader::{ArchiveReader, PartitionPlan};
pub use record::ArchiveRecord;
pub use segment::{ArchiveSegment, SegmentKey};
pub use writer::ArchiveWriter;
