//! Recovery of one partition's segment files when its log opens.
//!
//! Every sealed segment must scan clean from end to end: a bad batch there is corruption
//! (the segment was synced before it was sealed), never a torn write. The active segment may
//! end in a torn tail, the batches of a flush a crash interrupted: it is cut back to the last
//! valid batch, the cut synced, before anything is appended. A bad batch followed by a valid
//! one with higher offsets is not a torn tail but corruption, and fails the open.
//!
//! Every valid batch goes to the caller's visitor in offset order, with the segment table
//! the visitor charges dead records to.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{BatchView, FormatError, OFFSET_MAX};
use crate::log::liveness::SegmentTable;
use crate::log::partition::{LogSettings, PartitionRecovery, ReplayVisitor, Truncation};
use crate::log::reader::{ScanOutcome, ScanStop, SegmentReader};
use crate::log::segment::{ActiveSegment, SealedSegment, segment_file_name};
use crate::storage::{FileId, OpenMode, Storage};

/// A partition's segments as recovery found them.
pub(super) struct Recovered {
    pub sealed: Vec<SealedSegment>,
    pub active: ActiveSegment,
    /// Records per segment, dead ones charged by the visitor.
    pub table: SegmentTable,
    /// The active segment's file length: its data plus what is preallocated past it.
    pub reserved: u64,
    /// The offset the next appended record gets.
    pub next_offset: i64,
}

/// Scans the segments of `dir` whose names carry `sealed_bases` (ascending) and then
/// `active_base`, feeding every valid batch to `visit`; cuts the active segment's torn tail.
/// Counts segments, batches and the cut in `report`.
pub(super) fn recover_segments(
    storage: &mut dyn Storage,
    dir: &Path,
    (sealed_bases, active_base): (&[i64], i64),
    settings: LogSettings,
    read_buf: &mut Vec<u8>,
    visit: &mut ReplayVisitor<'_>,
    report: &mut PartitionRecovery,
) -> Result<Recovered> {
    let mut replay = Replay {
        storage,
        dir,
        read_buf,
        visit,
        report,
        table: SegmentTable::default(),
        last_offset: None,
    };
    let mut sealed = Vec::with_capacity(sealed_bases.len());
    for &base_offset in sealed_bases {
        sealed.push(replay.sealed_segment(base_offset)?);
    }
    let (active, reserved) = replay.active_segment(active_base, settings)?;
    // A compaction may have dropped the last records of the last sealed segment; the active
    // segment still starts at the offset its name carries.
    let next_offset = replay
        .last_offset
        .map_or(active_base, |last| (last + 1).max(active_base));
    Ok(Recovered {
        sealed,
        active,
        table: replay.table,
        reserved,
        next_offset,
    })
}

/// The state recovery carries from one segment to the next.
struct Replay<'r, 'v> {
    storage: &'r mut dyn Storage,
    dir: &'r Path,
    read_buf: &'r mut Vec<u8>,
    visit: &'r mut ReplayVisitor<'v>,
    report: &'r mut PartitionRecovery,
    table: SegmentTable,
    /// The highest offset replayed so far.
    last_offset: Option<i64>,
}

/// An I/O error of recovery in `dir`, saying what it was doing.
fn io(dir: &Path, what: &str, error: std::io::Error) -> Error {
    Error::io(format!("{what} {}", dir.display()), error)
}

impl Replay<'_, '_> {
    /// Opens the segment file whose name carries `base_offset`.
    fn open_segment(&mut self, base_offset: i64) -> Result<(PathBuf, FileId)> {
        let path = self.dir.join(segment_file_name(base_offset));
        if !(0..=OFFSET_MAX).contains(&base_offset) {
            return Err(Error::Corrupt {
                file: path,
                position: 0,
                reason: format!(
                    "segment base offset {base_offset} beyond the largest offset a log holds"
                ),
            });
        }
        match self.storage.open(&path, OpenMode::Existing) {
            Ok(file) => Ok((path, file)),
            Err(e) => Err(io(self.dir, "opening segment in", e)),
        }
    }

    /// Replays the sealed segment at `base_offset`, which must be valid to its end.
    fn sealed_segment(&mut self, base_offset: i64) -> Result<SealedSegment> {
        let (path, file) = self.open_segment(base_offset)?;
        // Compacted segments have offset gaps, but never an offset at or below one before.
        let floor = self.last_offset.unwrap_or(i64::MIN).max(base_offset - 1);
        self.table.push_segment(base_offset);
        let scanned = self.scan(file, floor, false);
        self.storage.close(file);
        let outcome = scanned?;
        check_records(&outcome, &path)?;
        if let Some(stop) = outcome.stop {
            return Err(Error::Corrupt {
                file: path,
                position: stop.position,
                reason: format!("in a sealed segment: {}", stop.reason),
            });
        }
        self.count(&outcome);
        Ok(SealedSegment {
            base_offset,
            path,
            len: outcome.valid_len,
            sealed_at: None,
        })
    }

    /// Replays the active segment at `base_offset`, cuts its torn tail and reserves its
    /// preallocation; returns it open, with its file's length. Its file is closed again if
    /// recovery fails.
    fn active_segment(
        &mut self,
        base_offset: i64,
        settings: LogSettings,
    ) -> Result<(ActiveSegment, u64)> {
        let (path, file) = self.open_segment(base_offset)?;
        match self.active_file(file, &path, base_offset, settings) {
            Ok((len, reserved)) => {
                let active = ActiveSegment {
                    base_offset,
                    path,
                    file,
                    len,
                };
                Ok((active, reserved))
            }
            Err(error) => {
                self.storage.close(file);
                Err(error)
            }
        }
    }

    /// [`active_segment`](Self::active_segment) on its open `file`: the data's length and
    /// the file's.
    fn active_file(
        &mut self,
        file: FileId,
        path: &Path,
        base_offset: i64,
        settings: LogSettings,
    ) -> Result<(u64, u64)> {
        let dir = self.dir;
        if let Some(last) = self.last_offset.filter(|&last| last >= base_offset) {
            return Err(Error::Corrupt {
                file: path.to_path_buf(),
                position: 0,
                reason: format!("segment starts at offset {base_offset}, not after offset {last}"),
            });
        }
        // The active segment has never been compacted: its batches run contiguously from
        // the offset in its name.
        self.table.push_segment(base_offset);
        let outcome = self.scan(file, base_offset - 1, true)?;
        check_records(&outcome, path)?;
        self.count(&outcome);
        let valid_len = outcome.valid_len;
        if let Some(stop) = outcome.stop {
            self.cut_torn_tail(file, path, stop, valid_len, settings)?;
        }
        let reserved = if settings.preallocate && self.report.truncation.is_none() {
            preallocate(&mut *self.storage, file, settings.reserve_for(valid_len))
                .map_err(|e| io(dir, "allocating", e))?
        } else {
            settings.reserve_for(valid_len)
        };
        Ok((valid_len, reserved))
    }

    /// The active segment's scan stopped at `stop`, after `valid_len` bytes of valid
    /// batches: cuts the bytes from there on (synced) if they are a torn tail, fails if a
    /// valid batch follows them.
    fn cut_torn_tail(
        &mut self,
        file: FileId,
        path: &Path,
        stop: ScanStop,
        valid_len: u64,
        settings: LogSettings,
    ) -> Result<()> {
        let dir = self.dir;
        let buf = std::mem::take(self.read_buf);
        let mut reader = SegmentReader::new(&mut *self.storage, file, buf)
            .map_err(|e| io(dir, "reading segment in", e))?;
        // `last_offset` is at least the segment's base - 1 (the scan's floor): a recycled
        // file's old batches past the stop, with lower offsets, are no good data after bad.
        let inspected = reader.inspect_tail(stop.position, self.last_offset);
        let file_len = reader.file_len();
        *self.read_buf = reader.into_buffer();
        let (torn_bytes, later_batch) = inspected.map_err(|e| io(dir, "reading segment in", e))?;
        if let Some(position) = later_batch {
            return Err(Error::Corrupt {
                file: path.to_path_buf(),
                position: stop.position,
                reason: format!(
                    "{}; a valid batch follows at byte {position}, so this is not a torn tail",
                    stop.reason
                ),
            });
        }
        // Without preallocation the file should end where the data does: anything past it
        // is a partial write even if it starts with zero bytes.
        let torn_bytes = if settings.preallocate {
            torn_bytes
        } else {
            file_len - valid_len
        };
        if torn_bytes == 0 {
            return Ok(());
        }
        truncate_tail(&mut *self.storage, file, valid_len, settings)
            .map_err(|e| io(dir, "truncating", e))?;
        self.report.truncation = Some(Truncation {
            file: PathBuf::from(path),
            position: valid_len,
            torn_bytes,
            reason: stop.reason,
        });
        Ok(())
    }

    /// Scans `file` whole, above offset `floor`; `contiguous`: offsets must follow one
    /// another with no gap (an active segment). Every valid batch's records are counted in
    /// the segment table before the visitor sees the batch.
    fn scan(&mut self, file: FileId, floor: i64, contiguous: bool) -> Result<ScanOutcome> {
        let (table, visit) = (&mut self.table, &mut *self.visit);
        let mut visit = |view: &BatchView<'_>, position: u64| -> Result<(), FormatError> {
            table.add_records(view.header.records_count.max(0) as u64);
            visit(view, position, table)
        };
        let buf = std::mem::take(self.read_buf);
        let mut reader = SegmentReader::new(&mut *self.storage, file, buf)
            .map_err(|e| Error::io("reading a segment", e))?;
        let outcome = reader.scan(Some(floor), contiguous, &mut visit);
        *self.read_buf = reader.into_buffer();
        let outcome = outcome.map_err(|e| Error::io("reading a segment", e))?;
        self.last_offset = outcome.last_offset.or(self.last_offset);
        Ok(outcome)
    }

    /// Counts a scanned segment in the report.
    fn count(&mut self, outcome: &ScanOutcome) {
        self.report.segments += 1;
        self.report.batches += outcome.batches;
    }
}

/// Fails if the visitor rejected a batch's records.
fn check_records(outcome: &ScanOutcome, path: &Path) -> Result<()> {
    match &outcome.bad_records {
        Some((position, error)) => Err(Error::Corrupt {
            file: path.to_path_buf(),
            position: *position,
            reason: format!("malformed record in a batch with a valid CRC: {error}"),
        }),
        None => Ok(()),
    }
}

/// Cuts a torn tail: everything from `valid_len` on becomes zeros again, durably, so a later
/// shorter write can never be followed by stale bytes.
fn truncate_tail(
    storage: &mut dyn Storage,
    file: FileId,
    valid_len: u64,
    settings: LogSettings,
) -> std::io::Result<()> {
    storage.set_len(file, valid_len)?;
    if settings.preallocate {
        storage.allocate(file, settings.reserve_for(valid_len))?;
    }
    storage.sync(file)
}

/// Reserves `file` to at least `len` bytes; returns its length.
fn preallocate(storage: &mut dyn Storage, file: FileId, len: u64) -> std::io::Result<u64> {
    let file_len = storage.file_len(file)?;
    if file_len >= len {
        return Ok(file_len);
    }
    storage.allocate(file, len)?;
    // Sync once now so that appends' fdatasyncs flush data only, not the new length.
    storage.sync(file)?;
    Ok(len)
}
