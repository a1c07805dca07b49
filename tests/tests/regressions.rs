//! Regression tests for review findings on the merged branches (retention vs batched commits,
//! group deletion, shard-local groups, failed moves).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer::OffsetCommit;
use coffer::storage::SimDisk;
use coffer_tests::{SIM_DATA_DIR, fetch_one, open_sim, test_config};

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn commit<'a>(topic: &'a str, partition: i32, offset: i64) -> OffsetCommit<'a> {
    OffsetCommit {
        topic,
        partition,
        offset,
        leader_epoch: None,
        metadata: "",
    }
}

/// An explicit retention check that arrives while a commit of an expired key is batched
/// must decide expiry after that commit is flushed, never tombstone the fresh, acknowledged
/// value.
#[test]
fn a_retention_check_mid_batch_never_expires_a_fresh_commit() {
    let disk = SimDisk::new(1);
    let mut config = test_config(SIM_DATA_DIR, 1);
    // A long linger so the commit and the retention request form one batch.
    config.group_commit_linger_us = 300_000;
    let engine = open_sim(&disk, &config).unwrap();
    let expire_ms = wall_ms() + 1;
    engine
        .commit_offsets_with_expiry("g", &[commit("t", 0, 1)], expire_ms)
        .wait()
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    // A fresh commit of the same key, without expiry: it must survive any retention check.
    let fresh = engine.commit_offsets("g", &[commit("t", 0, 2)]);
    let expired = engine.run_retention_check(wall_ms()).unwrap();
    fresh.wait().unwrap();
    assert_eq!(
        fetch_one(&engine, "g", "t", 0).unwrap(),
        Some(2),
        "the acknowledged commit of offset 2 was expired ({expired} expired)"
    );
    engine.close().unwrap();
}

mod groups {
    use super::*;
    use coffer::group::{
        GroupError, GroupState, JoinGroupRequest, LeavingMember, SyncGroupRequest,
    };
    use coffer::{Config, Engine, LocalShard};

    pub const GROUP: &str = "payments";

    pub fn config() -> Config {
        coffer_tests::group_test_config(1)
    }

    fn join_request(member_id: &str, session_timeout_ms: i32) -> JoinGroupRequest {
        coffer_tests::join_request(GROUP, member_id, session_timeout_ms, true)
    }

    /// Joins one member and syncs it (its metadata record is durable); returns its id.
    pub fn join_and_sync(engine: &Engine, session_timeout_ms: i32) -> String {
        let first = engine
            .join_group(join_request("", session_timeout_ms))
            .wait();
        assert_eq!(first.error, Some(GroupError::MemberIdRequired));
        let joined = engine
            .join_group(join_request(&first.member_id, session_timeout_ms))
            .wait();
        assert_eq!(joined.error, None);
        let id = joined.member_id;
        let synced = engine
            .sync_group(SyncGroupRequest {
                group_id: GROUP.into(),
                member_id: id.clone(),
                group_instance_id: None,
                generation_id: joined.generation_id,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignments: vec![(id.clone(), b"orders-0".to_vec())],
            })
            .wait();
        assert_eq!(synced.error, None);
        id
    }

    /// Kafka's DeleteGroups removes the group: DescribeGroups then reports it Dead and
    /// ListGroups no longer lists it, after a restart too (a GroupMetadata tombstone), and
    /// its offsets are gone.
    #[test]
    fn delete_group_removes_its_metadata_and_offsets_after_a_restart_too() {
        let disk = SimDisk::new(3);
        let engine = open_sim(&disk, &config()).unwrap();
        let id = join_and_sync(&engine, 30_000);
        let leave = LeavingMember {
            member_id: id,
            group_instance_id: None,
        };
        assert_eq!(engine.leave_group(GROUP, vec![leave]).wait().error, None);
        engine
            .commit_offsets(GROUP, &[commit("orders", 0, 5)])
            .wait()
            .unwrap();
        engine.delete_group(GROUP).wait().unwrap();
        let listed = engine.list_groups().unwrap();
        let described = engine.describe_groups(&[GROUP]).unwrap();
        engine.close().unwrap();
        let engine = open_sim(&disk, &config()).unwrap();
        let after_restart = engine.describe_groups(&[GROUP]).unwrap();
        let offsets_after_restart = fetch_one(&engine, GROUP, "orders", 0).unwrap();
        engine.close().unwrap();
        assert_eq!(offsets_after_restart, None);
        assert!(
            listed.iter().all(|g| g.group_id != GROUP),
            "deleted group still listed: {listed:?}"
        );
        assert_eq!(described[0].state, GroupState::Dead, "{described:?}");
        assert_eq!(
            after_restart[0].state,
            GroupState::Dead,
            "{after_restart:?}"
        );
    }

    /// DeleteGroups and OffsetDelete are refused while the group has members, and delete
    /// nothing.
    #[test]
    fn delete_group_refuses_a_group_with_members() {
        let disk = SimDisk::new(5);
        let engine = open_sim(&disk, &config()).unwrap();
        let member = join_and_sync(&engine, 30_000);
        let fence = coffer::group::CommitFence {
            generation_id: 1,
            member_id: member,
            group_instance_id: None,
        };
        engine
            .commit_offsets_fenced(GROUP, &fence, &[commit("orders", 0, 5)])
            .wait()
            .unwrap();
        let refused = engine.delete_offsets(GROUP, &[("orders", 0)]).wait();
        assert!(
            matches!(
                refused,
                Err(coffer::Error::Group(GroupError::GroupSubscribedToTopic))
            ),
            "{refused:?}"
        );
        let refused = engine.delete_group(GROUP).wait();
        assert!(
            matches!(
                refused,
                Err(coffer::Error::Group(GroupError::NonEmptyGroup))
            ),
            "{refused:?}"
        );
        assert_eq!(fetch_one(&engine, GROUP, "orders", 0).unwrap(), Some(5));
        let described = engine.describe_groups(&[GROUP]).unwrap();
        assert_eq!(described[0].members.len(), 1);
        engine.close().unwrap();
    }

    /// A disk holding a member with a 10 ms session, still joined when its engine closed, and
    /// an offset of its group whose explicit expiry is 20 ms away; and a config whose
    /// retention check runs every millisecond.
    pub fn member_and_expiring_offset_left_on_disk() -> (SimDisk, Config) {
        let disk = SimDisk::new(4);
        let mut config = config();
        config.offsets_retention_check_interval_ms = 1;
        let engine = open_sim(&disk, &config).unwrap();
        engine
            .commit_offsets_with_expiry(GROUP, &[commit("orders", 0, 5)], wall_ms() + 20)
            .wait()
            .unwrap();
        join_and_sync(&engine, 10);
        engine.close().unwrap();
        (disk, config)
    }

    /// A LocalShard ticks its group coordinator from `flush`: members restored from the log
    /// expire, then their group's offsets expire by retention, and a simple commit to the
    /// now empty group is accepted (the fence is applied on the local path too: see
    /// local_shard.rs for its refusals while members exist).
    #[test]
    fn local_shard_expires_restored_members_and_then_their_offsets() {
        let (disk, config) = member_and_expiring_offset_left_on_disk();

        let shared = disk.clone();
        let mut shards =
            LocalShard::open_all_with_storage(config, &move || Ok(Box::new(shared.storage())))
                .unwrap();
        let shard = &mut shards[0];
        // Far past the member's session and the offset's explicit expiry.
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(10));
            shard.flush();
        }
        let kept = shard.fetch_offsets(GROUP, &[("orders", 0)]).unwrap()[0]
            .as_ref()
            .map(|c| c.offset);
        assert_eq!(
            kept, None,
            "offset with a passed expiry kept (member never expired)"
        );
        let described = shard.describe_group(GROUP).unwrap();
        assert!(
            described.as_ref().is_none_or(|d| d.members.is_empty()),
            "{described:?}"
        );
        let simple = shard.commit_offsets(GROUP, &[commit("orders", 1, 9)]);
        shard.flush();
        simple.wait().expect("a simple commit to an empty group");
    }
}

mod control {
    use super::groups::*;
    use super::*;

    /// Control for the test above: the Engine, reopened on the same directory, expires the
    /// member and then the offset.
    #[test]
    fn engine_expires_restored_members_and_then_the_offset() {
        let (disk, config) = member_and_expiring_offset_left_on_disk();
        let engine = open_sim(&disk, &config).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(fetch_one(&engine, GROUP, "orders", 0).unwrap(), None);
        let simple = engine
            .commit_offsets(GROUP, &[commit("orders", 1, 9)])
            .wait();
        assert!(simple.is_ok(), "{simple:?}");
        engine.close().unwrap();
    }
}

/// A failed fdatasync while a partition is unloaded for a move fails the move and the
/// partition closed, but keeps its cache. With per-file syncs a later move (disk healthy
/// again) recovers it from disk on the target, and commits work again. With the journal its
/// acknowledged commits may be only in the journal, so it stays put (refused, retriable)
/// until a reopen redoes the journal; nothing acknowledged is lost either way.
#[test]
fn a_failed_sync_during_a_move_leaves_the_partition_recoverable() {
    for fsync_scope in [coffer::FsyncScope::File, coffer::FsyncScope::Journal] {
        let disk = SimDisk::new(9);
        let mut config = test_config(SIM_DATA_DIR, 2);
        config.shards = 2;
        config.pin_shards = false;
        config.fsync_scope = fsync_scope;
        let engine = open_sim(&disk, &config).unwrap();
        let group = (0..100)
            .map(|i| format!("g{i}"))
            .find(|g| engine.partition_for(g) == 0)
            .unwrap();
        engine
            .commit_offsets(&group, &[commit("t", 0, 7)])
            .wait()
            .unwrap();
        disk.fail_next_syncs(1);
        let first = engine.move_partition(0, 1);
        assert!(first.is_err(), "{first:?}");
        // The disk is healthy again.
        let second = engine.move_partition(0, 1);
        let after = engine.commit_offsets(&group, &[commit("t", 0, 8)]).wait();
        engine.close().unwrap_or(());
        drop(engine);
        match fsync_scope {
            coffer::FsyncScope::Journal => {
                assert!(
                    matches!(second, Err(coffer::Error::PartitionFailed { .. })),
                    "{second:?}"
                );
                let reopened = open_sim(&disk, &config).unwrap();
                assert_eq!(fetch_one(&reopened, &group, "t", 0).unwrap(), Some(7));
                reopened
                    .commit_offsets(&group, &[commit("t", 0, 9)])
                    .wait()
                    .unwrap();
            }
            _ => assert!(
                second.is_ok() && after.is_ok(),
                "partition stranded: second move {second:?}, commit {after:?}"
            ),
        }
    }
}
