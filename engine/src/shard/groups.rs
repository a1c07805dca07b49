//! The shard's side of consumer groups: one [`GroupCoordinator`] for the groups of the
//! shard's offsets partitions. Group requests arrive through the shard's inbox; JoinGroup
//! and SyncGroup park their completers under a ticket until the coordinator answers.
//! GroupMetadata records are written through the shard's storage after each flush, in one
//! submission for all partitions, and their waiting SyncGroups are answered once durable.
//! The loop wakes every [`GROUP_TICK_INTERVAL`] while any session or rebalance deadline is
//! armed.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::group_commit::{PendingCommit, PendingOffset, tombstone_chunks};
use super::{FailedPartitions, Shard, wall_clock_ms};
use crate::completion::{Abandoned, CommitFuture, Completer, CompletionPool};
use crate::error::{Error, Result};
use crate::format::{
    BATCH_HEADER_BYTES, BatchParams, BatchWriter, GroupMetadataKey, GroupMetadataValue,
};
use crate::group::{
    CommitFence, GroupConfig, GroupCoordinator, GroupDescription, GroupError, GroupReply,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupResponse, LeavingMember, ListedGroup,
    PersistRecord, SessionBoard, SyncGroupRequest, SyncGroupResponse, Ticket,
};
use crate::log::reader::PARTITION_FLUSH_BYTES_MAX;
use crate::sync::Arc;

/// How often the shard ticks its coordinator while deadlines are armed: one timer-wheel
/// slot.
pub(crate) const GROUP_TICK_INTERVAL: Duration = Duration::from_millis(8);

/// A group request to the shard serving the group's offsets partition.
pub(crate) enum GroupRequest {
    Join {
        offsets_partition: u32,
        request: JoinGroupRequest,
        reply: Completer<JoinGroupResponse>,
    },
    Sync {
        offsets_partition: u32,
        request: SyncGroupRequest,
        reply: Completer<SyncGroupResponse>,
    },
    /// Pooled (see [`HeartbeatCall`]): a heartbeat through the engine handle allocates
    /// nothing once the pools are warm.
    Heartbeat(HeartbeatCall),
    Leave {
        offsets_partition: u32,
        group_id: String,
        members: Vec<LeavingMember>,
        reply: Completer<LeaveGroupResponse>,
    },
    /// DeleteGroups (`tombstones: None`): refused while the group has members; otherwise
    /// tombstones for every offset of the group (the reply answers once they are durable)
    /// and for its metadata record. OffsetDelete (`Some`): these tombstones, refused while
    /// the group has members. Decided and batched on the shard thread, so no member can join
    /// in between and every chunk lands in order on the one partition.
    Delete {
        offsets_partition: u32,
        group_id: String,
        tombstones: Option<Vec<PendingOffset>>,
        deadline: std::time::Instant,
        reply: Completer,
    },
    Describe {
        group_ids: Vec<String>,
        reply: Sender<Vec<Option<GroupDescription>>>,
    },
    List {
        reply: Sender<Vec<ListedGroup>>,
    },
}

/// A heartbeat on its way to the shard. The engine takes one from a [`HeartbeatPool`] and
/// refills its strings in place; the shard gives it back once answered.
pub(crate) struct HeartbeatCall {
    offsets_partition: u32,
    group_id: String,
    member_id: String,
    group_instance_id: Option<String>,
    generation_id: i32,
    reply: Option<Completer<Result<(), GroupError>>>,
}

/// Most heartbeat calls a [`HeartbeatPool`] keeps.
pub(crate) const HEARTBEATS_POOLED_MAX: usize = 64 * 1024;
/// Largest string capacity a pooled heartbeat call keeps (ids beyond it are freed after use).
const POOLED_HEARTBEAT_STRING_BYTES_MAX: usize = 4 * 1024;

/// The free list of heartbeat calls shared by the engine handle and the shards.
pub(crate) type HeartbeatPool = crate::pool::FreeList<HeartbeatCall>;

impl HeartbeatCall {
    /// A call to fill: a pooled one if any (allocates only while the pool warms up).
    pub(crate) fn take(pool: &HeartbeatPool) -> HeartbeatCall {
        pool.take().unwrap_or(HeartbeatCall {
            offsets_partition: 0,
            group_id: String::new(),
            member_id: String::new(),
            group_instance_id: None,
            generation_id: 0,
            reply: None,
        })
    }

    /// Copies a heartbeat in, reusing the call's strings.
    pub(crate) fn fill(
        &mut self,
        offsets_partition: u32,
        (group_id, member_id, group_instance_id): (&str, &str, Option<&str>),
        generation_id: i32,
        reply: Completer<Result<(), GroupError>>,
    ) {
        self.offsets_partition = offsets_partition;
        self.group_id.clear();
        self.group_id.push_str(group_id);
        self.member_id.clear();
        self.member_id.push_str(member_id);
        match (&mut self.group_instance_id, group_instance_id) {
            (Some(kept), Some(id)) => {
                kept.clear();
                kept.push_str(id);
            }
            (kept, id) => *kept = id.map(str::to_owned),
        }
        self.generation_id = generation_id;
        self.reply = Some(reply);
    }

    /// Gives an answered call back, unless its strings grew too large to keep.
    fn recycle(self, pool: &HeartbeatPool) {
        debug_assert!(self.reply.is_none(), "recycling an unanswered heartbeat");
        let kept = self.group_id.capacity()
            + self.member_id.capacity()
            + self.group_instance_id.as_ref().map_or(0, String::capacity);
        if kept <= POOLED_HEARTBEAT_STRING_BYTES_MAX {
            pool.give_back(self);
        }
    }
}

impl Abandoned for JoinGroupResponse {
    fn abandoned() -> Self {
        JoinGroupResponse::error(GroupError::NotCoordinator, String::new())
    }
}

impl Abandoned for SyncGroupResponse {
    fn abandoned() -> Self {
        SyncGroupResponse::error(GroupError::NotCoordinator)
    }
}

impl Abandoned for LeaveGroupResponse {
    fn abandoned() -> Self {
        LeaveGroupResponse {
            error: Some(GroupError::NotCoordinator),
            members: Vec::new(),
        }
    }
}

impl Abandoned for Result<(), GroupError> {
    fn abandoned() -> Self {
        Err(GroupError::NotCoordinator)
    }
}

enum Waiting {
    Join(Completer<JoinGroupResponse>),
    Sync(Completer<SyncGroupResponse>),
}

/// The latest GroupMetadata record per group met while replaying a partition, with its
/// record offset (`None`: a tombstone).
pub(crate) type GroupReplay = HashMap<String, (Option<GroupMetadataValue>, u64)>;

/// The groups' clock: monotonic, starting at the wall clock. The shard and the engine's
/// handle on it (which answers heartbeats from the session board) read the same one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupClock {
    origin: Instant,
    base_ms: u64,
}

impl GroupClock {
    pub(crate) fn start() -> GroupClock {
        GroupClock {
            origin: Instant::now(),
            base_ms: u64::try_from(wall_clock_ms()).unwrap_or(0),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.base_ms + self.origin.elapsed().as_millis() as u64
    }
}

/// What a shard's groups share with the engine's handle on the shard: the coordinator's
/// session board and the clock its beats are timed by.
#[derive(Debug, Clone)]
pub(crate) struct SharedGroups {
    pub(crate) board: Arc<SessionBoard>,
    pub(crate) clock: GroupClock,
}

impl SharedGroups {
    pub(crate) fn new(config: &GroupConfig) -> SharedGroups {
        let clock = GroupClock::start();
        SharedGroups {
            board: Arc::new(SessionBoard::for_config(config, clock.base_ms)),
            clock,
        }
    }
}

/// Answers heartbeats from any thread for the groups of one shard, from its coordinator's
/// [`SessionBoard`]: what [`Engine::heartbeat`](crate::Engine::heartbeat) does before it
/// sends anything to the shard. A thread-per-core broker hands one
/// ([`LocalShard::heartbeat_board`](crate::LocalShard::heartbeat_board)) to its other cores,
/// which then answer most heartbeats without a hop to the core that owns the group.
/// `Clone + Send + Sync`; lock-free and allocation-free.
#[derive(Debug, Clone)]
pub struct HeartbeatBoard {
    groups: SharedGroups,
    failed: Arc<FailedPartitions>,
}

impl HeartbeatBoard {
    pub(crate) fn new(groups: SharedGroups, failed: Arc<FailedPartitions>) -> HeartbeatBoard {
        HeartbeatBoard { groups, failed }
    }

    /// Answers a heartbeat for a group of `offsets_partition` (the group's, as
    /// `partition_for` gives it: the board checks that partition's failed-closed flag) if
    /// the board can: `Some(Ok(()))` or `Some(Err(RebalanceInProgress))`, the session
    /// renewed either way (see [`SessionBoard::heartbeat`]). `None`: ask the shard that owns
    /// the group (a member still in its join, a static member, another generation, an
    /// unknown member, a partition failed closed, a group this shard does not hold, a shard
    /// closed or gone).
    pub fn heartbeat(
        &self,
        offsets_partition: u32,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Option<std::result::Result<(), GroupError>> {
        if self.failed.is_failed(offsets_partition) {
            return None;
        }
        let now_ms = self.groups.clock.now_ms();
        let board = &self.groups.board;
        board.heartbeat(
            group_id,
            member_id,
            group_instance_id,
            generation_id,
            now_ms,
        )
    }
}

/// A shard's groups.
pub(crate) struct ShardGroups {
    pub(crate) coordinator: GroupCoordinator,
    waiting: HashMap<Ticket, Waiting>,
    next_ticket: Ticket,
    /// Records the coordinator asked for, not yet written.
    records: VecDeque<PersistRecord>,
    clock: GroupClock,
    next_tick_ms: u64,
    /// While the shard opens, partitions' groups wait here so they are restored together
    /// (the coordinator then knows how many members to expect).
    opening: Option<Vec<(u32, GroupReplay)>>,
}

impl ShardGroups {
    pub(crate) fn new(
        config: &GroupConfig,
        shard_index: usize,
        shared: SharedGroups,
    ) -> ShardGroups {
        let SharedGroups { board, clock } = shared;
        let seed = clock.base_ms ^ ((shard_index as u64) << 48) ^ u64::from(std::process::id());
        ShardGroups {
            coordinator: GroupCoordinator::with_board(config.clone(), seed, clock.base_ms, board),
            waiting: HashMap::new(),
            next_ticket: 1,
            records: VecDeque::new(),
            clock,
            next_tick_ms: 0,
            opening: Some(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Moves what the coordinator produced: records to the write queue, replies to their
    /// callers.
    fn drain_output(&mut self) {
        self.records.extend(self.coordinator.take_persists());
        for reply in self.coordinator.take_replies() {
            let ticket = match &reply {
                GroupReply::Join(ticket, _) | GroupReply::Sync(ticket, _) => *ticket,
            };
            match (reply, self.waiting.remove(&ticket)) {
                (GroupReply::Join(_, response), Some(Waiting::Join(completer))) => {
                    completer.complete(response)
                }
                (GroupReply::Sync(_, response), Some(Waiting::Sync(completer))) => {
                    completer.complete(response)
                }
                // The caller is gone, or a ticket was reused: nothing to answer.
                _ => {}
            }
        }
    }
}

/// A group record encoded into a flush, with its log position.
type WrittenRecord = (PersistRecord, u64);
/// A group record that could not be written, with why.
type RefusedRecord = (PersistRecord, GroupError);

impl Shard {
    /// How long the shard may wait for a request before the groups need service: one tick
    /// while group deadlines are armed or records wait to be written; `None` otherwise.
    pub(super) fn group_wait_bound(&self) -> Option<std::time::Duration> {
        (self.groups.coordinator.has_timers() || !self.groups.records.is_empty())
            .then_some(GROUP_TICK_INTERVAL)
    }

    /// Whether `service_groups` has work now: timers due or records to write.
    pub(super) fn groups_due(&self) -> bool {
        let timers_due = self.groups.coordinator.has_timers()
            && self.groups.now_ms() >= self.groups.next_tick_ms;
        timers_due || !self.groups.records.is_empty()
    }

    /// Rejects a commit the group's generation fences (on the shard thread, where the group
    /// lives); otherwise hands it back to be batched.
    pub(super) fn fence_commit(&mut self, commit: PendingCommit) -> Option<PendingCommit> {
        let simple = CommitFence::simple();
        let fence = commit.fence().unwrap_or(&simple);
        match self
            .groups
            .coordinator
            .validate_commit(&commit.group, fence)
        {
            Ok(()) => Some(commit),
            Err(error) => {
                self.metrics.commit_errors += 1;
                self.pools.commits.answer(commit, Err(Error::Group(error)));
                None
            }
        }
    }

    pub(super) fn handle_group(&mut self, request: GroupRequest) {
        let now_ms = self.groups.now_ms();
        let refused = |shard: &Shard, partition: u32| {
            shard
                .partitions
                .get(partition as usize)
                .is_none_or(|p| p.refusal(partition).is_some())
        };
        match request {
            GroupRequest::Join {
                offsets_partition,
                request,
                reply,
            } => {
                if refused(self, offsets_partition) {
                    return reply.complete(JoinGroupResponse::abandoned());
                }
                let ticket = self.groups.ticket();
                let coordinator = &mut self.groups.coordinator;
                match coordinator.join(request, offsets_partition, ticket, now_ms) {
                    Some(response) => reply.complete(response),
                    None => {
                        self.groups.waiting.insert(ticket, Waiting::Join(reply));
                    }
                }
            }
            GroupRequest::Sync {
                offsets_partition,
                request,
                reply,
            } => {
                if refused(self, offsets_partition) {
                    return reply.complete(SyncGroupResponse::abandoned());
                }
                let ticket = self.groups.ticket();
                match self.groups.coordinator.sync(request, ticket, now_ms) {
                    Some(response) => reply.complete(response),
                    None => {
                        self.groups.waiting.insert(ticket, Waiting::Sync(reply));
                    }
                }
            }
            GroupRequest::Heartbeat(call) => {
                let refused = refused(self, call.offsets_partition);
                self.handle_heartbeat(call, refused, now_ms);
            }
            GroupRequest::Leave {
                offsets_partition,
                group_id,
                members,
                reply,
            } => {
                if refused(self, offsets_partition) {
                    return reply.complete(LeaveGroupResponse::abandoned());
                }
                let response = self.groups.coordinator.leave(&group_id, members, now_ms);
                reply.complete(response);
            }
            GroupRequest::Delete {
                offsets_partition,
                group_id,
                tombstones,
                deadline,
                reply,
            } => {
                if refused(self, offsets_partition) {
                    let error = Error::NotCoordinator {
                        partition: offsets_partition,
                    };
                    return reply.complete(Err(error));
                }
                let target = (offsets_partition, group_id.as_str());
                self.handle_delete(target, tombstones, deadline, reply);
            }
            GroupRequest::Describe { group_ids, reply } => {
                let coordinator = &self.groups.coordinator;
                let described = group_ids.iter().map(|id| coordinator.describe(id));
                let _ = reply.send(described.collect());
            }
            GroupRequest::List { reply } => {
                let mut listed = Vec::new();
                self.groups.coordinator.list(&mut listed);
                let _ = reply.send(listed);
            }
        }
        self.groups.drain_output();
    }

    /// Answers a heartbeat the session board passed on (`refused`: its partition is not
    /// served here).
    fn handle_heartbeat(&mut self, mut call: HeartbeatCall, refused: bool, now_ms: u64) {
        let result = if refused {
            Err(GroupError::NotCoordinator)
        } else {
            self.groups.coordinator.heartbeat(
                &call.group_id,
                &call.member_id,
                call.group_instance_id.as_deref(),
                call.generation_id,
                now_ms,
            )
        };
        // Back in the pool before the answer wakes the caller (see `CommitPool::answer`);
        // the wakeup itself waits for the end of the run of requests the shard is taking
        // (`DeferredWakes`).
        let reply = call.reply.take();
        call.recycle(&self.pools.heartbeats);
        if let Some(reply) = reply {
            reply.complete_deferred(result, &mut self.wakes);
        }
    }

    /// Deletes a group (`tombstones` `None`) or some of its offsets, at `target` (offsets
    /// partition, group id) served here.
    fn handle_delete(
        &mut self,
        target: (u32, &str),
        tombstones: Option<Vec<PendingOffset>>,
        deadline: std::time::Instant,
        reply: Completer,
    ) {
        let group_id = target.1;
        match tombstones {
            None => match self.groups.coordinator.delete_group(group_id) {
                Ok(()) => self.tombstone_group(target, deadline, reply),
                Err(error) => reply.complete(Err(Error::Group(error))),
            },
            // Kafka refuses OffsetDelete per partition of a topic the group's members
            // subscribe to; their subscriptions are opaque here, so any member refuses it.
            Some(_) if self.groups.coordinator.has_members(group_id) => {
                let error = Error::Group(GroupError::GroupSubscribedToTopic);
                reply.complete(Err(error));
            }
            Some(tombstones) => self.batch_tombstones(target, tombstones, deadline, reply),
        }
    }

    /// Batches tombstones for every committed offset of a deleted group.
    fn tombstone_group(
        &mut self,
        (offsets_partition, group_id): (u32, &str),
        deadline: std::time::Instant,
        reply: Completer,
    ) {
        // The keys come from the cache: commits batched before the delete go first, so it
        // lists (and tombstones) theirs too.
        if !self.batch.is_empty() {
            self.flush();
        }
        let Some(cache) = self.partitions[offsets_partition as usize].cache.as_ref() else {
            let error = Error::NotCoordinator {
                partition: offsets_partition,
            };
            return reply.complete(Err(error));
        };
        // An admin call: allocating the list of keys is fine here.
        let mut tombstones = Vec::new();
        cache
            .reader()
            .pin()
            .for_each_in_group(group_id, |topic, partition, _| {
                tombstones.push(PendingOffset::tombstone(topic, partition));
            });
        self.batch_tombstones((offsets_partition, group_id), tombstones, deadline, reply);
    }

    /// Batches tombstones in as many requests as one commit's limits need; `reply` answers
    /// with the last, which succeeds only if every earlier one did (same partition, flushed
    /// in order, and a failure fails the partition closed).
    fn batch_tombstones(
        &mut self,
        (offsets_partition, group_id): (u32, &str),
        tombstones: Vec<PendingOffset>,
        deadline: std::time::Instant,
        reply: Completer,
    ) {
        let chunks = tombstone_chunks(group_id, tombstones, self.batch.commit_bytes_max());
        let Some(last) = chunks.len().checked_sub(1) else {
            return reply.complete(Ok(()));
        };
        let throwaway = CompletionPool::new(1);
        let mut reply = Some(reply);
        let now = std::time::Instant::now();
        for (index, (offsets, bytes)) in chunks.into_iter().enumerate() {
            let own = if index == last { reply.take() } else { None };
            let completer = match own {
                Some(reply) => reply,
                None => CommitFuture::pending(deadline, self.commit_timeout_ms, &throwaway).1,
            };
            let mut commit = self.pools.commits.take();
            commit.fill_owned(group_id, offsets_partition, offsets, bytes);
            commit.arm(now, deadline, completer);
            if let Err(commit) = self.batch.try_add(commit) {
                self.flush();
                // An empty batch takes any commit within the limits; were it refused,
                // dropping it fails its future rather than losing it silently.
                let added = self.batch.try_add(commit);
                debug_assert!(added.is_ok(), "an empty batch refused a tombstone chunk");
            }
        }
    }

    /// A heartbeat answered on the calling thread (the shard-local API): no request, no
    /// future, no allocation.
    pub(super) fn heartbeat_here(
        &mut self,
        offsets_partition: u32,
        member: (&str, &str, Option<&str>),
        generation_id: i32,
    ) -> Result<(), GroupError> {
        let (group_id, member_id, group_instance_id) = member;
        let served = self
            .partitions
            .get(offsets_partition as usize)
            .is_some_and(|p| p.refusal(offsets_partition).is_none());
        if !served {
            return Err(GroupError::NotCoordinator);
        }
        let now_ms = self.groups.now_ms();
        self.groups.coordinator.heartbeat(
            group_id,
            member_id,
            group_instance_id,
            generation_id,
            now_ms,
        )
    }

    /// Describes the groups the coordinator holds (`None`: not held).
    pub(super) fn describe_here(&self, group_id: &str) -> Option<GroupDescription> {
        self.groups.coordinator.describe(group_id)
    }

    /// Lists the groups the coordinator holds.
    pub(super) fn list_here(&self, out: &mut Vec<ListedGroup>) {
        self.groups.coordinator.list(out);
    }

    /// Runs due timers, writes waiting GroupMetadata records and answers who they released.
    pub(super) fn service_groups(&mut self) {
        let now_ms = self.groups.now_ms();
        if now_ms >= self.groups.next_tick_ms && self.groups.coordinator.has_timers() {
            // Bounded: each tick expires at most EXPIRIES_PER_TICK_MAX of each kind; what is
            // left waits for the next loop turn, which ticks again at once.
            let more_due = self.groups.coordinator.tick(now_ms);
            self.groups.next_tick_ms = if more_due {
                now_ms
            } else {
                now_ms + GROUP_TICK_INTERVAL.as_millis() as u64
            };
        }
        self.groups.drain_output();
        if !self.groups.records.is_empty() {
            self.write_group_records(now_ms);
            self.groups.drain_output();
        }
    }

    /// Encodes the waiting records into one batch per partition (as many as fit), writes
    /// them all in one durable submission and reports each outcome to the coordinator.
    fn write_group_records(&mut self, now_ms: u64) {
        let timestamp_ms = wall_clock_ms();
        let mut records: Vec<PersistRecord> = self.groups.records.drain(..).collect();
        records.sort_by_key(|r| r.offsets_partition);
        self.flush_partitions.clear();
        let (written, failed) = self.encode_group_records(&records, timestamp_ms);
        if !self.flush_partitions.is_empty() {
            self.write_partitions(None);
        }
        self.answer_group_records(written, failed, now_ms);
    }

    /// Encodes `records` (sorted by offsets partition) into one batch per partition served
    /// here, as many as fit, adding the partitions to the flush; returns the records encoded
    /// with their log positions, and those refused with why.
    fn encode_group_records(
        &mut self,
        records: &[PersistRecord],
        timestamp_ms: i64,
    ) -> (Vec<WrittenRecord>, Vec<RefusedRecord>) {
        let mut written: Vec<WrittenRecord> = Vec::with_capacity(records.len());
        let mut failed: Vec<RefusedRecord> = Vec::new();
        let mut start = 0;
        while start < records.len() {
            let partition = records[start].offsets_partition;
            let end = start
                + records[start..]
                    .iter()
                    .take_while(|r| r.offsets_partition == partition)
                    .count();
            let run = &records[start..end];
            start = end;
            let hosted = self.partitions.get_mut(partition as usize);
            let Some(hosted) = hosted.filter(|h| h.refusal(partition).is_none()) else {
                failed.extend(run.iter().map(|r| (r.clone(), GroupError::NotCoordinator)));
                continue;
            };
            let Some(log) = hosted.log.as_ref() else {
                failed.extend(run.iter().map(|r| (r.clone(), GroupError::NotCoordinator)));
                continue;
            };
            let base_offset = log.next_offset();
            let (encoded, too_large) = encode_group_batch(
                &mut hosted.encoded[self.flush_parity].bytes,
                base_offset,
                timestamp_ms,
                run,
                &mut self.groups.records,
            );
            failed.extend(
                too_large
                    .into_iter()
                    .map(|r| (r, GroupError::UnknownServerError)),
            );
            if encoded.is_empty() {
                continue;
            }
            // Placement gives the batch this same base offset: nothing is placed between.
            hosted.encoded[self.flush_parity].records = encoded.len() as u32;
            self.flush_partitions.push(partition);
            written.extend(
                encoded
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| (r, (base_offset + i as i64) as u64)),
            );
        }
        (written, failed)
    }

    /// Tells the coordinator each group record's outcome: `written` at its log position
    /// (durable if its flush was), `failed` with why.
    fn answer_group_records(
        &mut self,
        written: Vec<WrittenRecord>,
        failed: Vec<RefusedRecord>,
        now_ms: u64,
    ) {
        let coordinator = &mut self.groups.coordinator;
        let flush_parity = self.flush_parity;
        for (record, position) in written {
            let hosted = &mut self.partitions[record.offsets_partition as usize];
            if hosted.failure.is_none()
                && let Some(log) = hosted.log.as_mut()
            {
                // The compactor keeps each group's latest record live (and only that one).
                hosted.compaction.group_record(
                    &record.group_id,
                    position as i64,
                    record.value.is_none(),
                    log.table_mut(),
                );
            }
            // Its own flush's outcome: a checkpoint failing in the same write may have
            // failed the partition since, with the record durable.
            let outcome = match hosted.encoded[flush_parity].durable {
                true => Ok(position),
                false => Err(GroupError::NotCoordinator),
            };
            coordinator.persisted(&record.group_id, record.generation_id, outcome, now_ms);
        }
        for (record, error) in failed {
            coordinator.persisted(&record.group_id, record.generation_id, Err(error), now_ms);
        }
    }

    /// Recovery met these GroupMetadata records in a partition: restore its groups (at
    /// open, once every partition is read: see [`finish_opening_groups`](Shard::finish_opening_groups)).
    pub(super) fn restore_groups(&mut self, partition: u32, replay: GroupReplay) {
        if let Some(opening) = self.groups.opening.as_mut() {
            opening.push((partition, replay));
            return;
        }
        self.groups
            .coordinator
            .expect_restored_members(members_in(&replay));
        self.load_groups(partition, replay);
    }

    /// Restores the groups of every partition read at open.
    pub(super) fn finish_opening_groups(&mut self) {
        let opened = self.groups.opening.take().unwrap_or_default();
        let members: usize = opened.iter().map(|(_, replay)| members_in(replay)).sum();
        self.groups.coordinator.expect_restored_members(members);
        for (partition, replay) in opened {
            self.load_groups(partition, replay);
        }
    }

    fn load_groups(&mut self, partition: u32, replay: GroupReplay) {
        let now_ms = self.groups.now_ms();
        for (group_id, (value, position)) in replay {
            let loaded = self
                .groups
                .coordinator
                .load(&group_id, partition, value, position, now_ms);
            if let Err(error) = loaded {
                tracing::warn!(group_id, %error, "group not restored");
            }
        }
        self.groups.drain_output();
    }

    /// The partition leaves this shard: its waiting records are written, then its groups are
    /// dropped (waiting callers get NOT_COORDINATOR); the next owner restores them from the log.
    pub(super) fn unload_groups(&mut self, partition: u32) {
        if !self.groups.records.is_empty() {
            let now_ms = self.groups.now_ms();
            self.write_group_records(now_ms);
        }
        self.groups.coordinator.unload_partition(partition);
        self.groups.drain_output();
        self.groups
            .records
            .retain(|r| r.offsets_partition != partition);
    }
}

fn members_in(replay: &GroupReplay) -> usize {
    replay
        .values()
        .filter_map(|(value, _)| value.as_ref())
        .map(|value| value.members.len())
        .sum()
}

/// Encodes `run` (one partition's records) as one batch into `out`, as many as fit the
/// partition's flush bound; the rest go back to `later`. Returns the encoded records and
/// those too large to be written at all.
fn encode_group_batch(
    out: &mut Vec<u8>,
    base_offset: i64,
    timestamp_ms: i64,
    run: &[PersistRecord],
    later: &mut VecDeque<PersistRecord>,
) -> (Vec<PersistRecord>, Vec<PersistRecord>) {
    out.clear();
    let mut key = Vec::new();
    let mut value = Vec::new();
    let mut encoded = Vec::new();
    let mut too_large = Vec::new();
    let params = BatchParams {
        base_offset,
        base_timestamp: timestamp_ms,
        ..BatchParams::default()
    };
    let mut writer = BatchWriter::begin(out, params);
    for record in run {
        key.clear();
        value.clear();
        let group_key = GroupMetadataKey {
            group: &record.group_id,
        };
        if group_key.validate().is_err() {
            too_large.push(record.clone());
            continue;
        }
        group_key.encode_into(&mut key);
        if let Some(v) = &record.value {
            let version = GroupMetadataValue::VERSION_DEFAULT;
            if v.validate(version).is_err() {
                too_large.push(record.clone());
                continue;
            }
            v.encode_into(version, &mut value);
        }
        // Record framing is at most 40 bytes beyond key and value.
        let bytes = key.len() + value.len() + 40;
        if BATCH_HEADER_BYTES + bytes > PARTITION_FLUSH_BYTES_MAX {
            too_large.push(record.clone());
            continue;
        }
        if writer.len() + bytes > PARTITION_FLUSH_BYTES_MAX {
            later.push_back(record.clone());
            continue;
        }
        let value = record.value.as_ref().map(|_| value.as_slice());
        writer.append(timestamp_ms, &key, value);
        encoded.push(record.clone());
    }
    if encoded.is_empty() {
        out.clear();
    } else {
        writer.finish();
    }
    (encoded, too_large)
}
