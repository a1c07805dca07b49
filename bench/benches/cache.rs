//! Offset cache micro benchmarks: lookup latency, lookups per second per reader thread with
//! an idle writer and with a writer updating at full speed, the cost of an update, and
//! loading a whole partition at recovery (the writer path against the bulk load).
//!
//! `cargo bench -p coffer-bench --bench cache -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use coffer::cache::{OffsetCache, OffsetCacheReader, OffsetKey, OffsetValueRef};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const GROUPS: usize = 1000;
const TOPICS: usize = 2;
const PARTS: i32 = 12;
/// Lookups per measured iteration in the throughput benches.
const BATCH: usize = 1024;

struct Keys {
    groups: Vec<String>,
    topics: Vec<String>,
    /// A pseudo-random visiting order over all keys, so lookups miss the cache realistically.
    order: Vec<(u32, u32, i32)>,
}

fn keys() -> Keys {
    let groups: Vec<String> = (0..GROUPS)
        .map(|g| format!("consumer-group-{g:05}"))
        .collect();
    let topics: Vec<String> = (0..TOPICS).map(|t| format!("orders.events.v{t}")).collect();
    let mut order = Vec::new();
    for g in 0..GROUPS as u32 {
        for t in 0..TOPICS as u32 {
            for p in 0..PARTS {
                order.push((g, t, p));
            }
        }
    }
    // xorshift shuffle: deterministic, no extra dependency.
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    Keys {
        groups,
        topics,
        order,
    }
}

fn value(offset: i64) -> OffsetValueRef<'static> {
    OffsetValueRef {
        offset,
        leader_epoch: 5,
        commit_timestamp_ms: 1_700_000_000_000,
        expire_timestamp_ms: -1,
        metadata: "",
    }
}

fn filled(k: &Keys) -> OffsetCache {
    let mut cache = OffsetCache::new();
    for &(g, t, p) in &k.order {
        let key = OffsetKey {
            group: &k.groups[g as usize],
            topic: &k.topics[t as usize],
            partition: p,
        };
        cache.upsert(key, value(1), 0).expect("valid key");
    }
    cache.collect();
    cache
}

/// `BATCH` lookups, one pin each (what a single OffsetFetch partition costs).
fn lookups(reader: &OffsetCacheReader, k: &Keys, start: &mut usize) -> i64 {
    let mut sum = 0;
    for _ in 0..BATCH {
        let (g, t, p) = k.order[*start];
        *start = (*start + 1) % k.order.len();
        let guard = reader.pin();
        if let Some(v) = guard.get(&k.groups[g as usize], &k.topics[t as usize], p) {
            sum += v.offset;
        }
    }
    sum
}

fn bench_cache(c: &mut Criterion) {
    let k = Arc::new(keys());

    // Latency of one lookup (pin + find + seqlock read), idle writer.
    {
        let cache = filled(&k);
        let reader = cache.reader();
        let mut i = 0;
        c.bench_function("cache/lookup", |b| {
            b.iter(|| {
                let (g, t, p) = k.order[i];
                i = (i + 1) % k.order.len();
                black_box(reader.get(&k.groups[g as usize], &k.topics[t as usize], black_box(p)))
            })
        });
        // One pin for a whole group's partitions, as an OffsetFetch of a group does.
        let mut g = 0;
        c.bench_function("cache/group_offsets_24_keys_one_pin", |b| {
            b.iter(|| {
                g = (g + 1) % GROUPS;
                let guard = reader.pin();
                let mut n = 0;
                guard.for_each_in_group(&k.groups[g], |_, _, v| n += v.offset);
                black_box(n)
            })
        });
    }

    // Lookups per second on one reader thread, writer idle vs writer updating flat out.
    let mut group = c.benchmark_group("cache/reader_throughput");
    group.throughput(Throughput::Elements(BATCH as u64));
    {
        let cache = filled(&k);
        let reader = cache.reader();
        let mut start = 0;
        group.bench_function("writer_idle", |b| {
            b.iter(|| black_box(lookups(&reader, &k, &mut start)))
        });
        drop(cache);
    }
    {
        let cache = filled(&k);
        let reader = cache.reader();
        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicU64::new(0));
        let writer = {
            let (k, stop, updates) = (k.clone(), stop.clone(), updates.clone());
            let mut cache = cache;
            thread::spawn(move || {
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    for &(g, t, p) in &k.order[..4096] {
                        n += 1;
                        let key = OffsetKey {
                            group: &k.groups[g as usize],
                            topic: &k.topics[t as usize],
                            partition: p,
                        };
                        cache.upsert(key, value(n), n as u64).expect("valid key");
                    }
                    updates.fetch_add(4096, Ordering::Relaxed);
                }
                cache
            })
        };
        let mut start = 0;
        let t0 = std::time::Instant::now();
        group.bench_function("writer_full_speed", |b| {
            b.iter(|| black_box(lookups(&reader, &k, &mut start)))
        });
        let secs = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
        eprintln!(
            "writer ran at {:.1} M updates/s during writer_full_speed",
            updates.load(Ordering::Relaxed) as f64 / secs / 1e6
        );
    }
    group.finish();

    // Cost of updating an existing key (no allocation path).
    {
        let mut cache = filled(&k);
        let mut i = 0;
        let mut n = 0i64;
        c.bench_function("cache/update_existing", |b| {
            b.iter(|| {
                let (g, t, p) = k.order[i];
                i = (i + 1) % k.order.len();
                n += 1;
                let key = OffsetKey {
                    group: &k.groups[g as usize],
                    topic: &k.topics[t as usize],
                    partition: p,
                };
                cache.upsert(key, value(n), n as u64).expect("valid key")
            })
        });
    }
}

/// Groups × partitions of one topic loaded by the `load` benches.
const LOAD_GROUPS: usize = 4000;
const LOAD_PARTITIONS: i32 = 64;
/// Partitions per commit: the records of one commit sit together in the log.
const LOAD_PARTITIONS_PER_COMMIT: i32 = 4;

/// Every key once, in the order a compacted log holds them after a storm of commits that
/// cycles over the groups, each commit naming `LOAD_PARTITIONS_PER_COMMIT` partitions (as
/// `compaction_bench` commits).
fn load_order() -> Vec<(usize, i32)> {
    let slices = LOAD_PARTITIONS / LOAD_PARTITIONS_PER_COMMIT;
    let commits = LOAD_GROUPS * slices as usize;
    (0..commits)
        .flat_map(|commit| {
            let group = commit % LOAD_GROUPS;
            let slice = (commit / LOAD_GROUPS) as i32;
            let first = slice * LOAD_PARTITIONS_PER_COMMIT;
            (first..first + LOAD_PARTITIONS_PER_COMMIT).map(move |p| (group, p))
        })
        .collect()
}

/// Recovery's fill of an empty cache: the writer path (`replace`, then `shrink_to_fit`)
/// against a bulk load. The caches are dropped outside the measurement.
fn bench_load(c: &mut Criterion) {
    let groups: Vec<String> = (0..LOAD_GROUPS).map(|g| format!("group-{g}")).collect();
    let order = load_order();
    let key = |&(g, p): &(usize, i32)| OffsetKey {
        group: &groups[g],
        topic: "bench-topic",
        partition: p,
    };
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.throughput(Throughput::Elements(order.len() as u64));
    group.bench_function("writer_path", |b| {
        b.iter_with_large_drop(|| {
            let mut cache = OffsetCache::new();
            for (i, k) in order.iter().enumerate() {
                cache
                    .replace(key(k), value(1), i as u64)
                    .expect("valid key");
            }
            cache.shrink_to_fit();
            cache
        })
    });
    group.bench_function("bulk_load", |b| {
        b.iter_with_large_drop(|| {
            let mut cache = OffsetCache::new();
            let mut load = cache.bulk_load();
            for (i, k) in order.iter().enumerate() {
                load.replace(key(k), value(1), i as u64).expect("valid key");
            }
            load.finish();
            cache
        })
    });
    group.finish();
}

criterion_group!(benches, bench_cache, bench_load);
criterion_main!(benches);
