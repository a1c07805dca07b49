//! The shard's side of the journal (`FsyncScope::Journal`, see [`crate::journal`]): room for
//! each flush, the checkpoint spread over the flushes that follow a rotation, and what a
//! failed journal write or segment sync means for the partitions.

use super::{HostedPartition, Shard, recycle_ops};
use crate::storage::WriteOp;

/// Segment syncs of a checkpoint one flush carries. A full journal file leaves up to one
/// segment per partition to sync; spreading them keeps any one flush from waiting on all of
/// them (the file that follows takes many flushes to fill, so the checkpoint ends long
/// before the next rotation).
pub(super) const CHECKPOINT_SYNCS_PER_FLUSH_MAX: usize = 2;

impl Shard {
    /// Makes room in the journal for this flush, rotating when the file is full or failed
    /// (or starting the first file).
    /// Returns false when the flush cannot be journaled: its partitions are failed closed,
    /// as a failed sync would leave them.
    pub(super) fn prepare_journal(&mut self) -> bool {
        let partitions = &self.partitions;
        let payload_bytes: usize = self
            .flush_partitions
            .iter()
            .map(|&p| partitions[p as usize].encoded.len())
            .sum();
        let entries = self.flush_partitions.len();
        let fits = |shard: &Shard| {
            shard
                .journal
                .as_ref()
                .is_some_and(|journal| journal.fits(entries, payload_bytes))
        };
        if self.journal_unavailable.is_none() && !fits(self) {
            self.rotate_journal();
        }
        let reason = match &self.journal_unavailable {
            Some(reason) => reason.clone(),
            None if fits(self) => return true,
            None => format!("a flush of {payload_bytes} bytes does not fit in a journal file"),
        };
        for &partition in &self.flush_partitions {
            let hosted = &mut self.partitions[partition as usize];
            if hosted.failure.is_none() {
                hosted.failure = Some(format!("journal: {reason}"));
            }
        }
        false
    }

    /// Starts a new journal file (the first, at the first flush). A checkpoint still in
    /// progress is finished first. The
    /// segments written while the full file was current become the new checkpoint's work;
    /// a failed file needs none (it is kept for the next open instead).
    fn rotate_journal(&mut self) {
        let Some(journal) = self.journal.as_ref() else {
            return;
        };
        if journal.has_previous() {
            self.sync_checkpoint_now();
        }
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let failed = journal.failed();
        let checkpoint = journal.has_file();
        debug_assert!(self.checkpoint_pending.is_empty());
        for (partition, dirty) in self.journal_dirty.iter_mut().enumerate() {
            if !std::mem::take(dirty) {
                continue;
            }
            if self.partitions[partition].log.is_none() {
                // Failed closed: the data it acked meanwhile lives only in this file.
                journal.retain_current();
            } else if !failed {
                self.checkpoint_pending.push(partition as u32);
            }
        }
        self.metrics.journal_checkpoints += u64::from(checkpoint);
        if let Err(error) = journal.rotate(self.storage.as_mut()) {
            self.checkpoint_pending.clear();
            self.journal_unavailable = Some(format!("starting a new journal file: {error}"));
            return;
        }
        if self.checkpoint_pending.is_empty() {
            finish_previous(self);
        }
    }

    /// Whether a checkpoint is in progress (an idle shard finishes it).
    pub(super) fn checkpoint_in_progress(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|journal| journal.has_previous())
    }

    /// Finishes the checkpoint in progress at once: every pending segment synced in one
    /// submission (when the next rotation comes before it is done).
    fn sync_checkpoint_now(&mut self) {
        self.checkpoint_step(self.checkpoint_pending.len());
    }

    /// Syncs up to `syncs_max` pending segments in one submission, and removes the previous
    /// journal file when none is left. An idle shard calls this between looks at its inbox.
    pub(super) fn checkpoint_step(&mut self, syncs_max: usize) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let mut ops: Vec<WriteOp<'_>> = std::mem::take(&mut self.write_ops);
        self.checkpoint_ops.clear();
        let first = self.checkpoint_pending.len().saturating_sub(syncs_max);
        for partition in self.checkpoint_pending.drain(first..) {
            match sync_op(&self.partitions[partition as usize]) {
                Some(op) => {
                    self.checkpoint_ops.push((partition, ops.len()));
                    ops.push(op);
                }
                None => journal.retain_previous(),
            }
        }
        self.storage.write_durable(&ops, &mut self.flush_results);
        self.write_ops = recycle_ops(ops);
        self.checkpoint_outcome(0);
        if self.checkpoint_pending.is_empty() {
            finish_previous(self);
        }
    }

    /// The outcome of a flush's journal write (its result at `journal_index`, after the
    /// partitions' writes) and of the checkpoint syncs the flush carried. Leaves only the
    /// partitions' results in `flush_results`.
    pub(super) fn journal_written(&mut self, journal_index: usize) -> Result<(), String> {
        let result = match self.flush_results.get(journal_index) {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => Err(std::io::Error::new(error.kind(), error.to_string())),
            None => Err(std::io::Error::other("no result for the journal write")),
        };
        self.metrics.syncs += 1;
        if let Some(journal) = self.journal.as_mut() {
            journal.written(&result);
        }
        self.checkpoint_outcome(journal_index + 1);
        self.flush_results.truncate(journal_index);
        if self.checkpoint_pending.is_empty() {
            finish_previous(self);
        }
        result.map_err(|error| format!("journal: {error}"))
    }

    /// Applies the results of this flush's checkpoint syncs. Ops from `own_ops_from` on
    /// were syncs alone: a failure there fails the partition closed (a partition's own
    /// write with its sync fails it on the write path already). Any failure keeps the
    /// previous journal file for the next open.
    fn checkpoint_outcome(&mut self, own_ops_from: usize) {
        for &(partition, index) in &self.checkpoint_ops {
            let failed = self.flush_results.get(index).is_none_or(Result::is_err);
            self.metrics.syncs += 1;
            if !failed {
                continue;
            }
            if let Some(journal) = self.journal.as_mut() {
                journal.retain_previous();
            }
            if index >= own_ops_from {
                let hosted = &mut self.partitions[partition as usize];
                hosted.failure = Some("journal checkpoint: segment sync failed".to_string());
                if let Some(log) = hosted.log.take() {
                    log.abandon(self.storage.as_mut());
                }
            }
        }
        self.checkpoint_ops.clear();
    }
}

/// Removes the previous journal file once its checkpoint is done. A removal that fails
/// leaves the file for the next open, whose redo rewrites bytes already durable.
fn finish_previous(shard: &mut Shard) {
    if let Some(journal) = shard.journal.as_mut()
        && journal.has_previous()
    {
        let _kept_for_the_next_open = journal.finish_previous(shard.storage.as_mut());
    }
}

/// A segment's sync alone, if the partition still has its log.
fn sync_op(hosted: &HostedPartition) -> Option<WriteOp<'static>> {
    hosted.log.as_ref().map(|log| WriteOp {
        file: log.active_file(),
        position: 0,
        bytes: &[],
        sync: true,
    })
}

/// Adds up to [`CHECKPOINT_SYNCS_PER_FLUSH_MAX`] pending checkpoint syncs to a flush's ops
/// (after its journal write): a pending partition in the flush has its write synced, any
/// other gets a sync alone. Records each as (partition, op index) in `checkpoint_ops`.
/// Returns whether a pending partition had failed closed (the previous file must be kept).
pub(super) fn add_checkpoint_syncs(
    ops: &mut Vec<WriteOp<'_>>,
    placed: &[u32],
    pending: &mut Vec<u32>,
    checkpoint_ops: &mut Vec<(u32, usize)>,
    partitions: &[HostedPartition],
) -> bool {
    debug_assert!(checkpoint_ops.is_empty());
    let mut lost = false;
    for _ in 0..CHECKPOINT_SYNCS_PER_FLUSH_MAX {
        let Some(partition) = pending.pop() else {
            break;
        };
        if let Some(index) = placed.iter().position(|&p| p == partition) {
            ops[index].sync = true;
            checkpoint_ops.push((partition, index));
            continue;
        }
        match sync_op(&partitions[partition as usize]) {
            Some(op) => {
                checkpoint_ops.push((partition, ops.len()));
                ops.push(op);
            }
            None => lost = true,
        }
    }
    lost
}
