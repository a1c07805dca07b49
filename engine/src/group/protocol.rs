//! Decoded group requests and the responses the coordinator returns. The broker keeps the
//! network layer: it decodes Kafka's JoinGroup, SyncGroup, Heartbeat, LeaveGroup and
//! DescribeGroups requests into these and encodes the responses.

use super::GroupError;
use super::state::GroupState;

/// One protocol (assignor) a joining member supports, with its subscription metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinProtocol {
    /// Protocol name ("range", "cooperative-sticky", ...).
    pub name: String,
    /// Opaque subscription metadata.
    pub metadata: Vec<u8>,
}

/// A decoded JoinGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupRequest {
    /// Group id.
    pub group_id: String,
    /// Empty on a member's first join.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub group_instance_id: Option<String>,
    /// Client id (the prefix of generated member ids).
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// `max.poll.interval.ms` for Java consumers; -1 (JoinGroup v0) means the session timeout.
    pub rebalance_timeout_ms: i32,
    /// "consumer", "connect", ...
    pub protocol_type: String,
    /// Supported protocols in the member's order of preference.
    pub protocols: Vec<JoinProtocol>,
    /// JoinGroup v4+: a dynamic member's first join is answered `MEMBER_ID_REQUIRED`.
    pub require_known_member_id: bool,
}

/// A member as the leader sees it in its JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupMember {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// The member's metadata for the chosen protocol.
    pub metadata: Vec<u8>,
}

/// A JoinGroup response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinGroupResponse {
    /// `None` on success.
    pub error: Option<GroupError>,
    /// The new generation (-1 on error).
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The chosen protocol.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// KIP-814: the leader must not compute a new assignment (a replaced static leader).
    pub skip_assignment: bool,
    /// This member's id (also set with `MEMBER_ID_REQUIRED`).
    pub member_id: String,
    /// The members and their metadata, for the leader only.
    pub members: Vec<JoinGroupMember>,
}

impl JoinGroupResponse {
    pub(crate) fn error(error: GroupError, member_id: String) -> JoinGroupResponse {
        JoinGroupResponse {
            error: Some(error),
            generation_id: -1,
            member_id,
            ..JoinGroupResponse::default()
        }
    }
}

/// A decoded SyncGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupRequest {
    /// Group id.
    pub group_id: String,
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// The generation the member joined.
    pub generation_id: i32,
    /// SyncGroup v5+: checked against the group's when present.
    pub protocol_type: Option<String>,
    /// SyncGroup v5+: checked against the group's when present.
    pub protocol_name: Option<String>,
    /// The leader's assignment per member id (empty from followers).
    pub assignments: Vec<(String, Vec<u8>)>,
}

/// A SyncGroup response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncGroupResponse {
    /// `None` on success.
    pub error: Option<GroupError>,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The group's protocol.
    pub protocol_name: Option<String>,
    /// This member's assignment (opaque).
    pub assignment: Vec<u8>,
}

impl SyncGroupResponse {
    pub(crate) fn error(error: GroupError) -> SyncGroupResponse {
        SyncGroupResponse {
            error: Some(error),
            ..SyncGroupResponse::default()
        }
    }
}

/// One member leaving (LeaveGroup v3+ carries several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeavingMember {
    /// Member id; may be empty for a static member identified by its instance id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
}

/// A LeaveGroup response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaveGroupResponse {
    /// A group-level error (the group is unknown or dead).
    pub error: Option<GroupError>,
    /// Per leaving member, in request order.
    pub members: Vec<(LeavingMember, Option<GroupError>)>,
}

/// What a commit carries to be fenced by the group's generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFence {
    /// The committer's generation; -1 for a simple (unmanaged) commit.
    pub generation_id: i32,
    /// The committer's member id; empty for a simple commit.
    pub member_id: String,
    /// The committer's `group.instance.id`.
    pub group_instance_id: Option<String>,
}

impl CommitFence {
    /// A simple commit: generation -1, no member (admin tools, manually assigned consumers).
    pub fn simple() -> CommitFence {
        CommitFence {
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
        }
    }
}

/// One member in a [`GroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Bytes of the member's metadata for the chosen protocol.
    pub metadata_bytes: usize,
    /// Bytes of the member's assignment.
    pub assignment_bytes: usize,
}

/// DescribeGroups for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// Current state.
    pub state: GroupState,
    /// Protocol type ("" when none).
    pub protocol_type: String,
    /// The chosen protocol, once the group is Stable (as Kafka's DescribeGroups reports it).
    pub protocol_name: String,
    /// Current generation.
    pub generation_id: i32,
    /// Members in join order.
    pub members: Vec<MemberDescription>,
}

/// ListGroups for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedGroup {
    /// Group id.
    pub group_id: String,
    /// Protocol type ("" for a group with only committed offsets).
    pub protocol_type: String,
    /// Current state.
    pub state: GroupState,
}
