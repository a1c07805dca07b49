//! loom models of the cache: every interleaving (up to `LOOM_MAX_PREEMPTIONS`) of a writer
//! and a reader, under the C11 memory model loom simulates.
//!
//! Run with `scripts/loom.sh`. What makes a model fail:
//! * a torn or older-than-seen value: the assertions below;
//! * a use after free, or a reader seeing an object whose initialization was not published
//!   to it: every shared object carries a `Canary` (see `sync`) whose cell loom tracks, so
//!   a free (a write) not ordered after a reader's access (a read) is a causality violation;
//! * a leak: every object holds a `loom::alloc::Track`, checked when the model ends.

use crate::sync::thread;

use super::epoch::{Collector, Reclaimer};
use super::*;
use crate::sync::atomic::AtomicPtr;

fn key(group: &str, partition: i32) -> OffsetKey<'_> {
    OffsetKey {
        group,
        topic: "t",
        partition,
    }
}

const META: [&str; 3] = ["", "m1", "m2"];

/// Every field a function of `n`, so a torn read is detectable.
fn coherent(n: i64) -> OffsetValueRef<'static> {
    OffsetValueRef {
        offset: n,
        leader_epoch: n as i32 * 7,
        commit_timestamp_ms: n * 31,
        expire_timestamp_ms: -n,
        metadata: META[n as usize % 3],
    }
}

fn check(v: &OffsetValue) {
    assert_eq!(*v, coherent(v.offset).to_owned_value(), "torn read");
}

/// The seqlock and its stash alone: two writes against two reads. Whole values only, never
/// older than one already seen; the stash path is taken whenever the reader lands on an
/// odd sequence.
#[test]
fn slot_two_writes_vs_read() {
    loom::model(|| {
        let stash = crate::sync::Arc::new(Stash::new());
        let slot = crate::sync::Arc::new(Slot::new(&fields(1)));
        let (st, sl) = (stash.clone(), slot.clone());
        let reader = thread::spawn(move || check_fields(&sl.read(&st)));
        slot.write(&stash, &fields(2));
        slot.write(&stash, &fields(3));
        reader.join().unwrap();
    });
}

/// One write against two reads: the second read is never older than the first.
#[test]
fn slot_write_vs_two_reads() {
    loom::model(|| {
        let stash = crate::sync::Arc::new(Stash::new());
        let slot = crate::sync::Arc::new(Slot::new(&fields(1)));
        let (st, sl) = (stash.clone(), slot.clone());
        let reader = thread::spawn(move || {
            let first = sl.read(&st);
            check_fields(&first);
            let second = sl.read(&st);
            check_fields(&second);
            assert!(second.offset >= first.offset, "went back in time");
        });
        slot.write(&stash, &fields(2));
        reader.join().unwrap();
    });
}

fn check_fields(f: &Fields) {
    assert_eq!(f.leader_epoch, f.offset as i32 * 7, "torn read");
    assert_eq!(f.commit_timestamp_ms, f.offset * 31, "torn read");
}

fn fields(n: i64) -> Fields {
    Fields {
        present: true,
        offset: n,
        leader_epoch: n as i32 * 7,
        commit_timestamp_ms: n * 31,
        log_position: 0,
        meta: std::ptr::null_mut(),
    }
}

/// Update vs read through the whole cache: values are whole and monotonic; the metadata
/// changes, so the replaced string is retired and reclaimed while the reader may hold it.
#[test]
fn update_vs_read() {
    loom::model(|| {
        let mut c = OffsetCache::new();
        c.upsert(key("g", 0), coherent(1), 1).unwrap();
        let r = c.reader();
        let reader = thread::spawn(move || {
            let mut last = 0;
            for _ in 0..2 {
                let v = r.get("g", "t", 0).expect("never absent");
                check(&v);
                assert!(v.offset >= last, "went back in time");
                last = v.offset;
            }
        });
        c.upsert(key("g", 0), coherent(2), 2).unwrap();
        reader.join().unwrap();
        c.collect();
    });
}

/// Insert during growth: a new partition beyond the array grows it (copy, publish, retire
/// the old array), then the old key is updated in the new array. The reader must see the
/// old key monotonic across the switch and the new key either absent or whole.
#[test]
fn insert_during_growth() {
    loom::model(|| {
        let mut c = OffsetCache::new();
        c.upsert(key("g", 0), coherent(1), 1).unwrap();
        let r = c.reader();
        let reader = thread::spawn(move || {
            if let Some(v) = r.get("g", "t", 2) {
                check(&v);
            }
        });
        c.upsert(key("g", 2), coherent(5), 2).unwrap();
        reader.join().unwrap();
    });
}

/// An old key across growth: read in the old array, then (after the writer copied it and
/// updated it in the new one) in the new array; never older.
#[test]
fn update_across_growth() {
    loom::model(|| {
        let mut c = OffsetCache::new();
        c.upsert(key("g", 0), coherent(1), 1).unwrap();
        let r = c.reader();
        let reader = thread::spawn(move || {
            let g = r.pin();
            let first = g.get("g", "t", 0).expect("present").to_owned_value();
            check(&first);
            let second = g.get("g", "t", 0).expect("present").to_owned_value();
            check(&second);
            assert!(second.offset >= first.offset, "went back in time");
        });
        c.upsert(key("g", 2), coherent(5), 2).unwrap();
        c.upsert(key("g", 0), coherent(6), 3).unwrap();
        reader.join().unwrap();
    });
}

/// Insert during group-table growth: the seventh group forces a rebuild of the 8-slot
/// table while the reader looks up a group placed before it.
#[test]
fn insert_during_table_growth() {
    loom::model(|| {
        let mut c = OffsetCache::new();
        let names = ["a", "b", "c", "d", "e", "f", "g"];
        for n in &names[..6] {
            c.upsert(key(n, 0), coherent(1), 0).unwrap();
        }
        let r = c.reader();
        let reader = thread::spawn(move || {
            let v = r.get("a", "t", 0).expect("present");
            check(&v);
            if let Some(v) = r.get("g", "t", 0) {
                check(&v);
            }
        });
        c.upsert(key("g", 0), coherent(2), 0).unwrap();
        reader.join().unwrap();
    });
}

/// Delete vs read: removing the only key unlinks and retires its metadata, partition
/// array, topic node, interned name, topic list and group node. The reader sees the value
/// whole or not at all, and once it has seen "absent" never sees the value again.
#[test]
fn delete_vs_read() {
    loom::model(|| {
        let mut c = OffsetCache::new();
        c.upsert(key("g", 0), coherent(1), 1).unwrap();
        let r = c.reader();
        let reader = thread::spawn(move || {
            // One pin for all three reads keeps the model small (each pin is two RMWs).
            let g = r.pin();
            let first = g.get("g", "t", 0).map(|v| v.to_owned_value());
            if let Some(v) = &first {
                check(v);
            }
            let mut groups = 0;
            g.for_each_group(|name| {
                assert_eq!(name, "g");
                groups += 1;
            });
            assert!(groups <= 1);
            let second = g.get("g", "t", 0);
            assert!(!(first.is_none() && second.is_some()), "resurrected");
        });
        assert!(c.remove(key("g", 0)).unwrap());
        c.collect();
        reader.join().unwrap();
    });
}

/// Reclamation, end to end: the writer drops before the reader; whatever is retired or
/// live must be freed exactly once by whoever holds the last handle (loom reports leaks).
#[test]
fn reclamation_writer_drops_first() {
    loom::model(|| {
        let mut c = OffsetCache::new();
        c.upsert(key("g", 0), coherent(1), 1).unwrap();
        let r = c.reader();
        let reader = thread::spawn(move || {
            if let Some(v) = r.get("g", "t", 0) {
                check(&v);
            }
        });
        c.upsert(key("g", 0), coherent(2), 2).unwrap();
        drop(c);
        reader.join().unwrap();
    });
}

/// A tracked heap object for the bare collector model.
struct Obj {
    canary: crate::sync::Canary,
    value: u64,
}

/// The epoch scheme on its own: a reader pins, loads a pointer and uses the object; the
/// writer swaps in a new object, retires the old and tries to free it (twice). No use after
/// free (canary), no leak (track), and the reader always sees an initialized object.
#[test]
fn epoch_reclamation() {
    loom::model(|| {
        let collector = crate::sync::Arc::new(Collector::new());
        let first = Box::into_raw(Box::new(Obj {
            canary: crate::sync::Canary::new(),
            value: 1,
        }));
        let slot = crate::sync::Arc::new(AtomicPtr::new(first));
        let (c2, s2) = (collector.clone(), slot.clone());
        let reader = thread::spawn(move || {
            let _pin = c2.pin();
            // SAFETY: pinned.
            let o = unsafe { &*s2.load(Ordering::Acquire) };
            o.canary.touch();
            assert!(o.value == 1 || o.value == 2);
        });
        let mut reclaim = Reclaimer::new();
        let second = Box::into_raw(Box::new(Obj {
            canary: crate::sync::Canary::new(),
            value: 2,
        }));
        let old = slot.swap(second, Ordering::Release);
        // SAFETY: unlinked.
        reclaim.retire(&collector, unsafe { Box::from_raw(old) });
        reclaim.try_advance(&collector);
        reclaim.try_advance(&collector);
        reader.join().unwrap();
        drop(reclaim.take_all());
        // SAFETY: the model is over; nobody else holds it.
        drop(unsafe { Box::from_raw(slot.load(Ordering::Acquire)) });
    });
}

/// A bulk load against a reader: the reader sees the cache empty or fully loaded (both keys,
/// whole), never part of the load, and nothing it could reach is freed under it (the load
/// replaces one key's metadata and grows the partition array before publishing).
#[test]
fn bulk_load_vs_read() {
    loom::model(|| {
        let mut c = OffsetCache::new();
        let r = c.reader();
        let reader = thread::spawn(move || {
            let guard = r.pin();
            let second = guard.get("g", "t", 9).map(|v| v.to_owned_value());
            let first = guard.get("g", "t", 0).map(|v| v.to_owned_value());
            // Published in one store, read newest-last: seeing the later key means seeing
            // the earlier one.
            if let Some(v) = &second {
                check(v);
                assert!(first.is_some(), "saw part of a bulk load");
            }
            if let Some(v) = &first {
                check(v);
                assert_eq!(v.offset, 2, "saw a value the load replaced");
            }
        });
        let mut load = c.bulk_load();
        load.replace(key("g", 0), coherent(1), 1).unwrap();
        load.replace(key("g", 0), coherent(2), 2).unwrap();
        load.replace(key("g", 9), coherent(3), 3).unwrap();
        load.finish();
        reader.join().unwrap();
        c.collect();
    });
}
