//! Reads a segment batch by batch, checking each batch's framing, CRC and offsets, and
//! classifies where and why reading stopped.

use std::io;

use crate::format::{
    self, BATCH_LOG_OVERHEAD_BYTES, BatchView, FormatError, batch::NO_PARTITION_LEADER_EPOCH,
};
use crate::storage::{FileId, Storage};

/// Hard cap on the bytes one partition's flush writes. A crash can tear only the last write,
/// so after a crash any garbage lies within this many bytes past the last valid batch; the
/// recovery scan relies on it.
pub const PARTITION_FLUSH_BYTES_MAX: usize = 1 << 20;

/// Largest batch a reader accepts. Bigger than ours, for segments a Kafka broker wrote.
pub const BATCH_READ_BYTES_MAX: usize = 8 << 20;

/// Position of the magic byte inside a batch.
const MAGIC_POSITION: usize = 16;

/// Bytes read per storage call while scanning.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Where and why a scan stopped before the end of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanStop {
    /// Byte position of the first batch that failed.
    pub position: u64,
    /// What failed.
    pub reason: String,
    /// Whether the failed position holds the zeros of preallocated space (a clean end).
    pub zeros: bool,
}

/// What a scan of one segment found.
#[derive(Debug, Clone, Default)]
pub struct ScanOutcome {
    /// Bytes of valid batches from the start of the file.
    pub valid_len: u64,
    /// Last offset of the last valid batch, if any.
    pub last_offset: Option<i64>,
    /// Valid batches read.
    pub batches: u64,
    /// Why reading stopped before the end of the file; `None` if it reached the end.
    pub stop: Option<ScanStop>,
    /// A batch that passed its checks but whose records the visitor rejected (malformed
    /// keys or values under a valid CRC): corruption, never a torn tail.
    pub bad_records: Option<(u64, FormatError)>,
}

/// A window of a file held in a reusable buffer.
pub struct SegmentReader<'s> {
    storage: &'s mut dyn Storage,
    file: FileId,
    file_len: u64,
    buf: Vec<u8>,
    window_start: u64,
    window_len: usize,
}

impl<'s> SegmentReader<'s> {
    /// A reader of `file`, reusing `buf` (taken back with [`SegmentReader::into_buffer`]).
    pub fn new(storage: &'s mut dyn Storage, file: FileId, buf: Vec<u8>) -> io::Result<Self> {
        let file_len = storage.file_len(file)?;
        Ok(SegmentReader {
            storage,
            file,
            file_len,
            buf,
            window_start: 0,
            window_len: 0,
        })
    }

    /// The buffer, for reuse by the next reader.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// Length of the file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The bytes from `position` on, at least `want` of them unless the file ends first.
    fn bytes_at(&mut self, position: u64, want: usize) -> io::Result<&[u8]> {
        let window_end = self.window_start + self.window_len as u64;
        let available_in_file = (self.file_len.saturating_sub(position)) as usize;
        let want = want.min(available_in_file);
        let hit = position >= self.window_start && position + want as u64 <= window_end;
        if !hit {
            let read_len = want.max(READ_CHUNK_BYTES).min(available_in_file);
            if self.buf.len() < read_len {
                self.buf.resize(read_len, 0);
            }
            let read = self
                .storage
                .read_at(self.file, position, &mut self.buf[..read_len])?;
            if read < read_len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than its reported length",
                ));
            }
            self.window_start = position;
            self.window_len = read_len;
        }
        let from = (position - self.window_start) as usize;
        Ok(&self.buf[from..self.window_len])
    }

    /// Reads batches from the start of the file, calling `visit` with each valid one and its
    /// byte position, until the end of the file or the first batch that fails its checks.
    /// Batches must carry offsets above `previous_last_offset` and increasing; with
    /// `contiguous`, each batch, the first included, must start right after the previous
    /// offset (true of any segment not yet compacted). Kafka's CRC does not cover the base offset or the
    /// partition leader epoch, so these offset checks, and a leader epoch that is at least -1
    /// and never decreases, are what catch damage there.
    pub fn scan(
        &mut self,
        previous_last_offset: Option<i64>,
        contiguous: bool,
        visit: &mut dyn FnMut(&BatchView<'_>, u64) -> Result<(), FormatError>,
    ) -> io::Result<ScanOutcome> {
        let mut outcome = ScanOutcome::default();
        let mut last_offset = previous_last_offset;
        let mut leader_epoch = NO_PARTITION_LEADER_EPOCH;
        let mut position = 0u64;
        // Bounded: every iteration advances by at least one batch header.
        while position < self.file_len {
            let header = self.bytes_at(position, BATCH_LOG_OVERHEAD_BYTES)?;
            let zeros = header.len() >= BATCH_LOG_OVERHEAD_BYTES
                && header[..BATCH_LOG_OVERHEAD_BYTES].iter().all(|&b| b == 0);
            let batch_len = batch_total_len(header);
            // An implausible length is left for parse_batch to reject; don't read for it.
            let want = batch_len
                .filter(|&len| len <= BATCH_READ_BYTES_MAX)
                .unwrap_or(format::BATCH_HEADER_BYTES);
            let bytes = self.bytes_at(position, want)?;
            let stop = |reason: String| ScanStop {
                position,
                reason,
                zeros,
            };
            let view = match format::parse_batch(bytes) {
                Ok(view) => view,
                Err(error) => {
                    outcome.stop = Some(stop(error.to_string()));
                    break;
                }
            };
            let base = view.header.base_offset;
            let follows = match last_offset {
                None => true,
                Some(last) if contiguous => Some(base) == last.checked_add(1),
                Some(last) => base > last,
            };
            if !follows {
                outcome.stop = Some(stop(format!(
                    "batch base offset {base} does not follow offset {}",
                    last_offset.unwrap_or_default()
                )));
                break;
            }
            let epoch = view.header.partition_leader_epoch;
            if epoch < NO_PARTITION_LEADER_EPOCH || epoch < leader_epoch {
                outcome.stop = Some(stop(format!(
                    "partition leader epoch {epoch} is invalid or below {leader_epoch}"
                )));
                break;
            }
            leader_epoch = epoch;
            if let Err(error) = visit(&view, position) {
                outcome.bad_records = Some((position, error));
                break;
            }
            last_offset = Some(view.header.last_offset());
            position += view.total_bytes() as u64;
            outcome.batches += 1;
        }
        outcome.valid_len = position;
        outcome.last_offset = last_offset;
        Ok(outcome)
    }

    /// Looks at the `PARTITION_FLUSH_BYTES_MAX` bytes after a failed position: returns how
    /// many bytes up to the last non-zero one there are, and the position of the first valid
    /// batch (offsets above `last_offset`) that starts inside, if any. A valid batch there
    /// means good data after a bad batch: corruption, not a torn tail.
    pub fn inspect_tail(
        &mut self,
        from: u64,
        last_offset: Option<i64>,
    ) -> io::Result<(u64, Option<u64>)> {
        let window = self.bytes_at(from, PARTITION_FLUSH_BYTES_MAX + format::BATCH_HEADER_BYTES)?;
        let scan_len = window.len().min(PARTITION_FLUSH_BYTES_MAX);
        let garbage_len = window[..scan_len]
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last as u64 + 1);
        if garbage_len == 0 {
            return Ok((0, None)); // all zeros: preallocated space, and no batch can start here
        }
        // Candidates: the magic byte where a batch would have it and a plausible length.
        let candidates: Vec<u64> = (1..scan_len)
            .filter(|&start| {
                window.get(start + MAGIC_POSITION) == Some(&2)
                    && batch_total_len(&window[start..]).is_some_and(|len| {
                        (format::BATCH_HEADER_BYTES..=BATCH_READ_BYTES_MAX).contains(&len)
                    })
            })
            .map(|start| from + start as u64)
            .collect();
        let mut later_batch = None;
        for candidate in candidates {
            let header = self.bytes_at(candidate, BATCH_LOG_OVERHEAD_BYTES)?;
            let len = batch_total_len(header).unwrap_or(0);
            let bytes = self.bytes_at(candidate, len)?;
            if let Ok(view) = format::parse_batch(bytes)
                && last_offset.is_none_or(|last| view.header.base_offset > last)
            {
                later_batch = Some(candidate);
                break;
            }
        }
        Ok((garbage_len, later_batch))
    }
}

/// Total bytes a batch claims from its length field, if the header is long enough to say.
fn batch_total_len(header: &[u8]) -> Option<usize> {
    let length_bytes: [u8; 4] = header.get(8..12)?.try_into().ok()?;
    let length = i32::from_be_bytes(length_bytes);
    usize::try_from(length)
        .ok()
        .map(|l| l + BATCH_LOG_OVERHEAD_BYTES)
}
