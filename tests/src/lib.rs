//! Shared helpers for coffer integration tests.

use std::path::{Path, PathBuf};

use coffer::storage::SimDisk;
use coffer::{Config, Engine, OffsetCommit, Result};

/// The data directory used on simulated disks.
pub const SIM_DATA_DIR: &str = "/coffer-data";

/// A small config for tests: few partitions, minimum segment size, no preallocation unless
/// asked (so file lengths equal data lengths), and no background compactor (tests that look
/// at segment files need them as written; compaction tests turn it on or call
/// `Engine::compact`).
pub fn test_config(data_dir: impl Into<PathBuf>, partitions: u32) -> Config {
    let mut config = Config::new(data_dir);
    config.offsets_topic_num_partitions = partitions;
    config.offsets_topic_segment_bytes = coffer::config::SEGMENT_BYTES_MIN;
    config.log_preallocate = false;
    config.log_cleaner_enable = false;
    // Small journal files: the simulated disk holds every reserved byte in memory, and
    // tests should see journal rotations and checkpoints.
    config.group_commit_bytes_max = TEST_GROUP_COMMIT_BYTES_MAX;
    config.journal_file_bytes = TEST_JOURNAL_FILE_BYTES;
    config
}

/// `group_commit_bytes_max` in [`test_config`].
pub const TEST_GROUP_COMMIT_BYTES_MAX: usize = 1024 * 1024;
/// `journal_file_bytes` in [`test_config`]: the smallest a 1 MiB flush cap allows, rounded
/// up to 4 MiB.
pub const TEST_JOURNAL_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// [`test_config`] for consumer-group tests on the simulated disk: 4 offsets partitions,
/// `shards` unpinned shards, no initial rebalance delay, sessions down to 10 ms allowed.
pub fn group_test_config(shards: usize) -> Config {
    let mut config = test_config(SIM_DATA_DIR, 4);
    config.shards = shards;
    config.pin_shards = false;
    config.groups.group_initial_rebalance_delay_ms = 0;
    config.groups.group_min_session_timeout_ms = 10;
    config
}

/// Opens an engine on a simulated disk.
pub fn open_sim(disk: &SimDisk, config: &Config) -> Result<Engine> {
    let disk = disk.clone();
    Engine::open_with_storage(config.clone(), &move || Ok(Box::new(disk.storage())))
}

/// Commits one offset and waits for it to be durable.
pub fn commit_one(
    engine: &Engine,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<()> {
    commit_with_metadata(engine, group, topic, partition, offset, "")
}

/// Commits one offset with metadata and waits for it to be durable.
pub fn commit_with_metadata(
    engine: &Engine,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    metadata: &str,
) -> Result<()> {
    let commit = OffsetCommit {
        topic,
        partition,
        offset,
        leader_epoch: Some(1),
        metadata,
    };
    engine.commit_offsets(group, &[commit]).wait()
}

/// The committed offset of one topic partition, if any.
pub fn fetch_one(engine: &Engine, group: &str, topic: &str, partition: i32) -> Result<Option<i64>> {
    let fetched = engine.fetch_offsets(group, &[(topic, partition)])?;
    Ok(fetched.into_iter().next().flatten().map(|c| c.offset))
}

/// Segment files of one offsets partition on a simulated disk, in offset order.
pub fn sim_segments(disk: &SimDisk, partition: u32) -> Vec<PathBuf> {
    let dir = Path::new(SIM_DATA_DIR).join(format!("__consumer_offsets-{partition}"));
    let mut segments: Vec<PathBuf> = disk
        .file_paths()
        .into_iter()
        .filter(|p| p.parent() == Some(dir.as_path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments
}

/// Byte ranges of the batches in a segment's bytes.
pub fn batch_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut position = 0;
    while let Ok(view) = coffer::format::parse_batch(&bytes[position..]) {
        ranges.push(position..position + view.total_bytes());
        position += view.total_bytes();
    }
    ranges
}

/// A consumer's JoinGroup request for `group` (protocol type "consumer", the "range"
/// assignor, a 60 s rebalance timeout); `require_known_member_id` as v4+ clients send it.
pub fn join_request(
    group: &str,
    member_id: &str,
    session_timeout_ms: i32,
    require_known_member_id: bool,
) -> coffer::group::JoinGroupRequest {
    coffer::group::JoinGroupRequest {
        group_id: group.into(),
        member_id: member_id.into(),
        group_instance_id: None,
        client_id: "consumer".into(),
        client_host: "/10.0.0.7".into(),
        session_timeout_ms,
        rebalance_timeout_ms: 60_000,
        protocol_type: "consumer".into(),
        protocols: vec![coffer::group::JoinProtocol {
            name: "range".into(),
            metadata: b"orders".to_vec(),
        }],
        require_known_member_id,
    }
}
