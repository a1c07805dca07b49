//! Consumer groups: Kafka's classic group protocol, one coordinator per shard.
//!
//! * [`GroupCoordinator`] — the state machine (Empty, PreparingRebalance,
//!   CompletingRebalance, Stable, Dead) for JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//!   static membership, session and rebalance timeouts, commit fencing, describe and list.
//!   Deterministic: every call takes `now_ms`, and [`GroupCoordinator::tick`] fires what is
//!   due. Calls that wait park a [`Ticket`] and are answered through an outbox, so a shard
//!   never blocks on a group.
//! * [`timer_wheel`] — the hashed timer wheel holding session deadlines: a heartbeat is an
//!   O(1), allocation-free reschedule.
//! * [`SessionBoard`] — what a heartbeat needs, published for lock-free reads: most
//!   heartbeats are answered on the caller's thread, without a trip to the coordinator.
//!
//! A thread-per-core broker can own a coordinator directly; [`Engine`](crate::Engine) runs
//! one inside each shard. See `docs/architecture.md`, section "Consumer groups".

mod classic_group;
mod coordinator;
mod error;
mod fingerprint_index;
mod id_hash;
mod join_order;
mod member;
mod protocol;
mod session_board;
mod state;
pub mod timer_wheel;

#[cfg(test)]
mod tests;

pub use coordinator::{GroupCoordinator, GroupReply, PersistRecord};
pub use error::GroupError;
pub use member::Ticket;
pub use protocol::{
    CommitFence, GroupDescription, JoinGroupMember, JoinGroupRequest, JoinGroupResponse,
    JoinProtocol, LeaveGroupResponse, LeavingMember, ListedGroup, MemberDescription,
    SyncGroupRequest, SyncGroupResponse,
};
pub use session_board::SessionBoard;
pub use state::GroupState;

/// Longest member id or `group.instance.id` accepted, in bytes (Kafka has no limit; its
/// generated ids are a client id and a 36-byte UUID). Generated ids cut the client id to fit.
pub const MEMBER_ID_BYTES_MAX: usize = 255;
/// Most protocols (assignors) one JoinGroup may list.
pub const PROTOCOLS_PER_MEMBER_MAX: usize = 32;
/// Most bytes of protocol metadata (subscriptions) one JoinGroup may carry, over all its
/// protocols.
pub const PROTOCOL_METADATA_BYTES_MAX: usize = 1024 * 1024;
/// Most bytes of one member's assignment in a leader's SyncGroup.
pub const ASSIGNMENT_BYTES_MAX: usize = 1024 * 1024;
/// Most session expiries, and most join/sync deadlines, one `tick` processes.
pub const EXPIRIES_PER_TICK_MAX: usize = 4096;
/// Most sessions one `tick` moves to the last heartbeat the session board answered (each
/// comes due about once per session timeout; cheap, so the bound is larger).
pub const RENEWALS_PER_TICK_MAX: usize = 64 * 1024;
/// Ceiling of `group.max.size` (Kafka's default is `Integer.MAX_VALUE`; ours is bounded).
pub const GROUP_MAX_SIZE_LIMIT: u32 = 1 << 20;
/// Most groups one shard's coordinator holds.
pub const GROUPS_PER_SHARD_MAX: usize = 1 << 20;
/// Most members (joined and pending) one shard's coordinator holds.
pub const MEMBERS_PER_SHARD_MAX: usize = 1 << 22;
/// How long a new member's JoinGroup may wait before the member is removed (Kafka's
/// `CLASSIC_GROUP_NEW_MEMBER_JOIN_TIMEOUT_MS`, KIP-394): 5 minutes.
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: u32 = 5 * 60 * 1000;

/// Group settings, with Kafka's broker config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.min.session.timeout.ms` (6000).
    pub group_min_session_timeout_ms: u32,
    /// `group.max.session.timeout.ms` (1800000).
    pub group_max_session_timeout_ms: u32,
    /// `group.initial.rebalance.delay.ms` (3000): how long the first rebalance of an empty
    /// group waits for more members.
    pub group_initial_rebalance_delay_ms: u32,
    /// `group.max.size` (Kafka: unbounded; here [`GROUP_MAX_SIZE_LIMIT`]).
    pub group_max_size: u32,
    /// No Kafka name: groups per shard, at most [`GROUPS_PER_SHARD_MAX`].
    pub groups_max: usize,
    /// No Kafka name: members per shard, at most [`MEMBERS_PER_SHARD_MAX`].
    pub members_max: usize,
    /// No Kafka config (Kafka's constant `CLASSIC_GROUP_NEW_MEMBER_JOIN_TIMEOUT_MS`): how
    /// long a member joining for the first time may wait in JoinGroup before it is removed
    /// and answered `UNKNOWN_MEMBER_ID` ([`NEW_MEMBER_JOIN_TIMEOUT_MS`]).
    pub new_member_join_timeout_ms: u32,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        GroupConfig {
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 3000,
            group_max_size: GROUP_MAX_SIZE_LIMIT,
            groups_max: GROUPS_PER_SHARD_MAX,
            members_max: MEMBERS_PER_SHARD_MAX,
            new_member_join_timeout_ms: NEW_MEMBER_JOIN_TIMEOUT_MS,
        }
    }
}

impl GroupConfig {
    /// Checks every value against its limit.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_min_session_timeout_ms == 0
            || self.group_min_session_timeout_ms > self.group_max_session_timeout_ms
        {
            return Err(
                "group.min.session.timeout.ms must be in 1..=group.max.session.timeout.ms".into(),
            );
        }
        if self.group_max_size == 0 || self.group_max_size > GROUP_MAX_SIZE_LIMIT {
            return Err(format!(
                "group.max.size must be in 1..={GROUP_MAX_SIZE_LIMIT}"
            ));
        }
        if self.groups_max == 0 || self.groups_max > GROUPS_PER_SHARD_MAX {
            return Err(format!("groups_max must be in 1..={GROUPS_PER_SHARD_MAX}"));
        }
        if self.members_max == 0 || self.members_max > MEMBERS_PER_SHARD_MAX {
            return Err(format!(
                "members_max must be in 1..={MEMBERS_PER_SHARD_MAX}"
            ));
        }
        if self.new_member_join_timeout_ms == 0 {
            return Err("new_member_join_timeout_ms must be positive".into());
        }
        Ok(())
    }
}
