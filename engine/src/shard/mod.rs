//! A shard: one thread owning a set of offsets partitions, their logs and offset caches,
//! and one storage through which every flush goes.
//!
//! The loop is adaptive group commit (Kafka's KAFKA-19826): it blocks for the first request,
//! takes whatever else is already queued (bounded by the byte caps), optionally lingers, and
//! flushes the lot — one batch per dirty partition, all written and synced in one storage
//! submission. While a flush is in flight new requests queue up and form the next batch.
//! Every request is acknowledged only after its partition's write is durable.

mod flush;
pub(crate) mod group_commit;
mod groups;
mod journaling;
mod local;
mod maintenance;
mod metrics;
mod pipeline;

pub use groups::HeartbeatBoard;
pub(crate) use groups::{
    GroupRequest, HEARTBEATS_POOLED_MAX, HeartbeatCall, HeartbeatPool, SharedGroups,
};
pub use local::{AdoptFailed, LocalShard, PartitionHandoff};
pub use maintenance::PartitionSpace;
pub use metrics::ShardMetrics;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::cache::{BulkLoad, OffsetCache, OffsetKey, OffsetValueRef};
use crate::compact::PartitionCompaction;
use crate::completion::DeferredWakes;
use crate::config::{Config, FsyncScope};
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::format::{
    BatchView, FormatError, GroupMetadataValue, KeyDecoder, OffsetCommitValue, RecordKey,
};
use crate::journal::{FlushSequence, JournalWriter};
use crate::log::liveness::SegmentTable;
use crate::log::{LogSettings, PartitionLog, PartitionRecovery};
use crate::storage::{Storage, WriteOp};
use crate::sync::atomic::{AtomicBool, Ordering};
use flush::EncodedBatch;
use group_commit::{CommitPool, GroupCommitBatch, PendingCommit};
use groups::{GroupReplay, ShardGroups};
use maintenance::Maintenance;
use pipeline::NextFlush;

/// The free lists the request path recycles through, shared by the callers' side (engine
/// handle or shard-local API) and the shards.
#[derive(Clone)]
pub(crate) struct RequestPools {
    pub(crate) commits: CommitPool,
    pub(crate) heartbeats: HeartbeatPool,
}

/// What a shard shares with the engine (or the other local shards) it was opened with.
pub(crate) struct ShardShared {
    /// Where the shard's events go.
    pub(crate) events: EventSink,
    /// Where answered requests go back for reuse.
    pub(crate) pools: RequestPools,
    /// Numbers every flush of every shard (the journal's entry order).
    pub(crate) flush_sequence: crate::sync::Arc<FlushSequence>,
    /// The session board and clock of the shard's groups, shared with the engine's handle.
    pub(crate) groups: SharedGroups,
    /// Which offsets partitions are failed closed (all shards' and the engine's view).
    pub(crate) failed: crate::sync::Arc<FailedPartitions>,
}

impl ShardShared {
    /// The handle that answers this shard's heartbeats on callers' threads.
    pub(crate) fn heartbeat_board(&self) -> HeartbeatBoard {
        HeartbeatBoard::new(self.groups.clone(), self.failed.clone())
    }
}

/// Which offsets partitions are failed closed, readable from any thread: the engine answers
/// no heartbeat of their groups from the session board (the shard refuses them all).
#[derive(Debug)]
pub(crate) struct FailedPartitions(Box<[AtomicBool]>);

impl FailedPartitions {
    pub(crate) fn new(partitions: u32) -> FailedPartitions {
        FailedPartitions((0..partitions).map(|_| AtomicBool::new(false)).collect())
    }

    /// Whether `partition` is failed closed (true for a partition number out of range).
    pub(crate) fn is_failed(&self, partition: u32) -> bool {
        self.0
            .get(partition as usize)
            .is_none_or(|failed| failed.load(Ordering::Acquire))
    }

    fn set(&self, partition: u32, failed: bool) {
        if let Some(flag) = self.0.get(partition as usize) {
            flag.store(failed, Ordering::Release);
        }
    }
}

/// What recovery found when the engine opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Per offsets partition.
    pub partitions: Vec<PartitionRecovery>,
    /// Records replayed.
    pub records: u64,
    /// Offset commit tombstones replayed.
    pub tombstones: u64,
    /// Records of types this version does not know, skipped as Kafka skips them.
    pub unknown_records: u64,
    /// Group metadata records replayed (the latest per group restores the group).
    pub group_metadata_records: u64,
    /// Records in transactional or control batches, not yet interpreted.
    pub transactional_records: u64,
    /// What the shard journals held (`FsyncScope::Journal`), redone before the partitions
    /// were read.
    pub journal: crate::journal::JournalRecovery,
}

impl RecoveryReport {
    /// Adds another shard's report to this one.
    pub(crate) fn merge(&mut self, other: RecoveryReport) {
        self.partitions.extend(other.partitions);
        self.records += other.records;
        self.tombstones += other.tombstones;
        self.unknown_records += other.unknown_records;
        self.group_metadata_records += other.group_metadata_records;
        self.transactional_records += other.transactional_records;
        let journal = &mut self.journal;
        journal.files += other.journal.files;
        journal.entries += other.journal.entries;
        journal.entries_redone += other.journal.entries_redone;
        journal.segments_recreated += other.journal.segments_recreated;
        journal.torn_bytes += other.journal.torn_bytes;
    }

    /// The tails recovery cut off.
    pub fn truncations(&self) -> impl Iterator<Item = &crate::log::Truncation> {
        self.partitions.iter().filter_map(|p| p.truncation.as_ref())
    }
}

/// Messages into a shard.
pub(crate) enum Request {
    Commit(PendingCommit),
    Metrics {
        reply: Sender<ShardMetrics>,
    },
    /// Open an offsets partition's log and serve it. Its cache arrives with it, already
    /// holding the partition's durable state: the log is replayed only to be checked.
    Load {
        partition: u32,
        cache: Box<OffsetCache>,
        /// On failure the cache comes back with the error.
        reply: Sender<Result<RecoveryReport, (Error, Box<OffsetCache>)>>,
    },
    /// Flush, close and stop serving an offsets partition; the reply hands its cache back.
    Unload {
        partition: u32,
        reply: Sender<Result<Box<OffsetCache>>>,
    },
    Close {
        reply: Sender<Result<()>>,
    },
    /// Compact until nothing is cleanable at `now_ms`; replies with the compactions run.
    Compact {
        now_ms: i64,
        reply: Sender<Result<u64>>,
    },
    /// Run the offset retention check at `now_ms`; replies with the offsets expired.
    RetentionCheck {
        now_ms: i64,
        reply: Sender<Result<u64>>,
    },
    /// Consumer group protocol and admin calls (`groups.rs`).
    Group(GroupRequest),
}

/// One offsets partition hosted by a shard.
struct HostedPartition {
    /// Whether this shard owns the partition at all.
    hosted: bool,
    /// `None` once failed closed (or when not hosted).
    log: Option<PartitionLog>,
    failure: Option<String>,
    /// The partition's offsets, readable from any thread (the engine holds the readers).
    cache: Option<Box<OffsetCache>>,
    /// This partition's batches in the shard's two flush slots (indexed by the slot's
    /// parity: `Shard::flush_parity`, `NextFlush::parity`).
    encoded: [EncodedBatch; 2],
    /// In `Shard::turn_placed` (placed by a flush of the loop's current turn).
    placed_this_turn: bool,
    /// Compactor state outside the log and cache (group metadata records, quarantine).
    compaction: PartitionCompaction,
}

impl HostedPartition {
    /// Fails the partition closed: every request to it is refused until it is loaded again
    /// (the first reason stays).
    fn fail_closed(&mut self, partition: u32, reason: String, failed: &FailedPartitions) {
        self.failure.get_or_insert(reason);
        failed.set(partition, true);
    }

    fn not_hosted() -> HostedPartition {
        HostedPartition {
            hosted: false,
            log: None,
            failure: None,
            cache: None,
            encoded: Default::default(),
            placed_this_turn: false,
            compaction: PartitionCompaction::default(),
        }
    }

    /// Why requests to this partition are refused, if they are.
    fn refusal(&self, partition: u32) -> Option<Error> {
        if !self.hosted {
            return Some(Error::NotCoordinator { partition });
        }
        self.failure.as_ref().map(|reason| Error::PartitionFailed {
            partition,
            reason: reason.clone(),
        })
    }
}

/// With the journal, a segment's staged batches are written once they reach this many
/// bytes (or at a checkpoint, roll or close): one larger write every few flushes instead of
/// one small write per flush per partition. Checked at the end of each turn of the shard's
/// loop for every partition the turn placed, so it bounds the memory staged per partition
/// (plus one turn's batches, at most `PIPELINED_FLUSHES_PER_TURN_MAX`).
const SEGMENT_WRITE_BYTES_MIN: usize = 64 * 1024;

/// How often an idle shard retries freeing cache memory a pinned reader held back.
const IDLE_COLLECT_INTERVAL: Duration = Duration::from_millis(10);

pub(crate) struct Shard {
    storage: Box<dyn Storage>,
    /// Shared with every shard and the engine: set when a partition fails closed.
    failed: crate::sync::Arc<FailedPartitions>,
    data_dir: PathBuf,
    settings: LogSettings,
    /// Recovery's read buffer, kept for partitions loaded later.
    read_buf: Vec<u8>,
    partitions: Vec<HostedPartition>,
    batch: GroupCommitBatch,
    /// The commit timestamp of the batch being flushed (its records' and cache values').
    flush_timestamp_ms: i64,
    /// Which of each partition's two encoded batches the current flush's is.
    flush_parity: usize,
    /// The next flush, encoded in the shadow of the current one's journal sync.
    next: NextFlush,
    /// `Config::group_commit_overlap_requests_min`: requests waiting for the shard to keep
    /// two flushes in flight. Below it the sync runs on the shard thread: handing it to the
    /// ring's worker costs two context switches on the shard's core, which a few commits'
    /// encoding does not pay back (at 64 requests in flight the ack p99 was ~14 % lower
    /// without them, benchmarks.md session 6).
    overlap_requests_min: usize,
    linger: Duration,
    commit_timeout_ms: u64,
    flush_results: Vec<std::io::Result<()>>,
    flush_partitions: Vec<u32>,
    /// The partitions of `flush_partitions` whose write was placed, and the writes' buffer
    /// (kept empty between flushes, see `write_partitions`), reused so a flush allocates nothing.
    placed_partitions: Vec<u32>,
    /// Every partition the flushes of the loop's current turn placed: their staged
    /// segment writes and dirty rolls run once, at the turn's end.
    turn_placed: Vec<u32>,
    write_ops: Vec<WriteOp<'static>>,
    /// The placed partitions whose staged bytes this flush writes, in op order.
    writing_partitions: Vec<u32>,
    /// Where answered commits and heartbeats go back for reuse.
    pools: RequestPools,
    /// How the storage makes a flush durable (for the sync count).
    fsync_scope: FsyncScope,
    metrics: ShardMetrics,
    /// Compaction and retention (see `maintenance`).
    maintenance: Maintenance,
    /// The classic groups of the hosted partitions (`groups.rs`).
    groups: ShardGroups,
    /// The shard's journal with `FsyncScope::Journal` (see `crate::journal`).
    journal: Option<JournalWriter>,
    /// Per partition: written since the current journal file began, so its active segment
    /// needs a sync before that file may go.
    journal_dirty: Vec<bool>,
    /// Why no journal can be written (a new file could not be created): every flush fails.
    journal_unavailable: Option<String>,
    /// Partitions whose segment still needs its sync before the previous journal file may
    /// go (the checkpoint in progress), not yet started.
    checkpoint_pending: Vec<u32>,
    /// Partitions whose checkpoint sync runs in the background (at most
    /// `storage::BACKGROUND_SYNCS_MAX`).
    checkpoint_syncing: Vec<u32>,
    /// Finished background syncs, (partition, outcome); reused.
    checkpoint_done: Vec<(u64, std::io::Result<()>)>,
    /// Wakeups owed to callers of answered heartbeats, fired once per loop turn's run of
    /// requests rather than once per answer (see `DeferredWakes`).
    wakes: DeferredWakes,
}

enum Step {
    Continue,
    Stop(Option<Sender<Result<()>>>),
}

/// The shard thread's end of its request queue, and the requests taken from it but not
/// yet handled.
struct Inbox {
    requests: Receiver<Request>,
    /// A commit that did not fit in the batch being gathered: the first of the next.
    carry: Option<PendingCommit>,
    /// A request other than a commit that came while a flush was in flight: handled once
    /// no flush is encoded or in flight, so it overtakes no commit and none overtakes it.
    held: Option<Request>,
    /// The shard stops after this flush: nothing more is gathered into a next one.
    stopping: bool,
}

impl Shard {
    /// Recovers the offsets partitions in `hosted` (the engine has already created and
    /// locked the data directory).
    pub(crate) fn open(
        config: &Config,
        mut storage: Box<dyn Storage>,
        hosted: Vec<(u32, Box<OffsetCache>)>,
        index: usize,
        shared: ShardShared,
    ) -> Result<(Shard, RecoveryReport)> {
        let ShardShared {
            events,
            pools,
            flush_sequence,
            groups,
            failed,
        } = shared;
        let partitions: Vec<HostedPartition> = (0..config.offsets_topic_num_partitions)
            .map(|_| HostedPartition::not_hosted())
            .collect();
        let journal = match config.fsync_scope {
            FsyncScope::Journal => Some(
                JournalWriter::create(
                    storage.as_mut(),
                    &config.data_dir,
                    (config.journal_file_bytes_min(), config.journal_file_bytes),
                    flush_sequence,
                )
                .map_err(|e| Error::io("creating the shard journal", e))?,
            ),
            FsyncScope::File | FsyncScope::Filesystem => None,
        };
        let mut shard = Shard {
            storage,
            data_dir: config.data_dir.clone(),
            settings: LogSettings {
                segment_bytes: config.offsets_topic_segment_bytes,
                preallocate: config.log_preallocate,
                dirty_roll_ratio: config
                    .log_cleaner_enable
                    .then_some(config.log_cleaner_min_cleanable_ratio),
                journaled: config.fsync_scope == FsyncScope::Journal,
            },
            read_buf: Vec::new(),
            batch: GroupCommitBatch::new(partitions.len(), config.group_commit_bytes_max),
            flush_timestamp_ms: 0,
            flush_parity: 0,
            next: NextFlush::new(partitions.len(), config.group_commit_bytes_max),
            overlap_requests_min: config.group_commit_overlap_requests_min,
            partitions,
            linger: Duration::from_micros(config.group_commit_linger_us),
            commit_timeout_ms: config.offsets_commit_timeout_ms,
            flush_results: Vec::new(),
            flush_partitions: Vec::new(),
            placed_partitions: Vec::with_capacity(config.offsets_topic_num_partitions as usize),
            turn_placed: Vec::with_capacity(config.offsets_topic_num_partitions as usize),
            write_ops: Vec::new(),
            writing_partitions: Vec::new(),
            pools,
            fsync_scope: config.fsync_scope,
            metrics: ShardMetrics::new(index),
            maintenance: Maintenance::new(config, events),
            groups: ShardGroups::new(&config.groups, index, groups),
            failed,
            journal,
            journal_dirty: vec![false; config.offsets_topic_num_partitions as usize],
            journal_unavailable: None,
            checkpoint_pending: Vec::with_capacity(config.offsets_topic_num_partitions as usize),
            checkpoint_syncing: Vec::with_capacity(crate::storage::BACKGROUND_SYNCS_MAX),
            checkpoint_done: Vec::with_capacity(crate::storage::BACKGROUND_SYNCS_MAX),
            wakes: DeferredWakes::new(),
        };
        let mut report = RecoveryReport::default();
        for (partition, cache) in hosted {
            shard.load_partition(partition, cache, true, &mut report)?;
        }
        shard.finish_opening_groups();
        Ok((shard, report))
    }

    /// Recovers one partition from disk and starts serving it: at open (`fill`: replay into
    /// the empty cache), and when a partition moves here (its cache arrives already holding
    /// the durable state, so the replay only checks the log and readers never see an older
    /// value).
    fn load_partition(
        &mut self,
        partition: u32,
        cache: Box<OffsetCache>,
        fill: bool,
        report: &mut RecoveryReport,
    ) -> Result<()> {
        self.try_load_partition(partition, cache, fill, report)
            .map_err(|(error, _cache)| error)
    }

    /// [`load_partition`](Self::load_partition), handing the cache back with the error so a
    /// partition that cannot move here can go back to where it came from.
    fn try_load_partition(
        &mut self,
        partition: u32,
        mut cache: Box<OffsetCache>,
        fill: bool,
        report: &mut RecoveryReport,
    ) -> Result<(), (Error, Box<OffsetCache>)> {
        let Some(slot) = self.partitions.get(partition as usize) else {
            return Err((Error::NotCoordinator { partition }, cache));
        };
        if slot.hosted {
            let error = Error::InvalidRequest("offsets partition already loaded");
            return Err((error, cache));
        }
        let mut compaction = PartitionCompaction::default();
        let mut group_replay = GroupReplay::new();
        let mut into = if fill {
            // At open every cache is new: empty, as a bulk load requires.
            ReplayInto::Fill(cache.bulk_load())
        } else {
            ReplayInto::Check(&cache)
        };
        let mut visit = |view: &BatchView<'_>, _position: u64, table: &mut SegmentTable| {
            let mut replay = Replay {
                into: &mut into,
                table,
                compaction: &mut compaction,
                groups: &mut group_replay,
            };
            replay.batch(report, view)
        };
        let opened = PartitionLog::open(
            self.storage.as_mut(),
            &self.data_dir,
            partition,
            self.settings,
            &mut self.read_buf,
            &mut visit,
        );
        let (log, recovery) = match opened {
            Ok(opened) => {
                into.finish();
                opened
            }
            Err(error) => {
                // An unfinished load leaves the cache as empty as it came.
                drop(into);
                return Err((error, cache));
            }
        };
        report.partitions.push(recovery);
        self.failed.set(partition, false);
        self.partitions[partition as usize] = HostedPartition {
            hosted: true,
            log: Some(log),
            failure: None,
            cache: Some(cache),
            encoded: Default::default(),
            placed_this_turn: false,
            compaction,
        };
        self.maintenance.note_maybe_dirty();
        self.restore_groups(partition, group_replay);
        Ok(())
    }

    /// Stops serving a partition: what is batched is flushed first, then its log is trimmed,
    /// synced and closed. Later requests for it fail with `NotCoordinator`.
    fn unload_partition(&mut self, partition: u32) -> Result<Box<OffsetCache>> {
        if !self.batch.is_empty() {
            self.flush();
        }
        // A compaction past its commit point completes first (its background syncs waited
        // for): any failure there fails the partition closed, and so may a checkpoint sync
        // of it the waits start and reap.
        self.abandon_compaction(partition);
        // Closing syncs the segment: not while a checkpoint's sync of it is in flight (see
        // `roll_dirty_segments`). Waiting takes its outcome first; a failed one fails the
        // partition closed.
        // Bounded: a partition's checkpoint makes at most two syncs (segment, directory),
        // and each round takes the outcome of every one in flight.
        while self.checkpoint_syncing.contains(&partition) && self.advance_checkpoint(true) > 0 {}
        // Last, after everything above that could fail it closed: a partition failed closed
        // with the journal stays here (`unload_refusal`).
        if let Some(refused) = self.unload_refusal(partition) {
            return Err(refused);
        }
        self.unload_groups(partition);
        let slot = self
            .partitions
            .get_mut(partition as usize)
            .ok_or(Error::NotCoordinator { partition })?;
        if !slot.hosted {
            return Err(Error::NotCoordinator { partition });
        }
        if let Some(log) = slot.log.take()
            && let Err(error) = log.close(self.storage.as_mut())
        {
            // Never retry the failed sync: the partition fails closed here but keeps its
            // cache. Without a journal a later move hands it on and the target recovers from
            // disk; with one, only a reopen does (see `unload_refusal`).
            slot.fail_closed(partition, format!("closing the log: {error}"), &self.failed);
            return Err(Error::io(
                format!("closing offsets partition {partition}"),
                error,
            ));
        }
        // Closed means synced: its journal entries are no longer needed. A checkpoint sync
        // still running for it stays counted until reaped (the storage counts it too).
        self.journal_dirty[partition as usize] = false;
        self.checkpoint_pending.retain(|&p| p != partition);
        let unloaded = std::mem::replace(slot, HostedPartition::not_hosted());
        unloaded.cache.ok_or(Error::NotCoordinator { partition })
    }

    /// Why a partition may not leave this shard now. With the journal, a partition that failed
    /// closed may hold acknowledged commits only in this shard's journal files (its segment
    /// never got them, or never durably): recovering it elsewhere from its segment would lose
    /// them, and the other shard's writes would overlap them. Only a reopen, which redoes the
    /// journals first, brings it back.
    fn unload_refusal(&self, partition: u32) -> Option<Error> {
        let hosted = self.partitions.get(partition as usize)?;
        if self.journal.is_none() || !hosted.hosted || hosted.log.is_some() {
            return None;
        }
        Some(Error::PartitionFailed {
            partition,
            reason: format!(
                "{}; with the journal it cannot move to another shard, reopen the engine to \
                 recover it",
                hosted.failure.as_deref().unwrap_or("failed closed")
            ),
        })
    }

    /// Serves requests until closed or every sender is gone, then closes the logs.
    pub(crate) fn run(mut self, requests: Receiver<Request>) {
        let mut inbox = Inbox {
            requests,
            carry: None,
            held: None,
            stopping: false,
        };
        let stop = loop {
            let step = if self.next.is_encoded() {
                // The batch encoded while the last flush's journal synced goes out first;
                // what queued meanwhile waits for its sync (see `flush.rs`).
                self.promote_next();
                self.flush_encoded(Some(&mut inbox));
                self.after_flush();
                Step::Continue
            } else {
                // Nothing encoded or in flight: the retention check may run (`next_request`
                // reaches it only when no commit is carried over, and a due check stops the
                // shard from encoding ahead until it has run).
                self.retention_if_due();
                let step = self.gather(&mut inbox);
                if !self.batch.is_empty() {
                    inbox.stopping = matches!(step, Step::Stop(_));
                    self.encode_current();
                    self.flush_encoded(Some(&mut inbox));
                    self.after_flush();
                }
                step
            };
            self.service_groups();
            self.check_failed_flags();
            // Nothing owed while the shard may block on its inbox.
            self.wakes.wake_all();
            if let Step::Stop(reply) = step {
                debug_assert!(!self.next.is_encoded(), "nothing is encoded while stopping");
                if let Some(commit) = inbox.carry.take() {
                    self.add(commit, &mut inbox.carry);
                    self.flush();
                }
                break reply;
            }
        };
        let result = self.close();
        if let Some(reply) = stop {
            // The closer may have given up waiting; nothing to do then.
            let _ = reply.send(result);
        }
    }

    /// Takes requests into the batch: a request held back during the last flush first, or
    /// a commit carried over from it, else the next request (waiting for one while idle);
    /// then whatever else queued up, without waiting (adaptive batching), and with a linger
    /// what comes within it. Returns whether the shard is to stop.
    fn gather(&mut self, inbox: &mut Inbox) -> Step {
        let mut step = Step::Continue;
        if let Some(request) = inbox.held.take() {
            step = self.handle(request, &mut inbox.carry);
        } else if let Some(commit) = inbox.carry.take() {
            self.add(commit, &mut inbox.carry);
        } else {
            match self.next_request(&inbox.requests) {
                Ok(request) => step = self.handle(request, &mut inbox.carry),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => step = Step::Stop(None),
            }
        }
        // Bounded by the inbox's capacity: requests that do not fill the batch (fenced
        // commits, heartbeats) may keep coming as fast as they are taken.
        let requests_max = inbox.requests.capacity().unwrap_or(1);
        for _ in 0..requests_max {
            if !matches!(step, Step::Continue) || inbox.carry.is_some() {
                break;
            }
            match inbox.requests.try_recv() {
                Ok(request) => step = self.handle(request, &mut inbox.carry),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => step = Step::Stop(None),
            }
        }
        // The heartbeats just answered: their callers are woken once, before the linger
        // and the flush's sync.
        self.wakes.wake_all();
        if matches!(step, Step::Continue) && !self.linger.is_zero() && !self.batch.is_empty() {
            let deadline = Instant::now() + self.linger;
            while matches!(step, Step::Continue) && inbox.carry.is_none() {
                match inbox.requests.recv_deadline(deadline) {
                    Ok(request) => step = self.handle(request, &mut inbox.carry),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => step = Step::Stop(None),
                }
            }
            self.wakes.wake_all();
        }
        step
    }

    /// Frees the hosted caches' retired memory that no reader holds; returns whether some is
    /// still held.
    fn collect_caches(&mut self) -> bool {
        let mut held = false;
        for cache in self.partitions.iter_mut().filter_map(|p| p.cache.as_mut()) {
            held |= cache.collect();
        }
        held
    }

    /// The shard's metrics now (the inbox depth is the caller's to fill in).
    fn metrics_snapshot(&self) -> ShardMetrics {
        let mut metrics = self.metrics.clone();
        metrics.partitions = maintenance::partition_space(self);
        metrics.cache_garbage_pending = self
            .partitions
            .iter()
            .filter_map(|p| p.cache.as_ref())
            .map(|cache| cache.garbage_pending())
            .sum();
        metrics
    }

    fn handle(&mut self, request: Request, carry: &mut Option<PendingCommit>) -> Step {
        let quick = matches!(
            request,
            Request::Commit(_)
                | Request::Metrics { .. }
                | Request::Group(GroupRequest::Heartbeat(_))
        );
        if !quick {
            // It may block (a flush, a recovery, a compaction): the callers already answered
            // do not wait for it.
            self.wakes.wake_all();
        }
        match request {
            Request::Commit(commit) => {
                if let Some(commit) = self.fence_commit(commit) {
                    self.add(commit, carry);
                }
            }
            Request::Group(request) => self.handle_group(request),
            Request::Metrics { reply } => {
                let _ = reply.send(self.metrics_snapshot());
            }
            Request::Compact { now_ms, reply } => {
                if !self.batch.is_empty() {
                    self.flush();
                }
                let _ = reply.send(self.compact_until_clean(now_ms));
            }
            Request::RetentionCheck { now_ms, reply } => {
                let _ = reply.send(Ok(self.retention_check(now_ms)));
            }
            Request::Load {
                partition,
                cache,
                reply,
            } => {
                let mut report = RecoveryReport::default();
                let loaded = self.try_load_partition(partition, cache, false, &mut report);
                let _ = reply.send(loaded.map(|()| report));
            }
            Request::Unload { partition, reply } => {
                let _ = reply.send(self.unload_partition(partition));
            }
            Request::Close { reply } => return Step::Stop(Some(reply)),
        }
        Step::Continue
    }

    fn add(&mut self, commit: PendingCommit, carry: &mut Option<PendingCommit>) {
        if let Err(commit) = self.batch.try_add(commit) {
            *carry = Some(commit);
        }
    }

    /// Debug builds: every hosted partition that failed closed is flagged for the engine (a
    /// failure set without [`HostedPartition::fail_closed`] would leave the session board
    /// answering its groups' heartbeats).
    fn check_failed_flags(&self) {
        if cfg!(debug_assertions) {
            for (partition, hosted) in self.partitions.iter().enumerate() {
                let partition = partition as u32;
                assert!(
                    !hosted.hosted || hosted.failure.is_some() == self.failed.is_failed(partition),
                    "partition {partition}: failure {:?} not flagged",
                    hosted.failure
                );
            }
        }
    }

    /// Trims and syncs every healthy partition's active segment, then removes the journal
    /// file if every partition it covers is synced; releases the directory.
    fn close(mut self) -> Result<()> {
        self.abandon_any_compaction();
        // The checkpoint's outcomes count (a failed sync keeps its journal file; the logs'
        // own syncs below must not stand in for it), and no sync is left running.
        self.finish_checkpoint();
        self.storage
            .reap_background_syncs(true, &mut self.checkpoint_done);
        let mut synced = self.journal_unavailable.is_none() && !self.checkpoint_in_progress();
        let mut first_error = None;
        for (index, hosted) in self.partitions.iter_mut().enumerate() {
            let partition = index as u32;
            let covered = self.journal_dirty[index]
                || self.checkpoint_pending.contains(&partition)
                || self.checkpoint_syncing.contains(&partition);
            if covered && hosted.log.is_none() {
                synced = false;
            }
            if let Some(log) = hosted.log.take() {
                let partition = log.partition();
                if let Err(error) = log.close(self.storage.as_mut()) {
                    synced = false;
                    first_error.get_or_insert(Error::io(
                        format!(
                            "closing offsets partition {partition} in {}",
                            self.data_dir.display()
                        ),
                        error,
                    ));
                }
            }
        }
        if let Some(journal) = self.journal.take()
            && let Err(error) = journal.close(self.storage.as_mut(), synced)
        {
            first_error.get_or_insert(Error::io("closing the shard journal", error));
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Where recovery puts the offset commits it replays.
enum ReplayInto<'c> {
    /// At open: the records fill the empty cache (published when the log is replayed).
    Fill(BulkLoad<'c>),
    /// A partition moving between shards: the cache already holds the final state and is
    /// only read, to tell live records from dead.
    Check(&'c OffsetCache),
}

impl ReplayInto<'_> {
    /// After a complete replay: publishes the loaded offsets to the readers.
    fn finish(self) {
        match self {
            ReplayInto::Fill(load) => load.finish(),
            ReplayInto::Check(_) => {}
        }
    }
}

/// Recovery's view of one partition while its log is replayed.
struct Replay<'r, 'c> {
    into: &'r mut ReplayInto<'c>,
    table: &'r mut SegmentTable,
    compaction: &'r mut PartitionCompaction,
    /// Each group's latest GroupMetadata record, restored into the coordinator afterwards.
    groups: &'r mut GroupReplay,
}

impl Replay<'_, '_> {
    /// Checks one replayed batch's records, applies them to the cache when filling it, and
    /// charges every record they make dead to its segment.
    fn batch(
        &mut self,
        report: &mut RecoveryReport,
        view: &BatchView<'_>,
    ) -> Result<(), FormatError> {
        if view.header.is_control() || view.header.is_transactional() {
            report.transactional_records += view.header.records_count.max(0) as u64;
            return Ok(());
        }
        let mut keys = KeyDecoder::default();
        for record in view.records() {
            let record = record?;
            report.records += 1;
            let record_offset = record.offset(&view.header);
            let key = record
                .key
                .ok_or(FormatError::Malformed("record without a key"))?;
            match keys.decode(key)? {
                RecordKey::OffsetCommit(key) => {
                    let cache_key = OffsetKey {
                        group: key.group,
                        topic: key.topic,
                        partition: key.partition,
                    };
                    let value = match record.value {
                        None => {
                            report.tombstones += 1;
                            let timestamp = record.timestamp(&view.header);
                            self.table.mark_dead(record_offset);
                            self.table.note_tombstone(record_offset, timestamp);
                            None
                        }
                        Some(value) => Some(OffsetCommitValue::decode(value)?.1),
                    };
                    self.offset_commit(cache_key, value, record_offset)?;
                }
                RecordKey::GroupMetadata(key) => {
                    report.group_metadata_records += 1;
                    let tombstone = record.value.is_none();
                    self.compaction
                        .group_record(key.group, record_offset, tombstone, self.table);
                    let value = match record.value {
                        None => None,
                        Some(value) => Some(GroupMetadataValue::decode(value)?.1),
                    };
                    self.groups
                        .insert(key.group.to_owned(), (value, record_offset as u64));
                }
                RecordKey::Unknown { .. } => report.unknown_records += 1,
            }
        }
        Ok(())
    }

    /// Applies one offset commit record (`None`: a tombstone) at `offset`.
    fn offset_commit(
        &mut self,
        key: OffsetKey<'_>,
        value: Option<OffsetCommitValue<'_>>,
        offset: i64,
    ) -> Result<(), FormatError> {
        let out_of_range = |_| FormatError::Malformed("offset commit key out of range");
        let load = match self.into {
            ReplayInto::Fill(load) => load,
            ReplayInto::Check(cache) => {
                // The cache holds the final state: a value record is live iff it points here.
                if value.is_some() && cache.log_position(key) != Some(offset as u64) {
                    self.table.mark_dead(offset);
                }
                return Ok(());
            }
        };
        let replaced = match value {
            None => load.take(key).map_err(out_of_range)?,
            Some(value) => {
                let value = OffsetValueRef {
                    offset: value.offset,
                    leader_epoch: value.leader_epoch,
                    commit_timestamp_ms: value.commit_timestamp,
                    expire_timestamp_ms: value.expire_timestamp,
                    metadata: value.metadata,
                };
                load.replace(key, value, offset as u64)
                    .map_err(out_of_range)?
            }
        };
        if let Some(old) = replaced {
            self.table.mark_dead(old as i64);
        }
        Ok(())
    }
}

pub(crate) fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
