//! Segment files: names, the active segment being appended to, and sealed ones.

use std::path::{Path, PathBuf};

use crate::storage::FileId;

/// Suffix of a segment file, as Kafka names them.
pub const SEGMENT_SUFFIX: &str = ".log";

/// Digits in a segment file name (Kafka pads the base offset to 20).
const SEGMENT_NAME_DIGITS: usize = 20;

/// Kafka's name for the segment starting at `base_offset`: `00000000000000000042.log`.
pub fn segment_file_name(base_offset: i64) -> String {
    format!(
        "{base_offset:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

/// The base offset a segment file name encodes, or `None` if it is not a segment name.
pub fn parse_segment_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Kafka's directory for an offsets partition: `<data dir>/__consumer_offsets-<partition>`.
pub fn partition_dir(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join(format!("__consumer_offsets-{partition}"))
}

/// A segment no longer appended to; its file is closed until something reads it.
#[derive(Debug, Clone)]
pub struct SealedSegment {
    /// Offset its name carries.
    pub base_offset: i64,
    /// Its file.
    pub path: PathBuf,
    /// Bytes of batches in it.
    pub len: u64,
    /// When a roll sealed it in this process (`None`: found at open, or written by a
    /// compaction). Background compaction leaves a freshly sealed segment alone for a while
    /// (`compact::select`).
    pub sealed_at: Option<std::time::Instant>,
}

/// The segment appends go to.
#[derive(Debug)]
pub struct ActiveSegment {
    /// Offset its name carries.
    pub base_offset: i64,
    /// Its file.
    pub path: PathBuf,
    /// Open handle.
    pub file: FileId,
    /// Bytes of durable batches in it: the next append's position.
    pub len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_kafka() {
        assert_eq!(segment_file_name(0), "00000000000000000000.log");
        assert_eq!(segment_file_name(1234), "00000000000000001234.log");
        assert_eq!(
            parse_segment_file_name("00000000000000001234.log"),
            Some(1234)
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(i64::MAX)),
            Some(i64::MAX)
        );
        for bad in [
            "1234.log",
            "00000000000000001234.index",
            "0000000000000000123a.log",
            "-0000000000000000001.log",
            ".lock",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
        assert_eq!(
            partition_dir(Path::new("/data"), 7),
            PathBuf::from("/data/__consumer_offsets-7")
        );
    }
}
