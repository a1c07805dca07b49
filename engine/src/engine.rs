//! The public handle: open a data directory, commit and fetch offsets, close. The group
//! calls are in `engine/groups.rs`.

mod groups;
mod reset;

pub use reset::{OffsetLookup, OffsetReset, ResetOffset};

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::path::Path;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, bounded};

use crate::cache::{OffsetCache, OffsetCacheReader};
use crate::completion::{CommitFuture, CompletionPool};
use crate::config::{COMMIT_PARTITIONS_MAX, Config, KAFKA_STRING_BYTES_MAX};
use crate::error::{Error, Result};
use crate::events::{EVENT_QUEUE_DEPTH_MAX, EngineEvent, EventSink};
use crate::journal::FlushSequence;
use crate::offsets::{CommittedOffset, OffsetCommit, TopicPartitionOffset};
use crate::shard::group_commit::{
    COMMITS_POOLED_MAX, CommitPool, PARTITION_BATCH_BYTES_MAX, PendingCommit, PendingOffset,
    commit_record_bytes_max,
};
use crate::shard::{
    FailedPartitions, GroupRequest, HEARTBEATS_POOLED_MAX, HeartbeatBoard, HeartbeatPool,
    RecoveryReport, Request, RequestPools, Shard, ShardMetrics, ShardShared, SharedGroups,
};
use crate::storage::{Storage, UringStorage};
use crate::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// An open engine. Cheap to clone; every clone talks to the same shard.
///
/// ```
/// # fn main() -> coffer::Result<()> {
/// use coffer::{Config, Engine, OffsetCommit};
///
/// let dir = std::env::temp_dir().join(format!("coffer-doc-{}", std::process::id()));
/// let mut config = Config::new(&dir);
/// config.offsets_topic_num_partitions = 4;
/// config.offsets_topic_segment_bytes = 1 << 20;
/// let engine = Engine::open(config)?;
///
/// let commit = OffsetCommit {
///     topic: "orders",
///     partition: 0,
///     offset: 42,
///     leader_epoch: Some(3),
///     metadata: "",
/// };
/// // The future resolves once the commit is durable; `wait` blocks for it.
/// engine.commit_offsets("billing", &[commit]).wait()?;
///
/// let fetched = engine.fetch_offsets("billing", &[("orders", 0)])?;
/// assert_eq!(fetched[0].as_ref().map(|c| c.offset), Some(42));
/// engine.close()?;
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    config: Config,
    shards: Vec<ShardHandle>,
    /// Offsets partition → index of the shard serving it. Read on every request (a relaxed
    /// load: a stale read only sends a request to a shard that answers `NotCoordinator`).
    assignment: Vec<AtomicU32>,
    /// Serialises partition moves.
    moving: Mutex<()>,
    /// Per offsets partition: lock-free readers of its offsets, for fetches from any thread.
    readers: Vec<OffsetCacheReader>,
    /// Set once `close` starts: fetches check it without taking a lock.
    closed: AtomicBool,
    recovery: RecoveryReport,
    /// Subscribers' end of the shards' event queue.
    events: Receiver<EngineEvent>,
    /// The storage holding the data directory's lock, released after every shard stopped.
    dir_lock: Mutex<Option<Box<dyn Storage>>>,
    /// Recycled requests and completion slots: the commit and heartbeat paths allocate
    /// nothing once they are warm.
    pools: RequestPools,
    completions: CompletionPool,
    heartbeat_slots: CompletionPool<std::result::Result<(), crate::group::GroupError>>,
}

/// The engine's end of one shard thread.
struct ShardHandle {
    requests: Sender<Request>,
    /// Most heartbeats are answered here, on the caller's thread.
    heartbeats: HeartbeatBoard,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ShardHandle {
    /// Asks the shard to stop after what is queued; returns its close result.
    fn close(&self) -> Result<()> {
        let (reply, answer) = bounded(1);
        let sent = self.requests.send(Request::Close { reply }).is_ok();
        // Join first, then read the answer: a shard that failed to open exits without
        // reading its inbox, and waiting on the answer would then block forever.
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        if !sent {
            return Err(Error::Closed);
        }
        answer.try_recv().unwrap_or(Err(Error::Closed))
    }
}

impl Engine {
    /// Opens (creating if needed) the data directory in `config`, takes its lock and
    /// recovers every offsets partition (each shard its own, in parallel) before returning.
    pub fn open(config: Config) -> Result<Engine> {
        let make = uring_storages(config.fsync_scope);
        Engine::open_with_storage(config, &make)
    }

    /// Opens the engine over storages made by `make_storage`: one holds the directory lock,
    /// and each shard gets its own (the simulated disk's, in tests).
    pub fn open_with_storage(
        config: Config,
        make_storage: &dyn Fn() -> std::io::Result<Box<dyn Storage>>,
    ) -> Result<Engine> {
        let cores = shard_cores(&config)?;
        let DataDir {
            dir_lock,
            journal_recovery,
            flush_sequence,
        } = open_data_dir(&config, make_storage)?;
        // Enough pooled requests and completions for every queue to be full, plus a batch
        // being flushed behind each.
        let pooled = (2 * config.shards * config.request_queue_depth_max).min(COMMITS_POOLED_MAX);
        let pools = RequestPools {
            commits: CommitPool::new(pooled),
            heartbeats: HeartbeatPool::new(pooled.min(HEARTBEATS_POOLED_MAX)),
        };
        let completions = CompletionPool::prefilled(pooled);
        let heartbeat_slots = CompletionPool::prefilled(pooled);
        let (event_sender, events) = bounded(EVENT_QUEUE_DEPTH_MAX);
        let failed =
            crate::sync::Arc::new(FailedPartitions::new(config.offsets_topic_num_partitions));
        // One cache per offsets partition for the engine's life: the writer lives with the
        // shard serving the partition (and moves with it), the readers stay here.
        let caches: Vec<Option<Box<OffsetCache>>> = (0..config.offsets_topic_num_partitions)
            .map(|_| Some(Box::new(OffsetCache::new())))
            .collect();
        let readers: Vec<OffsetCacheReader> = caches
            .iter()
            .flatten()
            .map(|cache| cache.reader())
            .collect();
        let shared = || ShardShared {
            events: EventSink::new(event_sender.clone()),
            pools: pools.clone(),
            flush_sequence: flush_sequence.clone(),
            groups: SharedGroups::new(&config.groups),
            failed: failed.clone(),
        };
        let SpawnedShards {
            handles: shards,
            recovery_reports,
            error: mut first_error,
        } = spawn_shards(&config, make_storage, &cores, caches, &shared);
        let mut recovery = RecoveryReport::default();
        for opened in recovery_reports {
            match opened.recv().unwrap_or(Err(Error::Closed)) {
                Ok(report) => recovery.merge(report),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if let Some(error) = first_error {
            for shard in &shards {
                let _ = shard.close();
            }
            return Err(error);
        }
        recovery.partitions.sort_by_key(|p| p.partition);
        recovery.journal = journal_recovery;
        Ok(Engine {
            inner: Arc::new(EngineInner {
                assignment: (0..config.offsets_topic_num_partitions)
                    .map(|p| AtomicU32::new(p % config.shards as u32))
                    .collect(),
                moving: Mutex::new(()),
                readers,
                closed: AtomicBool::new(false),
                config,
                shards,
                recovery,
                events,
                dir_lock: Mutex::new(Some(dir_lock)),
                pools,
                completions,
                heartbeat_slots,
            }),
        })
    }

    /// What recovery found when this engine opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The offsets partition that stores `group_id`'s state (Kafka's mapping).
    pub fn partition_for(&self, group_id: &str) -> u32 {
        let config = &self.inner.config;
        config
            .group_partitioner
            .partition_for(group_id, config.offsets_topic_num_partitions)
    }

    /// Shard threads the engine runs.
    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// The shard now serving an offsets partition.
    pub fn shard_of(&self, offsets_partition: u32) -> Option<usize> {
        let assigned = self.inner.assignment.get(offsets_partition as usize)?;
        Some(assigned.load(Ordering::Relaxed) as usize)
    }

    fn shard_for(&self, offsets_partition: u32) -> &ShardHandle {
        let index = self.shard_of(offsets_partition).unwrap_or(0);
        &self.inner.shards[index % self.inner.shards.len()]
    }

    /// Moves an offsets partition to another shard, the path a broker takes on a leadership
    /// change: the current shard flushes what it has batched, closes the partition's log and
    /// stops serving it; the target shard recovers it from disk and starts serving it.
    /// Requests that reach the partition in between fail with `NotCoordinator`
    /// (retriable); nothing acknowledged is lost. Returns what the target's recovery found.
    pub fn move_partition(
        &self,
        offsets_partition: u32,
        to_shard: usize,
    ) -> Result<RecoveryReport> {
        let _moving = self
            .inner
            .moving
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let from = self
            .shard_of(offsets_partition)
            .ok_or(Error::NotCoordinator {
                partition: offsets_partition,
            })?;
        let target = self
            .inner
            .shards
            .get(to_shard)
            .ok_or(Error::InvalidRequest("no such shard"))?;
        if from == to_shard {
            return Ok(RecoveryReport::default());
        }
        let (reply, answer) = bounded(1);
        let unload = Request::Unload {
            partition: offsets_partition,
            reply,
        };
        self.inner.shards[from]
            .requests
            .send(unload)
            .map_err(|_| Error::Closed)?;
        let cache = answer.recv().unwrap_or(Err(Error::Closed))?;
        let loaded = load_on(target, offsets_partition, cache);
        let (error, cache) = match loaded {
            Ok(report) => {
                let assigned = &self.inner.assignment[offsets_partition as usize];
                assigned.store(to_shard as u32, Ordering::Relaxed);
                return Ok(report);
            }
            Err(failed) => failed,
        };
        // The target could not recover it: the source takes it back (from disk, with the
        // cache that came back), so the partition is not left served by no shard.
        if let Some(cache) = cache {
            let _ = load_on(&self.inner.shards[from], offsets_partition, cache);
        }
        Err(error)
    }

    /// Commits offsets for a group. The future resolves `Ok` once every offset is durable,
    /// or with the error that stopped it; nothing is written for a request that fails
    /// validation. Several offsets for one topic partition: the last one wins.
    ///
    /// Waits for queue space when the shard is saturated (backpressure).
    ///
    /// This is a simple commit (generation -1, no member id): as in Kafka, it fails with
    /// `UNKNOWN_MEMBER_ID` ([`Error::Group`]) while the group has members. Consumers in a
    /// group use [`Engine::commit_offsets_fenced`].
    pub fn commit_offsets(&self, group_id: &str, offsets: &[OffsetCommit<'_>]) -> CommitFuture {
        self.commit(group_id, None, offsets, NO_EXPIRE_TIMESTAMP_MS)
    }

    /// Like [`commit_offsets`](Self::commit_offsets), with an explicit expire timestamp (ms
    /// since the Unix epoch; OffsetCommit v1's retention): the retention check expires the
    /// offsets once it has passed, if the group has no members.
    pub fn commit_offsets_with_expiry(
        &self,
        group_id: &str,
        offsets: &[OffsetCommit<'_>],
        expire_timestamp_ms: i64,
    ) -> CommitFuture {
        if expire_timestamp_ms < 0 {
            return CommitFuture::resolved(Err(Error::InvalidRequest("negative expire timestamp")));
        }
        self.commit(group_id, None, offsets, expire_timestamp_ms)
    }

    /// Commits offsets for a group, validated first by the shard, as a simple commit
    /// (`fence` is `None`) or fenced by the committer's generation, member id and instance
    /// id (Kafka's OffsetCommit v1+): see [`Engine::commit_offsets_fenced`].
    fn commit(
        &self,
        group_id: &str,
        fence: Option<&crate::group::CommitFence>,
        offsets: &[OffsetCommit<'_>],
        expire_timestamp_ms: i64,
    ) -> CommitFuture {
        let config = &self.inner.config;
        let bytes_max = match validate_commit(config, group_id, offsets) {
            Ok(bytes) => bytes,
            Err(error) => return CommitFuture::resolved(Err(error)),
        };
        if offsets.is_empty() {
            return CommitFuture::resolved(Ok(()));
        }
        let deadline = Instant::now() + Duration::from_millis(config.offsets_commit_timeout_ms);
        self.send_pending(group_id, deadline, |commit, offsets_partition| {
            commit.fill(
                group_id,
                offsets_partition,
                offsets,
                bytes_max,
                expire_timestamp_ms,
            );
            commit.set_fence(fence);
        })
    }

    /// Deletes the committed offsets of the given topic partitions of a group (Kafka's
    /// OffsetDelete): writes a tombstone for each, through the group commit. The future
    /// resolves once the tombstones are durable; fetches then find nothing, and the deleted
    /// offsets never come back, after compaction or recovery either. Deleting an offset that
    /// is not committed writes a tombstone all the same (harmless; compaction drops it).
    /// While the group has members it is refused with `GROUP_SUBSCRIBED_TO_TOPIC` (86):
    /// Kafka refuses it for the topics the members subscribe to, and their subscriptions
    /// are opaque to the engine.
    pub fn delete_offsets(&self, group_id: &str, partitions: &[(&str, i32)]) -> CommitFuture {
        if partitions.len() > COMMIT_PARTITIONS_MAX {
            let error = Error::InvalidRequest("too many partitions in one delete");
            return CommitFuture::resolved(Err(error));
        }
        let tombstones: Vec<PendingOffset> = partitions
            .iter()
            .map(|(topic, partition)| PendingOffset::tombstone(topic, *partition))
            .collect();
        if let Err(error) = validate_tombstones(group_id, &tombstones) {
            return CommitFuture::resolved(Err(error));
        }
        self.send_delete(group_id, Some(tombstones))
    }

    /// Deletes a group (Kafka's DeleteGroups): tombstones for every committed offset of the
    /// group and for its GroupMetadata record; the future resolves once the offsets'
    /// tombstones are durable. A group with members is refused with `NON_EMPTY_GROUP` (68),
    /// as Kafka does. The check and the tombstones happen on the shard thread that holds the
    /// group, so no member can join in between.
    pub fn delete_group(&self, group_id: &str) -> CommitFuture {
        if let Err(error) = validate_group(group_id) {
            return CommitFuture::resolved(Err(error));
        }
        self.send_delete(group_id, None)
    }

    /// Sends a deletion (a whole group, or these tombstones) to the shard holding the
    /// group, which decides and batches it on its thread.
    fn send_delete(&self, group_id: &str, tombstones: Option<Vec<PendingOffset>>) -> CommitFuture {
        if let Err(error) = self.ensure_open() {
            return CommitFuture::resolved(Err(error));
        }
        let timeout_ms = self.inner.config.offsets_commit_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let offsets_partition = self.partition_for(group_id);
        let (future, completer) =
            CommitFuture::pending(deadline, timeout_ms, &self.inner.completions);
        let request = Request::Group(GroupRequest::Delete {
            offsets_partition,
            group_id: group_id.to_owned(),
            tombstones,
            deadline,
            reply: completer,
        });
        // A failed send drops the completer, which fails the future.
        let sent = self
            .shard_for(offsets_partition)
            .requests
            .send_deadline(request, deadline);
        if let Err(SendTimeoutError::Timeout(_)) = sent {
            return CommitFuture::resolved(Err(Error::CommitTimeout { timeout_ms }));
        }
        future
    }

    /// Queues validated offsets (values or tombstones) for the group commit: `fill` copies
    /// them into a pooled request for the group's offsets partition.
    fn send_pending(
        &self,
        group_id: &str,
        deadline: Instant,
        fill: impl FnOnce(&mut PendingCommit, u32),
    ) -> CommitFuture {
        let config = &self.inner.config;
        let offsets_partition = self.partition_for(group_id);
        let now = Instant::now();
        let (future, completer) = CommitFuture::pending(
            deadline,
            config.offsets_commit_timeout_ms,
            &self.inner.completions,
        );
        // Pooled: refilled in place, no allocation once the pool is warm.
        let mut commit = self.inner.pools.commits.take();
        fill(&mut commit, offsets_partition);
        commit.arm(now, deadline, completer);
        // A full inbox blocks the caller (backpressure), but never past the commit's
        // deadline. A failed send drops the commit, and with it the completer, which fails
        // the future: `CommitTimeout` for a queue that stayed full, `Closed` otherwise.
        let sent = self
            .shard_for(offsets_partition)
            .requests
            .send_deadline(Request::Commit(commit), deadline);
        if let Err(SendTimeoutError::Timeout(_)) = sent {
            return CommitFuture::resolved(Err(Error::CommitTimeout {
                timeout_ms: config.offsets_commit_timeout_ms,
            }));
        }
        future
    }

    /// The committed offsets of the given topic partitions of a group, in the order asked;
    /// `None` where nothing is committed. Read from the lock-free offset cache on the
    /// calling thread: no hop to the shard, never blocked by a flush.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: &[(&str, i32)],
    ) -> Result<Vec<Option<CommittedOffset>>> {
        validate_group(group_id)?;
        self.ensure_open()?;
        Ok(fetch_from(self.reader_for(group_id), group_id, partitions))
    }

    /// Every committed offset of a group, sorted by topic and partition.
    pub fn fetch_all_offsets(&self, group_id: &str) -> Result<Vec<TopicPartitionOffset>> {
        validate_group(group_id)?;
        self.ensure_open()?;
        Ok(fetch_all_from(self.reader_for(group_id), group_id))
    }

    /// The groups with committed offsets in an offsets partition.
    pub fn groups_of_partition(&self, offsets_partition: u32) -> Result<Vec<String>> {
        self.ensure_open()?;
        let reader =
            self.inner
                .readers
                .get(offsets_partition as usize)
                .ok_or(Error::NotCoordinator {
                    partition: offsets_partition,
                })?;
        Ok(reader.groups())
    }

    fn reader_for(&self, group_id: &str) -> &OffsetCacheReader {
        // partition_for is always below offsets_topic_num_partitions = readers.len().
        &self.inner.readers[self.partition_for(group_id) as usize]
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// A subscription to the engine's events (offsets expired by retention, compactor
    /// trouble). Every clone of the receiver takes from the same bounded queue; shards drop
    /// (and count) events when it is full, so subscribe and drain it.
    pub fn events(&self) -> Receiver<EngineEvent> {
        self.inner.events.clone()
    }

    /// Runs the compactor on every shard until nothing is cleanable at `now_ms` (ms since the
    /// Unix epoch: tombstones written before `now_ms - delete.retention.ms` may be dropped).
    /// Returns the compactions run. For tests and operators; the background compactor
    /// (`log.cleaner.enable`) does the same in bounded steps at low priority.
    pub fn compact(&self, now_ms: i64) -> Result<u64> {
        self.ask_every_shard(|reply| Request::Compact { now_ms, reply })
    }

    /// Runs the offset retention check on every shard as if at `now_ms` (ms since the Unix
    /// epoch); returns the offsets expired. Each shard runs it by itself every
    /// `offsets.retention.check.interval.ms` against the wall clock; this lets tests and
    /// operators run it at a chosen time.
    pub fn run_retention_check(&self, now_ms: i64) -> Result<u64> {
        self.ask_every_shard(|reply| Request::RetentionCheck { now_ms, reply })
    }

    fn ask_every_shard(&self, request: impl Fn(Sender<Result<u64>>) -> Request) -> Result<u64> {
        self.ensure_open()?;
        let mut total = 0;
        for shard in &self.inner.shards {
            let (reply, answer) = bounded(1);
            shard
                .requests
                .send(request(reply))
                .map_err(|_| Error::Closed)?;
            total += answer.recv().map_err(|_| Error::Closed)??;
        }
        Ok(total)
    }

    /// A snapshot of every shard's metrics, in shard order.
    pub fn metrics(&self) -> Result<Vec<ShardMetrics>> {
        let mut all = Vec::with_capacity(self.inner.shards.len());
        for shard in &self.inner.shards {
            let (reply, answer) = bounded(1);
            shard
                .requests
                .send(Request::Metrics { reply })
                .map_err(|_| Error::Closed)?;
            let mut metrics = answer.recv().map_err(|_| Error::Closed)?;
            metrics.queue_depth = shard.requests.len();
            all.push(metrics);
        }
        Ok(all)
    }

    /// Flushes what is queued, trims and syncs the logs, stops the shards and releases the
    /// data directory. Later calls on any clone fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }
}

impl EngineInner {
    fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        let mut result = Ok(());
        for shard in &self.shards {
            let closed = shard.close();
            if result.is_ok() {
                result = closed;
            }
        }
        // Every shard has stopped writing: now another engine may open the directory.
        self.dir_lock
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        result
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        // Dropping the last handle closes the engine cleanly.
        let _ = self.close();
    }
}

/// Expire timestamp of an offset without explicit retention.
pub(crate) const NO_EXPIRE_TIMESTAMP_MS: i64 = -1;

/// Builds one shard's thread: named for debugging, pinned to its core so its partitions'
/// tables, buffers and io_uring stay in that core's caches (thread-per-core), and running
/// recovery of its own partitions before serving. Returns the handle and a channel that
/// delivers the recovery result.
fn spawn_shard(
    index: usize,
    config: &Config,
    storage: Box<dyn Storage>,
    hosted: Vec<(u32, Box<OffsetCache>)>,
    core: Option<core_affinity::CoreId>,
    shared: ShardShared,
) -> Result<(ShardHandle, Receiver<Result<RecoveryReport>>)> {
    // Bounded so callers block instead of memory growing when the disk falls behind.
    let (requests, inbox) = bounded(config.request_queue_depth_max);
    let (opened_tx, opened_rx) = bounded(1);
    let shard_config = config.clone();
    let heartbeats = shared.heartbeat_board();
    let thread = std::thread::Builder::new()
        .name(format!("coffer-shard-{index}"))
        .spawn(move || {
            let mut storage = storage;
            if let Some(core) = core {
                // Best effort: an unpinned shard is slower, not wrong.
                if core_affinity::set_for_current(core) {
                    // The ring's kernel workers (write copies, sync waits) run on this core
                    // while the shard waits for them, not on the committers' cores. Best
                    // effort too: older kernels lack the call.
                    let _unconfined_is_slower_not_wrong = storage.confine_workers_to_this_thread();
                }
            }
            match Shard::open(&shard_config, storage, hosted, index, shared) {
                Ok((shard, report)) => {
                    if opened_tx.send(Ok(report)).is_ok() {
                        shard.run(inbox);
                    }
                }
                Err(error) => {
                    let _ = opened_tx.send(Err(error));
                }
            }
        })
        .map_err(|e| Error::io("spawning a shard thread", e))?;
    let handle = ShardHandle {
        requests,
        heartbeats,
        thread: Mutex::new(Some(thread)),
    };
    Ok((handle, opened_rx))
}

/// Asks `shard` to load an offsets partition with its cache; on failure the cache comes back
/// (unless the shard is gone).
fn load_on(
    shard: &ShardHandle,
    partition: u32,
    cache: Box<OffsetCache>,
) -> std::result::Result<RecoveryReport, (Error, Option<Box<OffsetCache>>)> {
    let (reply, answer) = bounded(1);
    let load = Request::Load {
        partition,
        cache,
        reply,
    };
    if shard.requests.send(load).is_err() {
        return Err((Error::Closed, None));
    }
    match answer.recv() {
        Ok(Ok(report)) => Ok(report),
        Ok(Err((error, cache))) => Err((error, Some(cache))),
        Err(_) => Err((Error::Closed, None)),
    }
}

/// Makes the production storages: one io_uring each, syncing with `scope`.
pub(crate) fn uring_storages(
    scope: crate::config::FsyncScope,
) -> impl Fn() -> std::io::Result<Box<dyn Storage>> {
    move || Ok(Box::new(UringStorage::with_fsync_scope(scope)?))
}

/// A data directory made ready for shards to open in it.
pub(crate) struct DataDir {
    /// The storage holding the directory's lock.
    pub(crate) dir_lock: Box<dyn Storage>,
    /// What the journals held; already written back into the segments.
    pub(crate) journal_recovery: crate::journal::JournalRecovery,
    /// The flush counter the shards opened in it share.
    pub(crate) flush_sequence: crate::sync::Arc<FlushSequence>,
}

/// What both ways in ([`Engine`], `LocalShard`) do before any shard opens: check the config,
/// create and lock the data directory, and redo the journals into the segments, before any
/// partition is read.
pub(crate) fn open_data_dir(
    config: &Config,
    make_storage: &dyn Fn() -> std::io::Result<Box<dyn Storage>>,
) -> Result<DataDir> {
    config.validate()?;
    let mut dir_lock = make_storage().map_err(|e| Error::io("creating a storage", e))?;
    lock_data_dir(dir_lock.as_mut(), &config.data_dir)?;
    let journal_recovery = crate::journal::redo(dir_lock.as_mut(), &config.data_dir)?;
    Ok(DataDir {
        dir_lock,
        journal_recovery,
        flush_sequence: crate::sync::Arc::new(FlushSequence::new()),
    })
}

/// Creates and locks the data directory, mapping failures to typed errors.
fn lock_data_dir(storage: &mut dyn Storage, data_dir: &Path) -> Result<()> {
    let unusable = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            Error::DataDirUnwritable {
                path: data_dir.to_path_buf(),
                source: e,
            }
        }
        _ => Error::io(format!("opening data directory {}", data_dir.display()), e),
    };
    storage
        .create_dir_all(data_dir)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
                Error::DataDirNotDirectory(data_dir.to_path_buf())
            }
            _ => unusable(e),
        })?;
    storage.lock_dir(data_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock => Error::DataDirLocked(data_dir.to_path_buf()),
        _ => unusable(e),
    })
}

/// The committed offsets of the given topic partitions of a group, read lock-free.
pub(crate) fn fetch_from(
    reader: &OffsetCacheReader,
    group_id: &str,
    partitions: &[(&str, i32)],
) -> Vec<Option<CommittedOffset>> {
    let guard = reader.pin();
    partitions
        .iter()
        .map(|(topic, partition)| guard.get(group_id, topic, *partition).map(committed))
        .collect()
}

/// Every committed offset of a group, sorted by topic and partition, read lock-free.
pub(crate) fn fetch_all_from(
    reader: &OffsetCacheReader,
    group_id: &str,
) -> Vec<TopicPartitionOffset> {
    let guard = reader.pin();
    let mut all = Vec::new();
    guard.for_each_in_group(group_id, |topic, partition, value| {
        all.push(TopicPartitionOffset {
            topic: topic.to_owned(),
            partition,
            committed: committed(value),
        });
    });
    all.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    all
}

fn committed(value: crate::cache::OffsetValueRef<'_>) -> CommittedOffset {
    CommittedOffset {
        offset: value.offset,
        leader_epoch: (value.leader_epoch >= 0).then_some(value.leader_epoch),
        metadata: value.metadata.to_owned(),
        commit_timestamp_ms: value.commit_timestamp_ms,
        expire_timestamp_ms: (value.expire_timestamp_ms >= 0).then_some(value.expire_timestamp_ms),
    }
}

/// Spawns the engine's shards, each with its own storage and the offsets partitions it
/// hosts (round robin), their caches and what `shared` makes for each; returns them with the channels their recovery
/// reports arrive on. Stops at the first shard that cannot start, returning its error.
fn spawn_shards(
    config: &Config,
    make_storage: &dyn Fn() -> std::io::Result<Box<dyn Storage>>,
    cores: &[core_affinity::CoreId],
    mut caches: Vec<Option<Box<OffsetCache>>>,
    shared: &dyn Fn() -> ShardShared,
) -> SpawnedShards {
    let mut spawned_shards = SpawnedShards {
        handles: Vec::with_capacity(config.shards),
        recovery_reports: Vec::with_capacity(config.shards),
        error: None,
    };
    for index in 0..config.shards {
        let hosted: Vec<(u32, Box<OffsetCache>)> = (0..config.offsets_topic_num_partitions)
            .filter(|p| *p as usize % config.shards == index)
            .filter_map(|p| Some((p, caches[p as usize].take()?)))
            .collect();
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let spawned = make_storage()
            .map_err(|e| Error::io("creating a storage", e))
            .and_then(|storage| spawn_shard(index, config, storage, hosted, core, shared()));
        match spawned {
            Ok((handle, opened)) => {
                spawned_shards.handles.push(handle);
                spawned_shards.recovery_reports.push(opened);
            }
            Err(error) => {
                spawned_shards.error = Some(error);
                break;
            }
        }
    }
    spawned_shards
}

/// What [`spawn_shards`] started.
struct SpawnedShards {
    handles: Vec<ShardHandle>,
    /// Where each started shard's recovery report (or failure) arrives.
    recovery_reports: Vec<Receiver<Result<RecoveryReport>>>,
    /// Why the next shard could not start, if one could not.
    error: Option<Error>,
}

/// The cores the shards are pinned to, in shard order (empty: not pinned). Refuses a
/// `shard_cores` entry this process may not run on, before anything is opened.
fn shard_cores(config: &Config) -> Result<Vec<core_affinity::CoreId>> {
    if !config.pin_shards {
        return Ok(Vec::new());
    }
    let available = core_affinity::get_core_ids().unwrap_or_default();
    if config.shard_cores.is_empty() {
        return Ok(available);
    }
    config
        .shard_cores
        .iter()
        .map(|&id| {
            available
                .iter()
                .find(|core| core.id == id)
                .copied()
                .ok_or_else(|| {
                    Error::InvalidConfig(format!(
                        "shard_cores lists core {id}, which this process may not run on                          (available: {:?})",
                        available.iter().map(|core| core.id).collect::<Vec<_>>()
                    ))
                })
        })
        .collect()
}

pub(crate) fn validate_group(group_id: &str) -> Result<()> {
    if group_id.is_empty() {
        return Err(Error::InvalidGroupId("empty"));
    }
    if group_id.len() > KAFKA_STRING_BYTES_MAX {
        return Err(Error::InvalidGroupId("longer than 32767 bytes"));
    }
    Ok(())
}

/// Checks the keys of tombstones before anything is queued (their number and size are
/// bounded by the caller, and split into requests by `send_tombstones`).
fn validate_tombstones(group_id: &str, tombstones: &[PendingOffset]) -> Result<()> {
    validate_group(group_id)?;
    for tombstone in tombstones {
        validate_topic_partition(&tombstone.topic, tombstone.partition)?;
    }
    Ok(())
}

fn validate_topic_partition(topic: &str, partition: i32) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::InvalidTopic("empty"));
    }
    if topic.len() > KAFKA_STRING_BYTES_MAX {
        return Err(Error::InvalidTopic("longer than 32767 bytes"));
    }
    if !(0..crate::cache::DEFAULT_MAX_PARTITIONS).contains(&partition) {
        return Err(Error::InvalidPartition(partition));
    }
    Ok(())
}

/// Checks a commit before anything is queued; returns the upper bound of its encoded bytes.
pub(crate) fn validate_commit(
    config: &Config,
    group_id: &str,
    offsets: &[OffsetCommit<'_>],
) -> Result<usize> {
    validate_group(group_id)?;
    if offsets.len() > COMMIT_PARTITIONS_MAX {
        return Err(Error::InvalidRequest("too many partitions in one commit"));
    }
    let mut bytes = crate::format::BATCH_HEADER_BYTES;
    for commit in offsets {
        validate_topic_partition(commit.topic, commit.partition)?;
        if commit.offset < 0 {
            return Err(Error::InvalidOffset(commit.offset));
        }
        if commit.leader_epoch.is_some_and(|epoch| epoch < 0) {
            return Err(Error::InvalidRequest("negative leader epoch"));
        }
        if commit.metadata.len() > config.offset_metadata_max_bytes {
            return Err(Error::OffsetMetadataTooLarge {
                len: commit.metadata.len(),
                max: config.offset_metadata_max_bytes,
            });
        }
        bytes += commit_record_bytes_max(group_id, commit.topic, commit.metadata);
    }
    if bytes > PARTITION_BATCH_BYTES_MAX || bytes > config.group_commit_bytes_max {
        return Err(Error::CommitTooLarge {
            bytes,
            max: PARTITION_BATCH_BYTES_MAX.min(config.group_commit_bytes_max),
        });
    }
    Ok(bytes - crate::format::BATCH_HEADER_BYTES)
}
