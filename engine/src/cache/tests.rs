//! Unit tests, a model-based proptest and a multi-threaded stress test (std threads; the
//! exhaustive interleaving checks are the loom models in `loom_tests.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;

use super::*;

fn key<'a>(group: &'a str, topic: &'a str, partition: i32) -> OffsetKey<'a> {
    OffsetKey {
        group,
        topic,
        partition,
    }
}

fn val(offset: i64, metadata: &str) -> OffsetValueRef<'_> {
    OffsetValueRef {
        offset,
        leader_epoch: (offset % 1000) as i32,
        commit_timestamp_ms: offset.wrapping_mul(10),
        expire_timestamp_ms: -1,
        metadata,
    }
}

#[test]
fn expire_timestamps_live_beside_the_metadata_and_round_trip() {
    let mut c = OffsetCache::new();
    let r = c.reader();
    let expiring = |offset, expire, metadata| OffsetValueRef {
        expire_timestamp_ms: expire,
        ..val(offset, metadata)
    };
    // Expire timestamp without metadata, then with, then neither, then metadata alone.
    let steps = [
        (1, 1_700_000_000_000, ""),
        (2, 1_800_000_000_000, "m"),
        (3, -1, ""),
        (4, -1, "m"),
    ];
    for (offset, expire, metadata) in steps {
        c.upsert(
            key("g", "t", 0),
            expiring(offset, expire, metadata),
            offset as u64,
        )
        .unwrap();
        let got = r.get("g", "t", 0).unwrap();
        assert_eq!(got, expiring(offset, expire, metadata).to_owned_value());
    }
    // The first two steps' Meta were replaced (retired); the last step's is live.
    assert_eq!(c.garbage_pending(), 2);
}

#[test]
fn insert_get_update_remove() {
    let mut c = OffsetCache::new();
    let r = c.reader();
    assert_eq!(r.get("g", "t", 0), None);
    c.upsert(key("g", "t", 0), val(5, "m"), 100).unwrap();
    assert_eq!(r.get("g", "t", 0), Some(val(5, "m").to_owned_value()));
    assert_eq!(c.log_position(key("g", "t", 0)), Some(100));
    c.upsert(key("g", "t", 0), val(6, "m"), 101).unwrap();
    assert_eq!(r.get("g", "t", 0).unwrap().offset, 6);
    c.upsert(key("g", "t", 0), val(7, ""), 102).unwrap();
    assert_eq!(r.get("g", "t", 0).unwrap().metadata, "");
    assert_eq!(r.get("g", "t", 1), None);
    assert_eq!(r.get("g", "u", 0), None);
    assert_eq!(r.get("h", "t", 0), None);
    assert_eq!(r.get("g", "t", -1), None);
    assert!(c.remove(key("g", "t", 0)).unwrap());
    assert!(!c.remove(key("g", "t", 0)).unwrap());
    assert_eq!(r.get("g", "t", 0), None);
    assert!(r.groups().is_empty());
    assert!(c.is_empty());
    assert_eq!(c.log_position(key("g", "t", 0)), None);
}

#[test]
fn a_topic_writer_refuses_invalid_partitions_and_keeps_what_it_wrote() {
    let mut c = OffsetCache::with_max_partitions(8);
    assert!(c.topic_writer("g", "t", -1).is_err());
    assert!(c.topic_writer("g", "t", 8).is_err());
    let mut writer = c.topic_writer("g", "t", 2).unwrap();
    assert_eq!(writer.replace(2, val(1, ""), 10).unwrap(), None);
    assert!(writer.replace(8, val(2, ""), 11).is_err());
    assert!(writer.replace(-1, val(2, ""), 11).is_err());
    // Past the array the first partition sized: it grows.
    assert_eq!(writer.replace(7, val(3, "m"), 12).unwrap(), None);
    assert_eq!(writer.replace(2, val(4, ""), 13).unwrap(), Some(10));
    let r = c.reader();
    assert_eq!(r.get("g", "t", 2).map(|v| v.offset), Some(4));
    assert_eq!(r.get("g", "t", 7).map(|v| v.offset), Some(3));
    assert_eq!(c.len(), 2);
}

#[test]
fn invalid_partitions_are_errors_not_panics() {
    let mut c = OffsetCache::with_max_partitions(16);
    assert!(matches!(
        c.upsert(key("g", "t", -1), val(1, ""), 0),
        Err(Error::InvalidPartition(-1))
    ));
    assert!(matches!(
        c.upsert(key("g", "t", 16), val(1, ""), 0),
        Err(Error::InvalidRequest(_))
    ));
    assert!(c.remove(key("g", "t", -5)).is_err());
    c.upsert(key("g", "t", 15), val(1, ""), 0).unwrap();
    assert_eq!(c.reader().get("g", "t", 15).unwrap().offset, 1);
}

#[test]
fn groups_and_group_offsets() {
    let mut c = OffsetCache::new();
    let r = c.reader();
    for g in 0..100 {
        for t in 0..3 {
            for p in 0..4 {
                let (g, t) = (format!("group-{g}"), format!("topic-{t}"));
                c.upsert(key(&g, &t, p), val(p as i64, ""), 0).unwrap();
            }
        }
    }
    assert_eq!(c.len(), 1200);
    let mut groups = r.groups();
    groups.sort();
    assert_eq!(groups.len(), 100);
    let mut offs = r.group_offsets("group-7");
    offs.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    assert_eq!(offs.len(), 12);
    assert_eq!(offs[5].topic, "topic-1");
    assert_eq!(offs[5].partition, 1);
    // Topic names are interned: three, whatever the number of groups.
    let s = c.stats();
    assert_eq!(s.topic_names, 3);
    assert_eq!(s.groups, 100);
    assert_eq!(s.group_topics, 300);
    // Removing everything of one group removes the group.
    for t in 0..3 {
        for p in 0..4 {
            let t = format!("topic-{t}");
            assert!(c.remove(key("group-7", &t, p)).unwrap());
        }
    }
    assert_eq!(r.groups().len(), 99);
    assert!(r.group_offsets("group-7").is_empty());
    c.collect();
}

#[test]
fn stats_bytes_per_key() {
    let mut c = OffsetCache::new();
    for g in 0..1000 {
        let g = format!("consumer-group-{g:05}");
        for t in 0..2 {
            let t = format!("orders-events-{t}");
            for p in (0..12).rev() {
                c.upsert(key(&g, &t, p), val(1, ""), 0).unwrap();
            }
        }
    }
    c.collect();
    let s = c.stats();
    assert_eq!(s.live_keys, 24_000);
    assert!(s.bytes_per_key() < 80.0, "{s:?}");
}

/// One operation of the model test.
#[derive(Clone, Debug)]
enum Op {
    Upsert(u8, u8, u8, i64, u8),
    Remove(u8, u8, u8),
    Get(u8, u8, u8),
    Collect,
    /// Upserts of partitions `p..p + n` of one (group, topic) through one
    /// [`OffsetCache::topic_writer`]; offsets `o`, `o + 1`, ...
    UpsertRun(u8, u8, u8, u8, i64, u8),
}

/// [`op`], and runs through a topic writer.
fn op_or_run() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => op(),
        2 => (0..24u8, 0..3u8, 0..40u8, 1..6u8, -1000..1000i64, 0..3u8)
            .prop_map(|(g, t, p, n, o, m)| Op::UpsertRun(g, t, p, n, o, m)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Few groups/topics so keys collide; partitions up to 40 so arrays grow; many groups
    // over the run so the group table grows and fills with tombstones.
    prop_oneof![
        5 => (0..24u8, 0..3u8, 0..40u8, any::<i64>(), 0..3u8)
            .prop_map(|(g, t, p, o, m)| Op::Upsert(g, t, p, o, m)),
        3 => (0..24u8, 0..3u8, 0..40u8).prop_map(|(g, t, p)| Op::Remove(g, t, p)),
        2 => (0..24u8, 0..3u8, 0..40u8).prop_map(|(g, t, p)| Op::Get(g, t, p)),
        1 => Just(Op::Collect),
    ]
}

const METAS: [&str; 3] = ["", "meta-a", "a longer metadata string, not inline"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn agrees_with_a_model_map(ops in proptest::collection::vec(op_or_run(), 1..400)) {
        let mut c = OffsetCache::new();
        let r = c.reader();
        let mut model: BTreeMap<(String, String, i32), (OffsetValue, u64)> = BTreeMap::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Upsert(g, t, p, o, m) => {
                    let (g, t, p) = (format!("g{g}"), format!("t{t}"), p as i32);
                    let v = val(o, METAS[m as usize]);
                    c.upsert(key(&g, &t, p), v, i as u64).unwrap();
                    model.insert((g, t, p), (v.to_owned_value(), i as u64));
                }
                Op::Remove(g, t, p) => {
                    let (g, t, p) = (format!("g{g}"), format!("t{t}"), p as i32);
                    let was = c.remove(key(&g, &t, p)).unwrap();
                    prop_assert_eq!(was, model.remove(&(g, t, p)).is_some());
                }
                Op::Get(g, t, p) => {
                    let (g, t, p) = (format!("g{g}"), format!("t{t}"), p as i32);
                    let want = model.get(&(g.clone(), t.clone(), p));
                    prop_assert_eq!(r.get(&g, &t, p), want.map(|w| w.0.clone()));
                    prop_assert_eq!(c.log_position(key(&g, &t, p)), want.map(|w| w.1));
                }
                Op::Collect => {
                    c.collect();
                }
                Op::UpsertRun(g, t, p, n, o, m) => {
                    let (g, t) = (format!("g{g}"), format!("t{t}"));
                    let mut writer = c.topic_writer(&g, &t, p as i32).unwrap();
                    for (k, partition) in (p as i32..).take(n as usize).enumerate() {
                        let v = val(o + k as i64, METAS[m as usize]);
                        let replaced = writer.replace(partition, v, i as u64).unwrap();
                        let before = model.insert((g.clone(), t.clone(), partition), (v.to_owned_value(), i as u64));
                        prop_assert_eq!(replaced, before.map(|b| b.1));
                    }
                }
            }
            prop_assert_eq!(c.len(), model.len());
        }
        // Full agreement at the end: every key, every group, every group's offsets.
        for ((g, t, p), (v, pos)) in &model {
            prop_assert_eq!(r.get(g, t, *p), Some(v.clone()));
            prop_assert_eq!(c.log_position(key(g, t, *p)), Some(*pos));
        }
        // Exactly the live keys' positions.
        let mut positions = Vec::new();
        c.for_each_log_position(|position| positions.push(position));
        positions.sort_unstable();
        let mut want_positions: Vec<u64> = model.values().map(|(_, pos)| *pos).collect();
        want_positions.sort_unstable();
        prop_assert_eq!(positions, want_positions);
        let mut groups = r.groups();
        groups.sort();
        let mut want: Vec<String> = model.keys().map(|k| k.0.clone()).collect();
        want.dedup();
        prop_assert_eq!(groups, want);
        for g in model.keys().map(|k| &k.0) {
            let mut got: Vec<_> = r
                .group_offsets(g)
                .into_iter()
                .map(|o| ((g.clone(), o.topic, o.partition), o.value))
                .collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            let want: Vec<_> = model
                .iter()
                .filter(|(k, _)| &k.0 == g)
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            prop_assert_eq!(got, want);
        }
        let s = c.stats();
        prop_assert_eq!(s.live_keys, model.len());
    }
}

/// A value whose every field is a function of `n`, so a reader can tell a torn read (fields
/// of two different commits) from a whole one.
fn coherent(n: i64, meta: &'static [&'static str]) -> OffsetValueRef<'static> {
    OffsetValueRef {
        offset: n,
        leader_epoch: (n as i32).wrapping_mul(7),
        commit_timestamp_ms: n.wrapping_mul(31),
        expire_timestamp_ms: !n,
        metadata: meta[(n as usize) % meta.len()],
    }
}

fn check_coherent(v: &OffsetValueRef<'_>, meta: &[&str]) {
    let n = v.offset;
    assert_eq!(v.leader_epoch, (n as i32).wrapping_mul(7), "torn: {v:?}");
    assert_eq!(v.commit_timestamp_ms, n.wrapping_mul(31), "torn: {v:?}");
    assert_eq!(v.expire_timestamp_ms, !n, "torn: {v:?}");
    assert_eq!(v.metadata, meta[(n as usize) % meta.len()], "torn: {v:?}");
}

/// One writer updating, inserting (growing arrays and the group table), removing and
/// re-inserting; several readers checking every value they see is whole and that no key
/// goes back in time.
#[test]
fn stress_one_writer_many_readers() {
    const META: &[&str] = &["", "x", "metadata that changes", "", "y"];
    const HOT_GROUPS: usize = 4;
    const PARTS: i32 = 8;
    let mut c = OffsetCache::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for id in 0..3 {
        let r = c.reader();
        let stop = stop.clone();
        readers.push(std::thread::spawn(move || {
            let mut last = vec![i64::MIN; HOT_GROUPS * PARTS as usize];
            let names: Vec<String> = (0..HOT_GROUPS).map(|g| format!("hot-{g}")).collect();
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let guard = r.pin();
                for (g, name) in names.iter().enumerate() {
                    for p in 0..PARTS {
                        if let Some(v) = guard.get(name, "t", p) {
                            check_coherent(&v, META);
                            let i = g * PARTS as usize + p as usize;
                            assert!(v.offset >= last[i], "went back: {} < {}", v.offset, last[i]);
                            last[i] = v.offset;
                            seen += 1;
                        }
                    }
                }
                // Walk the churned groups too: exercises reclamation of removed nodes.
                if id == 0 {
                    guard.for_each_group(|g| assert!(!g.is_empty()));
                }
                guard.for_each_in_group("hot-0", |_, _, v| check_coherent(&v, META));
            }
            seen
        }));
    }
    let mut n = 0i64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        for _ in 0..1000 {
            n += 1;
            let g = format!("hot-{}", n as usize % HOT_GROUPS);
            let p = (n % PARTS as i64) as i32;
            c.upsert(key(&g, "t", p), coherent(n, META), n as u64)
                .unwrap();
            // Churn: cold groups come and go, so the table grows, tombstones pile up and
            // get rebuilt away, and nodes are retired while readers walk them.
            let cold = format!("cold-{}", n % 300);
            if n % 3 == 0 {
                c.upsert(key(&cold, "c", (n % 20) as i32), coherent(n, META), 0)
                    .unwrap();
            } else {
                c.remove(key(&cold, "c", ((n - 1) % 20) as i32)).unwrap();
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(seen > 0);
    c.collect();
}

#[test]
fn reader_outlives_writer() {
    let mut c = OffsetCache::new();
    c.upsert(key("g", "t", 0), val(1, "meta"), 0).unwrap();
    c.upsert(key("g", "t", 0), val(2, "other"), 0).unwrap();
    let r = c.reader();
    drop(c);
    assert_eq!(r.get("g", "t", 0).unwrap().metadata, "other");
}

/// Applies an upsert or remove to the writer path or to a bulk load; returns what the call
/// returned (the replaced or removed log position).
fn apply_op(
    op: &Op,
    mut apply: impl FnMut(OffsetKey<'_>, Option<OffsetValueRef<'_>>) -> Option<u64>,
) -> Option<Option<u64>> {
    match *op {
        Op::Upsert(g, t, p, o, m) => {
            let (g, t) = (format!("g{g}"), format!("t{t}"));
            Some(apply(
                key(&g, &t, p as i32),
                Some(val(o, METAS[m as usize])),
            ))
        }
        Op::Remove(g, t, p) => {
            let (g, t) = (format!("g{g}"), format!("t{t}"));
            Some(apply(key(&g, &t, p as i32), None))
        }
        Op::Get(..) | Op::Collect | Op::UpsertRun(..) => None,
    }
}

/// The writer path's replace or take.
fn write(
    c: &mut OffsetCache,
    k: OffsetKey<'_>,
    v: Option<OffsetValueRef<'_>>,
    i: u64,
) -> Option<u64> {
    match v {
        Some(v) => c.replace(k, v, i).unwrap(),
        None => c.take(k).unwrap(),
    }
}

/// Every key either cache could hold, with its value and log position.
fn contents(c: &OffsetCache) -> Vec<(String, String, i32, OffsetValue, Option<u64>)> {
    let r = c.reader();
    let mut out = Vec::new();
    for g in r.groups() {
        for o in r.group_offsets(&g) {
            let position = c.log_position(key(&g, &o.topic, o.partition));
            out.push((g.clone(), o.topic, o.partition, o.value, position));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    out
}

fn comparable(s: CacheStats) -> (usize, usize, usize, usize, usize) {
    (
        s.live_keys,
        s.groups,
        s.group_topics,
        s.topic_names,
        s.metadata_bytes,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// A bulk load returns what the writer path returns for every call, publishes nothing
    /// before `finish`, then holds exactly what the writer path holds, and serves as an
    /// ordinary cache afterwards.
    #[test]
    fn bulk_load_matches_the_writer_path(
        load in proptest::collection::vec(op(), 1..400),
        after in proptest::collection::vec(op(), 0..100),
    ) {
        let mut plain = OffsetCache::new();
        let mut bulk = OffsetCache::new();
        let reader = bulk.reader();
        let mut loading = bulk.bulk_load();
        for (i, op) in load.iter().enumerate() {
            let i = i as u64;
            let want = apply_op(op, |k, v| write(&mut plain, k, v, i));
            let got = apply_op(op, |k, v| match v {
                Some(v) => loading.replace(k, v, i).unwrap(),
                None => loading.take(k).unwrap(),
            });
            prop_assert_eq!(got, want);
        }
        prop_assert!(reader.groups().is_empty(), "published before finish");
        loading.finish();
        plain.shrink_to_fit();
        prop_assert_eq!(contents(&bulk), contents(&plain));
        prop_assert_eq!(bulk.len(), plain.len());
        prop_assert_eq!(comparable(bulk.stats()), comparable(plain.stats()));
        for (i, op) in after.iter().enumerate() {
            let i = (load.len() + i) as u64;
            let want = apply_op(op, |k, v| write(&mut plain, k, v, i));
            let got = apply_op(op, |k, v| write(&mut bulk, k, v, i));
            prop_assert_eq!(got, want);
        }
        prop_assert_eq!(contents(&bulk), contents(&plain));
        prop_assert_eq!(comparable(bulk.stats()), comparable(plain.stats()));
    }
}

#[test]
fn an_abandoned_bulk_load_leaves_the_cache_empty_and_usable() {
    let mut c = OffsetCache::new();
    let r = c.reader();
    let mut loading = c.bulk_load();
    for p in 0..20 {
        loading
            .replace(key("g", "t", p), val(7, "meta"), p as u64)
            .unwrap();
    }
    assert_eq!(loading.take(key("g", "t", 3)).unwrap(), Some(3));
    drop(loading);
    assert!(c.is_empty());
    assert_eq!(comparable(c.stats()), (0, 0, 0, 0, 0));
    assert!(r.get("g", "t", 0).is_none());
    c.upsert(key("g", "t", 0), val(8, ""), 100).unwrap();
    assert_eq!(r.get("g", "t", 0).map(|v| v.offset), Some(8));
    // And a later bulk load of an emptied cache works too.
    assert!(c.remove(key("g", "t", 0)).unwrap());
    let mut loading = c.bulk_load();
    loading.replace(key("h", "u", 2), val(9, ""), 5).unwrap();
    loading.finish();
    assert_eq!(r.get("h", "u", 2).map(|v| v.offset), Some(9));
    assert_eq!(c.stats().group_topics, 1);
}

#[test]
fn a_bulk_load_rejects_partitions_as_the_writer_does() {
    let mut c = OffsetCache::with_max_partitions(4);
    let mut loading = c.bulk_load();
    assert!(loading.replace(key("g", "t", -1), val(1, ""), 0).is_err());
    assert!(loading.replace(key("g", "t", 4), val(1, ""), 0).is_err());
    assert!(loading.take(key("g", "t", 4)).is_err());
    // Arrays never grow past max_partitions, even though loads round lengths up.
    assert_eq!(
        loading.replace(key("g", "t", 3), val(1, ""), 0).unwrap(),
        None
    );
    loading.finish();
    assert_eq!(c.len(), 1);
    assert_eq!(c.reader().get("g", "t", 3).map(|v| v.offset), Some(1));
}
