//! [`JournalWriter`]: a shard's current journal file and the entries of the flush in progress.

use std::io;
use std::path::{Path, PathBuf};

use super::entry::{ENTRY_HEADER_BYTES, EntryHeader, append_entry};
use super::{FlushSequence, JOURNAL_FILES_RETAINED_MAX, journal_dir, journal_file_name};
use crate::storage::{FileId, OpenMode, Storage, WriteOp};
use crate::sync::Arc;

/// The journal file a shard appends each group commit to, and that flush's entries.
///
/// A file is written front to back, one write per flush. The first file is created by the
/// first flush (an engine opened only to read creates none). When it is full the shard
/// [`rotate`](Self::rotate)s: the full file becomes the *previous* one, and another takes
/// the writes. The previous file is done with ([`finish_previous`](Self::finish_previous))
/// once every segment written while it was current has been synced in the background (the
/// checkpoint), and becomes the *spare*: the next rotation renames it to a new sequence
/// number and writes it again from the start, instead of removing one file and creating
/// another (unlinking a full file took about 18 ms here, on the flush path). Its old entries
/// are older than its new name, which is where recovery stops reading them (format.md).
pub(crate) struct JournalWriter {
    dir: PathBuf,
    /// `None` until the first flush.
    current: Option<JournalFile>,
    /// The full file whose checkpoint is in progress.
    previous: Option<JournalFile>,
    /// A checkpointed file, kept open to be written again by the next rotation.
    spare: Option<JournalFile>,
    /// Bounds of a file's size ([`file_bytes_for`]).
    file_bytes_min: u64,
    file_bytes_max: u64,
    /// This flush's entries, reused from flush to flush.
    buf: Vec<u8>,
    sequence: Arc<FlushSequence>,
    /// The sequence of the flush in progress.
    flush_sequence: u64,
    /// Files kept for the next open, in this run.
    retained_files: usize,
    /// Why the current file can take no more writes (a failed write or fdatasync).
    failure: Option<String>,
}

/// One open journal file.
struct JournalFile {
    path: PathBuf,
    file: FileId,
    /// Bytes written so far.
    len: u64,
    /// Bytes reserved (the file's length): where the writes stop.
    capacity_bytes: u64,
    /// Whether it must be kept for the next open's redo: some data it covers is not known
    /// to be durable in its partition's segment.
    retain: bool,
}

impl JournalWriter {
    /// Creates the journal directory if needed; the first file comes with the first
    /// [`rotate`](Self::rotate).
    pub(crate) fn create(
        storage: &mut dyn Storage,
        data_dir: &Path,
        (file_bytes_min, file_bytes_max): (u64, u64),
        sequence: Arc<FlushSequence>,
    ) -> io::Result<JournalWriter> {
        assert!(file_bytes_min <= file_bytes_max);
        let dir = journal_dir(data_dir);
        storage.create_dir_all(&dir)?;
        storage.sync_dir(data_dir)?;
        Ok(JournalWriter {
            dir,
            current: None,
            previous: None,
            spare: None,
            file_bytes_min,
            file_bytes_max,
            buf: Vec::new(),
            sequence,
            flush_sequence: 0,
            retained_files: 0,
            failure: None,
        })
    }

    /// Whether a flush of `entries` entries carrying `payload_bytes` fits in the current
    /// file (if not, or if there is none yet, rotate first).
    pub(crate) fn fits(&self, entries: usize, payload_bytes: usize) -> bool {
        let bytes = (entries * ENTRY_HEADER_BYTES + payload_bytes) as u64;
        let Some(current) = self.current.as_ref() else {
            return false;
        };
        self.failure.is_none() && current.len + bytes <= current.capacity_bytes
    }

    /// Whether a file has been written to (rotating then starts a checkpoint).
    pub(crate) fn has_file(&self) -> bool {
        self.current.is_some()
    }

    /// Starts the entries of a new flush.
    pub(crate) fn begin_flush(&mut self) {
        self.buf.clear();
        self.flush_sequence = self.sequence.next();
    }

    /// Adds one partition's batch to the flush.
    pub(crate) fn add(
        &mut self,
        partition: u32,
        segment_base_offset: i64,
        position: u64,
        batch: &[u8],
    ) {
        let header = EntryHeader {
            sequence: self.flush_sequence,
            partition,
            segment_base_offset,
            position,
        };
        append_entry(&mut self.buf, &header, batch);
    }

    /// The flush's one journal write, synced. Only after [`fits`](Self::fits) said yes;
    /// without a file the op names no open file, and the storage fails it.
    pub(crate) fn write_op(&self) -> WriteOp<'_> {
        let (file, position, capacity_bytes) = self
            .current
            .as_ref()
            .map_or((FileId(u32::MAX), 0, 0), |current| {
                (current.file, current.len, current.capacity_bytes)
            });
        debug_assert!(self.current.is_some());
        debug_assert!(position + self.buf.len() as u64 <= capacity_bytes);
        WriteOp {
            file,
            position,
            bytes: &self.buf,
            sync: true,
        }
    }

    /// Records the outcome of the flush's journal write.
    pub(crate) fn written(&mut self, result: &io::Result<()>) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        match result {
            Ok(()) => current.len += self.buf.len() as u64,
            Err(error) => {
                // Never write after a failed write or fdatasync: the file may hold a hole
                // that recovery would stop at, hiding later entries. Earlier entries were
                // synced and still matter until their partitions are.
                self.failure = Some(format!("journal {}: {error}", current.path.display()));
                current.retain = true;
            }
        }
        self.buf.clear();
    }

    /// Whether the current file failed and must be rotated before the next write.
    pub(crate) fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// Keeps the current file for the next open: a partition whose acked data it holds
    /// failed closed.
    pub(crate) fn retain_current(&mut self) {
        if let Some(current) = self.current.as_mut() {
            current.retain = true;
        }
    }

    /// Keeps the previous file for the next open: a segment it covers could not be synced.
    pub(crate) fn retain_previous(&mut self) {
        if let Some(previous) = self.previous.as_mut() {
            previous.retain = true;
        }
    }

    /// Whether a previous file's checkpoint is still in progress.
    pub(crate) fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// Starts a new file, sized for a shard holding `live_bytes` of live data
    /// ([`file_bytes_for`]). The current one becomes the previous (its checkpoint starts),
    /// or, if it failed, is simply kept for the next open. Requires no previous file.
    pub(crate) fn rotate(&mut self, storage: &mut dyn Storage, live_bytes: u64) -> io::Result<()> {
        if self.previous.is_some() {
            return Err(io::Error::other(
                "a journal checkpoint is still in progress",
            ));
        }
        let retain = self.current.as_ref().is_some_and(|current| current.retain);
        if retain && self.retained_files >= JOURNAL_FILES_RETAINED_MAX {
            return Err(io::Error::other(format!(
                "{JOURNAL_FILES_RETAINED_MAX} journal files are kept after failures; reopen \
                 the engine to recover them"
            )));
        }
        let capacity_bytes = file_bytes_for(live_bytes, self.file_bytes_min, self.file_bytes_max);
        let next = match self.spare.take() {
            Some(spare) => reuse_file(storage, &self.dir, spare, capacity_bytes, &self.sequence)?,
            None => create_file(storage, &self.dir, capacity_bytes, &self.sequence)?,
        };
        let Some(old) = self.current.replace(next) else {
            return Ok(());
        };
        if self.failure.take().is_some() {
            // Its valid entries are all synced; nothing more to checkpoint here.
            storage.close(old.file);
            self.retained_files += 1;
        } else {
            self.previous = Some(old);
        }
        Ok(())
    }

    /// Ends the previous file's checkpoint: it becomes the spare, unless retained (then it
    /// is closed and kept for the next open).
    pub(crate) fn finish_previous(&mut self, storage: &mut dyn Storage) -> io::Result<()> {
        let Some(previous) = self.previous.take() else {
            return Ok(());
        };
        if previous.retain {
            self.retained_files += 1;
            return release_files(storage, &self.dir, [previous], false);
        }
        match self.spare.replace(previous) {
            Some(extra) => release_files(storage, &self.dir, [extra], true),
            None => Ok(()),
        }
    }

    /// Closes the files at shutdown: each removed when every partition it covers was
    /// closed (trimmed and synced), kept for the next open otherwise.
    pub(crate) fn close(
        self,
        storage: &mut dyn Storage,
        partitions_synced: bool,
    ) -> io::Result<()> {
        let files = self
            .previous
            .into_iter()
            .chain(self.current)
            .chain(self.spare);
        release_files(storage, &self.dir, files, partitions_synced)
    }
}

/// Closes journal files, and removes those not retained when `remove`. A crash before the
/// directory sync brings a removed file back; its redo rewrites bytes the segments already
/// hold durably.
fn release_files(
    storage: &mut dyn Storage,
    dir: &Path,
    files: impl IntoIterator<Item = JournalFile>,
    remove: bool,
) -> io::Result<()> {
    let mut removed = false;
    let mut result = Ok(());
    for file in files {
        storage.close(file.file);
        if remove && !file.retain {
            result = result.and(storage.remove_file(&file.path));
            removed = true;
        }
    }
    if removed {
        result = result.and(storage.sync_dir(dir));
    }
    result
}

/// A journal file's size for a shard holding `live_bytes` of live data: a quarter of it,
/// within `[min, max]`. A shard has at most two files (the current one, and the previous
/// or the spare), so once the live data is large the journal adds at most half of it on
/// disk; a small journal only means more frequent checkpoints (the segments' syncs, in the
/// background).
fn file_bytes_for(live_bytes: u64, min: u64, max: u64) -> u64 {
    (live_bytes / JOURNAL_LIVE_BYTES_PER_FILE_BYTE).clamp(min, max)
}

/// The live bytes a shard holds per byte of one journal file (see [`file_bytes_for`]).
const JOURNAL_LIVE_BYTES_PER_FILE_BYTE: u64 = 4;

/// Makes a checkpointed file the next current one: renamed to a newly drawn sequence (so
/// its old entries, all older, are where recovery stops) and the name made durable before
/// the first write. A crash before that leaves the old name: the new entries, newer than
/// the old ones after them, are still read first, and the old ones are stopped at.
///
/// The file is resized first when its size is off by more than a factor of two from
/// `capacity_bytes` (the shard's live data grew or shrank): grown by reserving more, cut
/// when too large. Both are made durable before the file is written, so each flush's
/// fdatasync still writes data only. A crash after the resize but before the rename
/// leaves a file of the old name whose entries are all older than their checkpoint.
fn reuse_file(
    storage: &mut dyn Storage,
    dir: &Path,
    spare: JournalFile,
    capacity_bytes: u64,
    sequence: &FlushSequence,
) -> io::Result<JournalFile> {
    let too_small = spare.capacity_bytes < capacity_bytes / 2;
    let capacity_bytes = if too_small || spare.capacity_bytes > capacity_bytes.saturating_mul(2) {
        let resized = if too_small {
            storage.allocate(spare.file, capacity_bytes)
        } else {
            storage.set_len(spare.file, capacity_bytes)
        };
        if let Err(error) = resized.and_then(|()| storage.sync(spare.file)) {
            // Left under its old name: its entries are all older than their checkpoint.
            storage.close(spare.file);
            return Err(error);
        }
        capacity_bytes
    } else {
        spare.capacity_bytes
    };
    storage.close(spare.file);
    let path = dir.join(journal_file_name(sequence.next()));
    storage.rename(&spare.path, &path)?;
    storage.sync_dir(dir)?;
    let file = storage.open(&path, OpenMode::Existing)?;
    Ok(JournalFile {
        path,
        file,
        len: 0,
        capacity_bytes,
        retain: false,
    })
}

/// Creates an empty journal file, reserved to `capacity_bytes` so each flush's fdatasync
/// writes data, not a new file length; its name is durable before the first write.
fn create_file(
    storage: &mut dyn Storage,
    dir: &Path,
    capacity_bytes: u64,
    sequence: &FlushSequence,
) -> io::Result<JournalFile> {
    let path = dir.join(journal_file_name(sequence.next()));
    let file = storage.open(&path, OpenMode::CreateNew)?;
    let prepared = storage
        .allocate(file, capacity_bytes)
        .and_then(|()| storage.sync(file))
        .and_then(|()| storage.sync_dir(dir));
    match prepared {
        Ok(()) => Ok(JournalFile {
            path,
            file,
            len: 0,
            capacity_bytes,
            retain: false,
        }),
        Err(error) => {
            storage.close(file);
            Err(error)
        }
    }
}
