//! The narrow interface between the engine and the disk.
//!
//! Everything the engine does to files goes through [`Storage`], so the engine's own tests can
//! run it over [`SimStorage`], a seeded in-memory twin that injects write and sync errors and
//! simulates crashes (unsynced data lost or torn), the way TigerBeetle's `testing/storage.zig`
//! does. The production implementation is [`UringStorage`]: control-path calls (open, list,
//! truncate) are plain syscalls; the hot path, [`Storage::write_durable`], puts every
//! partition's write and its `fdatasync` into one io_uring submission (a lone synced write,
//! such as the journal's, is a `pwrite` + `fdatasync` on the calling thread).
//!
//! All paths given to a storage are absolute or relative to the process's working directory;
//! the engine always passes paths under its data directory.

use std::io;
use std::path::Path;

mod sim;
mod uring;

pub use sim::{SimDisk, SimFaults, SimStorage};
pub use uring::UringStorage;

/// Most writes one [`Storage::write_durable`] call may carry: one per offsets partition.
pub const WRITES_PER_FLUSH_MAX: usize = crate::config::PARTITIONS_MAX as usize;

/// Handle of an open file, valid until [`Storage::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId(pub u32);

/// How [`Storage::open`] treats an existing or missing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open a file that must exist.
    Existing,
    /// Create a file that must not exist.
    CreateNew,
}

/// One write of a group commit: `bytes` at `position` of `file`, then, if `sync`, an
/// `fdatasync` of the file. Empty `bytes` with `sync` is a sync alone.
#[derive(Debug, Clone, Copy)]
pub struct WriteOp<'a> {
    /// The file to write.
    pub file: FileId,
    /// Byte position in the file.
    pub position: u64,
    /// What to write.
    pub bytes: &'a [u8],
    /// Make the file's data durable after the write (`FsyncScope::Journal` leaves the
    /// segments' writes unsynced and syncs only the journal's).
    pub sync: bool,
}

/// The engine's view of a disk. One instance belongs to one shard thread.
pub trait Storage: Send + 'static {
    /// Takes the exclusive lock of a data directory, held until the storage is dropped.
    /// Fails with `ErrorKind::WouldBlock` when another engine holds it.
    fn lock_dir(&mut self, dir: &Path) -> io::Result<()>;
    /// Creates a directory and its parents if missing.
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in a directory (files and sub-directories), in no order.
    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing.
    fn open(&mut self, path: &Path, mode: OpenMode) -> io::Result<FileId>;
    /// Current length of a file in bytes.
    fn file_len(&mut self, file: FileId) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `position`; returns how many were read (0 at the end).
    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Sets a file's length, cutting or zero-extending it.
    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()>;
    /// Reserves space so the file is at least `len` bytes, reading as zeros past the old end.
    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()>;
    /// Writes `bytes` at `position` without making them durable (the compactor's copy,
    /// synced once with [`Storage::sync`] before it is swapped in).
    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes a file's data and length durable.
    fn sync(&mut self, file: FileId) -> io::Result<()>;
    /// Makes a directory's entries (created, removed files) durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
    /// Closes a file; its id is invalid afterwards.
    fn close(&mut self, file: FileId);
    /// Removes a file.
    fn remove_file(&mut self, path: &Path) -> io::Result<()>;
    /// Renames a closed file inside one directory, replacing `to` if it exists (POSIX
    /// `rename`). Like a creation or a removal, the new name is durable only after
    /// [`Storage::sync_dir`]; a crash before that may leave the old name.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Writes every op and makes each op with `sync` durable (data only), as one submission.
    /// `results` is cleared and receives one result per op, in order. A file appears at most
    /// once in `ops`. A synced op is durable only if its result is `Ok`.
    fn write_durable(&mut self, ops: &[WriteOp<'_>], results: &mut Vec<io::Result<()>>);
    /// Starts a flush's lone synced write (the journal's) without waiting for its sync:
    /// writes `op.bytes` before it returns (the caller may reuse them at once) and starts
    /// the `fdatasync`, whose outcome [`finish_synced_write`](Self::finish_synced_write)
    /// waits for. The shard encodes its next flush meanwhile. At most one is outstanding.
    /// An error means the write is not durable and nothing is outstanding (a sync the
    /// kernel may still run is the storage's to keep safe, not the caller's).
    fn start_synced_write(&mut self, op: &WriteOp<'_>) -> io::Result<()>;
    /// Waits for the sync [`start_synced_write`](Self::start_synced_write) started and
    /// returns its outcome: the write is durable only if this is `Ok`. Fails when none is
    /// outstanding. Background completions seen meanwhile are kept for the next reap.
    fn finish_synced_write(&mut self) -> io::Result<()>;
    /// Starts an `fdatasync` of `file` and returns without waiting for it; its outcome comes
    /// back from a later [`reap_background_syncs`](Self::reap_background_syncs), tagged with
    /// `token`. At most [`BACKGROUND_SYNCS_MAX`] may be outstanding. The file may be closed
    /// meanwhile; the sync still completes.
    fn start_background_sync(&mut self, file: FileId, token: u64) -> io::Result<()>;
    /// Starts an `fsync` of the directory `dir` (its entries: created, removed, renamed
    /// files) and returns without waiting, like
    /// [`start_background_sync`](Self::start_background_sync), whose bound it shares; its
    /// outcome comes back from a later reap, tagged with `token`.
    fn start_background_dir_sync(&mut self, dir: &Path, token: u64) -> io::Result<()>;
    /// Removes `files` from `dir`, then syncs the directory, without waiting: like
    /// [`start_background_dir_sync`](Self::start_background_dir_sync) with the removals
    /// first, one outcome (the first failure) for all. Every removal is tried whatever the
    /// others' outcomes (Linux's io_uring does not stop a chain at a failed `unlinkat`), so
    /// a caller must not count on any of them after a failure. Fewer than
    /// [`REMOVALS_MAX`] files. Until the sync succeeds a crash may bring any of them back,
    /// as after the blocking [`remove_file`](Self::remove_file).
    fn start_background_removals(
        &mut self,
        dir: &Path,
        files: &[&Path],
        token: u64,
    ) -> io::Result<()>;
    /// Appends the outcomes of background syncs that have finished to `done`; with `wait`,
    /// first waits until every started one has.
    fn reap_background_syncs(&mut self, wait: bool, done: &mut Vec<(u64, io::Result<()>)>);
    /// Keeps the kernel threads that run this storage's asynchronous I/O on the CPUs the
    /// calling thread may run on. A pinned shard calls it so its writes' copies and its
    /// syncs' waits run on its own core, while it waits for them, instead of preempting
    /// another core's work. Storages without such threads do nothing.
    fn confine_workers_to_this_thread(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bound on the files of one [`Storage::start_background_removals`]: its entries go into
/// the submission queue at once.
pub const REMOVALS_MAX: usize = 64;

/// The bound [`Storage::start_background_removals`] enforces before anything else.
pub(crate) fn check_removals(files: &[&Path]) -> io::Result<()> {
    if files.len() >= REMOVALS_MAX {
        return Err(io::Error::other("too many removals for one submission"));
    }
    Ok(())
}

/// Most background syncs ([`Storage::start_background_sync`]) outstanding at once. Small on
/// purpose: when the journal's sync still went through io_uring's bounded pool of kernel
/// workers, it queued behind a pool full of checkpoint syncs for tens of milliseconds (flush
/// p99.9 35 ms with 32 here, 5–7 ms with 4; benchmarks.md). It now runs on the shard thread,
/// but the checkpoint syncs still share the disk with it, and a few at a time are enough to
/// finish a checkpoint long before the next journal file fills.
pub const BACKGROUND_SYNCS_MAX: usize = 4;
