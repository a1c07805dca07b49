//! The group protocol's errors, each one of Kafka's error codes.

/// Why a group request failed. Each variant is one of Kafka's `Errors` and maps to its code
/// with [`GroupError::kafka_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum GroupError {
    /// `UNKNOWN_SERVER_ERROR` (-1): a GroupMetadata record too large to be written.
    #[error("UNKNOWN_SERVER_ERROR: the group's metadata could not be stored")]
    UnknownServerError,
    /// `COORDINATOR_NOT_AVAILABLE` (15): the group is being unloaded or is dead, or the
    /// shard's group table is full; retriable.
    #[error("COORDINATOR_NOT_AVAILABLE: the group coordinator is not available")]
    CoordinatorNotAvailable,
    /// `NOT_COORDINATOR` (16): this engine does not serve the group's offsets partition.
    #[error("NOT_COORDINATOR: the group's offsets partition is not served here")]
    NotCoordinator,
    /// `ILLEGAL_GENERATION` (22): the request carries another generation than the group's.
    #[error("ILLEGAL_GENERATION: the generation is not the group's current one")]
    IllegalGeneration,
    /// `INCONSISTENT_GROUP_PROTOCOL` (23): the member's protocol type or protocols do not fit
    /// the group's.
    #[error("INCONSISTENT_GROUP_PROTOCOL: no protocol in common with the group")]
    InconsistentGroupProtocol,
    /// `INVALID_GROUP_ID` (24).
    #[error("INVALID_GROUP_ID: the group id is empty or too long")]
    InvalidGroupId,
    /// `UNKNOWN_MEMBER_ID` (25): the member is not in the group (expired, left, never joined).
    #[error("UNKNOWN_MEMBER_ID: the member is not in the group")]
    UnknownMemberId,
    /// `INVALID_SESSION_TIMEOUT` (26): outside `group.min/max.session.timeout.ms`.
    #[error("INVALID_SESSION_TIMEOUT: the session timeout is out of the broker's range")]
    InvalidSessionTimeout,
    /// `REBALANCE_IN_PROGRESS` (27): the member must rejoin.
    #[error("REBALANCE_IN_PROGRESS: the group is rebalancing")]
    RebalanceInProgress,
    /// `INVALID_REQUEST` (42): a field is over one of the engine's named limits.
    #[error("INVALID_REQUEST: a field is over the engine's limit")]
    InvalidRequest,
    /// `NON_EMPTY_GROUP` (68): the operation needs a group without active members.
    #[error("NON_EMPTY_GROUP: the group has active members")]
    NonEmptyGroup,
    /// `GROUP_ID_NOT_FOUND` (69).
    #[error("GROUP_ID_NOT_FOUND: no such group")]
    GroupIdNotFound,
    /// `GROUP_SUBSCRIBED_TO_TOPIC` (86): OffsetDelete while the group has active members
    /// (the engine cannot read their subscriptions, so it refuses for every topic).
    #[error("GROUP_SUBSCRIBED_TO_TOPIC: the group has active members")]
    GroupSubscribedToTopic,
    /// `MEMBER_ID_REQUIRED` (79): the first join of a dynamic member (JoinGroup v4+); rejoin
    /// with the member id in the response.
    #[error("MEMBER_ID_REQUIRED: rejoin with the member id given")]
    MemberIdRequired,
    /// `GROUP_MAX_SIZE_REACHED` (81): the group has `group.max.size` members.
    #[error("GROUP_MAX_SIZE_REACHED: the group is full")]
    GroupMaxSizeReached,
    /// `FENCED_INSTANCE_ID` (82): another member now holds this `group.instance.id`.
    #[error("FENCED_INSTANCE_ID: the static member was replaced")]
    FencedInstanceId,
}

impl GroupError {
    /// Kafka's error code for this error.
    pub fn kafka_code(self) -> i16 {
        match self {
            GroupError::UnknownServerError => -1,
            GroupError::CoordinatorNotAvailable => 15,
            GroupError::NotCoordinator => 16,
            GroupError::IllegalGeneration => 22,
            GroupError::InconsistentGroupProtocol => 23,
            GroupError::InvalidGroupId => 24,
            GroupError::UnknownMemberId => 25,
            GroupError::InvalidSessionTimeout => 26,
            GroupError::RebalanceInProgress => 27,
            GroupError::InvalidRequest => 42,
            GroupError::NonEmptyGroup => 68,
            GroupError::GroupIdNotFound => 69,
            GroupError::GroupSubscribedToTopic => 86,
            GroupError::MemberIdRequired => 79,
            GroupError::GroupMaxSizeReached => 81,
            GroupError::FencedInstanceId => 82,
        }
    }

    /// Whether a client retries after this error (rediscovering the coordinator for the
    /// coordinator errors), as Kafka's `RetriableException` subclasses say.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            GroupError::CoordinatorNotAvailable
                | GroupError::NotCoordinator
                | GroupError::RebalanceInProgress
        )
    }
}
