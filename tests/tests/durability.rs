//! Every acknowledged commit survives: clean close, simulated power cuts with torn writes,
//! and injected write and sync errors (which fail requests, never ack them).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use coffer::error::kafka_code;
use coffer::storage::{SimDisk, SimFaults};
use coffer::{CommitFuture, Engine, Error, OffsetCommit};
use coffer_tests::{SIM_DATA_DIR, commit_one, fetch_one, open_sim, test_config};

const TOPIC: &str = "events";
const PARTITIONS_PER_REQUEST: i32 = 4;
const IN_FLIGHT_MAX: usize = 16;

/// Per (group, partition): the last acknowledged offset and the last attempted one.
type Acked = HashMap<(String, i32), (i64, i64)>;

/// Commits `rounds` requests of 4 partitions each to the thread's groups with up to 16 in
/// flight; offsets grow per key. Stops at the first failure (when `stop` is set, or on
/// error) and returns what was acknowledged.
fn committer(engine: Engine, thread: usize, rounds: i64, stop: Arc<AtomicBool>) -> Acked {
    let groups: Vec<String> = (0..3).map(|g| format!("t{thread}-g{g}")).collect();
    let mut acked = Acked::new();
    let mut in_flight: std::collections::VecDeque<(CommitFuture, String, i64)> =
        std::collections::VecDeque::new();
    let settle = |acked: &mut Acked, (future, group, offset): (CommitFuture, String, i64)| {
        let ok = future.wait().is_ok();
        for partition in 0..PARTITIONS_PER_REQUEST {
            let entry = acked.entry((group.clone(), partition)).or_insert((-1, -1));
            entry.1 = entry.1.max(offset);
            if ok {
                entry.0 = entry.0.max(offset);
            }
        }
        ok
    };
    for round in 0..rounds {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let group = groups[(round % 3) as usize].clone();
        let offsets: Vec<OffsetCommit<'_>> = (0..PARTITIONS_PER_REQUEST)
            .map(|partition| OffsetCommit {
                topic: TOPIC,
                partition,
                offset: round,
                leader_epoch: Some(0),
                metadata: "",
            })
            .collect();
        let future = engine.commit_offsets(&group, &offsets);
        in_flight.push_back((future, group, round));
        if in_flight.len() >= IN_FLIGHT_MAX
            && let Some(oldest) = in_flight.pop_front()
            && !settle(&mut acked, oldest)
        {
            break;
        }
    }
    for pending in in_flight {
        settle(&mut acked, pending);
    }
    acked
}

fn run_committers(
    engine: &Engine,
    threads: usize,
    rounds: i64,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Acked>> {
    (0..threads)
        .map(|thread| {
            let engine = engine.clone();
            let stop = Arc::clone(stop);
            std::thread::spawn(move || committer(engine, thread, rounds, stop))
        })
        .collect()
}

fn merge(handles: Vec<std::thread::JoinHandle<Acked>>) -> Acked {
    let mut all = Acked::new();
    for handle in handles {
        all.extend(handle.join().unwrap());
    }
    all
}

#[test]
fn concurrent_committers_then_clean_reopen_keep_every_acknowledged_commit() {
    // Every way of syncing a group commit: per segment file, one syncfs per flush, and one
    // journal fdatasync per flush.
    for fsync_scope in [
        coffer::FsyncScope::File,
        coffer::FsyncScope::Filesystem,
        coffer::FsyncScope::Journal,
    ] {
        committers_then_reopen(fsync_scope);
    }
}

fn committers_then_reopen(fsync_scope: coffer::FsyncScope) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), 8);
    config.fsync_scope = fsync_scope;
    let engine = Engine::open(config.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = merge(run_committers(&engine, 8, 300, &stop));
    let metrics = engine.metrics().unwrap();
    let sum = |f: fn(&coffer::ShardMetrics) -> u64| metrics.iter().map(f).sum::<u64>();
    let expected_syncs = match fsync_scope {
        coffer::FsyncScope::File => sum(|m| m.batches),
        coffer::FsyncScope::Filesystem => sum(|m| m.flushes),
        // No checkpoint at this size: the journal file never fills.
        coffer::FsyncScope::Journal => sum(|m| m.flushes),
    };
    assert_eq!(sum(|m| m.journal_checkpoints), 0);
    assert_eq!(sum(|m| m.syncs), expected_syncs, "{fsync_scope:?}");
    engine.close().unwrap();
    drop(engine);

    let reopened = Engine::open(config).unwrap();
    assert_eq!(acked.len(), 8 * 3 * PARTITIONS_PER_REQUEST as usize);
    for ((group, partition), (last_acked, _)) in &acked {
        assert!(*last_acked >= 0);
        assert_eq!(
            fetch_one(&reopened, group, TOPIC, *partition).unwrap(),
            Some(*last_acked),
            "{group}/{partition} with {fsync_scope:?}"
        );
    }
    reopened.close().unwrap();
}

#[test]
fn power_cuts_with_torn_writes_lose_no_acknowledged_commit() {
    for seed in 0..6u64 {
        let disk = SimDisk::new(seed);
        let mut config = test_config(SIM_DATA_DIR, 4);
        // Half the runs with preallocated segments: the crash leaves zeros past the data.
        config.log_preallocate = seed % 2 == 0;
        let engine = open_sim(&disk, &config).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handles = run_committers(&engine, 4, 100_000, &stop);
        std::thread::sleep(std::time::Duration::from_millis(30 + seed * 10));
        disk.crash();
        stop.store(true, Ordering::Relaxed);
        let acked = merge(handles);
        drop(engine);

        let reopened = open_sim(&disk, &config).unwrap();
        let mut acked_commits = 0;
        for ((group, partition), (last_acked, last_tried)) in &acked {
            let found = fetch_one(&reopened, group, TOPIC, *partition).unwrap();
            let found = found.unwrap_or(-1);
            // Never older than the last ack; never something that was not committed.
            assert!(
                found >= *last_acked,
                "seed {seed} {group}/{partition}: {found} < {last_acked}"
            );
            assert!(
                found <= *last_tried,
                "seed {seed} {group}/{partition}: {found} > {last_tried}"
            );
            acked_commits += usize::from(*last_acked >= 0);
        }
        assert!(
            acked_commits > 0,
            "seed {seed}: the workload ran before the crash"
        );
        reopened.close().unwrap();
    }
}

#[test]
fn an_injected_sync_error_fails_the_request_and_the_partition_closed() {
    let disk = SimDisk::new(21);
    let config = test_config(SIM_DATA_DIR, 4);
    let engine = open_sim(&disk, &config).unwrap();
    // Two groups on different offsets partitions.
    let (a, b) = ("group-a", "group-b");
    assert_ne!(engine.partition_for(a), engine.partition_for(b));
    commit_one(&engine, a, TOPIC, 0, 1).unwrap();
    commit_one(&engine, b, TOPIC, 0, 1).unwrap();

    disk.fail_next_syncs(1);
    let error = commit_one(&engine, a, TOPIC, 0, 2).unwrap_err();
    assert!(matches!(error, Error::PartitionFailed { .. }), "{error}");
    assert_eq!(error.kafka_error_code(), Some(kafka_code::NOT_COORDINATOR));
    assert!(error.is_retriable());
    // Failed closed: no retry of the sync, no further writes to that partition.
    let writes = disk.writes();
    assert!(matches!(
        commit_one(&engine, a, TOPIC, 0, 3),
        Err(Error::PartitionFailed { .. })
    ));
    assert_eq!(disk.writes(), writes);
    // Other partitions carry on.
    commit_one(&engine, b, TOPIC, 0, 2).unwrap();

    // Recovery from disk: the acked commit is there, the failed one may or may not be.
    disk.crash();
    drop(engine);
    let reopened = open_sim(&disk, &config).unwrap();
    let found = fetch_one(&reopened, a, TOPIC, 0).unwrap();
    assert!(found == Some(1) || found == Some(2), "{found:?}");
    assert_eq!(fetch_one(&reopened, b, TOPIC, 0).unwrap(), Some(2));
    commit_one(&reopened, a, TOPIC, 0, 4).unwrap();
}

#[test]
fn an_injected_write_error_fails_the_request_and_keeps_the_log_readable() {
    for fsync_scope in [coffer::FsyncScope::File, coffer::FsyncScope::Journal] {
        let disk = SimDisk::new(22);
        let mut config = test_config(SIM_DATA_DIR, 1);
        config.fsync_scope = fsync_scope;
        let engine = open_sim(&disk, &config).unwrap();
        commit_one(&engine, "g", TOPIC, 0, 1).unwrap();
        // The flush's first write fails part way: the segment's (per-file syncs), or the
        // journal's (with the journal, a small batch is only staged for its segment).
        disk.fail_next_writes(1);
        assert!(matches!(
            commit_one(&engine, "g", TOPIC, 0, 2),
            Err(Error::PartitionFailed { .. })
        ));
        drop(engine);
        // Without a crash, what the page cache holds is read back: the partial write is a
        // torn tail that recovery cuts (in the segment, or in the journal).
        let reopened = open_sim(&disk, &config).unwrap();
        let found = fetch_one(&reopened, "g", TOPIC, 0).unwrap();
        assert_eq!(found, Some(1), "{fsync_scope:?}");
        commit_one(&reopened, "g", TOPIC, 0, 3).unwrap();
        reopened.close().unwrap();
        let again = open_sim(&disk, &config).unwrap();
        assert_eq!(fetch_one(&again, "g", TOPIC, 0).unwrap(), Some(3));
    }
}

#[test]
fn random_write_and_sync_faults_then_a_crash_lose_no_acknowledged_commit() {
    for seed in 100..104u64 {
        let disk = SimDisk::new(seed);
        let config = test_config(SIM_DATA_DIR, 4);
        let engine = open_sim(&disk, &config).unwrap();
        disk.set_faults(SimFaults {
            write_error_one_in: 200,
            sync_error_one_in: 200,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let acked = merge(run_committers(&engine, 3, 400, &stop));
        disk.crash();
        drop(engine);
        disk.set_faults(SimFaults::default());
        let reopened = open_sim(&disk, &config).unwrap();
        for ((group, partition), (last_acked, last_tried)) in &acked {
            let found = fetch_one(&reopened, group, TOPIC, *partition)
                .unwrap()
                .unwrap_or(-1);
            assert!(
                found >= *last_acked && found <= *last_tried,
                "seed {seed} {group}/{partition}: found {found} acked {last_acked} tried {last_tried}"
            );
        }
    }
}

#[test]
fn refusing_requests_of_a_failed_partition_keeps_arrival_order_for_the_rest() {
    // Regression: refused requests were removed by swap_remove, which moved a later commit
    // ahead of an earlier one for the same key, so coalescing kept the older offset.
    let disk = SimDisk::new(23);
    let mut config = test_config(SIM_DATA_DIR, 4);
    // A long linger puts everything below into one flush.
    config.group_commit_linger_us = 200_000;
    let engine = open_sim(&disk, &config).unwrap();
    let (healthy, failing) = ("group-a", "group-b");
    assert_ne!(engine.partition_for(healthy), engine.partition_for(failing));
    disk.fail_next_syncs(1);
    assert!(commit_one(&engine, failing, TOPIC, 0, 1).is_err());

    let commit = |group: &'static str, offset: i64| {
        let offsets = [OffsetCommit {
            topic: TOPIC,
            partition: 0,
            offset,
            leader_epoch: None,
            metadata: "",
        }];
        engine.commit_offsets(group, &offsets)
    };
    let futures = [
        commit(failing, 2),
        commit(healthy, 10),
        commit(healthy, 11),
        commit(healthy, 12),
    ];
    let results: Vec<_> = futures.into_iter().map(CommitFuture::wait).collect();
    assert!(results[0].is_err());
    assert!(results[1..].iter().all(Result::is_ok));
    assert_eq!(fetch_one(&engine, healthy, TOPIC, 0).unwrap(), Some(12));
    engine.close().unwrap_or(());
    drop(engine);
    let reopened = open_sim(&disk, &config).unwrap();
    assert_eq!(fetch_one(&reopened, healthy, TOPIC, 0).unwrap(), Some(12));
}

#[test]
fn a_stalled_disk_fails_commits_at_the_commit_timeout_with_a_retriable_error() {
    let disk = SimDisk::new(24);
    let mut config = test_config(SIM_DATA_DIR, 1);
    config.offsets_commit_timeout_ms = 150;
    config.request_queue_depth_max = 1;
    let engine = open_sim(&disk, &config).unwrap();
    commit_one(&engine, "g", TOPIC, 0, 1).unwrap();
    disk.set_write_stall(std::time::Duration::from_millis(1500));
    let started = std::time::Instant::now();
    // The first commit waits inside the stalled flush; the next ones queue behind it until
    // the inbox (depth 1) is full, so the last can't even be queued: all time out.
    let futures: Vec<CommitFuture> = (2..5)
        .map(|offset| {
            let offsets = [OffsetCommit {
                topic: TOPIC,
                partition: 0,
                offset,
                leader_epoch: None,
                metadata: "",
            }];
            engine.commit_offsets("g", &offsets)
        })
        .collect();
    for future in futures {
        let error = future.wait().unwrap_err();
        assert!(
            matches!(error, Error::CommitTimeout { timeout_ms: 150 }),
            "{error}"
        );
        assert_eq!(
            error.kafka_error_code(),
            Some(kafka_code::COORDINATOR_NOT_AVAILABLE)
        );
        assert!(error.is_retriable());
    }
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1200),
        "gave up at the deadline"
    );
    disk.set_write_stall(std::time::Duration::ZERO);
    std::thread::sleep(std::time::Duration::from_millis(1500)); // the stalled flush ends
    // Once the disk answers again the engine carries on; a timed-out commit may or may not
    // have become durable (as in Kafka), but never anything else.
    commit_one(&engine, "g", TOPIC, 0, 9).unwrap();
    assert_eq!(fetch_one(&engine, "g", TOPIC, 0).unwrap(), Some(9));
}
