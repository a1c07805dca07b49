//! Damaged data directories and stored values at the limits of their types: each is refused
//! with a clear error or handled, never a panic that takes a shard down, never data removed.
//! (Found by an audit that fed the engine such input, session 14.)

use std::path::PathBuf;

use coffer::format::{
    BatchParams, BatchWriter, GroupMetadataKey, GroupMetadataValue, MemberMetadata,
    OffsetCommitKey, OffsetCommitValue,
};
use coffer::storage::SimDisk;
use coffer::{Config, Error};
use coffer_tests::{
    SIM_DATA_DIR, commit_one, fetch_one, group_test_config, join_request, open_sim,
};

fn partition_dir() -> PathBuf {
    PathBuf::from(SIM_DATA_DIR).join("__consumer_offsets-0")
}

fn segment(base_offset: i64) -> PathBuf {
    partition_dir().join(format!("{base_offset:020}.log"))
}

fn one_partition() -> Config {
    let mut config = group_test_config(1);
    config.offsets_topic_num_partitions = 1;
    config
}

/// A valid batch (CRC and all) of `records` offset commits at `base_offset`.
fn commit_batch(base_offset: i64, records: i32) -> Vec<u8> {
    let mut out = Vec::new();
    let params = BatchParams {
        base_offset,
        ..BatchParams::default()
    };
    let mut writer = BatchWriter::begin(&mut out, params);
    for partition in 0..records {
        let mut key = Vec::new();
        OffsetCommitKey {
            group: "g",
            topic: "t",
            partition,
        }
        .encode_into(&mut key);
        let value = OffsetCommitValue {
            offset: 5,
            leader_epoch: -1,
            metadata: "",
            commit_timestamp: 1,
            expire_timestamp: -1,
            topic_id: None,
        };
        let mut encoded = Vec::new();
        value.encode_into(3, &mut encoded);
        writer.append(1, &key, Some(&encoded));
    }
    writer.finish();
    out
}

/// A valid batch holding group "g"'s metadata record.
fn group_batch(value: &GroupMetadataValue) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = BatchWriter::begin(&mut out, BatchParams::default());
    let mut key = Vec::new();
    GroupMetadataKey { group: "g" }.encode_into(&mut key);
    let mut encoded = Vec::new();
    value.encode_into(3, &mut encoded);
    writer.append(1, &key, Some(&encoded));
    writer.finish();
    out
}

fn group_value(generation: i32, members: Vec<MemberMetadata>) -> GroupMetadataValue {
    GroupMetadataValue {
        protocol_type: "consumer".into(),
        generation,
        protocol: (!members.is_empty()).then(|| "range".into()),
        leader: members.first().map(|m| m.member_id.clone()),
        current_state_timestamp: 1,
        members,
    }
}

fn assert_corrupt(opened: coffer::Result<coffer::Engine>, reason_part: &str) {
    match opened {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains(reason_part), "{reason}"),
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a damaged directory opened"),
    }
}

#[test]
fn a_base_offset_near_the_top_of_i64_is_corruption_not_an_overflow() {
    // The CRC does not cover the base offset: one damaged field in a sealed segment.
    let disk = SimDisk::new(1);
    disk.put_file_bytes(&segment(0), &commit_batch(i64::MAX - 1, 3));
    disk.put_file_bytes(&segment(100), &[]);
    assert_corrupt(open_sim(&disk, &one_partition()), "base offset");
}

#[test]
fn a_segment_named_beyond_the_largest_offset_is_corruption() {
    let disk = SimDisk::new(1);
    disk.put_file_bytes(&segment(i64::MAX), &commit_batch(i64::MAX, 1));
    assert_corrupt(
        open_sim(&disk, &one_partition()),
        "beyond the largest offset",
    );
}

#[test]
fn a_stored_generation_at_i32_max_wraps_on_the_next_rebalance_as_in_kafka() {
    let disk = SimDisk::new(1);
    disk.put_file_bytes(
        &segment(0),
        &group_batch(&group_value(i32::MAX, Vec::new())),
    );
    let engine = open_sim(&disk, &one_partition()).expect("open");
    let joined = engine
        .join_group(join_request("g", "", 10_000, false))
        .wait();
    assert_eq!(joined.error, None, "{joined:?}");
    assert_eq!(joined.generation_id, i32::MIN);
    // The shard is alive.
    let described = engine.describe_groups(&["g"]).expect("describe");
    assert_eq!(described[0].members.len(), 1);
}

#[test]
fn a_member_stored_twice_is_restored_once() {
    let member = MemberMetadata {
        member_id: "c-1".into(),
        group_instance_id: Some("instance".into()),
        client_id: "c".into(),
        client_host: "h".into(),
        rebalance_timeout: 60_000,
        session_timeout: 60_000,
        subscription: vec![],
        assignment: vec![],
    };
    let disk = SimDisk::new(1);
    let value = group_value(3, vec![member.clone(), member]);
    disk.put_file_bytes(&segment(0), &group_batch(&value));
    let engine = open_sim(&disk, &one_partition()).expect("open");
    let described = engine.describe_groups(&["g"]).expect("describe");
    assert_eq!(described[0].members.len(), 1);
    let mut rejoin = join_request("g", "c-1", 60_000, false);
    rejoin.group_instance_id = Some("instance".into());
    let joined = engine.join_group(rejoin).wait();
    assert_eq!(joined.error, None, "{joined:?}");
}

#[test]
fn a_stray_swap_file_covering_the_active_segment_removes_nothing() {
    let disk = SimDisk::new(1);
    let engine = open_sim(&disk, &one_partition()).expect("open");
    commit_one(&engine, "g", "t", 0, 42).expect("commit");
    engine.close().expect("close");
    let swap = partition_dir().join(format!("{:020}.{:020}.swap", 0, 1));
    disk.put_file_bytes(&swap, &[]);
    let segments_before: Vec<_> = disk
        .file_paths()
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    let error = open_sim(&disk, &one_partition())
        .err()
        .expect("a swap past every segment is refused");
    assert!(
        error.to_string().contains("reaches past every segment"),
        "{error}"
    );
    for path in &segments_before {
        assert!(
            disk.file_bytes(path).is_some(),
            "{} removed",
            path.display()
        );
    }
    // Without the stray file the offset is all there.
    coffer::storage::Storage::remove_file(&mut disk.storage(), &swap).expect("remove");
    let engine = open_sim(&disk, &one_partition()).expect("reopen");
    assert_eq!(fetch_one(&engine, "g", "t", 0).expect("fetch"), Some(42));
}
