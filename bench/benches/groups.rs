//! Group coordinator micro benchmarks: heartbeats per second on one shard's coordinator
//! holding 100,000 members (restored Stable groups, as after a restart), visited in a
//! shuffled order so member lookups miss the CPU caches as they would under real load.
//!
//! `cargo bench -p coffer-bench --bench groups -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use coffer::format::{GroupMetadataValue, MemberMetadata};
use coffer::group::{GroupConfig, GroupCoordinator};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MEMBERS: usize = 100_000;
/// Heartbeats per measured iteration.
const BATCH: usize = 4096;
const SESSION_TIMEOUT_MS: i32 = 45_000;

struct Fleet {
    coordinator: GroupCoordinator,
    /// (group id, member id) in a shuffled visiting order.
    order: Vec<(String, String)>,
}

/// `groups` Stable groups of `MEMBERS / groups` members each, generation 7; visited in a
/// shuffled order, or in join order when `shuffle` is false.
fn fleet(groups: usize, shuffle: bool) -> Fleet {
    let now_ms = 1_000;
    let mut coordinator = GroupCoordinator::new(GroupConfig::default(), 1, now_ms);
    let per_group = MEMBERS / groups;
    let mut order = Vec::with_capacity(MEMBERS);
    for g in 0..groups {
        let group_id = format!("consumer-group-{g:05}");
        let members: Vec<MemberMetadata> = (0..per_group)
            .map(|m| MemberMetadata {
                member_id: format!("consumer-{g}-{m}-5f1c2a9e-6f0b-4d5e-9a3c-1b2d3e4f5a6b"),
                client_id: format!("consumer-{g}-{m}"),
                client_host: "/10.1.2.3".into(),
                rebalance_timeout: 300_000,
                session_timeout: SESSION_TIMEOUT_MS,
                subscription: vec![0; 32],
                assignment: vec![0; 64],
                ..MemberMetadata::default()
            })
            .collect();
        for member in &members {
            order.push((group_id.clone(), member.member_id.clone()));
        }
        let value = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol: Some("range".into()),
            leader: Some(members[0].member_id.clone()),
            current_state_timestamp: 0,
            members,
        };
        coordinator
            .load(&group_id, 0, Some(value), 0, now_ms)
            .expect("groups fit");
    }
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev().filter(|_| shuffle) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    Fleet { coordinator, order }
}

fn heartbeats(c: &mut Criterion) {
    let mut bench = c.benchmark_group("heartbeat");
    bench.throughput(Throughput::Elements(BATCH as u64));
    for (groups, shuffle) in [(1000, true), (10, true), (1000, false)] {
        let mut fleet = fleet(groups, shuffle);
        let mut next = 0;
        let mut now_ms = 1_000;
        let visit = if shuffle { "shuffled" } else { "in_order" };
        let name = format!("100k_members_{groups}_groups_{visit}");
        bench.bench_function(name, |b| {
            b.iter(|| {
                // Every batch is 1 ms later: sessions move between wheel slots as in life.
                now_ms += 1;
                for _ in 0..BATCH {
                    let (group, member) = &fleet.order[next];
                    next = (next + 1) % fleet.order.len();
                    let result = fleet.coordinator.heartbeat(group, member, None, 7, now_ms);
                    debug_assert!(result.is_ok());
                    black_box(result).ok();
                }
                // Expire nothing (every member heartbeats well within its session), but pay
                // for the tick as the shard does.
                black_box(fleet.coordinator.tick(now_ms));
            })
        });
    }
    bench.finish();
}

criterion_group!(benches, heartbeats);
criterion_main!(benches);
