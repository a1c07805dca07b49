//! [`SimStorage`]: a seeded, fault-injecting in-memory twin of the disk.
//!
//! A [`SimDisk`] holds files as two images: what reads see now (the page cache) and what
//! would survive a power cut (the durable image, updated by syncs). Faults come from a seeded
//! generator, so a failing test replays exactly from its seed:
//!
//! * write errors (`EIO`), which may leave a random prefix of the write in the page cache;
//! * sync errors (`EIO`), after which the unsynced bytes may or may not survive a crash —
//!   Linux marks the failed pages clean after a writeback error, so no later sync writes
//!   them (unless they are written again) and a later sync of the same file reports success:
//!   the engine must never retry and carry on, nor trust a sync that followed a failed one;
//! * background syncs ([`Storage::start_background_sync`]) in flight until the third reap
//!   after their start (or a waiting one), as a real one would be: the shard reaps once or
//!   twice per flush, so one stays in flight into the next flush. A failing one fails at its
//!   start, a succeeding one takes effect when reported;
//! * [`SimDisk::crash`]: every file reverts to its durable image plus a random subset of its
//!   unsynced 4 KiB pages (torn writes), files created since their directory's last sync
//!   vanish and files removed since then come back. Storages opened before the crash fail
//!   every later call, as a dead process would.
//!
//! Directories themselves are assumed durable once created.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FileId, OpenMode, Storage, WriteOp};

/// Reaps that pass a finished background sync over before one reports it.
const BACKGROUND_REAPS_PASSED_OVER: u8 = 2;

/// The page size used to tear unsynced writes at a crash.
const PAGE_BYTES: usize = 4096;

/// Probabilistic faults; `0` disables one.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimFaults {
    /// One write in this many fails with `EIO`.
    pub write_error_one_in: u32,
    /// One sync in this many fails with `EIO`.
    pub sync_error_one_in: u32,
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Bytes of `data` written since the last sync, when its length has not changed: a
    /// sync copies only these (a journal file is synced after every small write).
    dirty: Option<std::ops::Range<usize>>,
    /// Bytes a failed sync left unwritten. Linux marks such pages clean after a writeback
    /// error, so no later sync of the file writes them, and that later sync reports success
    /// (the error went to the failed call). Writing them again makes them dirty again.
    lost: Vec<std::ops::Range<usize>>,
    /// Whether the file's directory entry survives a crash.
    entry_durable: bool,
}

#[derive(Debug)]
struct DiskState {
    rng: u64,
    faults: SimFaults,
    fail_next_writes: u32,
    /// Writes to files of this extension that fail next, and how many.
    fail_next_writes_to: Option<(String, u32)>,
    fail_next_syncs: u32,
    /// File syncs of files of this extension that fail next, and how many.
    fail_next_syncs_to: Option<(String, u32)>,
    /// Background syncs that fail next.
    fail_next_background_syncs: u32,
    /// Background syncs of directories that fail next.
    fail_next_background_dir_syncs: u32,
    /// Background syncs of files of this extension that fail next, and how many.
    fail_next_background_syncs_to: Option<(String, u32)>,
    read_only: bool,
    /// How long each write stalls before it runs, like a disk that stopped answering.
    write_stall: std::time::Duration,
    /// Non-waiting reaps that pass a background sync over before it is reported.
    background_reaps_passed_over: u8,
    /// Whether creations, removals and renames are durable at once, as if the filesystem
    /// committed its journal right after each (which Linux filesystems may do whenever they
    /// like): a name the engine has not synced yet still survives a crash.
    names_durable_at_once: bool,
    /// Bumped by every crash; storages from an older generation are dead.
    generation: u64,
    files: BTreeMap<PathBuf, SimFile>,
    /// Files removed since their directory's last sync: a crash brings them back.
    removed: BTreeMap<PathBuf, SimFile>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeMap<PathBuf, u64>,
    next_lock_token: u64,
    syncs: u64,
    writes: u64,
    /// Mutating calls left before the disk crashes by itself (see [`SimDisk::crash_after_ops`]).
    ops_until_crash: Option<u64>,
}

impl DiskState {
    /// splitmix64: small, seedable, good enough for fault decisions.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn one_in(&mut self, n: u32) -> bool {
        n != 0 && self.next_random().is_multiple_of(u64::from(n))
    }

    fn write_fails(&mut self, path: &Path) -> bool {
        if takes_one_for(&mut self.fail_next_writes_to, path) {
            return true;
        }
        if self.fail_next_writes > 0 {
            self.fail_next_writes -= 1;
            return true;
        }
        let n = self.faults.write_error_one_in;
        self.one_in(n)
    }

    /// Makes `path`'s written data durable, unless an injected sync fault fails the call
    /// (`what` names it in the error).
    fn sync_file(&mut self, path: &Path, what: &str) -> io::Result<()> {
        if self.sync_fails(path) {
            return Err(self.fail_sync(path, what));
        }
        self.persist(path)
    }

    /// The successful part of a sync: `path`'s written bytes (less the lost ones) become its
    /// durable image.
    fn persist(&mut self, path: &Path) -> io::Result<()> {
        self.syncs += 1;
        let file = self.files.get_mut(path).ok_or_else(|| not_found(path))?;
        // What the lost bytes read as on disk: their old durable bytes, zeros past them.
        let kept: Vec<(std::ops::Range<usize>, Vec<u8>)> = file
            .lost
            .iter()
            .map(|range| {
                let mut bytes = vec![0u8; range.len()];
                let old_end = range.end.min(file.durable.len());
                if range.start < old_end {
                    bytes[..old_end - range.start]
                        .copy_from_slice(&file.durable[range.start..old_end]);
                }
                (range.clone(), bytes)
            })
            .collect();
        match file.dirty.take() {
            Some(range) if file.durable.len() == file.data.len() => {
                file.durable[range.clone()].copy_from_slice(&file.data[range]);
            }
            None if file.durable.len() == file.data.len() => {}
            _ => file.durable.clone_from(&file.data),
        }
        for (range, bytes) in kept {
            let end = range.end.min(file.durable.len());
            if range.start < end {
                file.durable[range.start..end].copy_from_slice(&bytes[..end - range.start]);
            }
        }
        Ok(())
    }

    /// The successful part of a directory sync: its entries (created, removed, renamed
    /// files) survive a crash.
    fn persist_dir(&mut self, dir: &Path) {
        self.syncs += 1;
        for (path, file) in self.files.iter_mut() {
            if path.parent() == Some(dir) {
                file.entry_durable = true;
            }
        }
        self.removed.retain(|path, _| path.parent() != Some(dir));
    }

    /// A sync of `path` that fails: its dirty bytes are lost (see `SimFile::lost`).
    fn fail_sync(&mut self, path: &Path, what: &str) -> io::Error {
        if let Some(file) = self.files.get_mut(path)
            && let Some(range) = file.dirty.take()
        {
            file.lost.push(range);
        }
        eio(what)
    }

    /// Whether an injected fault fails this sync of the file `path`.
    fn sync_fails(&mut self, path: &Path) -> bool {
        takes_one_for(&mut self.fail_next_syncs_to, path) || self.any_sync_fails()
    }

    /// Whether an injected fault fails this sync, of a file or a directory.
    fn any_sync_fails(&mut self) -> bool {
        if self.fail_next_syncs > 0 {
            self.fail_next_syncs -= 1;
            return true;
        }
        let n = self.faults.sync_error_one_in;
        self.one_in(n)
    }

    /// Counts one mutating call; crashes the disk (and fails the call) when the countdown set
    /// by [`SimDisk::crash_after_ops`] runs out.
    fn count_op(&mut self) -> io::Result<()> {
        match self.ops_until_crash {
            Some(0) => {
                self.ops_until_crash = None;
                self.crash();
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "simulated crash before this call",
                ))
            }
            Some(left) => {
                self.ops_until_crash = Some(left - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// A power cut: see the module docs.
    fn crash(&mut self) {
        self.generation += 1;
        self.locks.clear();
        let removed = std::mem::take(&mut self.removed);
        let files = std::mem::take(&mut self.files);
        for (path, file) in removed.into_iter().chain(files) {
            if !file.entry_durable {
                continue;
            }
            let image = self.crash_image(&file);
            self.files.insert(
                path,
                SimFile {
                    data: image.clone(),
                    durable: image,
                    dirty: None,
                    lost: Vec::new(),
                    entry_durable: true,
                },
            );
        }
    }

    /// What a file looks like after a power cut: its durable image plus a random subset of
    /// the pages that differ.
    fn crash_image(&mut self, file: &SimFile) -> Vec<u8> {
        let len = file.data.len().max(file.durable.len());
        let mut image = file.durable.clone();
        image.resize(len, 0);
        let mut kept_end = file.durable.len();
        for start in (0..file.data.len()).step_by(PAGE_BYTES) {
            let end = (start + PAGE_BYTES).min(file.data.len());
            let durable_page = file.durable.get(start..end.min(file.durable.len()));
            if durable_page == Some(&file.data[start..end]) {
                continue;
            }
            if self.next_random() & 1 == 1 {
                image[start..end].copy_from_slice(&file.data[start..end]);
                kept_end = kept_end.max(end);
            }
        }
        image.truncate(kept_end);
        image
    }
}

/// A simulated disk shared by the storages opened on it (one per engine incarnation).
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

impl SimDisk {
    /// An empty disk whose faults derive from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(DiskState {
                rng: seed,
                faults: SimFaults::default(),
                fail_next_writes: 0,
                fail_next_writes_to: None,
                fail_next_syncs: 0,
                fail_next_syncs_to: None,
                fail_next_background_syncs: 0,
                fail_next_background_dir_syncs: 0,
                fail_next_background_syncs_to: None,
                read_only: false,
                write_stall: std::time::Duration::ZERO,
                background_reaps_passed_over: BACKGROUND_REAPS_PASSED_OVER,
                names_durable_at_once: false,
                generation: 0,
                files: BTreeMap::new(),
                removed: BTreeMap::new(),
                dirs: BTreeSet::new(),
                locks: BTreeMap::new(),
                next_lock_token: 1,
                syncs: 0,
                writes: 0,
                ops_until_crash: None,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock (a failed test assertion elsewhere) must not hide
        // the disk from the rest of the test.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A storage over this disk, for one engine.
    pub fn storage(&self) -> SimStorage {
        SimStorage {
            generation: self.state().generation,
            disk: self.clone(),
            files: Vec::new(),
            lock: None,
            background: Vec::new(),
            synced_write: None,
        }
    }

    /// Sets the probabilistic faults.
    pub fn set_faults(&self, faults: SimFaults) {
        self.state().faults = faults;
    }

    /// Fails the next `n` writes.
    pub fn fail_next_writes(&self, n: u32) {
        self.state().fail_next_writes = n;
    }

    /// Fails the next `n` writes to files whose extension is `extension` (say `"log"`: the
    /// segments), whatever is written to other files meanwhile.
    pub fn fail_next_writes_to(&self, extension: &str, n: u32) {
        self.state().fail_next_writes_to = (n > 0).then(|| (extension.to_owned(), n));
    }

    /// Fails the next `n` syncs.
    pub fn fail_next_syncs(&self, n: u32) {
        self.state().fail_next_syncs = n;
    }

    /// Fails the next `n` background syncs ([`Storage::start_background_sync`]: a journal
    /// checkpoint's), whatever else is synced meanwhile.
    pub fn fail_next_background_syncs(&self, n: u32) {
        self.state().fail_next_background_syncs = n;
    }

    /// Fails the next `n` background syncs of files whose extension is `extension` (say
    /// `"log"`: a checkpoint's syncs of segments, not a compaction's of its copy).
    pub fn fail_next_background_syncs_to(&self, extension: &str, n: u32) {
        self.state().fail_next_background_syncs_to = Some((extension.to_owned(), n));
    }

    /// Makes the next `n` background syncs of directories fail with `EIO` (and nothing of
    /// them durable); other syncs are unaffected.
    pub fn fail_next_background_dir_syncs(&self, n: u32) {
        self.state().fail_next_background_dir_syncs = n;
    }

    /// Fails the next `n` syncs of files whose extension is `extension` (say `"log"`: the
    /// segments), whatever else is synced meanwhile.
    pub fn fail_next_syncs_to(&self, extension: &str, n: u32) {
        self.state().fail_next_syncs_to = (n > 0).then(|| (extension.to_owned(), n));
    }

    /// Makes every mutating call fail with `EROFS` (or stop doing so).
    pub fn set_read_only(&self, read_only: bool) {
        self.state().read_only = read_only;
    }

    /// Makes every later write stall this long first (zero: no stall).
    pub fn set_write_stall(&self, stall: std::time::Duration) {
        self.state().write_stall = stall;
    }

    /// Makes background syncs slow: each is passed over by `reaps` non-waiting reaps
    /// before it is reported (by default `BACKGROUND_REAPS_PASSED_OVER`, 2), so the shard
    /// flushes more while its checkpoint's syncs are in flight.
    pub fn set_background_sync_reaps(&self, reaps: u8) {
        self.state().background_reaps_passed_over = reaps;
    }

    /// Makes every later creation, removal and rename durable at once (see
    /// `DiskState::names_durable_at_once`): the engine must be right whether or not the
    /// filesystem makes a name durable before the engine syncs its directory.
    pub fn set_names_durable_at_once(&self, at_once: bool) {
        self.state().names_durable_at_once = at_once;
    }

    /// Simulates a power cut: see the module docs.
    pub fn crash(&self) {
        let mut state = self.state();
        state.ops_until_crash = None;
        state.crash();
    }

    /// Kills the process without a power cut: storages opened before fail every later call,
    /// and nothing is lost (the page cache, data and names, outlives the process).
    pub fn kill_process(&self) {
        let mut state = self.state();
        state.generation += 1;
        state.locks.clear();
    }

    /// Crashes so far (by [`SimDisk::crash`] or [`SimDisk::crash_after_ops`]).
    pub fn crashes(&self) -> u64 {
        self.state().generation
    }

    /// Crashes the disk by itself right before the `n`-th next mutating call (write, sync,
    /// directory sync, length change, creation, removal, rename), which fails: a process
    /// killed between any two of its storage operations. Later calls of storages opened
    /// before fail as after [`SimDisk::crash`].
    pub fn crash_after_ops(&self, n: u64) {
        self.state().ops_until_crash = Some(n);
    }

    /// Current (page cache) bytes of a file.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        self.state().files.get(path).map(|file| file.data.clone())
    }

    /// Replaces a file's bytes (creating it and its directories), durably: for tests that
    /// corrupt stored data on purpose.
    pub fn put_file_bytes(&self, path: &Path, bytes: &[u8]) {
        let mut state = self.state();
        if let Some(parent) = path.parent() {
            for ancestor in parent.ancestors() {
                state.dirs.insert(ancestor.to_path_buf());
            }
        }
        let file = state.files.entry(path.to_path_buf()).or_default();
        file.data = bytes.to_vec();
        file.durable = bytes.to_vec();
        file.entry_durable = true;
    }

    /// Paths of every file on the disk.
    pub fn file_paths(&self) -> Vec<PathBuf> {
        self.state().files.keys().cloned().collect()
    }

    /// Syncs (file and directory) performed so far.
    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }

    /// Writes performed so far.
    pub fn writes(&self) -> u64 {
        self.state().writes
    }
}

/// A background sync in flight in a [`SimStorage`].
#[derive(Debug)]
struct BackgroundSync {
    token: u64,
    path: PathBuf,
    /// Whether `path` is a directory (its entries become durable) rather than a file.
    directory: bool,
    /// Decided when started: a failure is reported to this sync, and its pages are lost
    /// from then on (a later sync of the file does not write them).
    failure: Option<io::Error>,
    /// Reaps that passed it over.
    passed_over: u8,
}

/// A [`Storage`] over a [`SimDisk`].
#[derive(Debug)]
pub struct SimStorage {
    disk: SimDisk,
    generation: u64,
    files: Vec<Option<PathBuf>>,
    lock: Option<(PathBuf, u64)>,
    /// Background syncs started and not yet reported.
    background: Vec<BackgroundSync>,
    /// The file of the synced write started and not yet finished.
    synced_write: Option<PathBuf>,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO on {what}"))
}

fn erofs() -> io::Error {
    io::Error::new(
        io::ErrorKind::ReadOnlyFilesystem,
        "simulated read-only disk",
    )
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl SimStorage {
    /// Files this storage holds open: a test's check that no path leaks a handle.
    pub fn open_files(&self) -> usize {
        self.files.iter().filter(|file| file.is_some()).count()
    }

    /// Locks the disk, failing if this storage's process "died" in a crash.
    fn live(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let state = self.disk.state();
        if state.generation != self.generation {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "storage belongs to a process that crashed",
            ));
        }
        Ok(state)
    }

    fn writable(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let mut state = self.live()?;
        if state.read_only {
            return Err(erofs());
        }
        state.count_op()?;
        Ok(state)
    }

    fn path(&self, file: FileId) -> io::Result<PathBuf> {
        self.files
            .get(file.0 as usize)
            .and_then(Clone::clone)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "file id is not open"))
    }

    /// Writes into the page cache only; a failed write may leave a prefix of it.
    fn write_cached(&self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(file)?;
        let mut state = self.writable()?;
        state.writes += 1;
        let fails = state.write_fails(&path);
        let keep = if fails {
            (state.next_random() % (bytes.len() as u64 + 1)) as usize
        } else {
            bytes.len()
        };
        let file = state.files.get_mut(&path).ok_or_else(|| not_found(&path))?;
        let start = position as usize;
        let end = start + keep;
        if file.data.len() < end {
            grow_zeroed(&mut file.data, end);
        }
        file.data[start..end].copy_from_slice(&bytes[..keep]);
        forget_lost(&mut file.lost, start..end);
        file.dirty = Some(match file.dirty.take() {
            Some(dirty) => dirty.start.min(start)..dirty.end.max(end),
            None => start..end,
        });
        if fails {
            return Err(eio("write"));
        }
        Ok(())
    }

    fn write_one(&self, op: &WriteOp<'_>) -> io::Result<()> {
        let path = self.path(op.file)?;
        if !op.bytes.is_empty() {
            self.write_cached(op.file, op.position, op.bytes)?;
        }
        if !op.sync {
            return Ok(());
        }
        self.live()?.sync_file(&path, "fdatasync")
    }
}

impl Drop for SimStorage {
    fn drop(&mut self) {
        if let Some((path, token)) = self.lock.take() {
            let mut state = self.disk.state();
            if state.locks.get(&path) == Some(&token) {
                state.locks.remove(&path);
            }
        }
    }
}

impl Storage for SimStorage {
    fn lock_dir(&mut self, dir: &Path) -> io::Result<()> {
        let mut state = self.writable()?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        if state.locks.contains_key(dir) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "directory is locked by another engine",
            ));
        }
        let token = state.next_lock_token;
        state.next_lock_token += 1;
        state.locks.insert(dir.to_path_buf(), token);
        drop(state);
        self.lock = Some((dir.to_path_buf(), token));
        Ok(())
    }

    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        if dir.ancestors().any(|a| state.files.contains_key(a)) {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is a file", dir.display()),
            ));
        }
        if state.dirs.contains(dir) {
            return Ok(());
        }
        if state.read_only {
            return Err(erofs());
        }
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.live()?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let children = state.files.keys().chain(state.dirs.iter());
        Ok(children
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&mut self, path: &Path, mode: OpenMode) -> io::Result<FileId> {
        {
            let mut state = self.live()?;
            let exists = state.files.contains_key(path);
            match mode {
                OpenMode::Existing if !exists => return Err(not_found(path)),
                OpenMode::CreateNew if exists => {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
                }
                OpenMode::CreateNew => {
                    if state.read_only {
                        return Err(erofs());
                    }
                    state.count_op()?;
                    let parent_exists = path.parent().is_some_and(|p| state.dirs.contains(p));
                    if !parent_exists {
                        return Err(not_found(path));
                    }
                    state.removed.remove(path);
                    let file = SimFile {
                        entry_durable: state.names_durable_at_once,
                        ..SimFile::default()
                    };
                    state.files.insert(path.to_path_buf(), file);
                }
                OpenMode::Existing => {}
            }
        }
        self.files.push(Some(path.to_path_buf()));
        Ok(FileId((self.files.len() - 1) as u32))
    }

    fn file_len(&mut self, file: FileId) -> io::Result<u64> {
        let path = self.path(file)?;
        let state = self.live()?;
        let file = state.files.get(&path).ok_or_else(|| not_found(&path))?;
        Ok(file.data.len() as u64)
    }

    fn read_at(&mut self, file: FileId, position: u64, buf: &mut [u8]) -> io::Result<usize> {
        let path = self.path(file)?;
        let state = self.live()?;
        let file = state.files.get(&path).ok_or_else(|| not_found(&path))?;
        let start = (position as usize).min(file.data.len());
        let end = (start + buf.len()).min(file.data.len());
        buf[..end - start].copy_from_slice(&file.data[start..end]);
        Ok(end - start)
    }

    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        let path = self.path(file)?;
        let mut state = self.writable()?;
        let file = state.files.get_mut(&path).ok_or_else(|| not_found(&path))?;
        if file.data.len() < len as usize {
            grow_zeroed(&mut file.data, len as usize);
        } else {
            file.data.truncate(len as usize);
            forget_lost(&mut file.lost, len as usize..usize::MAX);
        }
        // A length change is copied whole by the next sync.
        file.dirty = Some(0..file.data.len());
        Ok(())
    }

    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        let path = self.path(file)?;
        let mut state = self.writable()?;
        let file = state.files.get_mut(&path).ok_or_else(|| not_found(&path))?;
        if (file.data.len() as u64) < len {
            grow_zeroed(&mut file.data, len as usize);
            file.dirty = Some(0..file.data.len());
        }
        Ok(())
    }

    fn write_at(&mut self, file: FileId, position: u64, bytes: &[u8]) -> io::Result<()> {
        self.write_cached(file, position, bytes)
    }

    fn sync(&mut self, file: FileId) -> io::Result<()> {
        let path = self.path(file)?;
        self.writable()?.sync_file(&path, "fsync")
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let mut state = self.writable()?;
        if state.any_sync_fails() {
            return Err(eio("directory fsync"));
        }
        state.persist_dir(dir);
        Ok(())
    }

    fn close(&mut self, file: FileId) {
        if let Some(slot) = self.files.get_mut(file.0 as usize) {
            *slot = None;
        }
    }

    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        let mut state = self.writable()?;
        let file = state.files.remove(path).ok_or_else(|| not_found(path))?;
        if file.entry_durable && !state.names_durable_at_once {
            state.removed.insert(path.to_path_buf(), file);
        }
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.writable()?;
        if !state.files.contains_key(from) {
            return Err(not_found(from));
        }
        if self.files.iter().flatten().any(|open| open == from) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the engine renames only closed files",
            ));
        }
        let file = state.files.remove(from).ok_or_else(|| not_found(from))?;
        let at_once = state.names_durable_at_once;
        // Until the directory is synced a crash may undo the rename: the old name comes
        // back (if it was durable) and the new one vanishes, as after a removal plus a
        // creation; a replaced target comes back too.
        if file.entry_durable && !at_once {
            state.removed.insert(from.to_path_buf(), file.clone());
        }
        if let Some(replaced) = state.files.remove(to)
            && replaced.entry_durable
            && !at_once
        {
            state.removed.insert(to.to_path_buf(), replaced);
        }
        state.files.insert(
            to.to_path_buf(),
            SimFile {
                entry_durable: at_once,
                ..file
            },
        );
        Ok(())
    }

    fn start_background_sync(&mut self, file: FileId, token: u64) -> io::Result<()> {
        if self.background.len() >= super::BACKGROUND_SYNCS_MAX {
            return Err(io::Error::other("too many background syncs"));
        }
        let path = self.path(file)?;
        let mut state = self.live()?;
        // A crash countdown counts background starts too (see `crash_after_ops`).
        state.count_op()?;
        let fails = if takes_one_for(&mut state.fail_next_background_syncs_to, &path) {
            true
        } else if state.fail_next_background_syncs > 0 {
            state.fail_next_background_syncs -= 1;
            true
        } else {
            state.sync_fails(&path)
        };
        let failure = fails.then(|| state.fail_sync(&path, "fdatasync"));
        drop(state);
        self.background.push(BackgroundSync {
            token,
            path,
            directory: false,
            failure,
            passed_over: 0,
        });
        Ok(())
    }

    fn start_background_removals(
        &mut self,
        dir: &Path,
        files: &[&Path],
        token: u64,
    ) -> io::Result<()> {
        super::check_removals(files)?;
        if self.background.len() >= super::BACKGROUND_SYNCS_MAX {
            return Err(io::Error::other("too many background syncs"));
        }
        // Removed at once (a real ring removes them soon, in order); the directory's sync
        // and the outcome follow like a background directory sync's. Every removal is tried;
        // the first failure is the outcome.
        let mut first_error = None;
        for file in files {
            if let Err(error) = self.remove_file(file) {
                first_error.get_or_insert(error);
            }
        }
        self.start_background_dir_sync(dir, token)?;
        if let (Some(error), Some(sync)) = (first_error, self.background.last_mut()) {
            sync.failure = Some(error);
        }
        Ok(())
    }

    fn start_background_dir_sync(&mut self, dir: &Path, token: u64) -> io::Result<()> {
        if self.background.len() >= super::BACKGROUND_SYNCS_MAX {
            return Err(io::Error::other("too many background syncs"));
        }
        let mut state = self.live()?;
        state.count_op()?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let fails = if state.fail_next_background_dir_syncs > 0 {
            state.fail_next_background_dir_syncs -= 1;
            true
        } else if state.fail_next_background_syncs > 0 {
            state.fail_next_background_syncs -= 1;
            true
        } else {
            state.any_sync_fails()
        };
        drop(state);
        self.background.push(BackgroundSync {
            token,
            path: dir.to_path_buf(),
            directory: true,
            failure: fails.then(|| eio("directory fsync")),
            passed_over: 0,
        });
        Ok(())
    }

    /// A background sync is reported by the third reap after its start, or by a waiting
    /// one: until then it is in flight, and the shard goes on with other work (the rest of
    /// its flush and the next one's placing), as it does while a real one runs. A failing
    /// one fails at its start (so another sync of the file meanwhile succeeds without the
    /// lost pages, as on Linux); a succeeding one makes the file durable only when reported,
    /// so a crash before that loses it, as it may lose a real one in flight.
    fn reap_background_syncs(&mut self, wait: bool, done: &mut Vec<(u64, io::Result<()>)>) {
        let passed_over_max = self
            .live()
            .map_or(0, |state| state.background_reaps_passed_over);
        for mut sync in std::mem::take(&mut self.background) {
            if !wait && sync.passed_over < passed_over_max {
                sync.passed_over += 1;
                self.background.push(sync);
                continue;
            }
            let result = match sync.failure {
                Some(error) => Err(error),
                None if sync.directory => {
                    self.live().map(|mut state| state.persist_dir(&sync.path))
                }
                None => self.live().and_then(|mut state| state.persist(&sync.path)),
            };
            done.push((sync.token, result));
        }
    }

    fn write_durable(&mut self, ops: &[WriteOp<'_>], results: &mut Vec<io::Result<()>>) {
        results.clear();
        // The ops of one submission run in parallel on a real disk: one stall for them all.
        let stall = self
            .live()
            .map_or(std::time::Duration::ZERO, |state| state.write_stall);
        if !stall.is_zero() {
            // Outside the disk's lock: other storages (and the test) carry on meanwhile.
            std::thread::sleep(stall);
        }
        for op in ops {
            results.push(self.write_one(op));
        }
    }

    fn start_synced_write(&mut self, op: &WriteOp<'_>) -> io::Result<()> {
        if self.synced_write.is_some() {
            return Err(io::Error::other("a synced write is already in flight"));
        }
        let stall = self
            .live()
            .map_or(std::time::Duration::ZERO, |state| state.write_stall);
        if !stall.is_zero() {
            std::thread::sleep(stall);
        }
        // Written now, synced at the finish: a crash between the two may lose the write, as
        // on a real disk while its sync runs.
        let path = self.path(op.file)?;
        self.write_cached(op.file, op.position, op.bytes)?;
        self.synced_write = Some(path);
        Ok(())
    }

    fn finish_synced_write(&mut self) -> io::Result<()> {
        let Some(path) = self.synced_write.take() else {
            return Err(io::Error::other("no synced write in flight"));
        };
        self.live()?.sync_file(&path, "fdatasync")
    }
}

/// Whether `path` has the extension of a per-extension fault countdown (say
/// `fail_next_writes_to`); if so, counts one off it (clearing it at zero).
fn takes_one_for(countdown: &mut Option<(String, u32)>, path: &Path) -> bool {
    let Some((extension, left)) = countdown else {
        return false;
    };
    if path.extension().is_none_or(|e| e != extension.as_str()) {
        return false;
    }
    *left -= 1;
    if *left == 0 {
        *countdown = None;
    }
    true
}

/// Takes `written` out of the lost ranges: those bytes are dirty again.
fn forget_lost(lost: &mut Vec<std::ops::Range<usize>>, written: std::ops::Range<usize>) {
    let mut kept = Vec::with_capacity(lost.len());
    for range in lost.drain(..) {
        if range.end <= written.start || range.start >= written.end {
            kept.push(range);
            continue;
        }
        if range.start < written.start {
            kept.push(range.start..written.start);
        }
        if written.end < range.end {
            kept.push(written.end..range.end);
        }
    }
    *lost = kept;
}

/// Zero-extends `data` to `len` bytes with one zeroed allocation and one copy (fast even
/// in unoptimized test builds, where `resize` fills byte by byte).
fn grow_zeroed(data: &mut Vec<u8>, len: usize) {
    let mut grown = vec![0u8; len];
    grown[..data.len()].copy_from_slice(data);
    *data = grown;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (SimDisk, SimStorage, FileId, PathBuf) {
        let disk = SimDisk::new(7);
        let mut storage = disk.storage();
        storage.create_dir_all(Path::new("/d")).unwrap();
        let path = PathBuf::from("/d/f");
        let file = storage.open(&path, OpenMode::CreateNew).unwrap();
        storage.sync_dir(Path::new("/d")).unwrap();
        (disk, storage, file, path)
    }

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_files_vanish() {
        let (disk, mut storage, file, path) = setup();
        let mut results = Vec::new();
        storage.write_durable(
            &[WriteOp {
                file,
                position: 0,
                bytes: b"hello",
                sync: true,
            }],
            &mut results,
        );
        assert!(results[0].is_ok());
        storage
            .open(Path::new("/d/unsynced"), OpenMode::CreateNew)
            .unwrap();
        disk.crash();
        assert_eq!(disk.file_bytes(&path).unwrap(), b"hello");
        assert!(disk.file_bytes(Path::new("/d/unsynced")).is_none());
        // The storage of the crashed process is dead.
        assert!(storage.file_len(file).is_err());
    }

    fn durable_bytes(disk: &SimDisk, path: &Path) -> Vec<u8> {
        disk.state().files[path].durable.clone()
    }

    #[test]
    fn a_sync_after_a_failed_one_succeeds_without_the_lost_bytes_until_they_are_rewritten() {
        let (disk, mut storage, file, path) = setup();
        storage.write_at(file, 0, b"aaaa").unwrap();
        storage.sync(file).unwrap();
        storage.write_at(file, 4, b"bbbb").unwrap();
        disk.fail_next_syncs(1);
        assert!(storage.sync(file).is_err());
        // The error went to the failed call: the next sync reports success, yet the pages
        // it left are not written (Linux marked them clean).
        storage.write_at(file, 0, b"AA").unwrap();
        storage.sync(file).unwrap();
        assert_eq!(durable_bytes(&disk, &path), b"AAaa\0\0\0\0");
        assert_eq!(disk.file_bytes(&path).unwrap(), b"AAaabbbb");
        // Written again, they are dirty again and the next sync writes them.
        storage.write_at(file, 5, b"B").unwrap();
        storage.sync(file).unwrap();
        assert_eq!(durable_bytes(&disk, &path), b"AAaa\0B\0\0");
    }

    #[test]
    fn a_background_sync_is_in_flight_until_the_third_reap_or_a_waiting_one() {
        let (disk, mut storage, file, path) = setup();
        let mut done = Vec::new();
        storage.write_at(file, 0, b"x").unwrap();
        storage.start_background_sync(file, 7).unwrap();
        storage.reap_background_syncs(false, &mut done);
        storage.reap_background_syncs(false, &mut done);
        assert!(done.is_empty(), "reported by the first or second reap");
        // In flight: not durable until reported.
        assert_eq!(durable_bytes(&disk, &path), b"");
        storage.reap_background_syncs(false, &mut done);
        assert!(matches!(done.as_slice(), [(7, Ok(()))]), "{done:?}");
        assert_eq!(durable_bytes(&disk, &path), b"x");
        done.clear();
        storage.start_background_sync(file, 8).unwrap();
        storage.reap_background_syncs(true, &mut done);
        assert!(matches!(done.as_slice(), [(8, Ok(()))]), "{done:?}");
        // One that fails fails at its start: a sync of the file meanwhile succeeds without
        // its pages.
        done.clear();
        storage.write_at(file, 1, b"y").unwrap();
        disk.fail_next_background_syncs(1);
        storage.start_background_sync(file, 9).unwrap();
        storage.sync(file).unwrap();
        assert_eq!(durable_bytes(&disk, &path), b"x\0");
        storage.reap_background_syncs(true, &mut done);
        assert!(matches!(done.as_slice(), [(9, Err(_))]), "{done:?}");
    }

    #[test]
    fn failed_sync_is_not_durable_and_is_reported() {
        let (disk, mut storage, file, path) = setup();
        disk.fail_next_syncs(1);
        let mut results = Vec::new();
        let bytes = vec![9u8; 3 * PAGE_BYTES];
        storage.write_durable(
            &[WriteOp {
                file,
                position: 0,
                bytes: &bytes,
                sync: true,
            }],
            &mut results,
        );
        assert!(results[0].is_err());
        // Reads still see the data, as the page cache would.
        assert_eq!(storage.file_len(file).unwrap(), bytes.len() as u64);
        disk.crash();
        let after = disk.file_bytes(&path).unwrap();
        // Whatever survived is a page-aligned subset of the write, never anything else.
        assert!(after.iter().all(|&b| b == 9 || b == 0));
        assert_eq!(after.len() % PAGE_BYTES, 0);
    }

    #[test]
    fn a_background_directory_sync_makes_names_durable_when_reported() {
        let dir = Path::new("/d");
        let created = PathBuf::from("/d/new");
        let mut done = Vec::new();
        // In flight (passed over by two reaps): a crash loses the name.
        let (disk, mut storage, _, _) = setup();
        storage.open(&created, OpenMode::CreateNew).unwrap();
        storage.start_background_dir_sync(dir, 3).unwrap();
        storage.reap_background_syncs(false, &mut done);
        storage.reap_background_syncs(false, &mut done);
        assert!(done.is_empty(), "{done:?}");
        disk.crash();
        assert!(disk.file_bytes(&created).is_none());

        // Reported: the name survives.
        let mut storage = disk.storage();
        storage.open(&created, OpenMode::CreateNew).unwrap();
        storage.start_background_dir_sync(dir, 4).unwrap();
        storage.reap_background_syncs(true, &mut done);
        assert!(matches!(done.as_slice(), [(4, Ok(()))]), "{done:?}");
        disk.crash();
        assert_eq!(disk.file_bytes(&created).unwrap(), b"");

        // Failed: nothing durable, and it says so.
        let mut storage = disk.storage();
        let lost = PathBuf::from("/d/lost");
        storage.open(&lost, OpenMode::CreateNew).unwrap();
        disk.fail_next_background_syncs(1);
        storage.start_background_dir_sync(dir, 5).unwrap();
        done.clear();
        storage.reap_background_syncs(true, &mut done);
        assert!(matches!(done.as_slice(), [(5, Err(_))]), "{done:?}");
        disk.crash();
        assert!(disk.file_bytes(&lost).is_none());
    }

    #[test]
    fn names_made_durable_at_once_survive_a_crash_without_a_directory_sync() {
        let (disk, mut storage, file, path) = setup();
        disk.set_names_durable_at_once(true);
        storage.close(file);
        let created = PathBuf::from("/d/created");
        storage.open(&created, OpenMode::CreateNew).unwrap();
        let renamed = PathBuf::from("/d/renamed");
        storage.rename(&path, &renamed).unwrap();
        disk.crash();
        assert_eq!(disk.file_bytes(&created).unwrap(), b"");
        assert!(disk.file_bytes(&renamed).is_some());
        assert!(disk.file_bytes(&path).is_none(), "the rename is not undone");
        let mut storage = disk.storage();
        storage.remove_file(&created).unwrap();
        disk.crash();
        assert!(
            disk.file_bytes(&created).is_none(),
            "the removal is not undone"
        );
    }

    #[test]
    fn renames_are_durable_only_after_a_directory_sync() {
        let (disk, mut storage, file, path) = setup();
        let mut results = Vec::new();
        storage.write_durable(
            &[WriteOp {
                file,
                position: 0,
                bytes: b"data",
                sync: true,
            }],
            &mut results,
        );
        storage.close(file);
        let renamed = PathBuf::from("/d/g");
        storage.rename(&path, &renamed).unwrap();
        assert!(disk.file_bytes(&path).is_none());
        disk.crash();
        // Undone: the old name is back with its data, the new one is gone.
        assert_eq!(disk.file_bytes(&path).unwrap(), b"data");
        assert!(disk.file_bytes(&renamed).is_none());

        let mut storage = disk.storage();
        storage.rename(&path, &renamed).unwrap();
        storage.sync_dir(Path::new("/d")).unwrap();
        disk.crash();
        assert!(disk.file_bytes(&path).is_none());
        assert_eq!(disk.file_bytes(&renamed).unwrap(), b"data");
    }

    #[test]
    fn locks_are_exclusive_and_released_on_drop() {
        let disk = SimDisk::new(1);
        let mut a = disk.storage();
        a.create_dir_all(Path::new("/d")).unwrap();
        a.lock_dir(Path::new("/d")).unwrap();
        let mut b = disk.storage();
        let error = b.lock_dir(Path::new("/d")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        b.lock_dir(Path::new("/d")).unwrap();
    }
}
