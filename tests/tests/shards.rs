//! Several shards: every offsets partition is served by exactly one shard, the on-disk layout
//! does not depend on the shard count, and the group mapping is configurable.

use coffer::routing::{GroupPartitioner, redpanda_partition_for_group};
use coffer::storage::SimDisk;
use coffer_tests::{SIM_DATA_DIR, commit_one, fetch_one, open_sim, sim_segments, test_config};

#[test]
fn reopening_with_another_shard_count_finds_every_commit() {
    let disk = SimDisk::new(31);
    let mut config = test_config(SIM_DATA_DIR, 10);
    config.shards = 3;
    let engine = open_sim(&disk, &config).unwrap();
    assert_eq!(engine.shard_count(), 3);
    let groups: Vec<String> = (0..60).map(|g| format!("group-{g}")).collect();
    let mut used = std::collections::BTreeSet::new();
    for (index, group) in groups.iter().enumerate() {
        commit_one(&engine, group, "t", 0, index as i64).unwrap();
        used.insert(engine.partition_for(group));
    }
    assert!(
        used.len() >= 8,
        "groups spread over the partitions: {used:?}"
    );
    assert_eq!(
        engine.recovery_report().partitions.len(),
        10,
        "each partition once"
    );
    engine.close().unwrap();

    for shards in [1, 2, 5] {
        config.shards = shards;
        let engine = open_sim(&disk, &config).unwrap();
        assert_eq!(engine.shard_count(), shards);
        for (index, group) in groups.iter().enumerate() {
            assert_eq!(
                fetch_one(&engine, group, "t", 0).unwrap(),
                Some(index as i64)
            );
        }
        engine.close().unwrap();
    }
}

#[test]
fn the_redpanda_mapping_places_groups_where_redpanda_does() {
    let disk = SimDisk::new(32);
    let mut config = test_config(SIM_DATA_DIR, 16);
    config.group_partitioner = GroupPartitioner::Redpanda;
    config.shards = 2;
    let engine = open_sim(&disk, &config).unwrap();
    let group = "payments-consumer";
    let partition = redpanda_partition_for_group(group, 16);
    assert_eq!(engine.partition_for(group), partition);
    commit_one(&engine, group, "t", 3, 77).unwrap();
    engine.close().unwrap();
    // The commit landed in that partition's log, and nowhere else.
    for p in 0..16 {
        let bytes: usize = sim_segments(&disk, p)
            .iter()
            .map(|s| disk.file_bytes(s).map_or(0, |b| b.len()))
            .sum();
        assert_eq!(bytes > 0, p == partition, "partition {p}");
    }
    let engine = open_sim(&disk, &config).unwrap();
    assert_eq!(fetch_one(&engine, group, "t", 3).unwrap(), Some(77));
}

#[test]
fn moving_partitions_between_shards_under_load_keeps_every_commit() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let disk = SimDisk::new(33);
    let mut config = test_config(SIM_DATA_DIR, 6);
    config.shards = 2;
    let engine = open_sim(&disk, &config).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Committers: one request in flight each, retrying NotCoordinator as a client would.
    let committers: Vec<_> = (0..3)
        .map(|thread| {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let groups: Vec<String> = (0..4).map(|g| format!("c{thread}-g{g}")).collect();
                let mut acked = std::collections::BTreeMap::new();
                let mut offset = 0i64;
                let mut retries = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let group = &groups[(offset % 4) as usize];
                    loop {
                        match commit_one(&engine, group, "t", 0, offset) {
                            Ok(()) => break,
                            Err(coffer::Error::NotCoordinator { .. }) => retries += 1,
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    }
                    acked.insert(group.clone(), offset);
                    offset += 1;
                }
                (acked, retries)
            })
        })
        .collect();
    let mut moves = 0;
    for round in 0..40u32 {
        let partition = round % 6;
        let to = 1 - engine.shard_of(partition).unwrap();
        engine.move_partition(partition, to).unwrap();
        assert_eq!(engine.shard_of(partition), Some(to));
        moves += 1;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = std::collections::BTreeMap::new();
    for committer in committers {
        let (theirs, _retries) = committer.join().unwrap();
        acked.extend(theirs);
    }
    assert_eq!(moves, 40);
    assert_eq!(acked.len(), 12);
    for (group, offset) in &acked {
        assert_eq!(
            fetch_one(&engine, group, "t", 0).unwrap(),
            Some(*offset),
            "{group}"
        );
    }
    engine.close().unwrap();
    let reopened = open_sim(&disk, &config).unwrap();
    for (group, offset) in &acked {
        assert_eq!(
            fetch_one(&reopened, group, "t", 0).unwrap(),
            Some(*offset),
            "{group}"
        );
    }
    // Moving to the shard it is on, or to a shard that does not exist.
    let p = 0;
    let here = reopened.shard_of(p).unwrap();
    assert!(reopened.move_partition(p, here).is_ok());
    assert!(reopened.move_partition(p, 7).is_err());
}

#[test]
fn fetches_from_other_threads_see_acked_commits_and_never_go_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    let disk = SimDisk::new(34);
    let mut config = test_config(SIM_DATA_DIR, 4);
    config.shards = 2;
    let engine = open_sim(&disk, &config).unwrap();
    let acked = Arc::new(AtomicI64::new(-1));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let engine = engine.clone();
            let acked = Arc::clone(&acked);
            std::thread::spawn(move || {
                let mut seen = -1;
                while seen < 299 {
                    // Read the ack watermark first: the fetch that follows must see it.
                    let floor = acked.load(Ordering::Acquire);
                    let found = fetch_one(&engine, "readers", "t", 0).unwrap().unwrap_or(-1);
                    assert!(found >= floor, "fetch {found} behind ack {floor}");
                    assert!(found >= seen, "went back from {seen} to {found}");
                    seen = found;
                }
            })
        })
        .collect();
    for offset in 0..300 {
        commit_one(&engine, "readers", "t", 0, offset).unwrap();
        acked.store(offset, Ordering::Release);
    }
    for reader in readers {
        reader.join().unwrap();
    }
    let partition = engine.partition_for("readers");
    assert_eq!(
        engine.groups_of_partition(partition).unwrap(),
        vec!["readers".to_owned()]
    );
}

/// `shard_cores` pins the shards to the listed cores: an engine opens and serves on the last
/// core alone, and a core this process may not run on is refused at open, naming it, before
/// the data directory is touched.
#[test]
fn shard_cores_choose_the_cores_and_refuse_unknown_ones() {
    let available = core_affinity::get_core_ids().unwrap_or_default();
    let Some(last) = available.last().map(|core| core.id) else {
        return; // no affinity support here: nothing to pin to
    };
    let disk = SimDisk::new(71);
    let mut config = test_config(SIM_DATA_DIR, 4);
    config.shards = 2;
    config.pin_shards = true;
    config.shard_cores = vec![last];
    let engine = open_sim(&disk, &config).unwrap();
    commit_one(&engine, "pinned", "t", 0, 7).unwrap();
    assert_eq!(fetch_one(&engine, "pinned", "t", 0).unwrap(), Some(7));
    engine.close().unwrap();

    let fresh = SimDisk::new(72);
    config.shard_cores = vec![last, 1 << 20];
    let refused = open_sim(&fresh, &config).err().map(|e| e.to_string());
    let message = refused.unwrap_or_default();
    assert!(message.contains("core 1048576"), "{message}");
    assert_eq!(fresh.file_paths(), Vec::<std::path::PathBuf>::new());
    assert_eq!(fresh.writes(), 0);
}
