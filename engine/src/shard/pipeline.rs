//! Two flushes in flight (docs/architecture.md, "Two flushes in flight"): the shard's
//! second flush slot, and the work done in the shadow of a flush's journal sync, which is
//! applying and acknowledging the flush before it, then gathering and encoding the one
//! after.

use std::time::Instant;

use super::flush::Slot;
use super::group_commit::GroupCommitBatch;
use super::{Shard, wall_clock_ms};

/// Most flushes one turn of the shard's loop keeps in flight back to back. Each flush of
/// such a run is applied and acknowledged while the next one syncs; the turn ends with
/// its last one applied, so the work between turns (compaction steps, group timers, held
/// requests) only ever sees applied flushes.
pub(super) const PIPELINED_FLUSHES_PER_TURN_MAX: u32 = 8;

/// What the shard's second flush slot holds (see [`NextFlush`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum NextState {
    /// Nothing: free to gather into.
    Empty,
    /// A batch gathered and encoded while the flush before it synced, to be placed next.
    Encoded,
    /// The flush before the current one, its write finished (durable, or failed for some
    /// partitions), not yet applied to the caches nor answered; that happens while the
    /// current one syncs.
    Written,
}

/// The shard's second flush slot, beside the current one (`Shard::batch`,
/// `flush_partitions`): two flushes in flight. While the journal syncs the current flush,
/// the slot's durable flush (the one before) is applied and acknowledged, then the slot
/// gathers and encodes the one after. An encoded batch is placed, and so given its
/// offsets, only once the flush before it is durable: a failed flush never has a later
/// one's commits on disk ahead of it, and the offsets follow on from what the logs hold (a
/// partition that failed meanwhile refuses its commits at placement).
pub(super) struct NextFlush {
    pub(super) batch: GroupCommitBatch,
    /// Its partitions with an encoded batch.
    pub(super) partitions: Vec<u32>,
    pub(super) timestamp_ms: i64,
    /// Which of each partition's two encoded batches
    /// ([`EncodedBatch`](super::flush::EncodedBatch)) is this slot's.
    pub(super) parity: usize,
    pub(super) state: NextState,
}

impl NextFlush {
    pub(super) fn new(partitions: usize, group_commit_bytes_max: usize) -> NextFlush {
        NextFlush {
            batch: GroupCommitBatch::new(partitions, group_commit_bytes_max),
            partitions: Vec::with_capacity(partitions),
            timestamp_ms: 0,
            parity: 1,
            state: NextState::Empty,
        }
    }

    /// Whether a batch is encoded and waits to be flushed.
    pub(super) fn is_encoded(&self) -> bool {
        self.state == NextState::Encoded
    }
}

impl Shard {
    /// Makes the encoded next flush the current one.
    pub(super) fn promote_next(&mut self) {
        debug_assert!(self.next.state == NextState::Encoded && self.batch.is_empty());
        self.swap_slots();
        self.next.state = NextState::Empty;
    }

    pub(super) fn swap_slots(&mut self) {
        std::mem::swap(&mut self.batch, &mut self.next.batch);
        std::mem::swap(&mut self.flush_partitions, &mut self.next.partitions);
        std::mem::swap(&mut self.flush_timestamp_ms, &mut self.next.timestamp_ms);
        std::mem::swap(&mut self.flush_parity, &mut self.next.parity);
    }

    /// Whether the next flush is worth gathering and encoding while this one's journal
    /// syncs: enough requests wait, nothing is held back for an empty pipeline (a request
    /// other than a commit, a stop, a retention check due).
    pub(super) fn next_worth_encoding(&self, inbox: &super::Inbox) -> bool {
        inbox.held.is_none()
            && !inbox.stopping
            && self.next.state != NextState::Encoded
            && (inbox.carry.is_some() || inbox.requests.len() >= self.overlap_requests_min)
            && !self.maintenance.retention_check_due(Instant::now())
    }

    /// Whether work that runs between the loop's turns is due (a compaction step earned,
    /// group timers or records waiting): the turn's run of flushes in flight ends, so it
    /// runs with every flush applied.
    pub(super) fn maintenance_due(&self) -> bool {
        self.compaction_step_earned() || self.groups_due()
    }

    /// In the shadow of the current flush's journal sync: applies and acknowledges the
    /// flush before it if it waits, then, when `inbox` is given and worth it, takes the
    /// commits waiting there into the next batch (up to the first other request, which is
    /// held, or a full batch) and encodes it. Returns the microseconds it took.
    pub(super) fn work_in_sync_shadow(&mut self, inbox: Option<&mut super::Inbox>) -> u64 {
        let started = Instant::now();
        if self.next.state == NextState::Written {
            self.apply_and_ack(Slot::Next);
            self.metrics.flushes_acked_in_shadow += 1;
        }
        let Some(inbox) = inbox.filter(|inbox| self.next_worth_encoding(inbox)) else {
            return started.elapsed().as_micros() as u64;
        };
        debug_assert!(self.next.state == NextState::Empty && self.next.batch.is_empty());
        if let Some(commit) = inbox.carry.take() {
            let added = self.next.batch.try_add(commit);
            debug_assert!(added.is_ok(), "an empty batch takes any commit");
        }
        // Bounded: at most the inbox's capacity of requests (fenced commits do not fill
        // the batch), stopping at the first that is not a commit or does not fit.
        let requests_max = inbox.requests.capacity().unwrap_or(1);
        for _ in 0..requests_max {
            match inbox.requests.try_recv() {
                Ok(super::Request::Commit(commit)) => {
                    let Some(commit) = self.fence_commit(commit) else {
                        continue;
                    };
                    if let Err(commit) = self.next.batch.try_add(commit) {
                        inbox.carry = Some(commit);
                        break;
                    }
                }
                Ok(request) => {
                    inbox.held = Some(request);
                    break;
                }
                // Empty, or every sender gone: the next gather sees which.
                Err(_) => break,
            }
        }
        if !self.next.batch.is_empty() {
            self.next.timestamp_ms = wall_clock_ms();
            self.encode(Slot::Next);
            if !self.next.batch.is_empty() {
                self.next.state = NextState::Encoded;
                self.metrics.flushes_encoded_in_shadow += 1;
            }
        }
        started.elapsed().as_micros() as u64
    }
}
