//! The classic group protocol's states and which transitions are legal.

/// A classic group's state (Kafka's `ClassicGroupState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members; committed offsets may remain.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Removed; requests get `COORDINATOR_NOT_AVAILABLE`.
    Dead,
}

impl GroupState {
    /// Kafka's name for the state, as DescribeGroups and ListGroups report it.
    pub fn kafka_name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }

    /// Whether `self` may be entered from `from` (Kafka's `validPreviousStates`).
    pub fn may_follow(self, from: GroupState) -> bool {
        use GroupState::*;
        match self {
            Empty => matches!(from, PreparingRebalance),
            PreparingRebalance => matches!(from, Empty | CompletingRebalance | Stable),
            CompletingRebalance => matches!(from, PreparingRebalance),
            Stable => matches!(from, CompletingRebalance),
            Dead => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GroupState::*;

    #[test]
    fn transitions_follow_kafka() {
        assert!(PreparingRebalance.may_follow(Empty));
        assert!(PreparingRebalance.may_follow(Stable));
        assert!(PreparingRebalance.may_follow(CompletingRebalance));
        assert!(!PreparingRebalance.may_follow(PreparingRebalance));
        assert!(CompletingRebalance.may_follow(PreparingRebalance));
        assert!(!CompletingRebalance.may_follow(Stable));
        assert!(Stable.may_follow(CompletingRebalance));
        assert!(!Stable.may_follow(PreparingRebalance));
        assert!(Empty.may_follow(PreparingRebalance));
        assert!(!Empty.may_follow(Stable));
        assert!(Dead.may_follow(Stable));
    }
}
