//! An engine on real files gives back every descriptor it opened when it closes. A storage
//! dropped with an io_uring operation still pending keeps that operation's descriptors open
//! (the kernel may still use their numbers), so this checks that a normal life — commits,
//! journal checkpoints, rolls, a compaction, close — leaves none pending. Its own test
//! binary: other tests' files would move the process's descriptor count.

use std::time::{Duration, Instant};

use coffer::{Config, Engine};
use coffer_tests::{commit_one, test_config};

/// Descriptors the process holds.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// Opens an engine, commits enough to checkpoint the journal and roll segments, compacts,
/// and closes it.
fn engine_life(config: &Config) {
    let engine = Engine::open(config.clone()).expect("engine opens");
    for i in 0..600i64 {
        let group = format!("group-{}", i % 40);
        commit_one(&engine, &group, "orders", (i % 8) as i32, i).expect("commit");
    }
    engine.compact(i64::MAX / 2).expect("compaction");
    engine.close().expect("close");
}

#[test]
fn closing_an_engine_gives_back_every_descriptor_it_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path(), 4);
    config.shards = 1;
    config.pin_shards = false;
    config.log_preallocate = true;
    // Once first: anything opened once per process (std's lazily opened files) is open
    // before the count.
    engine_life(&config);
    let before = open_descriptors();
    for _ in 0..3 {
        engine_life(&config);
    }
    // The shard threads finish dropping their storage just after close returns.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_descriptors() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open_descriptors(), before, "descriptors left open");
}
