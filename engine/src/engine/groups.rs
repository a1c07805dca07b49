//! The engine's group calls: each goes to the shard serving the group's offsets partition,
//! whose coordinator answers (at once, or through the returned future once the join or sync
//! phase completes).

use crossbeam_channel::bounded;

use super::{Engine, NO_EXPIRE_TIMESTAMP_MS, validate_group};
use crate::completion::{Abandoned, CommitFuture, GroupFuture};
use crate::config::KAFKA_STRING_BYTES_MAX;
use crate::error::{Error, Result};
use crate::group::{
    CommitFence, GroupDescription, GroupError, GroupState, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupResponse, LeavingMember, ListedGroup, SyncGroupRequest, SyncGroupResponse,
};
use crate::offsets::OffsetCommit;
use crate::shard::{GroupRequest, HeartbeatCall, Request};

impl Engine {
    /// JoinGroup. The future resolves when the join phase completes (up to the group's
    /// rebalance timeout), or at once for errors and `MEMBER_ID_REQUIRED`.
    ///
    /// ```
    /// # fn main() -> coffer::Result<()> {
    /// use coffer::group::{JoinGroupRequest, JoinProtocol, SyncGroupRequest};
    /// # let dir = std::env::temp_dir().join(format!("coffer-doc-join-{}", std::process::id()));
    /// let mut config = coffer::Config::new(&dir);
    /// config.offsets_topic_num_partitions = 2;
    /// config.offsets_topic_segment_bytes = 1 << 20;
    /// config.groups.group_initial_rebalance_delay_ms = 0;
    /// let engine = coffer::Engine::open(config)?;
    /// let join = JoinGroupRequest {
    ///     group_id: "billing".into(),
    ///     member_id: String::new(),
    ///     group_instance_id: None,
    ///     client_id: "consumer-1".into(),
    ///     client_host: "/10.0.0.1".into(),
    ///     session_timeout_ms: 45_000,
    ///     rebalance_timeout_ms: 300_000,
    ///     protocol_type: "consumer".into(),
    ///     protocols: vec![JoinProtocol { name: "range".into(), metadata: vec![] }],
    ///     require_known_member_id: false,
    /// };
    /// let joined = engine.join_group(join).wait();
    /// assert_eq!((joined.error, joined.generation_id), (None, 1));
    /// let sync = SyncGroupRequest {
    ///     group_id: "billing".into(),
    ///     member_id: joined.member_id.clone(),
    ///     group_instance_id: None,
    ///     generation_id: 1,
    ///     protocol_type: None,
    ///     protocol_name: None,
    ///     assignments: vec![(joined.member_id.clone(), b"orders-0".to_vec())],
    /// };
    /// // Answered once the group's metadata is durable.
    /// assert_eq!(engine.sync_group(sync).wait().assignment, b"orders-0");
    /// engine.close()?;
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok(())
    /// # }
    /// ```
    pub fn join_group(&self, request: JoinGroupRequest) -> GroupFuture<JoinGroupResponse> {
        if validate_group(&request.group_id).is_err() {
            let response = JoinGroupResponse::error(GroupError::InvalidGroupId, request.member_id);
            return GroupFuture::resolved(response);
        }
        let offsets_partition = self.partition_for(&request.group_id);
        self.group_call(offsets_partition, |reply| GroupRequest::Join {
            offsets_partition,
            request,
            reply,
        })
    }

    /// SyncGroup. The leader's call (and every follower's) resolves once the leader's
    /// assignment is durable in the group's GroupMetadata record.
    pub fn sync_group(&self, request: SyncGroupRequest) -> GroupFuture<SyncGroupResponse> {
        if validate_group(&request.group_id).is_err() {
            return GroupFuture::resolved(SyncGroupResponse::error(GroupError::InvalidGroupId));
        }
        let offsets_partition = self.partition_for(&request.group_id);
        self.group_call(offsets_partition, |reply| GroupRequest::Sync {
            offsets_partition,
            request,
            reply,
        })
    }

    /// Heartbeat. `Err(RebalanceInProgress)` tells the member to rejoin. Never touches disk.
    /// A member past its join, heartbeating its generation, is answered on the calling
    /// thread from the shard's session board (lock-free, no allocation, no trip to the
    /// shard); anything else (static members, errors, a failed partition) goes to the shard,
    /// which answers at once.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> GroupFuture<Result<(), GroupError>> {
        if validate_group(group_id).is_err() {
            return GroupFuture::resolved(Err(GroupError::InvalidGroupId));
        }
        if self.ensure_open().is_err() {
            return GroupFuture::resolved(Err(GroupError::NotCoordinator));
        }
        let offsets_partition = self.partition_for(group_id);
        let shard = self.shard_for(offsets_partition);
        let board = &shard.heartbeats;
        if let Some(answer) = board.heartbeat(
            offsets_partition,
            group_id,
            member_id,
            group_instance_id,
            generation_id,
        ) {
            return GroupFuture::resolved(answer);
        }
        // Pooled call and completion slot: no allocation once the pools are warm.
        let (future, reply) = GroupFuture::pending_pooled(&self.inner.heartbeat_slots);
        let mut call = HeartbeatCall::take(&self.inner.pools.heartbeats);
        let member = (group_id, member_id, group_instance_id);
        call.fill(offsets_partition, member, generation_id, reply);
        let request = Request::Group(GroupRequest::Heartbeat(call));
        // A failed send drops the call and its completer, which resolves the future.
        let _ = shard.requests.send(request);
        future
    }

    /// LeaveGroup for one or more members (LeaveGroup v3+ batches them).
    pub fn leave_group(
        &self,
        group_id: &str,
        members: Vec<LeavingMember>,
    ) -> GroupFuture<LeaveGroupResponse> {
        if validate_group(group_id).is_err() {
            return GroupFuture::resolved(LeaveGroupResponse {
                error: Some(GroupError::InvalidGroupId),
                members: Vec::new(),
            });
        }
        let offsets_partition = self.partition_for(group_id);
        self.group_call(offsets_partition, |reply| GroupRequest::Leave {
            offsets_partition,
            group_id: group_id.to_owned(),
            members,
            reply,
        })
    }

    /// An offset commit fenced by the group's generation (Kafka's `validateOffsetCommit`):
    /// it fails with [`Error::Group`] carrying `UNKNOWN_MEMBER_ID`, `ILLEGAL_GENERATION`,
    /// `FENCED_INSTANCE_ID` or, while the group is in CompletingRebalance,
    /// `REBALANCE_IN_PROGRESS`. A fence of generation -1 and no member id is a simple commit,
    /// accepted only while the group has no members. The check runs on the shard thread,
    /// where the group lives.
    pub fn commit_offsets_fenced(
        &self,
        group_id: &str,
        fence: &CommitFence,
        offsets: &[OffsetCommit<'_>],
    ) -> CommitFuture {
        let ids = [
            Some(fence.member_id.as_str()),
            fence.group_instance_id.as_deref(),
        ];
        if ids
            .into_iter()
            .flatten()
            .any(|id| id.len() > KAFKA_STRING_BYTES_MAX)
        {
            let error = Error::InvalidRequest("member or instance id longer than 32767 bytes");
            return CommitFuture::resolved(Err(error));
        }
        self.commit(group_id, Some(fence), offsets, NO_EXPIRE_TIMESTAMP_MS)
    }

    /// DescribeGroups. A group the coordinator does not hold is reported Empty if it has
    /// committed offsets, else Dead (as Kafka reports an unknown group).
    pub fn describe_groups(&self, group_ids: &[&str]) -> Result<Vec<GroupDescription>> {
        self.ensure_open()?;
        let mut described = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            validate_group(group_id)?;
            let shard = self.shard_for(self.partition_for(group_id));
            let (reply, answer) = bounded(1);
            let group_ids = vec![(*group_id).to_owned()];
            let request = Request::Group(GroupRequest::Describe { group_ids, reply });
            shard.requests.send(request).map_err(|_| Error::Closed)?;
            let found = answer.recv().map_err(|_| Error::Closed)?.pop().flatten();
            let description = match found {
                Some(description) => description,
                None => {
                    let has_offsets = !self.fetch_all_offsets(group_id)?.is_empty();
                    GroupDescription {
                        group_id: (*group_id).to_owned(),
                        state: if has_offsets {
                            GroupState::Empty
                        } else {
                            GroupState::Dead
                        },
                        protocol_type: String::new(),
                        protocol_name: String::new(),
                        generation_id: 0,
                        members: Vec::new(),
                    }
                }
            };
            described.push(description);
        }
        Ok(described)
    }

    /// ListGroups: every group with members or stored metadata, and every group with only
    /// committed offsets (Empty, no protocol type), sorted by id.
    pub fn list_groups(&self) -> Result<Vec<ListedGroup>> {
        self.ensure_open()?;
        let mut listed = Vec::new();
        for shard in &self.inner.shards {
            let (reply, answer) = bounded(1);
            let request = Request::Group(GroupRequest::List { reply });
            shard.requests.send(request).map_err(|_| Error::Closed)?;
            listed.extend(answer.recv().map_err(|_| Error::Closed)?);
        }
        let known: std::collections::HashSet<String> =
            listed.iter().map(|g| g.group_id.clone()).collect();
        for partition in 0..self.inner.config.offsets_topic_num_partitions {
            for group_id in self.groups_of_partition(partition)? {
                if !known.contains(&group_id) {
                    listed.push(ListedGroup {
                        group_id,
                        protocol_type: String::new(),
                        state: GroupState::Empty,
                    });
                }
            }
        }
        listed.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(listed)
    }

    /// Sends a group request to the partition's shard; a closed engine answers with the
    /// response's abandoned form (`NOT_COORDINATOR`).
    fn group_call<T: Abandoned>(
        &self,
        offsets_partition: u32,
        request: impl FnOnce(crate::completion::Completer<T>) -> GroupRequest,
    ) -> GroupFuture<T> {
        if self.ensure_open().is_err() {
            return GroupFuture::resolved(T::abandoned());
        }
        let (future, completer) = GroupFuture::pending();
        let request = Request::Group(request(completer));
        // A failed send drops the request and its completer, which resolves the future.
        let _ = self.shard_for(offsets_partition).requests.send(request);
        future
    }
}
