//! [`UringStorage`]: the production [`Storage`], on the `io-uring` crate.
//!
//! Control-path calls are plain syscalls through `std::fs`, except the syncs, which call
//! `fsync`/`fdatasync` once through `libc` (std retries them after EINTR). The group-commit path,
//! [`Storage::write_durable`], makes a lone synced write (the shard journal's flush, or a
//! one-partition flush without a journal) with `pwrite` + `fdatasync` on the calling thread.
//! Several writes it pushes into one io_uring submission, each a buffered write linked
//! (`IOSQE_IO_LINK`) to an `fdatasync` of the same file, and waits for every completion: the
//! kernel runs the partitions' syncs in parallel; the link keeps each sync after its write.
//! With `FsyncScope::Filesystem` the writes go unlinked and one `syncfs` follows them. See
//! docs/architecture.md for why this and not glommio's DMA files.
//!
//! A flush whose `io_uring_enter` the kernel refuses for good breaks the ring: its entries
//! point at buffers the caller reuses once the call returns, so nothing may submit them
//! later, and every later durable write fails instead (`UringStorage::broken`); the entries
//! the kernel already took are waited for first.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use io_uring::{IoUring, opcode, squeue, types};

use super::{FileId, OpenMode, Storage, WriteOp};
use crate::config::FsyncScope;

/// The first kernel whose `syncfs` reports writeback errors (errseq on the superblock).
const SYNCFS_ERRORS_KERNEL_MIN: (u32, u32) = (5, 8);

/// Submission queue entries. Two per write (write + sync), so this many / 2 writes go in one
/// `io_uring_enter`; larger flushes are submitted in chunks of that size.
const RING_ENTRIES: u32 = 256;
const WRITES_PER_SUBMIT_MAX: usize = (RING_ENTRIES / 2) as usize;
/// Most bytes one write SQE carries (the SQE length field is 32 bits).
const WRITE_BYTES_MAX: usize = u32::MAX as usize;
/// `user_data` bit of a background sync's completion; the rest is its token. A flush's
/// entries use the low bits (op index and write/sync), far below it.
const BACKGROUND_BIT: u64 = 1 << 63;
/// `user_data` bit of a synced write's `fdatasync` ([`Storage::start_synced_write`]); the
/// rest is its sequence number, so a completion left over from a failed submission is
/// never taken for a later write's.
const SYNCED_WRITE_BIT: u64 = 1 << 62;
/// How many times a flush's `io_uring_enter` refused for want of resources (`EAGAIN`, or
/// `EBUSY` while completions overflow) is tried again, with completions reaped and
/// [`RING_BUSY_PAUSE`] between tries, before the ring is taken as broken. The man page calls
/// both transient; about 10 ms in all, well inside a commit timeout.
const RING_BUSY_RETRIES_MAX: u32 = 100;
const RING_BUSY_PAUSE: std::time::Duration = std::time::Duration::from_micros(100);
/// How long a flush that breaks the ring waits for the entries the kernel already took:
/// they read the caller's buffers and name its descriptors, so the call cannot return
/// before they complete. Past it the process aborts (a crash, which recovery handles)
/// rather than hand the buffers back; a kernel that runs a write or sync for a minute has
/// failed anyway.
#[cfg(not(test))]
const RING_BROKEN_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(60);
#[cfg(test)]
const RING_BROKEN_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// `IORING_ENTER_GETEVENTS` (linux/io_uring.h): an enter that submits nothing still flushes
/// completions the kernel holds back (overflow, deferred task work) into the queue.
const IORING_ENTER_GETEVENTS: u32 = 1;

/// The production storage: std files plus one io_uring per instance (per shard).
pub struct UringStorage {
    ring: IoUring,
    files: Vec<Option<File>>,
    free_ids: Vec<u32>,
    dir_lock: Option<File>,
    fsync_scope: FsyncScope,
    /// Background operations submitted and not yet handed out.
    background: Background,
    /// Whether the kernel runs `unlinkat` through the ring (Linux ≥ 5.11).
    ring_unlinks: bool,
    /// The synced write whose sync is in flight, if any.
    synced_write: SyncedWrite,
    /// Why the ring is never entered again, once a flush's entries could not be submitted
    /// or waited for (see [`UringStorage::write_chunk`]): every later durable write,
    /// synced write and background operation fails.
    broken: Option<String>,
    /// Per entry of the flush chunk being written: its op's index, and whether it is the
    /// `fdatasync` linked to that op's write (`write_chunk`). Reused; `RING_ENTRIES` long at
    /// most.
    chunk_entries: Vec<(u16, bool)>,
    /// What the next `io_uring_enter` calls do instead of submitting and waiting (tests).
    #[cfg(test)]
    injected_enters: std::collections::VecDeque<InjectedEnter>,
}

/// Most syncs of synced writes left queued by failed submissions (or a failed wait) whose
/// completions have not come yet; past it the ring is taken as broken and synced writes are
/// refused.
const SYNCED_WRITE_ORPHANS_MAX: usize = 4;

/// The one synced write a [`UringStorage`] may have in flight
/// ([`Storage::start_synced_write`]).
#[derive(Default)]
struct SyncedWrite {
    /// Sequence number of the last one started.
    sequence: u64,
    /// The one in flight: its own duplicate of the file's descriptor, held until its
    /// completion, so the sync never runs on a descriptor number the file's closing freed
    /// for another file (where it could consume that file's writeback error).
    in_flight: Option<File>,
    /// Its outcome, once its completion was seen (possibly while reaping other entries).
    outcome: Option<io::Result<()>>,
    /// Syncs whose outcome nobody waits for any more (their submission or the wait for them
    /// failed) but which may still run: their descriptors, until their completions come.
    orphans: Vec<(u64, File)>,
}

impl SyncedWrite {
    /// Takes a synced write's completion; false for any other entry's. An orphan's is
    /// dropped, with its descriptor.
    fn take(&mut self, cqe: &io_uring::cqueue::Entry) -> bool {
        let user_data = cqe.user_data();
        if user_data & BACKGROUND_BIT != 0 || user_data & SYNCED_WRITE_BIT == 0 {
            return false;
        }
        let sequence = user_data & !SYNCED_WRITE_BIT;
        if let Some(index) = self.orphans.iter().position(|(s, _)| *s == sequence) {
            self.orphans.swap_remove(index);
            return true;
        }
        if self.in_flight.is_some() && sequence == self.sequence {
            let code = cqe.result();
            self.outcome = Some(if code >= 0 {
                Ok(())
            } else {
                let error = io::Error::from_raw_os_error(-code);
                Err(io::Error::new(error.kind(), format!("fdatasync: {error}")))
            });
        }
        true
    }
}

/// The background operations of a [`UringStorage`]: syncs, and chains of directory
/// changes ending in the directory's sync.
#[derive(Default)]
struct Background {
    /// Tokens of the operations submitted and not yet completed.
    in_flight: Vec<u64>,
    /// Operations completed (seen while waiting for a flush, or reaped) and not yet handed
    /// out.
    done: Vec<(u64, io::Result<()>)>,
    /// Operations of several entries, or holding what their entries point at.
    chains: Vec<BackgroundChain>,
}

/// A background operation of several entries, linked (`IOSQE_IO_LINK`) so that each runs
/// after the one before, reported once, when the last completes, with the first failure.
struct BackgroundChain {
    token: u64,
    /// Entries not yet completed.
    remaining: usize,
    first_error: Option<io::Error>,
    /// The file or directory the entries work in, open until the last completes, so its fd
    /// number cannot name another file while an entry may still wait in the submission
    /// queue.
    _file: File,
    /// The paths the entries point at, alive until the last completes.
    _paths: Vec<CString>,
}

impl Background {
    /// Keeps a background operation's completion for the next reap; false for a flush's
    /// entry.
    fn take(&mut self, cqe: &io_uring::cqueue::Entry) -> bool {
        if cqe.user_data() & BACKGROUND_BIT == 0 {
            return false;
        }
        let token = cqe.user_data() & !BACKGROUND_BIT;
        let result = background_result(cqe.result());
        let result = match self.chains.iter().position(|chain| chain.token == token) {
            None => result,
            Some(index) => {
                let chain = &mut self.chains[index];
                chain.remaining = chain.remaining.saturating_sub(1);
                if let Err(error) = result {
                    // Entries after a failed one complete cancelled: keep the real cause.
                    let cancelled = error.raw_os_error() == Some(libc::ECANCELED);
                    if chain.first_error.is_none() || !cancelled {
                        chain.first_error.get_or_insert(error);
                    }
                }
                if chain.remaining > 0 {
                    return true;
                }
                let chain = self.chains.swap_remove(index);
                chain.first_error.map_or(Ok(()), Err)
            }
        };
        if let Some(index) = self.in_flight.iter().position(|&t| t == token) {
            self.in_flight.swap_remove(index);
            self.done.push((token, result));
        }
        true
    }
}

impl UringStorage {
    /// Creates the storage and its io_uring, syncing per file.
    pub fn new() -> io::Result<UringStorage> {
        UringStorage::with_fsync_scope(FsyncScope::File)
    }

    /// Creates the storage with the given [`FsyncScope`]; `Filesystem` is refused on
    /// kernels whose `syncfs` does not report writeback errors.
    pub fn with_fsync_scope(fsync_scope: FsyncScope) -> io::Result<UringStorage> {
        if fsync_scope == FsyncScope::Filesystem {
            let release = kernel_release()?;
            if release < SYNCFS_ERRORS_KERNEL_MIN {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "fsync_scope Filesystem needs Linux {}.{} or later (syncfs error \
                         reporting); this kernel is {}.{}",
                        SYNCFS_ERRORS_KERNEL_MIN.0,
                        SYNCFS_ERRORS_KERNEL_MIN.1,
                        release.0,
                        release.1
                    ),
                ));
            }
        }
        let ring = IoUring::new(RING_ENTRIES)?;
        // `unlinkat` through the ring needs Linux 5.11; before, removals run on the calling
        // thread (a probe that fails counts as no support).
        let mut probe = io_uring::Probe::new();
        let ring_unlinks = ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(opcode::UnlinkAt::CODE);
        Ok(UringStorage {
            ring,
            files: Vec::new(),
            free_ids: Vec::new(),
            dir_lock: None,
            fsync_scope,
            background: Background::default(),
            ring_unlinks,
            synced_write: SyncedWrite::default(),
            broken: None,
            chunk_entries: Vec::with_capacity(RING_ENTRIES as usize),
            #[cfg(test)]
            injected_enters: std::collections::VecDeque::new(),
        })
    }

    /// Fails once the ring is broken.
    fn check_usable(&self) -> io::Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(reason) => Err(io::Error::other(format!(
                "io_uring unusable since an earlier failure ({reason})"
            ))),
        }
    }

    /// `io_uring_enter`: submits every queued entry and waits for `want` completions.
    /// Never once the ring is broken.
    fn enter(&mut self, want: usize) -> io::Result<usize> {
        self.check_usable()?;
        #[cfg(test)]
        match self.injected_enters.pop_front() {
            Some(InjectedEnter::Refuse(errno)) => return Err(io::Error::from_raw_os_error(errno)),
            Some(InjectedEnter::SubmitOnly) => return self.ring.submit(),
            // SAFETY: submits `entries` queued entries, no argument.
            Some(InjectedEnter::SubmitFirst(entries)) => unsafe {
                return self
                    .ring
                    .submitter()
                    .enter::<libc::sigset_t>(entries, 0, 0, None);
            },
            None => {}
        }
        self.ring.submit_and_wait(want)
    }

    /// Submits every queued entry without waiting, through `EINTR` and up to
    /// [`RING_BUSY_RETRIES_MAX`] refusals for want of resources, reaping what completed
    /// between tries. For entries that carry no buffer (a synced write's sync, background
    /// chains): on an error they stay queued, and go with a later submission.
    fn submit_queued(&mut self) -> io::Result<()> {
        let mut busy_retries = 0u32;
        loop {
            match self.enter(0) {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if is_busy(&error) && busy_retries < RING_BUSY_RETRIES_MAX => {
                    busy_retries += 1;
                    self.reap_others();
                    std::thread::sleep(RING_BUSY_PAUSE);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Takes the completions in of background operations and synced writes (the only
    /// entries outstanding outside `write_chunk`, but for a broken ring's flush entries).
    fn reap_others(&mut self) {
        for cqe in self.ring.completion() {
            let ours = self.background.take(&cqe) || self.synced_write.take(&cqe);
            debug_assert!(ours || self.broken.is_some(), "a flush entry outstanding");
        }
    }

    /// Breaks the ring (see [`UringStorage::write_chunk`]) and waits, without submitting
    /// anything, for `in_flight` flush entries the kernel took and has not completed.
    ///
    /// # Panics
    /// Aborts the process (panics in tests) if they have not completed within
    /// [`RING_BROKEN_DRAIN_MAX`].
    fn break_ring(&mut self, reason: String, mut in_flight: usize) {
        self.broken = Some(reason);
        let deadline = std::time::Instant::now() + RING_BROKEN_DRAIN_MAX;
        // Bounded by the deadline.
        while in_flight > 0 {
            for cqe in self.ring.completion() {
                if !(self.background.take(&cqe) || self.synced_write.take(&cqe)) {
                    in_flight = in_flight.saturating_sub(1);
                }
            }
            if in_flight == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let message = format!(
                    "coffer: {in_flight} io_uring entries still running {RING_BROKEN_DRAIN_MAX:?} \
                     after the ring broke ({}); aborting rather than hand their buffers back",
                    self.broken.as_deref().unwrap_or_default()
                );
                #[cfg(test)]
                panic!("{message}");
                #[cfg(not(test))]
                {
                    eprintln!("{message}");
                    std::process::abort();
                }
            }
            // SAFETY: submits nothing (`to_submit` 0) and passes no argument; it only moves
            // held-back completions into the queue. Its error is no reason to stop waiting.
            let _ = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
            };
            std::thread::sleep(RING_BUSY_PAUSE);
        }
    }

    fn file(&self, id: FileId) -> io::Result<&File> {
        self.files
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "file id is not open"))
    }

    /// Submits one chunk of ops and waits for all of its completions.
    fn write_chunk(&mut self, ops: &[WriteOp<'_>], results: &mut [io::Result<()>]) {
        debug_assert!(ops.len() <= WRITES_PER_SUBMIT_MAX && ops.len() == results.len());
        if let Err(error) = self.check_usable() {
            fail_all(results, &error);
            return;
        }
        // Entries of failed earlier submissions still queued (buffer-free): the kernel takes
        // them before this chunk's.
        let queued_before = self.ring.submission().len();
        let pushed = self.push_chunk(ops, results);
        let chunk = QueuedChunk {
            queued_before,
            pushed,
        };
        let mut reaped = 0usize;
        let mut busy_retries = 0u32;
        while reaped < pushed {
            match self.enter(1) {
                Ok(_) => {
                    busy_retries = 0;
                    self.check_split(chunk, results);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if is_busy(&error) && busy_retries < RING_BUSY_RETRIES_MAX => {
                    // Reap below, then submit and wait again.
                    busy_retries += 1;
                    std::thread::sleep(RING_BUSY_PAUSE);
                }
                Err(error) => {
                    // Nothing of this chunk may be called durable. Entries the kernel did not
                    // take stay queued pointing at the caller's buffers, and entries it took
                    // would complete under this chunk's indexes: the ring is never entered
                    // again (so a later flush can neither submit the first nor count the
                    // second as its own), and the caller fails every partition of the chunk
                    // closed (the shard's others fail at their next flush). The entries the
                    // kernel took are waited for before the buffers go back to the caller.
                    let in_flight = self.taken(chunk).saturating_sub(reaped);
                    self.break_ring(format!("io_uring_enter: {error}"), in_flight);
                    fail_all(results, &error);
                    return;
                }
            }
            reaped += self.reap_chunk(ops, results);
        }
    }

    /// Queues each op's write, linked (`IOSQE_IO_LINK`) to an `fdatasync` of its file where
    /// the op syncs, or the sync alone for an op with no bytes; returns the entries queued.
    /// Notes in `chunk_entries`, per entry, its op and whether it is a linked pair's sync.
    fn push_chunk(&mut self, ops: &[WriteOp<'_>], results: &mut [io::Result<()>]) -> usize {
        self.chunk_entries.clear();
        for (index, op) in ops.iter().enumerate() {
            let fd = match self.file(op.file) {
                Ok(file) => file.as_raw_fd(),
                Err(error) => {
                    results[index] = Err(error);
                    continue;
                }
            };
            if op.bytes.len() > WRITE_BYTES_MAX {
                results[index] = Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "write larger than 4 GiB",
                ));
                continue;
            }
            let user_data = (index as u64) << 1;
            let write = opcode::Write::new(types::Fd(fd), op.bytes.as_ptr(), op.bytes.len() as u32)
                .offset(op.position)
                .build()
                .user_data(user_data);
            let sync = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(user_data | 1);
            // With `FsyncScope::Filesystem` one syncfs covers the whole flush (`write_durable`).
            let sync_here = op.sync && self.fsync_scope != FsyncScope::Filesystem;
            let mut queue = self.ring.submission();
            // SAFETY: the buffers `op.bytes` point into outlive the chunk's call, which does
            // not return before every pushed entry has completed (`write_chunk`) unless it
            // marks the ring broken, after which nothing submits the entries still queued.
            let (push, entries): (_, &[(u16, bool)]) = unsafe {
                match (op.bytes.is_empty(), sync_here) {
                    (false, true) => (
                        queue.push_multiple(&[write.flags(squeue::Flags::IO_LINK), sync]),
                        &[(index as u16, false), (index as u16, true)],
                    ),
                    (false, false) => (queue.push(&write), &[(index as u16, false)]),
                    (true, true) => (queue.push(&sync), &[(index as u16, false)]),
                    (true, false) => (Ok(()), &[]),
                }
            };
            drop(queue);
            match push {
                // Within capacity: at most `RING_ENTRIES` entries fit in the queue.
                Ok(()) => self.chunk_entries.extend_from_slice(entries),
                Err(_) => results[index] = Err(io::Error::other("io_uring submission queue full")),
            }
        }
        self.chunk_entries.len()
    }

    /// How many of `chunk`'s entries the kernel has taken from the submission queue (FIFO,
    /// after the entries queued before the chunk).
    fn taken(&mut self, chunk: QueuedChunk) -> usize {
        (chunk.queued_before + chunk.pushed)
            .saturating_sub(self.ring.submission().len())
            .saturating_sub(chunk.queued_before)
    }

    /// Fails the op whose write the kernel took without its linked sync: a submission the
    /// kernel cuts short (it could not allocate a request) submits a link's head alone, and
    /// the sync then goes out unlinked in a later call, free to run before the write.
    fn check_split(&mut self, chunk: QueuedChunk, results: &mut [io::Result<()>]) {
        let taken = self.taken(chunk);
        if taken == 0 || taken >= chunk.pushed {
            return;
        }
        if let Some(&(op, true)) = self.chunk_entries.get(taken)
            && let Some(result @ Ok(())) = results.get_mut(op as usize)
        {
            *result = Err(io::Error::other(
                "io_uring submitted a write apart from its linked fdatasync",
            ));
        }
    }

    /// Takes the completions in, a flush entry's into its op's result (the first error of
    /// an op's pair stays); returns how many flush entries completed.
    fn reap_chunk(&mut self, ops: &[WriteOp<'_>], results: &mut [io::Result<()>]) -> usize {
        let mut reaped = 0;
        for cqe in self.ring.completion() {
            if self.background.take(&cqe) || self.synced_write.take(&cqe) {
                continue;
            }
            reaped += 1;
            let index = (cqe.user_data() >> 1) as usize;
            let is_sync = cqe.user_data() & 1 == 1;
            let Some(result) = results.get_mut(index) else {
                continue;
            };
            if result.is_err() {
                continue;
            }
            let code = cqe.result();
            if code < 0 {
                let error = io::Error::from_raw_os_error(-code);
                let what = if is_sync { "fdatasync" } else { "write" };
                *result = Err(io::Error::new(error.kind(), format!("{what}: {error}")));
            } else if !is_sync && code as usize != ops[index].bytes.len() {
                *result = Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {code} of {} bytes", ops[index].bytes.len()),
                ));
            }
        }
        reaped
    }
}

/// What an `io_uring_enter` does instead of submitting everything and waiting (tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
enum InjectedEnter {
    /// Fails with this errno, taking nothing.
    Refuse(i32),
    /// Submits everything queued, waits for nothing.
    SubmitOnly,
    /// Submits only the first this many entries, as a kernel short of requests does.
    SubmitFirst(u32),
}

/// Where a flush chunk's entries sit in the submission queue.
#[derive(Clone, Copy)]
struct QueuedChunk {
    /// Entries queued ahead of the chunk's.
    queued_before: usize,
    /// The chunk's entries.
    pushed: usize,
}

impl Drop for UringStorage {
    /// Closing the ring does not wait for its entries: a background operation or synced
    /// write still queued or running names its directory or file by descriptor number, so
    /// their descriptors are left open (leaked) rather than closed under them, where the
    /// number could come to name another file. Only a shard that stops with such an
    /// operation unfinished (a failed wait, a broken ring) leaves any.
    fn drop(&mut self) {
        // Operations already complete drop their descriptors as usual.
        self.reap_others();
        for chain in self.background.chains.drain(..) {
            std::mem::forget(chain);
        }
        std::mem::forget(self.synced_write.in_flight.take());
        for (_, file) in self.synced_write.orphans.drain(..) {
            std::mem::forget(file);
        }
    }
}

/// What [`sync_once`] makes durable.
#[derive(Clone, Copy)]
enum SyncKind {
    /// `fdatasync`: the data and the metadata needed to read it back (the length).
    Data,
    /// `fsync`: the data and all metadata.
    Full,
    /// `fsync` of a directory: its entries.
    Directory,
}

/// One `fdatasync` or `fsync` of `file`, never retried, not even after EINTR (which
/// `File::sync_data` and `File::sync_all` retry): the kernel may have consumed a writeback
/// error in the failed call, and a second call could then report success for lost data.
/// The error names the call.
fn sync_once(file: &File, kind: SyncKind) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: plain syscalls on an fd `file` keeps open for the call.
    let (code, what) = match kind {
        SyncKind::Data => (unsafe { libc::fdatasync(fd) }, "fdatasync"),
        SyncKind::Full => (unsafe { libc::fsync(fd) }, "fsync"),
        SyncKind::Directory => (unsafe { libc::fsync(fd) }, "directory fsync"),
    };
    if code == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    Err(io::Error::new(error.kind(), format!("{what}: {error}")))
}

impl UringStorage {
    /// One write and its `fdatasync` as plain syscalls on the calling thread: the journal's
    /// flush (or a one-partition flush without a journal). The ring would hand the sync to an io-wq worker (a sync cannot
    /// complete inline) and wake the shard when it is done: two context switches on the
    /// shard's own core for nothing, since the shard waits for this write either way. Side
    /// by side at 64 requests in flight the ack p99 was about 14 % lower this way
    /// (benchmarks.md, session 6).
    fn write_synced_here(&self, op: &WriteOp<'_>) -> io::Result<()> {
        let file = self.file(op.file)?;
        // `write_all_at` carries on after a short write or an interrupted write; any other
        // error ends it.
        if let Err(error) = file.write_all_at(op.bytes, op.position) {
            return Err(io::Error::new(error.kind(), format!("write: {error}")));
        }
        sync_once(file, SyncKind::Data)
    }

    /// `FsyncScope::Filesystem`: one `syncfs` after the flush's writes. Any error (the sync's
    /// own, or a writeback error anywhere on the filesystem since this file's last check)
    /// fails every op: none of them may be called durable.
    fn sync_filesystem(&mut self, ops: &[WriteOp<'_>], results: &mut [io::Result<()>]) {
        let written = ops
            .iter()
            .zip(results.iter())
            .find(|(_, result)| result.is_ok());
        let Some((op, _)) = written else {
            return;
        };
        let fd = match self.file(op.file) {
            Ok(file) => file.as_raw_fd(),
            Err(_) => return, // its result is already the error
        };
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::syncfs(fd) } == 0 {
            return;
        }
        let error = io::Error::last_os_error();
        for result in results.iter_mut().filter(|result| result.is_ok()) {
            *result = Err(io::Error::new(error.kind(), format!("syncfs: {error}")));
        }
    }
}

impl UringStorage {
    /// Fails when another background sync would pass [`super::BACKGROUND_SYNCS_MAX`], or
    /// when `token` collides with the bit that marks background completions.
    fn check_background_room(&self, token: u64) -> io::Result<()> {
        if self.background.in_flight.len() >= super::BACKGROUND_SYNCS_MAX
            || token & BACKGROUND_BIT != 0
        {
            return Err(io::Error::other("too many background syncs"));
        }
        Ok(())
    }

    /// Queues a background operation's entries, tagged with `token`, and submits them;
    /// `file` and `paths` (what the entries point at) are held until the last completes.
    fn submit_chain(
        &mut self,
        entries: Vec<squeue::Entry>,
        file: File,
        paths: Vec<CString>,
        token: u64,
    ) -> io::Result<()> {
        self.check_usable()?;
        let user_data = BACKGROUND_BIT | token;
        let entries: Vec<squeue::Entry> = entries
            .into_iter()
            .map(|e| e.user_data(user_data))
            .collect();
        // SAFETY: the entries carry no buffer; the fd and the paths they point at (CStrings,
        // whose heap buffers do not move when the vector holding them does) stay alive in
        // the chain until its last entry completes.
        unsafe { self.ring.submission().push_multiple(&entries) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.background.chains.push(BackgroundChain {
            token,
            remaining: entries.len(),
            first_error: None,
            _file: file,
            _paths: paths,
        });
        self.background.in_flight.push(token);
        // On an error the entries stay queued and go with the next submission; the caller
        // counts this operation as failed and ignores its completion.
        self.submit_queued()
    }
}

/// Fails every result of `results` still `Ok` with (a copy of) `error`.
fn fail_all(results: &mut [io::Result<()>], error: &io::Error) {
    for result in results.iter_mut().filter(|result| result.is_ok()) {
        *result = Err(io::Error::new(error.kind(), error.to_string()));
    }
}

/// Whether `io_uring_enter` refused for want of resources: `EAGAIN`, or `EBUSY` (the
/// completion queue overflowing), which the caller may retry after reaping completions.
fn is_busy(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
}

/// A background entry's completion code as a result (the raw OS error kept, so a
/// cancelled link is told apart).
fn background_result(code: i32) -> io::Result<()> {
    if code >= 0 {
        return Ok(());
    }
    Err(io::Error::from_raw_os_error(-code))
}

/// The running kernel's (major, minor) release.
fn kernel_release() -> io::Result<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release.trim().split(['.', '-']);
    let mut number = || parts.next().and_then(|part| part.parse::<u32>().ok());
    match (number(), number()) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err(io::Error::other(format!(
            "unreadable kernel release {release:?}"
        ))),
    }
}

impl Storage for UringStorage {
    fn lock_dir(&mut self, dir: &Path) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(".lock"))?;
        match file.try_lock() {
            Ok(()) => {
                self.dir_lock = Some(file);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "directory is locked by another engine",
            )),
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }

    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            // Non-UTF-8 names are never ours; skip them.
            if let Some(name) = name.to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn open(&mut self, path: &Path, mode: OpenMode) -> io::Result<FileId> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if mode == OpenMode::CreateNew {
            options.create_new(true);
        }
        let file = options.open(path)?;
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.files[id as usize] = Some(file);
                id
            }
            None => {
                self.files.push(Some(file));
                (self.files.len() - 1) as u32
            }
        };
        Ok(FileId(id))
    }

    fn file_len(&mut self, file: FileId) -> io::Result<u64> {
        Ok(self.file(file)?.metadata()?.len())
    }

    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = self.file(file)?;
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], position + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }

    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.file(file)?.set_len(len)
    }

    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        let file = self.file(file)?;
        let len_signed = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length over off_t"))?;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_signed) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // Filesystems without fallocate: a sparse extension reads as zeros too.
            if file.metadata()?.len() < len {
                file.set_len(len)?;
            }
            return Ok(());
        }
        Err(error)
    }

    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        self.file(file)?.write_all_at(bytes, position)
    }

    fn sync(&mut self, file: FileId) -> io::Result<()> {
        sync_once(self.file(file)?, SyncKind::Full)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        sync_once(&File::open(dir)?, SyncKind::Directory)
    }

    fn close(&mut self, file: FileId) {
        if let Some(slot) = self.files.get_mut(file.0 as usize)
            && slot.take().is_some()
        {
            self.free_ids.push(file.0);
        }
    }

    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn write_durable(&mut self, ops: &[WriteOp<'_>], results: &mut Vec<io::Result<()>>) {
        results.clear();
        if let Err(error) = self.check_usable() {
            let message = error.to_string();
            results.extend(ops.iter().map(|_| Err(io::Error::other(message.clone()))));
            return;
        }
        if let [op] = ops
            && op.sync
            && self.fsync_scope != FsyncScope::Filesystem
        {
            results.push(self.write_synced_here(op));
            return;
        }
        results.extend(ops.iter().map(|_| Ok(())));
        for (chunk, chunk_results) in ops
            .chunks(WRITES_PER_SUBMIT_MAX)
            .zip(results.chunks_mut(WRITES_PER_SUBMIT_MAX))
        {
            self.write_chunk(chunk, chunk_results);
        }
        if self.fsync_scope == FsyncScope::Filesystem {
            self.sync_filesystem(ops, results);
        }
    }

    fn start_synced_write(&mut self, op: &WriteOp<'_>) -> io::Result<()> {
        self.check_usable()?;
        if self.synced_write.in_flight.is_some() {
            return Err(io::Error::other("a synced write is already in flight"));
        }
        if self.synced_write.orphans.len() >= SYNCED_WRITE_ORPHANS_MAX {
            return Err(io::Error::other("io_uring has not run earlier syncs"));
        }
        let file = self.file(op.file)?;
        // The write is a plain `pwrite` here (a copy into the page cache the caller waits
        // for anyway); only the sync, which waits on the device, goes to the ring.
        if let Err(error) = file.write_all_at(op.bytes, op.position) {
            return Err(io::Error::new(error.kind(), format!("write: {error}")));
        }
        let file = file.try_clone()?;
        self.synced_write.sequence += 1;
        let sequence = self.synced_write.sequence;
        let user_data = SYNCED_WRITE_BIT | sequence;
        debug_assert!(user_data & BACKGROUND_BIT == 0);
        let sync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(user_data);
        // SAFETY: the entry carries no buffer, and its descriptor (`file`, a duplicate) stays
        // open until its completion is seen, as the one in flight or as an orphan.
        unsafe { self.ring.submission().push(&sync) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        if let Err(error) = self.submit_queued() {
            // The entry stays queued and runs with a later submission: not durable now.
            self.synced_write.orphans.push((sequence, file));
            return Err(error);
        }
        self.synced_write.in_flight = Some(file);
        self.synced_write.outcome = None;
        Ok(())
    }

    fn finish_synced_write(&mut self) -> io::Result<()> {
        if self.synced_write.in_flight.is_none() {
            return Err(io::Error::other("no synced write in flight"));
        }
        // Bounded: every turn either takes the outcome or waits for a completion, and the
        // sync's own completion comes (or the wait fails, or is refused too often).
        let mut busy_retries = 0u32;
        loop {
            self.reap_others();
            if let Some(outcome) = self.synced_write.outcome.take() {
                self.synced_write.in_flight = None;
                return outcome;
            }
            match self.enter(1) {
                Ok(_) => busy_retries = 0,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if is_busy(&error) && busy_retries < RING_BUSY_RETRIES_MAX => {
                    busy_retries += 1;
                    std::thread::sleep(RING_BUSY_PAUSE);
                }
                Err(error) => {
                    // The sync's outcome cannot be known: it must not count as durable. It
                    // may still run: its descriptor stays open until its completion.
                    if let Some(file) = self.synced_write.in_flight.take() {
                        let sequence = self.synced_write.sequence;
                        self.synced_write.orphans.push((sequence, file));
                    }
                    return Err(io::Error::new(
                        error.kind(),
                        format!("waiting for fdatasync: {error}"),
                    ));
                }
            }
        }
    }

    fn confine_workers_to_this_thread(&mut self) -> io::Result<()> {
        // SAFETY: an all-zero cpu_set_t is a valid empty set; sched_getaffinity fills it for
        // the calling thread (pid 0) and reports failure through its return value.
        let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `cpus` is a valid, writable cpu_set_t of `size` bytes.
        if unsafe { libc::sched_getaffinity(0, size, &mut cpus) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.ring.submitter().register_iowq_aff(&cpus)
    }

    fn start_background_sync(&mut self, file: FileId, token: u64) -> io::Result<()> {
        self.check_background_room(token)?;
        // A duplicate of the fd, held until the completion: the caller may close the file
        // at once (a compaction's copy), and if the submission fails the entry stays
        // queued, so the fd number must not name another file before it runs.
        let file = self.file(file)?.try_clone()?;
        let sync = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.submit_chain(vec![sync], file, Vec::new(), token)
    }

    fn start_background_dir_sync(&mut self, dir: &Path, token: u64) -> io::Result<()> {
        self.start_background_removals(dir, &[], token)
    }

    fn start_background_removals(
        &mut self,
        dir: &Path,
        files: &[&Path],
        token: u64,
    ) -> io::Result<()> {
        self.check_background_room(token)?;
        super::check_removals(files)?;
        let directory = File::open(dir)?;
        if !self.ring_unlinks {
            // An older kernel: removed here, in order; only the directory's sync goes to
            // the ring.
            for file in files {
                std::fs::remove_file(file)?;
            }
            let sync = opcode::Fsync::new(types::Fd(directory.as_raw_fd())).build();
            return self.submit_chain(vec![sync], directory, Vec::new(), token);
        }
        let paths = files
            .iter()
            .map(|path| {
                CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
            })
            .collect::<io::Result<Vec<CString>>>()?;
        let cwd = types::Fd(libc::AT_FDCWD);
        // Linked so that they run in order, the directory's sync last.
        let mut entries: Vec<squeue::Entry> = paths
            .iter()
            .map(|path| {
                opcode::UnlinkAt::new(cwd, path.as_ptr())
                    .build()
                    .flags(squeue::Flags::IO_LINK)
            })
            .collect();
        // A directory's fsync makes its entries durable: no DATASYNC, the entries are
        // metadata.
        entries.push(opcode::Fsync::new(types::Fd(directory.as_raw_fd())).build());
        self.submit_chain(entries, directory, paths, token)
    }

    fn reap_background_syncs(&mut self, wait: bool, done: &mut Vec<(u64, io::Result<()>)>) {
        let mut busy_retries = 0u32;
        loop {
            self.reap_others();
            if !wait || self.background.in_flight.is_empty() {
                break;
            }
            match self.enter(1) {
                Ok(_) => busy_retries = 0,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if is_busy(&error) && busy_retries < RING_BUSY_RETRIES_MAX => {
                    busy_retries += 1;
                    std::thread::sleep(RING_BUSY_PAUSE);
                }
                // The ring cannot wait: report every outstanding sync as failed, so no
                // caller counts on it.
                Err(error) => {
                    let message = format!("waiting for background syncs: {error}");
                    for token in self.background.in_flight.drain(..) {
                        let failed = Err(io::Error::other(message.clone()));
                        self.background.done.push((token, failed));
                    }
                }
            }
        }
        done.append(&mut self.background.done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_with(path: &Path) -> (UringStorage, FileId) {
        let mut storage = UringStorage::new().expect("an io_uring");
        let file = storage.open(path, OpenMode::Existing).expect("open");
        (storage, file)
    }

    fn op(file: FileId, position: u64, bytes: &[u8]) -> WriteOp<'_> {
        WriteOp {
            file,
            position,
            bytes,
            sync: true,
        }
    }

    #[test]
    fn a_lone_synced_write_and_a_submission_of_several_both_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        std::fs::write(&one, b"").expect("create");
        std::fs::write(&two, b"").expect("create");
        let mut storage = UringStorage::new().expect("an io_uring");
        let first = storage.open(&one, OpenMode::Existing).expect("open");
        let second = storage.open(&two, OpenMode::Existing).expect("open");
        let mut results = Vec::new();
        storage.write_durable(&[op(first, 3, b"lone")], &mut results);
        assert!(matches!(results.as_slice(), [Ok(())]), "{results:?}");
        let ops = [op(first, 0, b"abc"), op(second, 0, b"pair")];
        storage.write_durable(&ops, &mut results);
        assert!(
            matches!(results.as_slice(), [Ok(()), Ok(())]),
            "{results:?}"
        );
        assert_eq!(std::fs::read(&one).expect("read"), b"abclone");
        assert_eq!(std::fs::read(&two).expect("read"), b"pair");
    }

    #[test]
    fn a_synced_write_finishes_with_its_own_outcome_beside_background_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        std::fs::write(&path, b"").expect("create");
        let (mut storage, file) = storage_with(&path);
        assert!(storage.finish_synced_write().is_err(), "nothing in flight");
        let mut bytes = b"first".to_vec();
        storage
            .start_synced_write(&op(file, 0, &bytes))
            .expect("started");
        // The bytes are the caller's again at once; a second start is refused.
        bytes.copy_from_slice(b"XXXXX");
        assert!(storage.start_synced_write(&op(file, 5, &bytes)).is_err());
        storage
            .start_background_sync(file, 7)
            .expect("background sync");
        assert!(storage.finish_synced_write().is_ok());
        assert!(storage.finish_synced_write().is_err(), "finished once");
        let mut done = Vec::new();
        storage.reap_background_syncs(true, &mut done);
        assert!(matches!(done.as_slice(), [(7, Ok(()))]), "{done:?}");
        // The next one gets its own completion.
        storage
            .start_synced_write(&op(file, 5, b"second"))
            .expect("started");
        assert!(storage.finish_synced_write().is_ok());
        assert_eq!(std::fs::read(&path).expect("read"), b"firstsecond");
    }

    #[test]
    fn background_syncs_of_a_file_and_a_directory_are_reaped_by_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        std::fs::write(&path, b"").expect("create");
        let (mut storage, file) = storage_with(&path);
        storage.start_background_sync(file, 1).expect("file sync");
        storage
            .start_background_dir_sync(dir.path(), 2)
            .expect("directory sync");
        let mut done = Vec::new();
        storage.reap_background_syncs(true, &mut done);
        done.sort_by_key(|(token, _)| *token);
        assert!(
            matches!(done.as_slice(), [(1, Ok(())), (2, Ok(()))]),
            "{done:?}"
        );
        assert!(storage.background.chains.is_empty(), "directory fd kept");
        // A directory that does not exist is refused at the start, taking no slot.
        let missing = dir.path().join("missing");
        assert!(storage.start_background_dir_sync(&missing, 3).is_err());
        assert!(storage.background.in_flight.is_empty());
    }

    #[test]
    fn background_removals_are_all_tried_and_report_the_first_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        for name in ["old-1", "old-2", "kept"] {
            std::fs::write(path(name), name).expect("create");
        }
        let mut storage = UringStorage::new().expect("an io_uring");
        let (old_1, old_2) = (path("old-1"), path("old-2"));
        storage
            .start_background_removals(dir.path(), &[&old_1, &old_2], 5)
            .expect("started");
        let mut done = Vec::new();
        storage.reap_background_syncs(true, &mut done);
        assert!(matches!(done.as_slice(), [(5, Ok(()))]), "{done:?}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        assert_eq!(names, ["kept"]);

        // A removal that fails (the file is gone) is reported; the one after it is still
        // tried (or, where a kernel cancels the rest of the chain, reported cancelled).
        let kept = path("kept");
        storage
            .start_background_removals(dir.path(), &[&old_1, &kept], 6)
            .expect("started");
        done.clear();
        storage.reap_background_syncs(true, &mut done);
        let [(6, Err(error))] = done.as_slice() else {
            panic!("{done:?}");
        };
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
        assert!(storage.background.chains.is_empty());
    }

    #[test]
    fn a_failed_write_or_sync_is_reported_on_both_paths() {
        // /dev/full refuses every write with ENOSPC: a real I/O error from the kernel.
        let (mut storage, full) = storage_with(Path::new("/dev/full"));
        let mut results = Vec::new();
        storage.write_durable(&[op(full, 0, b"lost")], &mut results);
        let [Err(error)] = results.as_slice() else {
            panic!("a lone write to /dev/full succeeded: {results:?}");
        };
        assert!(error.to_string().starts_with("write: "), "{error}");
        let closed = FileId(full.0 + 10);
        storage.write_durable(&[op(full, 0, b"lost"), op(closed, 0, b"x")], &mut results);
        assert!(
            matches!(results.as_slice(), [Err(_), Err(_)]),
            "{results:?}"
        );
        // /dev/null takes the write and refuses the fdatasync (EINVAL): a failed sync is
        // reported on both paths, never taken for durability.
        let null = storage
            .open(Path::new("/dev/null"), OpenMode::Existing)
            .expect("open");
        storage.write_durable(&[op(null, 0, b"x")], &mut results);
        let [Err(error)] = results.as_slice() else {
            panic!("a lone fdatasync of /dev/null succeeded: {results:?}");
        };
        assert!(error.to_string().starts_with("fdatasync: "), "{error}");
        storage.write_durable(&[op(null, 0, b"x"), op(full, 0, b"y")], &mut results);
        assert!(
            matches!(results.as_slice(), [Err(_), Err(_)]),
            "{results:?}"
        );
        // The control path's sync (a roll's, a close's) reports it the same way.
        let error = storage
            .sync(null)
            .expect_err("an fsync of /dev/null succeeded");
        assert!(error.to_string().starts_with("fsync: "), "{error}");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        // A file id that is not open is an error, not a panic, on the lone path too.
        storage.write_durable(&[op(closed, 0, b"x")], &mut results);
        assert!(matches!(results.as_slice(), [Err(_)]), "{results:?}");
    }

    /// Two files under a fresh directory, open in a fresh storage.
    fn two_files() -> (tempfile::TempDir, UringStorage, [FileId; 2]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = UringStorage::new().expect("an io_uring");
        let files = ["one", "two"].map(|name| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"").expect("create");
            storage.open(&path, OpenMode::Existing).expect("open")
        });
        (dir, storage, files)
    }

    #[test]
    fn a_flush_refused_for_want_of_resources_is_tried_again() {
        let (dir, mut storage, [one, two]) = two_files();
        let refusals = [libc::EAGAIN, libc::EBUSY, libc::EINTR, libc::EAGAIN];
        storage
            .injected_enters
            .extend(refusals.map(InjectedEnter::Refuse));
        let mut results = Vec::new();
        storage.write_durable(&[op(one, 0, b"abc"), op(two, 0, b"de")], &mut results);
        assert!(
            matches!(results.as_slice(), [Ok(()), Ok(())]),
            "{results:?}"
        );
        assert!(storage.injected_enters.is_empty());
        assert!(storage.broken.is_none());
        assert_eq!(std::fs::read(dir.path().join("one")).expect("read"), b"abc");
        assert_eq!(std::fs::read(dir.path().join("two")).expect("read"), b"de");
    }

    #[test]
    fn a_flush_the_ring_refuses_breaks_the_ring_and_its_entries_never_run() {
        for refusals in [
            vec![InjectedEnter::Refuse(libc::EINVAL)],
            vec![InjectedEnter::Refuse(libc::EAGAIN); RING_BUSY_RETRIES_MAX as usize + 1],
        ] {
            let (dir, mut storage, [one, two]) = two_files();
            storage.injected_enters.extend(refusals);
            let mut results = Vec::new();
            storage.write_durable(&[op(one, 0, b"abc"), op(two, 0, b"de")], &mut results);
            assert!(
                matches!(results.as_slice(), [Err(_), Err(_)]),
                "{results:?}"
            );
            // Whatever comes next refuses, so the queued entries are never submitted.
            storage.write_durable(&[op(one, 0, b"x"), op(two, 0, b"y")], &mut results);
            assert!(
                results.iter().all(|r| r
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("io_uring unusable"))),
                "{results:?}"
            );
            storage.write_durable(&[op(one, 0, b"x")], &mut results);
            assert!(matches!(results.as_slice(), [Err(_)]), "{results:?}");
            storage
                .start_synced_write(&op(one, 0, b"x"))
                .expect_err("a synced write on a broken ring");
            storage
                .start_background_sync(one, 1)
                .expect_err("a background sync on a broken ring");
            let mut done = Vec::new();
            storage.reap_background_syncs(true, &mut done);
            assert!(done.is_empty(), "{done:?}");
            drop(storage);
            for name in ["one", "two"] {
                let bytes = std::fs::read(dir.path().join(name)).expect("read");
                assert!(bytes.is_empty(), "{name}: {bytes:?}");
            }
        }
    }

    /// A flush of "abc" to `one` and "de" to `two` whose first enter submits without
    /// waiting and whose wait after it is refused: both fail.
    fn flush_whose_wait_is_refused(storage: &mut UringStorage, [one, two]: [FileId; 2]) {
        storage.injected_enters.extend([
            InjectedEnter::SubmitOnly,
            InjectedEnter::Refuse(libc::EINVAL),
        ]);
        let mut results = Vec::new();
        storage.write_durable(&[op(one, 0, b"abc"), op(two, 0, b"de")], &mut results);
        assert!(
            matches!(results.as_slice(), [Err(_), Err(_)]),
            "{results:?}"
        );
    }

    #[test]
    fn a_flush_whose_wait_fails_waits_for_the_entries_the_kernel_took() {
        let (dir, mut storage, [one, two]) = two_files();
        flush_whose_wait_is_refused(&mut storage, [one, two]);
        assert!(storage.broken.is_some());
        // The entries the kernel took ran to completion before the call returned, their
        // completions taken: none comes in later.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(storage.ring.completion().count(), 0);
        assert_eq!(std::fs::read(dir.path().join("one")).expect("read"), b"abc");
        assert_eq!(std::fs::read(dir.path().join("two")).expect("read"), b"de");
    }

    #[test]
    fn a_flush_of_several_chunks_stops_at_the_chunk_that_breaks_the_ring() {
        let (dir, mut storage, [one, two]) = two_files();
        let bytes = [7u8; 4];
        let ops: Vec<WriteOp<'_>> = (0..WRITES_PER_SUBMIT_MAX as u64 + 1)
            .map(|i| WriteOp {
                file: if i % 2 == 0 { one } else { two },
                position: 4 * i,
                bytes: &bytes,
                sync: false,
            })
            .collect();
        storage
            .injected_enters
            .push_back(InjectedEnter::Refuse(libc::EINVAL));
        let mut results = Vec::new();
        storage.write_durable(&ops, &mut results);
        assert_eq!(results.len(), ops.len());
        let done = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(done, 0, "writes called done after the ring broke");
        drop(storage);
        for name in ["one", "two"] {
            let bytes = std::fs::read(dir.path().join(name)).expect("read");
            assert!(bytes.is_empty(), "{name}: {} bytes", bytes.len());
        }
    }

    #[test]
    fn a_broken_flush_waits_for_its_own_entries_not_for_those_queued_ahead_of_it() {
        let (dir, mut storage, [one, two]) = two_files();
        // A synced write whose sync the ring refuses: the sync stays queued, ahead of the
        // flush's entries, and runs with them.
        storage
            .injected_enters
            .push_back(InjectedEnter::Refuse(libc::EINVAL));
        storage
            .start_synced_write(&op(one, 8, b"journal"))
            .expect_err("its sync was refused");
        assert_eq!(storage.ring.submission().len(), 1);
        // Counting the queued sync as the flush's would wait for a completion that never
        // comes, and panic at the drain's deadline.
        flush_whose_wait_is_refused(&mut storage, [one, two]);
        assert_eq!(std::fs::read(dir.path().join("two")).expect("read"), b"de");
    }

    #[test]
    fn a_write_submitted_apart_from_its_linked_sync_is_not_called_durable() {
        let (dir, mut storage, [one, two]) = two_files();
        // The kernel takes the first op's write and stops before its linked sync: the sync
        // goes out alone in the next call, free to run before the write has landed.
        storage
            .injected_enters
            .push_back(InjectedEnter::SubmitFirst(1));
        let mut results = Vec::new();
        storage.write_durable(&[op(one, 0, b"abc"), op(two, 0, b"de")], &mut results);
        match results.as_slice() {
            [Err(error), Ok(())] => assert!(error.to_string().contains("apart"), "{error}"),
            other => panic!("{other:?}"),
        }
        // Both still ran; the ring is fine for the next flush.
        assert_eq!(std::fs::read(dir.path().join("one")).expect("read"), b"abc");
        storage.write_durable(&[op(one, 3, b"x"), op(two, 2, b"y")], &mut results);
        assert!(
            matches!(results.as_slice(), [Ok(()), Ok(())]),
            "{results:?}"
        );
    }
}
