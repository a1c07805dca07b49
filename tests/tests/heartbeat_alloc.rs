//! A heartbeat on the coordinator allocates nothing: counted with a global allocator (its
//! own test binary, so no other test shares the counter).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use coffer::format::{GroupMetadataValue, MemberMetadata};
use coffer::group::{GroupConfig, GroupCoordinator};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn heartbeats_and_ticks_allocate_nothing() {
    let mut coordinator = GroupCoordinator::new(GroupConfig::default(), 3, 0);
    let members: Vec<MemberMetadata> = (0..1000)
        .map(|m| MemberMetadata {
            member_id: format!("member-{m}"),
            session_timeout: 10_000,
            rebalance_timeout: 10_000,
            ..MemberMetadata::default()
        })
        .collect();
    let ids: Vec<String> = members.iter().map(|m| m.member_id.clone()).collect();
    let value = GroupMetadataValue {
        protocol_type: "consumer".into(),
        generation: 4,
        protocol: Some("range".into()),
        leader: Some(ids[0].clone()),
        current_state_timestamp: 0,
        members,
    };
    coordinator.load("g", 0, Some(value), 0, 0).unwrap();
    // Warm up: the first expiry scan may size its scratch vector.
    assert!(!coordinator.tick(1));

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut now_ms = 1;
    for round in 0..50 {
        now_ms += 500;
        for id in &ids {
            assert_eq!(coordinator.heartbeat("g", id, None, 4, now_ms), Ok(()));
        }
        assert_eq!(
            coordinator
                .heartbeat("g", "nobody", None, 4, now_ms)
                .map_err(|e| e.kafka_code()),
            Err(25),
            "round {round}"
        );
        coordinator.tick(now_ms);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocations, 0, "heartbeats allocated");
    // The sessions were really renewed: 25 s later nobody has expired.
    assert!(coordinator.has_members("g"));
}
