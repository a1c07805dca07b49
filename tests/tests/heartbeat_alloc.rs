//! A heartbeat on the coordinator allocates nothing: counted per thread by a global
//! allocator (its own test binary; the harness's threads allocate too, so only the test's
//! own thread is counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use coffer::format::{GroupMetadataValue, MemberMetadata};
use coffer::group::{GroupConfig, GroupCoordinator};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Allocations made by the calling thread so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // `try_with`: a thread being torn down has no counter, and must still allocate.
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
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
fn the_counter_counts() {
    let before = allocations();
    let probe = std::hint::black_box(vec![1u8; 10]);
    assert_eq!(allocations() - before, 1);
    drop(probe);
}

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
    // Expecting half of them: about two in three land at their hashed handle, the others
    // are found through the fingerprint index; "nobody" goes through the maps.
    coordinator.expect_restored_members(500);
    coordinator.load("g", 0, Some(value), 0, 0).unwrap();
    // Warm up: the first expiry scan may size its scratch vector.
    assert!(!coordinator.tick(1));

    let before = allocations();
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
    let allocations = allocations() - before;
    assert_eq!(allocations, 0, "heartbeats allocated");
    // The sessions were really renewed: 25 s later nobody has expired.
    assert!(coordinator.has_members("g"));
}

#[test]
fn heartbeats_of_joined_members_allocate_nothing() {
    use coffer::group::{GroupReply, JoinGroupRequest, JoinProtocol, SyncGroupRequest};
    let config = GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    };
    let mut coordinator = GroupCoordinator::new(config, 5, 0);
    let request = JoinGroupRequest {
        group_id: "joined".into(),
        member_id: String::new(),
        group_instance_id: None,
        client_id: "c".into(),
        client_host: "/h".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocol_type: "consumer".into(),
        protocols: vec![JoinProtocol {
            name: "range".into(),
            metadata: Vec::new(),
        }],
        require_known_member_id: false,
    };
    assert!(coordinator.join(request, 0, 1, 0).is_none());
    let Some(GroupReply::Join(_, joined)) = coordinator.take_replies().next() else {
        panic!("a lone member's join completes at once");
    };
    let id = joined.member_id;
    let sync = SyncGroupRequest {
        group_id: "joined".into(),
        member_id: id.clone(),
        group_instance_id: None,
        generation_id: 1,
        protocol_type: None,
        protocol_name: None,
        assignments: vec![(id.clone(), b"a".to_vec())],
    };
    assert!(coordinator.sync(sync, 2, 0).is_none());
    let records: Vec<_> = coordinator.take_persists().collect();
    coordinator.persisted("joined", records[0].generation_id, Ok(0), 0);
    assert_eq!(coordinator.take_replies().count(), 1);
    assert!(!coordinator.tick(1));

    let before = allocations();
    for now_ms in (2..30_000).step_by(7) {
        assert_eq!(
            coordinator.heartbeat("joined", &id, None, 1, now_ms),
            Ok(())
        );
        coordinator.tick(now_ms);
    }
    assert_eq!(allocations() - before, 0, "heartbeats allocated");
}
