//! A shard's flush: the batch's commits encoded per offsets partition, written with the
//! journal's entry (or each partition's batch synced) in one durable submission, applied to
//! the caches and acknowledged; then the staged segment writes and the dirty rolls. Under
//! load, two flushes are in flight (`pipeline.rs`).

use std::time::Instant;

use super::group_commit::{GroupCommitBatch, PendingOffset, encode_partition_batch};
use super::pipeline::{NextState, PIPELINED_FLUSHES_PER_TURN_MAX};
use super::{HostedPartition, SEGMENT_WRITE_BYTES_MIN, Shard, ShardMetrics, wall_clock_ms};
use crate::cache::{OffsetKey, OffsetValueRef};
use crate::config::FsyncScope;
use crate::error::{Error, Result};
use crate::format;
use crate::log::liveness::SegmentTable;
use crate::storage::WriteOp;

/// One offsets partition's record batch in a flush: encoded first, given its offsets when
/// it is placed in the log.
#[derive(Default)]
pub(super) struct EncodedBatch {
    /// The RecordBatch, its base offset set at placement ([`format::set_base_offset`]).
    pub(super) bytes: Vec<u8>,
    /// Its records; 0 when the partition has none in the flush.
    pub(super) records: u32,
    /// Its first offset, from its placement on.
    pub(super) base_offset: i64,
    /// Whether its flush made it durable: its commits are applied and acknowledged from
    /// this, not from the partition's state when that happens (a later flush may fail the
    /// partition closed in between).
    pub(super) durable: bool,
}

impl EncodedBatch {
    /// Gives the batch its offsets, from `base_offset` on.
    fn place(&mut self, base_offset: i64) {
        format::set_base_offset(&mut self.bytes, base_offset);
        self.base_offset = base_offset;
    }

    /// The placed batch's last offset, if it has records.
    fn last_offset(&self) -> Option<i64> {
        (self.records > 0).then(|| self.base_offset + i64::from(self.records) - 1)
    }
}

/// Which of a shard's two flush slots.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Current,
    Next,
}

impl Shard {
    /// Writes the batch at once: encode per partition, one durable submission, then apply
    /// and ack. For the callers that need it done before they go on (unload, close, expiry).
    pub(super) fn flush(&mut self) {
        assert!(
            self.next.state == NextState::Empty,
            "a flush would overtake the next one"
        );
        self.encode_current();
        self.flush_encoded(None);
    }

    /// Encodes the current batch (see [`encode`](Self::encode)).
    pub(super) fn encode_current(&mut self) {
        self.flush_timestamp_ms = wall_clock_ms();
        self.encode(Slot::Current);
    }

    /// Writes the encoded current batch in one durable submission, then applies and acks
    /// it. With `shadow` (the shard's inbox), while the journal syncs it the next batch may
    /// be gathered and encoded; and then it goes out as soon as this one is durable, this
    /// one being applied and acknowledged during its sync, up to
    /// [`PIPELINED_FLUSHES_PER_TURN_MAX`] flushes. Then the staged segment writes and
    /// dirty rolls of every partition the turn placed.
    pub(super) fn flush_encoded(&mut self, mut shadow: Option<&mut super::Inbox>) {
        for flushes in 1..=PIPELINED_FLUSHES_PER_TURN_MAX {
            let flush_started = Instant::now();
            let shadow_us = self.write_partitions(shadow.as_deref_mut());
            let flush_us = (flush_started.elapsed().as_micros() as u64).saturating_sub(shadow_us);
            ShardMetrics::record_latency(&mut self.metrics.flush_latency_us, flush_us);
            self.metrics.flushes += 1;
            self.note_placed_this_turn();
            if self.next.state == NextState::Written {
                // The flush before was not acknowledged in this one's shadow (its journal
                // write went the blocking way): before this one's, then.
                self.apply_and_ack(Slot::Next);
            }
            let pipelined = shadow.is_some()
                && self.next.state == NextState::Encoded
                && flushes < PIPELINED_FLUSHES_PER_TURN_MAX
                && !self.maintenance_due();
            if !pipelined {
                break;
            }
            // The stage writes and dirty rolls wait for the turn's end, after the acks (the
            // segments then get durable bytes only, and no ack waits behind them): meanwhile
            // a partition's stage holds at most this turn's batches more.
            self.swap_slots();
            self.next.state = NextState::Written;
        }
        self.apply_and_ack(Slot::Current);
        // Every partition the turn placed, not only its last flush's.
        std::mem::swap(&mut self.placed_partitions, &mut self.turn_placed);
        self.turn_placed.clear();
        for &partition in &self.placed_partitions {
            self.partitions[partition as usize].placed_this_turn = false;
        }
        if self.journal.is_some() {
            self.write_full_stages();
        }
        self.roll_dirty_segments();
    }

    /// Adds the partitions the flush just written placed to the turn's.
    fn note_placed_this_turn(&mut self) {
        for &partition in &self.placed_partitions {
            let hosted = &mut self.partitions[partition as usize];
            if !std::mem::replace(&mut hosted.placed_this_turn, true) {
                self.turn_placed.push(partition);
            }
        }
    }

    /// Refuses the slot's commits past their deadline or for a partition that cannot take
    /// them, sorts the rest and encodes each partition's latest offsets into one batch
    /// (offsets given at placement), listing the partitions encoded.
    pub(super) fn encode(&mut self, slot: Slot) {
        let (batch, flush_partitions, timestamp_ms, parity) = match slot {
            Slot::Current => (
                &mut self.batch,
                &mut self.flush_partitions,
                self.flush_timestamp_ms,
                self.flush_parity,
            ),
            Slot::Next => (
                &mut self.next.batch,
                &mut self.next.partitions,
                self.next.timestamp_ms,
                self.next.parity,
            ),
        };
        let now = Instant::now();
        // Commits past their deadline, or for a failed partition, fail without being
        // written. Removal must keep arrival order: coalescing takes the last entry per key.
        let partitions = &self.partitions;
        let commit_timeout_ms = self.commit_timeout_ms;
        let refused = batch.requests.extract_if(.., |commit| {
            let refused = partitions
                .get(commit.offsets_partition as usize)
                .is_none_or(|hosted| hosted.refusal(commit.offsets_partition).is_some());
            refused || commit.deadline <= now
        });
        for commit in refused {
            let partition = commit.offsets_partition;
            let error = self
                .partitions
                .get(partition as usize)
                .map_or(Some(Error::NotCoordinator { partition }), |hosted| {
                    hosted.refusal(partition)
                })
                .unwrap_or(Error::CommitTimeout {
                    timeout_ms: commit_timeout_ms,
                });
            self.metrics.commit_errors += 1;
            self.pools.commits.answer(commit, Err(error));
        }
        if batch.is_empty() {
            // Every commit refused: its byte counts start from zero again.
            batch.clear();
        }
        batch.sort_entries();
        flush_partitions.clear();
        let partitions = &mut self.partitions;
        // No answer may come from an earlier flush's outcome.
        for hosted in partitions.iter_mut() {
            hosted.encoded[parity].durable = false;
        }
        batch.for_each_partition(|partition, latest| {
            let hosted = &mut partitions[partition as usize];
            if hosted.log.is_none() {
                return;
            }
            let encoded = &mut hosted.encoded[parity];
            // Encoded from offset 0: the records' offsets, which the cache stores as their
            // log positions (the compactor's liveness test), are given at placement.
            let last = encode_partition_batch(&mut encoded.bytes, 0, timestamp_ms, latest);
            encoded.records = last.map_or(0, |last| last as u32 + 1);
            encoded.base_offset = 0;
            flush_partitions.push(partition);
        });
    }

    /// After the acks, rolls each partition this flush placed whose active segment is
    /// dirty enough for the compactor ([`PartitionLog::roll_if_dirty`](crate::log::PartitionLog::roll_if_dirty)): a roll syncs the
    /// sealed segment and creates the next, and the flush's commits need neither. A failed
    /// roll fails its partition closed (with the journal, what it acked is in the journal
    /// files, kept for the next open).
    fn roll_dirty_segments(&mut self) {
        let mut rolled = false;
        for &partition in &self.placed_partitions {
            // Not while a checkpoint's background sync of this segment is in flight: the
            // roll's `fsync` would share the file with it, and Linux reports a writeback
            // error once per open file, so the roll could see success for lost pages. A
            // dirty roll can wait for a later flush.
            if self.checkpoint_syncing.contains(&partition) {
                continue;
            }
            let hosted = &mut self.partitions[partition as usize];
            let Some(log) = hosted.log.as_mut().filter(|log| log.wants_dirty_roll()) else {
                continue;
            };
            let started = Instant::now();
            match log.roll_if_dirty(self.storage.as_mut()) {
                Ok(true) => {
                    rolled = true;
                    self.metrics.dirty_rolls += 1;
                    let roll_us = started.elapsed().as_micros() as u64;
                    ShardMetrics::record_latency(&mut self.metrics.dirty_roll_us, roll_us);
                }
                Ok(false) => {}
                Err(error) => {
                    let reason = format!("rolling a segment: {error}");
                    hosted.fail_closed(partition, reason, &self.failed);
                    if let Some(log) = hosted.log.take() {
                        log.abandon(self.storage.as_mut());
                    }
                }
            }
        }
        if rolled {
            self.maintenance.note_maybe_dirty();
        }
    }

    /// With a journal, writes the staged batches of the partitions this flush placed whose
    /// stage holds [`SEGMENT_WRITE_BYTES_MIN`] or more, in one storage submission, unsynced
    /// (the checkpoint syncs them). Fewer, larger writes than one per flush; and after the
    /// acks, because the journal already holds these batches durably: a segment write that
    /// stalls (page cache, the filesystem's own journal) no longer holds a flush's commits.
    /// A failed write fails its partition closed; its journal files are kept for the next
    /// open, which redoes them.
    fn write_full_stages(&mut self) {
        let mut ops: Vec<WriteOp<'_>> = std::mem::take(&mut self.write_ops);
        let mut writing = std::mem::take(&mut self.writing_partitions);
        debug_assert!(ops.is_empty() && writing.is_empty());
        let placed = &self.placed_partitions;
        let stage = (SEGMENT_WRITE_BYTES_MIN, false);
        stage_writes(&self.partitions, placed, stage, &mut ops, &mut writing);
        if !ops.is_empty() {
            self.storage.write_durable(&ops, &mut self.flush_results);
        }
        self.write_ops = recycle_ops(ops);
        self.stages_written(&writing, "writing the segment: ");
        for &partition in &writing {
            let hosted = &mut self.partitions[partition as usize];
            if hosted.failure.is_some()
                && let Some(log) = hosted.log.take()
            {
                log.abandon(self.storage.as_mut());
            }
        }
        writing.clear();
        self.writing_partitions = writing;
    }

    /// Takes the outcomes (in `flush_results`) of the stage writes of `writing`: a written
    /// stage is done with; a failed write fails its partition closed (`context` prefixes the
    /// reason). Never retried: the page cache may already have dropped the data, and
    /// recovery reads the disk.
    fn stages_written(&mut self, writing: &[u32], context: &str) {
        let synced = self.journal.is_none() && self.fsync_scope == FsyncScope::File;
        for (result, &partition) in self.flush_results.iter().zip(writing) {
            let hosted = &mut self.partitions[partition as usize];
            match result {
                Ok(()) => {
                    if let Some(log) = hosted.log.as_mut() {
                        log.staged_written();
                    }
                    self.metrics.syncs += u64::from(synced);
                }
                Err(error) => {
                    hosted.fail_closed(partition, format!("{context}{error}"), &self.failed)
                }
            }
        }
    }

    /// Places each partition's batch (rolling segments as needed) and writes them all, with
    /// the journal's entries when there is a journal; `shadow` as in `flush_encoded`.
    /// Returns the microseconds spent on the next flush in the shadow of this one's sync.
    pub(super) fn write_partitions(&mut self, shadow: Option<&mut super::Inbox>) -> u64 {
        let mut shadow_us = 0;
        if self.journal.is_none() || self.prepare_journal() {
            // After the rotation, whose checkpoint may have just started syncs.
            self.settle_syncs_before_full_rolls();
            shadow_us = self.write_placed(shadow);
        } else {
            // Nothing placed: the stage writes after the acks have nothing of this flush.
            self.placed_partitions.clear();
        }
        for &partition in &self.flush_partitions {
            let hosted = &mut self.partitions[partition as usize];
            if hosted.failure.is_some()
                && let Some(log) = hosted.log.take()
            {
                log.abandon(self.storage.as_mut());
            }
        }
        // After the failed partitions' logs are gone: a checkpoint never writes a failed
        // flush's staged batch into its segment (it keeps the journal file instead).
        self.advance_checkpoint(false);
        shadow_us
    }

    /// A full segment rolls inside the flush (`prepare_append`), and its roll's `fsync`
    /// must not share the file with a checkpoint's background sync still in flight (see
    /// `roll_dirty_segments`): when a partition about to roll has one, waits for the
    /// checkpoint's syncs and takes their outcomes first (a failed one fails the partition
    /// closed, and this flush refuses its commits). Rare: a full segment during a checkpoint.
    fn settle_syncs_before_full_rolls(&mut self) {
        let partitions = &self.partitions;
        let rolls_while_syncing = self.flush_partitions.iter().any(|&partition| {
            let hosted = &partitions[partition as usize];
            self.checkpoint_syncing.contains(&partition)
                && hosted.log.as_ref().is_some_and(|log| {
                    log.rolls_before(hosted.encoded[self.flush_parity].bytes.len())
                })
        });
        if rolls_while_syncing {
            self.advance_checkpoint(true);
        }
    }

    /// The storage submission of a flush and its outcome per partition; returns the
    /// microseconds spent on the next flush in its shadow.
    fn write_placed(&mut self, shadow: Option<&mut super::Inbox>) -> u64 {
        let placed = self.place_and_journal();
        let mut shadow_us = 0;
        // The ops borrow the logs' staged bytes; the vector itself is the shard's, reused.
        let mut ops: Vec<WriteOp<'_>> = std::mem::take(&mut self.write_ops);
        let mut writing = std::mem::take(&mut self.writing_partitions);
        debug_assert!(ops.is_empty() && writing.is_empty());
        // With a journal only its write is in the flush: the segments get their staged
        // batches after the acks (`write_full_stages`). Without one, every batch is written
        // and synced here.
        if self.journal.is_none() {
            stage_writes(&self.partitions, &placed, (0, true), &mut ops, &mut writing);
        }
        // Two flushes in flight: the journal's sync runs while the shard acknowledges the
        // flush before and gathers and encodes the one after; worth the ring's wake-ups
        // only when there is enough of that work.
        let durable_before = self.next.state == NextState::Written;
        let work_in_shadow = durable_before
            || shadow
                .as_deref()
                .is_some_and(|inbox| self.next_worth_encoding(inbox));
        if self.journal.is_some() && !placed.is_empty() && work_in_shadow {
            // With a journal, its write is the flush's only one.
            debug_assert!(ops.is_empty());
            self.write_ops = recycle_ops(ops);
            let started = match self.journal.as_ref() {
                Some(journal) => self.storage.start_synced_write(&journal.write_op()),
                None => Err(std::io::Error::other("no journal")),
            };
            let synced = started.and_then(|()| {
                shadow_us = self.work_in_sync_shadow(shadow);
                self.storage.finish_synced_write()
            });
            self.flush_results.clear();
            self.flush_results.push(synced);
        } else {
            if let Some(journal) = self.journal.as_ref() {
                ops.push(journal.write_op());
            }
            self.storage.write_durable(&ops, &mut self.flush_results);
            self.write_ops = recycle_ops(ops);
        }
        let journaled = if self.journal.is_some() {
            self.journal_written(writing.len())
        } else {
            Ok(())
        };
        // One syncfs covered the whole flush.
        if self.fsync_scope == FsyncScope::Filesystem && !writing.is_empty() {
            self.metrics.syncs += 1;
        }
        self.stages_written(&writing, "");
        writing.clear();
        self.writing_partitions = writing;
        for &partition in &placed {
            let hosted = &mut self.partitions[partition as usize];
            if let Err(reason) = &journaled {
                hosted.fail_closed(partition, reason.clone(), &self.failed);
            }
            if hosted.failure.is_some() {
                continue;
            }
            let encoded = &mut hosted.encoded[self.flush_parity];
            if let (Some(log), Some(last)) = (hosted.log.as_mut(), encoded.last_offset()) {
                debug_assert_eq!(encoded.base_offset, log.next_offset());
                log.commit_append(encoded.bytes.len(), last);
                encoded.durable = true;
                self.metrics.batches += 1;
                self.metrics.records += u64::from(encoded.records);
                self.metrics.bytes += encoded.bytes.len() as u64;
            }
        }
        self.placed_partitions = placed;
        shadow_us
    }

    /// Places each partition's batch in its log (rolling segments as needed) and stages it
    /// there, and with a journal adds its entry. Returns the partitions placed (the shard's
    /// reused vector; `write_placed` gives it back).
    fn place_and_journal(&mut self) -> Vec<u32> {
        let mut placed = std::mem::take(&mut self.placed_partitions);
        placed.clear();
        if let Some(journal) = self.journal.as_mut() {
            journal.begin_flush();
        }
        for &partition in &self.flush_partitions {
            let hosted = &mut self.partitions[partition as usize];
            // Recovery's torn-tail window relies on this bound (GroupCommitBatch::try_add).
            let encoded = &mut hosted.encoded[self.flush_parity];
            assert!(encoded.bytes.len() <= crate::log::reader::PARTITION_FLUSH_BYTES_MAX);
            encoded.durable = false;
            // A partition failed closed since the batch was encoded takes nothing more.
            let Some(log) = hosted.log.as_mut().filter(|_| hosted.failure.is_none()) else {
                continue;
            };
            match log.prepare_append(self.storage.as_mut(), encoded.bytes.len()) {
                Ok((_file, position)) => {
                    encoded.place(log.next_offset());
                    log.stage(&encoded.bytes);
                    placed.push(partition);
                    if let Some(journal) = self.journal.as_mut() {
                        let segment = log.active_base_offset();
                        journal.add(partition, segment, position, &encoded.bytes);
                        self.journal_dirty[partition as usize] = true;
                    }
                }
                Err(error) => {
                    let reason = format!("rolling a segment: {error}");
                    hosted.fail_closed(partition, reason, &self.failed);
                }
            }
        }
        placed
    }

    /// Applies the slot's flush to the partitions' caches and segment tables where it was
    /// durable, then answers every request of its batch: Ok where durable, the partition's
    /// failure where not.
    pub(super) fn apply_and_ack(&mut self, slot: Slot) {
        let (batch, parity, timestamp_ms) = match slot {
            Slot::Current => (&mut self.batch, self.flush_parity, self.flush_timestamp_ms),
            Slot::Next => {
                debug_assert!(self.next.state == NextState::Written);
                self.next.state = NextState::Empty;
                let next = &mut self.next;
                (&mut next.batch, next.parity, next.timestamp_ms)
            }
        };
        let dead_records = apply_to_caches(
            batch,
            &mut self.partitions,
            (parity, timestamp_ms),
            &mut self.metrics.tombstones,
        );
        if dead_records {
            self.maintenance.note_maybe_dirty();
        }
        let now = Instant::now();
        for commit in batch.requests.drain(..) {
            let hosted = &self.partitions[commit.offsets_partition as usize];
            let result = match (hosted.encoded[parity].durable, &hosted.failure) {
                (true, _) => {
                    self.metrics.commits += 1;
                    self.metrics.partition_offsets += commit.offsets().len() as u64;
                    let waited_us = now.duration_since(commit.accepted).as_micros() as u64;
                    ShardMetrics::record_latency(&mut self.metrics.commit_latency_us, waited_us);
                    Ok(())
                }
                (false, failure) => {
                    self.metrics.commit_errors += 1;
                    Err(Error::PartitionFailed {
                        partition: commit.offsets_partition,
                        reason: failure.clone().unwrap_or_else(|| "not written".into()),
                    })
                }
            };
            self.pools
                .commits
                .answer_deferred(commit, result, &mut self.wakes);
        }
        self.wakes.wake_all();
        batch.clear();
    }
}

/// Applies a durable flush's offsets (`batch`, in the flush slot `parity`, committed at
/// `timestamp_ms`) to the caches of the partitions it was durable for, and charges the
/// records they replace as dead in the partitions' segment tables. Returns whether any
/// record died.
fn apply_to_caches(
    batch: &GroupCommitBatch,
    partitions: &mut [HostedPartition],
    (parity, timestamp_ms): (usize, i64),
    tombstones: &mut u64,
) -> bool {
    let mut dead_records = false;
    batch.for_each_partition(|partition, latest| {
        let hosted = &mut partitions[partition as usize];
        let encoded = &hosted.encoded[parity];
        let (true, Some(cache)) = (encoded.durable, hosted.cache.as_mut()) else {
            return;
        };
        // A partition failed closed since (by a later flush) keeps serving what it
        // holds, this flush included; its segment table went with its log.
        let mut table = hosted.log.as_mut().map(|log| log.table_mut());
        let mut records = (encoded.base_offset..).zip(latest).peekable();
        while let Some((record_offset, (group, pending))) = records.next() {
            // Validation bounds the partition below the cache's limit, so no cache call
            // can fail for a commit that got this far.
            if pending.tombstone {
                *tombstones += 1;
                if let Some(table) = table.as_deref_mut() {
                    table.mark_dead(record_offset);
                    table.note_tombstone(record_offset, timestamp_ms);
                }
                let key = OffsetKey {
                    group,
                    topic: &pending.topic,
                    partition: pending.partition,
                };
                note_replaced(table.as_deref_mut(), &mut dead_records, cache.take(key));
                continue;
            }
            // The batch is sorted by group and topic: the run of this (group, topic)'s
            // updates that follows shares one lookup.
            let Ok(mut writer) = cache.topic_writer(group, &pending.topic, pending.partition)
            else {
                debug_assert!(false, "a validated partition refused by the cache");
                continue;
            };
            let value = |pending| offset_value(pending, timestamp_ms);
            let replaced = writer.replace(pending.partition, value(pending), record_offset as u64);
            note_replaced(table.as_deref_mut(), &mut dead_records, replaced);
            let same_topic = |(_, (next_group, next)): &(i64, (&str, &PendingOffset))| {
                !next.tombstone && *next_group == group && next.topic == pending.topic
            };
            while let Some((record_offset, (_, next))) = records.next_if(same_topic) {
                let replaced = writer.replace(next.partition, value(next), record_offset as u64);
                note_replaced(table.as_deref_mut(), &mut dead_records, replaced);
            }
        }
    });
    dead_records
}

/// The cache's value for a committed offset.
fn offset_value(pending: &PendingOffset, commit_timestamp_ms: i64) -> OffsetValueRef<'_> {
    OffsetValueRef {
        offset: pending.offset,
        leader_epoch: pending.leader_epoch.unwrap_or(-1),
        commit_timestamp_ms,
        expire_timestamp_ms: pending.expire_timestamp_ms,
        metadata: &pending.metadata,
    }
}

/// Accounts for a cache update: the record it replaced (if any) is now dead.
fn note_replaced(
    table: Option<&mut SegmentTable>,
    dead_records: &mut bool,
    replaced: Result<Option<u64>>,
) {
    debug_assert!(replaced.is_ok());
    if let (Ok(Some(old)), Some(table)) = (replaced, table) {
        table.mark_dead(old as i64);
        *dead_records = true;
    }
}

/// Adds a write of each of `which` partitions' staged bytes when there are any and at least
/// `bytes_min` of them (synced when `sync`) to `ops`, and the partition to `writing`.
fn stage_writes<'a>(
    partitions: &'a [HostedPartition],
    which: &[u32],
    (bytes_min, sync): (usize, bool),
    ops: &mut Vec<WriteOp<'a>>,
    writing: &mut Vec<u32>,
) {
    for &partition in which {
        let Some(log) = partitions[partition as usize].log.as_ref() else {
            continue;
        };
        let (file, position, bytes) = log.staged_write();
        if !bytes.is_empty() && bytes.len() >= bytes_min {
            writing.push(partition);
            ops.push(WriteOp {
                file,
                position,
                bytes,
                sync,
            });
        }
    }
}

/// Empties a flush's write ops and keeps their buffer for the next flush. The ops borrowed
/// the flush's encoded batches; once cleared no borrow is left, and collecting the empty
/// iterator into the `'static` element type reuses the allocation in place (same layout).
fn recycle_ops(mut ops: Vec<WriteOp<'_>>) -> Vec<WriteOp<'static>> {
    ops.clear();
    ops.into_iter()
        .map(|_| unreachable!("the vector was just cleared"))
        .collect()
}
