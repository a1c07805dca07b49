//! Consumer groups through the engine: join, sync, heartbeat and leave over the shard,
//! generation-fenced commits, session expiry on the real clock, group metadata restored after
//! a restart and after a partition move.

use std::time::Duration;

use coffer::group::{
    CommitFence, GroupError, GroupState, JoinGroupRequest, JoinGroupResponse, LeavingMember,
    SyncGroupRequest,
};
use coffer::storage::SimDisk;
use coffer::{Config, Engine, Error, OffsetCommit, OffsetLookup, OffsetReset};
use coffer_tests::{commit_one, fetch_one, open_sim};

const GROUP: &str = "payments";
const TOPIC: &str = "orders";

fn config(shards: usize) -> Config {
    coffer_tests::group_test_config(shards)
}

fn join_request(member_id: &str, session_timeout_ms: i32) -> JoinGroupRequest {
    coffer_tests::join_request(GROUP, member_id, session_timeout_ms, true)
}

/// The v4+ dance: MEMBER_ID_REQUIRED, then the join with the id; one member, generation 1.
fn join_alone(engine: &Engine, session_timeout_ms: i32) -> JoinGroupResponse {
    let first = engine
        .join_group(join_request("", session_timeout_ms))
        .wait();
    assert_eq!(first.error, Some(GroupError::MemberIdRequired));
    let joined = engine
        .join_group(join_request(&first.member_id, session_timeout_ms))
        .wait();
    assert_eq!(joined.error, None);
    joined
}

fn sync(engine: &Engine, member_id: &str, generation_id: i32, assignment: &[u8]) -> Vec<u8> {
    let response = engine
        .sync_group(SyncGroupRequest {
            group_id: GROUP.into(),
            member_id: member_id.into(),
            group_instance_id: None,
            generation_id,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments: vec![(member_id.into(), assignment.to_vec())],
        })
        .wait();
    assert_eq!(response.error, None);
    response.assignment
}

fn fenced_commit(engine: &Engine, fence: &CommitFence, offset: i64) -> coffer::Result<()> {
    let commit = OffsetCommit {
        topic: TOPIC,
        partition: 0,
        offset,
        leader_epoch: None,
        metadata: "",
    };
    engine.commit_offsets_fenced(GROUP, fence, &[commit]).wait()
}

fn fence(generation_id: i32, member_id: &str) -> CommitFence {
    CommitFence {
        generation_id,
        member_id: member_id.into(),
        group_instance_id: None,
    }
}

#[test]
fn a_member_joins_syncs_heartbeats_commits_and_leaves() {
    let disk = SimDisk::new(61);
    let engine = open_sim(&disk, &config(2)).unwrap();
    let joined = join_alone(&engine, 30_000);
    assert_eq!(
        (joined.generation_id, joined.leader.as_str()),
        (1, joined.member_id.as_str())
    );
    assert_eq!(joined.members.len(), 1);
    let id = joined.member_id;
    assert_eq!(sync(&engine, &id, 1, b"orders-0"), b"orders-0");
    assert_eq!(engine.heartbeat(GROUP, &id, None, 1).wait(), Ok(()));
    assert_eq!(
        engine.heartbeat(GROUP, &id, None, 0).wait(),
        Err(GroupError::IllegalGeneration)
    );
    fenced_commit(&engine, &fence(1, &id), 10).unwrap();
    assert_eq!(fetch_one(&engine, GROUP, TOPIC, 0).unwrap(), Some(10));
    let stale = fenced_commit(&engine, &fence(0, &id), 11);
    assert!(matches!(
        stale,
        Err(Error::Group(GroupError::IllegalGeneration))
    ));
    assert_eq!(stale.unwrap_err().kafka_error_code(), Some(22));
    let simple = commit_one(&engine, GROUP, TOPIC, 0, 12);
    assert!(matches!(
        simple,
        Err(Error::Group(GroupError::UnknownMemberId))
    ));
    assert_eq!(fetch_one(&engine, GROUP, TOPIC, 0).unwrap(), Some(10));

    let described = engine.describe_groups(&[GROUP, "nobody"]).unwrap();
    assert_eq!(described[0].state, GroupState::Stable);
    assert_eq!(described[0].protocol_name, "range");
    assert_eq!(described[0].members[0].assignment_bytes, 8);
    assert_eq!(described[1].state, GroupState::Dead);

    let left = engine
        .leave_group(
            GROUP,
            vec![LeavingMember {
                member_id: id,
                group_instance_id: None,
            }],
        )
        .wait();
    assert_eq!(left.members[0].1, None);
    assert_eq!(
        engine.describe_groups(&[GROUP]).unwrap()[0].state,
        GroupState::Empty
    );
    // An empty group takes simple commits again.
    commit_one(&engine, GROUP, TOPIC, 0, 13).unwrap();
    commit_one(&engine, "offsets-only", TOPIC, 0, 1).unwrap();
    let listed = engine.list_groups().unwrap();
    let names: Vec<(&str, GroupState)> = listed
        .iter()
        .map(|g| (g.group_id.as_str(), g.state))
        .collect();
    assert_eq!(
        names,
        vec![
            ("offsets-only", GroupState::Empty),
            (GROUP, GroupState::Empty)
        ]
    );
    engine.close().unwrap();
}

#[test]
fn a_silent_member_expires_on_the_shard_clock() {
    let disk = SimDisk::new(62);
    let engine = open_sim(&disk, &config(1)).unwrap();
    let joined = join_alone(&engine, 50);
    sync(&engine, &joined.member_id, 1, b"a");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.describe_groups(&[GROUP]).unwrap()[0].state != GroupState::Empty {
        assert!(
            std::time::Instant::now() < deadline,
            "session never expired"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let heartbeat = engine.heartbeat(GROUP, &joined.member_id, None, 1).wait();
    assert_eq!(heartbeat, Err(GroupError::UnknownMemberId));
    engine.close().unwrap();
}

#[test]
fn group_metadata_and_offsets_survive_a_restart_and_stale_commits_stay_fenced() {
    let disk = SimDisk::new(63);
    let config = config(2);
    let engine = open_sim(&disk, &config).unwrap();
    let first = join_alone(&engine, 30_000);
    sync(&engine, &first.member_id, 1, b"gen1");
    // A second member joins: the leader rejoins and generation 2 forms.
    let second_first = engine.join_group(join_request("", 30_000)).wait();
    let second = engine.join_group(join_request(&second_first.member_id, 30_000));
    let leader = engine
        .join_group(join_request(&first.member_id, 30_000))
        .wait();
    let second = second.wait();
    assert_eq!((leader.generation_id, second.generation_id), (2, 2));
    let follower_sync = engine.sync_group(SyncGroupRequest {
        group_id: GROUP.into(),
        member_id: second.member_id.clone(),
        group_instance_id: None,
        generation_id: 2,
        protocol_type: None,
        protocol_name: None,
        assignments: Vec::new(),
    });
    let leader_sync = engine
        .sync_group(SyncGroupRequest {
            group_id: GROUP.into(),
            member_id: first.member_id.clone(),
            group_instance_id: None,
            generation_id: 2,
            protocol_type: None,
            protocol_name: None,
            assignments: vec![
                (first.member_id.clone(), b"p0".to_vec()),
                (second.member_id.clone(), b"p1-p2".to_vec()),
            ],
        })
        .wait();
    assert_eq!(leader_sync.assignment, b"p0");
    assert_eq!(follower_sync.wait().assignment, b"p1-p2");
    fenced_commit(&engine, &fence(2, &second.member_id), 77).unwrap();
    engine.close().unwrap();

    let engine = open_sim(&disk, &config).unwrap();
    assert!(engine.recovery_report().group_metadata_records >= 2);
    assert_eq!(fetch_one(&engine, GROUP, TOPIC, 0).unwrap(), Some(77));
    let described = engine.describe_groups(&[GROUP]).unwrap().remove(0);
    assert_eq!(described.state, GroupState::Stable);
    assert_eq!(described.generation_id, 2);
    assert_eq!(
        (
            described.protocol_type.as_str(),
            described.protocol_name.as_str()
        ),
        ("consumer", "range")
    );
    let sizes: Vec<usize> = described
        .members
        .iter()
        .map(|m| m.assignment_bytes)
        .collect();
    assert_eq!(sizes, vec![2, 5]);
    let stale = fenced_commit(&engine, &fence(1, &first.member_id), 78);
    assert!(matches!(
        stale,
        Err(Error::Group(GroupError::IllegalGeneration))
    ));
    let simple = commit_one(&engine, GROUP, TOPIC, 0, 79);
    assert!(matches!(
        simple,
        Err(Error::Group(GroupError::UnknownMemberId))
    ));
    // The restored members carry on in generation 2.
    assert_eq!(
        engine.heartbeat(GROUP, &second.member_id, None, 2).wait(),
        Ok(())
    );
    fenced_commit(&engine, &fence(2, &second.member_id), 80).unwrap();
    assert_eq!(fetch_one(&engine, GROUP, TOPIC, 0).unwrap(), Some(80));
    engine.close().unwrap();
}

#[test]
fn groups_move_with_their_partition() {
    let disk = SimDisk::new(64);
    let engine = open_sim(&disk, &config(2)).unwrap();
    let joined = join_alone(&engine, 30_000);
    sync(&engine, &joined.member_id, 1, b"x");
    let partition = engine.partition_for(GROUP);
    let from = engine.shard_of(partition).unwrap();
    engine.move_partition(partition, 1 - from).unwrap();
    let described = engine.describe_groups(&[GROUP]).unwrap().remove(0);
    assert_eq!(
        (described.state, described.generation_id),
        (GroupState::Stable, 1)
    );
    assert_eq!(
        engine.heartbeat(GROUP, &joined.member_id, None, 1).wait(),
        Ok(())
    );
    fenced_commit(&engine, &fence(1, &joined.member_id), 5).unwrap();
    let stale = fenced_commit(&engine, &fence(0, &joined.member_id), 6);
    assert!(matches!(
        stale,
        Err(Error::Group(GroupError::IllegalGeneration))
    ));
    engine.close().unwrap();
}

/// A topic whose log holds offsets 5..100, record `o` written at `o * 1000` ms.
struct Log;

impl OffsetLookup for Log {
    fn log_start_offset(&self, _topic: &str, _partition: i32) -> i64 {
        5
    }
    fn log_end_offset(&self, _topic: &str, _partition: i32) -> i64 {
        100
    }
    fn offset_for_timestamp(
        &self,
        _topic: &str,
        _partition: i32,
        timestamp_ms: i64,
    ) -> Option<i64> {
        let offset = (timestamp_ms + 999) / 1000;
        (offset < 100).then_some(offset.max(5))
    }
}

#[test]
fn offsets_reset_with_dry_run_and_only_while_the_group_is_inactive() {
    let disk = SimDisk::new(65);
    let engine = open_sim(&disk, &config(1)).unwrap();
    commit_one(&engine, GROUP, TOPIC, 0, 50).unwrap();
    commit_one(&engine, GROUP, TOPIC, 1, 60).unwrap();
    let reset = |to, dry_run| engine.reset_offsets(GROUP, &[], to, &Log, dry_run).unwrap();
    let plan = reset(OffsetReset::Earliest, true);
    let planned: Vec<(i32, Option<i64>, i64)> = plan
        .iter()
        .map(|r| (r.partition, r.previous, r.offset))
        .collect();
    assert_eq!(planned, vec![(0, Some(50), 5), (1, Some(60), 5)]);
    assert_eq!(
        fetch_one(&engine, GROUP, TOPIC, 0).unwrap(),
        Some(50),
        "dry run writes nothing"
    );
    let offsets =
        |plan: Vec<coffer::ResetOffset>| plan.iter().map(|r| r.offset).collect::<Vec<_>>();
    assert_eq!(
        offsets(reset(OffsetReset::ShiftBy(-10), false)),
        vec![40, 50]
    );
    assert_eq!(fetch_one(&engine, GROUP, TOPIC, 1).unwrap(), Some(50));
    assert_eq!(
        offsets(reset(OffsetReset::ShiftBy(1_000), false)),
        vec![100, 100]
    );
    assert_eq!(offsets(reset(OffsetReset::ToOffset(2), false)), vec![5, 5]);
    assert_eq!(
        offsets(reset(OffsetReset::ToTimestamp(42_500), false)),
        vec![43, 43]
    );
    assert_eq!(
        offsets(reset(OffsetReset::ToTimestamp(1 << 40), false)),
        vec![100, 100]
    );
    assert_eq!(offsets(reset(OffsetReset::Latest, false)), vec![100, 100]);
    let one = engine
        .reset_offsets(GROUP, &[(TOPIC, 3)], OffsetReset::Earliest, &Log, false)
        .unwrap();
    assert_eq!((one[0].previous, one[0].offset), (None, 5));
    assert_eq!(fetch_one(&engine, GROUP, TOPIC, 3).unwrap(), Some(5));

    let joined = join_alone(&engine, 30_000);
    let refused = engine.reset_offsets(GROUP, &[], OffsetReset::Earliest, &Log, true);
    assert!(matches!(
        refused,
        Err(Error::Group(GroupError::NonEmptyGroup))
    ));
    assert_eq!(refused.unwrap_err().kafka_error_code(), Some(68));
    let _ = joined;
    engine.close().unwrap();
}

#[test]
fn a_failed_group_metadata_sync_fails_the_sync_and_the_partition_closed() {
    let disk = SimDisk::new(66);
    let config = config(1);
    let engine = open_sim(&disk, &config).unwrap();
    let joined = join_alone(&engine, 30_000);
    sync(&engine, &joined.member_id, 1, b"gen1");
    // The leader rejoins (generation 2); the write of its assignment fails to sync.
    let rejoined = engine
        .join_group(join_request(&joined.member_id, 30_000))
        .wait();
    assert_eq!(rejoined.generation_id, 2);
    disk.fail_next_syncs(1);
    let failed = engine
        .sync_group(SyncGroupRequest {
            group_id: GROUP.into(),
            member_id: joined.member_id.clone(),
            group_instance_id: None,
            generation_id: 2,
            protocol_type: None,
            protocol_name: None,
            assignments: vec![(joined.member_id.clone(), b"gen-two".to_vec())],
        })
        .wait();
    assert_eq!(failed.error, Some(GroupError::NotCoordinator));
    assert!(failed.error.unwrap().is_retriable());
    // Failed closed: the partition serves nothing more until it is recovered from disk.
    let heartbeat = engine.heartbeat(GROUP, &joined.member_id, None, 2).wait();
    assert_eq!(heartbeat, Err(GroupError::NotCoordinator));
    drop(engine);
    disk.crash();

    let engine = open_sim(&disk, &config).unwrap();
    // An unsynced write may or may not have reached the disk; either way the group comes
    // back whole: generation 1 with its assignment, or generation 2 with its own.
    let described = engine.describe_groups(&[GROUP]).unwrap().remove(0);
    assert_eq!(described.state, GroupState::Stable);
    let restored = (
        described.generation_id,
        described.members[0].assignment_bytes,
    );
    assert!(
        restored == (1, 4) || restored == (2, 7),
        "restored {restored:?}"
    );
    engine.close().unwrap();
}

/// A heartbeat answered in the same run of inbox requests as a request that blocks (here a
/// compaction request, which first flushes through a stalled disk) is woken before that
/// request's work, not after it: the shard defers heartbeat wakeups to the end of the run,
/// and wakes them before anything that may block. (Found by review: the heartbeat's caller
/// waited for the compaction request's flush.)
#[test]
fn a_heartbeat_answer_does_not_wait_for_a_blocking_request_behind_it() {
    use std::time::Instant;
    const STALL: Duration = Duration::from_millis(300);
    let disk = SimDisk::new(1);
    let engine = open_sim(&disk, &config(1)).unwrap();
    commit_one(&engine, "g0", "t", 0, 1).unwrap();
    disk.set_write_stall(STALL);
    let started = Instant::now();
    let offsets = |offset| {
        [coffer::OffsetCommit {
            topic: "t",
            partition: 0,
            offset,
            leader_epoch: None,
            metadata: "",
        }]
    };
    // This commit's flush holds the shard in the stall; the rest queue behind it, in order.
    let first = engine.commit_offsets("g1", &offsets(1));
    std::thread::sleep(Duration::from_millis(50));
    let heartbeat = engine.heartbeat("no-such-group", "no-such-member", None, 1);
    let second = engine.commit_offsets("g2", &offsets(2));
    let (heartbeat_at, compacted_at) = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let answer = heartbeat.wait();
            assert!(answer.is_err(), "an unknown member: {answer:?}");
            started.elapsed()
        });
        let compactor = scope.spawn(|| {
            // The time only matters to tombstones; there are none.
            let _ = engine.compact(0);
            started.elapsed()
        });
        (waiter.join().unwrap(), compactor.join().unwrap())
    });
    first.wait().unwrap();
    second.wait().unwrap();
    // The set-up held: the compaction request waited for a second stalled flush.
    assert!(
        compacted_at >= STALL * 2 - Duration::from_millis(60),
        "{compacted_at:?}"
    );
    assert!(
        heartbeat_at < STALL + STALL / 2,
        "the heartbeat's answer waited for the compaction's flush: {heartbeat_at:?} (compaction done at {compacted_at:?})"
    );
}

/// A member past its join, heartbeating its generation, is answered on the caller's thread
/// from the shard's session board: while the shard is held in a stalled flush, every such
/// heartbeat is answered at once, and the beats it never saw keep the session alive on the
/// shard's clock. What the board cannot answer (another generation) still goes to the
/// shard, and silence still ends the session there.
#[test]
fn heartbeats_are_answered_from_the_session_board_while_the_shard_is_busy() {
    use std::time::Instant;
    const STALL: Duration = Duration::from_millis(1_000);
    const SESSION_MS: i32 = 400;
    let disk = SimDisk::new(5);
    let engine = open_sim(&disk, &config(1)).unwrap();
    let member = join_alone(&engine, SESSION_MS).member_id;
    sync(&engine, &member, 1, b"a");
    disk.set_write_stall(STALL);
    let started = Instant::now();
    // This commit's flush holds the shard thread for the stall.
    let held = commit_one_async(&engine);
    std::thread::sleep(Duration::from_millis(50));
    let mut beats = 0;
    while started.elapsed() < STALL + STALL / 2 {
        let asked = Instant::now();
        let answer = engine.heartbeat(GROUP, &member, None, 1).wait();
        assert_eq!(answer, Ok(()));
        let waited = asked.elapsed();
        assert!(
            waited < STALL / 2,
            "beat {beats} waited {waited:?}: it went to the stalled shard"
        );
        beats += 1;
        std::thread::sleep(Duration::from_millis(30));
    }
    held.wait().unwrap();
    disk.set_write_stall(Duration::ZERO);
    assert!(beats > 10, "{beats} heartbeats");
    // Three session timeouts of beats only the board saw: the member is alive.
    let described = engine.describe_groups(&[GROUP]).unwrap().remove(0);
    assert_eq!(
        (described.state, described.members.len()),
        (GroupState::Stable, 1)
    );
    let stale = engine.heartbeat(GROUP, &member, None, 0).wait();
    assert_eq!(stale, Err(GroupError::IllegalGeneration));
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.describe_groups(&[GROUP]).unwrap()[0].state != GroupState::Empty {
        assert!(Instant::now() < deadline, "the silent session never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = engine.heartbeat(GROUP, &member, None, 1).wait();
    assert_eq!(after, Err(GroupError::UnknownMemberId));
    engine.close().unwrap();
}

fn commit_one_async(engine: &Engine) -> coffer::CommitFuture {
    let offsets = [OffsetCommit {
        topic: TOPIC,
        partition: 0,
        offset: 1,
        leader_epoch: None,
        metadata: "",
    }];
    engine.commit_offsets("elsewhere", &offsets)
}
