//! Offset cache micro benchmarks: lookup latency, lookups per second per reader thread with
//! an idle writer and with a writer updating at full speed, the cost of an update, and
//! loading a whole partition at recovery (the writer path against the bulk load).
//!
//! `cargo bench -p coffer-bench --bench cache -- --warm-up-time 1 --measurement-time 3`
//!
//! The reader throughput is measured twice: `cache/reader_throughput/*` in wall time with
//! unpinned threads (the original shape), and `cache/reader_cpu/*` in the reader thread's
//! CPU time with reader and writer pinned to cores 0 and 1, which separates the cost of
//! sharing cache lines with the writer from the cost of sharing a core with it (on a
//! two-core machine with other load, the latter dominates the wall-time figure).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use coffer::cache::{OffsetCache, OffsetCacheReader, OffsetKey, OffsetValueRef};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};

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
    lookups_in(reader, k, &k.order, start)
}

/// `BATCH` lookups of the keys of `order`, cycling.
fn lookups_in(
    reader: &OffsetCacheReader,
    k: &Keys,
    order: &[(u32, u32, i32)],
    start: &mut usize,
) -> i64 {
    let mut sum = 0;
    for _ in 0..BATCH {
        let (g, t, p) = order[*start];
        *start = (*start + 1) % order.len();
        let guard = reader.pin();
        if let Some(v) = guard.get(&k.groups[g as usize], &k.topics[t as usize], p) {
            sum += v.offset;
        }
    }
    sum
}

/// Which keys the benches' writer thread updates, cycling.
#[derive(Clone, Copy)]
enum WriterKeys {
    /// The first 4096 keys of the readers' order (the original shape: a sixth of the keys,
    /// each rewritten about every 0.6 ms at full speed).
    First4096,
    /// Every key, in an order of its own (each key rewritten about every 3.5 ms).
    All,
    /// Only odd partitions, for readers that look up only even ones: the readers never read
    /// a value the writer writes, so what the writer costs them is false sharing alone (a
    /// 48-byte slot shares a cache line with its neighbour partitions' slots).
    OddPartitions,
}

/// A thread updating the cache as fast as it can until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    updates: Arc<AtomicU64>,
    started: Instant,
    thread: thread::JoinHandle<OffsetCache>,
}

impl Writer {
    fn start(cache: OffsetCache, k: Arc<Keys>, keys: WriterKeys, core: Option<usize>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, updates) = (stop.clone(), updates.clone());
            let mut cache = cache;
            thread::spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core_affinity::CoreId { id: core });
                }
                let order: Vec<(u32, u32, i32)> = match keys {
                    WriterKeys::First4096 => k.order[..4096].to_vec(),
                    WriterKeys::All => {
                        let mut order = k.order.clone();
                        order.reverse();
                        order
                    }
                    WriterKeys::OddPartitions => k
                        .order
                        .iter()
                        .copied()
                        .filter(|&(_, _, p)| p % 2 == 1)
                        .collect(),
                };
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    for chunk in order.chunks(4096) {
                        for &(g, t, p) in chunk {
                            n += 1;
                            let key = OffsetKey {
                                group: &k.groups[g as usize],
                                topic: &k.topics[t as usize],
                                partition: p,
                            };
                            cache.upsert(key, value(n), n as u64).expect("valid key");
                        }
                        updates.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                }
                cache
            })
        };
        Self {
            stop,
            updates,
            started: Instant::now(),
            thread,
        }
    }

    /// Stops the writer and reports its rate over its whole run (warm-up included).
    fn stop(self, name: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let _ = self.thread.join();
        eprintln!(
            "writer ran at {:.1} M updates/s during {name} ({secs:.1} s)",
            self.updates.load(Ordering::Relaxed) as f64 / secs / 1e6
        );
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    coffer_bench::thread_cpu_time().expect("clock_gettime(CLOCK_THREAD_CPUTIME_ID)")
}

/// Runs `f` with the calling thread pinned to `core`, then restores its affinity.
fn on_core<R>(core: usize, f: impl FnOnce() -> R) -> R {
    // SAFETY: cpu_set_t is plain data; the calls get its true size.
    let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    let have_saved = unsafe { libc::sched_getaffinity(0, size, &mut saved) } == 0;
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
    let r = f();
    if have_saved {
        // SAFETY: restoring the mask read above.
        unsafe { libc::sched_setaffinity(0, size, &saved) };
    }
    r
}

/// A `cache/reader_throughput` bench: lookups per second of wall time. Also reports the
/// share of a core the reader thread got while measured (its CPU time over the wall time),
/// which tells CPU starvation apart from slower lookups.
fn wall_lookups(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    reader: &OffsetCacheReader,
    k: &Keys,
) {
    let mut start = 0;
    let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (t0, c0) = (Instant::now(), thread_cpu_time());
            for _ in 0..iters {
                black_box(lookups(reader, k, &mut start));
            }
            let (dt, dc) = (t0.elapsed(), thread_cpu_time() - c0);
            wall += dt;
            cpu += dc;
            dt
        })
    });
    if !wall.is_zero() {
        eprintln!(
            "reader had {:.0} % of a core during {name}",
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        );
    }
}

/// One `cache/reader_cpu` bench.
struct Case<'a> {
    name: &'static str,
    /// The keys the reader looks up, cycling.
    order: &'a [(u32, u32, i32)],
    /// What the writer thread updates, if there is one.
    writer: Option<WriterKeys>,
    /// The writer writes a cache of its own, the control: a neighbour core as busy as the
    /// writer but sharing no cache line with the reader.
    own_cache: bool,
}

/// `cache/reader_cpu/*`: lookups per second of the reader thread's CPU time, reader on core
/// 0, writer (if any) on core 1.
fn reader_cpu_benches(c: &mut Criterion, k: &Arc<Keys>) {
    let cores = core_affinity::get_core_ids().map_or(0, |c| c.len());
    if cores < 2 {
        eprintln!("cache/reader_cpu: skipped, needs two cores ({cores} found)");
        return;
    }
    let mut group = c.benchmark_group("cache/reader_cpu");
    group.throughput(Throughput::Elements(BATCH as u64));
    let even: Vec<(u32, u32, i32)> = k
        .order
        .iter()
        .copied()
        .filter(|&(_, _, p)| p % 2 == 0)
        .collect();
    let case = |name, order, writer, own_cache| Case {
        name,
        order,
        writer,
        own_cache,
    };
    let cases = [
        case("writer_idle", &k.order, None, false),
        case(
            "writer_full_speed",
            &k.order,
            Some(WriterKeys::First4096),
            false,
        ),
        case(
            "writer_full_speed_all_keys",
            &k.order,
            Some(WriterKeys::All),
            false,
        ),
        case(
            "writer_on_another_cache",
            &k.order,
            Some(WriterKeys::First4096),
            true,
        ),
        case("even_partitions_writer_idle", &even, None, false),
        case(
            "even_partitions_writer_on_odd",
            &even,
            Some(WriterKeys::OddPartitions),
            false,
        ),
    ];
    for Case {
        name,
        order,
        writer: keys,
        own_cache,
    } in cases
    {
        let cache = filled(k);
        let reader = cache.reader();
        let (writer, _idle) = match keys {
            Some(keys) if own_cache => (
                Some(Writer::start(filled(k), k.clone(), keys, Some(1))),
                Some(cache),
            ),
            Some(keys) => (Some(Writer::start(cache, k.clone(), keys, Some(1))), None),
            // An idle case keeps its writer (the cache) alive but does nothing with it.
            None => (None, Some(cache)),
        };
        let mut start = 0;
        on_core(0, || {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let t0 = thread_cpu_time();
                    for _ in 0..iters {
                        black_box(lookups_in(&reader, k, order, &mut start));
                    }
                    thread_cpu_time() - t0
                })
            });
        });
        if let Some(writer) = writer {
            writer.stop(name);
        }
    }
    group.finish();
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

    // Lookups per second on one reader thread, writer idle vs writer updating flat out, in
    // the original shape: threads unpinned, wall time, the writer cycling over the first
    // 4096 keys of the reader's order.
    let mut group = c.benchmark_group("cache/reader_throughput");
    group.throughput(Throughput::Elements(BATCH as u64));
    {
        let cache = filled(&k);
        let reader = cache.reader();
        wall_lookups(&mut group, "writer_idle", &reader, &k);
        drop(cache);
    }
    {
        let cache = filled(&k);
        let reader = cache.reader();
        let writer = Writer::start(cache, k.clone(), WriterKeys::First4096, None);
        wall_lookups(&mut group, "writer_full_speed", &reader, &k);
        writer.stop("writer_full_speed");
    }
    group.finish();

    // The same, measured so that the two shared cores of a dev machine do not decide the
    // result: reader and writer pinned to different cores, and the reader's time is its
    // thread's CPU time, so time it spends preempted (by the writer or anything else) does
    // not count, while time it spends stalled on cache misses does.
    reader_cpu_benches(c, &k);

    // Cost of updating an existing key (no allocation path).
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
