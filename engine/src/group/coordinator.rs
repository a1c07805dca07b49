//! The classic group protocol's state machine for one shard's groups (Kafka's
//! `GroupMetadataManager` for classic groups, without its threads).
//!
//! Every call takes `now_ms`; [`GroupCoordinator::tick`] expires sessions and ends join and
//! sync phases. Calls that wait (JoinGroup, SyncGroup) return `None` and park a [`Ticket`];
//! their responses appear later in [`GroupCoordinator::take_replies`]. Writes of
//! GroupMetadata records appear in [`GroupCoordinator::take_persists`]; the embedder writes
//! them durably and reports back with [`GroupCoordinator::persisted`], after which the
//! waiting SyncGroup responses are released (Kafka stores the group before answering sync).

use super::classic_group::{Group, GroupTimer};
use super::error::GroupError;
use super::fingerprint_index::FingerprintIndex;
use super::id_hash::{IdMap, id_map};
use super::member::{Member, Ticket};
use super::protocol::{
    CommitFence, GroupDescription, JoinGroupMember, JoinGroupRequest, JoinGroupResponse,
    JoinProtocol, LeaveGroupResponse, LeavingMember, ListedGroup, MemberDescription,
    SyncGroupRequest, SyncGroupResponse,
};
use super::session_board::{SessionBoard, handle_in_member_id};
use super::state::GroupState;
use super::timer_wheel::TimerWheel;
use super::{
    ASSIGNMENT_BYTES_MAX, EXPIRIES_PER_TICK_MAX, GroupConfig, MEMBER_ID_BYTES_MAX,
    PROTOCOL_METADATA_BYTES_MAX, PROTOCOLS_PER_MEMBER_MAX, RENEWALS_PER_TICK_MAX,
};
use crate::config::KAFKA_STRING_BYTES_MAX;
use crate::format::{GroupMetadataValue, MemberMetadata};
use crate::sync::Arc;

/// A response released by a later event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupReply {
    /// The JoinGroup parked under the ticket is answered.
    Join(Ticket, JoinGroupResponse),
    /// The SyncGroup parked under the ticket is answered.
    Sync(Ticket, SyncGroupResponse),
}

/// A GroupMetadata record to write to the group's offsets partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistRecord {
    /// Group id (the record's key).
    pub group_id: String,
    /// The offsets partition holding the group.
    pub offsets_partition: u32,
    /// The generation it describes; pass it back to [`GroupCoordinator::persisted`].
    pub generation_id: i32,
    /// The value; `None` is a tombstone.
    pub value: Option<GroupMetadataValue>,
}

/// One shard's classic groups (see the module docs).
pub struct GroupCoordinator {
    config: GroupConfig,
    /// Group id → group handle.
    ids: IdMap<u32>,
    groups: Vec<Option<Group>>,
    free_groups: Vec<u32>,
    members: Vec<Option<Member>>,
    free_members: Vec<u32>,
    member_count: usize,
    /// Session deadlines by member handle, each with the member's fingerprint and group.
    sessions: TimerWheel<SessionPayload>,
    /// Fingerprint → handle of joined members found neither at the handle their id encodes
    /// nor on their hashed wheel line.
    foreign_ids: FingerprintIndex,
    /// Pending members (issued an id with `MEMBER_ID_REQUIRED`, not rejoined yet).
    pending_count: usize,
    /// Join and sync deadlines by group handle.
    rebalances: TimerWheel,
    replies: Vec<GroupReply>,
    persists: Vec<PersistRecord>,
    expired: Vec<u32>,
    member_id_seed: u64,
    member_id_counter: u64,
    /// Restored members may take the handle their id encodes below this bound.
    restore_handle_limit: usize,
    /// Heartbeats answered on callers' threads (see [`SessionBoard`]); also holds the
    /// fingerprint seed (random: fingerprints must not be predictable from outside) and the
    /// hashed-handle range: restored members whose id encodes no usable handle go to a
    /// handle derived from their fingerprint, below that range (fixed by the first restore
    /// that expects members; 0: none), or to the other handle of its session-wheel cache
    /// line, so their heartbeats find them without the index.
    board: Arc<SessionBoard>,
}

impl Drop for GroupCoordinator {
    /// The board must not outlive its writer: a closed shard, or one whose thread unwound,
    /// would otherwise leave its members answered forever with sessions nobody checks.
    fn drop(&mut self) {
        self.board.close();
    }
}

/// Kept next to a member's session deadline, so a heartbeat with a member id this
/// coordinator generated is checked and renewed from one wheel entry.
#[derive(Debug, Clone, Copy, Default)]
struct SessionPayload {
    /// [`GroupCoordinator::fingerprint`] of the member's group id and member id.
    tag: u64,
    /// The member's group handle.
    group: u32,
}

// A heartbeat reads one session entry at a random place: keep it within half a cache line.
const _: () = assert!(TimerWheel::<SessionPayload>::ENTRY_BYTES == 32);

impl GroupCoordinator {
    /// A coordinator with no groups; `member_id_seed` makes generated member ids differ
    /// between shards and runs (tests pass a constant).
    pub fn new(config: GroupConfig, member_id_seed: u64, now_ms: u64) -> GroupCoordinator {
        let board = SessionBoard::for_config(&config, now_ms);
        GroupCoordinator::with_board(config, member_id_seed, now_ms, Arc::new(board))
    }

    /// A coordinator publishing on `board` (made for `config`'s bounds, and never shared
    /// with another coordinator: it has one writer).
    pub(crate) fn with_board(
        config: GroupConfig,
        member_id_seed: u64,
        now_ms: u64,
        board: Arc<SessionBoard>,
    ) -> GroupCoordinator {
        GroupCoordinator {
            ids: id_map(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            members: Vec::new(),
            free_members: Vec::new(),
            member_count: 0,
            sessions: TimerWheel::new(now_ms),
            foreign_ids: FingerprintIndex::default(),
            pending_count: 0,
            rebalances: TimerWheel::new(now_ms),
            replies: Vec::new(),
            persists: Vec::new(),
            expired: Vec::new(),
            member_id_seed,
            member_id_counter: 0,
            restore_handle_limit: 0,
            board,
            config,
        }
    }

    /// The coordinator's session board: hand it to any thread and try
    /// [`SessionBoard::heartbeat`] before calling [`heartbeat`](Self::heartbeat), which is
    /// then needed only for what the board cannot answer.
    pub fn session_board(&self) -> Arc<SessionBoard> {
        Arc::clone(&self.board)
    }

    // -----------------------------------------------------------------------------------
    // Handles.

    fn group(&self, g: u32) -> &Group {
        self.groups[g as usize].as_ref().expect("live group handle")
    }

    fn group_mut(&mut self, g: u32) -> &mut Group {
        self.groups[g as usize].as_mut().expect("live group handle")
    }

    fn member(&self, m: u32) -> &Member {
        self.members[m as usize]
            .as_ref()
            .expect("live member handle")
    }

    fn member_mut(&mut self, m: u32) -> &mut Member {
        self.members[m as usize]
            .as_mut()
            .expect("live member handle")
    }

    fn handle_of(&self, group_id: &str) -> Option<u32> {
        self.ids.get(group_id).copied()
    }

    fn create_group(&mut self, group_id: &str, partition: u32, now_ms: u64) -> Option<u32> {
        if self.ids.len() >= self.config.groups_max {
            return None;
        }
        let group = Group::new(group_id, partition, now_ms);
        let g = slab_insert(&mut self.groups, &mut self.free_groups, group);
        self.rebalances.reserve_ids(self.groups.len());
        self.ids.insert(group_id.into(), g);
        Some(g)
    }

    fn drop_group(&mut self, g: u32) {
        let group = self.groups[g as usize].take().expect("live group handle");
        debug_assert!(group.members.is_empty() && group.pending.is_empty());
        self.board
            .publish_group(g, group.generation_id, GroupState::Dead);
        self.rebalances.cancel(g);
        self.ids.remove(&group.id);
        self.free_groups.push(g);
    }

    /// The handle the next [`new_member`](Self::new_member) will return.
    fn next_member_handle(&mut self) -> u32 {
        self.drop_taken_free_handles();
        self.free_members
            .last()
            .copied()
            .unwrap_or(self.members.len() as u32)
    }

    /// The free list may name slots a restored member took directly (see
    /// [`new_member_at`](Self::new_member_at)); they are dropped when they reach the top.
    fn drop_taken_free_handles(&mut self) {
        while let Some(&m) = self.free_members.last() {
            if self.members[m as usize].is_none() {
                break;
            }
            self.free_members.pop();
        }
    }

    /// Lets the next `count` restored members take the handles their ids encode, growing the
    /// member slab up to twice the members expected (the bound keeps a record naming a huge
    /// handle from growing it). Call before [`load`](Self::load)ing a partition's groups.
    pub fn expect_restored_members(&mut self, count: usize) {
        let limit = self.members.len().max(self.restore_handle_limit) + 2 * count;
        self.restore_handle_limit = limit.min(self.config.members_max);
        if count > 0 {
            // Fixed from now on (the first call wins): a heartbeat recomputes a member's
            // hashed handle with it.
            self.board
                .set_hashed_handle_range(self.restore_handle_limit as u32);
        }
    }

    /// The handle a restored member with fingerprint `tag` is placed at when its id encodes
    /// none (Lemire's multiply-shift range reduction of the fingerprint).
    #[inline]
    fn hashed_handle(&self, tag: u64) -> Option<u32> {
        self.board.hashed_handle(tag)
    }

    /// Whether member `m` with fingerprint `tag` sits at its hashed handle or at that
    /// handle's neighbour in the session wheel's cache line (`h ^ 1`; see
    /// [`TimerWheel`]), where a heartbeat finds it reading one line.
    fn at_hashed_line(&self, tag: u64, m: u32) -> bool {
        self.hashed_handle(tag)
            .is_some_and(|h| m == h || m == h ^ 1)
    }

    /// A restored member goes to the first of `candidates` (the handle its id encodes, then
    /// its hashed handle and that handle's neighbour in its wheel line) whose slot is free
    /// and within the restore bound, so its heartbeats take the fast path; else anywhere.
    fn new_member_at(&mut self, member: Member, candidates: [Option<u32>; 3]) -> u32 {
        let free = |h: u32| {
            (h as usize) < self.restore_handle_limit
                && self.members.get(h as usize).is_none_or(Option::is_none)
        };
        let Some(h) = candidates.into_iter().flatten().find(|&h| free(h)) else {
            return self.new_member(member);
        };
        let h_index = h as usize;
        while self.members.len() < h_index {
            // The skipped slots are free.
            self.free_members.push(self.members.len() as u32);
            self.members.push(None);
        }
        if h_index == self.members.len() {
            self.members.push(None);
        }
        // A free-list entry for `h`, if any, is dropped when it reaches the top.
        self.members[h_index] = Some(member);
        self.member_count += 1;
        self.sessions.reserve_ids(self.members.len());
        h
    }

    /// What the session wheel keeps next to member `m`'s deadline: its fingerprint and group.
    /// A member found neither at the handle its id encodes nor at its hashed line is also
    /// indexed by that fingerprint, so its heartbeats skip the maps too. (Members found
    /// without it stay out of the index: a small index stays in the CPU caches.) A member
    /// past its join is published on the session board too.
    fn set_session_payload(&mut self, m: u32, now_ms: u64) {
        let member = self.member(m);
        let group = member.group;
        let tag = self.fingerprint(&self.group(group).id, &member.member_id);
        let publish = !member.is_new && !member.pending;
        if handle_in_member_id(&member.member_id) != Some(m) && !self.at_hashed_line(tag, m) {
            self.foreign_ids.insert(tag, m);
        }
        self.sessions.set_payload(m, SessionPayload { tag, group });
        if publish {
            self.board.publish_member(m, tag, group, now_ms);
        }
    }

    /// Drops joined member `m` from the fingerprint index and the session board (before its
    /// id changes or it goes).
    fn unindex_member(&mut self, m: u32) {
        let member = self.member(m);
        let tag = self.fingerprint(&self.group(member.group).id, &member.member_id);
        self.foreign_ids.remove(tag, m);
        self.board.withdraw_member(m);
    }

    /// A seeded 64-bit fingerprint of (group id, member id); never 0 (the empty payload).
    fn fingerprint(&self, group_id: &str, member_id: &str) -> u64 {
        self.board.fingerprint(group_id, member_id)
    }

    /// Publishes group `g`'s generation and state on the session board (after every
    /// transition or generation change).
    fn publish_group(&self, g: u32) {
        let group = self.group(g);
        self.board
            .publish_group(g, group.generation_id, group.state);
    }

    /// Test builds: every group and member is on the session board as the coordinator holds
    /// it (published iff joined, past its join and not pending, under its fingerprint).
    #[cfg(test)]
    pub(crate) fn check_board_all(&self) {
        for (g, group) in self.groups.iter().enumerate() {
            if group.is_some() {
                self.check_board(g as u32);
            }
        }
        for (m, member) in self.members.iter().enumerate() {
            let m = m as u32;
            let word = self.board.beat_word(m);
            let Some(member) = member else {
                assert_eq!(
                    self.board.last_beat_ms(word),
                    None,
                    "a free handle {m} is published"
                );
                continue;
            };
            let joined = self.group(member.group).members.get(&member.member_id) == Some(&m);
            let published = joined && !member.is_new && !member.pending;
            assert_eq!(
                self.board.last_beat_ms(word).is_some(),
                published,
                "member {} of group {}",
                member.member_id,
                self.group(member.group).id
            );
        }
    }

    /// Debug builds: the board shows group `g` as the coordinator holds it.
    fn check_board(&self, g: u32) {
        if cfg!(debug_assertions) {
            let group = self.group(g);
            assert!(
                self.board.shows_group(g, group.generation_id, group.state),
                "session board out of date for group {} ({:?}, generation {})",
                group.id,
                group.state,
                group.generation_id
            );
        }
    }

    fn new_member(&mut self, member: Member) -> u32 {
        self.drop_taken_free_handles();
        self.member_count += 1;
        let m = slab_insert(&mut self.members, &mut self.free_members, member);
        self.sessions.reserve_ids(self.members.len());
        m
    }

    /// Kafka's member id: `client_id-<uuid>`, the client id cut to fit
    /// [`MEMBER_ID_BYTES_MAX`]. The UUID's first 8 hex digits are the member's handle, so a
    /// heartbeat finds the member without a map lookup (verified by its fingerprint; see
    /// [`heartbeat`](Self::heartbeat)); the rest is seeded-random.
    fn generate_member_id(&mut self, client_id: &str, handle: u32) -> String {
        self.member_id_counter += 1;
        let counter = self.member_id_counter.to_le_bytes();
        let high = xxhash_rust::xxh64::xxh64(&counter, self.member_id_seed);
        let low = xxhash_rust::xxh64::xxh64(&counter, self.member_id_seed ^ 0x9e37_79b9_7f4a_7c15);
        let uuid = format!(
            "{handle:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (high >> 16) & 0xffff,
            high & 0xffff,
            low >> 48,
            low & 0xffff_ffff_ffff
        );
        let mut prefix_len = client_id.len().min(MEMBER_ID_BYTES_MAX - uuid.len() - 1);
        while !client_id.is_char_boundary(prefix_len) {
            prefix_len -= 1;
        }
        format!("{}-{uuid}", &client_id[..prefix_len])
    }

    // -----------------------------------------------------------------------------------
    // JoinGroup.

    /// Handles a JoinGroup. Returns the response now, or `None` when it waits for the join
    /// phase: it then arrives as [`GroupReply::Join`] with `ticket`.
    pub fn join(
        &mut self,
        request: JoinGroupRequest,
        offsets_partition: u32,
        ticket: Ticket,
        now_ms: u64,
    ) -> Option<JoinGroupResponse> {
        if let Err(error) = self.validate_join(&request) {
            return Some(JoinGroupResponse::error(error, request.member_id));
        }
        let g = match self.handle_of(&request.group_id) {
            Some(g) => g,
            None if request.member_id.is_empty() => {
                match self.create_group(&request.group_id, offsets_partition, now_ms) {
                    Some(g) => g,
                    None => {
                        let error = GroupError::CoordinatorNotAvailable;
                        return Some(JoinGroupResponse::error(error, request.member_id));
                    }
                }
            }
            None => {
                let error = GroupError::UnknownMemberId;
                return Some(JoinGroupResponse::error(error, request.member_id));
            }
        };
        if !self.supports_protocols(g, &request.protocol_type, &request.protocols) {
            let error = GroupError::InconsistentGroupProtocol;
            let response = JoinGroupResponse::error(error, request.member_id);
            self.drop_if_unused(g);
            return Some(response);
        }
        if !self.accepts_joining_member(g, &request.member_id) {
            let response =
                JoinGroupResponse::error(GroupError::GroupMaxSizeReached, request.member_id);
            self.drop_if_unused(g);
            return Some(response);
        }
        if request.member_id.is_empty() {
            self.join_new_member(g, request, ticket, now_ms)
        } else {
            self.join_existing_member(g, request, ticket, now_ms)
        }
    }

    fn validate_join(&self, request: &JoinGroupRequest) -> Result<(), GroupError> {
        validate_group_id(&request.group_id)?;
        let session = request.session_timeout_ms;
        if session < 0
            || (session as u32) < self.config.group_min_session_timeout_ms
            || (session as u32) > self.config.group_max_session_timeout_ms
        {
            return Err(GroupError::InvalidSessionTimeout);
        }
        if request.member_id.len() > MEMBER_ID_BYTES_MAX {
            // Never one of ours.
            return Err(GroupError::UnknownMemberId);
        }
        let too_long = |s: &str| s.len() > KAFKA_STRING_BYTES_MAX;
        if request
            .group_instance_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || id.len() > MEMBER_ID_BYTES_MAX)
            || too_long(&request.client_id)
            || too_long(&request.client_host)
            || too_long(&request.protocol_type)
            || request.protocols.len() > PROTOCOLS_PER_MEMBER_MAX
            || request.protocols.iter().any(|p| too_long(&p.name))
            || request
                .protocols
                .iter()
                .map(|p| p.metadata.len())
                .sum::<usize>()
                > PROTOCOL_METADATA_BYTES_MAX
        {
            return Err(GroupError::InvalidRequest);
        }
        if request.protocol_type.is_empty() || request.protocols.is_empty() {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        Ok(())
    }

    /// Kafka's `supportsProtocols`: an empty group takes any protocol type; otherwise the
    /// type must match and one protocol must be supported by every member and the joiner.
    fn supports_protocols(&self, g: u32, protocol_type: &str, protocols: &[JoinProtocol]) -> bool {
        let group = self.group(g);
        if group.members.is_empty() {
            return true;
        }
        if group.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        // O(protocols): every member supports a protocol iff its count is the group's size.
        let members = group.members.len() as u32;
        protocols
            .iter()
            .any(|p| group.protocol_support.get(p.name.as_str()) == Some(&members))
    }

    /// Adds (`joined`) or removes member `m`'s protocols from its group's support counts.
    fn count_protocols(&mut self, g: u32, m: u32, joined: bool) {
        let member = self.members[m as usize]
            .as_ref()
            .expect("live member handle");
        let group = self.groups[g as usize].as_mut().expect("live group handle");
        for (i, protocol) in member.protocols.iter().enumerate() {
            let name = protocol.name.as_str();
            if member.protocols[..i].iter().any(|p| p.name == name) {
                // A name listed twice is one protocol: counts must not exceed the members.
                continue;
            }
            if joined {
                *group.protocol_support.entry(name.into()).or_insert(0) += 1;
            } else if let Some(count) = group.protocol_support.get_mut(name) {
                *count -= 1;
                if *count == 0 {
                    group.protocol_support.remove(name);
                }
            }
        }
    }

    fn accepts_joining_member(&self, g: u32, member_id: &str) -> bool {
        let group = self.group(g);
        group.members.contains_key(member_id)
            || group.pending.contains_key(member_id)
            || group.members.len() + group.pending.len() < self.config.group_max_size as usize
                && self.member_count < self.config.members_max
    }

    /// A group created by a join that failed validation is not kept.
    fn drop_if_unused(&mut self, g: u32) {
        let group = self.group(g);
        if group.members.is_empty()
            && group.pending.is_empty()
            && group.generation_id == 0
            && group.metadata_log_position.is_none()
            && group.state == GroupState::Empty
        {
            self.drop_group(g);
        }
    }

    fn join_new_member(
        &mut self,
        g: u32,
        request: JoinGroupRequest,
        ticket: Ticket,
        now_ms: u64,
    ) -> Option<JoinGroupResponse> {
        if let Some(instance_id) = request.group_instance_id.as_deref()
            && let Some(&m) = self.group(g).static_members.get(instance_id)
        {
            return self.replace_static_member(g, m, request, ticket, now_ms);
        }
        let handle = self.next_member_handle();
        let member_id = self.generate_member_id(&request.client_id, handle);
        if request.group_instance_id.is_none() && request.require_known_member_id {
            // KIP-394: the member must rejoin with this id; until then it is pending and
            // expires after its session timeout.
            let session_timeout_ms = request.session_timeout_ms as u32;
            let m = self.new_member(member_from(g, member_id.clone().into(), request));
            self.member_mut(m).pending = true;
            self.group_mut(g)
                .pending
                .insert(member_id.clone().into(), m);
            self.pending_count += 1;
            self.sessions.schedule_in(m, now_ms, session_timeout_ms);
            return Some(JoinGroupResponse::error(
                GroupError::MemberIdRequired,
                member_id,
            ));
        }
        self.add_member_and_rebalance(g, member_id.into(), request, ticket, now_ms);
        None
    }

    fn join_existing_member(
        &mut self,
        g: u32,
        request: JoinGroupRequest,
        ticket: Ticket,
        now_ms: u64,
    ) -> Option<JoinGroupResponse> {
        if let Some(m) = self.group_mut(g).pending.remove(request.member_id.as_str()) {
            // The second half of the MEMBER_ID_REQUIRED dance.
            self.pending_count -= 1;
            self.sessions.cancel(m);
            self.free_member(m);
            let member_id = request.member_id.clone().into();
            self.add_member_and_rebalance(g, member_id, request, ticket, now_ms);
            return None;
        }
        let m =
            match self.validate_member(g, &request.member_id, request.group_instance_id.as_deref())
            {
                Ok(m) => m,
                Err(error) => return Some(JoinGroupResponse::error(error, request.member_id)),
            };
        match self.group(g).state {
            GroupState::PreparingRebalance => {
                self.update_member(m, request, ticket);
                self.maybe_complete_join(g, now_ms);
                None
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                let state = self.group(g).state;
                let is_leader = self.group(g).leader == Some(m);
                let unchanged = self.member(m).same_protocols(&request.protocols);
                if unchanged && (state == GroupState::CompletingRebalance || !is_leader) {
                    // A lost response or a follower's redundant rejoin: answer with the
                    // current generation, no rebalance.
                    return Some(self.join_response(g, m, false));
                }
                self.update_member(m, request, ticket);
                self.prepare_rebalance(g, now_ms);
                None
            }
            GroupState::Empty | GroupState::Dead => Some(JoinGroupResponse::error(
                GroupError::UnknownMemberId,
                request.member_id,
            )),
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        g: u32,
        member_id: Box<str>,
        request: JoinGroupRequest,
        ticket: Ticket,
        now_ms: u64,
    ) {
        let session_timeout_ms = request.session_timeout_ms as u32;
        let protocol_type = request.protocol_type.clone();
        let mut member = member_from(g, member_id.clone(), request);
        member.join_ticket = Some(ticket);
        member.is_new = true;
        let instance_id = member.instance_id.clone();
        let m = self.new_member(member);
        // A new member cannot heartbeat while its JoinGroup waits, and a client that gave up
        // on it (request timeout) joins again as another new member: so a new member's join
        // times out, not its session (Kafka's `CLASSIC_GROUP_NEW_MEMBER_JOIN_TIMEOUT_MS`).
        // The session timeout stays the period a heartbeat renews.
        self.sessions.schedule_in(m, now_ms, session_timeout_ms);
        let join_timeout_ms = self.config.new_member_join_timeout_ms;
        self.sessions
            .schedule(m, now_ms + u64::from(join_timeout_ms));
        self.set_session_payload(m, now_ms);
        let group = self.group_mut(g);
        if group.members.is_empty() {
            // The first member of an empty group sets its protocol type (Kafka's `add`).
            group.protocol_type = Some(protocol_type);
        }
        group.members.insert(member_id, m);
        group.order.push(m);
        if let Some(instance_id) = instance_id {
            group.static_members.insert(instance_id, m);
        }
        group.awaiting_join += 1;
        self.count_protocols(g, m, true);
        let group = self.group_mut(g);
        group.leader.get_or_insert(m);
        if group.in_initial_delay {
            group.new_member_added = true;
        }
        if group.state == GroupState::PreparingRebalance {
            self.maybe_complete_join(g, now_ms);
        } else {
            self.prepare_rebalance(g, now_ms);
        }
    }

    /// A rejoin: new protocols and timeouts, and the member now awaits the join phase.
    fn update_member(&mut self, m: u32, request: JoinGroupRequest, ticket: Ticket) {
        let g = self.member(m).group;
        let replaced = self.member_mut(m).join_ticket.replace(ticket);
        match replaced {
            // A duplicate JoinGroup while the earlier one waits: the new one takes its place
            // (Kafka's `updateMember`). Kafka never completes the replaced future: its broker
            // reads one request per connection at a time, so a duplicate means the client
            // gave up on the first (request timeout, reconnect) and nobody reads that answer.
            // An embedder may still hold the earlier caller, so it is answered now, with the
            // error Kafka's client treats as "retry the JoinGroup, keep the member id"
            // (REBALANCE_IN_PROGRESS), and it stays out of the awaiting-join count.
            Some(old) => self.reply_join_error(old, GroupError::RebalanceInProgress, m),
            None => self.group_mut(g).awaiting_join += 1,
        }
        self.count_protocols(g, m, false);
        let member = self.member_mut(m);
        member.session_timeout_ms = request.session_timeout_ms as u32;
        member.rebalance_timeout_ms = rebalance_timeout_of(&request);
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.protocols = request.protocols;
        self.count_protocols(g, m, true);
    }

    /// KIP-345: a static member rejoining with an unknown member id takes over its instance
    /// id; the old member id is fenced.
    fn replace_static_member(
        &mut self,
        g: u32,
        m: u32,
        request: JoinGroupRequest,
        ticket: Ticket,
        now_ms: u64,
    ) -> Option<JoinGroupResponse> {
        let new_id: Box<str> = self.generate_member_id(&request.client_id, m).into();
        self.unindex_member(m);
        let old_id = std::mem::replace(&mut self.member_mut(m).member_id, new_id.clone());
        // Kafka replaces the member with a fresh one: not new, whatever the old one was.
        self.member_mut(m).is_new = false;
        if let Some(old) = self.member_mut(m).join_ticket.take() {
            self.group_mut(g).awaiting_join -= 1;
            self.reply_join_error(old, GroupError::FencedInstanceId, m);
        }
        if let Some(old) = self.member_mut(m).sync_ticket.take() {
            self.replies.push(GroupReply::Sync(
                old,
                SyncGroupResponse::error(GroupError::FencedInstanceId),
            ));
        }
        let group = self.group_mut(g);
        group.members.remove(&old_id);
        group.members.insert(new_id, m);
        self.sessions
            .schedule_in(m, now_ms, request.session_timeout_ms as u32);
        self.set_session_payload(m, now_ms);
        match self.group(g).state {
            GroupState::Stable => {
                let current = self.group(g).protocol_name.clone();
                let keeps_protocol = current
                    .as_deref()
                    .is_some_and(|p| request.protocols.iter().any(|q| q.name == p));
                if keeps_protocol && self.member(m).same_protocols(&request.protocols) {
                    let member = self.member_mut(m);
                    member.session_timeout_ms = request.session_timeout_ms as u32;
                    member.rebalance_timeout_ms = rebalance_timeout_of(&request);
                    member.client_id = request.client_id;
                    member.client_host = request.client_host;
                    self.persist_group(g, now_ms);
                    let is_leader = self.group(g).leader == Some(m);
                    return Some(self.join_response(g, m, is_leader));
                }
                self.update_member(m, request, ticket);
                self.prepare_rebalance(g, now_ms);
                None
            }
            GroupState::CompletingRebalance => {
                self.update_member(m, request, ticket);
                self.prepare_rebalance(g, now_ms);
                None
            }
            GroupState::PreparingRebalance => {
                self.update_member(m, request, ticket);
                self.maybe_complete_join(g, now_ms);
                None
            }
            GroupState::Empty | GroupState::Dead => Some(JoinGroupResponse::error(
                GroupError::UnknownMemberId,
                String::new(),
            )),
        }
    }

    /// The current generation as a JoinGroup response for member `m` (the leader also gets
    /// the members, unless `skip_assignment`).
    fn join_response(&self, g: u32, m: u32, skip_assignment: bool) -> JoinGroupResponse {
        let group = self.group(g);
        let protocol = group.protocol_name.clone().unwrap_or_default();
        let is_leader = group.leader == Some(m);
        let members = if is_leader {
            group
                .order
                .iter()
                .map(|h| {
                    let member = self.member(h);
                    JoinGroupMember {
                        member_id: member.member_id.to_string(),
                        group_instance_id: member.instance_id.as_deref().map(str::to_owned),
                        metadata: member.metadata_for(&protocol).unwrap_or(&[]).to_vec(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupResponse {
            error: None,
            generation_id: group.generation_id,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            leader: group
                .leader
                .map(|l| self.member(l).member_id.to_string())
                .unwrap_or_default(),
            skip_assignment,
            member_id: self.member(m).member_id.to_string(),
            members,
        }
    }

    fn reply_join_error(&mut self, ticket: Ticket, error: GroupError, m: u32) {
        let member_id = self.member(m).member_id.to_string();
        self.replies.push(GroupReply::Join(
            ticket,
            JoinGroupResponse::error(error, member_id),
        ));
    }

    // -----------------------------------------------------------------------------------
    // Rebalance.

    fn rebalance_timeout_ms(&self, g: u32) -> u32 {
        let group = self.group(g);
        group
            .order
            .iter()
            .map(|m| self.member(m).rebalance_timeout_ms)
            .max()
            .unwrap_or(0)
    }

    /// Starts a join phase (Kafka's `prepareRebalance`).
    fn prepare_rebalance(&mut self, g: u32, now_ms: u64) {
        if self.group(g).state == GroupState::CompletingRebalance {
            self.reset_assignments_with_error(g, GroupError::RebalanceInProgress);
        }
        self.clear_awaiting_sync(g);
        let rebalance_timeout_ms = self.rebalance_timeout_ms(g);
        let initial = self.group(g).state == GroupState::Empty;
        let initial_delay_ms = self.config.group_initial_rebalance_delay_ms;
        let group = self.group_mut(g);
        group.transition(GroupState::PreparingRebalance, now_ms);
        let delay_ms = if initial && initial_delay_ms > 0 {
            let delay_ms = initial_delay_ms.min(rebalance_timeout_ms);
            group.in_initial_delay = true;
            group.new_member_added = false;
            group.initial_delay_left_ms = rebalance_timeout_ms - delay_ms;
            delay_ms
        } else {
            group.in_initial_delay = false;
            rebalance_timeout_ms
        };
        group.timer = GroupTimer::Join;
        self.publish_group(g);
        self.rebalances.schedule(g, now_ms + u64::from(delay_ms));
        self.maybe_complete_join(g, now_ms);
    }

    fn maybe_complete_join(&mut self, g: u32, now_ms: u64) {
        let group = self.group(g);
        if group.state == GroupState::PreparingRebalance
            && !group.in_initial_delay
            && group.all_joined()
        {
            self.complete_join(g, now_ms);
        }
    }

    /// Ends the join phase: members that did not rejoin are removed, a leader is chosen, the
    /// generation advances and every waiting JoinGroup is answered.
    fn complete_join(&mut self, g: u32, now_ms: u64) {
        self.rebalances.cancel(g);
        self.group_mut(g).timer = GroupTimer::None;
        self.group_mut(g).in_initial_delay = false;
        // max.poll.interval.ms semantics: dynamic members that did not rejoin within the
        // rebalance timeout are removed. Static ones stay, as in Kafka: only their session
        // (or the next sync deadline) removes them.
        let stragglers: Vec<u32> = self
            .group(g)
            .order
            .iter()
            .filter(|&m| {
                let member = self.member(m);
                member.join_ticket.is_none() && member.instance_id.is_none()
            })
            .collect();
        for m in stragglers {
            self.remove_member(g, m, GroupError::UnknownMemberId);
        }
        if !self.group(g).members.is_empty() && !self.elect_joined_leader(g) {
            // Only static members that have not rejoined are left: wait another rebalance
            // timeout for them (or for their sessions to end), as Kafka does.
            let timeout_ms = self.rebalance_timeout_ms(g);
            self.group_mut(g).timer = GroupTimer::Join;
            self.rebalances.schedule(g, now_ms + u64::from(timeout_ms));
            return;
        }
        if self.group(g).members.is_empty() {
            let group = self.group_mut(g);
            group.generation_id = next_generation(group.generation_id);
            group.protocol_name = None;
            group.leader = None;
            group.transition(GroupState::Empty, now_ms);
            self.publish_group(g);
            self.persist_group(g, now_ms);
            return;
        }
        let protocol = self.select_protocol(g);
        let group = self.group_mut(g);
        if group.leader.is_none() {
            group.leader = group.order.first();
        }
        group.generation_id = next_generation(group.generation_id);
        group.protocol_name = Some(protocol);
        group.transition(GroupState::CompletingRebalance, now_ms);
        self.publish_group(g);
        let group = self.group_mut(g);
        group.awaiting_join = 0;
        group.awaiting_sync = group.order.len() as u32;
        let order = group.order.to_vec();
        for &m in &order {
            let response = self.join_response(g, m, false);
            let member = self.member_mut(m);
            member.awaiting_sync = true;
            member.is_new = false;
            let session_ms = member.session_timeout_ms;
            if let Some(ticket) = member.join_ticket.take() {
                self.replies.push(GroupReply::Join(ticket, response));
            }
            self.sessions.schedule_in(m, now_ms, session_ms);
            // Its session starts now, on the board too (a new member is published here),
            // under the fingerprint its wheel entry already holds.
            let payload = self.sessions.armed_payload(m);
            debug_assert!(payload.is_some(), "armed just above");
            if let Some(SessionPayload { tag, group }) = payload {
                self.board.publish_member(m, tag, group, now_ms);
            }
        }
        // Members that never send SyncGroup are removed after the rebalance timeout.
        let sync_timeout_ms = self.rebalance_timeout_ms(g);
        self.group_mut(g).timer = GroupTimer::Sync;
        self.rebalances
            .schedule(g, now_ms + u64::from(sync_timeout_ms));
    }

    /// Kafka's `maybeElectNewJoinedLeader`: keeps the leader if it rejoined, else makes the
    /// first member (in join order) that rejoined the leader. False if no member rejoined.
    fn elect_joined_leader(&mut self, g: u32) -> bool {
        let group = self.group(g);
        let joined = |m: u32| self.member(m).join_ticket.is_some();
        if group.leader.is_some_and(joined) {
            return true;
        }
        let Some(leader) = group.order.iter().find(|&m| joined(m)) else {
            return false;
        };
        self.group_mut(g).leader = Some(leader);
        true
    }

    /// Kafka's `selectProtocol`: among the protocols every member supports, each member
    /// votes for its most preferred; most votes wins (ties: the earlier candidate in the
    /// first member's order).
    fn select_protocol(&self, g: u32) -> String {
        let group = self.group(g);
        let Some(first) = group.order.iter().next() else {
            return String::new();
        };
        let first = self.member(first);
        // Supported by every member iff its support count is the group's size: O(protocols).
        let members = group.members.len() as u32;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| group.protocol_support.get(*name) == Some(&members))
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for m in group.order.iter() {
            if let Some(choice) = self.member(m).vote(&candidates)
                && let Some(i) = candidates.iter().position(|c| *c == choice)
            {
                votes[i] += 1;
            }
        }
        let best = (0..candidates.len()).rev().max_by_key(|&i| votes[i]);
        match best {
            Some(i) => candidates[i].to_owned(),
            // Unreachable when joins are checked; fall back to the first member's choice.
            None => first.protocols[0].name.clone(),
        }
    }

    fn clear_awaiting_sync(&mut self, g: u32) {
        let order = self.group(g).order.to_vec();
        for m in order {
            self.member_mut(m).awaiting_sync = false;
        }
        let group = self.group_mut(g);
        group.awaiting_sync = 0;
        if group.timer == GroupTimer::Sync {
            group.timer = GroupTimer::None;
            self.rebalances.cancel(g);
        }
    }

    /// Answers every waiting SyncGroup with `error` (Kafka's
    /// `resetAndPropagateAssignmentWithError`).
    fn reset_assignments_with_error(&mut self, g: u32, error: GroupError) {
        let order = self.group(g).order.to_vec();
        for m in order {
            let member = self.member_mut(m);
            member.assignment.clear();
            member.proposed = None;
            if let Some(ticket) = member.sync_ticket.take() {
                self.replies
                    .push(GroupReply::Sync(ticket, SyncGroupResponse::error(error)));
            }
        }
        // A write still in flight belongs to a generation that is over: the next leader's
        // sync must not wait for it.
        self.group_mut(g).persist_in_flight = None;
    }

    // -----------------------------------------------------------------------------------
    // SyncGroup.

    /// Handles a SyncGroup. Returns the response now, or `None` when it waits for the
    /// leader's assignment to be stored: it then arrives as [`GroupReply::Sync`].
    pub fn sync(
        &mut self,
        request: SyncGroupRequest,
        ticket: Ticket,
        now_ms: u64,
    ) -> Option<SyncGroupResponse> {
        let _ = now_ms;
        let Some(g) = self.handle_of(&request.group_id) else {
            return Some(SyncGroupResponse::error(GroupError::UnknownMemberId));
        };
        let m =
            match self.validate_member(g, &request.member_id, request.group_instance_id.as_deref())
            {
                Ok(m) => m,
                Err(error) => return Some(SyncGroupResponse::error(error)),
            };
        let group = self.group(g);
        if request.generation_id != group.generation_id {
            return Some(SyncGroupResponse::error(GroupError::IllegalGeneration));
        }
        let inconsistent =
            |asked: &Option<String>, have: &Option<String>| asked.is_some() && asked != have;
        if inconsistent(&request.protocol_type, &group.protocol_type)
            || inconsistent(&request.protocol_name, &group.protocol_name)
        {
            return Some(SyncGroupResponse::error(
                GroupError::InconsistentGroupProtocol,
            ));
        }
        match group.state {
            GroupState::Empty | GroupState::Dead => {
                Some(SyncGroupResponse::error(GroupError::UnknownMemberId))
            }
            GroupState::PreparingRebalance => {
                Some(SyncGroupResponse::error(GroupError::RebalanceInProgress))
            }
            GroupState::CompletingRebalance => {
                self.synced(g, m);
                if let Some(old) = self.member_mut(m).sync_ticket.replace(ticket) {
                    self.replies.push(GroupReply::Sync(
                        old,
                        SyncGroupResponse::error(GroupError::RebalanceInProgress),
                    ));
                }
                let group = self.group(g);
                if group.leader == Some(m) && group.persist_in_flight.is_none() {
                    if request
                        .assignments
                        .iter()
                        .any(|(_, a)| a.len() > ASSIGNMENT_BYTES_MAX)
                    {
                        let ticket = self.member_mut(m).sync_ticket.take();
                        debug_assert!(ticket.is_some());
                        return Some(SyncGroupResponse::error(GroupError::InvalidRequest));
                    }
                    let generation = group.generation_id;
                    for (id, assignment) in request.assignments {
                        // Ids that are not members get nothing, as in Kafka.
                        if let Some(&h) = self.group(g).members.get(id.as_str()) {
                            self.member_mut(h).proposed = Some(assignment);
                        }
                    }
                    self.group_mut(g).persist_in_flight = Some(generation);
                    self.persist_group(g, now_ms);
                }
                None
            }
            GroupState::Stable => {
                self.synced(g, m);
                let group = self.group(g);
                Some(SyncGroupResponse {
                    error: None,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol_name.clone(),
                    assignment: self.member(m).assignment.clone(),
                })
            }
        }
    }

    /// Member `m` sent its SyncGroup for this generation.
    fn synced(&mut self, g: u32, m: u32) {
        let member = self.member_mut(m);
        if !std::mem::replace(&mut member.awaiting_sync, false) {
            return;
        }
        let group = self.group_mut(g);
        group.awaiting_sync -= 1;
        if group.awaiting_sync == 0 && group.timer == GroupTimer::Sync {
            group.timer = GroupTimer::None;
            self.rebalances.cancel(g);
        }
    }

    /// The write of a record from [`take_persists`](Self::take_persists) finished:
    /// `Ok(record offset)` once durable, or the error to answer with.
    pub fn persisted(
        &mut self,
        group_id: &str,
        generation_id: i32,
        result: Result<u64, GroupError>,
        now_ms: u64,
    ) {
        let Some(g) = self.handle_of(group_id) else {
            return;
        };
        let group = self.group_mut(g);
        if let Ok(position) = result {
            let newer = group.metadata_log_position.is_none_or(|p| p < position);
            if newer {
                group.metadata_log_position = Some(position);
            }
        }
        if group.persist_in_flight != Some(generation_id) {
            return;
        }
        group.persist_in_flight = None;
        let current =
            group.state == GroupState::CompletingRebalance && group.generation_id == generation_id;
        if !current {
            for m in self.group(g).order.to_vec() {
                self.member_mut(m).proposed = None;
            }
            return;
        }
        match result {
            Ok(_) => self.propagate_assignment(g, now_ms),
            Err(error) => {
                self.reset_assignments_with_error(g, error);
                self.prepare_rebalance(g, now_ms);
            }
        }
    }

    /// The leader's assignment is durable: every member gets its part; the group is Stable.
    fn propagate_assignment(&mut self, g: u32, now_ms: u64) {
        let order = self.group(g).order.to_vec();
        for &m in &order {
            let member = self.member_mut(m);
            member.assignment = member.proposed.take().unwrap_or_default();
        }
        self.group_mut(g).transition(GroupState::Stable, now_ms);
        self.publish_group(g);
        let (protocol_type, protocol_name) = {
            let group = self.group(g);
            (group.protocol_type.clone(), group.protocol_name.clone())
        };
        for m in order {
            let member = self.member_mut(m);
            if let Some(ticket) = member.sync_ticket.take() {
                let response = SyncGroupResponse {
                    error: None,
                    protocol_type: protocol_type.clone(),
                    protocol_name: protocol_name.clone(),
                    assignment: member.assignment.clone(),
                };
                self.replies.push(GroupReply::Sync(ticket, response));
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Heartbeat.

    /// Handles a Heartbeat: O(1), allocation-free, no disk. `Err(RebalanceInProgress)` tells
    /// the member to rejoin (its session is still extended, as Kafka does).
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let (g, m) = match self.fast_member(group_id, member_id, group_instance_id) {
            Some(found) => found,
            None => {
                let g = self
                    .handle_of(group_id)
                    .ok_or(GroupError::UnknownMemberId)?;
                (g, self.validate_member(g, member_id, group_instance_id)?)
            }
        };
        self.check_board(g);
        let group = self.group(g);
        if generation_id != group.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        let state = group.state;
        if state == GroupState::Empty {
            return Err(GroupError::UnknownMemberId);
        }
        // Every joined member has an armed session (the wheel remembers its timeout), so
        // the heartbeat touches the member's wheel entry only.
        let renewed = self.sessions.renew(m, now_ms);
        debug_assert!(renewed);
        match state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// The fast path of a heartbeat from a dynamic member: the wheel entry of the member's
    /// handle holds the fingerprint of (group id, member id) and the group, so a match is that
    /// member (a different id or group would need a 64-bit fingerprint collision under a
    /// random seed). The handle comes from the id when this coordinator generated it (the
    /// UUID starts with it), else from the fingerprint: the hashed handle a restored member
    /// was placed at when free (or its neighbour in the same wheel cache line), else the
    /// fingerprint index (ids made elsewhere, as after a
    /// migration from Kafka). Anything else (static members, unknown ids, a fingerprint two
    /// members share) takes the map path.
    #[inline]
    fn fast_member(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Option<(u32, u32)> {
        if group_instance_id.is_some() {
            return None;
        }
        // The decoded handle's wheel entry is read before the fingerprint is computed, so its
        // likely cache miss overlaps the hashing.
        let decoded =
            handle_in_member_id(member_id).and_then(|m| Some((m, self.sessions.armed_payload(m)?)));
        let tag = self.fingerprint(group_id, member_id);
        let armed_with_tag = |m: u32| {
            self.sessions
                .armed_payload(m)
                .filter(|payload| payload.tag == tag)
                .map(|payload| (payload.group, m))
        };
        let (g, m) = decoded
            .filter(|(_, payload)| payload.tag == tag)
            .map(|(m, payload)| (payload.group, m))
            .or_else(|| {
                // The two handles of one wheel line: one cache miss for both.
                let h = self.hashed_handle(tag)?;
                armed_with_tag(h).or_else(|| armed_with_tag(h ^ 1))
            })
            .or_else(|| self.foreign_ids.get(tag).and_then(armed_with_tag))?;
        debug_assert_eq!(
            self.handle_of(group_id)
                .and_then(|g| self.validate_member(g, member_id, None).ok()),
            Some(m)
        );
        Some((g, m))
    }

    /// Whether a heartbeat from this member would take the fast path.
    #[cfg(test)]
    pub(crate) fn takes_fast_path(&self, group_id: &str, member_id: &str) -> bool {
        self.fast_member(group_id, member_id, None).is_some()
    }

    /// Whether this member sits at its hashed handle or that handle's line neighbour (found
    /// without the index).
    #[cfg(test)]
    pub(crate) fn at_hashed_handle(&self, group_id: &str, member_id: &str) -> bool {
        let g = self.handle_of(group_id).expect("group");
        let m = self.validate_member(g, member_id, None).expect("member");
        self.at_hashed_line(self.fingerprint(group_id, member_id), m)
    }

    /// Whether this member's heartbeats find it through the fingerprint index.
    #[cfg(test)]
    pub(crate) fn indexed(&self, group_id: &str, member_id: &str) -> bool {
        self.foreign_ids
            .get(self.fingerprint(group_id, member_id))
            .is_some()
    }

    /// Slots in the member slab (taken or free).
    #[cfg(test)]
    pub(crate) fn member_slots(&self) -> usize {
        self.members.len()
    }

    /// Kafka's `validateMember`: a static member's instance id must map to this member id.
    fn validate_member(
        &self,
        g: u32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<u32, GroupError> {
        let group = self.group(g);
        if let Some(instance_id) = group_instance_id {
            let &m = group
                .static_members
                .get(instance_id)
                .ok_or(GroupError::UnknownMemberId)?;
            if *self.member(m).member_id != *member_id {
                return Err(GroupError::FencedInstanceId);
            }
            return Ok(m);
        }
        group
            .members
            .get(member_id)
            .copied()
            .ok_or(GroupError::UnknownMemberId)
    }

    // -----------------------------------------------------------------------------------
    // LeaveGroup and removal.

    /// Handles a LeaveGroup for one or more members.
    pub fn leave(
        &mut self,
        group_id: &str,
        leaving: Vec<LeavingMember>,
        now_ms: u64,
    ) -> LeaveGroupResponse {
        let Some(g) = self.handle_of(group_id) else {
            return LeaveGroupResponse {
                error: Some(GroupError::UnknownMemberId),
                members: Vec::new(),
            };
        };
        let mut members = Vec::with_capacity(leaving.len());
        for who in leaving {
            let result = self.leave_one(g, &who, now_ms);
            members.push((who, result.err()));
        }
        LeaveGroupResponse {
            error: None,
            members,
        }
    }

    fn leave_one(&mut self, g: u32, who: &LeavingMember, now_ms: u64) -> Result<(), GroupError> {
        let group = self.group(g);
        let m = match who.group_instance_id.as_deref() {
            Some(instance_id) => {
                let &m = group
                    .static_members
                    .get(instance_id)
                    .ok_or(GroupError::UnknownMemberId)?;
                if !who.member_id.is_empty() && *self.member(m).member_id != *who.member_id {
                    return Err(GroupError::FencedInstanceId);
                }
                m
            }
            None => {
                if let Some(&m) = group.pending.get(who.member_id.as_str()) {
                    self.remove_pending(g, m, now_ms);
                    return Ok(());
                }
                *group
                    .members
                    .get(who.member_id.as_str())
                    .ok_or(GroupError::UnknownMemberId)?
            }
        };
        self.remove_member_and_rebalance(g, m, now_ms);
        Ok(())
    }

    fn remove_pending(&mut self, g: u32, m: u32, now_ms: u64) {
        let member_id = self.member(m).member_id.clone();
        self.group_mut(g).pending.remove(&member_id);
        self.pending_count -= 1;
        self.sessions.cancel(m);
        self.free_member(m);
        self.maybe_complete_join(g, now_ms);
    }

    /// Removes a member and reacts as Kafka's `removeMemberAndUpdateClassicGroup`.
    fn remove_member_and_rebalance(&mut self, g: u32, m: u32, now_ms: u64) {
        self.remove_member(g, m, GroupError::UnknownMemberId);
        match self.group(g).state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(g, now_ms)
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(g, now_ms),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Removes a joined member; its waiting calls are answered with `error`.
    fn remove_member(&mut self, g: u32, m: u32, error: GroupError) {
        self.unindex_member(m);
        self.sessions.cancel(m);
        self.count_protocols(g, m, false);
        let member = self.members[m as usize].take().expect("live member handle");
        self.member_count -= 1;
        self.free_members.push(m);
        if let Some(ticket) = member.join_ticket {
            let response = JoinGroupResponse::error(error, member.member_id.to_string());
            self.replies.push(GroupReply::Join(ticket, response));
        }
        if let Some(ticket) = member.sync_ticket {
            self.replies
                .push(GroupReply::Sync(ticket, SyncGroupResponse::error(error)));
        }
        let group = self.group_mut(g);
        group.members.remove(&member.member_id);
        group.order.remove(m);
        if let Some(instance_id) = &member.instance_id {
            group.static_members.remove(instance_id);
        }
        if member.join_ticket.is_some() {
            group.awaiting_join -= 1;
        }
        if member.awaiting_sync {
            group.awaiting_sync -= 1;
        }
        if group.leader == Some(m) {
            group.leader = group.order.first();
        }
    }

    fn free_member(&mut self, m: u32) {
        self.board.withdraw_member(m);
        self.members[m as usize] = None;
        self.member_count -= 1;
        self.free_members.push(m);
    }

    // -----------------------------------------------------------------------------------
    // Time.

    /// Expires sessions, pending members and join/sync phases due by `now_ms`, at most
    /// [`EXPIRIES_PER_TICK_MAX`] of each kind per call. Returns true if more may be due.
    pub fn tick(&mut self, now_ms: u64) -> bool {
        let mut expired = std::mem::take(&mut self.expired);
        // A session the board renewed comes due once per session timeout to be moved to its
        // last beat: such moves take no share of the expiry budget (or real expiries would
        // queue behind them), only of RENEWALS_PER_TICK_MAX.
        let (mut expiries, mut renewals) = (0, 0);
        let more_sessions = loop {
            expired.clear();
            let budget = EXPIRIES_PER_TICK_MAX - expiries;
            let more = self.sessions.expire(now_ms, budget, &mut expired);
            for &m in &expired {
                if self.session_expired(m, now_ms) {
                    renewals += 1;
                } else {
                    expiries += 1;
                }
            }
            // Each pass takes at least one entry when more are due, so this ends.
            if !more || expiries >= EXPIRIES_PER_TICK_MAX || renewals >= RENEWALS_PER_TICK_MAX {
                break more;
            }
        };
        expired.clear();
        let more_rebalances = self
            .rebalances
            .expire(now_ms, EXPIRIES_PER_TICK_MAX, &mut expired);
        for &g in &expired {
            self.group_timer_fired(g, now_ms);
        }
        expired.clear();
        self.expired = expired;
        more_sessions || more_rebalances
    }

    /// Whether any session or rebalance deadline is armed (the shard ticks only then).
    pub fn has_timers(&self) -> bool {
        !self.sessions.is_empty() || !self.rebalances.is_empty()
    }

    /// A session deadline passed. Returns true if heartbeats on the session board renewed
    /// it (it was only moved).
    fn session_expired(&mut self, m: u32, now_ms: u64) -> bool {
        if self.members[m as usize].is_none() || self.sessions.deadline_ms(m).is_some() {
            // An earlier expiry of the same tick removed this member, or re-armed its session
            // (its group's join completed and answered it): it is not expired any more.
            return false;
        }
        let member = self.member(m);
        let g = member.group;
        if member.pending {
            self.remove_pending(g, m, now_ms);
            return false;
        }
        let session_ms = member.session_timeout_ms;
        // Heartbeats the session board answered count as the coordinator's own: the session
        // runs from the latest.
        let seen = self.board.beat_word(m);
        if let Some(last_ms) = self.board.last_beat_ms(seen)
            && last_ms + u64::from(session_ms) > now_ms
        {
            self.sessions.schedule_in(m, last_ms, session_ms);
            return true;
        }
        if !member.is_new && (member.join_ticket.is_some() || member.sync_ticket.is_some()) {
            // A member waiting on us is alive (Kafka's `hasSatisfiedHeartbeat`).
            self.sessions.schedule_in(m, now_ms, session_ms);
            return false;
        }
        if !self.board.retire_member(m, seen) {
            // A heartbeat landed on the board since `seen` was read (and was answered): it
            // renewed the session. Its caller read its clock before, perhaps long before if
            // it stalled; the beat happened no earlier than `now_ms`, so the session runs
            // from there.
            self.sessions.schedule_in(m, now_ms, session_ms);
            return true;
        }
        if let Some(ticket) = self.member_mut(m).join_ticket.take() {
            // A new member's join timed out. As Kafka, the answer names no member id: a client
            // still there joins afresh.
            self.group_mut(g).awaiting_join -= 1;
            let response = JoinGroupResponse::error(GroupError::UnknownMemberId, String::new());
            self.replies.push(GroupReply::Join(ticket, response));
        }
        self.remove_member_and_rebalance(g, m, now_ms);
        false
    }

    fn group_timer_fired(&mut self, g: u32, now_ms: u64) {
        let timer = std::mem::replace(&mut self.group_mut(g).timer, GroupTimer::None);
        match timer {
            GroupTimer::None => {}
            GroupTimer::Join => self.join_timer_fired(g, now_ms),
            GroupTimer::Sync => {
                let state = self.group(g).state;
                if matches!(state, GroupState::CompletingRebalance | GroupState::Stable) {
                    let late: Vec<u32> = self
                        .group(g)
                        .order
                        .iter()
                        .filter(|&m| self.member(m).awaiting_sync)
                        .collect();
                    for m in late {
                        self.remove_member(g, m, GroupError::UnknownMemberId);
                    }
                    self.prepare_rebalance(g, now_ms);
                }
            }
        }
    }

    /// Kafka's `InitialDelayedJoin`: while members keep arriving, wait another step of the
    /// initial delay, within the rebalance timeout; then (or on a plain join timeout)
    /// complete the join.
    fn join_timer_fired(&mut self, g: u32, now_ms: u64) {
        let step_ms = self.config.group_initial_rebalance_delay_ms;
        let group = self.group_mut(g);
        if group.state != GroupState::PreparingRebalance {
            return;
        }
        if group.in_initial_delay && group.new_member_added && group.initial_delay_left_ms > 0 {
            let delay_ms = step_ms.min(group.initial_delay_left_ms);
            group.initial_delay_left_ms -= delay_ms;
            group.new_member_added = false;
            group.timer = GroupTimer::Join;
            self.rebalances.schedule(g, now_ms + u64::from(delay_ms));
            return;
        }
        group.in_initial_delay = false;
        self.complete_join(g, now_ms);
    }

    // -----------------------------------------------------------------------------------
    // Outboxes.

    /// Responses released since the last call.
    pub fn take_replies(&mut self) -> std::vec::Drain<'_, GroupReply> {
        self.replies.drain(..)
    }

    /// GroupMetadata records to write since the last call.
    pub fn take_persists(&mut self) -> std::vec::Drain<'_, PersistRecord> {
        self.persists.drain(..)
    }

    /// Whether responses or records are waiting to be taken.
    pub fn has_output(&self) -> bool {
        !self.replies.is_empty() || !self.persists.is_empty()
    }

    fn persist_group(&mut self, g: u32, now_ms: u64) {
        let record = PersistRecord {
            group_id: self.group(g).id.to_string(),
            offsets_partition: self.group(g).offsets_partition,
            generation_id: self.group(g).generation_id,
            value: Some(self.metadata_value(g, now_ms)),
        };
        self.persists.push(record);
    }

    /// The group as Kafka's GroupMetadataValue: the proposed assignment while the leader's
    /// sync is being stored, else the current one.
    fn metadata_value(&self, g: u32, now_ms: u64) -> GroupMetadataValue {
        let group = self.group(g);
        let protocol = group.protocol_name.clone();
        let members = group
            .order
            .iter()
            .map(|m| {
                let member = self.member(m);
                let assignment = match group.persist_in_flight {
                    Some(_) => member.proposed.clone().unwrap_or_default(),
                    None => member.assignment.clone(),
                };
                MemberMetadata {
                    member_id: member.member_id.to_string(),
                    group_instance_id: member.instance_id.as_deref().map(str::to_owned),
                    client_id: member.client_id.clone(),
                    client_host: member.client_host.clone(),
                    rebalance_timeout: member.rebalance_timeout_ms as i32,
                    session_timeout: member.session_timeout_ms as i32,
                    subscription: protocol
                        .as_deref()
                        .and_then(|p| member.metadata_for(p))
                        .unwrap_or(&[])
                        .to_vec(),
                    assignment,
                }
            })
            .collect();
        GroupMetadataValue {
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            generation: group.generation_id,
            protocol,
            leader: group.leader.map(|l| self.member(l).member_id.to_string()),
            current_state_timestamp: i64::try_from(now_ms).unwrap_or(i64::MAX),
            members,
        }
    }

    // -----------------------------------------------------------------------------------
    // Commit fencing.

    /// Kafka's `validateOffsetCommit` for a classic group: whether a commit carrying `fence`
    /// may be written now.
    pub fn validate_commit(&self, group_id: &str, fence: &CommitFence) -> Result<(), GroupError> {
        let Some(g) = self.handle_of(group_id) else {
            // A simple commit needs no group; a managed one names a generation that is gone.
            return if fence.generation_id < 0 {
                Ok(())
            } else {
                Err(GroupError::IllegalGeneration)
            };
        };
        let group = self.group(g);
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if fence.generation_id < 0 && group.state == GroupState::Empty {
            return Ok(());
        }
        if fence.generation_id >= 0
            || !fence.member_id.is_empty()
            || fence.group_instance_id.is_some()
        {
            self.validate_member(g, &fence.member_id, fence.group_instance_id.as_deref())?;
            if fence.generation_id != group.generation_id {
                return Err(GroupError::IllegalGeneration);
            }
        } else if group.state != GroupState::Empty {
            return Err(GroupError::UnknownMemberId);
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Admin and state for other parts of the engine.

    /// DescribeGroups for one group; `None` if the coordinator has no such group.
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let group = self.group(self.handle_of(group_id)?);
        let stable = group.state == GroupState::Stable;
        let protocol = group.protocol_name.clone().unwrap_or_default();
        let members = group
            .order
            .iter()
            .map(|m| {
                let member = self.member(m);
                MemberDescription {
                    member_id: member.member_id.to_string(),
                    group_instance_id: member.instance_id.as_deref().map(str::to_owned),
                    client_id: member.client_id.clone(),
                    client_host: member.client_host.clone(),
                    metadata_bytes: if stable {
                        member.metadata_for(&protocol).map_or(0, <[u8]>::len)
                    } else {
                        0
                    },
                    assignment_bytes: if stable { member.assignment.len() } else { 0 },
                }
            })
            .collect();
        Some(GroupDescription {
            group_id: group.id.to_string(),
            state: group.state,
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol_name: if stable { protocol } else { String::new() },
            generation_id: group.generation_id,
            members,
        })
    }

    /// ListGroups: every group this coordinator holds, appended to `out`.
    pub fn list(&self, out: &mut Vec<ListedGroup>) {
        out.extend(self.groups.iter().flatten().map(|group| ListedGroup {
            group_id: group.id.to_string(),
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            state: group.state,
        }));
    }

    /// The group's state, if the coordinator holds it.
    pub fn state(&self, group_id: &str) -> Option<GroupState> {
        Some(self.group(self.handle_of(group_id)?).state)
    }

    /// The group's generation, if the coordinator holds it.
    pub fn generation(&self, group_id: &str) -> Option<i32> {
        Some(self.group(self.handle_of(group_id)?).generation_id)
    }

    /// Whether the group has joined members (offset resets and deletion need none).
    pub fn has_members(&self, group_id: &str) -> bool {
        self.handle_of(group_id)
            .is_some_and(|g| !self.group(g).members.is_empty())
    }

    /// When the group last became Empty (retention counts from here); `None` while it has
    /// members or is unknown.
    pub fn empty_since_ms(&self, group_id: &str) -> Option<u64> {
        self.group(self.handle_of(group_id)?).empty_since_ms
    }

    /// Record offset of the group's latest durable GroupMetadata record: the compactor keeps
    /// it live.
    pub fn metadata_log_position(&self, group_id: &str) -> Option<u64> {
        self.group(self.handle_of(group_id)?).metadata_log_position
    }

    /// Groups held, and joined members over all of them. O(1).
    pub fn counts(&self) -> (usize, usize) {
        (self.ids.len(), self.member_count - self.pending_count)
    }

    // -----------------------------------------------------------------------------------
    // Loading and unloading.

    /// Restores a group from its latest GroupMetadata record (recovery, or a partition moved
    /// here); a tombstone removes it. As Kafka's loader does, members come back with a fresh
    /// session: those that do not heartbeat within it expire and the group rebalances, and a
    /// commit from an older generation stays fenced.
    pub fn load(
        &mut self,
        group_id: &str,
        offsets_partition: u32,
        value: Option<GroupMetadataValue>,
        log_position: u64,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        if let Some(g) = self.handle_of(group_id) {
            self.unload_group(g, GroupError::NotCoordinator);
        }
        let Some(value) = value else {
            return Ok(());
        };
        let g = self
            .create_group(group_id, offsets_partition, now_ms)
            .ok_or(GroupError::CoordinatorNotAvailable)?;
        let protocol = value.protocol.clone().unwrap_or_default();
        for stored in value.members {
            if self.member_count >= self.config.members_max {
                break;
            }
            self.restore_member((g, group_id), stored, &protocol, now_ms);
        }
        let leader = value
            .leader
            .as_deref()
            .and_then(|l| self.group(g).members.get(l).copied());
        let group = self.group_mut(g);
        group.generation_id = value.generation;
        group.protocol_type = (!value.protocol_type.is_empty()).then_some(value.protocol_type);
        group.protocol_name = value.protocol;
        group.leader = leader.or_else(|| group.order.first());
        group.metadata_log_position = Some(log_position);
        if !group.members.is_empty() {
            group.state = GroupState::Stable;
            group.empty_since_ms = None;
        } else if value.current_state_timestamp >= 0 {
            group.empty_since_ms = Some(value.current_state_timestamp as u64);
        }
        self.publish_group(g);
        Ok(())
    }

    /// Restores a member of group `g` (`group_id`) from its stored metadata, with the
    /// group's `protocol`, its session starting at `now_ms` (it must heartbeat or rejoin).
    /// A member id or instance id the group already has is skipped.
    fn restore_member(
        &mut self,
        (g, group_id): (u32, &str),
        stored: MemberMetadata,
        protocol: &str,
        now_ms: u64,
    ) {
        // A record naming a member (or static instance) twice is damaged: keep the first.
        let group = self.group(g);
        let instance_taken = stored
            .group_instance_id
            .as_deref()
            .is_some_and(|id| group.static_members.contains_key(id));
        if group.members.contains_key(stored.member_id.as_str()) || instance_taken {
            return;
        }
        let session_timeout_ms = stored.session_timeout.max(0) as u32;
        let rebalance_timeout_ms = if stored.rebalance_timeout < 0 {
            session_timeout_ms
        } else {
            stored.rebalance_timeout as u32
        };
        let member = Member {
            group: g,
            member_id: stored.member_id.into(),
            instance_id: stored.group_instance_id.map(Into::into),
            client_id: stored.client_id,
            client_host: stored.client_host,
            session_timeout_ms,
            rebalance_timeout_ms,
            protocols: vec![JoinProtocol {
                name: protocol.to_string(),
                metadata: stored.subscription,
            }],
            assignment: stored.assignment,
            proposed: None,
            join_ticket: None,
            sync_ticket: None,
            awaiting_sync: false,
            pending: false,
            is_new: false,
        };
        let (member_id, instance_id) = (member.member_id.clone(), member.instance_id.clone());
        let tag = self.fingerprint(group_id, &member.member_id);
        let hashed = self.hashed_handle(tag);
        let candidates = [
            handle_in_member_id(&member.member_id),
            hashed,
            hashed.map(|h| h ^ 1),
        ];
        let m = self.new_member_at(member, candidates);
        self.sessions.schedule_in(m, now_ms, session_timeout_ms);
        self.set_session_payload(m, now_ms);
        let group = self.group_mut(g);
        group.members.insert(member_id, m);
        group.order.push(m);
        if let Some(instance_id) = instance_id {
            group.static_members.insert(instance_id, m);
        }
        self.count_protocols(g, m, true);
    }

    /// DeleteGroups for one group: refused with `NON_EMPTY_GROUP` while it has members
    /// (joined or pending). Otherwise the group is dropped and, if it ever stored metadata, a
    /// tombstone for its GroupMetadata record is queued (see
    /// [`take_persists`](Self::take_persists)). A group the coordinator does not hold has no
    /// stored metadata (recovery restores every stored group), so there is nothing to do.
    pub fn delete_group(&mut self, group_id: &str) -> Result<(), GroupError> {
        let Some(g) = self.handle_of(group_id) else {
            return Ok(());
        };
        let group = self.group(g);
        if !group.members.is_empty() || !group.pending.is_empty() {
            return Err(GroupError::NonEmptyGroup);
        }
        let stored = group.metadata_log_position.is_some() || group.persist_in_flight.is_some();
        let record = PersistRecord {
            group_id: group_id.to_owned(),
            offsets_partition: group.offsets_partition,
            generation_id: group.generation_id,
            value: None,
        };
        self.unload_group(g, GroupError::GroupIdNotFound);
        if stored {
            self.persists.push(record);
        }
        Ok(())
    }

    /// Drops every group of an offsets partition (it moves to another shard, whose
    /// recovery restores them from the log); waiting calls get `NOT_COORDINATOR`.
    pub fn unload_partition(&mut self, offsets_partition: u32) {
        let handles: Vec<u32> = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(g, group)| {
                let group = group.as_ref()?;
                (group.offsets_partition == offsets_partition).then_some(g as u32)
            })
            .collect();
        for g in handles {
            self.unload_group(g, GroupError::NotCoordinator);
        }
    }

    fn unload_group(&mut self, g: u32, error: GroupError) {
        let order = self.group(g).order.to_vec();
        for m in order {
            self.remove_member(g, m, error);
        }
        let pending: Vec<u32> = self.group(g).pending.values().copied().collect();
        self.pending_count -= pending.len();
        for m in pending {
            self.sessions.cancel(m);
            self.free_member(m);
        }
        self.group_mut(g).pending.clear();
        self.drop_group(g);
    }
}

/// Puts `value` in a free slot of `slab` (or a new one); returns its handle. Allocates only
/// when the slab grows.
fn slab_insert<T>(slab: &mut Vec<Option<T>>, free: &mut Vec<u32>, value: T) -> u32 {
    match free.pop() {
        Some(handle) => {
            debug_assert!(slab[handle as usize].is_none());
            slab[handle as usize] = Some(value);
            handle
        }
        None => {
            slab.push(Some(value));
            (slab.len() - 1) as u32
        }
    }
}

fn validate_group_id(group_id: &str) -> Result<(), GroupError> {
    if group_id.is_empty() || group_id.len() > KAFKA_STRING_BYTES_MAX {
        return Err(GroupError::InvalidGroupId);
    }
    Ok(())
}

/// JoinGroup v0 has no rebalance timeout: the session timeout stands in (as in Kafka).
fn rebalance_timeout_of(request: &JoinGroupRequest) -> u32 {
    if request.rebalance_timeout_ms <= 0 {
        request.session_timeout_ms as u32
    } else {
        request.rebalance_timeout_ms as u32
    }
}

fn member_from(g: u32, member_id: Box<str>, request: JoinGroupRequest) -> Member {
    Member {
        group: g,
        member_id,
        instance_id: request.group_instance_id.as_deref().map(Into::into),
        session_timeout_ms: request.session_timeout_ms as u32,
        rebalance_timeout_ms: rebalance_timeout_of(&request),
        client_id: request.client_id,
        client_host: request.client_host,
        protocols: request.protocols,
        assignment: Vec::new(),
        proposed: None,
        join_ticket: None,
        sync_ticket: None,
        awaiting_sync: false,
        pending: false,
        is_new: false,
    }
}

/// The generation after `generation`: Kafka's `generationId += 1` on a Java int, which wraps
/// past `i32::MAX` rather than failing (a stored group can carry any generation).
fn next_generation(generation: i32) -> i32 {
    generation.wrapping_add(1)
}
