//! The shard journal: one `fdatasync` per group commit, however many partitions it touches.
//!
//! With [`FsyncScope::Journal`](crate::FsyncScope::Journal) a flush writes each dirty
//! partition's batch to its segment *without* syncing it, and the same batches, each framed
//! as an entry (`entry.rs`) naming its partition, segment and position, to the shard's journal file in
//! one write followed by one `fdatasync`. The commits are acknowledged when that sync
//! succeeds: the journal makes them durable, the segments catch up later.
//!
//! * **Checkpoint.** A journal file has a fixed capacity. When the next flush would not fit,
//!   the shard switches to another file and syncs, in the background, every segment written
//!   while the full one was current; only then is the full file given up (kept as the spare,
//!   which a later switch renames and writes again). So every byte a segment holds before
//!   the first entry for it in a journal file still in use is durable in the segment.
//! * **Failure.** A failed journal write or sync fails every partition of that flush closed,
//!   as a failed segment sync does with per-file syncing; the file takes no more writes and
//!   is kept for the next open, and the shard continues on a new file.
//! * **Recovery** (`redo.rs`). At open, before any partition is read, every journal file's
//!   valid entries are written again at their positions in their partitions' active
//!   segments, in sequence order, the segments synced and the journal files removed. Then the
//!   partitions recover as usual. Entries for sealed segments are skipped: a segment is
//!   synced when it is sealed, and it may since have been compacted.
//!
//! docs/format.md gives the file layout byte by byte; docs/architecture.md why.

mod entry;
mod redo;
mod writer;

pub use redo::JournalRecovery;
pub(crate) use redo::redo;
pub(crate) use writer::JournalWriter;

pub(crate) use entry::ENTRY_HEADER_BYTES;

use std::path::{Path, PathBuf};

use crate::sync::atomic::{AtomicU64, Ordering};

/// Suffix of a journal file.
pub(crate) const JOURNAL_SUFFIX: &str = ".journal";
/// Journal files one shard keeps after failures before it refuses to write.
pub(crate) const JOURNAL_FILES_RETAINED_MAX: usize = 8;

/// `<data dir>/journal`: every shard's journal files.
pub(crate) fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

/// A journal file's name: the sequence number drawn when it was created, 20 digits.
pub(crate) fn journal_file_name(sequence: u64) -> String {
    format!("{sequence:020}{JOURNAL_SUFFIX}")
}

/// The sequence a journal file's name carries, if the directory entry is a journal file.
pub(crate) fn journal_file_sequence(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(JOURNAL_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The engine-wide flush counter: every flush of every shard, and every journal file, draws
/// the next number. A partition that moves between shards therefore has all of its entries,
/// in whichever journal, ordered by the time they were written.
#[derive(Debug)]
pub(crate) struct FlushSequence(AtomicU64);

impl FlushSequence {
    /// Starts at 1 (0 marks unwritten journal space). Recovery emptied every journal before
    /// this is created, so no older number is still on disk.
    pub(crate) fn new() -> FlushSequence {
        FlushSequence(AtomicU64::new(1))
    }

    /// The next number. Only uniqueness and order matter, so no ordering with other memory.
    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}
