//! Per-shard counters and latency histograms, read through [`Engine::metrics`].
//!
//! [`Engine::metrics`]: crate::Engine::metrics

use hdrhistogram::Histogram;

use crate::compact::CompactionMetrics;
use crate::shard::PartitionSpace;

/// Highest latency the histograms track exactly (60 s); longer ones are recorded as this.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits kept by the histograms.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// A snapshot of one shard's metrics.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    /// The shard's index.
    pub shard: usize,
    /// Commit requests acknowledged durable.
    pub commits: u64,
    /// Commit requests failed (timeout, failed partition).
    pub commit_errors: u64,
    /// Partition offsets in acknowledged requests (before coalescing).
    pub partition_offsets: u64,
    /// Flushes (group commits) performed.
    pub flushes: u64,
    /// Flushes gathered and encoded while the one before waited for its journal sync (two
    /// flushes in flight; `FsyncScope::Journal` only).
    pub flushes_encoded_in_shadow: u64,
    /// Flushes applied and acknowledged while the next one's journal synced.
    pub flushes_acked_in_shadow: u64,
    /// Batches written, one per dirty partition per flush.
    pub batches: u64,
    /// Records written, after coalescing.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Data syncs issued: one per batch (`FsyncScope::File`), one `syncfs` per flush
    /// (`FsyncScope::Filesystem`), or one journal `fdatasync` per flush plus one per segment
    /// at each journal checkpoint (`FsyncScope::Journal`).
    pub syncs: u64,
    /// Journal checkpoints: segments synced and a new journal file started.
    pub journal_checkpoints: u64,
    /// Duration of each switch from a full journal file to a new one, in µs: finishing the
    /// previous checkpoint (waiting for its segments' background syncs) and starting the
    /// next (a switch that fails is timed too; the first file's start is not). The shard
    /// runs no flush meanwhile.
    pub journal_rotation_us: Histogram<u64>,
    /// Active segments rolled early because they were dirty enough for the compactor
    /// (after a flush's acks; rolls of a full segment are not counted).
    pub dirty_rolls: u64,
    /// Duration of each dirty roll (the sealed segment's sync, the next segment's
    /// creation), in µs. The shard runs no flush meanwhile.
    pub dirty_roll_us: Histogram<u64>,
    /// Requests waiting in the shard's inbox when the snapshot was taken.
    pub queue_depth: usize,
    /// Retired offset-cache memory (old metadata strings, replaced arrays and tables) not yet
    /// freed because a reader may still hold it, when the snapshot was taken. An idle shard
    /// frees it; a value that stays high means a reader keeps a `ReadGuard` too long.
    pub cache_garbage_pending: usize,
    /// Time from the start of a flush's writes to the last completion, in µs.
    pub flush_latency_us: Histogram<u64>,
    /// Time from a request's acceptance to its acknowledgement, in µs.
    pub commit_latency_us: Histogram<u64>,
    /// Offset commit tombstones written (deleted offsets and groups, expiries).
    pub tombstones: u64,
    /// Offsets expired by retention (each also an `EngineEvent::OffsetsExpired`).
    pub offsets_expired: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// The compactor's counters.
    pub compaction: CompactionMetrics,
    /// Duration of each compaction step, in µs.
    pub compaction_step_us: Histogram<u64>,
    /// Log bytes and estimated live bytes of each hosted partition (space amplification).
    pub partitions: Vec<PartitionSpace>,
}

impl ShardMetrics {
    /// Milliseconds since the last finished compaction at `now_ms`, `None` if none yet.
    pub fn ms_since_last_compaction(&self, now_ms: i64) -> Option<i64> {
        let last = self.compaction.last_success_ms;
        (last > 0).then(|| now_ms.saturating_sub(last))
    }
}

impl ShardMetrics {
    pub(crate) fn new(shard: usize) -> ShardMetrics {
        let histogram = || {
            // Constant, valid bounds: creation cannot fail (checked by the unit test below).
            Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid")
        };
        ShardMetrics {
            shard,
            commits: 0,
            commit_errors: 0,
            partition_offsets: 0,
            flushes: 0,
            flushes_encoded_in_shadow: 0,
            flushes_acked_in_shadow: 0,
            batches: 0,
            records: 0,
            bytes: 0,
            syncs: 0,
            journal_checkpoints: 0,
            journal_rotation_us: histogram(),
            dirty_rolls: 0,
            dirty_roll_us: histogram(),
            queue_depth: 0,
            cache_garbage_pending: 0,
            flush_latency_us: histogram(),
            commit_latency_us: histogram(),
            tombstones: 0,
            offsets_expired: 0,
            events_dropped: 0,
            compaction: CompactionMetrics::default(),
            compaction_step_us: histogram(),
            partitions: Vec::new(),
        }
    }

    /// Records a latency, saturating at the histogram's bound. Allocation-free.
    pub(crate) fn record_latency(histogram: &mut Histogram<u64>, micros: u64) {
        let _ = histogram.record(micros.clamp(1, LATENCY_US_MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_saturate_instead_of_failing() {
        let mut metrics = ShardMetrics::new(0);
        ShardMetrics::record_latency(&mut metrics.commit_latency_us, 0);
        ShardMetrics::record_latency(&mut metrics.commit_latency_us, u64::MAX);
        assert_eq!(metrics.commit_latency_us.len(), 2);
        assert!(metrics.commit_latency_us.max() >= LATENCY_US_MAX);
    }
}
