//! One compaction: copy the live records of a group of sealed segments into a `.cleaned`
//! file in bounded steps, then swap it in ([`crate::log::swap`]).
//!
//! Records keep their offsets: a batch whose records are all live is copied byte for byte; a
//! batch with some dead records is rebuilt with the same base offset, leader epoch, producer
//! fields and timestamps and only the live records (their offset deltas unchanged, so the
//! segment has offset gaps, as Kafka's compacted segments do); a batch with none live is
//! dropped. Control and transactional batches, and batches with attributes this writer does
//! not reproduce, are copied untouched (see docs/architecture.md, "Transactional offsets").
//!
//! Liveness is read at copy time. A record copied live may die before the swap; it is then
//! simply counted dead in the new segment (its input's dead-record map goes into the new
//! segment's). A record never comes back to life (new values go to the active segment, past
//! the job's range), so nothing live at swap time was left out.
//!
//! An offset commit's value record is judged by its offset alone: its segment's
//! [`DeadRecords`] map says whether it died, exactly as the cache would (debug builds check
//! every such verdict against the cache). Only tombstones (kept while their key stays
//! absent), group metadata and unknown records, and records a map does not track (an
//! untracked segment, or below a merged map's tracked suffix) are judged by decoding their
//! key and looking it up.

use std::path::{Path, PathBuf};

use crate::cache::{OffsetCache, OffsetKey};
use crate::compact::{COMPACTION_STEP_BYTES_MAX, CompactionMetrics, PartitionCompaction};
use crate::format::batch::{ATTR_DELETE_HORIZON, ATTR_LOG_APPEND_TIME};
use crate::format::schema::{OFFSET_COMMIT_KEY_TYPE, OFFSET_COMMIT_KEY_TYPE_LEGACY};
use crate::format::{
    BATCH_LOG_OVERHEAD_BYTES, BatchParams, BatchView, BatchWriter, FormatError, OffsetCommitKey,
    RecordKey, RecordView, decode_key, key_record_type, parse_batch,
};
use crate::log::PartitionLog;
use crate::log::dead_records::{DeadRecords, MergedPart};
use crate::log::liveness::{NO_TOMBSTONE_MS, SegmentStats};
use crate::log::reader::BATCH_READ_BYTES_MAX;
use crate::log::segment::SealedSegment;
use crate::log::swap::{self, CLEANED_SUFFIX};
use crate::storage::{FileId, OpenMode, REMOVALS_MAX, Storage};

use super::select::Candidate;

/// What a step did.
#[derive(Debug)]
pub(crate) enum StepOutcome {
    /// More steps to go.
    Continue,
    /// The segments are swapped.
    Finished,
    /// A segment could not be read or parsed: it is quarantined and the job abandoned.
    Quarantined {
        /// The segment's file.
        segment: PathBuf,
        /// Why.
        reason: String,
    },
    /// An I/O error before the commit point: the job is abandoned, the old segments stand.
    Failed(String),
    /// An I/O error after the commit point: only recovery may touch the partition now; the
    /// shard fails it closed.
    FailedAfterCommit(String),
}

/// What one step works with, borrowed from the shard.
pub(crate) struct StepContext<'a> {
    pub storage: &'a mut dyn Storage,
    pub log: &'a mut PartitionLog,
    pub cache: &'a OffsetCache,
    pub partition: &'a mut PartitionCompaction,
    pub read_buf: &'a mut Vec<u8>,
    pub out_buf: &'a mut Vec<u8>,
    pub metrics: &'a mut CompactionMetrics,
}

/// One input segment.
#[derive(Debug)]
struct Input {
    base_offset: i64,
    path: PathBuf,
    len: u64,
}

/// A compaction in progress.
#[derive(Debug)]
pub(crate) struct CompactionJob {
    pub partition: u32,
    first: usize,
    inputs: Vec<Input>,
    end_offset: i64,
    drop_tombstones_through_ms: Option<i64>,
    input: usize,
    input_file: Option<FileId>,
    input_position: u64,
    output: Option<FileId>,
    output_path: PathBuf,
    output_len: u64,
    last_offset: Option<i64>,
    records_written: u64,
    tombstones_kept: u64,
    tombstone_min_timestamp_ms: i64,
    /// Per record of the batch being copied: kept or not (reused; one lookup per record).
    kept_flags: Vec<bool>,
    /// Records of inputs dropped without being read (see [`nothing_to_keep`]), 0 if read.
    records_dropped_unread: u64,
    /// Where the job is once every input is copied.
    phase: Phase,
    /// Tags this job's background syncs ([`Storage::start_background_sync`]).
    sync_token: u64,
    /// The outcome of the background sync the phase waits for, once reaped.
    sync_outcome: Option<std::io::Result<()>>,
    /// The length of the input kept as the partition's spare segment, if one was.
    spare_len: Option<u64>,
}

/// The swap's steps once every input is copied. Its syncs (the copy's, and the directory's
/// at the commit point, after the removals and at the end) and the removal of the replaced
/// segments run in the background, one at a time in
/// the slot the journal's checkpoint leaves free ([`COMPACTION_SYNCS_MAX`]): on the dev VM
/// each held the shard thread 250–300 µs at the median and 3–5 ms at the 99th percentile
/// when they blocked (benchmarks.md, session 10). The shard reaps their outcomes with the
/// checkpoint's and hands them to [`CompactionJob::sync_finished`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Copying,
    /// The copy's sync is in flight.
    SyncingCopy,
    /// The copy is synced and closed.
    Synced,
    /// Renamed to `.swap`; the directory's sync, the commit point, is in flight.
    Committing,
    /// The swap is committed (renamed to `.swap`, directory synced).
    Committed,
    /// The replaced segments' removal (and a directory sync) is in flight.
    Removing,
    /// The replaced segments removed and the swap renamed to `path`; the directory's sync
    /// is in flight.
    Finishing {
        path: PathBuf,
    },
}

/// Background syncs a compaction keeps in flight: one (see [`Phase`]). The journal's
/// checkpoint uses the rest of [`crate::storage::BACKGROUND_SYNCS_MAX`].
pub(crate) const COMPACTION_SYNCS_MAX: usize = 1;

/// What to do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Keep,
    KeepTombstone,
    Drop,
    DropTombstone,
}

impl CompactionJob {
    /// Creates the `.cleaned` file for `candidate` of `log`.
    pub(crate) fn start(
        storage: &mut dyn Storage,
        log: &PartitionLog,
        candidate: Candidate,
        sync_token: u64,
    ) -> std::io::Result<CompactionJob> {
        let sealed = log.sealed_segments();
        let group = &sealed[candidate.first..candidate.first + candidate.count];
        let end_offset = sealed
            .get(candidate.first + candidate.count)
            .map_or(log.active_base_offset(), |next| next.base_offset);
        let base_offset = group[0].base_offset;
        let output_path = log
            .dir()
            .join(swap::file_name(base_offset, end_offset, CLEANED_SUFFIX));
        // Left over by an abandoned job whose removal failed: never durable content.
        let _ = storage.remove_file(&output_path);
        let output = storage.open(&output_path, OpenMode::CreateNew)?;
        let stats = &log.table().segments()[candidate.first..candidate.first + candidate.count];
        let records_dropped_unread = if nothing_to_keep(stats) {
            stats.iter().map(|s| s.records).sum()
        } else {
            0
        };
        Ok(CompactionJob {
            partition: candidate.partition,
            first: candidate.first,
            inputs: group
                .iter()
                .map(|s| Input {
                    base_offset: s.base_offset,
                    path: s.path.clone(),
                    len: s.len,
                })
                .collect(),
            end_offset,
            drop_tombstones_through_ms: candidate.drop_tombstones_through_ms,
            // Nothing to keep: straight to the (empty) copy's sync and the swap.
            input: if records_dropped_unread > 0 {
                candidate.count
            } else {
                0
            },
            input_file: None,
            input_position: 0,
            output: Some(output),
            output_path,
            output_len: 0,
            last_offset: None,
            records_written: 0,
            tombstones_kept: 0,
            tombstone_min_timestamp_ms: NO_TOMBSTONE_MS,
            kept_flags: Vec::new(),
            records_dropped_unread,
            phase: Phase::Copying,
            sync_token,
            sync_outcome: None,
            spare_len: None,
        })
    }

    /// Runs one bounded step.
    pub(crate) fn step(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let Some(input) = self.inputs.get(self.input) else {
            return match self.phase {
                Phase::Copying => self.sync_copy(ctx),
                Phase::SyncingCopy => self.copy_synced(ctx),
                Phase::Synced => self.commit_swap(ctx),
                Phase::Committing => self.swap_committed(),
                Phase::Committed => self.finish(ctx),
                Phase::Removing => self.removed(ctx),
                Phase::Finishing { .. } => self.swap_finished(ctx),
            };
        };
        let file = match self.input_file {
            Some(file) => file,
            None => match ctx.storage.open(&input.path, OpenMode::Existing) {
                Ok(file) => *self.input_file.insert(file),
                Err(error) => return self.quarantine(ctx, format!("opening: {error}")),
            },
        };
        if self.input_position >= input.len {
            ctx.storage.close(file);
            self.input_file = None;
            self.input += 1;
            self.input_position = 0;
            return StepOutcome::Continue;
        }
        ctx.out_buf.clear();
        let consumed = match self.copy_window(ctx, file) {
            Ok(consumed) => consumed,
            Err(reason) => return self.quarantine(ctx, reason),
        };
        self.input_position += consumed;
        ctx.metrics.bytes_read += consumed;
        if ctx.out_buf.is_empty() {
            return StepOutcome::Continue;
        }
        let Some(output) = self.output else {
            return StepOutcome::Failed("compaction output closed".into());
        };
        // Not synced per step: the copy is synced once, before the swap makes it count.
        let written = ctx.storage.write_at(output, self.output_len, ctx.out_buf);
        if let Err(error) = written {
            self.abandon(ctx.storage);
            return StepOutcome::Failed(format!("writing the compacted copy: {error}"));
        }
        self.output_len += ctx.out_buf.len() as u64;
        ctx.metrics.bytes_written += ctx.out_buf.len() as u64;
        StepOutcome::Continue
    }

    /// Reads up to a step's bytes of the current input at the current position and appends
    /// the live part of every whole batch in it to `out_buf`; returns the bytes consumed.
    fn copy_window(&mut self, ctx: &mut StepContext<'_>, file: FileId) -> Result<u64, String> {
        let input = &self.inputs[self.input];
        let (left, base_offset) = (input.len - self.input_position, input.base_offset);
        let mut want = left.min(COMPACTION_STEP_BYTES_MAX as u64) as usize;
        // A batch bigger than a step is read whole (bounded by the reader's batch limit).
        if want < BATCH_LOG_OVERHEAD_BYTES {
            return Err(format!("{left} stray bytes at the end"));
        }
        let mut header = [0u8; BATCH_LOG_OVERHEAD_BYTES];
        read_exact(ctx.storage, file, self.input_position, &mut header)?;
        let first_len = i32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let first_total = usize::try_from(first_len)
            .map_err(|_| format!("negative batch length {first_len}"))?
            + BATCH_LOG_OVERHEAD_BYTES;
        if first_total > BATCH_READ_BYTES_MAX || first_total as u64 > left {
            return Err(format!("implausible batch length {first_total}"));
        }
        want = want.max(first_total);
        if ctx.read_buf.len() < want {
            ctx.read_buf.resize(want, 0);
        }
        let window = &mut ctx.read_buf[..want];
        read_exact(ctx.storage, file, self.input_position, window)?;
        let window = &ctx.read_buf[..want];
        // The inputs stay in the log's table until the swap (`install` checks it).
        let judge = Judge {
            cache: ctx.cache,
            partition: ctx.partition,
            dead: &ctx.log.table().segments()[self.first + self.input].dead_records,
            base_offset,
        };
        let mut consumed = 0usize;
        // Bounded: each iteration consumes one whole batch of the window.
        while window.len() - consumed >= BATCH_LOG_OVERHEAD_BYTES {
            let rest = &window[consumed..];
            let length = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]);
            let total = usize::try_from(length).unwrap_or(usize::MAX);
            if total.saturating_add(BATCH_LOG_OVERHEAD_BYTES) > rest.len() {
                break; // the next step reads it
            }
            let view = parse_batch(rest).map_err(|e| e.to_string())?;
            self.check_offsets(&view)?;
            self.copy_batch(&judge, ctx.metrics, &view, ctx.out_buf)
                .map_err(|e| format!("malformed record: {e}"))?;
            self.last_offset = Some(view.header.last_offset());
            consumed += view.total_bytes();
        }
        if consumed == 0 {
            return Err("no whole batch where one should start".into());
        }
        Ok(consumed as u64)
    }

    /// The same checks recovery makes of a sealed segment: offsets increase, stay inside the
    /// segment's range.
    fn check_offsets(&self, view: &BatchView<'_>) -> Result<(), String> {
        let input = &self.inputs[self.input];
        let next_base = self
            .inputs
            .get(self.input + 1)
            .map_or(self.end_offset, |next| next.base_offset);
        let base = view.header.base_offset;
        let last = view.header.last_offset();
        let follows = self.last_offset.is_none_or(|previous| base > previous);
        if !follows || base < input.base_offset || last >= next_base || last < base {
            return Err(format!(
                "batch offsets {base}..={last} out of order or outside the segment"
            ));
        }
        Ok(())
    }

    /// Appends the live part of one batch to `out`.
    fn copy_batch(
        &mut self,
        judge: &Judge<'_>,
        metrics: &mut CompactionMetrics,
        view: &BatchView<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        let header = &view.header;
        let count = header.records_count.max(0) as u64;
        let untouched = header.is_control()
            || header.is_transactional()
            || header.attributes & (ATTR_LOG_APPEND_TIME | ATTR_DELETE_HORIZON) != 0;
        if untouched {
            out.extend_from_slice(view.bytes());
            self.records_written += count;
            return Ok(());
        }
        let mut kept = 0u64;
        self.kept_flags.clear();
        for record in view.records() {
            let record = record?;
            let fate = self.fate(judge, metrics, view, &record)?;
            self.kept_flags
                .push(matches!(fate, Fate::Keep | Fate::KeepTombstone));
            match fate {
                Fate::Keep => kept += 1,
                Fate::KeepTombstone => {
                    kept += 1;
                    self.tombstones_kept += 1;
                    self.tombstone_min_timestamp_ms = self
                        .tombstone_min_timestamp_ms
                        .min(record.timestamp(header));
                }
                Fate::Drop => metrics.records_dropped += 1,
                Fate::DropTombstone => {
                    metrics.records_dropped += 1;
                    metrics.tombstones_dropped += 1;
                }
            }
        }
        if kept == count {
            out.extend_from_slice(view.bytes());
        } else if kept > 0 {
            let params = BatchParams {
                base_offset: header.base_offset,
                base_timestamp: header.base_timestamp,
                partition_leader_epoch: header.partition_leader_epoch,
                producer_id: header.producer_id,
                producer_epoch: header.producer_epoch,
                base_sequence: header.base_sequence,
                transactional: false,
                control: false,
            };
            let mut writer = BatchWriter::begin(out, params);
            for (record, &keep) in view.records().zip(&self.kept_flags) {
                let record = record?;
                if keep {
                    let key = record.key.unwrap_or_default();
                    let timestamp = record.timestamp(header);
                    writer.append_with_offset_delta(
                        record.offset_delta,
                        timestamp,
                        key,
                        record.value,
                    );
                }
            }
            writer.finish();
        }
        self.records_written += kept;
        Ok(())
    }

    /// Whether a record survives: a value iff the in-memory state points at it; a tombstone
    /// while its key is absent, until `delete.retention.ms` has passed and the group starts
    /// the log.
    fn fate(
        &self,
        judge: &Judge<'_>,
        metrics: &mut CompactionMetrics,
        view: &BatchView<'_>,
        record: &RecordView<'_>,
    ) -> Result<Fate, FormatError> {
        let Judge {
            cache,
            partition,
            dead,
            base_offset,
        } = *judge;
        let offset = record.offset(&view.header);
        let key = record
            .key
            .ok_or(FormatError::Malformed("record without a key"))?;
        let commit_key_types = [OFFSET_COMMIT_KEY_TYPE_LEGACY, OFFSET_COMMIT_KEY_TYPE];
        // `check_offsets` keeps the batch inside its input's range, and the record iterator
        // every record inside its batch's, so `within` indexes this input's map.
        let within = u64::try_from(offset - base_offset).unwrap_or(u64::MAX);
        if record.value.is_some()
            && commit_key_types.contains(&key_record_type(key)?)
            && let Some(is_dead) = dead.is_dead(within)
        {
            // Most records of a commit storm: no key decode, no lookup.
            debug_assert_eq!(
                is_dead,
                dead_by_key(cache, key, offset),
                "the dead-record map's verdict on offset {offset} differs from its key's"
            );
            return Ok(if is_dead { Fate::Drop } else { Fate::Keep });
        }
        metrics.records_tested_by_key += 1;
        let latest = match decode_key(key)? {
            RecordKey::OffsetCommit(key) => cached_position(cache, key),
            RecordKey::GroupMetadata(key) => match partition.group_record_offset(key.group) {
                None if record.value.is_some() && partition.keeps_unknown_group_records() => {
                    return Ok(Fate::Keep);
                }
                latest => latest,
            },
            RecordKey::Unknown { .. } => return Ok(Fate::Keep),
        };
        if record.value.is_some() {
            return Ok(if latest == Some(offset) {
                Fate::Keep
            } else {
                Fate::Drop
            });
        }
        if latest.is_some() {
            return Ok(Fate::Drop); // the key was committed again: the tombstone is moot
        }
        let expired = self
            .drop_tombstones_through_ms
            .is_some_and(|through| record.timestamp(&view.header) <= through);
        Ok(if expired {
            Fate::DropTombstone
        } else {
            Fate::KeepTombstone
        })
    }

    /// Starts the copy's sync and closes it (the sync holds its own reference to the file).
    fn sync_copy(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let Some(output) = self.output.take() else {
            return StepOutcome::Failed("compaction output closed".into());
        };
        let started = ctx.storage.start_background_sync(output, self.sync_token);
        ctx.storage.close(output);
        if let Err(error) = started {
            let _ = ctx.storage.remove_file(&self.output_path);
            return StepOutcome::Failed(format!("syncing the compacted copy: {error}"));
        }
        self.phase = Phase::SyncingCopy;
        StepOutcome::Continue
    }

    /// The copy's sync finished.
    fn copy_synced(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        match self.sync_outcome.take() {
            None => StepOutcome::Continue,
            Some(Ok(())) => {
                self.phase = Phase::Synced;
                StepOutcome::Continue
            }
            Some(Err(error)) => {
                let _ = ctx.storage.remove_file(&self.output_path);
                StepOutcome::Failed(format!("syncing the compacted copy: {error}"))
            }
        }
    }

    /// Renames the copy to `.swap` and starts the directory's sync: the commit point once it
    /// succeeds.
    fn commit_swap(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let base_offset = self.inputs[0].base_offset;
        let dir = ctx.log.dir().to_path_buf();
        let started = swap::rename_to_swap(ctx.storage, &dir, base_offset, self.end_offset)
            .and_then(|()| ctx.storage.start_background_dir_sync(&dir, self.sync_token));
        // On an error the rename's durability is unknown: fail closed.
        self.after_commit(started, Phase::Committing, "committing the swap")
    }

    /// Where a step past the rename to `.swap` leaves the job once it started, or waited
    /// for, a background operation: in phase `next`, or failed closed (`context` prefixes
    /// the reason), since only recovery may complete the swap then.
    fn after_commit(
        &mut self,
        result: std::io::Result<()>,
        next: Phase,
        context: &str,
    ) -> StepOutcome {
        match result {
            Ok(()) => {
                self.phase = next;
                StepOutcome::Continue
            }
            Err(error) => StepOutcome::FailedAfterCommit(format!("{context}: {error}")),
        }
    }

    /// The commit point's directory sync finished.
    fn swap_committed(&mut self) -> StepOutcome {
        match self.sync_outcome.take() {
            None => StepOutcome::Continue,
            // A failed directory sync leaves the rename's durability unknown: fail closed.
            Some(synced) => self.after_commit(synced, Phase::Committed, "committing the swap"),
        }
    }

    /// Removes the replaced segments in the background: removing a dropped 4 MiB segment
    /// held the shard thread 2.5–4 ms on the dev VM (its blocks and cached pages freed in
    /// the `unlink`), every compaction (benchmarks.md, session 10). A group of more inputs
    /// than one submission takes has them removed here, blocking (rare: a merge of many
    /// small segments).
    fn finish(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let dir = ctx.log.dir().to_path_buf();
        if self.inputs.len() >= REMOVALS_MAX {
            // Removed, then the directory synced before the rename: a rename durable before
            // a removal would bring an old segment back with no `.swap` beside it.
            let removed = self
                .inputs
                .iter()
                .try_for_each(|input| ctx.storage.remove_file(&input.path))
                .and_then(|()| ctx.storage.sync_dir(&dir));
            return match removed {
                Ok(()) => self.rename_into_place(ctx),
                Err(error) => {
                    StepOutcome::FailedAfterCommit(format!("completing the swap: {error}"))
                }
            };
        }
        // The largest dropped segment becomes the partition's spare instead (a rename, not a
        // removal): the next roll reuses its file (`PartitionLog::spare_wanted`).
        let spare = ctx
            .log
            .spare_wanted()
            .then(|| (0..self.inputs.len()).max_by_key(|&i| self.inputs[i].len))
            .flatten()
            .filter(|&i| PartitionLog::spare_fits(self.inputs[i].len));
        if let Some(index) = spare {
            let renamed = ctx
                .storage
                .rename(&self.inputs[index].path, &ctx.log.spare_path());
            if let Err(error) = renamed {
                return StepOutcome::FailedAfterCommit(format!("keeping a spare segment: {error}"));
            }
            self.spare_len = Some(self.inputs[index].len);
        }
        let files: Vec<&Path> = (0..self.inputs.len())
            .filter(|&i| Some(i) != spare)
            .map(|i| self.inputs[i].path.as_path())
            .collect();
        let started = ctx
            .storage
            .start_background_removals(&dir, &files, self.sync_token);
        self.after_commit(started, Phase::Removing, "completing the swap")
    }

    /// The replaced segments' removal finished.
    fn removed(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        match self.sync_outcome.take() {
            None => StepOutcome::Continue,
            Some(Ok(())) => self.rename_into_place(ctx),
            // Some may be gone, the swap stays: only recovery may complete it now.
            Some(Err(error)) => {
                StepOutcome::FailedAfterCommit(format!("completing the swap: {error}"))
            }
        }
    }

    /// Renames the swap to its segment name (a cheap rename, on the shard thread) and
    /// starts the directory's sync.
    fn rename_into_place(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let dir = ctx.log.dir().to_path_buf();
        let (swap, path) =
            swap::completion_names(&dir, self.inputs[0].base_offset, self.end_offset);
        let renamed = ctx
            .storage
            .rename(&swap, &path)
            .and_then(|()| ctx.storage.start_background_dir_sync(&dir, self.sync_token));
        self.after_commit(renamed, Phase::Finishing { path }, "completing the swap")
    }

    /// The last directory sync finished: updates the log's segment list.
    fn swap_finished(&mut self, ctx: &mut StepContext<'_>) -> StepOutcome {
        let path = match (&self.phase, self.sync_outcome.take()) {
            (_, None) => return StepOutcome::Continue,
            (Phase::Finishing { path }, Some(Ok(()))) => path.clone(),
            (_, Some(Err(error))) => {
                return StepOutcome::FailedAfterCommit(format!("completing the swap: {error}"));
            }
            (_, Some(Ok(()))) => {
                return StepOutcome::FailedAfterCommit("compaction phase lost its path".into());
            }
        };
        self.install(ctx, path)
    }

    /// Puts the compacted segment in the log's segment list in place of the inputs.
    fn install(&mut self, ctx: &mut StepContext<'_>, path: PathBuf) -> StepOutcome {
        let sealed = ctx.log.sealed_segments();
        let range = self.first..self.first + self.inputs.len();
        let unchanged = sealed.get(range.clone()).is_some_and(|group| {
            group
                .iter()
                .zip(&self.inputs)
                .all(|(s, i)| s.base_offset == i.base_offset)
        });
        assert!(unchanged, "sealed segments changed under a compaction");
        let base_offset = self.inputs[0].base_offset;
        let replaced = &ctx.log.table().segments()[range.clone()];
        let live_before: u64 = replaced.iter().map(|s| s.live).sum();
        // Offsets are kept, so the inputs' maps, side by side, are the copy's: the records
        // dropped stay marked (nobody asks), and those that died during the job are marked.
        let span = u64::try_from(self.end_offset - base_offset).unwrap_or(u64::MAX);
        let parts: Vec<MergedPart<'_>> = replaced
            .iter()
            .map(|s| MergedPart {
                distance: u64::try_from(s.base_offset - base_offset).unwrap_or(u64::MAX),
                records: s.records,
                dead: &s.dead_records,
            })
            .collect();
        let dead_records = DeadRecords::merged(&parts, span, self.records_written);
        let stats = SegmentStats {
            base_offset,
            records: self.records_written,
            live: (live_before + self.tombstones_kept).min(self.records_written),
            tombstones: self.tombstones_kept,
            tombstone_min_timestamp_ms: self.tombstone_min_timestamp_ms,
            dead_records,
        };
        let segment = SealedSegment {
            base_offset,
            path,
            len: self.output_len,
            sealed_at: None,
        };
        ctx.log.replace_sealed(range, segment, stats);
        if let Some(len) = self.spare_len.take() {
            // Its rename is durable with the directory sync this step follows.
            ctx.log.adopt_spare(len);
        }
        ctx.metrics.compactions += 1;
        if self.records_dropped_unread > 0 {
            ctx.metrics.records_dropped += self.records_dropped_unread;
            ctx.metrics.segments_dropped_unread += self.inputs.len() as u64;
        }
        // Wall clock, not the selection's time: an explicit compaction may run "as of"
        // another time.
        ctx.metrics.last_success_ms = crate::shard::wall_clock_ms();
        StepOutcome::Finished
    }

    fn quarantine(&mut self, ctx: &mut StepContext<'_>, reason: String) -> StepOutcome {
        let input = &self.inputs[self.input];
        let segment = input.path.clone();
        ctx.partition.quarantined.insert(input.base_offset);
        ctx.metrics.segments_quarantined += 1;
        self.abandon(ctx.storage);
        StepOutcome::Quarantined { segment, reason }
    }

    /// The token its background operations carry.
    pub(crate) fn sync_token(&self) -> u64 {
        self.sync_token
    }

    /// Whether the job waits for its background sync's outcome (no step can progress).
    pub(crate) fn waits_for_sync(&self) -> bool {
        self.sync_outcome.is_none()
            && matches!(
                self.phase,
                Phase::SyncingCopy | Phase::Committing | Phase::Removing | Phase::Finishing { .. }
            )
    }

    /// Hands the job the outcome of a background sync tagged `token`; false if it is not
    /// this job's (an abandoned job's sync, finishing late).
    pub(crate) fn sync_finished(&mut self, token: u64, result: std::io::Result<()>) -> bool {
        if token != self.sync_token || !self.waits_for_sync() {
            return false;
        }
        self.sync_outcome = Some(result);
        true
    }

    /// Whether the swap passed the rename to `.swap`: its commit point may be durable, so
    /// only completing it (or recovery) may touch the partition's segments.
    pub(crate) fn is_committed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Committing | Phase::Committed | Phase::Removing | Phase::Finishing { .. }
        )
    }

    /// Closes the files and removes the `.cleaned` copy (best effort: recovery removes it
    /// otherwise). After the commit point the `.swap` stays and the next load's recovery
    /// completes it, so the partition must not be served from this log any more: callers
    /// abandon a committed job only when the partition is unloaded, closed or failed.
    pub(crate) fn abandon(&mut self, storage: &mut dyn Storage) {
        if let Some(file) = self.input_file.take() {
            storage.close(file);
        }
        if let Some(file) = self.output.take() {
            storage.close(file);
        }
        let _ = storage.remove_file(&self.output_path);
    }
}

/// What the per-record test says of an offset commit's value record: dead unless its key
/// decodes and the cache points at it (debug builds check every verdict of the dead-record
/// maps with it).
fn dead_by_key(cache: &OffsetCache, key: &[u8], offset: i64) -> bool {
    match decode_key(key) {
        Ok(RecordKey::OffsetCommit(key)) => cached_position(cache, key) != Some(offset),
        _ => false,
    }
}

/// The log position the cache holds for an offset commit's key: the offset of its live
/// record, if any.
fn cached_position(cache: &OffsetCache, key: OffsetCommitKey<'_>) -> Option<i64> {
    let key = OffsetKey {
        group: key.group,
        topic: key.topic,
        partition: key.partition,
    };
    cache.log_position(key).map(|p| p as i64)
}

/// What a record's fate is read from: the in-memory state, and its input's dead-record map.
#[derive(Clone, Copy)]
struct Judge<'a> {
    cache: &'a OffsetCache,
    partition: &'a PartitionCompaction,
    /// The map of the input being copied.
    dead: &'a DeadRecords,
    /// That input's base offset: bit 0 of its map.
    base_offset: i64,
}

/// Whether segments with these stats hold no record a compaction would keep, so it can drop
/// them without reading them: no live record (every value superseded or deleted; control,
/// transactional, unknown and untracked group records always count live) and no tombstone
/// (a tombstone counts dead but is kept while retained, see [`crate::log::liveness`]). A
/// commit storm over a fixed key set leaves most of its sealed segments like this, and
/// reading them only to drop every record cost the shard CPU the commits needed.
fn nothing_to_keep(stats: &[SegmentStats]) -> bool {
    // Empty segments (what an earlier compaction that kept nothing left) count as nothing
    // to keep too: the group of such a segment and a dead one is dropped unread.
    stats.iter().all(|s| s.live == 0 && s.tombstones == 0) && stats.iter().any(|s| s.records > 0)
}

fn read_exact(
    storage: &mut dyn Storage,
    file: FileId,
    position: u64,
    buf: &mut [u8],
) -> Result<(), String> {
    match storage.read_at(file, position, buf) {
        Ok(read) if read == buf.len() => Ok(()),
        Ok(read) => Err(format!("short read: {read} of {} bytes", buf.len())),
        Err(error) => Err(format!("reading: {error}")),
    }
}
