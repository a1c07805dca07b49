//! The shard-local API: shards driven by the caller's own threads commit durably, serve
//! fetches, refuse groups they do not own, hand partitions over, and leave a data directory
//! the `Engine` reopens.

use std::collections::BTreeMap;

use coffer::storage::SimDisk;
use coffer::{CommitFuture, Engine, Error, LocalShard, OffsetCommit};
use coffer_tests::{SIM_DATA_DIR, fetch_one, open_sim, test_config};

const PARTITIONS: u32 = 6;
const SHARDS: usize = 2;

fn open_local(disk: &SimDisk) -> Vec<LocalShard> {
    open_local_with(disk, local_config())
}

fn local_config() -> coffer::Config {
    let mut config = test_config(SIM_DATA_DIR, PARTITIONS);
    config.shards = SHARDS;
    config
}

fn open_local_with(disk: &SimDisk, config: coffer::Config) -> Vec<LocalShard> {
    let disk = disk.clone();
    LocalShard::open_all_with_storage(config, &move || Ok(Box::new(disk.storage())))
        .expect("shards open")
}

fn commit(topic: &str, partition: i32, offset: i64) -> OffsetCommit<'_> {
    OffsetCommit {
        topic,
        partition,
        offset,
        leader_epoch: Some(2),
        metadata: "",
    }
}

#[test]
fn executor_threads_commit_through_their_own_shards_and_the_engine_reopens_it() {
    let disk = SimDisk::new(21);
    let shards = open_local(&disk);
    assert_eq!(shards.len(), SHARDS);
    let groups: Vec<String> = (0..40).map(|g| format!("app-{g}")).collect();
    // Each shard is moved to its own thread, as a broker's executors would own them.
    let acked: Vec<BTreeMap<String, i64>> = std::thread::scope(|scope| {
        let threads: Vec<_> = shards
            .into_iter()
            .map(|mut shard| {
                let groups = &groups;
                scope.spawn(move || {
                    let mine: Vec<&String> =
                        groups.iter().filter(|g| shard.owns_group(g)).collect();
                    let mut acked = BTreeMap::new();
                    for round in 0..25_i64 {
                        let futures: Vec<(&String, CommitFuture)> = mine
                            .iter()
                            .map(|g| {
                                let offsets = [commit("t", 0, round), commit("t", 1, round * 2)];
                                (*g, shard.commit_offsets(g, &offsets))
                            })
                            .collect();
                        assert_eq!(shard.pending_requests(), mine.len());
                        assert_eq!(shard.flush(), mine.len());
                        for (group, future) in futures {
                            future.wait().expect("durable after flush");
                            acked.insert(group.clone(), round);
                        }
                    }
                    // A fetch right after the flush sees the last commit.
                    for (group, round) in &acked {
                        let fetched = shard.fetch_offsets(group, &[("t", 1)]).unwrap();
                        assert_eq!(fetched[0].as_ref().map(|c| c.offset), Some(round * 2));
                    }
                    shard.close().expect("clean close");
                    acked
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let all: BTreeMap<String, i64> = acked.into_iter().flatten().collect();
    assert_eq!(all.len(), groups.len(), "every group is owned by one shard");

    // Same layout as the Engine's: it reopens the directory and finds every commit.
    let engine = open_sim(&disk, &test_config(SIM_DATA_DIR, PARTITIONS)).unwrap();
    for (group, round) in &all {
        assert_eq!(fetch_one(&engine, group, "t", 0).unwrap(), Some(*round));
        assert_eq!(fetch_one(&engine, group, "t", 1).unwrap(), Some(round * 2));
    }
    engine.close().unwrap();
}

#[test]
fn a_group_of_another_shard_is_refused_and_bad_input_writes_nothing() {
    let disk = SimDisk::new(22);
    let mut shards = open_local(&disk);
    let group = (0..)
        .map(|g| format!("g{g}"))
        .find(|g| !shards[0].owns_group(g))
        .unwrap();
    let refused = shards[0]
        .commit_offsets(&group, &[commit("t", 0, 1)])
        .wait();
    assert!(matches!(refused, Err(Error::NotCoordinator { .. })));
    assert!(matches!(
        shards[0].fetch_offsets(&group, &[("t", 0)]),
        Err(Error::NotCoordinator { .. })
    ));
    let owner = shards.iter_mut().find(|s| s.owns_group(&group)).unwrap();
    let bad = owner.commit_offsets(&group, &[commit("t", -1, 1)]).wait();
    assert!(matches!(bad, Err(Error::InvalidPartition(-1))));
    assert_eq!(owner.pending_requests(), 0, "nothing batched for bad input");
    assert_eq!(owner.flush(), 0);
}

#[test]
fn only_flushed_commits_survive_a_power_cut() {
    let disk = SimDisk::new(23);
    let mut shards = open_local(&disk);
    let group = "payments";
    let shard = shards.iter_mut().find(|s| s.owns_group(group)).unwrap();
    let durable = shard.commit_offsets(group, &[commit("t", 0, 10)]);
    shard.flush();
    durable.wait().unwrap();
    // Batched, never flushed: not acknowledged, and the power cut takes it.
    let lost = shard.commit_offsets(group, &[commit("t", 0, 11)]);
    disk.crash();
    drop(shards);
    assert!(
        lost.wait().is_err(),
        "an unflushed commit is never acknowledged"
    );

    let mut reopened = open_local(&disk);
    let shard = reopened.iter_mut().find(|s| s.owns_group(group)).unwrap();
    let fetched = shard.fetch_offsets(group, &[("t", 0)]).unwrap();
    assert_eq!(fetched[0].as_ref().map(|c| c.offset), Some(10));
}

#[test]
fn a_partition_handed_between_shards_keeps_its_offsets() {
    let disk = SimDisk::new(24);
    let mut shards = open_local(&disk);
    let group = "orders-app";
    let from = shards.iter().position(|s| s.owns_group(group)).unwrap();
    let to = 1 - from;
    let partition = shards[from].partition_for(group);
    let reader = shards[from].reader(partition).unwrap();
    let durable = shards[from].commit_offsets(group, &[commit("t", 3, 77)]);
    // Released with the commit still batched: the release flushes it first.
    let handoff = shards[from].release_partition(partition).unwrap();
    durable.wait().unwrap();
    assert_eq!(handoff.partition(), partition);
    assert!(!shards[from].owns(partition));
    assert!(matches!(
        shards[from]
            .commit_offsets(group, &[commit("t", 3, 78)])
            .wait(),
        Err(Error::NotCoordinator { .. })
    ));
    shards[to].adopt_partition(handoff).unwrap();
    let got = shards[to].fetch_offsets(group, &[("t", 3)]).unwrap();
    assert_eq!(got[0].as_ref().map(|c| c.offset), Some(77));
    let next = shards[to].commit_offsets(group, &[commit("t", 3, 79)]);
    shards[to].flush();
    next.wait().unwrap();
    assert_eq!(reader.get(group, "t", 3).map(|v| v.offset), Some(79));
    for shard in shards {
        shard.close().unwrap();
    }
    let engine: Engine = open_sim(&disk, &test_config(SIM_DATA_DIR, PARTITIONS)).unwrap();
    assert_eq!(fetch_one(&engine, group, "t", 3).unwrap(), Some(79));
}

#[test]
fn two_sets_of_shards_never_share_a_directory() {
    let disk = SimDisk::new(25);
    let shards = open_local(&disk);
    let mut config = test_config(SIM_DATA_DIR, PARTITIONS);
    config.shards = SHARDS;
    let second = disk.clone();
    let refused =
        LocalShard::open_all_with_storage(config, &move || Ok(Box::new(second.storage())));
    assert!(matches!(refused, Err(Error::DataDirLocked(_))));
    drop(shards);
}

fn join(group: &str, member_id: &str) -> coffer::group::JoinGroupRequest {
    coffer_tests::join_request(group, member_id, 30_000, false)
}

/// Drives the shard (as the broker's executor loop would) until `future` resolves.
fn drive<T: coffer::Abandoned + Unpin>(
    shard: &mut LocalShard,
    mut future: coffer::GroupFuture<T>,
) -> T {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(value) = std::pin::Pin::new(&mut future).poll(&mut cx) {
            return value;
        }
        shard.flush();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("the group call never resolved");
}

#[test]
fn groups_run_on_the_callers_thread_and_fence_its_commits() {
    use coffer::group::{CommitFence, GroupError, SyncGroupRequest};
    let disk = SimDisk::new(26);
    let mut config = test_config(SIM_DATA_DIR, PARTITIONS);
    config.shards = SHARDS;
    config.groups.group_initial_rebalance_delay_ms = 0;
    let storage = disk.clone();
    let mut shards =
        LocalShard::open_all_with_storage(config, &move || Ok(Box::new(storage.storage())))
            .unwrap();
    let group = "ledger";
    let shard = shards.iter_mut().find(|s| s.owns_group(group)).unwrap();

    let future = shard.join_group(join(group, ""));
    let joined = drive(shard, future);
    assert_eq!((joined.error, joined.generation_id), (None, 1));
    let member = joined.member_id.clone();
    let sync = SyncGroupRequest {
        group_id: group.into(),
        member_id: member.clone(),
        group_instance_id: None,
        generation_id: 1,
        protocol_type: Some("consumer".into()),
        protocol_name: Some("range".into()),
        assignments: vec![(member.clone(), b"t-0".to_vec())],
    };
    let future = shard.sync_group(sync);
    let synced = drive(shard, future);
    assert_eq!((synced.error, synced.assignment), (None, b"t-0".to_vec()));

    assert_eq!(shard.heartbeat(group, &member, None, 1), Ok(()));
    assert_eq!(
        shard.heartbeat(group, &member, None, 0),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        shard.heartbeat(group, "stranger", None, 1),
        Err(GroupError::UnknownMemberId)
    );
    // Another core answers the member's heartbeats from the shard's board, no hop; what the
    // board cannot answer (another generation, an unknown member, a group another shard
    // owns) it leaves to the owning shard.
    let board = shard.heartbeat_board();
    let partition = shard.partition_for(group);
    let elsewhere = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                (
                    board.heartbeat(partition, group, &member, None, 1),
                    board.heartbeat(partition, group, &member, None, 0),
                    board.heartbeat(partition, group, "stranger", None, 1),
                )
            })
            .join()
            .unwrap()
    });
    assert_eq!(elsewhere, (Some(Ok(())), None, None));

    let fence = CommitFence {
        generation_id: 1,
        member_id: member.clone(),
        group_instance_id: None,
    };
    let durable = shard.commit_offsets_fenced(group, &fence, &[commit("t", 0, 5)]);
    shard.flush();
    durable.wait().unwrap();
    let stale = CommitFence {
        generation_id: 0,
        ..fence.clone()
    };
    let fenced = shard.commit_offsets_fenced(group, &stale, &[commit("t", 0, 6)]);
    assert!(matches!(
        fenced.wait(),
        Err(Error::Group(GroupError::IllegalGeneration))
    ));
    // A simple commit is refused while the group has members, as in Kafka.
    let simple = shard.commit_offsets(group, &[commit("t", 0, 7)]);
    assert!(matches!(
        simple.wait(),
        Err(Error::Group(GroupError::UnknownMemberId))
    ));
    assert_eq!(
        shard.pending_requests(),
        0,
        "refused commits are not batched"
    );
    let fetched = shard.fetch_offsets(group, &[("t", 0)]).unwrap();
    assert_eq!(fetched[0].as_ref().map(|c| c.offset), Some(5));
    let described = shard.describe_group(group).unwrap().expect("held");
    assert_eq!(described.members.len(), 1);
    assert_eq!(shard.list_groups().unwrap().len(), 1);
}

/// A partition released while its journal checkpoint's sync is in flight, and failing: the
/// release waits for that sync, finds it failed, and keeps the partition here, failed closed.
/// Closing the segment meanwhile would sync the same file and, as on Linux after a writeback
/// error (which the simulated disk models), report success without the pages the checkpoint
/// lost. The release comes right after the flush that rotated the journal and started the
/// checkpoint's sync. A reopen then finds every acknowledged commit.
#[test]
fn a_release_during_a_failing_checkpoint_sync_keeps_the_partition_here_failed_closed() {
    let disk = SimDisk::new(25);
    disk.fail_next_background_syncs_to("log", 1);
    // Segments far larger than the journal files: no segment fills (and rolls, which waits
    // for the checkpoint's syncs) in the flush that rotates the journal.
    release_during_a_failing_checkpoint(&disk, 64 * 1024 * 1024);
}

/// The same when the checkpoint's segment sync succeeds and the directory sync that follows
/// it (segments rolled while the journal file was current) fails: the release waits for
/// both, rather than close the segment while the directory's sync is in flight and hand on
/// a partition whose segment names may not be durable while its journal file is retired.
#[test]
fn a_release_during_a_failing_checkpoint_directory_sync_keeps_the_partition_here() {
    let disk = SimDisk::new(25);
    disk.fail_next_background_dir_syncs(1);
    // Slow background syncs: the segment's is still in flight at the release.
    disk.set_background_sync_reaps(40);
    // 1.5 MiB segments roll before the journal's rotation (at round 32 of 64 KB), leaving
    // the directory sync to the checkpoint, but not in the rotating flush (whose roll would
    // wait for the segment's sync first).
    release_during_a_failing_checkpoint(&disk, 1536 * 1024);
}

/// Commits rounds of 64 KB to one group until a flush starts a journal checkpoint, then
/// releases the group's partition: refused, failed closed, nothing acknowledged lost.
fn release_during_a_failing_checkpoint(disk: &SimDisk, segment_bytes: u64) {
    const TOPIC_PARTITIONS: i32 = 16;
    const ROUNDS_MAX: i64 = 500;
    let mut config = local_config();
    config.offsets_topic_segment_bytes = segment_bytes;
    let mut shards = open_local_with(disk, config.clone());
    let group = "release-app";
    let home = shards.iter().position(|s| s.owns_group(group)).unwrap();
    let shard = &mut shards[home];
    let partition = shard.partition_for(group);
    let metadata = "r".repeat(4000);
    let mut round = 0i64;
    loop {
        assert!(round < ROUNDS_MAX, "no journal checkpoint started");
        let checkpoints = shard.metrics().unwrap().journal_checkpoints;
        let offsets: Vec<OffsetCommit<'_>> = (0..TOPIC_PARTITIONS)
            .map(|p| OffsetCommit {
                metadata: &metadata,
                ..commit("t", p, round)
            })
            .collect();
        let durable = shard.commit_offsets(group, &offsets);
        shard.flush();
        durable.wait().unwrap();
        if shard.metrics().unwrap().journal_checkpoints > checkpoints {
            break;
        }
        round += 1;
    }
    let refusal = match shard.release_partition(partition) {
        Ok(_) => panic!("released while the checkpoint's failing sync was in flight"),
        Err(error) => error,
    };
    assert!(
        matches!(refusal, Error::PartitionFailed { .. }),
        "{refusal}"
    );
    assert!(
        refusal.to_string().contains("journal checkpoint"),
        "{refusal}"
    );
    assert!(shard.owns(partition), "a failed partition stays");

    disk.crash();
    drop(shards);
    let engine = open_sim(disk, &config).unwrap();
    for p in 0..TOPIC_PARTITIONS {
        assert_eq!(
            fetch_one(&engine, group, "t", p).unwrap(),
            Some(round),
            "t/{p}"
        );
    }
}

/// A release while a background compaction of the partition is past its rename to
/// `.swap`: the release completes the compaction first (its background syncs waited for),
/// and a directory sync failing there fails the partition closed, so the release is refused
/// and the partition stays (its acknowledged commits live in this shard's journal). Before
/// the refusal was checked after the compaction's completion, the partition was handed on
/// with its log abandoned, and the old shard's later checkpoints retired the journal that
/// held its commits (a review found it). A power cut and a reopen lose nothing.
#[test]
fn a_release_during_a_committed_compaction_whose_directory_sync_fails_is_refused() {
    let disk = SimDisk::new(31);
    let mut config = local_config();
    config.log_cleaner_enable = true;
    config.log_cleaner_backoff_ms = 0;
    let mut shards = open_local_with(&disk, config.clone());
    let group = "release-app";
    let home = shards.iter().position(|s| s.owns_group(group)).unwrap();
    let partition = shards[home].partition_for(group);
    let dir =
        std::path::PathBuf::from(SIM_DATA_DIR).join(format!("__consumer_offsets-{partition}"));
    let swaps = |disk: &SimDisk| {
        disk.file_paths()
            .into_iter()
            .filter(|p| {
                p.parent() == Some(dir.as_path()) && p.extension().is_some_and(|e| e == "swap")
            })
            .count()
    };
    let metadata = "r".repeat(4000);
    // Slow background syncs: the compaction waits at its commit point for a while.
    disk.set_background_sync_reaps(200);
    let mut round = 0i64;
    while swaps(&disk) == 0 {
        assert!(round < 2000, "no compaction reached its commit point");
        let offsets: Vec<OffsetCommit<'_>> = (0..16)
            .map(|p| OffsetCommit {
                metadata: &metadata,
                ..commit("t", p, round)
            })
            .collect();
        let durable = shards[home].commit_offsets(group, &offsets);
        shards[home].flush();
        durable.wait().unwrap();
        round += 1;
    }
    disk.fail_next_background_dir_syncs(1);
    let refusal = match shards[home].release_partition(partition) {
        Ok(_) => panic!("released a partition whose compaction failed it closed"),
        Err(error) => error,
    };
    assert!(
        matches!(refusal, Error::PartitionFailed { .. }),
        "{refusal}"
    );
    assert!(shards[home].owns(partition), "a failed partition stays");
    disk.crash();
    drop(shards);
    let engine = open_sim(&disk, &config).unwrap();
    for p in 0..16 {
        assert_eq!(
            fetch_one(&engine, group, "t", p).unwrap(),
            Some(round - 1),
            "t/{p}"
        );
    }
}

/// A group deleted while a commit of a key it did not have yet waits in the same batch: the
/// delete lists the group's keys only once that commit is applied, so the new key gets its
/// tombstone too and is gone, at once and after a reopen (found by review: the keys came
/// from the cache alone, and the batched key outlived the delete).
#[test]
fn a_group_deleted_behind_a_batched_commit_of_a_new_key_loses_that_key_too() {
    let disk = SimDisk::new(5);
    let mut shards = open_local(&disk);
    let group = "doomed";
    let shard = shards
        .iter_mut()
        .find(|shard| shard.owns_group(group))
        .expect("an owner");
    let first = shard.commit_offsets(group, &[commit("t", 0, 1)]);
    shard.flush();
    first.wait().expect("durable");
    let batched = shard.commit_offsets(group, &[commit("t", 1, 2)]);
    let deleted = shard.delete_group(group);
    shard.flush();
    batched.wait().expect("the batched commit");
    deleted.wait().expect("the delete");
    assert_eq!(shard.fetch_all_offsets(group).expect("fetch"), vec![]);
    for shard in shards {
        shard.close().expect("close");
    }
    let engine = open_sim(&disk, &local_config()).expect("reopen");
    assert_eq!(fetch_one(&engine, group, "t", 0).expect("fetch"), None);
    assert_eq!(fetch_one(&engine, group, "t", 1).expect("fetch"), None);
}
