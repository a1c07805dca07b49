//! The steady-state commit path allocates nothing (issue 3): a counting global allocator
//! watches the whole process — caller, engine handle, shard thread, storage — while a warmed
//! engine on a real data directory takes thousands of durable commits of a fixed key set.
//! Heartbeats allocate nothing either, through the engine handle and the shard-local API
//! (issue 6).
//!
//! This file is its own test binary so the counting allocator sees only this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use coffer::group::GroupError;
use coffer::{CommitFuture, Config, Engine, OffsetCommit};

/// Counts allocations (and reallocations) while `COUNTING` is set.
struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Set by `COFFER_ALLOC_TRAP=1`: the first counted allocation prints its backtrace (and
/// stops the counting, so printing cannot recurse), to find what allocated.
static TRAP: AtomicBool = AtomicBool::new(false);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        if TRAP.load(Ordering::Relaxed) && COUNTING.swap(false, Ordering::Relaxed) {
            eprintln!("{}", std::backtrace::Backtrace::force_capture());
        }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const GROUPS: usize = 8;
const PARTITIONS_PER_REQUEST: i32 = 4;
const TOPIC: &str = "payments";
const METADATA: &str = "consumer-7@host-3";

/// Commits `rounds` requests, `window` in flight at a time (in `in_flight`, allocated by
/// the caller), each group's offsets rising.
fn commit_rounds(
    engine: &Engine,
    groups: &[String],
    rounds: usize,
    (window, in_flight): (usize, &mut VecDeque<CommitFuture>),
    seq: &mut i64,
) {
    for round in 0..rounds {
        let group = &groups[round % groups.len()];
        *seq += 1;
        let offset = *seq;
        let commits: [OffsetCommit<'_>; PARTITIONS_PER_REQUEST as usize] =
            std::array::from_fn(|i| OffsetCommit {
                topic: TOPIC,
                partition: i as i32,
                offset,
                leader_epoch: Some(5),
                metadata: METADATA,
            });
        if in_flight.len() == window
            && let Some(oldest) = in_flight.pop_front()
        {
            oldest.wait().expect("commit acknowledged");
        }
        in_flight.push_back(engine.commit_offsets(group, &commits));
    }
    for future in in_flight.drain(..) {
        future.wait().expect("commit acknowledged");
    }
}

#[test]
fn steady_state_commits_allocate_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(dir.path());
    config.offsets_topic_num_partitions = 4;
    config.offsets_topic_segment_bytes = 64 << 20;
    config.shards = 1;
    config.pin_shards = false;
    let engine = Engine::open(config).expect("engine opens");
    let groups: Vec<String> = (0..GROUPS).map(|g| format!("group-{g}")).collect();
    let mut seq = 0;
    TRAP.store(
        std::env::var_os("COFFER_ALLOC_TRAP").is_some(),
        Ordering::Relaxed,
    );

    let mut in_flight = VecDeque::with_capacity(32);
    for window in [1, 32] {
        // Warm up: pools fill, buffers and tables reach their steady sizes. The pauses let
        // the shard block on its empty inbox, which sets up the channel's per-thread waiting
        // context once (it would otherwise happen, once, whenever the shard first idles).
        commit_rounds(&engine, &groups, 2_000, (window, &mut in_flight), &mut seq);
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            commit_rounds(&engine, &groups, GROUPS, (window, &mut in_flight), &mut seq);
        }

        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let rounds = 3_000;
        commit_rounds(&engine, &groups, rounds, (window, &mut in_flight), &mut seq);
        COUNTING.store(false, Ordering::Relaxed);
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        assert_eq!(
            allocations, 0,
            "{allocations} allocations over {rounds} commits with {window} in flight"
        );
    }

    // The counted commits really happened: group 0 committed every GROUPS-th sequence
    // number (1, 1 + GROUPS, ...), and its last one is what is served.
    let last_of_group_0 = seq - (seq - 1) % GROUPS as i64;
    let fetched = engine
        .fetch_offsets(&groups[0], &[(TOPIC, 0), (TOPIC, 3)])
        .expect("fetch");
    let got: Vec<Option<i64>> = fetched
        .iter()
        .map(|c| c.as_ref().map(|c| c.offset))
        .collect();
    assert_eq!(got, vec![Some(last_of_group_0); 2]);
    assert_eq!(engine.metrics().expect("metrics")[0].commit_errors, 0);
    engine_heartbeats_allocate_nothing(&engine);
    engine.close().expect("clean close");

    // One test function, not two: the counter is process-wide and tests run in parallel.
    local_shard_heartbeats_allocate_nothing();
}

/// The SyncGroup of a group's only member (its own leader), assigning it nothing.
fn sync_alone(group: &str, member: &str, generation_id: i32) -> coffer::group::SyncGroupRequest {
    coffer::group::SyncGroupRequest {
        group_id: group.into(),
        member_id: member.into(),
        group_instance_id: None,
        generation_id,
        protocol_type: None,
        protocol_name: None,
        assignments: vec![(member.into(), Vec::new())],
    }
}

/// Heartbeats through the engine handle allocate nothing once warm: those the session board
/// answers on the caller's thread, and those that go to the shard (here: a stale
/// generation; request and completion slot pooled).
fn engine_heartbeats_allocate_nothing(engine: &Engine) {
    let joined = engine
        .join_group(coffer_tests::join_request("hb-engine", "", 30_000, false))
        .wait();
    assert_eq!(joined.error, None);
    let member = joined.member_id;
    let sync = sync_alone("hb-engine", &member, joined.generation_id);
    assert_eq!(engine.sync_group(sync).wait().error, None);
    let beat = |generation_id| {
        engine
            .heartbeat("hb-engine", &member, None, generation_id)
            .wait()
    };
    let stale = joined.generation_id - 1;
    for _ in 0..1_000 {
        assert_eq!(beat(joined.generation_id), Ok(()));
        assert_eq!(beat(stale), Err(GroupError::IllegalGeneration));
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let accepted = (0..10_000)
        .filter(|_| beat(joined.generation_id).is_ok())
        .count();
    let fenced = (0..10_000).filter(|_| beat(stale).is_err()).count();
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!((accepted, fenced), (10_000, 10_000));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations over 20,000 engine heartbeats"
    );
}

/// Heartbeats through the shard-local API (a thread-per-core broker's path) allocate nothing.
fn local_shard_heartbeats_allocate_nothing() {
    use coffer::LocalShard;
    use coffer::group::{JoinGroupRequest, JoinProtocol};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new(dir.path());
    config.offsets_topic_num_partitions = 2;
    config.offsets_topic_segment_bytes = 1 << 20;
    config.shards = 1;
    config.log_cleaner_enable = false;
    config.groups.group_initial_rebalance_delay_ms = 0;
    let mut shards = LocalShard::open_all(config).expect("shard opens");
    let shard = &mut shards[0];
    let join = JoinGroupRequest {
        group_id: "hb".into(),
        member_id: String::new(),
        group_instance_id: None,
        client_id: "consumer".into(),
        client_host: "/10.0.0.9".into(),
        session_timeout_ms: 30_000,
        rebalance_timeout_ms: 60_000,
        protocol_type: "consumer".into(),
        protocols: vec![JoinProtocol {
            name: "range".into(),
            metadata: Vec::new(),
        }],
        require_known_member_id: false,
    };
    let joined = shard.join_group(join).wait();
    let member = joined.member_id;
    let sync = sync_alone("hb", &member, joined.generation_id);
    let synced = shard.sync_group(sync);
    shard.flush(); // writes the group's metadata, which answers the sync
    assert_eq!(synced.wait().error, None);

    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let mut accepted = 0;
    for _ in 0..10_000 {
        accepted += usize::from(
            shard
                .heartbeat("hb", &member, None, joined.generation_id)
                .is_ok(),
        );
    }
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(accepted, 10_000);
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "heartbeats allocated"
    );
}
