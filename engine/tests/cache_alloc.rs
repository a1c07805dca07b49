//! Allocation behaviour of the offset cache, measured with a counting global allocator:
//! updating an existing key allocates nothing, and the heap cost per live key.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use coffer::cache::{OffsetCache, OffsetKey, OffsetValueRef};

/// Counts the calling thread's allocations and live bytes (other test threads don't count).
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

// SAFETY: forwards to `System`; the thread-locals are const-initialized `Cell`s, which
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        let _ = LIVE_BYTES.try_with(|b| b.set(b.get() + layout.size() as i64));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE_BYTES.try_with(|b| b.set(b.get() - layout.size() as i64));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        let _ = LIVE_BYTES.try_with(|b| b.set(b.get() + new_size as i64 - layout.size() as i64));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn live_bytes() -> i64 {
    LIVE_BYTES.with(Cell::get)
}

fn value(offset: i64, metadata: &str) -> OffsetValueRef<'_> {
    OffsetValueRef {
        offset,
        leader_epoch: 3,
        commit_timestamp_ms: 1_700_000_000_000 + offset,
        expire_timestamp_ms: -1,
        metadata,
    }
}

#[test]
fn updating_an_existing_key_allocates_nothing() {
    let mut cache = OffsetCache::new();
    let reader = cache.reader();
    let keys: Vec<(String, String, i32)> = (0..50)
        .flat_map(|g| (0..8).map(move |p| (format!("group-{g}"), "topic".to_string(), p)))
        .collect();
    for (i, (g, t, p)) in keys.iter().enumerate() {
        let meta = if i % 2 == 0 { "" } else { "client metadata" };
        let key = OffsetKey {
            group: g,
            topic: t,
            partition: *p,
        };
        cache.upsert(key, value(0, meta), 0).expect("valid key");
    }
    // Let the garbage of the inserts (grown arrays, replaced lists) drain first, so the
    // bags' capacity is settled.
    cache.collect();
    let before = allocs();
    for round in 1..=100 {
        for (i, (g, t, p)) in keys.iter().enumerate() {
            // Same metadata as before (empty or unchanged): the allocation-free path.
            let meta = if i % 2 == 0 { "" } else { "client metadata" };
            let key = OffsetKey {
                group: g,
                topic: t,
                partition: *p,
            };
            cache
                .upsert(key, value(round, meta), round as u64)
                .expect("valid key");
        }
        // Pinned reads allocate nothing either.
        let guard = reader.pin();
        let v = guard.get("group-3", "topic", 5).expect("present");
        assert_eq!(v.offset, round);
    }
    assert_eq!(allocs() - before, 0, "updates of existing keys allocated");
}

/// Heap bytes per live key, as the allocator sees them (requested sizes; the allocator's own
/// per-block overhead is not included), for a few shapes. Printed for docs/cache.md, and
/// checked against the 64-byte target for the dense shapes Kafka produces.
#[test]
fn bytes_per_live_key() {
    // (groups, topics per group, partitions per topic, insert partitions in reverse?)
    let shapes = [
        (2000, 1, 12, false),
        (1000, 2, 12, true),
        (500, 2, 50, false),
        (200, 4, 64, false),
        (5000, 1, 1, false),
    ];
    for (groups, topics, parts, reverse) in shapes {
        let base = live_bytes();
        let mut cache = OffsetCache::new();
        let names: Vec<String> = (0..groups)
            .map(|g| format!("consumer-group-{g:06}"))
            .collect();
        let topic_names: Vec<String> = (0..topics).map(|t| format!("orders.events.v{t}")).collect();
        for g in &names {
            for t in &topic_names {
                for p in 0..parts {
                    let p = if reverse { parts - 1 - p } else { p };
                    let key = OffsetKey {
                        group: g,
                        topic: t,
                        partition: p,
                    };
                    cache.upsert(key, value(1, ""), 0).expect("valid key");
                }
            }
        }
        cache.collect();
        cache.collect();
        let grown = (live_bytes() - base) as f64;
        cache.shrink_to_fit();
        cache.collect();
        cache.collect();
        let keys = groups * topics * parts as usize;
        let stats = cache.stats();
        assert_eq!(stats.pending_garbage, 0);
        let heap = live_bytes() - base - stats.fixed_bytes as i64;
        let per_key = heap as f64 / keys as f64;
        println!(
            "shape {groups} groups x {topics} topics x {parts} partitions{}: {keys} keys, \
             allocator {per_key:.1} B/key after shrink_to_fit ({:.1} before), stats {:.1} B/key",
            if reverse { " (reverse order)" } else { "" },
            (grown - stats.fixed_bytes as f64) / keys as f64,
            stats.bytes_per_key()
        );
        // The target, for groups with a dozen or more keys (a key costs its 48-byte
        // slot plus its share of the group's nodes; a one-key group pays them alone).
        if parts >= 12 {
            assert!(per_key <= 64.0, "{per_key} bytes per key");
        }
        drop(cache);
    }
}
