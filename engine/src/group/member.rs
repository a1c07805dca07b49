//! A member of a classic group, as the coordinator keeps it.

use super::protocol::JoinProtocol;

/// Identifies a caller waiting for a JoinGroup or SyncGroup response; the embedder maps it
/// to its responder (the engine: a future's completer).
pub type Ticket = u64;

/// One member (or a pending member: a dynamic member sent `MEMBER_ID_REQUIRED` that has not
/// rejoined yet).
#[derive(Debug)]
pub(crate) struct Member {
    /// Handle of the member's group.
    pub group: u32,
    pub member_id: Box<str>,
    pub instance_id: Option<Box<str>>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    /// Supported protocols in preference order.
    pub protocols: Vec<JoinProtocol>,
    pub assignment: Vec<u8>,
    /// The leader's assignment for this member while its group's record is being written
    /// (`Group::persist_in_flight`); `None` otherwise. Kept on the member so writing the
    /// record, and removing a member meanwhile, cost O(1) per member.
    pub proposed: Option<Vec<u8>>,
    /// A JoinGroup waiting for the join phase to complete: the member is awaiting join.
    pub join_ticket: Option<Ticket>,
    /// A SyncGroup waiting for the leader's assignment.
    pub sync_ticket: Option<Ticket>,
    /// Joined this generation but has not sent SyncGroup yet (Kafka's pending sync set).
    pub awaiting_sync: bool,
    /// Issued a member id with `MEMBER_ID_REQUIRED`; not a member until it rejoins.
    pub pending: bool,
    /// Joined during the current join phase and has not yet been answered a generation
    /// (Kafka's `isNew`): its session deadline is the new-member join timeout, and waiting
    /// in JoinGroup does not keep it alive.
    pub is_new: bool,
}

impl Member {
    /// The member's metadata for `protocol`, if it supports it.
    pub fn metadata_for(&self, protocol: &str) -> Option<&[u8]> {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.as_slice())
    }

    /// Whether a rejoin carries exactly the protocols the member already has (Kafka's
    /// `matches`): then a rejoin in CompletingRebalance or Stable needs no rebalance.
    pub fn same_protocols(&self, protocols: &[JoinProtocol]) -> bool {
        self.protocols == protocols
    }

    /// The member's first preference among `candidates`.
    pub fn vote<'c>(&self, candidates: &[&'c str]) -> Option<&'c str> {
        self.protocols
            .iter()
            .find_map(|p| candidates.iter().find(|c| **c == p.name).copied())
    }
}
