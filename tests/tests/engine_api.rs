//! The public API: bad input gets a typed error with Kafka's code and writes nothing; data
//! directories that cannot be used are refused; two engines never share a directory.

use coffer::error::kafka_code;
use coffer::storage::SimDisk;
use coffer::{Engine, Error, OffsetCommit};
use coffer_tests::{SIM_DATA_DIR, commit_one, fetch_one, open_sim, test_config};

fn offset<'a>(topic: &'a str, partition: i32, offset: i64, metadata: &'a str) -> OffsetCommit<'a> {
    OffsetCommit {
        topic,
        partition,
        offset,
        leader_epoch: None,
        metadata,
    }
}

#[test]
fn bad_input_is_refused_with_kafka_codes_and_writes_nothing() {
    let disk = SimDisk::new(1);
    let config = test_config(SIM_DATA_DIR, 2);
    let engine = open_sim(&disk, &config).unwrap();
    commit_one(&engine, "g", "t", 0, 5).unwrap();
    let writes_before = disk.writes();

    let long = "x".repeat(32768);
    let metadata = "m".repeat(4097);
    let cases: Vec<(&str, Vec<OffsetCommit<'_>>, i16)> = vec![
        (
            "",
            vec![offset("t", 0, 1, "")],
            kafka_code::INVALID_GROUP_ID,
        ),
        (
            &long,
            vec![offset("t", 0, 1, "")],
            kafka_code::INVALID_GROUP_ID,
        ),
        (
            "g",
            vec![offset("", 0, 1, "")],
            kafka_code::INVALID_TOPIC_EXCEPTION,
        ),
        (
            "g",
            vec![offset(&long, 0, 1, "")],
            kafka_code::INVALID_TOPIC_EXCEPTION,
        ),
        (
            "g",
            vec![offset("t", -1, 1, "")],
            kafka_code::UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (
            "g",
            vec![offset("t", 0, -1, "")],
            kafka_code::INVALID_REQUEST,
        ),
        (
            "g",
            vec![offset("t", 0, 1, &metadata)],
            kafka_code::OFFSET_METADATA_TOO_LARGE,
        ),
        // One bad entry spoils the whole request: the good one before it is not written.
        (
            "g",
            vec![offset("t", 0, 9, ""), offset("t", 1, -5, "")],
            kafka_code::INVALID_REQUEST,
        ),
    ];
    for (group, offsets, code) in &cases {
        let error = engine.commit_offsets(group, offsets).wait().unwrap_err();
        assert_eq!(error.kafka_error_code(), Some(*code), "{error}");
        assert!(!error.is_retriable());
    }
    let negative_epoch = OffsetCommit {
        leader_epoch: Some(-2),
        ..offset("t", 0, 1, "")
    };
    assert!(
        engine
            .commit_offsets("g", &[negative_epoch])
            .wait()
            .is_err()
    );
    assert!(matches!(
        engine.fetch_offsets("", &[("t", 0)]),
        Err(Error::InvalidGroupId(_))
    ));

    assert_eq!(
        disk.writes(),
        writes_before,
        "nothing written for bad input"
    );
    assert_eq!(fetch_one(&engine, "g", "t", 0).unwrap(), Some(5));
    assert_eq!(fetch_one(&engine, "g", "t", 1).unwrap(), None);
    // Metadata exactly at the limit is fine.
    let at_limit = "m".repeat(4096);
    engine
        .commit_offsets("g", &[offset("t", 0, 6, &at_limit)])
        .wait()
        .unwrap();
    engine.close().unwrap();
}

#[test]
fn empty_commit_resolves_without_writing() {
    let disk = SimDisk::new(2);
    let engine = open_sim(&disk, &test_config(SIM_DATA_DIR, 1)).unwrap();
    let writes_before = disk.writes();
    engine.commit_offsets("g", &[]).wait().unwrap();
    assert_eq!(disk.writes(), writes_before);
}

#[test]
fn last_offset_for_a_partition_in_one_request_wins() {
    let disk = SimDisk::new(3);
    let config = test_config(SIM_DATA_DIR, 1);
    let engine = open_sim(&disk, &config).unwrap();
    let offsets = [
        offset("t", 0, 1, "a"),
        offset("t", 0, 2, "b"),
        offset("t", 1, 3, "c"),
    ];
    engine.commit_offsets("g", &offsets).wait().unwrap();
    engine.close().unwrap();
    let engine = open_sim(&disk, &config).unwrap();
    let all = engine.fetch_all_offsets("g").unwrap();
    let got: Vec<_> = all
        .iter()
        .map(|o| {
            (
                o.partition,
                o.committed.offset,
                o.committed.metadata.as_str(),
            )
        })
        .collect();
    assert_eq!(got, vec![(0, 2, "b"), (1, 3, "c")]);
}

#[test]
fn data_directory_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"keep me").unwrap();
    let error = Engine::open(test_config(&file, 1)).err().unwrap();
    assert!(matches!(error, Error::DataDirNotDirectory(_)), "{error}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me", "nothing damaged");
}

#[test]
fn a_locked_data_directory_is_refused_on_disk_and_in_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), 2);
    let first = Engine::open(config.clone()).unwrap();
    commit_one(&first, "g", "t", 0, 7).unwrap();
    let error = Engine::open(config.clone()).err().unwrap();
    assert!(matches!(error, Error::DataDirLocked(_)), "{error}");
    assert_eq!(
        fetch_one(&first, "g", "t", 0).unwrap(),
        Some(7),
        "first engine unharmed"
    );
    first.close().unwrap();
    // Once closed, the directory opens again with everything in it.
    let second = Engine::open(config).unwrap();
    assert_eq!(fetch_one(&second, "g", "t", 0).unwrap(), Some(7));
    second.close().unwrap();

    let disk = SimDisk::new(4);
    let config = test_config(SIM_DATA_DIR, 1);
    let _held = open_sim(&disk, &config).unwrap();
    assert!(matches!(
        open_sim(&disk, &config),
        Err(Error::DataDirLocked(_))
    ));
}

#[test]
fn an_unwritable_data_directory_is_refused() {
    let disk = SimDisk::new(5);
    disk.set_read_only(true);
    let error = open_sim(&disk, &test_config(SIM_DATA_DIR, 1))
        .err()
        .unwrap();
    assert!(matches!(error, Error::DataDirUnwritable { .. }), "{error}");
    assert!(disk.file_paths().is_empty(), "nothing written");
}

#[test]
fn a_closed_engine_refuses_calls_from_every_clone() {
    let disk = SimDisk::new(6);
    let engine = open_sim(&disk, &test_config(SIM_DATA_DIR, 1)).unwrap();
    let clone = engine.clone();
    engine.close().unwrap();
    let error = commit_one(&clone, "g", "t", 0, 1).unwrap_err();
    assert!(matches!(error, Error::Closed));
    assert_eq!(error.kafka_error_code(), Some(kafka_code::NOT_COORDINATOR));
    assert!(matches!(
        clone.fetch_offsets("g", &[("t", 0)]),
        Err(Error::Closed)
    ));
}

#[test]
fn commit_future_can_be_awaited_from_an_async_context() {
    let disk = SimDisk::new(7);
    let engine = open_sim(&disk, &test_config(SIM_DATA_DIR, 1)).unwrap();
    let future = engine.commit_offsets("g", &[offset("t", 0, 3, "")]);
    // A minimal executor: poll with a thread-unparking waker until ready.
    let result = block_on(future);
    assert!(result.is_ok());
    assert_eq!(fetch_one(&engine, "g", "t", 0).unwrap(), Some(3));
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn metrics_count_what_was_committed_per_shard() {
    let disk = SimDisk::new(8);
    let mut config = test_config(SIM_DATA_DIR, 6);
    config.shards = 2;
    // One sync per batch, so the disk's count matches exactly (a journal adds the syncs
    // that create its files; durability.rs checks its counts).
    config.fsync_scope = coffer::FsyncScope::File;
    let engine = open_sim(&disk, &config).unwrap();
    let syncs_before = disk.syncs();
    for round in 0..20 {
        let group = format!("g{}", round % 5);
        let offsets = [offset("t", 0, round, ""), offset("t", 1, round, "")];
        engine.commit_offsets(&group, &offsets).wait().unwrap();
    }
    assert!(
        commit_one(&engine, "g0", "t", -1, 0).is_err(),
        "refused before the shard"
    );
    let metrics = engine.metrics().unwrap();
    assert_eq!(metrics.len(), 2);
    assert_eq!(
        metrics.iter().map(|m| m.shard).collect::<Vec<_>>(),
        vec![0, 1]
    );
    let sum = |f: fn(&coffer::ShardMetrics) -> u64| metrics.iter().map(f).sum::<u64>();
    assert_eq!(sum(|m| m.commits), 20);
    assert_eq!(sum(|m| m.partition_offsets), 40);
    assert_eq!(sum(|m| m.commit_errors), 0);
    // Each request waited for its own flush here, so nothing was coalesced.
    assert_eq!(sum(|m| m.records), 40);
    assert_eq!(sum(|m| m.syncs), sum(|m| m.batches));
    assert_eq!(sum(|m| m.syncs), disk.syncs() - syncs_before);
    assert!(sum(|m| m.bytes) > 40 * 20);
    assert_eq!(sum(|m| m.commit_latency_us.len()), 20);
    assert_eq!(sum(|m| m.flush_latency_us.len()), sum(|m| m.flushes));
    engine.close().unwrap();
    assert!(matches!(engine.metrics(), Err(Error::Closed)));
}

#[test]
fn an_idle_shard_frees_the_cache_memory_its_updates_retired() {
    let disk = SimDisk::new(9);
    let mut config = test_config(SIM_DATA_DIR, 2);
    config.shards = 1;
    let engine = open_sim(&disk, &config).unwrap();
    // Each new metadata string replaces (retires) the previous one: fewer retirements than
    // the writer's own collection batch, so only idle collection can free them.
    for round in 0..10 {
        let metadata = format!("consumer-{round}");
        let offsets = [offset("t", 0, round, &metadata)];
        engine.commit_offsets("g", &offsets).wait().unwrap();
        assert_eq!(fetch_one(&engine, "g", "t", 0).unwrap(), Some(round));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pending = loop {
        let pending = engine.metrics().unwrap()[0].cache_garbage_pending;
        if pending == 0 || std::time::Instant::now() > deadline {
            break pending;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(pending, 0, "retired metadata strings still held");
    engine.close().unwrap();
}
