//! State machine tests with a controlled clock: every transition and error code.

use std::collections::HashMap;

use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;
const GROUP: &str = "g";

fn config() -> GroupConfig {
    GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    }
}

struct Harness {
    coordinator: GroupCoordinator,
    /// Heartbeats try the session board first, as the engine does (default); false: the
    /// coordinator answers every one.
    via_board: bool,
    /// Heartbeats the board answered.
    board_answers: usize,
    now_ms: u64,
    next_ticket: Ticket,
    replies: HashMap<Ticket, GroupReply>,
    next_position: u64,
    last_records: Vec<PersistRecord>,
}

/// A JoinGroup that either answered at once or is parked under a ticket.
#[derive(Debug)]
enum Joined {
    Now(JoinGroupResponse),
    Waiting(Ticket),
}

fn join_request(
    member_id: &str,
    instance_id: Option<&str>,
    protocols: &[&str],
) -> JoinGroupRequest {
    JoinGroupRequest {
        group_id: GROUP.into(),
        member_id: member_id.into(),
        group_instance_id: instance_id.map(Into::into),
        client_id: "client".into(),
        client_host: "/10.0.0.1".into(),
        session_timeout_ms: SESSION_MS,
        rebalance_timeout_ms: REBALANCE_MS,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|name| JoinProtocol {
                name: (*name).into(),
                metadata: format!("sub-{name}").into_bytes(),
            })
            .collect(),
        require_known_member_id: true,
    }
}

fn sync_request(
    member_id: &str,
    generation_id: i32,
    assignments: &[(&str, &[u8])],
) -> SyncGroupRequest {
    SyncGroupRequest {
        group_id: GROUP.into(),
        member_id: member_id.into(),
        group_instance_id: None,
        generation_id,
        protocol_type: Some("consumer".into()),
        protocol_name: None,
        assignments: assignments
            .iter()
            .map(|(id, a)| ((*id).to_owned(), a.to_vec()))
            .collect(),
    }
}

/// A stored GroupMetadata value: a Stable group of `ids` (the first leads) at `generation`,
/// as a restore reads it.
fn stored_group<S: AsRef<str>>(ids: &[S], generation: i32) -> crate::format::GroupMetadataValue {
    let members = ids
        .iter()
        .map(|id| crate::format::MemberMetadata {
            member_id: id.as_ref().into(),
            session_timeout: SESSION_MS,
            rebalance_timeout: REBALANCE_MS,
            ..crate::format::MemberMetadata::default()
        })
        .collect();
    crate::format::GroupMetadataValue {
        protocol_type: "consumer".into(),
        generation,
        protocol: Some("range".into()),
        leader: ids.first().map(|id| id.as_ref().into()),
        current_state_timestamp: 0,
        members,
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(config())
    }

    fn with(config: GroupConfig) -> Harness {
        Harness {
            coordinator: GroupCoordinator::new(config, 7, 1_000),
            via_board: true,
            board_answers: 0,
            now_ms: 1_000,
            next_ticket: 1,
            replies: HashMap::new(),
            next_position: 100,
            last_records: Vec::new(),
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        while self.coordinator.tick(self.now_ms) {}
        self.collect();
    }

    /// Advances the clock one millisecond at a time, ticking at each: deadlines fire in
    /// their order, never batched with later ones (whose order within one tick is the
    /// wheel's).
    fn advance_finely(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now_ms += 1;
            while self.coordinator.tick(self.now_ms) {}
        }
        self.collect();
    }

    fn collect(&mut self) {
        self.coordinator.check_board_all();
        for reply in self.coordinator.take_replies() {
            let ticket = match &reply {
                GroupReply::Join(t, _) | GroupReply::Sync(t, _) => *t,
            };
            assert!(
                self.replies.insert(ticket, reply).is_none(),
                "answered twice"
            );
        }
    }

    fn join(&mut self, request: JoinGroupRequest) -> Joined {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let answer = self.coordinator.join(request, 0, ticket, self.now_ms);
        self.collect();
        match answer {
            Some(response) => Joined::Now(response),
            None => Joined::Waiting(ticket),
        }
    }

    /// The full dynamic first join: MEMBER_ID_REQUIRED, then the rejoin with the id.
    fn join_new(&mut self, protocols: &[&str]) -> (String, Joined) {
        let Joined::Now(first) = self.join(join_request("", None, protocols)) else {
            panic!("first join of a v4 dynamic member answers at once");
        };
        assert_eq!(first.error, Some(GroupError::MemberIdRequired));
        assert!(first.member_id.starts_with("client-"));
        let member_id = first.member_id;
        let joined = self.join(join_request(&member_id, None, protocols));
        (member_id, joined)
    }

    fn join_reply(&mut self, ticket: Ticket) -> Option<JoinGroupResponse> {
        match self.replies.remove(&ticket)? {
            GroupReply::Join(_, response) => Some(response),
            other => panic!("expected a join reply, got {other:?}"),
        }
    }

    /// Rejoins the static member `i-1` (`leader_id`) so a parked join `ticket` completes;
    /// returns the parked member's id.
    fn join_reply_later(&mut self, ticket: Ticket, leader_id: &str) -> String {
        let Joined::Waiting(t) = self.join(join_request(leader_id, Some("i-1"), &["range"])) else {
            panic!()
        };
        assert!(self.join_reply(t).is_some());
        self.join_reply(ticket).unwrap().member_id
    }

    fn sync(&mut self, request: SyncGroupRequest) -> Result<SyncGroupResponse, Ticket> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let answer = self.coordinator.sync(request, ticket, self.now_ms);
        self.collect();
        answer.ok_or(ticket)
    }

    fn sync_reply(&mut self, ticket: Ticket) -> Option<SyncGroupResponse> {
        match self.replies.remove(&ticket)? {
            GroupReply::Sync(_, response) => Some(response),
            other => panic!("expected a sync reply, got {other:?}"),
        }
    }

    /// Acknowledges every pending GroupMetadata write; returns them.
    fn persist_all(&mut self, result: Result<(), GroupError>) -> Vec<PersistRecord> {
        let records: Vec<PersistRecord> = self.coordinator.take_persists().collect();
        for record in &records {
            let outcome = result.map(|()| {
                self.next_position += 1;
                self.next_position
            });
            self.coordinator.persisted(
                &record.group_id,
                record.generation_id,
                outcome,
                self.now_ms,
            );
        }
        self.collect();
        self.last_records.clone_from(&records);
        records
    }

    fn heartbeat(&mut self, member_id: &str, generation_id: i32) -> Result<(), GroupError> {
        if self.via_board {
            let board = self.coordinator.session_board();
            if let Some(answer) =
                board.heartbeat(GROUP, member_id, None, generation_id, self.now_ms)
            {
                self.board_answers += 1;
                return answer;
            }
        }
        self.coordinator
            .heartbeat(GROUP, member_id, None, generation_id, self.now_ms)
    }

    fn state(&self) -> Option<GroupState> {
        self.coordinator.state(GROUP)
    }

    /// The leader of a one-member group syncs with `assignment` for itself; its sync waits
    /// for the generation's write, which is acknowledged. Returns the sync's answer.
    fn sync_alone(&mut self, id: &str, generation_id: i32, assignment: &[u8]) -> SyncGroupResponse {
        let Err(sync) = self.sync(sync_request(id, generation_id, &[(id, assignment)])) else {
            panic!("leader sync waits for the write")
        };
        self.persist_all(Ok(()));
        self.sync_reply(sync)
            .expect("answered once the write is acknowledged")
    }

    /// One member joined and synced: returns its id (generation 1, Stable).
    fn stable_single(&mut self) -> String {
        let (id, joined) = self.join_new(&["range"]);
        let Joined::Waiting(ticket) = joined else {
            panic!("join waits for the join phase")
        };
        let response = self.join_reply(ticket).expect("join completes at once");
        assert_eq!(response.generation_id, 1);
        assert_eq!(self.sync_alone(&id, 1, b"a1").assignment, b"a1");
        assert_eq!(self.state(), Some(GroupState::Stable));
        id
    }

    /// Two members Stable at generation 2: (leader, follower).
    fn stable_pair(&mut self) -> (String, String) {
        let a = self.stable_single();
        let (b, joined) = self.join_new(&["range"]);
        let Joined::Waiting(b_ticket) = joined else {
            panic!("second member waits")
        };
        assert_eq!(self.state(), Some(GroupState::PreparingRebalance));
        assert_eq!(self.heartbeat(&a, 1), Err(GroupError::RebalanceInProgress));
        let Joined::Waiting(a_ticket) = self.join(join_request(&a, None, &["range"])) else {
            panic!("leader rejoin waits")
        };
        let a_join = self.join_reply(a_ticket).unwrap();
        let b_join = self.join_reply(b_ticket).unwrap();
        assert_eq!(a_join.generation_id, 2);
        assert_eq!(a_join.leader, a);
        assert_eq!(a_join.members.len(), 2);
        assert!(b_join.members.is_empty());
        assert_eq!(self.state(), Some(GroupState::CompletingRebalance));
        let Err(b_sync) = self.sync(sync_request(&b, 2, &[])) else {
            panic!("follower waits for the leader")
        };
        let Err(a_sync) = self.sync(sync_request(&a, 2, &[(&a, b"pa"), (&b, b"pb")])) else {
            panic!("leader waits for the write")
        };
        assert!(self.sync_reply(b_sync).is_none());
        let records = self.persist_all(Ok(()));
        assert_eq!(records.len(), 1);
        let value = records[0].value.as_ref().unwrap();
        assert_eq!(value.generation, 2);
        assert_eq!(value.members.len(), 2);
        assert_eq!(self.sync_reply(b_sync).unwrap().assignment, b"pb");
        assert_eq!(self.sync_reply(a_sync).unwrap().assignment, b"pa");
        assert_eq!(self.state(), Some(GroupState::Stable));
        (a, b)
    }
}

#[test]
fn first_join_dance_single_member_reaches_stable() {
    let mut h = Harness::new();
    assert_eq!(h.state(), None);
    let id = h.stable_single();
    assert_eq!(h.heartbeat(&id, 1), Ok(()));
    let records = h.coordinator.metadata_log_position(GROUP);
    assert_eq!(records, Some(101));
    assert!(h.coordinator.has_members(GROUP));
    assert_eq!(h.coordinator.empty_since_ms(GROUP), None);
}

#[test]
fn a_second_member_rebalances_and_the_leader_gets_the_members() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    assert_eq!(h.heartbeat(&a, 2), Ok(()));
    assert_eq!(h.heartbeat(&b, 2), Ok(()));
    assert_eq!(h.heartbeat(&b, 1), Err(GroupError::IllegalGeneration));
}

#[test]
fn heartbeats_keep_a_member_alive_and_silence_expires_it() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    for _ in 0..2 {
        h.advance(4_000);
        assert_eq!(h.heartbeat(&a, 2), Ok(()));
    }
    assert_eq!(h.state(), Some(GroupState::Stable));
    // b never heartbeat: expired after its session; the group rebalances without it.
    h.advance(4_000);
    assert_eq!(h.heartbeat(&a, 2), Err(GroupError::RebalanceInProgress));
    assert_eq!(h.heartbeat(&b, 2), Err(GroupError::UnknownMemberId));
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    let Joined::Waiting(t) = h.join(join_request(&a, None, &["range"])) else {
        panic!()
    };
    let response = h.join_reply(t).unwrap();
    assert_eq!((response.generation_id, response.members.len()), (3, 1));
}

#[test]
fn session_expiry_of_the_last_member_empties_the_group() {
    let mut h = Harness::new();
    let id = h.stable_single();
    h.advance(SESSION_MS as u64 - 1);
    assert_eq!(h.state(), Some(GroupState::Stable));
    h.advance(1);
    assert_eq!(h.state(), Some(GroupState::Empty));
    assert_eq!(h.coordinator.generation(GROUP), Some(2));
    assert_eq!(h.heartbeat(&id, 2), Err(GroupError::UnknownMemberId));
    let records = h.persist_all(Ok(()));
    assert_eq!(records.len(), 1);
    let value = records[0].value.as_ref().unwrap();
    assert!(value.members.is_empty());
    assert_eq!(value.generation, 2);
    assert_eq!(h.coordinator.empty_since_ms(GROUP), Some(h.now_ms));
    assert!(!h.coordinator.has_members(GROUP));
}

#[test]
fn a_member_not_rejoining_within_the_rebalance_timeout_is_removed() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    // a rejoins (a leader's rejoin always rebalances); b keeps heartbeating but never
    // rejoins: max.poll.interval.ms semantics.
    let Joined::Waiting(a_ticket) = h.join(join_request(&a, None, &["range"])) else {
        panic!()
    };
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    for _ in 0..5 {
        h.advance(REBALANCE_MS as u64 / 6);
        assert_eq!(h.heartbeat(&b, 2), Err(GroupError::RebalanceInProgress));
    }
    assert!(h.join_reply(a_ticket).is_none());
    h.advance(REBALANCE_MS as u64 / 6);
    let response = h
        .join_reply(a_ticket)
        .expect("join completes at the rebalance timeout");
    assert_eq!(response.generation_id, 3);
    assert_eq!(response.members.len(), 1);
    assert_eq!(h.heartbeat(&b, 2), Err(GroupError::UnknownMemberId));
}

#[test]
fn a_member_that_never_syncs_is_removed_after_the_rebalance_timeout() {
    let mut h = Harness::new();
    let a = h.stable_single();
    let (b, Joined::Waiting(b_ticket)) = h.join_new(&["range"]) else {
        panic!()
    };
    let Joined::Waiting(a_ticket) = h.join(join_request(&a, None, &["range"])) else {
        panic!()
    };
    assert!(h.join_reply(a_ticket).is_some() && h.join_reply(b_ticket).is_some());
    let Err(a_sync) = h.sync(sync_request(&a, 2, &[(&a, b"x"), (&b, b"y")])) else {
        panic!()
    };
    h.persist_all(Ok(()));
    assert_eq!(h.sync_reply(a_sync).unwrap().assignment, b"x");
    assert_eq!(h.state(), Some(GroupState::Stable));
    // b heartbeats (so its session holds) but never sends SyncGroup.
    for _ in 0..5 {
        h.advance(REBALANCE_MS as u64 / 6);
        assert_eq!(h.heartbeat(&a, 2), Ok(()));
        assert_eq!(h.heartbeat(&b, 2), Ok(()));
    }
    h.advance(REBALANCE_MS as u64 / 6);
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    assert_eq!(h.heartbeat(&b, 2), Err(GroupError::UnknownMemberId));
}

#[test]
fn leader_leaving_mid_rebalance_hands_leadership_over() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    let Joined::Waiting(b_ticket) = h.join(join_request(&b, None, &["range", "other"])) else {
        panic!("a follower changing protocols rebalances")
    };
    let left = h.coordinator.leave(
        GROUP,
        vec![LeavingMember {
            member_id: a.clone(),
            group_instance_id: None,
        }],
        h.now_ms,
    );
    assert_eq!(left.members[0].1, None);
    h.collect();
    let response = h
        .join_reply(b_ticket)
        .expect("the only member left has joined");
    assert_eq!(response.leader, b);
    assert_eq!(response.generation_id, 3);
    assert_eq!(response.members.len(), 1);
    assert_eq!(h.state(), Some(GroupState::CompletingRebalance));
}

#[test]
fn leader_leaving_while_followers_wait_for_sync_restarts_the_rebalance() {
    let mut h = Harness::new();
    let a = h.stable_single();
    let (b, Joined::Waiting(b_ticket)) = h.join_new(&["range"]) else {
        panic!()
    };
    let Joined::Waiting(_) = h.join(join_request(&a, None, &["range"])) else {
        panic!()
    };
    assert!(h.join_reply(b_ticket).is_some());
    let Err(b_sync) = h.sync(sync_request(&b, 2, &[])) else {
        panic!()
    };
    let response = h.coordinator.leave(
        GROUP,
        vec![LeavingMember {
            member_id: a,
            group_instance_id: None,
        }],
        h.now_ms,
    );
    assert_eq!(response.error, None);
    h.collect();
    assert_eq!(
        h.sync_reply(b_sync).unwrap().error,
        Some(GroupError::RebalanceInProgress)
    );
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    assert_eq!(
        h.coordinator.validate_commit(
            GROUP,
            &CommitFence {
                generation_id: 2,
                member_id: b.clone(),
                group_instance_id: None
            }
        ),
        Ok(()),
        "Kafka accepts commits of the current generation during PreparingRebalance"
    );
}

#[test]
fn failed_group_metadata_write_fails_the_sync_and_rebalances() {
    let mut h = Harness::new();
    let (id, Joined::Waiting(ticket)) = h.join_new(&["range"]) else {
        panic!()
    };
    assert!(h.join_reply(ticket).is_some());
    let Err(sync) = h.sync(sync_request(&id, 1, &[(&id, b"a")])) else {
        panic!()
    };
    h.persist_all(Err(GroupError::NotCoordinator));
    assert_eq!(
        h.sync_reply(sync).unwrap().error,
        Some(GroupError::NotCoordinator)
    );
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
}

#[test]
fn static_member_rejoining_replaces_and_fences_the_old_id() {
    let mut h = Harness::new();
    let Joined::Waiting(ticket) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!("static members skip MEMBER_ID_REQUIRED")
    };
    let first = h.join_reply(ticket).unwrap();
    let old_id = first.member_id.clone();
    h.sync_alone(&old_id, 1, b"asg");
    // The same instance restarts and joins without its member id: no rebalance.
    let Joined::Now(replaced) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!("a static member replacing itself in Stable is answered at once")
    };
    assert_eq!(replaced.error, None);
    assert_ne!(replaced.member_id, old_id);
    assert_eq!(replaced.generation_id, 1);
    assert_eq!(replaced.leader, replaced.member_id);
    assert!(replaced.skip_assignment);
    assert_eq!(h.state(), Some(GroupState::Stable));
    assert_eq!(h.persist_all(Ok(())).len(), 1);
    let fenced = h
        .coordinator
        .heartbeat(GROUP, &old_id, Some("i-1"), 1, h.now_ms);
    assert_eq!(fenced, Err(GroupError::FencedInstanceId));
    assert_eq!(h.heartbeat(&old_id, 1), Err(GroupError::UnknownMemberId));
    let fine = h
        .coordinator
        .heartbeat(GROUP, &replaced.member_id, Some("i-1"), 1, h.now_ms);
    assert_eq!(fine, Ok(()));
    let synced = h.sync(SyncGroupRequest {
        group_instance_id: Some("i-1".into()),
        ..sync_request(&replaced.member_id, 1, &[])
    });
    assert_eq!(
        synced.unwrap().assignment,
        b"asg",
        "the assignment carries over"
    );
    let commit = CommitFence {
        generation_id: 1,
        member_id: old_id,
        group_instance_id: Some("i-1".into()),
    };
    assert_eq!(
        h.coordinator.validate_commit(GROUP, &commit),
        Err(GroupError::FencedInstanceId)
    );
}

#[test]
fn a_replaced_static_member_waiting_to_join_is_fenced() {
    let mut h = Harness::new();
    let Joined::Waiting(t1) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!()
    };
    let old_id = h.join_reply(t1).unwrap().member_id;
    let Joined::Waiting(t2) = h.join(join_request("", Some("i-2"), &["range"])) else {
        panic!()
    };
    let i2 = h.join_reply_later(t2, &old_id);
    // Both are in generation 2 (CompletingRebalance). i-1 rejoins with new protocols (it
    // awaits the join; i-2 does not), then its process restarts and joins again.
    let Joined::Waiting(old_wait) = h.join(join_request(&old_id, Some("i-1"), &["range", "x"]))
    else {
        panic!()
    };
    let Joined::Waiting(new_wait) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!()
    };
    assert_eq!(
        h.join_reply(old_wait).unwrap().error,
        Some(GroupError::FencedInstanceId)
    );
    assert!(h.join_reply(new_wait).is_none());
    let Joined::Waiting(t2) = h.join(JoinGroupRequest {
        ..join_request(&i2, Some("i-2"), &["range"])
    }) else {
        panic!()
    };
    let response = h.join_reply(new_wait).expect("everyone has joined");
    assert_eq!(response.generation_id, 3);
    assert_ne!(response.member_id, old_id);
    assert!(h.join_reply(t2).is_some());
}

#[test]
fn a_replaced_static_member_waiting_for_sync_is_fenced() {
    let mut h = Harness::new();
    let Joined::Waiting(t1) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!()
    };
    let old_id = h.join_reply(t1).unwrap().member_id;
    let mut sync = sync_request(&old_id, 1, &[(&old_id, b"a")]);
    sync.group_instance_id = Some("i-1".into());
    let Err(old_sync) = h.sync(sync) else {
        panic!()
    };
    let Joined::Waiting(new_wait) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!()
    };
    assert_eq!(
        h.sync_reply(old_sync).unwrap().error,
        Some(GroupError::FencedInstanceId)
    );
    assert_eq!(h.join_reply(new_wait).unwrap().generation_id, 2);
    // The late write of generation 1 changes nothing.
    h.persist_all(Ok(()));
    assert_eq!(h.state(), Some(GroupState::CompletingRebalance));
}

#[test]
fn initial_rebalance_delay_gathers_members_into_one_generation() {
    let mut h = Harness::with(GroupConfig {
        group_initial_rebalance_delay_ms: 3_000,
        ..config()
    });
    let (_, Joined::Waiting(t1)) = h.join_new(&["range"]) else {
        panic!()
    };
    h.advance(2_000);
    let (_, Joined::Waiting(t2)) = h.join_new(&["range"]) else {
        panic!()
    };
    h.advance(1_000);
    assert!(h.join_reply(t1).is_none(), "a new member extends the delay");
    h.advance(3_000);
    let r1 = h.join_reply(t1).unwrap();
    let r2 = h.join_reply(t2).unwrap();
    assert_eq!((r1.generation_id, r2.generation_id), (1, 1));
    assert_eq!(r1.members.len(), 2);
}

#[test]
fn protocol_selection_follows_the_members_votes() {
    let mut h = Harness::new();
    let (_, Joined::Waiting(t1)) = h.join_new(&["range", "sticky"]) else {
        panic!()
    };
    let first = h.join_reply(t1).unwrap();
    assert_eq!(first.protocol_name.as_deref(), Some("range"));
    let Joined::Now(refused) = h.join(join_request("", None, &["roundrobin"])) else {
        panic!()
    };
    assert_eq!(refused.error, Some(GroupError::InconsistentGroupProtocol));
    let mut other_type = join_request("", None, &["range"]);
    other_type.protocol_type = "connect".into();
    let Joined::Now(refused) = h.join(other_type) else {
        panic!()
    };
    assert_eq!(refused.error, Some(GroupError::InconsistentGroupProtocol));
    let (_, Joined::Waiting(t2)) = h.join_new(&["sticky", "range"]) else {
        panic!()
    };
    let (_, Joined::Waiting(t3)) = h.join_new(&["sticky"]) else {
        panic!()
    };
    let leader_id = first.member_id;
    let Joined::Waiting(t4) = h.join(join_request(&leader_id, None, &["range", "sticky"])) else {
        panic!()
    };
    for t in [t2, t3, t4] {
        let response = h.join_reply(t).unwrap();
        assert_eq!(response.protocol_name.as_deref(), Some("sticky"));
    }
}

#[test]
fn join_errors_carry_kafka_codes() {
    let mut h = Harness::with(GroupConfig {
        group_max_size: 1,
        ..config()
    });
    let mut bad_session = join_request("", None, &["range"]);
    bad_session.session_timeout_ms = 10;
    let Joined::Now(r) = h.join(bad_session) else {
        panic!()
    };
    assert_eq!(r.error, Some(GroupError::InvalidSessionTimeout));
    assert_eq!(r.error.unwrap().kafka_code(), 26);
    let Joined::Now(r) = h.join(join_request("nobody", None, &["range"])) else {
        panic!()
    };
    assert_eq!(r.error, Some(GroupError::UnknownMemberId));
    assert_eq!(h.state(), None, "no group is created for an unknown member");
    let mut no_group = join_request("", None, &["range"]);
    no_group.group_id = String::new();
    let Joined::Now(r) = h.join(no_group) else {
        panic!()
    };
    assert_eq!(r.error, Some(GroupError::InvalidGroupId));
    let Joined::Now(r) = h.join(join_request("", None, &[])) else {
        panic!()
    };
    assert_eq!(r.error, Some(GroupError::InconsistentGroupProtocol));
    let long = "x".repeat(MEMBER_ID_BYTES_MAX + 1);
    let Joined::Now(r) = h.join(join_request("", Some(&long), &["range"])) else {
        panic!()
    };
    assert_eq!(r.error, Some(GroupError::InvalidRequest));
    let (_, Joined::Waiting(_)) = h.join_new(&["range"]) else {
        panic!()
    };
    let Joined::Now(r) = h.join(join_request("", None, &["range"])) else {
        panic!()
    };
    assert_eq!(r.error, Some(GroupError::GroupMaxSizeReached));
    assert_eq!(r.error.unwrap().kafka_code(), 81);
}

#[test]
fn sync_errors_carry_kafka_codes() {
    let mut h = Harness::new();
    assert_eq!(
        h.sync(sync_request("x", 1, &[])).unwrap().error,
        Some(GroupError::UnknownMemberId)
    );
    let (a, b) = h.stable_pair();
    assert_eq!(
        h.sync(sync_request(&a, 1, &[])).unwrap().error,
        Some(GroupError::IllegalGeneration)
    );
    let mut wrong_protocol = sync_request(&a, 2, &[]);
    wrong_protocol.protocol_name = Some("sticky".into());
    assert_eq!(
        h.sync(wrong_protocol).unwrap().error,
        Some(GroupError::InconsistentGroupProtocol)
    );
    let Joined::Waiting(_) = h.join(join_request(&a, None, &["range"])) else {
        panic!()
    };
    assert_eq!(
        h.sync(sync_request(&b, 2, &[])).unwrap().error,
        Some(GroupError::RebalanceInProgress)
    );
    assert_eq!(GroupError::RebalanceInProgress.kafka_code(), 27);
    assert_eq!(GroupError::IllegalGeneration.kafka_code(), 22);
    assert_eq!(GroupError::InconsistentGroupProtocol.kafka_code(), 23);
    assert_eq!(GroupError::UnknownMemberId.kafka_code(), 25);
}

#[test]
fn pending_members_expire_and_can_leave() {
    let mut h = Harness::new();
    let Joined::Now(first) = h.join(join_request("", None, &["range"])) else {
        panic!()
    };
    assert_eq!(first.error.unwrap().kafka_code(), 79);
    h.advance(SESSION_MS as u64);
    let Joined::Now(late) = h.join(join_request(&first.member_id, None, &["range"])) else {
        panic!("the pending id expired with its session")
    };
    assert_eq!(late.error, Some(GroupError::UnknownMemberId));
    let Joined::Now(second) = h.join(join_request("", None, &["range"])) else {
        panic!()
    };
    let left = h.coordinator.leave(
        GROUP,
        vec![LeavingMember {
            member_id: second.member_id,
            group_instance_id: None,
        }],
        h.now_ms,
    );
    assert_eq!(left.members[0].1, None);
    assert_eq!(h.coordinator.counts().1, 0);
}

#[test]
fn leave_errors_carry_kafka_codes() {
    let mut h = Harness::new();
    assert_eq!(
        h.coordinator.leave(GROUP, Vec::new(), h.now_ms).error,
        Some(GroupError::UnknownMemberId)
    );
    let Joined::Waiting(t) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!()
    };
    let id = h.join_reply(t).unwrap().member_id;
    let response = h.coordinator.leave(
        GROUP,
        vec![
            LeavingMember {
                member_id: "stranger".into(),
                group_instance_id: None,
            },
            LeavingMember {
                member_id: "not-the-holder".into(),
                group_instance_id: Some("i-1".into()),
            },
            LeavingMember {
                member_id: String::new(),
                group_instance_id: Some("i-9".into()),
            },
            LeavingMember {
                member_id: id,
                group_instance_id: Some("i-1".into()),
            },
        ],
        h.now_ms,
    );
    let errors: Vec<_> = response.members.iter().map(|(_, e)| *e).collect();
    assert_eq!(
        errors,
        vec![
            Some(GroupError::UnknownMemberId),
            Some(GroupError::FencedInstanceId),
            Some(GroupError::UnknownMemberId),
            None
        ]
    );
    assert_eq!(h.state(), Some(GroupState::Empty));
    assert_eq!(h.coordinator.generation(GROUP), Some(2));
}

#[test]
fn commit_fencing_follows_kafka() {
    let mut h = Harness::new();
    let simple = CommitFence::simple();
    let fence = |generation_id: i32, member_id: &str| CommitFence {
        generation_id,
        member_id: member_id.into(),
        group_instance_id: None,
    };
    assert_eq!(h.coordinator.validate_commit(GROUP, &simple), Ok(()));
    assert_eq!(
        h.coordinator.validate_commit(GROUP, &fence(3, "m")),
        Err(GroupError::IllegalGeneration)
    );
    let (a, b) = h.stable_pair();
    assert_eq!(h.coordinator.validate_commit(GROUP, &fence(2, &a)), Ok(()));
    assert_eq!(
        h.coordinator.validate_commit(GROUP, &simple),
        Err(GroupError::UnknownMemberId),
        "a simple commit to a group with members"
    );
    assert_eq!(
        h.coordinator.validate_commit(GROUP, &fence(1, &b)),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        h.coordinator.validate_commit(GROUP, &fence(2, "ghost")),
        Err(GroupError::UnknownMemberId)
    );
    // CompletingRebalance: REBALANCE_IN_PROGRESS even for the new generation.
    let Joined::Waiting(ta) = h.join(join_request(&a, None, &["range"])) else {
        panic!()
    };
    let Joined::Waiting(tb) = h.join(join_request(&b, None, &["range"])) else {
        panic!()
    };
    assert!(h.join_reply(ta).is_some() && h.join_reply(tb).is_some());
    assert_eq!(h.state(), Some(GroupState::CompletingRebalance));
    assert_eq!(
        h.coordinator.validate_commit(GROUP, &fence(3, &a)),
        Err(GroupError::RebalanceInProgress)
    );
    // Everyone leaves: simple commits are accepted again.
    let leaving = [a, b].map(|member_id| LeavingMember {
        member_id,
        group_instance_id: None,
    });
    h.coordinator.leave(GROUP, leaving.to_vec(), h.now_ms);
    assert_eq!(h.state(), Some(GroupState::Empty));
    assert_eq!(h.coordinator.validate_commit(GROUP, &simple), Ok(()));
}

#[test]
fn heartbeat_errors_carry_kafka_codes() {
    let mut h = Harness::new();
    assert_eq!(h.heartbeat("x", 0), Err(GroupError::UnknownMemberId));
    let id = h.stable_single();
    assert_eq!(h.heartbeat("x", 1), Err(GroupError::UnknownMemberId));
    assert_eq!(h.heartbeat(&id, 7), Err(GroupError::IllegalGeneration));
    let unknown_instance = h
        .coordinator
        .heartbeat(GROUP, &id, Some("nope"), 1, h.now_ms);
    assert_eq!(unknown_instance, Err(GroupError::UnknownMemberId));
}

#[test]
fn restored_group_fences_stale_generations_and_expires_silent_members() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    let record = h.last_records.pop().unwrap();
    let mut restored = Harness::new();
    restored.now_ms = h.now_ms + 60_000;
    restored
        .coordinator
        .load(GROUP, 0, record.value, 42, restored.now_ms)
        .unwrap();
    assert_eq!(restored.state(), Some(GroupState::Stable));
    assert_eq!(restored.coordinator.generation(GROUP), Some(2));
    assert_eq!(restored.coordinator.metadata_log_position(GROUP), Some(42));
    let stale = CommitFence {
        generation_id: 1,
        member_id: b.clone(),
        group_instance_id: None,
    };
    assert_eq!(
        restored.coordinator.validate_commit(GROUP, &stale),
        Err(GroupError::IllegalGeneration)
    );
    let description = restored.coordinator.describe(GROUP).unwrap();
    assert_eq!(description.members[1].assignment_bytes, 2);
    // a heartbeats, b does not: b expires after its session and the group rebalances.
    restored.advance(SESSION_MS as u64 / 2);
    assert_eq!(restored.heartbeat(&a, 2), Ok(()));
    restored.advance(SESSION_MS as u64 / 2);
    assert_eq!(restored.heartbeat(&b, 2), Err(GroupError::UnknownMemberId));
    assert_eq!(restored.state(), Some(GroupState::PreparingRebalance));
    // A tombstone removes the group.
    restored
        .coordinator
        .load(GROUP, 0, None, 43, restored.now_ms)
        .unwrap();
    assert_eq!(restored.state(), None);
}

#[test]
fn describe_and_list_report_state_protocol_and_assignments() {
    let mut h = Harness::new();
    let (a, _) = h.stable_pair();
    let description = h.coordinator.describe(GROUP).unwrap();
    assert_eq!(description.state, GroupState::Stable);
    assert_eq!(description.protocol_type, "consumer");
    assert_eq!(description.protocol_name, "range");
    assert_eq!(description.generation_id, 2);
    assert_eq!(description.members.len(), 2);
    assert_eq!(description.members[0].member_id, a);
    assert_eq!(description.members[0].assignment_bytes, 2);
    assert_eq!(description.members[0].metadata_bytes, "sub-range".len());
    let mut listed = Vec::new();
    h.coordinator.list(&mut listed);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state.kafka_name(), "Stable");
    assert!(h.coordinator.describe("other").is_none());
}

#[test]
fn unloading_a_partition_answers_waiters_with_not_coordinator() {
    let mut h = Harness::new();
    let (_, Joined::Waiting(_)) = h.join_new(&["range"]) else {
        panic!()
    };
    let mut h2 = Harness::with(GroupConfig {
        group_initial_rebalance_delay_ms: 3_000,
        ..config()
    });
    let (_, Joined::Waiting(t)) = h2.join_new(&["range"]) else {
        panic!()
    };
    h2.coordinator.unload_partition(0);
    h2.collect();
    assert_eq!(
        h2.join_reply(t).unwrap().error,
        Some(GroupError::NotCoordinator)
    );
    assert_eq!(h2.state(), None);
    assert!(!h2.coordinator.has_timers());
}

#[test]
fn an_emptied_group_takes_the_next_members_protocol_type() {
    let mut h = Harness::new();
    let id = h.stable_single();
    h.coordinator.leave(
        GROUP,
        vec![LeavingMember {
            member_id: id,
            group_instance_id: None,
        }],
        h.now_ms,
    );
    assert_eq!(h.state(), Some(GroupState::Empty));
    let mut connect = join_request("", None, &["sessioned"]);
    connect.protocol_type = "connect".into();
    connect.require_known_member_id = false;
    let Joined::Waiting(t) = h.join(connect) else {
        panic!()
    };
    let response = h.join_reply(t).unwrap();
    assert_eq!(response.protocol_type.as_deref(), Some("connect"));
    assert_eq!(response.generation_id, 3);
}

#[test]
fn a_new_generation_does_not_wait_for_the_previous_generations_write() {
    let mut h = Harness::new();
    let (id, Joined::Waiting(t)) = h.join_new(&["range"]) else {
        panic!()
    };
    assert!(h.join_reply(t).is_some());
    // The leader's sync for generation 1 is being written when the leader rejoins.
    let Err(old_sync) = h.sync(sync_request(&id, 1, &[(&id, b"one")])) else {
        panic!()
    };
    let stale_write: Vec<PersistRecord> = h.coordinator.take_persists().collect();
    let Joined::Waiting(t) = h.join(join_request(&id, None, &["range", "more"])) else {
        panic!()
    };
    assert_eq!(
        h.sync_reply(old_sync).unwrap().error,
        Some(GroupError::RebalanceInProgress)
    );
    assert_eq!(h.join_reply(t).unwrap().generation_id, 2);
    let Err(new_sync) = h.sync(sync_request(&id, 2, &[(&id, b"two")])) else {
        panic!()
    };
    let pending: Vec<i32> = h
        .coordinator
        .take_persists()
        .map(|r| r.generation_id)
        .collect();
    assert_eq!(pending, vec![2], "generation 2 is written without waiting");
    // The old write lands late: it changes nothing; then generation 2's lands.
    h.coordinator
        .persisted(GROUP, stale_write[0].generation_id, Ok(7), h.now_ms);
    h.coordinator.persisted(GROUP, 2, Ok(8), h.now_ms);
    h.collect();
    assert_eq!(h.sync_reply(new_sync).unwrap().assignment, b"two");
    assert_eq!(h.coordinator.metadata_log_position(GROUP), Some(8));
}

#[test]
fn a_mass_expiry_is_spread_over_bounded_ticks_and_empties_the_group() {
    let mut coordinator = GroupCoordinator::new(config(), 1, 0);
    let count = EXPIRIES_PER_TICK_MAX + 904;
    let ids: Vec<String> = (0..count).map(|m| format!("m-{m}")).collect();
    let value = stored_group(&ids, 9);
    coordinator.load(GROUP, 0, Some(value), 5, 0).unwrap();
    assert_eq!(coordinator.counts(), (1, count));
    let expiry_ms = SESSION_MS as u64;
    assert!(
        coordinator.tick(expiry_ms),
        "more than one tick's worth is due"
    );
    assert_eq!(coordinator.counts().1, count - EXPIRIES_PER_TICK_MAX);
    assert_eq!(
        coordinator.state(GROUP),
        Some(GroupState::PreparingRebalance)
    );
    assert!(!coordinator.tick(expiry_ms));
    assert_eq!(coordinator.counts(), (1, 0));
    assert_eq!(coordinator.state(GROUP), Some(GroupState::Empty));
    assert_eq!(coordinator.generation(GROUP), Some(10));
    let written: Vec<PersistRecord> = coordinator.take_persists().collect();
    assert_eq!(written.len(), 1);
    assert!(written[0].value.as_ref().unwrap().members.is_empty());
}

#[test]
fn heartbeats_by_generated_ids_check_the_whole_id_and_the_group() {
    let mut h = Harness::new();
    let id = h.stable_single();
    // Same UUID (and so the same handle), another client-id prefix.
    let forged = format!("forged{}", &id[id.len() - 37..]);
    assert_eq!(h.heartbeat(&forged, 1), Err(GroupError::UnknownMemberId));
    let other_group = h.coordinator.heartbeat("elsewhere", &id, None, 1, h.now_ms);
    assert_eq!(other_group, Err(GroupError::UnknownMemberId));
    assert_eq!(h.heartbeat(&id, 1), Ok(()));
    // After the member leaves, its id (and handle) no longer heartbeat.
    h.coordinator.leave(
        GROUP,
        vec![LeavingMember {
            member_id: id.clone(),
            group_instance_id: None,
        }],
        h.now_ms,
    );
    assert_eq!(h.heartbeat(&id, 2), Err(GroupError::UnknownMemberId));
}

#[test]
fn restored_members_keep_the_fast_path_within_the_restore_bound() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    assert!(h.coordinator.takes_fast_path(GROUP, &a));
    let record = h.last_records.pop().unwrap();
    let mut restored = Harness::new();
    restored.coordinator.expect_restored_members(2);
    let value = record.value.clone();
    restored
        .coordinator
        .load(GROUP, 0, value, 1, restored.now_ms)
        .unwrap();
    assert!(restored.coordinator.takes_fast_path(GROUP, &a));
    assert!(restored.coordinator.takes_fast_path(GROUP, &b));
    assert_eq!(restored.heartbeat(&a, 2), Ok(()));
    assert_eq!(restored.heartbeat(&b, 2), Ok(()));
    // New members after the restore never collide with the restored handles.
    let (c, Joined::Waiting(_)) = restored.join_new(&["range"]) else {
        panic!()
    };
    assert!(restored.coordinator.takes_fast_path(GROUP, &c));
    assert_eq!(restored.coordinator.counts(), (1, 3));
    for id in [&a, &b, &c] {
        assert!(
            !restored.coordinator.indexed(GROUP, id),
            "the id finds {id}"
        );
    }

    // A handle beyond the expectation's bound is not taken: the member goes to its hashed
    // line when free (the fingerprint is seeded at random), else anywhere, found through
    // the fingerprint index; a record naming a huge handle does not grow the slab.
    let mut unexpected = Harness::new();
    let mut value = record.value.unwrap();
    let far = "c-00ffffff-0000-0000-0000-000000000000".to_owned();
    value.members[1].member_id = far.clone();
    unexpected.coordinator.expect_restored_members(2);
    unexpected
        .coordinator
        .load(GROUP, 0, Some(value), 1, 0)
        .unwrap();
    assert!(unexpected.coordinator.member_slots() <= 4);
    assert_ne!(
        unexpected.coordinator.indexed(GROUP, &far),
        unexpected.coordinator.at_hashed_handle(GROUP, &far)
    );
    assert!(unexpected.coordinator.takes_fast_path(GROUP, &far));
    assert_eq!(unexpected.heartbeat(&far, 2), Ok(()));
}

/// A join request with a rebalance timeout longer than the new-member join timeout, so a
/// join phase can outlast it.
fn long_join_request(member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest {
        rebalance_timeout_ms: 2 * NEW_MEMBER_JOIN_TIMEOUT_MS as i32,
        ..join_request(member_id, None, &["range"])
    }
}

/// One member Stable alone at generation 1, with a 10-minute rebalance timeout.
fn stable_long(h: &mut Harness) -> String {
    let Joined::Now(first) = h.join(long_join_request("")) else {
        panic!()
    };
    let a = first.member_id;
    let Joined::Waiting(t) = h.join(long_join_request(&a)) else {
        panic!()
    };
    assert_eq!(h.join_reply(t).unwrap().generation_id, 1);
    h.sync_alone(&a, 1, b"a1");
    a
}

#[test]
fn a_new_members_join_times_out_while_the_rebalance_waits() {
    let mut h = Harness::new();
    let a = stable_long(&mut h);
    // b joins for the first time: its JoinGroup waits for a, which keeps heartbeating but
    // does not rejoin for 6 minutes (a slow poll loop within max.poll.interval.ms).
    let Joined::Now(first) = h.join(long_join_request("")) else {
        panic!()
    };
    let b = first.member_id;
    let Joined::Waiting(b_ticket) = h.join(long_join_request(&b)) else {
        panic!()
    };
    let step_ms = 4_000;
    let join_timeout_ms = u64::from(NEW_MEMBER_JOIN_TIMEOUT_MS);
    while h.now_ms + step_ms < 1_000 + join_timeout_ms {
        h.advance(step_ms);
        assert_eq!(h.heartbeat(&a, 1), Err(GroupError::RebalanceInProgress));
    }
    assert!(
        h.join_reply(b_ticket).is_none(),
        "b waits within the timeout"
    );
    h.advance(step_ms);
    // Past the new-member join timeout: b is removed and told so, with no member id (a
    // client still there joins afresh), as Kafka answers.
    let expired = h.join_reply(b_ticket).expect("b's join timed out");
    assert_eq!(expired.error, Some(GroupError::UnknownMemberId));
    assert_eq!(expired.member_id, "");
    assert_eq!(h.heartbeat(&b, 1), Err(GroupError::UnknownMemberId));
    assert_eq!(h.coordinator.counts(), (1, 1));
    // a rejoins at 6 minutes: the generation completes with a alone.
    for _ in 0..14 {
        h.advance(step_ms);
        assert_eq!(h.heartbeat(&a, 1), Err(GroupError::RebalanceInProgress));
    }
    let Joined::Waiting(a_ticket) = h.join(long_join_request(&a)) else {
        panic!()
    };
    let joined = h.join_reply(a_ticket).expect("all members joined");
    assert_eq!((joined.generation_id, joined.members.len()), (2, 1));
}

#[test]
fn a_new_member_answered_a_generation_lives_by_its_session() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    // b was new until generation 2 answered it; from then on its session counts, not the
    // join timeout: silent, it expires after one session timeout.
    h.advance(SESSION_MS as u64 - 1_000);
    assert_eq!(h.heartbeat(&a, 2), Ok(()));
    h.advance(1_000);
    assert_eq!(h.heartbeat(&b, 2), Err(GroupError::UnknownMemberId));
    // An existing member waiting in JoinGroup is kept alive past the new-member timeout
    // (only the rebalance timeout ends its wait).
    let mut h = Harness::new();
    let a = stable_long(&mut h);
    let (c, Joined::Waiting(c_ticket)) = h.join_new(&["range"]) else {
        panic!()
    };
    let Joined::Waiting(a_ticket) = h.join(long_join_request(&a)) else {
        panic!()
    };
    assert_eq!(h.join_reply(a_ticket).unwrap().members.len(), 2);
    assert_eq!(h.join_reply(c_ticket).unwrap().member_id, c);
    let Err(c_sync) = h.sync(sync_request(&c, 2, &[])) else {
        panic!()
    };
    let Err(a_sync) = h.sync(sync_request(&a, 2, &[(&a, b"a"), (&c, b"c")])) else {
        panic!()
    };
    h.persist_all(Ok(()));
    assert!(h.sync_reply(a_sync).is_some() && h.sync_reply(c_sync).is_some());
    let Joined::Waiting(a_again) = h.join(long_join_request(&a)) else {
        panic!("the leader's rejoin starts a rebalance")
    };
    // c heartbeats (and is told to rejoin) but does not rejoin for over 5 minutes.
    while h.now_ms < 1_000 + u64::from(NEW_MEMBER_JOIN_TIMEOUT_MS) + 4_000 {
        h.advance(4_000);
        assert_eq!(h.heartbeat(&c, 2), Err(GroupError::RebalanceInProgress));
    }
    assert!(
        h.join_reply(a_again).is_none(),
        "a is not new: it keeps waiting"
    );
    assert_eq!(h.coordinator.counts().1, 2);
}

#[test]
fn a_duplicate_join_replaces_the_waiting_one() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    let Joined::Waiting(first) = h.join(join_request(&a, None, &["range"])) else {
        panic!()
    };
    // The client gave up on its first JoinGroup and sent it again.
    let Joined::Waiting(second) = h.join(join_request(&a, None, &["range"])) else {
        panic!()
    };
    let replaced = h
        .join_reply(first)
        .expect("the replaced join is answered at once");
    assert_eq!(replaced.error, Some(GroupError::RebalanceInProgress));
    assert_eq!(
        (replaced.member_id.as_str(), replaced.generation_id),
        (a.as_str(), -1)
    );
    // a is counted once: the generation still waits for b.
    assert!(h.join_reply(second).is_none());
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    let Joined::Waiting(b_ticket) = h.join(join_request(&b, None, &["range"])) else {
        panic!()
    };
    let leader = h
        .join_reply(second)
        .expect("the replacement gets the generation");
    assert_eq!((leader.generation_id, leader.members.len()), (3, 2));
    assert_eq!(h.join_reply(b_ticket).unwrap().generation_id, 3);

    // A new member's duplicate keeps the join deadline of its first join (Kafka's
    // `updateMember` leaves the heartbeat deadline alone).
    let mut h = Harness::new();
    let a = stable_long(&mut h);
    let Joined::Now(first) = h.join(long_join_request("")) else {
        panic!()
    };
    let c = first.member_id;
    let Joined::Waiting(c1) = h.join(long_join_request(&c)) else {
        panic!()
    };
    let half_ms = u64::from(NEW_MEMBER_JOIN_TIMEOUT_MS) / 2;
    while h.now_ms < 1_000 + half_ms {
        h.advance(4_000);
        assert_eq!(h.heartbeat(&a, 1), Err(GroupError::RebalanceInProgress));
    }
    let Joined::Waiting(c2) = h.join(long_join_request(&c)) else {
        panic!()
    };
    assert_eq!(
        h.join_reply(c1).unwrap().error,
        Some(GroupError::RebalanceInProgress)
    );
    while h.now_ms < 1_000 + 2 * half_ms {
        assert!(h.join_reply(c2).is_none());
        h.advance(4_000);
        assert_eq!(h.heartbeat(&a, 1), Err(GroupError::RebalanceInProgress));
    }
    let expired = h.join_reply(c2).expect("the first join's deadline holds");
    assert_eq!(expired.error, Some(GroupError::UnknownMemberId));
}

#[test]
fn foreign_ids_heartbeat_through_the_fingerprint_index() {
    let mut h = Harness::new();
    let ids = [
        "kafka-consumer-1-5f1c2a9e-6f0b-4d5e-9a3c-1b2d3e4f5a6b",
        // Looks generated, and names the handle "short" gets: the index still finds it.
        "kafka-consumer-2-00000002-6f0b-4d5e-9a3c-1b2d3e4f5a6c",
        "short",
    ];
    let value = stored_group(&ids, 4);
    h.coordinator
        .load(GROUP, 0, Some(value), 1, h.now_ms)
        .unwrap();
    for id in ids {
        assert!(h.coordinator.indexed(GROUP, id), "{id}");
        assert!(h.coordinator.takes_fast_path(GROUP, id), "{id}");
        assert_eq!(h.heartbeat(id, 4), Ok(()));
        assert_eq!(h.heartbeat(id, 3), Err(GroupError::IllegalGeneration));
    }
    // Another id, or the right id in another group, is not found.
    assert_eq!(
        h.heartbeat("kafka-consumer-1", 4),
        Err(GroupError::UnknownMemberId)
    );
    let elsewhere = h.coordinator.heartbeat("other", ids[0], None, 4, h.now_ms);
    assert_eq!(elsewhere, Err(GroupError::UnknownMemberId));
    // A member that leaves is dropped from the index; the others stay.
    h.coordinator.leave(
        GROUP,
        vec![LeavingMember {
            member_id: ids[1].into(),
            group_instance_id: None,
        }],
        h.now_ms,
    );
    assert!(!h.coordinator.indexed(GROUP, ids[1]));
    assert_eq!(h.heartbeat(ids[1], 4), Err(GroupError::UnknownMemberId));
    assert!(h.coordinator.indexed(GROUP, ids[0]));
    // Expired members too: the group rebalances; only a rejoins, b and "short" expire.
    let Joined::Waiting(t) = h.join(join_request(ids[0], None, &["range"])) else {
        panic!()
    };
    h.advance(REBALANCE_MS as u64);
    // (In that tick "short" expired first and completed the join, which re-armed a's
    // session: a, due in the same tick, is not expired.)
    assert_eq!(h.join_reply(t).unwrap().members.len(), 1);
    assert!(!h.coordinator.indexed(GROUP, ids[2]));
    assert!(h.coordinator.indexed(GROUP, ids[0]));
    assert_eq!(h.heartbeat(ids[0], 5), Ok(()));
}

#[test]
fn restored_foreign_ids_are_placed_by_fingerprint() {
    let mut h = Harness::new();
    let count = 1000;
    let ids: Vec<String> = (0..count)
        .map(|m| format!("consumer-{m}-5f1c2a9e-6f0b-4d5e-9a3c-1b2d3e4f5a6b"))
        .collect();
    let value = stored_group(&ids, 4);
    h.coordinator.expect_restored_members(count);
    h.coordinator
        .load(GROUP, 0, Some(value), 1, h.now_ms)
        .unwrap();
    // 1000 fingerprints into 2000 handles, two to a wheel line: about 7 in 8 find a free
    // handle in their line (4 in 5 found their own handle free before the line neighbour
    // was a candidate).
    let hashed = ids
        .iter()
        .filter(|id| h.coordinator.at_hashed_handle(GROUP, id))
        .count();
    assert!(
        hashed > count * 8 / 10,
        "{hashed} of {count} at their hashed handle"
    );
    assert!(h.coordinator.member_slots() <= 2 * count);
    for id in &ids {
        assert!(h.coordinator.takes_fast_path(GROUP, id), "{id}");
        assert_eq!(
            h.coordinator.indexed(GROUP, id),
            !h.coordinator.at_hashed_handle(GROUP, id),
            "the index holds the foreign ids not at their hashed handle: {id}"
        );
        assert_eq!(h.heartbeat(id, 4), Ok(()));
    }
    // A member joining now gets a generated id that encodes its (free) handle.
    let (joined, _) = h.join_new(&["range"]);
    assert!(h.coordinator.takes_fast_path(GROUP, &joined));
    assert!(!h.coordinator.indexed(GROUP, &joined));
}

#[test]
fn an_expiry_that_completes_the_join_spares_the_members_it_answered() {
    let mut h = Harness::new();
    let value = stored_group(&["m-a", "m-s"], 4);
    h.coordinator
        .load(GROUP, 0, Some(value), 1, h.now_ms)
        .unwrap();
    // The leader rejoins; "m-s" stays silent. Both sessions fall due in one tick: "m-s"
    // expires, which completes the join and answers (and re-arms) "m-a", due in the same
    // tick but no longer expired.
    let Joined::Waiting(t) = h.join(join_request("m-a", None, &["range"])) else {
        panic!()
    };
    h.advance(SESSION_MS as u64);
    let joined = h.join_reply(t).expect("the join completed");
    assert_eq!((joined.generation_id, joined.members.len()), (5, 1));
    assert_eq!(h.coordinator.counts().1, 1, "m-a is still a member");
    assert_eq!(h.state(), Some(GroupState::CompletingRebalance));
    let Err(sync) = h.sync(sync_request("m-a", 5, &[("m-a", b"all")])) else {
        panic!()
    };
    h.persist_all(Ok(()));
    assert_eq!(h.sync_reply(sync).unwrap().assignment, b"all");
}

/// The static member "i-1" Stable alone at generation 1: returns its member id.
fn stable_static(h: &mut Harness) -> String {
    let Joined::Waiting(t) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!()
    };
    let s = h.join_reply(t).unwrap().member_id;
    h.sync_alone(&s, 1, b"s1");
    s
}

#[test]
fn a_static_member_not_rejoining_stays_in_the_next_generation() {
    let mut h = Harness::new();
    // s (static, the leader) and d (dynamic), Stable at generation 2.
    let s = stable_static(&mut h);
    let (d, Joined::Waiting(d_ticket)) = h.join_new(&["range"]) else {
        panic!()
    };
    let Joined::Waiting(s_ticket) = h.join(join_request(&s, Some("i-1"), &["range"])) else {
        panic!()
    };
    assert_eq!(h.join_reply(s_ticket).unwrap().generation_id, 2);
    assert_eq!(h.join_reply(d_ticket).unwrap().generation_id, 2);
    let mut s_sync = sync_request(&s, 2, &[(&s, b"s2"), (&d, b"d2")]);
    s_sync.group_instance_id = Some("i-1".into());
    let (Err(a), Err(b)) = (h.sync(s_sync), h.sync(sync_request(&d, 2, &[]))) else {
        panic!()
    };
    h.persist_all(Ok(()));
    assert!(h.sync_reply(a).is_some() && h.sync_reply(b).is_some());
    // d changes its subscription: a rebalance. s keeps heartbeating but does not rejoin.
    let Joined::Waiting(d_ticket) = h.join(join_request(&d, None, &["range", "sticky"])) else {
        panic!()
    };
    for _ in 1..(REBALANCE_MS / 5_000) {
        h.advance(5_000);
        let beat = h.coordinator.heartbeat(GROUP, &s, Some("i-1"), 2, h.now_ms);
        assert_eq!(beat, Err(GroupError::RebalanceInProgress));
    }
    // At the rebalance timeout the generation completes with d as leader and s still in it.
    h.advance(5_000);
    let joined = h.join_reply(d_ticket).expect("the join phase ended");
    assert_eq!(joined.generation_id, 3);
    assert_eq!(joined.leader, d);
    let listed: Vec<&str> = joined
        .members
        .iter()
        .map(|m| m.member_id.as_str())
        .collect();
    assert_eq!(listed, vec![s.as_str(), d.as_str()]);
    assert_eq!(h.coordinator.counts().1, 2);
    let beat = h.coordinator.heartbeat(GROUP, &s, Some("i-1"), 2, h.now_ms);
    assert_eq!(
        beat,
        Err(GroupError::IllegalGeneration),
        "s learns it must rejoin"
    );
}

#[test]
fn a_join_phase_with_only_absent_static_members_waits_another_timeout() {
    let mut h = Harness::new();
    let s = stable_static(&mut h);
    // A dynamic member joins and leaves again before the join phase ends: only s, absent,
    // is left when the rebalance timeout fires.
    let (d, Joined::Waiting(d_ticket)) = h.join_new(&["range"]) else {
        panic!()
    };
    h.coordinator.leave(
        GROUP,
        vec![LeavingMember {
            member_id: d,
            group_instance_id: None,
        }],
        h.now_ms,
    );
    h.collect();
    assert_eq!(
        h.join_reply(d_ticket).unwrap().error,
        Some(GroupError::UnknownMemberId)
    );
    for _ in 0..(REBALANCE_MS / 5_000) {
        h.advance(5_000);
        let beat = h.coordinator.heartbeat(GROUP, &s, Some("i-1"), 1, h.now_ms);
        assert_eq!(beat, Err(GroupError::RebalanceInProgress));
    }
    assert_eq!(
        h.state(),
        Some(GroupState::PreparingRebalance),
        "no generation without s"
    );
    assert_eq!(h.coordinator.generation(GROUP), Some(1));
    // s rejoins: the generation completes with it.
    let Joined::Waiting(t) = h.join(join_request(&s, Some("i-1"), &["range"])) else {
        panic!()
    };
    let joined = h.join_reply(t).unwrap();
    assert_eq!(
        (joined.generation_id, joined.leader.as_str()),
        (2, s.as_str())
    );
}

// ---------------------------------------------------------------------------------------
// The session board.

#[test]
fn board_heartbeats_keep_a_session_alive_and_the_coordinator_sees_them() {
    let mut h = Harness::new();
    let (a, b) = h.stable_pair();
    let board = h.coordinator.session_board();
    for _ in 0..2 {
        h.advance(4_000);
        // Answered on the board alone: the coordinator never sees these heartbeats.
        assert_eq!(board.heartbeat(GROUP, &a, None, 2, h.now_ms), Some(Ok(())));
    }
    // 12 s on, past both members' first session deadline: a is alive; b, silent, expired.
    h.advance(4_000);
    assert_eq!(h.heartbeat(&b, 2), Err(GroupError::UnknownMemberId));
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    assert_eq!(
        board.heartbeat(GROUP, &a, None, 2, h.now_ms),
        Some(Err(GroupError::RebalanceInProgress))
    );
    // Another generation is the coordinator's to answer.
    assert_eq!(board.heartbeat(GROUP, &a, None, 1, h.now_ms), None);
    assert_eq!(h.heartbeat(&a, 1), Err(GroupError::IllegalGeneration));
    // Silence from the last board beat on ends a's session too, exactly one session later.
    let last_beat_ms = h.now_ms;
    h.advance(SESSION_MS as u64 - 1);
    assert_eq!(h.coordinator.describe(GROUP).unwrap().members.len(), 1);
    h.advance(1);
    assert_eq!(h.now_ms, last_beat_ms + SESSION_MS as u64);
    assert_eq!(h.state(), Some(GroupState::Empty));
    assert_eq!(board.heartbeat(GROUP, &a, None, 2, h.now_ms), None);
}

#[test]
fn the_board_answers_only_members_past_their_join_and_forgets_replaced_ids() {
    let mut h = Harness::new();
    let board = h.coordinator.session_board();
    let (id, joined) = h.join_new(&["range"]);
    assert!(matches!(joined, Joined::Waiting(_)));
    h.collect();
    // Generation 1 answered: published from now on.
    assert_eq!(board.heartbeat(GROUP, &id, None, 1, h.now_ms), Some(Ok(())));
    // A pending member (MEMBER_ID_REQUIRED) is not.
    let Joined::Now(first) = h.join(join_request("", None, &["range"])) else {
        panic!()
    };
    assert_eq!(
        board.heartbeat(GROUP, &first.member_id, None, 1, h.now_ms),
        None
    );
    // A static member replaced by a rejoin with a new id: the old id is withdrawn.
    let mut h = Harness::new();
    let board = h.coordinator.session_board();
    let Joined::Waiting(t) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!()
    };
    let old = h.join_reply(t).unwrap().member_id;
    assert_eq!(h.sync_alone(&old, 1, b"x").error, None);
    assert_eq!(
        board.heartbeat(GROUP, &old, None, 1, h.now_ms),
        Some(Ok(()))
    );
    let Joined::Now(replaced) = h.join(join_request("", Some("i-1"), &["range"])) else {
        panic!("an unchanged static rejoin of a Stable group answers at once")
    };
    assert_eq!(board.heartbeat(GROUP, &old, None, 1, h.now_ms), None);
    assert_eq!(h.heartbeat(&old, 1), Err(GroupError::UnknownMemberId));
    assert_eq!(
        board.heartbeat(GROUP, &replaced.member_id, None, 1, h.now_ms),
        Some(Ok(()))
    );
}

/// A tiny deterministic generator for the differential test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One step of the differential test, applied to both harnesses alike.
fn random_step(h: &mut Harness, rng: &mut Rng, ids: &mut Vec<String>) -> String {
    let generation = h.coordinator.generation(GROUP).unwrap_or(0);
    let pick = |rng: &mut Rng, ids: &[String]| -> String {
        if ids.is_empty() {
            "nobody-00000000-0000-0000-0000-000000000000".into()
        } else {
            ids[rng.below(ids.len() as u64) as usize].clone()
        }
    };
    match rng.below(10) {
        0 if ids.len() < 4 => {
            let (id, joined) = h.join_new(&["range"]);
            ids.push(id);
            format!("{joined:?}")
        }
        1 => {
            let id = pick(rng, ids);
            format!(
                "rejoin {id}: {:?}",
                h.join(join_request(&id, None, &["range"]))
            )
        }
        2 => {
            let id = pick(rng, ids);
            let assignments: Vec<(&str, &[u8])> =
                ids.iter().map(|i| (i.as_str(), &b"part"[..])).collect();
            format!(
                "sync {id}: {:?}",
                h.sync(sync_request(&id, generation, &assignments))
            )
        }
        3 => {
            let id = pick(rng, ids);
            let members = vec![LeavingMember {
                member_id: id,
                group_instance_id: None,
            }];
            let response = h.coordinator.leave(GROUP, members, h.now_ms);
            h.collect();
            format!("{response:?}")
        }
        4 => format!("{:?}", h.persist_all(Ok(()))),
        5 | 6 => {
            let ms = [1, 700, 3_000, 6_000, 11_000][rng.below(5) as usize];
            h.advance_finely(ms);
            format!("advanced {ms}")
        }
        _ => {
            let id = pick(rng, ids);
            let stale = rng.below(5) == 0;
            let beat = h.heartbeat(&id, generation - i32::from(stale));
            format!("beat {id} stale {stale}: {beat:?}")
        }
    }
}

/// Random joins, syncs, leaves, writes, heartbeats and clock jumps, applied alike to a
/// coordinator whose heartbeats go through the session board and to one that answers all of
/// them itself: every answer, reply and description is the same.
#[test]
fn board_heartbeats_are_indistinguishable_from_the_coordinators() {
    let mut board_answers = 0;
    for seed in 1..=300u64 {
        let mut with_board = Harness::new();
        let mut without = Harness::new();
        without.via_board = false;
        let (mut rng_a, mut rng_b) = (Rng(seed * 0x9e37_79b9), Rng(seed * 0x9e37_79b9));
        let (mut ids_a, mut ids_b) = (Vec::new(), Vec::new());
        for step in 0..120 {
            // Each step at a millisecond of its own (as requests arrive): no two deadlines
            // are set at once except by one join's completion, alike in both.
            let a = random_step(&mut with_board, &mut rng_a, &mut ids_a);
            let b = random_step(&mut without, &mut rng_b, &mut ids_b);
            with_board.advance_finely(1);
            without.advance_finely(1);
            assert_eq!(a, b, "seed {seed} step {step}");
            assert_eq!(
                format!("{:?}", with_board.coordinator.describe(GROUP)),
                format!("{:?}", without.coordinator.describe(GROUP)),
                "seed {seed} step {step}"
            );
            let mut replies_a: Vec<_> = with_board
                .replies
                .iter()
                .map(|r| format!("{r:?}"))
                .collect();
            let mut replies_b: Vec<_> = without.replies.iter().map(|r| format!("{r:?}")).collect();
            replies_a.sort();
            replies_b.sort();
            assert_eq!(replies_a, replies_b, "seed {seed} step {step}");
        }
        board_answers += with_board.board_answers;
    }
    // Most heartbeats of live members were the board's (the rest: stale generations,
    // unknown and pending members).
    assert!(
        board_answers > 1_000,
        "{board_answers} heartbeats answered by the board"
    );
}

/// A one-member group `group_id`, Stable at generation 1: returns the member id.
fn stable_group_of_one(h: &mut Harness, group_id: &str) -> String {
    let mut request = join_request("", None, &["range"]);
    request.group_id = group_id.into();
    request.require_known_member_id = false;
    let ticket = h.next_ticket;
    h.next_ticket += 1;
    assert!(h.coordinator.join(request, 0, ticket, h.now_ms).is_none());
    h.collect();
    let member = h
        .join_reply(ticket)
        .expect("a lone join completes at once")
        .member_id;
    let mut sync = sync_request(&member, 1, &[(&member, b"a")]);
    sync.group_id = group_id.into();
    let ticket = h.next_ticket;
    h.next_ticket += 1;
    assert!(h.coordinator.sync(sync, ticket, h.now_ms).is_none());
    h.persist_all(Ok(()));
    assert_eq!(h.sync_reply(ticket).unwrap().error, None);
    member
}

/// Sessions the board renewed come due together (their members were published at once);
/// moving them takes no share of the expiry budget, so one tick still expires the silent
/// member due with them and leaves nothing due behind.
#[test]
fn sessions_renewed_on_the_board_do_not_hold_back_real_expiries() {
    let mut h = Harness::new();
    let board = h.coordinator.session_board();
    let beating = EXPIRIES_PER_TICK_MAX + 1_000;
    let members: Vec<(String, String)> = (0..beating)
        .map(|i| {
            let group = format!("beating-{i}");
            let member = stable_group_of_one(&mut h, &group);
            (group, member)
        })
        .collect();
    let silent = stable_group_of_one(&mut h, "silent");
    h.now_ms += 5_000;
    for (group, member) in &members {
        assert_eq!(
            board.heartbeat(group, member, None, 1, h.now_ms),
            Some(Ok(()))
        );
    }
    h.now_ms += SESSION_MS as u64 - 5_000;
    assert!(
        !h.coordinator.tick(h.now_ms),
        "nothing left due after one tick"
    );
    h.collect();
    assert_eq!(h.coordinator.state("silent"), Some(GroupState::Empty));
    assert_eq!(
        h.coordinator
            .heartbeat("silent", &silent, None, 1, h.now_ms),
        Err(GroupError::UnknownMemberId)
    );
    for (group, _) in &members {
        assert_eq!(h.coordinator.state(group), Some(GroupState::Stable));
    }
}

/// A board whose coordinator is gone (closed, or its shard thread unwound) answers nothing.
#[test]
fn the_board_answers_nothing_once_its_coordinator_is_gone() {
    let mut h = Harness::new();
    let id = h.stable_single();
    let board = h.coordinator.session_board();
    assert_eq!(board.heartbeat(GROUP, &id, None, 1, h.now_ms), Some(Ok(())));
    drop(h);
    assert_eq!(board.heartbeat(GROUP, &id, None, 1, 2_000), None);
}
