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
