//! The shard's side of the journal (`FsyncScope::Journal`, see [`crate::journal`]): room for
//! each flush, the checkpoint that syncs the segments in the background after a rotation,
//! and what a failed journal write or segment sync means for the partitions.

use super::maintenance::COMPACTION_SYNC_TOKEN_BIT;
use super::{Shard, ShardMetrics};
use crate::compact::job::COMPACTION_SYNCS_MAX;
use crate::storage::BACKGROUND_SYNCS_MAX;

/// Background syncs a checkpoint keeps in flight: the storage's bound less the compactor's
/// slot, so a compaction's sync never finds the storage full.
const CHECKPOINT_SYNCS_MAX: usize = BACKGROUND_SYNCS_MAX - COMPACTION_SYNCS_MAX;

/// How long an idle shard waits on its inbox while checkpoint syncs are in flight before it
/// looks at their completions again.
pub(super) const CHECKPOINT_POLL_INTERVAL: std::time::Duration =
    std::time::Duration::from_millis(1);

/// Token bit of a checkpoint's directory sync; the low bits are the partition. A segment
/// sync's token is the partition alone.
const DIR_SYNC_TOKEN_BIT: u64 = 1 << 32;

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
            .map(|&p| {
                partitions[p as usize].encoded[self.flush_parity]
                    .bytes
                    .len()
            })
            .sum();
        let entries = self.flush_partitions.len();
        let fits = |shard: &Shard| {
            shard
                .journal
                .as_ref()
                .is_some_and(|journal| journal.fits(entries, payload_bytes))
        };
        if self.journal_unavailable.is_none() && !fits(self) {
            // Timed only where a file was full: the first file's start is no checkpoint.
            let switch = self
                .journal
                .as_ref()
                .is_some_and(|journal| journal.has_file());
            let started = std::time::Instant::now();
            self.rotate_journal();
            if switch {
                let switch_us = started.elapsed().as_micros() as u64;
                ShardMetrics::record_latency(&mut self.metrics.journal_rotation_us, switch_us);
            }
        }
        let reason = match &self.journal_unavailable {
            Some(reason) => reason.clone(),
            None if fits(self) => return true,
            None => format!("a flush of {payload_bytes} bytes does not fit in a journal file"),
        };
        for &partition in &self.flush_partitions {
            let hosted = &mut self.partitions[partition as usize];
            hosted.fail_closed(partition, format!("journal: {reason}"), &self.failed);
        }
        false
    }

    /// Starts a new journal file (the first, at the first flush). A checkpoint still in
    /// progress is finished first (waiting for its syncs). The segments written while the
    /// full file was current become the new checkpoint's work; a failed file needs none (it
    /// is kept for the next open instead).
    fn rotate_journal(&mut self) {
        if self.checkpoint_in_progress() {
            self.finish_checkpoint();
        }
        if self.checkpoint_in_progress() {
            self.journal_unavailable = Some("a journal checkpoint could not finish".into());
            return;
        }
        let live_bytes = self.live_bytes_estimate();
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let failed = journal.failed();
        let checkpoint = journal.has_file();
        debug_assert!(self.checkpoint_pending.is_empty() && self.checkpoint_syncing.is_empty());
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
        if let Err(error) = journal.rotate(self.storage.as_mut(), live_bytes) {
            // The full file stays current and holds what its segments have not synced: keep
            // it for the next open.
            journal.retain_current();
            self.checkpoint_pending.clear();
            self.journal_unavailable = Some(format!("starting a new journal file: {error}"));
            return;
        }
        self.advance_checkpoint(false);
    }

    /// Estimated live bytes of the partitions this shard hosts (sizes its journal files).
    fn live_bytes_estimate(&self) -> u64 {
        let logs = self
            .partitions
            .iter()
            .filter_map(|hosted| hosted.log.as_ref());
        logs.map(|log| log.live_bytes_estimate()).sum()
    }

    /// Whether a checkpoint is in progress (the previous journal file still exists).
    pub(super) fn checkpoint_in_progress(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|journal| journal.has_previous())
    }

    /// Whether checkpoint syncs are running in the background (an idle shard polls them).
    pub(super) fn checkpoint_syncing(&self) -> bool {
        !self.checkpoint_syncing.is_empty()
    }

    /// Finishes the checkpoint in progress, waiting for its syncs.
    pub(super) fn finish_checkpoint(&mut self) {
        // Bounded: each round starts up to CHECKPOINT_SYNCS_MAX pending syncs and waits for
        // every one in flight, and a partition needs at most two (its segment's, then its
        // directory's), so at most twice as many rounds as partitions take an outcome.
        while self.checkpoint_in_progress() {
            if self.advance_checkpoint(true) == 0 && self.checkpoint_in_progress() {
                break; // cannot progress (a storage that refuses syncs): leave it to close
            }
        }
    }

    /// Moves the checkpoint on without blocking (unless `wait`): takes the outcomes of the
    /// segment syncs that finished, starts pending ones up to [`CHECKPOINT_SYNCS_MAX`], and
    /// removes the previous journal file when every segment it covered is synced. The
    /// shard's flushes and commits never wait for these syncs. Called after every flush and
    /// by an idle shard. Returns how many sync outcomes it took.
    pub(super) fn advance_checkpoint(&mut self, wait: bool) -> usize {
        if self.checkpoint_in_progress() {
            self.start_checkpoint_syncs();
        }
        let mut done = std::mem::take(&mut self.checkpoint_done);
        self.storage.reap_background_syncs(wait, &mut done);
        let outcomes = done.len();
        for (token, result) in done.drain(..) {
            if token & COMPACTION_SYNC_TOKEN_BIT != 0 {
                self.maintenance.sync_finished(token, result);
                continue;
            }
            let partition = token as u32;
            let Some(index) = self.checkpoint_syncing.iter().position(|&p| p == partition) else {
                continue; // unloaded meanwhile (closing synced it)
            };
            match result {
                Err(error) => {
                    self.checkpoint_syncing.swap_remove(index);
                    self.checkpoint_failed(partition, &error.to_string());
                }
                Ok(()) if token & DIR_SYNC_TOKEN_BIT == 0 => {
                    // The segment is synced; its directory next, if a roll owes it. The
                    // partition stays in `checkpoint_syncing` until that is done too.
                    if !self.start_dir_sync_if_owed(partition) {
                        self.checkpoint_syncing.swap_remove(index);
                    }
                }
                Ok(()) => {
                    self.checkpoint_syncing.swap_remove(index);
                    if let Some(log) = self.partitions[partition as usize].log.as_mut() {
                        log.dir_sync_finished(true);
                    }
                }
            }
        }
        self.checkpoint_done = done;
        if self.checkpoint_in_progress()
            && self.checkpoint_pending.is_empty()
            && self.checkpoint_syncing.is_empty()
        {
            finish_previous(self);
        }
        outcomes
    }

    /// Starts background syncs of pending segments, up to the storage's bound.
    fn start_checkpoint_syncs(&mut self) {
        while self.checkpoint_syncing.len() < CHECKPOINT_SYNCS_MAX {
            let Some(partition) = self.checkpoint_pending.pop() else {
                break;
            };
            let Some(log) = self.partitions[partition as usize].log.as_mut() else {
                // Failed closed: the data it acked while the file was current lives there.
                if let Some(journal) = self.journal.as_mut() {
                    journal.retain_previous();
                }
                continue;
            };
            // The sync covers what the segment file holds: the staged batches go first. They
            // are written here, a few partitions after each flush, not all at the rotation:
            // there, up to 64 KiB per partition written at once held the rotating flush for
            // 1–3 ms with 50 partitions (benchmarks.md). Batches staged since the rotation
            // go too, which only syncs more than the checkpoint needs.
            let file = log.active_file();
            let started = log.write_staged(self.storage.as_mut()).and_then(|()| {
                self.storage
                    .start_background_sync(file, u64::from(partition))
            });
            match started {
                Ok(()) => {
                    self.metrics.syncs += 1;
                    self.checkpoint_syncing.push(partition);
                }
                Err(error) => self.checkpoint_failed(partition, &error.to_string()),
            }
        }
    }

    /// Starts the background sync of `partition`'s directory if a roll left a segment's
    /// name to the checkpoint ([`PartitionLog::dir_sync_owed`]); returns whether one runs.
    /// The checkpoint retires its journal file only after this: until then redo recreates
    /// a segment whose name a crash lost. Runs in the slot the segment's sync just freed.
    ///
    /// [`PartitionLog::dir_sync_owed`]: crate::log::PartitionLog::dir_sync_owed
    fn start_dir_sync_if_owed(&mut self, partition: u32) -> bool {
        let Some(log) = self.partitions[partition as usize].log.as_mut() else {
            return false;
        };
        if !log.dir_sync_owed() {
            return false;
        }
        log.dir_sync_started();
        let token = DIR_SYNC_TOKEN_BIT | u64::from(partition);
        match self.storage.start_background_dir_sync(log.dir(), token) {
            Ok(()) => {
                self.metrics.syncs += 1;
                true
            }
            Err(error) => {
                self.checkpoint_failed(partition, &format!("directory sync: {error}"));
                false
            }
        }
    }

    /// A segment's checkpoint sync failed: never retried, the partition fails closed and
    /// the previous journal file is kept for the next open.
    fn checkpoint_failed(&mut self, partition: u32, reason: &str) {
        if let Some(journal) = self.journal.as_mut() {
            journal.retain_previous();
        }
        let hosted = &mut self.partitions[partition as usize];
        let reason = format!("journal checkpoint: {reason}");
        hosted.fail_closed(partition, reason, &self.failed);
        if let Some(log) = hosted.log.take() {
            log.abandon(self.storage.as_mut());
        }
    }

    /// The outcome of a flush's journal write (its result at `journal_index`, after the
    /// partitions' writes). Leaves only the partitions' results in `flush_results`.
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
        self.flush_results.truncate(journal_index);
        result.map_err(|error| format!("journal: {error}"))
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
