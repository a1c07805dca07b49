//! The shard-local API, for thread-per-core brokers: each of the broker's executors owns one
//! [`LocalShard`] and calls it directly for the offsets partitions that core owns — no
//! channel, no cross-thread hop, no thread of the engine's own.
//!
//! The broker drives group commit itself: [`LocalShard::commit_offsets`] only validates and
//! batches (it returns at once with a [`CommitFuture`]), and [`LocalShard::flush`] writes and
//! syncs everything batched in one storage submission, then resolves the futures. Calling
//! `flush` whenever the executor has run out of other work gives the same adaptive batching
//! as the engine's own shard threads: what arrived while the last flush ran forms the next.
//!
//! `flush` blocks the calling thread for one write + `fdatasync` round (tens of µs to a few
//! ms). A broker that must not block its executor that long calls it from a task that yields
//! first, or uses the [`Engine`](crate::Engine) handle, whose shards are threads of their own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};

use super::group_commit::CommitPool;
use super::{
    FailedPartitions, GroupRequest, HeartbeatBoard, HeartbeatPool, RecoveryReport, RequestPools,
    Shard, ShardMetrics, ShardShared, SharedGroups,
};
use crate::cache::{OffsetCache, OffsetCacheReader};
use crate::completion::{Abandoned, CommitFuture, Completer, CompletionPool, GroupFuture};
use crate::config::Config;
use crate::engine::{
    DataDir, NO_EXPIRE_TIMESTAMP_MS, fetch_all_from, fetch_from, open_data_dir, uring_storages,
    validate_commit, validate_group,
};
use crate::error::{Error, Result};
use crate::events::{EVENT_QUEUE_DEPTH_MAX, EngineEvent, EventSink};
use crate::group::{
    CommitFence, GroupDescription, GroupError, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupResponse, LeavingMember, ListedGroup, SyncGroupRequest, SyncGroupResponse,
};
use crate::journal::FlushSequence;
use crate::offsets::{CommittedOffset, OffsetCommit, TopicPartitionOffset};
use crate::storage::Storage;

/// One shard of the engine, owned and driven by the calling thread.
///
/// ```
/// # fn main() -> coffer::Result<()> {
/// use coffer::{Config, LocalShard, OffsetCommit};
///
/// let dir = std::env::temp_dir().join(format!("coffer-local-doc-{}", std::process::id()));
/// let mut config = Config::new(&dir);
/// config.offsets_topic_num_partitions = 4;
/// config.offsets_topic_segment_bytes = 1 << 20;
/// config.shards = 2;
/// // One shard per executor: move each into its own thread.
/// let mut shards = LocalShard::open_all(config)?;
/// let shard = shards
///     .iter_mut()
///     .find(|s| s.owns_group("billing"))
///     .expect("some shard owns every group");
///
/// let commit = OffsetCommit { topic: "orders", partition: 0, offset: 42, leader_epoch: None, metadata: "" };
/// let durable = shard.commit_offsets("billing", &[commit]);
/// shard.flush(); // one write + fdatasync for everything batched
/// durable.wait()?;
/// let fetched = shard.fetch_offsets("billing", &[("orders", 0)])?;
/// assert_eq!(fetched[0].as_ref().map(|c| c.offset), Some(42));
/// for shard in shards {
///     shard.close()?;
/// }
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
pub struct LocalShard {
    /// `None` once closed.
    shard: Option<Shard>,
    index: usize,
    config: Config,
    /// Per offsets partition: a reader of its cache while this shard serves it.
    readers: Vec<Option<OffsetCacheReader>>,
    commits: CommitPool,
    completions: CompletionPool,
    recovery: RecoveryReport,
    /// Subscribers' end of the event queue the shards opened together share.
    events: Receiver<EngineEvent>,
    /// The data directory's lock, shared by the shards opened together; released when the
    /// last of them is gone.
    _dir_lock: DirLock,
    heartbeats: HeartbeatBoard,
}

/// The storage holding a data directory's lock, shared by the shards opened together.
type DirLock = Arc<Mutex<Box<dyn Storage>>>;

/// What one shard opens with: its index, storage, partitions with their caches, event sink
/// and the flush counter all the shards share.
type ShardPlan = (
    usize,
    Box<dyn Storage>,
    Vec<(u32, Box<OffsetCache>)>,
    EventSink,
    crate::sync::Arc<FlushSequence>,
);

/// An offsets partition on its way from one [`LocalShard`] to another (a leadership change
/// between cores): its offsets travel with it, so readers never see them go back.
pub struct PartitionHandoff {
    partition: u32,
    cache: Box<OffsetCache>,
}

/// A partition a shard could not adopt: why, and the handoff to try elsewhere.
pub struct AdoptFailed {
    /// What stopped the adoption (the partition's log could not be recovered here).
    pub error: Error,
    /// The partition, still carrying its offsets.
    pub handoff: PartitionHandoff,
}

impl std::fmt::Debug for AdoptFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "adopting offsets partition {} failed: {}",
            self.handoff.partition, self.error
        )
    }
}

impl PartitionHandoff {
    /// The offsets partition handed off.
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl LocalShard {
    /// Opens (creating if needed) the data directory in `config`, takes its lock and
    /// recovers every offsets partition into `config.shards` shards (in parallel), shard `i`
    /// owning the partitions `p` with `p % shards == i` — the layout [`Engine`] uses, so
    /// either can reopen what the other wrote. Shards are not pinned: the caller's
    /// executors already are.
    ///
    /// [`Engine`]: crate::Engine
    pub fn open_all(config: Config) -> Result<Vec<LocalShard>> {
        let make = uring_storages(config.fsync_scope);
        LocalShard::open_all_with_storage(config, &make)
    }

    /// [`open_all`](Self::open_all) over storages made by `make_storage` (one holds the
    /// directory lock, each shard gets its own).
    pub fn open_all_with_storage(
        config: Config,
        make_storage: &dyn Fn() -> std::io::Result<Box<dyn Storage>>,
    ) -> Result<Vec<LocalShard>> {
        let DataDir {
            dir_lock,
            journal_recovery,
            flush_sequence,
        } = open_data_dir(&config, make_storage)?;
        let storage_error = |e| Error::io("creating a storage", e);
        let dir_lock = Arc::new(Mutex::new(dir_lock));
        let (event_sender, events) = bounded(EVENT_QUEUE_DEPTH_MAX);
        let partitions = config.offsets_topic_num_partitions;
        let mut plans = Vec::with_capacity(config.shards);
        for index in 0..config.shards {
            let storage = make_storage().map_err(storage_error)?;
            let hosted: Vec<(u32, Box<OffsetCache>)> = (0..partitions)
                .filter(|p| *p as usize % config.shards == index)
                .map(|p| (p, Box::new(OffsetCache::new())))
                .collect();
            let sink = EventSink::new(event_sender.clone());
            plans.push((index, storage, hosted, sink, flush_sequence.clone()));
        }
        let opened: Vec<Result<LocalShard>> = std::thread::scope(|scope| {
            let config = &config;
            let shared = (&dir_lock, &events);
            let opening: Vec<_> = plans
                .into_iter()
                .map(|plan| scope.spawn(move || LocalShard::open_one(config, plan, shared)))
                .collect();
            opening
                .into_iter()
                .map(|thread| thread.join().unwrap_or(Err(Error::Closed)))
                .collect()
        });
        let mut shards: Vec<LocalShard> = opened.into_iter().collect::<Result<_>>()?;
        // The journals were redone once for all the shards; the first reports it.
        if let Some(first) = shards.first_mut() {
            first.recovery.journal = journal_recovery;
        }
        Ok(shards)
    }

    fn open_one(
        config: &Config,
        (index, storage, hosted, events_sink, flush_sequence): ShardPlan,
        (dir_lock, events): (&DirLock, &Receiver<EngineEvent>),
    ) -> Result<LocalShard> {
        let mut readers: Vec<Option<OffsetCacheReader>> = (0..config.offsets_topic_num_partitions)
            .map(|_| None)
            .collect();
        for (partition, cache) in &hosted {
            readers[*partition as usize] = Some(cache.reader());
        }
        // The batch caps flushes; a request beyond them flushes first (see commit_offsets),
        // so this many pooled requests covers a full batch.
        let pooled = config.request_queue_depth_max;
        let commits = CommitPool::new(pooled);
        let pools = RequestPools {
            commits: commits.clone(),
            // Heartbeats here never cross threads (`LocalShard::heartbeat`): nothing to pool.
            heartbeats: HeartbeatPool::new(1),
        };
        let shared = ShardShared {
            events: events_sink,
            pools,
            flush_sequence,
            groups: SharedGroups::new(&config.groups),
            failed: crate::sync::Arc::new(FailedPartitions::new(
                config.offsets_topic_num_partitions,
            )),
        };
        let heartbeats = shared.heartbeat_board();
        let (shard, recovery) = Shard::open(config, storage, hosted, index, shared)?;
        Ok(LocalShard {
            shard: Some(shard),
            index,
            config: config.clone(),
            readers,
            commits,
            completions: CompletionPool::prefilled(pooled),
            recovery,
            events: events.clone(),
            _dir_lock: Arc::clone(dir_lock),
            heartbeats,
        })
    }

    /// This shard's index among those opened together.
    pub fn index(&self) -> usize {
        self.index
    }

    /// What recovery found in this shard's partitions.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The offsets partition that stores `group_id`'s state.
    pub fn partition_for(&self, group_id: &str) -> u32 {
        self.config
            .group_partitioner
            .partition_for(group_id, self.config.offsets_topic_num_partitions)
    }

    /// Whether this shard serves an offsets partition now.
    pub fn owns(&self, offsets_partition: u32) -> bool {
        self.readers
            .get(offsets_partition as usize)
            .is_some_and(Option::is_some)
    }

    /// Whether this shard serves `group_id`'s offsets partition now.
    pub fn owns_group(&self, group_id: &str) -> bool {
        self.owns(self.partition_for(group_id))
    }

    /// Validates and batches a commit; the future resolves after the next [`flush`]
    /// makes it durable (or fails it). Nothing is written for a request that fails
    /// validation. A group whose partition this shard does not serve gets `NotCoordinator`.
    /// When the batch is full (`group_commit_bytes_max`, or a partition's share), this call
    /// flushes it first.
    ///
    /// [`flush`]: Self::flush
    ///
    /// This is a simple commit (generation -1, no member id), refused with
    /// `UNKNOWN_MEMBER_ID` while the group has members, as in Kafka; consumers in a group use
    /// [`commit_offsets_fenced`](Self::commit_offsets_fenced).
    pub fn commit_offsets(&mut self, group_id: &str, offsets: &[OffsetCommit<'_>]) -> CommitFuture {
        self.commit(group_id, None, offsets)
    }

    /// An offset commit fenced by the group's generation and member (see
    /// [`Engine::commit_offsets_fenced`](crate::Engine::commit_offsets_fenced)); checked at
    /// once, on this thread.
    pub fn commit_offsets_fenced(
        &mut self,
        group_id: &str,
        fence: &CommitFence,
        offsets: &[OffsetCommit<'_>],
    ) -> CommitFuture {
        self.commit(group_id, Some(fence), offsets)
    }

    fn commit(
        &mut self,
        group_id: &str,
        fence: Option<&CommitFence>,
        offsets: &[OffsetCommit<'_>],
    ) -> CommitFuture {
        let bytes_max = match validate_commit(&self.config, group_id, offsets) {
            Ok(bytes) => bytes,
            Err(error) => return CommitFuture::resolved(Err(error)),
        };
        if offsets.is_empty() {
            return CommitFuture::resolved(Ok(()));
        }
        let partition = self.partition_for(group_id);
        if !self.owns(partition) {
            return CommitFuture::resolved(Err(Error::NotCoordinator { partition }));
        }
        let Some(shard) = self.shard.as_mut() else {
            return CommitFuture::resolved(Err(Error::Closed));
        };
        let timeout_ms = self.config.offsets_commit_timeout_ms;
        let accepted = Instant::now();
        let deadline = accepted + Duration::from_millis(timeout_ms);
        let (future, completer) = CommitFuture::pending(deadline, timeout_ms, &self.completions);
        let mut commit = self.commits.take();
        commit.fill(
            group_id,
            partition,
            offsets,
            bytes_max,
            NO_EXPIRE_TIMESTAMP_MS,
        );
        commit.set_fence(fence);
        commit.arm(accepted, deadline, completer);
        // Fenced by the group's generation here, on the thread that holds the group.
        let Some(commit) = shard.fence_commit(commit) else {
            return future;
        };
        if let Err(commit) = shard.batch.try_add(commit) {
            shard.flush();
            shard.after_flush();
            // An empty batch takes any validated commit; were it refused, dropping it
            // fails its future with `Closed` rather than losing it silently.
            let added = shard.batch.try_add(commit);
            debug_assert!(added.is_ok(), "an empty batch refused a validated commit");
        }
        future
    }

    /// JoinGroup (see [`Engine::join_group`](crate::Engine::join_group)). A join that has to
    /// wait for the rest of the group resolves during a later [`flush`](Self::flush), which
    /// also runs the groups' timers.
    pub fn join_group(&mut self, request: JoinGroupRequest) -> GroupFuture<JoinGroupResponse> {
        let partition = self.partition_for(&request.group_id);
        let refusal = self.group_refusal(&request.group_id, partition);
        if let Some(error) = refusal {
            return GroupFuture::resolved(JoinGroupResponse::error(error, request.member_id));
        }
        self.group_call(|reply| GroupRequest::Join {
            offsets_partition: partition,
            request,
            reply,
        })
    }

    /// SyncGroup; resolves once the leader's assignment is durable (during a later
    /// [`flush`](Self::flush)).
    pub fn sync_group(&mut self, request: SyncGroupRequest) -> GroupFuture<SyncGroupResponse> {
        let partition = self.partition_for(&request.group_id);
        if let Some(error) = self.group_refusal(&request.group_id, partition) {
            return GroupFuture::resolved(SyncGroupResponse::error(error));
        }
        self.group_call(|reply| GroupRequest::Sync {
            offsets_partition: partition,
            request,
            reply,
        })
    }

    /// Heartbeat, answered at once: O(1), no allocation, no disk. `Err(RebalanceInProgress)`
    /// tells the member to rejoin.
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> std::result::Result<(), GroupError> {
        let partition = self.partition_for(group_id);
        if let Some(error) = self.group_refusal(group_id, partition) {
            return Err(error);
        }
        let shard = self.shard.as_mut().ok_or(GroupError::NotCoordinator)?;
        let member = (group_id, member_id, group_instance_id);
        shard.heartbeat_here(partition, member, generation_id)
    }

    /// A handle that answers this shard's heartbeats from any thread (most of them; `None`
    /// sends the rest here, to [`heartbeat`](Self::heartbeat)): hand it to the broker's
    /// other cores so a heartbeat needs no hop to this one.
    pub fn heartbeat_board(&self) -> HeartbeatBoard {
        self.heartbeats.clone()
    }

    /// LeaveGroup for one or more members.
    pub fn leave_group(
        &mut self,
        group_id: &str,
        members: Vec<LeavingMember>,
    ) -> GroupFuture<LeaveGroupResponse> {
        let partition = self.partition_for(group_id);
        if let Some(error) = self.group_refusal(group_id, partition) {
            return GroupFuture::resolved(LeaveGroupResponse {
                error: Some(error),
                members: Vec::new(),
            });
        }
        self.group_call(|reply| GroupRequest::Leave {
            offsets_partition: partition,
            group_id: group_id.to_owned(),
            members,
            reply,
        })
    }

    /// DeleteGroups (see [`Engine::delete_group`](crate::Engine::delete_group)): refused with
    /// `NON_EMPTY_GROUP` while the group has members; otherwise tombstones for its offsets
    /// and metadata, durable after the next [`flush`](Self::flush) resolves the future.
    /// Commits batched before it are flushed first, on this call (it blocks for that
    /// write), so that their keys are tombstoned too; they are not counted by the next
    /// `flush`.
    pub fn delete_group(&mut self, group_id: &str) -> CommitFuture {
        if let Err(error) = validate_group(group_id) {
            return CommitFuture::resolved(Err(error));
        }
        let partition = self.partition_for(group_id);
        if !self.owns(partition) {
            return CommitFuture::resolved(Err(Error::NotCoordinator { partition }));
        }
        let Some(shard) = self.shard.as_mut() else {
            return CommitFuture::resolved(Err(Error::Closed));
        };
        let timeout_ms = self.config.offsets_commit_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let (future, reply) = CommitFuture::pending(deadline, timeout_ms, &self.completions);
        shard.handle_group(GroupRequest::Delete {
            offsets_partition: partition,
            group_id: group_id.to_owned(),
            tombstones: None,
            deadline,
            reply,
        });
        future
    }

    /// DescribeGroups for groups this shard serves (`None` for a group it holds no state
    /// of, including groups that only have committed offsets).
    pub fn describe_group(&self, group_id: &str) -> Result<Option<GroupDescription>> {
        self.reader_for(group_id)?;
        let shard = self.shard.as_ref().ok_or(Error::Closed)?;
        Ok(shard.describe_here(group_id))
    }

    /// ListGroups: the groups this shard's coordinator holds.
    pub fn list_groups(&self) -> Result<Vec<ListedGroup>> {
        let shard = self.shard.as_ref().ok_or(Error::Closed)?;
        let mut listed = Vec::new();
        shard.list_here(&mut listed);
        Ok(listed)
    }

    /// Why a group call for `group_id` cannot be served here, if it cannot.
    fn group_refusal(&self, group_id: &str, partition: u32) -> Option<GroupError> {
        if validate_group(group_id).is_err() {
            return Some(GroupError::InvalidGroupId);
        }
        (self.shard.is_none() || !self.owns(partition)).then_some(GroupError::NotCoordinator)
    }

    /// Hands a group request to the coordinator on this thread; what it cannot answer at
    /// once is answered by a later `flush`.
    fn group_call<T: Abandoned>(
        &mut self,
        request: impl FnOnce(Completer<T>) -> GroupRequest,
    ) -> GroupFuture<T> {
        let (future, completer) = GroupFuture::pending();
        if let Some(shard) = self.shard.as_mut() {
            shard.handle_group(request(completer));
            shard.service_groups();
        }
        future
    }

    /// Requests batched and not yet flushed.
    pub fn pending_requests(&self) -> usize {
        self.shard
            .as_ref()
            .map_or(0, |shard| shard.batch.requests.len())
    }

    /// Group-commits everything batched: one batch per dirty partition, all written and
    /// synced in one storage submission, then every batched future resolves. Blocks the
    /// calling thread for that round; under sustained load the compactor then takes the
    /// bounded steps those commits earned. Returns the requests it answered.
    ///
    /// With nothing batched it does one round of idle maintenance instead — the offset
    /// retention check when due, one bounded compaction step, freeing the offset caches'
    /// retired memory. Either way it then services the groups: due session and rebalance
    /// timers, GroupMetadata writes, and the joins and syncs they complete. Call it when the
    /// executor is idle too, and at least every few milliseconds while groups are active.
    pub fn flush(&mut self) -> usize {
        let Some(shard) = self.shard.as_mut() else {
            return 0;
        };
        if shard.batch.is_empty() {
            shard.idle_step();
            shard.service_groups();
            return 0;
        }
        let answered = shard.batch.requests.len();
        shard.flush();
        shard.after_flush();
        shard.retention_if_due();
        shard.service_groups();
        answered
    }

    /// The committed offsets of the given topic partitions of a group, in the order asked;
    /// `None` where nothing is committed. Read from memory.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: &[(&str, i32)],
    ) -> Result<Vec<Option<CommittedOffset>>> {
        let reader = self.reader_for(group_id)?;
        Ok(fetch_from(reader, group_id, partitions))
    }

    /// Every committed offset of a group, sorted by topic and partition.
    pub fn fetch_all_offsets(&self, group_id: &str) -> Result<Vec<TopicPartitionOffset>> {
        let reader = self.reader_for(group_id)?;
        Ok(fetch_all_from(reader, group_id))
    }

    /// A lock-free reader of an offsets partition's cache, to serve fetches from other
    /// threads; `None` if this shard does not serve the partition. A reader keeps working
    /// (with the values it last saw published) after the partition moves away.
    pub fn reader(&self, offsets_partition: u32) -> Option<OffsetCacheReader> {
        self.readers.get(offsets_partition as usize)?.clone()
    }

    fn reader_for(&self, group_id: &str) -> Result<&OffsetCacheReader> {
        validate_group(group_id)?;
        if self.shard.is_none() {
            return Err(Error::Closed);
        }
        let partition = self.partition_for(group_id);
        self.readers
            .get(partition as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::NotCoordinator { partition })
    }

    /// Events (offset expiries, quarantined segments) from every shard opened with this
    /// one: one bounded queue; a full queue drops events and counts them.
    pub fn events(&self) -> Receiver<EngineEvent> {
        self.events.clone()
    }

    /// A snapshot of this shard's metrics.
    pub fn metrics(&self) -> Result<ShardMetrics> {
        let shard = self.shard.as_ref().ok_or(Error::Closed)?;
        let mut metrics = shard.metrics_snapshot();
        metrics.queue_depth = shard.batch.requests.len();
        Ok(metrics)
    }

    /// Stops serving an offsets partition (what is batched is flushed first, its log is
    /// trimmed, synced and closed) and hands it off for another shard to
    /// [`adopt`](Self::adopt_partition). Later commits for it here get `NotCoordinator`. If
    /// closing the log fails, the partition stays here failed closed (no retry of a failed
    /// sync); releasing it again hands it off, and the adopter recovers it from disk.
    pub fn release_partition(&mut self, offsets_partition: u32) -> Result<PartitionHandoff> {
        let shard = self.shard.as_mut().ok_or(Error::Closed)?;
        let cache = shard.unload_partition(offsets_partition)?;
        self.readers[offsets_partition as usize] = None;
        Ok(PartitionHandoff {
            partition: offsets_partition,
            cache,
        })
    }

    /// Starts serving a partition another shard released: recovers its log from disk (only
    /// to check it: its offsets arrive with it) and serves it. On failure the handoff comes
    /// back with the error, so the partition can be adopted elsewhere (or back).
    pub fn adopt_partition(
        &mut self,
        handoff: PartitionHandoff,
    ) -> std::result::Result<RecoveryReport, AdoptFailed> {
        let Some(shard) = self.shard.as_mut() else {
            let error = Error::Closed;
            return Err(AdoptFailed { error, handoff });
        };
        let PartitionHandoff { partition, cache } = handoff;
        let reader = cache.reader();
        let mut report = RecoveryReport::default();
        if let Err((error, cache)) = shard.try_load_partition(partition, cache, false, &mut report)
        {
            let handoff = PartitionHandoff { partition, cache };
            return Err(AdoptFailed { error, handoff });
        }
        self.readers[partition as usize] = Some(reader);
        Ok(report)
    }

    /// Flushes what is batched, trims and syncs the logs and closes them. The data
    /// directory is unlocked once every shard opened with this one is closed or dropped.
    pub fn close(mut self) -> Result<()> {
        self.close_shard()
    }

    fn close_shard(&mut self) -> Result<()> {
        let Some(mut shard) = self.shard.take() else {
            return Ok(());
        };
        if !shard.batch.is_empty() {
            shard.flush();
        }
        shard.close()
    }
}

impl Drop for LocalShard {
    fn drop(&mut self) {
        // Dropping a shard closes it cleanly; errors are for `close` to report.
        let _ = self.close_shard();
    }
}
