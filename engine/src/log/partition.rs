//! One offsets partition's log: recovery on open, append positions, segment rolls, close.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{BatchView, FormatError};
use crate::log::liveness::SegmentTable;
use crate::log::recovery::recover_segments;
use crate::log::segment::{
    ActiveSegment, SealedSegment, parse_segment_file_name, partition_dir, segment_file_name,
};
use crate::storage::{FileId, OpenMode, Storage};

/// Most staging capacity a partition keeps between segment writes.
const STAGED_BYTES_KEPT_MAX: usize = 256 * 1024;

/// Smallest active segment rolled for being dirty ([`LogSettings::dirty_roll_ratio`]): the
/// floor of the log's size per partition, and a bound on how often a partition rolls (a
/// roll makes blocking syncs). 4 MiB measured level with 16 MiB in throughput on the
/// loadgen storm, with a lower p99 and a third of the disk (benchmarks.md, session 6).
pub const DIRTY_ROLL_BYTES_MIN: u64 = 4 * 1024 * 1024;

/// The dirty-roll size per byte of the partition's live data. Compacting a rolled segment
/// rewrites at most the partition's live records, so rolling at this many times the live
/// bytes keeps the compactor's writes to an eighth of the commits' at most. At a roll size
/// of 4 MiB with 1.5 MiB live per partition the compactor cost 14–18 % of the commits'
/// throughput, against 3–7 % at 16 MiB (benchmarks.md, session 6).
pub const DIRTY_ROLL_LIVE_MULTIPLE: u64 = 8;

/// The most the live data can raise the dirty-roll size to; past it the sealed segments'
/// size takes over (see [`dirty_roll_bytes`]).
pub const DIRTY_ROLL_BYTES_SCALED_MAX: u64 = 16 * 1024 * 1024;

/// The size at which a dirty active segment rolls, for a partition with `live_bytes` of live
/// data and `sealed_bytes` in its sealed segments: [`DIRTY_ROLL_LIVE_MULTIPLE`] times the
/// live data, within [`DIRTY_ROLL_BYTES_MIN`]..=[`DIRTY_ROLL_BYTES_SCALED_MAX`], and never
/// less than the sealed segments hold (so a large live set keeps few, large segments).
pub fn dirty_roll_bytes(live_bytes: u64, sealed_bytes: u64) -> u64 {
    let scaled = live_bytes
        .saturating_mul(DIRTY_ROLL_LIVE_MULTIPLE)
        .clamp(DIRTY_ROLL_BYTES_MIN, DIRTY_ROLL_BYTES_SCALED_MAX);
    scaled.max(sealed_bytes)
}

/// With `log.preallocate`, how far past its data an active segment's file is reserved, in
/// steps as appends reach the end (never past `segment_bytes`). Not the whole segment at
/// once: Kafka's 100 MiB segments reserved up front held 5 GB of disk for an engine with 50
/// empty partitions, and every roll freed most of a 100 MiB reservation again.
pub const PREALLOCATE_STEP_BYTES: u64 = 4 * 1024 * 1024;

/// Name of a partition's spare segment file: a dropped segment a compaction kept to be the
/// next active segment (see [`PartitionLog::spare_wanted`]). Recovery and redo ignore it
/// (it is no segment name); an open adopts it.
pub const SPARE_SEGMENT_NAME: &str = "spare-segment";

/// Largest dropped segment kept as a spare: the spare is disk held for a roll to come
/// (counted in [`PartitionLog::size_bytes`]), so it is kept only where the dirty-roll floor
/// sets the segment size (small key sets, which roll often); larger segments roll seldom
/// and their removal is a smaller share of the work.
pub const SPARE_SEGMENT_BYTES_MAX: u64 = 2 * DIRTY_ROLL_BYTES_MIN;

/// Bytes per record the active segment's dead-record map is sized for up front
/// ([`DeadRecords::reserve`](crate::log::dead_records::DeadRecords::reserve)):
/// an offset commit record takes 60–80 bytes in a batch of a few (benchmarks.md,
/// "bytes/record"), so a segment of smaller records grows its map a time or two before it
/// fills. For a 100 MiB segment the room is 200 KiB, reserved, not touched, until records
/// die.
pub const ACTIVE_BYTES_PER_RECORD_EXPECTED: u64 = 64;

/// Settings a partition log needs from the engine config.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    /// `offsets.topic.segment.bytes`.
    pub segment_bytes: u64,
    /// `log.preallocate`: reserve the active segment's file ahead of its data
    /// ([`PREALLOCATE_STEP_BYTES`] at a time), so appends rarely change its length.
    pub preallocate: bool,
    /// With the compactor on, its `min.cleanable.dirty.ratio`: the active segment also
    /// rolls before `segment_bytes` once it holds at least [`dirty_roll_bytes`] (at least
    /// [`DIRTY_ROLL_BYTES_MIN`]), and at least this share of its records is dead.
    /// The compactor never touches the active segment, so without this a commit storm over
    /// few keys grows each partition to a full segment (100 MiB by default) of dead records
    /// that every open replays. `None`: roll at `segment_bytes` only.
    pub dirty_roll_ratio: Option<f64>,
    /// `FsyncScope::Journal`: the shard journal holds every append until a checkpoint
    /// syncs the segment, so a new segment's file is not synced on its own when created
    /// (only its directory entry is): no append waits on it, and the first checkpoint sync
    /// carries its length. Without the journal, appends are synced per flush, and a sync
    /// at creation keeps their `fdatasync`s to the data.
    pub journaled: bool,
}

impl LogSettings {
    /// Records the active segment's dead-record map has room for up front.
    fn active_records_expected(&self) -> u64 {
        self.segment_bytes / ACTIVE_BYTES_PER_RECORD_EXPECTED
    }

    /// The active segment's file length to reserve once its data reaches `end`: a step
    /// past it, within the segment's size.
    pub(super) fn reserve_for(&self, end: u64) -> u64 {
        let reserve = end
            .saturating_add(PREALLOCATE_STEP_BYTES)
            .min(self.segment_bytes);
        if self.preallocate {
            reserve.max(end)
        } else {
            0
        }
    }
}

/// A torn or corrupt tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub file: PathBuf,
    /// Where the valid data ended and the cut was made.
    pub position: u64,
    /// Non-zero bytes found after the cut (within the window a crash can tear).
    pub torn_bytes: u64,
    /// Why the first batch past the cut was rejected.
    pub reason: String,
}

/// What recovering one partition found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionRecovery {
    /// The offsets partition.
    pub partition: u32,
    /// Segment files replayed.
    pub segments: u32,
    /// Valid batches replayed.
    pub batches: u64,
    /// The tail cut off, if any.
    pub truncation: Option<Truncation>,
}

/// The segmented log of one offsets partition.
#[derive(Debug)]
pub struct PartitionLog {
    partition: u32,
    dir: PathBuf,
    settings: LogSettings,
    sealed: Vec<SealedSegment>,
    active: ActiveSegment,
    next_offset: i64,
    /// Live/dead record counts of `sealed` and `active`, in the same order.
    table: SegmentTable,
    /// Bytes of the active segment written to its file; the rest of its batches are in
    /// `staged` (`FsyncScope::Journal`: the journal holds them durably, and the segment
    /// gets them in larger writes).
    written: u64,
    /// Batches appended but not yet written to the file, from `written` on.
    staged: Vec<u8>,
    /// Length of the active segment's file: with `log.preallocate`, reserved past `len`.
    reserved: u64,
    /// Whether the newest segment's directory entry may not be durable (a journaled roll
    /// created it; see [`PartitionLog::dir_sync_owed`]). Only ever the newest's: a roll
    /// that finds it still owed syncs the directory first.
    dir_sync_owed: bool,
    /// Segments created by rolls so far (wrapping): tells a directory sync that finishes
    /// whether a roll created another segment after it started.
    segments_created: u32,
    /// `segments_created` when the directory sync in flight started.
    dir_sync_covers: Option<u32>,
    /// The length of the spare segment file, if there is one ([`SPARE_SEGMENT_NAME`]).
    spare_len: Option<u64>,
}

/// Called by recovery with every valid batch, its byte position, and the segment table to
/// charge dead records to (the batch's records are already counted in it).
pub type ReplayVisitor<'v> =
    dyn FnMut(&BatchView<'_>, u64, &mut SegmentTable) -> Result<(), FormatError> + 'v;

impl PartitionLog {
    /// Opens (creating if missing) and recovers the log of `partition` under `data_dir`,
    /// calling `visit` with every valid batch in offset order. First finishes or rolls back
    /// a compaction swap a crash interrupted (see [`swap`](crate::log::swap)). Cuts a torn
    /// tail of the active segment and syncs; fails on corruption anywhere else.
    pub fn open(
        storage: &mut dyn Storage,
        data_dir: &Path,
        partition: u32,
        settings: LogSettings,
        read_buf: &mut Vec<u8>,
        visit: &mut ReplayVisitor<'_>,
    ) -> Result<(PartitionLog, PartitionRecovery)> {
        let dir = partition_dir(data_dir, partition);
        let io = |what: &str, e| Error::io(format!("{what} {}", dir.display()), e);
        storage
            .create_dir_all(&dir)
            .map_err(|e| io("creating", e))?;
        crate::log::swap::recover(storage, &dir).map_err(|e| io("finishing a swap in", e))?;
        let names = storage.list_dir(&dir).map_err(|e| io("listing", e))?;
        let mut base_offsets: Vec<i64> = names
            .iter()
            .filter_map(|name| parse_segment_file_name(name))
            .collect();
        base_offsets.sort_unstable();
        let mut report = PartitionRecovery {
            partition,
            ..PartitionRecovery::default()
        };
        let Some((&active_base, sealed_bases)) = base_offsets.split_last() else {
            let log = Self::create(storage, dir, partition, settings)?;
            return Ok((log, report));
        };
        let recovered = recover_segments(
            storage,
            &dir,
            (sealed_bases, active_base),
            settings,
            read_buf,
            visit,
            &mut report,
        )?;
        let spare_len = find_spare(storage, &dir, settings);
        let spare_len = match spare_len {
            Ok(len) => len,
            Err(e) => {
                storage.close(recovered.active.file);
                return Err(io("reading the spare segment in", e));
            }
        };
        let mut table = recovered.table;
        table.reserve_active(settings.active_records_expected());
        let log = PartitionLog {
            partition,
            dir,
            settings,
            sealed: recovered.sealed,
            written: recovered.active.len,
            active: recovered.active,
            next_offset: recovered.next_offset,
            table,
            staged: Vec::new(),
            reserved: recovered.reserved,
            // Names found here may be in the page cache only (the process that rolled or
            // recycled a segment was killed before a checkpoint synced the directory): the
            // first checkpoint that covers this partition syncs it.
            dir_sync_owed: settings.journaled,
            segments_created: 0,
            dir_sync_covers: None,
            spare_len,
        };
        Ok((log, report))
    }

    /// A new, empty log with one segment at offset 0.
    fn create(
        storage: &mut dyn Storage,
        dir: PathBuf,
        partition: u32,
        settings: LogSettings,
    ) -> Result<PartitionLog> {
        let active =
            create_segment(storage, &dir, 0, settings, (SegmentFile::New, DirSync::Now))
                .map_err(|e| Error::io(format!("creating a segment in {}", dir.display()), e))?;
        let mut table = SegmentTable::default();
        table.push_segment(0);
        table.reserve_active(settings.active_records_expected());
        Ok(PartitionLog {
            partition,
            dir,
            settings,
            sealed: Vec::new(),
            active,
            next_offset: 0,
            table,
            written: 0,
            staged: Vec::new(),
            reserved: settings.reserve_for(0),
            dir_sync_owed: false,
            segments_created: 0,
            dir_sync_covers: None,
            spare_len: None,
        })
    }

    /// The offsets partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Offset the next appended record gets.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Segments in the log, sealed and active.
    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// Bytes the log holds on disk: its segments' batches and the spare segment, if any
    /// (reserved space past the active segment's data is not counted).
    pub fn size_bytes(&self) -> u64 {
        let spare = self.spare_len.unwrap_or(0);
        self.sealed.iter().map(|s| s.len).sum::<u64>() + self.active.len + spare
    }

    /// Estimated bytes of live records in the log (see [`liveness`](crate::log::liveness)).
    pub fn live_bytes_estimate(&self) -> u64 {
        let lens = self.sealed.iter().map(|s| s.len).chain([self.active.len]);
        lens.zip(self.table.segments())
            .map(|(len, stats)| stats.live_bytes_estimate(len))
            .sum()
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sealed segments, in offset order.
    pub fn sealed_segments(&self) -> &[SealedSegment] {
        &self.sealed
    }

    /// Offset the active segment's name carries.
    pub fn active_base_offset(&self) -> i64 {
        self.active.base_offset
    }

    /// The active segment's open file (for a journal checkpoint's sync).
    pub fn active_file(&self) -> FileId {
        self.active.file
    }

    /// Live/dead record counts per segment, sealed then active.
    pub fn table(&self) -> &SegmentTable {
        &self.table
    }

    /// The table, to charge dead records and tombstones to.
    pub fn table_mut(&mut self) -> &mut SegmentTable {
        &mut self.table
    }

    /// Replaces sealed segments `range` (whose files a compaction swap has already replaced
    /// on disk) by `segment` and its stats.
    pub fn replace_sealed(
        &mut self,
        range: std::ops::Range<usize>,
        segment: SealedSegment,
        stats: crate::log::liveness::SegmentStats,
    ) {
        assert!(range.start < range.end && range.end <= self.sealed.len());
        assert_eq!(segment.base_offset, self.sealed[range.start].base_offset);
        self.table.replace(range.clone(), stats);
        self.sealed.splice(range, [segment]);
        debug_assert_eq!(self.table.segments().len(), self.sealed.len() + 1);
    }

    /// Where a batch of `batch_bytes` goes, rolling to a new segment first if it would not fit.
    pub fn prepare_append(
        &mut self,
        storage: &mut dyn Storage,
        batch_bytes: usize,
    ) -> std::io::Result<(FileId, u64)> {
        if self.rolls_before(batch_bytes) {
            self.roll(storage)?;
        }
        let end = self.active.len + batch_bytes as u64;
        if self.settings.preallocate && end > self.reserved {
            // No sync: the segment's next sync (a flush's, a checkpoint's, a roll's) makes
            // the new length durable with the data.
            let reserve = self.settings.reserve_for(end);
            storage.allocate(self.active.file, reserve)?;
            self.reserved = reserve;
        }
        Ok((self.active.file, self.active.len))
    }

    /// Whether [`prepare_append`](Self::prepare_append) of `batch_bytes` rolls first (the
    /// batch would take the active segment past `segment_bytes`).
    pub fn rolls_before(&self, batch_bytes: usize) -> bool {
        self.active.len > 0 && self.active.len + batch_bytes as u64 > self.settings.segment_bytes
    }

    /// Adds a batch placed by [`prepare_append`](Self::prepare_append) to the bytes not yet
    /// written to the file.
    pub fn stage(&mut self, batch: &[u8]) {
        self.staged.extend_from_slice(batch);
    }

    /// The staged bytes' write: (file, position, bytes).
    pub fn staged_write(&self) -> (FileId, u64, &[u8]) {
        (self.active.file, self.written, &self.staged)
    }

    /// Records that the staged bytes were written (not synced).
    pub fn staged_written(&mut self) {
        self.written += self.staged.len() as u64;
        self.staged.clear();
        // A large batch grew the buffer: give the memory back rather than keep it per
        // partition (rare; a new allocation only after another large batch).
        if self.staged.capacity() > STAGED_BYTES_KEPT_MAX {
            self.staged.shrink_to(STAGED_BYTES_KEPT_MAX);
        }
    }

    /// Writes the staged bytes (before a sync of the active segment: a checkpoint, a roll,
    /// a close).
    pub fn write_staged(&mut self, storage: &mut dyn Storage) -> std::io::Result<()> {
        if !self.staged.is_empty() {
            storage.write_at(self.active.file, self.written, &self.staged)?;
            self.staged_written();
        }
        Ok(())
    }

    /// Records that a batch prepared with [`prepare_append`](Self::prepare_append) is
    /// durable.
    pub fn commit_append(&mut self, batch_bytes: usize, last_offset: i64) {
        debug_assert!(last_offset >= self.next_offset);
        self.table
            .add_records((last_offset + 1 - self.next_offset) as u64);
        self.active.len += batch_bytes as u64;
        self.next_offset = last_offset + 1;
    }

    /// Rolls the active segment if it is dirty enough for the compactor to want it (see
    /// [`LogSettings::dirty_roll_ratio`]); returns whether it rolled. The shard calls it
    /// after a flush's acks: the roll's syncs make no commit durable, so no commit waits
    /// for them (a roll in [`prepare_append`](Self::prepare_append) held the flush's acks
    /// for about 0.9 ms, benchmarks.md).
    pub fn roll_if_dirty(&mut self, storage: &mut dyn Storage) -> std::io::Result<bool> {
        if !self.wants_dirty_roll() {
            return Ok(false);
        }
        self.roll(storage)?;
        Ok(true)
    }

    /// Whether the active segment should roll early so the compactor can reach its dead
    /// records (see [`LogSettings::dirty_roll_ratio`]).
    pub fn wants_dirty_roll(&self) -> bool {
        let Some(ratio) = self.settings.dirty_roll_ratio else {
            return false;
        };
        if self.active.len < DIRTY_ROLL_BYTES_MIN {
            return false;
        }
        let Some(stats) = self.table.segments().last() else {
            return false;
        };
        let dirty = stats.records > 0 && stats.dead() as f64 >= ratio * stats.records as f64;
        let sealed_bytes = self.sealed.iter().map(|s| s.len).sum::<u64>();
        dirty && self.active.len >= dirty_roll_bytes(self.live_bytes_estimate(), sealed_bytes)
    }

    /// Seals the active segment (trimmed to its data, synced) and starts a new one. With
    /// the journal the new segment's directory entry is left to the next checkpoint (see
    /// [`dir_sync_owed`](Self::dir_sync_owed)).
    fn roll(&mut self, storage: &mut dyn Storage) -> std::io::Result<()> {
        self.write_staged(storage)?;
        debug_assert_eq!(self.written, self.active.len);
        if self.settings.preallocate {
            // Give back the reservation past the data (about 120 µs on the dev VM). Without
            // preallocation the file already ends at its last batch.
            storage.set_len(self.active.file, self.active.len)?;
        }
        debug_assert!(
            storage
                .file_len(self.active.file)
                .is_ok_and(|len| len == self.active.len),
            "a sealed segment ends at its last batch"
        );
        storage.sync(self.active.file)?;
        if self.dir_sync_owed {
            // Rolled twice since a checkpoint last synced the directory: make the segment
            // being sealed durable by name now, so that a crash can lose only the newest
            // segment's name. Redo recreates segments newer than the newest on disk; an
            // older one missing could also be one compacted away, whose stale entries must
            // not be written back.
            storage.sync_dir(&self.dir)?;
            self.dir_sync_owed = false;
        }
        let dir_sync = if self.settings.journaled {
            DirSync::Owed
        } else {
            DirSync::Now
        };
        let (source, reserved) = match self.spare_len.take() {
            Some(len) => (SegmentFile::Spare, len),
            None => (SegmentFile::New, self.settings.reserve_for(0)),
        };
        let (dir, base_offset) = (&self.dir, self.next_offset);
        let next = create_segment(storage, dir, base_offset, self.settings, (source, dir_sync))?;
        self.dir_sync_owed = dir_sync == DirSync::Owed;
        self.segments_created = self.segments_created.wrapping_add(1);
        self.reserved = reserved;
        let old = std::mem::replace(&mut self.active, next);
        storage.close(old.file);
        self.table.push_segment(self.next_offset);
        self.table
            .reserve_active(self.settings.active_records_expected());
        self.written = 0;
        self.sealed.push(SealedSegment {
            base_offset: old.base_offset,
            path: old.path,
            len: old.len,
            sealed_at: Some(std::time::Instant::now()),
        });
        Ok(())
    }

    /// Writes what is staged, trims the active segment's preallocated space, syncs and
    /// closes it, and syncs the directory if a roll left its entry to a checkpoint.
    pub fn close(mut self, storage: &mut dyn Storage) -> std::io::Result<()> {
        let result = self
            .write_staged(storage)
            .and_then(|()| storage.set_len(self.active.file, self.active.len))
            .and_then(|()| storage.sync(self.active.file));
        storage.close(self.active.file);
        result?;
        if self.dir_sync_owed {
            storage.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Whether a compaction should keep one of the segments it drops as this partition's
    /// spare ([`SPARE_SEGMENT_NAME`], renamed, not removed) for the next roll to reuse: none
    /// is kept yet, and the active segment is preallocated (a recycled file holds the old
    /// segment's bytes past the new data, which recovery cuts as a torn tail, as it does
    /// preallocated zeros; without preallocation a sealed segment must end at its file's
    /// end untrimmed). Removing a dropped 4 MiB segment cost the shard's core 1.6 ms here
    /// (the filesystem frees its blocks), and creating and preallocating the next one
    /// about 60 µs more; reusing the file costs a rename each way (benchmarks.md, session
    /// 10).
    pub fn spare_wanted(&self) -> bool {
        self.settings.preallocate && self.spare_len.is_none()
    }

    /// Whether a dropped segment of `len` bytes may become the spare: at most
    /// [`SPARE_SEGMENT_BYTES_MAX`].
    pub fn spare_fits(len: u64) -> bool {
        len > 0 && len <= SPARE_SEGMENT_BYTES_MAX
    }

    /// The spare segment file's path.
    pub fn spare_path(&self) -> PathBuf {
        self.dir.join(SPARE_SEGMENT_NAME)
    }

    /// Records that a compaction renamed a dropped segment of `len` bytes to
    /// [`spare_path`](Self::spare_path) and that the rename is durable.
    pub fn adopt_spare(&mut self, len: u64) {
        debug_assert!(self.spare_wanted());
        self.spare_len = Some(len);
    }

    /// Whether a roll created a segment whose directory entry may not be durable (the
    /// newest; no directory sync in flight for it). With the journal a roll does not sync
    /// the directory (about 270 µs of a roll's 700 on the dev VM, benchmarks.md): the
    /// segment's name must only be durable before the journal file holding its first entry
    /// is retired, because until then redo recreates a missing newest segment from its
    /// entries (`journal::redo`). So each checkpoint syncs the directory of every
    /// partition it covers that owes one, and a close syncs it too.
    pub fn dir_sync_owed(&self) -> bool {
        self.dir_sync_owed && self.dir_sync_covers.is_none()
    }

    /// Records that a background directory sync started.
    pub fn dir_sync_started(&mut self) {
        self.dir_sync_covers = Some(self.segments_created);
    }

    /// Records the outcome of the directory sync started last: a success makes the names
    /// durable unless a roll created another segment meanwhile (a failure fails the
    /// partition closed, and the log is abandoned).
    pub fn dir_sync_finished(&mut self, succeeded: bool) {
        if let Some(covers) = self.dir_sync_covers.take()
            && succeeded
            && covers == self.segments_created
        {
            self.dir_sync_owed = false;
        }
    }

    /// Closes the active segment's file without touching it (after a failure).
    pub fn abandon(self, storage: &mut dyn Storage) {
        storage.close(self.active.file);
    }
}

/// When a new segment's directory entry is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirSync {
    /// At creation.
    Now,
    /// By the next checkpoint or close ([`PartitionLog::dir_sync_owed`]).
    Owed,
}

/// The length of the partition's spare segment file, if one exists and can be reused (with
/// preallocation); without preallocation a leftover spare is removed.
fn find_spare(
    storage: &mut dyn Storage,
    dir: &Path,
    settings: LogSettings,
) -> std::io::Result<Option<u64>> {
    let path = dir.join(SPARE_SEGMENT_NAME);
    let file = match storage.open(&path, OpenMode::Existing) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let len = storage.file_len(file);
    storage.close(file);
    if settings.preallocate {
        return len.map(Some);
    }
    storage.remove_file(&path)?;
    Ok(None)
}

/// Where a new active segment's file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentFile {
    /// A new, empty file (preallocated with `log.preallocate`).
    New,
    /// The partition's spare ([`SPARE_SEGMENT_NAME`]), renamed to the segment's name. Its
    /// old bytes stay until appends overwrite them: what lies past the new data is a tail
    /// of batches with lower offsets, which recovery cuts as torn (a valid batch after a bad
    /// one counts as good data only with higher offsets than any before it).
    Spare,
}

fn create_segment(
    storage: &mut dyn Storage,
    dir: &Path,
    base_offset: i64,
    settings: LogSettings,
    (source, dir_sync): (SegmentFile, DirSync),
) -> std::io::Result<ActiveSegment> {
    let path = dir.join(segment_file_name(base_offset));
    let file = match source {
        SegmentFile::New => storage.open(&path, OpenMode::CreateNew)?,
        SegmentFile::Spare => {
            debug_assert!(settings.preallocate);
            storage.rename(&dir.join(SPARE_SEGMENT_NAME), &path)?;
            storage.open(&path, OpenMode::Existing)?
        }
    };
    let prepared = (|| {
        if source == SegmentFile::New && settings.preallocate {
            storage.allocate(file, settings.reserve_for(0))?;
        }
        if source == SegmentFile::New && !settings.journaled {
            storage.sync(file)?;
        }
        match dir_sync {
            DirSync::Now => storage.sync_dir(dir),
            DirSync::Owed => Ok(()),
        }
    })();
    if let Err(error) = prepared {
        // The partition fails closed; the file is left for the next open (it reads as an
        // active segment with nothing, or only a torn tail, in it), its handle is not.
        storage.close(file);
        return Err(error);
    }
    Ok(ActiveSegment {
        base_offset,
        path,
        file,
        len: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{SimDisk, SimStorage};

    const MIB: u64 = 1024 * 1024;

    /// A log whose active segment holds `DIRTY_ROLL_BYTES_MIN` in 64 KiB batches of 16
    /// records, all dead but the last batch's.
    fn dirty_log(disk: &SimDisk, journaled: bool) -> (PartitionLog, SimStorage) {
        const BATCH_BYTES: usize = 64 * 1024;
        const RECORDS: i64 = 16;
        let mut storage = disk.storage();
        let settings = LogSettings {
            segment_bytes: 64 * MIB,
            preallocate: true,
            dirty_roll_ratio: Some(0.5),
            journaled,
        };
        let mut visit = |_: &BatchView<'_>, _: u64, _: &mut SegmentTable| Ok(());
        let data_dir = Path::new("/d");
        let (mut log, _) = PartitionLog::open(
            &mut storage,
            data_dir,
            0,
            settings,
            &mut Vec::new(),
            &mut visit,
        )
        .unwrap();
        while log.active.len < DIRTY_ROLL_BYTES_MIN {
            log.prepare_append(&mut storage, BATCH_BYTES).unwrap();
            log.stage(&[0; BATCH_BYTES]);
            let first = log.next_offset();
            log.commit_append(BATCH_BYTES, first + RECORDS - 1);
            for offset in first - RECORDS..first {
                log.table_mut().mark_dead(offset);
            }
        }
        (log, storage)
    }

    #[test]
    fn a_dirty_segment_rolls_only_when_asked_and_a_journaled_roll_syncs_only_the_sealed_file() {
        for journaled in [true, false] {
            let disk = SimDisk::new(3);
            let (mut log, mut storage) = dirty_log(&disk, journaled);
            assert!(log.wants_dirty_roll());
            // An append places the batch in the dirty segment: the flush that carries it
            // does not roll (that is left to `roll_if_dirty`, after the flush's acks).
            log.prepare_append(&mut storage, 100).unwrap();
            assert_eq!(log.segment_count(), 1);
            let syncs = disk.syncs();
            assert!(log.roll_if_dirty(&mut storage).unwrap());
            assert_eq!(log.segment_count(), 2);
            assert!(!log.wants_dirty_roll());
            assert!(!log.roll_if_dirty(&mut storage).unwrap());
            // The sealed segment's sync; without the journal the new file's and the
            // directory's too (with it, the directory is left to the next checkpoint).
            let expected = if journaled { 1 } else { 3 };
            assert_eq!(disk.syncs() - syncs, expected, "journaled: {journaled}");
            assert_eq!(log.dir_sync_owed(), journaled);
        }
    }

    #[test]
    fn a_journaled_roll_leaves_at_most_the_newest_segments_name_to_a_checkpoint() {
        let disk = SimDisk::new(4);
        let (mut log, mut storage) = dirty_log(&disk, true);
        // Each roll seals one more batch (a roll names the new segment by the next offset).
        let syncs_of_roll = |log: &mut PartitionLog, storage: &mut SimStorage| {
            log.prepare_append(storage, 100).unwrap();
            log.stage(&[0; 100]);
            log.commit_append(100, log.next_offset());
            let before = disk.syncs();
            log.roll(storage).unwrap();
            disk.syncs() - before
        };
        // The first roll syncs the sealed segment only; the name of the new one is owed.
        assert_eq!(syncs_of_roll(&mut log, &mut storage), 1);
        assert!(log.dir_sync_owed());
        // Rolling again before a checkpoint synced the directory syncs it first.
        assert_eq!(syncs_of_roll(&mut log, &mut storage), 2);
        assert!(log.dir_sync_owed());
        // A directory sync that finishes before the next roll pays the name off.
        log.dir_sync_started();
        assert!(!log.dir_sync_owed(), "owed while its sync is in flight");
        log.dir_sync_finished(true);
        assert_eq!(syncs_of_roll(&mut log, &mut storage), 1);
        // One that a roll overtook does not: that roll synced the older names itself,
        // and the newest is owed again.
        log.dir_sync_started();
        assert_eq!(syncs_of_roll(&mut log, &mut storage), 2);
        log.dir_sync_finished(true);
        assert!(log.dir_sync_owed());
        // And a failed one pays nothing off.
        log.dir_sync_started();
        log.dir_sync_finished(false);
        assert!(log.dir_sync_owed());
        // A crash now loses only the newest segment's name.
        let newest = log.active_base_offset();
        let names = |disk: &SimDisk| -> Vec<i64> {
            let mut bases: Vec<i64> = disk
                .file_paths()
                .iter()
                .filter_map(|path| parse_segment_file_name(path.file_name()?.to_str()?))
                .collect();
            bases.sort_unstable();
            bases
        };
        let before_crash = names(&disk);
        disk.crash();
        let after_crash = names(&disk);
        assert_eq!(before_crash.last(), Some(&newest));
        assert_eq!(after_crash, before_crash[..before_crash.len() - 1]);
    }

    /// A valid batch of `records` records at `base_offset` (keys and values arbitrary).
    fn batch_at(base_offset: i64, records: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let params = crate::format::BatchParams {
            base_offset,
            ..crate::format::BatchParams::default()
        };
        let mut writer = crate::format::BatchWriter::begin(&mut out, params);
        for i in 0..records {
            writer.append(1_000, format!("key-{i}").as_bytes(), Some(b"value"));
        }
        writer.finish();
        out
    }

    /// Appends a valid batch of 10 records, writes and syncs it (no journal).
    fn append_synced(log: &mut PartitionLog, storage: &mut SimStorage) {
        let batch = batch_at(log.next_offset(), 10);
        log.prepare_append(storage, batch.len()).unwrap();
        log.stage(&batch);
        log.commit_append(batch.len(), log.next_offset() + 9);
        log.write_staged(storage).unwrap();
        storage.sync(log.active_file()).unwrap();
    }

    fn reopen(
        storage: &mut SimStorage,
        settings: LogSettings,
    ) -> (PartitionLog, PartitionRecovery) {
        let mut visit = |_: &BatchView<'_>, _: u64, _: &mut SegmentTable| Ok(());
        PartitionLog::open(
            storage,
            Path::new("/d"),
            0,
            settings,
            &mut Vec::new(),
            &mut visit,
        )
        .unwrap()
    }

    const RECYCLING: LogSettings = LogSettings {
        segment_bytes: 64 * MIB,
        preallocate: true,
        dirty_roll_ratio: None,
        journaled: false,
    };

    /// A log whose active segment is a recycled spare holding valid batches at offsets
    /// 0..200 (a dropped segment's), after a sealed segment of one batch whose records are
    /// dropped from the table as if compacted away.
    fn recycled_log(disk: &SimDisk) -> (PartitionLog, SimStorage) {
        disk.set_names_durable_at_once(true);
        let mut storage = disk.storage();
        let (mut log, _) = reopen(&mut storage, RECYCLING);
        for _ in 0..20 {
            append_synced(&mut log, &mut storage);
        }
        let old = log.active.path.clone();
        log.roll(&mut storage).unwrap();
        storage.rename(&old, &log.spare_path()).unwrap();
        let old_len = log.sealed[0].len;
        log.sealed.clear();
        log.table = SegmentTable::default();
        log.table.push_segment(log.active_base_offset());
        log.adopt_spare(old_len);
        assert!(!log.spare_wanted());
        // The next roll reuses it: nothing created, nothing preallocated, nothing written.
        append_synced(&mut log, &mut storage);
        let writes = disk.writes();
        log.roll(&mut storage).unwrap();
        assert!(log.spare_wanted());
        assert!(disk.file_bytes(&log.spare_path()).is_none());
        assert_eq!(
            disk.writes(),
            writes,
            "nothing written: its staged bytes were"
        );
        let recycled = disk.file_bytes(&log.active.path).unwrap();
        assert_eq!(recycled.len() as u64, old_len);
        (log, storage)
    }

    #[test]
    fn a_bad_batch_before_a_valid_one_fails_the_open_and_leaves_no_file_open() {
        let disk = SimDisk::new(8);
        let mut storage = disk.storage();
        let (mut log, _) = reopen(&mut storage, RECYCLING);
        for _ in 0..3 {
            append_synced(&mut log, &mut storage);
        }
        let path = log.active.path.clone();
        let second_batch = batch_at(0, 10).len();
        log.close(&mut storage).unwrap();
        drop(storage);
        // One byte of the second batch's records flipped: its CRC fails, and the third
        // batch after it is valid, so this is corruption, not a torn tail.
        let mut bytes = disk.file_bytes(&path).unwrap();
        bytes[second_batch + 70] ^= 0x01;
        disk.put_file_bytes(&path, &bytes);
        let mut storage = disk.storage();
        let mut visit = |_: &BatchView<'_>, _: u64, _: &mut SegmentTable| Ok(());
        let opened = PartitionLog::open(
            &mut storage,
            Path::new("/d"),
            0,
            RECYCLING,
            &mut Vec::new(),
            &mut visit,
        );
        match opened {
            Err(Error::Corrupt {
                position, reason, ..
            }) => {
                assert_eq!(position, second_batch as u64);
                assert!(reason.contains("not a torn tail"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        assert_eq!(storage.open_files(), 0, "the failed open closed its files");
        assert_eq!(disk.file_bytes(&path), Some(bytes), "nothing was cut");
    }

    #[test]
    fn a_recycled_segment_with_nothing_new_recovers_as_empty() {
        // No batch of its own yet and no valid batch before it: its old batches (lower
        // offsets than its name) are no good data after bad.
        let disk = SimDisk::new(6);
        let (log, mut storage) = recycled_log(&disk);
        let next_offset = log.next_offset();
        // As if a compaction had emptied the segment before it: no valid batch anywhere
        // before the recycled segment's old ones.
        storage.remove_file(&log.sealed[0].path).unwrap();
        disk.crash();
        let (reopened, recovery) = reopen(&mut disk.storage(), RECYCLING);
        assert_eq!(reopened.next_offset(), next_offset);
        assert_eq!(reopened.active.len, 0);
        assert!(recovery.truncation.is_some_and(|t| t.position == 0));
    }

    #[test]
    fn a_recycled_segment_keeps_its_new_batches_and_loses_its_old_tail_at_recovery() {
        let disk = SimDisk::new(7);
        let (mut log, mut storage) = recycled_log(&disk);
        append_synced(&mut log, &mut storage);
        append_synced(&mut log, &mut storage);
        let (next_offset, len) = (log.next_offset(), log.active.len);
        disk.crash();
        let (reopened, recovery) = reopen(&mut disk.storage(), RECYCLING);
        assert_eq!(
            (reopened.next_offset(), reopened.active.len),
            (next_offset, len)
        );
        let truncation = recovery.truncation.expect("the old tail is cut");
        assert_eq!(truncation.position, len);
        assert!(truncation.torn_bytes > 0);
    }

    #[test]
    fn the_dirty_roll_size_follows_the_live_data_within_its_bounds() {
        // A few keys: the floor.
        assert_eq!(dirty_roll_bytes(7 * 1024, 0), DIRTY_ROLL_BYTES_MIN);
        // Live data past an eighth of the floor scales it, so compaction rewrites at most
        // an eighth of what was committed since the last roll.
        assert_eq!(dirty_roll_bytes(MIB, 0), 8 * MIB);
        assert_eq!(dirty_roll_bytes(3 * MIB / 2, MIB), 12 * MIB);
        // Up to the cap; then the sealed segments' size takes over.
        assert_eq!(dirty_roll_bytes(4 * MIB, 0), DIRTY_ROLL_BYTES_SCALED_MAX);
        assert_eq!(dirty_roll_bytes(40 * MIB, 50 * MIB), 50 * MIB);
        assert_eq!(dirty_roll_bytes(u64::MAX, 0), DIRTY_ROLL_BYTES_SCALED_MAX);
        // Never below what the sealed segments hold.
        assert_eq!(dirty_roll_bytes(0, 30 * MIB), 30 * MIB);
    }
}
