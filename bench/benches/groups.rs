//! Group coordinator micro benchmarks: heartbeats per second on one shard's coordinator
//! holding 100,000 members, visited in a shuffled order so lookups miss the CPU caches as
//! they would under real load (or in join order). Members either joined through this
//! coordinator (their generated ids let a heartbeat find them without a map lookup), were
//! restored after a restart from the records the joined fleet wrote, or were restored from
//! records with ids some other coordinator made (found by their fingerprint).
//!
//!
//! `heartbeat/board_*`: the same fleets' heartbeats through the coordinator's session board
//! first, as `Engine::heartbeat` answers them on the caller's thread (what the board cannot
//! answer goes to the coordinator; ids found only through the fingerprint index do).
//!
//! `rebalance/*`: one group of N members, Stable; one iteration is a full rebalance (the
//! leader rejoins, every member rejoins, the leader's SyncGroup with every assignment, the
//! GroupMetadata record acknowledged, every follower's SyncGroup). Per member it should cost
//! the same at 1,000 and 10,000 members: any per-request scan of the group shows as a cost per
//! member growing with N.
//!
//! `cargo bench -p coffer-bench --bench groups -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use coffer::format::{GroupMetadataValue, MemberMetadata};
use coffer::group::{
    GroupConfig, GroupCoordinator, GroupReply, JoinGroupRequest, JoinProtocol, SyncGroupRequest,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Members of the groups the `rebalance` benchmark rebalances.
const REBALANCE_GROUP_SIZES: [usize; 2] = [1_000, 10_000];

const MEMBERS: usize = 100_000;
/// Heartbeats per measured iteration.
const BATCH: usize = 4096;
const SESSION_TIMEOUT_MS: i32 = 45_000;

struct Fleet {
    coordinator: GroupCoordinator,
    /// (group id, member id) in a shuffled visiting order.
    order: Vec<(String, String)>,
    generation: i32,
    /// The GroupMetadata records the fleet's groups wrote.
    records: Vec<coffer::group::PersistRecord>,
}

/// A consumer's JoinGroup (JoinGroup v3: no `MEMBER_ID_REQUIRED` round trip).
fn join_request(group_id: &str, member_id: &str, client_id: &str) -> JoinGroupRequest {
    JoinGroupRequest {
        group_id: group_id.into(),
        member_id: member_id.into(),
        group_instance_id: None,
        client_id: client_id.into(),
        client_host: "/10.1.2.3".into(),
        session_timeout_ms: SESSION_TIMEOUT_MS,
        rebalance_timeout_ms: 300_000,
        protocol_type: "consumer".into(),
        protocols: vec![JoinProtocol {
            name: "range".into(),
            metadata: vec![0; 32],
        }],
        require_known_member_id: false,
    }
}

/// `groups` Stable groups of `MEMBERS / groups` members each, joined through the
/// coordinator (JoinGroup, then the leader's SyncGroup) and brought to generation 7.
fn joined_fleet(groups: usize, shuffle: bool) -> Fleet {
    let now_ms = 1_000;
    let config = GroupConfig {
        group_initial_rebalance_delay_ms: 0,
        ..GroupConfig::default()
    };
    let mut coordinator = GroupCoordinator::new(config, 1, now_ms);
    let per_group = MEMBERS / groups;
    let mut order = Vec::with_capacity(MEMBERS);
    let mut records = Vec::with_capacity(groups);
    let mut ticket = 0;
    for g in 0..groups {
        let group_id = format!("consumer-group-{g:05}");
        let client_id = format!("consumer-{g}");
        let join = |member_id: &str| join_request(&group_id, member_id, &client_id);
        // All members join one rebalance: the first join completes generation 1 alone, the
        // others wait; the first member's rejoin completes the next generation with all.
        let mut ids = Vec::with_capacity(per_group);
        for _ in 0..per_group {
            ticket += 1;
            let answered = coordinator.join(join(""), 0, ticket, now_ms);
            debug_assert!(answered.is_none());
        }
        let mut leader = None;
        let mut replies: Vec<GroupReply> = coordinator.take_replies().collect();
        ticket += 1;
        let first = match &replies[0] {
            GroupReply::Join(_, response) => response.member_id.clone(),
            GroupReply::Sync(..) => unreachable!(),
        };
        coordinator.join(join(&first), 0, ticket, now_ms);
        replies.extend(coordinator.take_replies());
        let mut generation = 0;
        for reply in replies.iter().skip(1) {
            if let GroupReply::Join(_, response) = reply {
                ids.push(response.member_id.clone());
                generation = response.generation_id;
                leader = Some(response.leader.clone());
            }
        }
        let leader = leader.expect("joined");
        ticket += 1;
        let sync = SyncGroupRequest {
            group_id: group_id.clone(),
            member_id: leader.clone(),
            group_instance_id: None,
            generation_id: generation,
            protocol_type: None,
            protocol_name: None,
            assignments: ids.iter().map(|id| (id.clone(), vec![0; 64])).collect(),
        };
        coordinator.sync(sync, ticket, now_ms);
        for record in coordinator.take_persists().collect::<Vec<_>>() {
            coordinator.persisted(&record.group_id, record.generation_id, Ok(1), now_ms);
            records.push(record);
        }
        coordinator.take_replies().for_each(drop);
        assert_eq!(ids.len(), per_group);
        assert_eq!(generation, 2);
        order.extend(ids.into_iter().map(|id| (group_id.clone(), id)));
    }
    shuffle_in_place(&mut order, shuffle);
    Fleet {
        coordinator,
        order,
        generation: 2,
        records,
    }
}

/// The joined fleet after a restart: a new coordinator restores every group from its
/// GroupMetadata record (the shard expects the members first, as at open).
fn restarted_fleet(groups: usize, shuffle: bool) -> Fleet {
    let joined = joined_fleet(groups, shuffle);
    let mut coordinator = GroupCoordinator::new(GroupConfig::default(), 2, 1_000);
    coordinator.expect_restored_members(MEMBERS);
    for record in joined.records {
        coordinator
            .load(&record.group_id, 0, record.value, 1, 1_000)
            .expect("groups fit");
    }
    Fleet {
        coordinator,
        order: joined.order,
        generation: 2,
        records: Vec::new(),
    }
}

/// Shuffles the visiting order (when asked), then copies the ids afresh in that order so
/// they lie in memory in the order they are read, as requests do in a receive buffer: the
/// benchmark measures the coordinator's cache misses, not the harness's.
fn shuffle_in_place(order: &mut Vec<(String, String)>, shuffle: bool) {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev().filter(|_| shuffle) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        order.swap(i, (s % (i as u64 + 1)) as usize);
    }
    let laid_out: Vec<(String, String)> = order
        .iter()
        .map(|(group, member)| (group.as_str().to_owned(), member.as_str().to_owned()))
        .collect();
    *order = laid_out;
}

/// `groups` Stable groups of `MEMBERS / groups` members each, restored at generation 7 from
/// records whose member ids this coordinator did not generate (another coordinator's, as
/// after a migration from Kafka), after `expect_restored_members` as a shard does at open:
/// their ids encode no handle, so they are placed by fingerprint (or indexed by it). Visited
/// in a shuffled order, or in join order when `shuffle` is false.
fn foreign_fleet(groups: usize, shuffle: bool) -> Fleet {
    let now_ms = 1_000;
    let mut coordinator = GroupCoordinator::new(GroupConfig::default(), 1, now_ms);
    coordinator.expect_restored_members(MEMBERS);
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
    shuffle_in_place(&mut order, shuffle);
    Fleet {
        coordinator,
        order,
        generation: 7,
        records: Vec::new(),
    }
}

fn heartbeats(c: &mut Criterion) {
    let mut bench = c.benchmark_group("heartbeat");
    bench.throughput(Throughput::Elements(BATCH as u64));
    // (fleet, groups, shuffled, through the session board)
    let runs = [
        ("joined", 1000, true, false),
        ("joined", 10, true, false),
        ("joined", 1000, false, false),
        ("restarted", 1000, true, false),
        ("foreign", 1000, true, false),
        ("foreign", 10, true, false),
        ("foreign", 1000, false, false),
        ("joined", 1000, true, true),
        ("restarted", 1000, true, true),
        ("foreign", 1000, true, true),
    ];
    for (how, groups, shuffle, via_board) in runs {
        let mut fleet = match how {
            "joined" => joined_fleet(groups, shuffle),
            "restarted" => restarted_fleet(groups, shuffle),
            _ => foreign_fleet(groups, shuffle),
        };
        let mut next = 0;
        let mut now_ms = 1_000;
        let visit = if shuffle { "shuffled" } else { "in_order" };
        let path = if via_board { "board_" } else { "" };
        let name = format!("{path}100k_{how}_members_{groups}_groups_{visit}");
        let board = fleet.coordinator.session_board();
        bench.bench_function(name, |b| {
            b.iter(|| {
                // Every batch is 1 ms later: sessions move between wheel slots as in life.
                now_ms += 1;
                for _ in 0..BATCH {
                    let (group, member) = &fleet.order[next];
                    next = (next + 1) % fleet.order.len();
                    let generation = fleet.generation;
                    // Through the board, as `Engine::heartbeat` does on a caller's thread
                    // (the coordinator answers what the board cannot, as there).
                    let result = via_board
                        .then(|| board.heartbeat(group, member, None, generation, now_ms))
                        .flatten()
                        .unwrap_or_else(|| {
                            fleet
                                .coordinator
                                .heartbeat(group, member, None, generation, now_ms)
                        });
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

/// One Stable group rebalanced over and over (see the module docs).
struct Rebalancing {
    coordinator: GroupCoordinator,
    leader: String,
    followers: Vec<String>,
    generation: i32,
    ticket: u64,
    now_ms: u64,
}

fn rebalance_join(member_id: &str) -> JoinGroupRequest {
    join_request("rebalancing", member_id, "consumer")
}

impl Rebalancing {
    /// `members` join (the first completes generation 1 alone, the others wait); the first
    /// member's rejoin completes generation 2 with all of them, and the leader syncs.
    fn new(members: usize) -> Rebalancing {
        let config = GroupConfig {
            group_initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        };
        let mut group = Rebalancing {
            coordinator: GroupCoordinator::new(config, 3, 1_000),
            leader: String::new(),
            followers: Vec::with_capacity(members),
            generation: 0,
            ticket: 0,
            now_ms: 1_000,
        };
        for _ in 0..members {
            group.ticket += 1;
            let answered = group
                .coordinator
                .join(rebalance_join(""), 0, group.ticket, 1_000);
            assert!(answered.is_none());
        }
        let member_ids = |coordinator: &mut GroupCoordinator| -> Vec<String> {
            let replies = coordinator.take_replies();
            replies
                .filter_map(|reply| match reply {
                    GroupReply::Join(_, response) => Some(response.member_id),
                    GroupReply::Sync(..) => None,
                })
                .collect()
        };
        group.leader = member_ids(&mut group.coordinator).remove(0);
        group.ticket += 1;
        let rejoin = rebalance_join(&group.leader);
        group.coordinator.join(rejoin, 0, group.ticket, 1_000);
        let leader = group.leader.clone();
        group.followers = member_ids(&mut group.coordinator);
        group.followers.retain(|id| *id != leader);
        assert_eq!(group.followers.len(), members - 1);
        group.generation = 2;
        group.sync_leader();
        group
    }

    /// One full rebalance (see the module docs).
    fn rebalance(&mut self) {
        self.now_ms += 1;
        for member_id in std::iter::once(&self.leader).chain(&self.followers) {
            self.ticket += 1;
            let request = rebalance_join(member_id);
            let answered = self.coordinator.join(request, 0, self.ticket, self.now_ms);
            assert!(answered.is_none());
        }
        let joined = self.coordinator.take_replies().count();
        assert_eq!(joined, self.followers.len() + 1);
        self.generation += 1;
        self.sync_leader();
        for member_id in &self.followers {
            self.ticket += 1;
            let sync = SyncGroupRequest {
                group_id: "rebalancing".into(),
                member_id: member_id.clone(),
                group_instance_id: None,
                generation_id: self.generation,
                protocol_type: None,
                protocol_name: None,
                assignments: Vec::new(),
            };
            let answered = self.coordinator.sync(sync, self.ticket, self.now_ms);
            assert!(answered.is_some_and(|response| response.error.is_none()));
        }
    }

    /// The leader's SyncGroup with every member's assignment, and the record acknowledged.
    fn sync_leader(&mut self) {
        self.ticket += 1;
        let assignments = std::iter::once(&self.leader)
            .chain(&self.followers)
            .map(|id| (id.clone(), vec![0; 64]))
            .collect();
        let sync = SyncGroupRequest {
            group_id: "rebalancing".into(),
            member_id: self.leader.clone(),
            group_instance_id: None,
            generation_id: self.generation,
            protocol_type: None,
            protocol_name: None,
            assignments,
        };
        assert!(
            self.coordinator
                .sync(sync, self.ticket, self.now_ms)
                .is_none()
        );
        let records: Vec<_> = self.coordinator.take_persists().collect();
        for record in records {
            let (group_id, generation) = (record.group_id, record.generation_id);
            self.coordinator
                .persisted(&group_id, generation, Ok(1), self.now_ms);
        }
        assert_eq!(self.coordinator.take_replies().count(), 1);
    }
}

fn rebalances(c: &mut Criterion) {
    let mut bench = c.benchmark_group("rebalance");
    for members in REBALANCE_GROUP_SIZES {
        let mut group = Rebalancing::new(members);
        bench.throughput(Throughput::Elements(members as u64));
        let name = format!("one_group_{members}_members");
        bench.bench_function(name, |b| b.iter(|| group.rebalance()));
    }
    bench.finish();
}

criterion_group!(benches, heartbeats, rebalances);
criterion_main!(benches);
