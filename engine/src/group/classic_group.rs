//! A classic group's in-memory state: members, generation, protocol, leader, timers.

use super::id_hash::{IdMap, id_map};
use super::join_order::JoinOrder;
use super::state::GroupState;

/// What a group's one timer (in the coordinator's rebalance wheel) is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupTimer {
    None,
    /// The join phase ends (rebalance timeout, or a step of the initial delay).
    Join,
    /// Members that have not sent SyncGroup by now are removed.
    Sync,
}

/// One classic group.
#[derive(Debug)]
pub(crate) struct Group {
    pub id: Box<str>,
    pub offsets_partition: u32,
    pub state: GroupState,
    pub state_since_ms: u64,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// Member handle of the leader.
    pub leader: Option<u32>,
    /// Member id → member handle, for joined members.
    pub members: IdMap<u32>,
    /// Joined members' handles in join order (leader election and responses are stable).
    pub order: JoinOrder,
    /// Protocol name → joined members supporting it (Kafka's `supportedProtocols`), so a
    /// join checks its protocols in O(protocols), not O(members).
    pub protocol_support: IdMap<u32>,
    /// `group.instance.id` → member handle.
    pub static_members: IdMap<u32>,
    /// Member ids handed out with `MEMBER_ID_REQUIRED` → handle.
    pub pending: IdMap<u32>,
    /// Joined members with a JoinGroup waiting.
    pub awaiting_join: u32,
    /// Joined members that have not sent SyncGroup for this generation.
    pub awaiting_sync: u32,
    pub timer: GroupTimer,
    /// In the initial rebalance delay (`group.initial.rebalance.delay.ms`) of a group that
    /// was empty.
    pub in_initial_delay: bool,
    /// What is left of the rebalance timeout for further initial-delay steps.
    pub initial_delay_left_ms: u32,
    /// A member joined during the current initial-delay step.
    pub new_member_added: bool,
    /// The generation whose GroupMetadata record is being written after the leader's sync
    /// (the leader's assignment waits in each member's `proposed`).
    pub persist_in_flight: Option<i32>,
    /// Record offset of the group's latest durable GroupMetadata record: the compactor keeps
    /// that record live.
    pub metadata_log_position: Option<u64>,
    /// When the group last became Empty (offset retention counts from here).
    pub empty_since_ms: Option<u64>,
}

impl Group {
    pub fn new(id: &str, offsets_partition: u32, now_ms: u64) -> Group {
        Group {
            id: id.into(),
            offsets_partition,
            state: GroupState::Empty,
            state_since_ms: now_ms,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: id_map(),
            order: JoinOrder::default(),
            protocol_support: id_map(),
            static_members: id_map(),
            pending: id_map(),
            awaiting_join: 0,
            awaiting_sync: 0,
            timer: GroupTimer::None,
            in_initial_delay: false,
            initial_delay_left_ms: 0,
            new_member_added: false,
            persist_in_flight: None,
            metadata_log_position: None,
            empty_since_ms: Some(now_ms),
        }
    }

    /// Moves to `next`, checking Kafka's legal transitions.
    pub fn transition(&mut self, next: GroupState, now_ms: u64) {
        assert!(
            next.may_follow(self.state),
            "illegal group transition {:?} -> {next:?}",
            self.state
        );
        self.state = next;
        self.state_since_ms = now_ms;
        self.empty_since_ms = (next == GroupState::Empty).then_some(now_ms);
    }

    pub fn all_joined(&self) -> bool {
        self.awaiting_join as usize == self.members.len() && self.pending.is_empty()
    }
}
