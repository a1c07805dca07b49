//! The group-protocol driver of heartbeat-flood and rebalance-storm: every consumer really
//! joins through the engine (JoinGroup with the `MEMBER_ID_REQUIRED` dance, the leader's
//! SyncGroup with an assignment of the group's partitions), heartbeats every
//! `heartbeat.interval.ms` in an open loop, commits with its generation and member id
//! (`commit_offsets_fenced`), and — in rebalance-storm — leaves, goes silent until its
//! session expires, and rejoins, so groups keep rebalancing.
//!
//! One generator thread owns whole groups, so a leader assigns its group without talking to
//! another thread. Each consumer has at most one group call (join, sync, heartbeat, leave)
//! and one commit in flight, the way a Kafka client's coordinator does; a heartbeat due while
//! the previous one is unanswered is sent when it returns, its latency still counted from the
//! instant it was due (coordinated-omission correction). Timers of all of the thread's
//! consumers live in one heap, so 320,000 consumers need a handful of threads, not 320,000.
//!
//! Assignment model: a consumer owns the same contiguous range of its group's partitions in
//! every generation (the fleet's range for its slot, as a sticky assignor keeps it); the
//! partitions of a consumer that is away are not handed to the others. The leader's
//! SyncGroup carries each present member's range in Kafka's ConsumerProtocol assignment
//! format, so the assignment bytes and the GroupMetadata record have their real size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use coffer::group::{
    CommitFence, GroupError, JoinGroupRequest, JoinGroupResponse, JoinProtocol, LeaveGroupResponse,
    LeavingMember, SyncGroupRequest, SyncGroupResponse,
};
use coffer::{CommitFuture, Engine, GroupFuture, OffsetCommit};
use crossbeam_channel::{Receiver, Sender, bounded};

use crate::driver::{LiveCounters, SplitMix64};
use crate::fleet::{Fleet, Member};
use crate::run::ThreadTotals;
use crate::run::Timeline;
use crate::stats::{Answer, OpStats};
use crate::sys;
use crate::wheel::{Timer, Wheel};

/// Most consumers one generator thread plays (two request slots each).
pub const CONSUMERS_PER_THREAD_MAX: usize = 1 << 20;
/// `retry.backoff.ms`: how long a consumer waits before retrying after an unexpected error.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Longest sleep between two checks of the clock.
const IDLE_WAIT_MAX: Duration = Duration::from_millis(20);
/// A churn event tries this many random consumers to find a stable one.
const CHURN_PICK_TRIES: usize = 8;
/// A heartbeat or commit sent this much after its due instant counts as late.
const LATE_SEND: Duration = Duration::from_millis(1);

/// The group-protocol operations, in the order of [`GroupOps::stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Join = 0,
    Sync = 1,
    Heartbeat = 2,
    Leave = 3,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Join, Op::Sync, Op::Heartbeat, Op::Leave];

    pub fn name(self) -> &'static str {
        match self {
            Op::Join => "join",
            Op::Sync => "sync",
            Op::Heartbeat => "heartbeat",
            Op::Leave => "leave",
        }
    }

    /// Heartbeats are paced (open loop): latency from the due instant. The others are
    /// reactions to answers: latency from the send.
    pub fn latency_from(self) -> &'static str {
        match self {
            Op::Heartbeat => "intended",
            _ => "issued",
        }
    }
}

/// How the consumers behave; the same for every thread.
#[derive(Clone, Copy, Debug)]
pub struct GroupPacing {
    pub heartbeat_interval: Duration,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// Between two commits of one consumer.
    pub commit_interval: Duration,
    /// Churn events (a leave or a silent expiry) per second, for this thread.
    pub churn_per_sec: f64,
    /// How long a consumer that left stays away before rejoining as a new member.
    pub rejoin_delay: Duration,
    /// rebalance-storm: `ILLEGAL_GENERATION`, `UNKNOWN_MEMBER_ID` and
    /// `REBALANCE_IN_PROGRESS` answers are the protocol at work, not failures.
    pub fencing_expected: bool,
}

/// Shared between the threads and the run: when setup is over, and the timeline.
pub struct Coordination {
    /// Threads whose consumers have all been stable once.
    pub threads_ready: AtomicUsize,
    /// Set by the run once every thread is ready (or setup timed out).
    pub timeline: OnceLock<Timeline>,
    /// Consumers currently stable, over all threads.
    pub stable: AtomicU64,
    /// Heartbeats answered, over all threads (for the progress line).
    pub heartbeats: AtomicU64,
}

impl Coordination {
    pub fn new() -> Coordination {
        Coordination {
            threads_ready: AtomicUsize::new(0),
            timeline: OnceLock::new(),
            stable: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
        }
    }
}

/// What one thread is told to do.
pub struct MembersPlan {
    pub thread: usize,
    /// Global indices of the groups it plays, every member of each.
    pub groups: Vec<u32>,
    pub pacing: GroupPacing,
    pub seed: u64,
    /// `offsets.commit.timeout.ms`: how long the drain waits for the last answers.
    pub commit_timeout: Duration,
}

/// Counters of the group protocol's life.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupCounters {
    /// Consumers that sent LeaveGroup (churn).
    pub leaves: u64,
    /// Consumers that went silent so that their session expires (churn).
    pub expiries: u64,
    /// Generations the consumers saw their groups advance by, summed over groups, after
    /// setup.
    pub generations_advanced: u64,
    /// Heartbeats due while the previous one was unanswered (sent when it returned).
    pub heartbeats_delayed: u64,
    /// Heartbeats sent more than 1 ms after they were due.
    pub heartbeats_late: u64,
    /// Group calls still unanswered when the drain gave up (joins waiting for a
    /// rebalance, typically).
    pub calls_abandoned_at_stop: u64,
    /// Syncs whose assignment was not the consumer's range (must be 0).
    pub assignment_mismatches: u64,
    /// Consumers stable when the run stopped.
    pub stable_at_stop: u64,
}

impl GroupCounters {
    pub fn add(&mut self, other: &GroupCounters) {
        self.leaves += other.leaves;
        self.expiries += other.expiries;
        self.generations_advanced += other.generations_advanced;
        self.heartbeats_delayed += other.heartbeats_delayed;
        self.heartbeats_late += other.heartbeats_late;
        self.calls_abandoned_at_stop += other.calls_abandoned_at_stop;
        self.assignment_mismatches += other.assignment_mismatches;
        self.stable_at_stop += other.stable_at_stop;
    }
}

/// Statistics of the group operations (join, sync, heartbeat, leave), by [`Op`].
#[derive(Clone, Debug, Default)]
pub struct GroupOps {
    pub stats: [OpStats; 4],
    pub counters: GroupCounters,
}

impl GroupOps {
    pub fn merge(&mut self, other: &GroupOps) {
        for (into, from) in self.stats.iter_mut().zip(&other.stats) {
            into.merge(from);
        }
        self.counters.add(&other.counters);
    }
}

/// What one thread reports back.
pub struct MembersResult {
    pub group_ops: GroupOps,
    pub commit: OpStats,
    /// The counts every generator thread keeps; its `issued_in_window` counts requests of
    /// any kind.
    pub thread: ThreadTotals,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not in the group; a join timer is armed.
    Unjoined,
    Joining,
    Syncing,
    Stable,
    /// Left; a join timer brings it back as a new member.
    Away,
    /// Silent: no more heartbeats, but still committing with its old generation and member
    /// id (a consumer whose heartbeats stopped, its poll loop still running) until a join
    /// timer brings it back, after its session has expired, as a new member. Its commits
    /// from then on are the stale ones the coordinator must fence.
    Zombie,
}

/// Timer kinds in the heap (heartbeats have their own wheel).
const TIMER_COMMIT: u8 = 1;
const TIMER_JOIN: u8 = 2;

struct Consumer {
    phase: Phase,
    /// Generation and member id, sent with every heartbeat and commit.
    fence: CommitFence,
    /// Bumped whenever the consumer enters or leaves Stable, or arms a join: timers of an
    /// older incarnation are ignored.
    incarnation: u32,
    /// A heartbeat due while a group call was in flight, by its due time (ns since epoch).
    owed_heartbeat_ns: Option<u64>,
}

enum Call {
    Join(GroupFuture<JoinGroupResponse>),
    Sync(GroupFuture<SyncGroupResponse>),
    Heartbeat(GroupFuture<Result<(), GroupError>>),
    Leave(GroupFuture<LeaveGroupResponse>),
}

enum Outcome {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
    Heartbeat(Result<(), GroupError>),
    Leave(LeaveGroupResponse),
}

impl Call {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self {
            Call::Join(f) => Pin::new(f).poll(cx).map(Outcome::Join),
            Call::Sync(f) => Pin::new(f).poll(cx).map(Outcome::Sync),
            Call::Heartbeat(f) => Pin::new(f).poll(cx).map(Outcome::Heartbeat),
            Call::Leave(f) => Pin::new(f).poll(cx).map(Outcome::Leave),
        }
    }
}

struct GroupCall {
    call: Call,
    intended: Instant,
}

struct CommitCall {
    future: CommitFuture,
    seq: u64,
    intended: Instant,
}

/// Sends `slot` (consumer × 2 + kind) to the driver when a request completes, and unparks
/// the driver. The driver sleeps in `park_timeout`, not in a channel's blocking receive,
/// whose spinning before it blocks cost more CPU than the heartbeats themselves.
struct SlotWaker {
    slot: u32,
    ready: Sender<u32>,
    driver: std::thread::Thread,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // One request per slot and one wake per request: the channel, sized to the slots,
        // is never full; were it full, the drain would still collect the request.
        let _ = self.ready.try_send(self.slot);
        self.driver.unpark();
    }
}

struct Members<'a> {
    engine: &'a Engine,
    fleet: &'a Fleet,
    plan: &'a MembersPlan,
    live: &'a LiveCounters,
    shared: &'a Coordination,
    epoch: Instant,
    timeline: Option<Timeline>,
    ready_reported: bool,
    stopping: bool,
    rng: SplitMix64,
    /// Global member index of each local consumer.
    globals: Vec<u32>,
    consumers: Vec<Consumer>,
    group_calls: Vec<Option<GroupCall>>,
    commits: Vec<Option<CommitCall>>,
    wakers: Vec<Waker>,
    woken: Receiver<u32>,
    /// Commit and join timers: (due, ns since epoch; local consumer; timer kind;
    /// incarnation), earliest first.
    timers: BinaryHeap<Reverse<(u64, u32, u8, u32)>>,
    /// Heartbeat timers, by far the most numerous.
    heartbeats: Wheel,
    /// Heartbeat timers due now (kept to reuse its memory).
    heartbeats_due: Vec<Timer>,
    stable: usize,
    /// Highest generation seen per local group, at the end of setup and now.
    generation_at_setup: Vec<i32>,
    generation_seen: Vec<i32>,
    /// Local group of each local consumer.
    local_group: Vec<u32>,
    next_churn_ns: u64,
    in_flight: u64,
    request: Vec<OffsetCommit<'a>>,
    cpu_at_measure: Option<Duration>,
    result: MembersResult,
}

/// Runs one thread's consumers: setup (everyone joins), then the timeline the run sets,
/// then the drain.
pub fn run_members(
    engine: &Engine,
    fleet: &Fleet,
    plan: &MembersPlan,
    live: &LiveCounters,
    shared: &Coordination,
) -> MembersResult {
    let mut members = Members::new(engine, fleet, plan, live, shared);
    members.run();
    members.finish()
}

impl<'a> Members<'a> {
    fn new(
        engine: &'a Engine,
        fleet: &'a Fleet,
        plan: &'a MembersPlan,
        live: &'a LiveCounters,
        shared: &'a Coordination,
    ) -> Members<'a> {
        let mut globals = Vec::new();
        let mut local_group = Vec::new();
        for (local, &g) in plan.groups.iter().enumerate() {
            let group = &fleet.groups[g as usize];
            for m in group.first_member..group.first_member + group.members {
                globals.push(m as u32);
                local_group.push(local as u32);
            }
        }
        let consumers_count = globals.len();
        let (ready, woken) = bounded(consumers_count * 2);
        let driver = std::thread::current();
        let wakers = (0..consumers_count as u32 * 2)
            .map(|slot| {
                Waker::from(Arc::new(SlotWaker {
                    slot,
                    ready: ready.clone(),
                    driver: driver.clone(),
                }))
            })
            .collect();
        let rng = SplitMix64(plan.seed ^ (plan.thread as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let mut timers = BinaryHeap::with_capacity(consumers_count * 2);
        // Every consumer starts unjoined with a join due now; the first joins of a group all
        // reach the coordinator before any rejoin with an id, so a group forms in one
        // generation.
        for local in 0..consumers_count as u32 {
            timers.push(Reverse((0, local, TIMER_JOIN, 0)));
        }
        let groups = plan.groups.len();
        Members {
            engine,
            fleet,
            plan,
            live,
            shared,
            epoch: Instant::now(),
            timeline: None,
            ready_reported: false,
            stopping: false,
            next_churn_ns: 0,
            consumers: (0..consumers_count)
                .map(|_| Consumer {
                    phase: Phase::Unjoined,
                    fence: CommitFence {
                        generation_id: -1,
                        member_id: String::new(),
                        group_instance_id: None,
                    },
                    incarnation: 0,
                    owed_heartbeat_ns: None,
                })
                .collect(),
            group_calls: (0..consumers_count).map(|_| None).collect(),
            commits: (0..consumers_count).map(|_| None).collect(),
            wakers,
            woken,
            timers,
            // Every heartbeat is armed at most one interval ahead.
            heartbeats: Wheel::new(plan.pacing.heartbeat_interval.as_nanos() as u64),
            heartbeats_due: Vec::new(),
            stable: 0,
            generation_at_setup: vec![0; groups],
            generation_seen: vec![0; groups],
            local_group,
            in_flight: 0,
            request: Vec::with_capacity(crate::fleet::KEYS_PER_REQUEST_MAX),
            cpu_at_measure: None,
            result: MembersResult {
                group_ops: GroupOps::default(),
                commit: OpStats::default(),
                thread: ThreadTotals::new(
                    globals.clone(),
                    engine.config().offsets_topic_num_partitions as usize,
                ),
            },
            globals,
            rng,
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    fn run(&mut self) {
        if self.consumers.is_empty() {
            self.shared.threads_ready.fetch_add(1, Ordering::AcqRel);
            return;
        }
        loop {
            let now = Instant::now();
            self.watch_timeline(now);
            if let Some(t) = self.timeline
                && now >= t.stop_at
            {
                break;
            }
            self.collect_ready();
            self.fire_timers(now);
            self.churn(now);
            self.wait_for_work();
        }
        let cpu_end = sys::thread_cpu();
        self.result.thread.cpu_in_window =
            cpu_end.saturating_sub(self.cpu_at_measure.unwrap_or(cpu_end));
        self.drain();
    }

    /// Reports this thread ready once all its consumers are stable, picks up the timeline
    /// once the run sets it, and notes the start of the measured window.
    fn watch_timeline(&mut self, now: Instant) {
        if !self.ready_reported && self.stable == self.consumers.len() {
            self.ready_reported = true;
            self.shared.threads_ready.fetch_add(1, Ordering::AcqRel);
        }
        if self.timeline.is_none()
            && let Some(timeline) = self.shared.timeline.get()
        {
            self.timeline = Some(*timeline);
            self.generation_at_setup.clone_from(&self.generation_seen);
            self.next_churn_ns = self.ns(timeline.start);
        }
        if self.cpu_at_measure.is_none() && self.timeline.is_some_and(|t| now >= t.measure_from) {
            self.cpu_at_measure = Some(sys::thread_cpu());
        }
    }

    fn wait_for_work(&mut self) {
        let now = Instant::now();
        let mut until = now + IDLE_WAIT_MAX;
        if let Some(Reverse((due_ns, ..))) = self.timers.peek() {
            until = until.min(self.at(*due_ns));
        }
        if let Some(due_ns) = self.heartbeats.next_due_ns() {
            until = until.min(self.at(due_ns));
        }
        if self.plan.pacing.churn_per_sec > 0.0 && self.timeline.is_some() {
            until = until.min(self.at(self.next_churn_ns));
        }
        if let Some(t) = self.timeline {
            until = until.min(t.stop_at);
        }
        if until <= now || !self.woken.is_empty() {
            return;
        }
        // A wake between the check and the park leaves the token: the park returns at once.
        std::thread::park_timeout(until - now);
    }

    fn collect_ready(&mut self) {
        while let Ok(slot) = self.woken.try_recv() {
            self.complete(slot);
        }
    }

    fn arm(&mut self, due_ns: u64, local: u32, kind: u8) {
        let incarnation = self.consumers[local as usize].incarnation;
        self.timers
            .push(Reverse((due_ns, local, kind, incarnation)));
    }

    /// Fires every heartbeat due by `now`: sends it, or owes it while the consumer's
    /// previous group call is unanswered.
    fn fire_heartbeats(&mut self, now_ns: u64) {
        let mut due = std::mem::take(&mut self.heartbeats_due);
        self.heartbeats.take_due(now_ns, &mut due);
        let interval_ns = self.plan.pacing.heartbeat_interval.as_nanos() as u64;
        for timer in due.drain(..) {
            let Timer {
                due_ns,
                local,
                incarnation,
            } = timer;
            let consumer = &mut self.consumers[local as usize];
            if consumer.incarnation != incarnation || consumer.phase != Phase::Stable {
                continue;
            }
            self.heartbeats.arm(Timer {
                due_ns: due_ns + interval_ns,
                local,
                incarnation,
            });
            if self.group_calls[local as usize].is_some() {
                self.result.group_ops.counters.heartbeats_delayed += 1;
                consumer.owed_heartbeat_ns.get_or_insert(due_ns);
            } else {
                self.send_heartbeat(local, due_ns);
            }
        }
        self.heartbeats_due = due;
    }

    /// Fires every timer due by `now` (heartbeats, commits, joins).
    fn fire_timers(&mut self, now: Instant) {
        let now_ns = self.ns(now);
        self.fire_heartbeats(now_ns);
        while let Some(&Reverse((due_ns, local, kind, incarnation))) = self.timers.peek() {
            if due_ns > now_ns {
                break;
            }
            self.timers.pop();
            let consumer = &self.consumers[local as usize];
            if consumer.incarnation != incarnation {
                continue;
            }
            match kind {
                TIMER_COMMIT if matches!(consumer.phase, Phase::Stable | Phase::Zombie) => {
                    let next = due_ns + self.plan.pacing.commit_interval.as_nanos() as u64;
                    self.arm(next, local, TIMER_COMMIT);
                    if self.commits[local as usize].is_some() {
                        self.result.thread.coalesced += 1;
                    } else {
                        self.send_commit(local, self.at(due_ns));
                    }
                }
                TIMER_JOIN
                    if matches!(
                        consumer.phase,
                        Phase::Unjoined | Phase::Away | Phase::Zombie
                    ) =>
                {
                    if consumer.phase == Phase::Zombie {
                        // Restarted: a new member; its old commit timer dies.
                        self.leave_stable(local, Phase::Unjoined);
                        let fence = &mut self.consumers[local as usize].fence;
                        fence.member_id.clear();
                        fence.generation_id = -1;
                    }
                    if self.group_calls[local as usize].is_some() {
                        // Its LeaveGroup is still unanswered: try again shortly.
                        let next = now_ns + RETRY_BACKOFF.as_nanos() as u64;
                        self.arm(next, local, TIMER_JOIN);
                    } else {
                        self.send_join(local);
                    }
                }
                _ => {}
            }
        }
    }

    /// rebalance-storm: at the churn rate, a stable consumer leaves (LeaveGroup, back after
    /// the rejoin delay as a new member) or goes silent (no more heartbeats; back as a new
    /// member once its session has expired), alternately at random.
    fn churn(&mut self, now: Instant) {
        let per_sec = self.plan.pacing.churn_per_sec;
        let Some(timeline) = self.timeline else {
            return;
        };
        if per_sec <= 0.0 || self.stopping {
            return;
        }
        let step_ns = (1e9 / per_sec) as u64;
        let now_ns = self.ns(now.min(timeline.stop_at));
        while self.next_churn_ns <= now_ns {
            self.next_churn_ns += step_ns.max(1);
            let count = self.consumers.len() as u64;
            let picked = (0..CHURN_PICK_TRIES)
                .map(|_| (self.rng.next() % count) as u32)
                .find(|&l| {
                    self.consumers[l as usize].phase == Phase::Stable
                        && self.group_calls[l as usize].is_none()
                });
            let Some(local) = picked else {
                continue;
            };
            let back_in = if self.rng.next().is_multiple_of(2) {
                self.leave_stable(local, Phase::Away);
                let consumer = &mut self.consumers[local as usize];
                let member_id = std::mem::take(&mut consumer.fence.member_id);
                consumer.fence.generation_id = -1;
                self.result.group_ops.counters.leaves += 1;
                self.send_leave(local, member_id);
                self.plan.pacing.rejoin_delay
            } else {
                self.result.group_ops.counters.expiries += 1;
                self.go_silent(local);
                Duration::from_millis(self.plan.pacing.session_timeout_ms as u64)
            };
            self.arm(now_ns + back_in.as_nanos() as u64, local, TIMER_JOIN);
        }
    }

    /// A consumer leaves Stable (rebalance noticed, churn): its heartbeat and commit timers
    /// die with its incarnation.
    fn leave_stable(&mut self, local: u32, phase: Phase) {
        let consumer = &mut self.consumers[local as usize];
        if consumer.phase == Phase::Stable {
            self.stable -= 1;
            self.shared.stable.fetch_sub(1, Ordering::Relaxed);
        }
        consumer.phase = phase;
        consumer.incarnation = consumer.incarnation.wrapping_add(1);
        consumer.owed_heartbeat_ns = None;
    }

    /// Stops heartbeating but keeps committing (the incarnation, hence the commit timer,
    /// stays).
    fn go_silent(&mut self, local: u32) {
        let consumer = &mut self.consumers[local as usize];
        debug_assert_eq!(consumer.phase, Phase::Stable);
        consumer.phase = Phase::Zombie;
        consumer.owed_heartbeat_ns = None;
        self.stable -= 1;
        self.shared.stable.fetch_sub(1, Ordering::Relaxed);
    }

    fn become_stable(&mut self, local: u32) {
        let consumer = &mut self.consumers[local as usize];
        consumer.phase = Phase::Stable;
        consumer.incarnation = consumer.incarnation.wrapping_add(1);
        self.stable += 1;
        self.shared.stable.fetch_add(1, Ordering::Relaxed);
        // Seeded phases spread the fleet's heartbeats and commits over their intervals, as
        // consumers started at different times would be.
        let now_ns = self.ns(Instant::now());
        let pacing = self.plan.pacing;
        let heartbeat_ns = pacing.heartbeat_interval.as_nanos().max(1) as u64;
        let commit_ns = pacing.commit_interval.as_nanos().max(1) as u64;
        let first_heartbeat = now_ns + self.rng.next() % heartbeat_ns;
        let first_commit = now_ns + self.rng.next() % commit_ns;
        let incarnation = self.consumers[local as usize].incarnation;
        self.heartbeats.arm(Timer {
            due_ns: first_heartbeat,
            local,
            incarnation,
        });
        self.arm(first_commit, local, TIMER_COMMIT);
    }

    /// Rejoins now (a rebalance was noticed), keeping the member id unless `fresh`.
    fn rejoin(&mut self, local: u32, fresh: bool, after: Duration) {
        self.leave_stable(local, Phase::Unjoined);
        let consumer = &mut self.consumers[local as usize];
        if fresh {
            consumer.fence.member_id.clear();
            consumer.fence.generation_id = -1;
        }
        if !self.stopping {
            let due = self.ns(Instant::now() + after);
            self.arm(due, local, TIMER_JOIN);
        }
    }

    fn group_name(&self, local: u32) -> &'a str {
        let fleet: &'a Fleet = self.fleet;
        let member = &fleet.members[self.globals[local as usize] as usize];
        &fleet.group_of(member).name
    }

    fn in_window(&self, at: Instant) -> bool {
        self.timeline
            .is_some_and(|t| at >= t.measure_from && at < t.stop_at)
    }

    fn note_issue(&mut self, intended: Instant, paced: bool) -> bool {
        let sent = Instant::now();
        let in_window = self.in_window(sent);
        if in_window {
            self.result.thread.issued_in_window += 1;
        }
        paced && in_window && sent.duration_since(intended) > LATE_SEND
    }

    fn send_join(&mut self, local: u32) {
        let fleet: &'a Fleet = self.fleet;
        let global = self.globals[local as usize];
        let pacing = self.plan.pacing;
        let consumer = &mut self.consumers[local as usize];
        consumer.phase = Phase::Joining;
        // Joins are rare (setup, rebalances): the owned request is allocated here.
        let request = JoinGroupRequest {
            group_id: fleet.group_of(&fleet.members[global as usize]).name.clone(),
            member_id: consumer.fence.member_id.clone(),
            group_instance_id: None,
            client_id: "loadgen".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: pacing.session_timeout_ms,
            rebalance_timeout_ms: pacing.rebalance_timeout_ms,
            protocol_type: "consumer".into(),
            protocols: vec![JoinProtocol {
                name: "range".into(),
                // The subscription carries the consumer's slot, so the leader knows which
                // range each member id owns.
                metadata: global.to_le_bytes().to_vec(),
            }],
            require_known_member_id: true,
        };
        let now = Instant::now();
        self.note_issue(now, false);
        let call = Call::Join(self.engine.join_group(request));
        self.start_call(local, call, now);
    }

    fn send_heartbeat(&mut self, local: u32, due_ns: u64) {
        let intended = self.at(due_ns);
        if self.note_issue(intended, true) {
            self.result.group_ops.counters.heartbeats_late += 1;
        }
        let consumer = &self.consumers[local as usize];
        // The engine copies the ids into its own request (its allocation, not ours).
        let future = self.engine.heartbeat(
            self.group_name(local),
            &consumer.fence.member_id,
            None,
            consumer.fence.generation_id,
        );
        self.start_call(local, Call::Heartbeat(future), intended);
    }

    fn send_leave(&mut self, local: u32, member_id: String) {
        let now = Instant::now();
        self.note_issue(now, false);
        let leaving = vec![LeavingMember {
            member_id,
            group_instance_id: None,
        }];
        let future = self.engine.leave_group(self.group_name(local), leaving);
        self.start_call(local, Call::Leave(future), now);
    }

    fn send_sync(&mut self, local: u32, joined: &JoinGroupResponse) {
        let consumer = &mut self.consumers[local as usize];
        consumer.phase = Phase::Syncing;
        // Only the leader's SyncGroup carries assignments: every member's range, found
        // from the slot in its subscription.
        let assignments = joined
            .members
            .iter()
            .filter_map(|m| {
                let slot = u32::from_le_bytes(m.metadata.get(..4)?.try_into().ok()?);
                let member = self.fleet.members.get(slot as usize)?;
                Some((m.member_id.clone(), assignment_bytes(self.fleet, member)))
            })
            .collect();
        let request = SyncGroupRequest {
            group_id: self.group_name(local).to_owned(),
            member_id: joined.member_id.clone(),
            group_instance_id: None,
            generation_id: joined.generation_id,
            protocol_type: joined.protocol_type.clone(),
            protocol_name: joined.protocol_name.clone(),
            assignments,
        };
        let now = Instant::now();
        self.note_issue(now, false);
        let call = Call::Sync(self.engine.sync_group(request));
        self.start_call(local, call, now);
    }

    fn send_commit(&mut self, local: u32, intended: Instant) {
        let fleet: &'a Fleet = self.fleet;
        let member = fleet.members[self.globals[local as usize] as usize];
        let group = fleet.group_of(&member);
        let seq = (self.result.thread.last_issued_seq[local as usize] + 1) as u64;
        self.result.thread.last_issued_seq[local as usize] = seq as i64;
        if self.note_issue(intended, true) {
            self.result.thread.late_sends += 1;
        }
        fleet.fill_commit(&mut self.request, &member, seq);
        let offsets_partition = self.engine.partition_for(&group.name) as usize;
        if let Some(count) = self
            .result
            .thread
            .per_offsets_partition
            .get_mut(offsets_partition)
        {
            *count += 1;
        }
        let fence = &self.consumers[local as usize].fence;
        let mut future = self
            .engine
            .commit_offsets_fenced(&group.name, fence, &self.request);
        let mut cx = Context::from_waker(&self.wakers[local as usize * 2 + 1]);
        match Pin::new(&mut future).poll(&mut cx) {
            Poll::Ready(outcome) => self.on_commit(local, seq, intended, outcome),
            Poll::Pending => {
                self.in_flight_changed(1);
                self.commits[local as usize] = Some(CommitCall {
                    future,
                    seq,
                    intended,
                });
            }
        }
    }

    fn start_call(&mut self, local: u32, mut call: Call, intended: Instant) {
        let mut cx = Context::from_waker(&self.wakers[local as usize * 2]);
        match call.poll(&mut cx) {
            Poll::Ready(outcome) => self.on_group_answer(local, outcome, intended),
            Poll::Pending => {
                self.in_flight_changed(1);
                self.group_calls[local as usize] = Some(GroupCall { call, intended });
            }
        }
    }

    fn in_flight_changed(&mut self, up: i64) {
        if up > 0 {
            self.in_flight += 1;
            self.live.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.in_flight -= 1;
            self.live.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn complete(&mut self, slot: u32) {
        let local = slot / 2;
        let mut cx = Context::from_waker(&self.wakers[slot as usize]);
        if slot.is_multiple_of(2) {
            let Some(mut entry) = self.group_calls[local as usize].take() else {
                return;
            };
            match entry.call.poll(&mut cx) {
                Poll::Ready(outcome) => {
                    self.in_flight_changed(-1);
                    self.on_group_answer(local, outcome, entry.intended);
                }
                Poll::Pending => self.group_calls[local as usize] = Some(entry),
            }
        } else {
            let Some(mut entry) = self.commits[local as usize].take() else {
                return;
            };
            match Pin::new(&mut entry.future).poll(&mut cx) {
                Poll::Ready(outcome) => {
                    self.in_flight_changed(-1);
                    self.on_commit(local, entry.seq, entry.intended, outcome);
                }
                Poll::Pending => self.commits[local as usize] = Some(entry),
            }
        }
    }

    /// Whether an error code is the group protocol at work rather than a failure.
    fn expected(&self, op: Option<Op>, code: i16) -> bool {
        let fencing = matches!(code, 22 | 25 | 27);
        match op {
            Some(Op::Join) if code == 79 => true,
            // While the fleet forms, groups rebalance as members arrive.
            _ if fencing && self.timeline.is_none() => true,
            _ => fencing && self.plan.pacing.fencing_expected,
        }
    }

    fn answer(&self, local: u32, intended: Instant, code: i16, offsets: u32) -> Answer {
        let answered = Instant::now();
        Answer {
            member: self.globals[local as usize],
            seq: 0,
            latency_us: u64::try_from(answered.duration_since(intended).as_micros())
                .unwrap_or(u64::MAX),
            code: i32::from(code),
            in_latency_window: self.in_window(intended),
            in_rate_window: self.in_window(answered),
            hot: false,
            partition_offsets: offsets,
        }
    }

    fn record(&mut self, op: Op, local: u32, intended: Instant, error: Option<GroupError>) {
        let code = error.map_or(0, GroupError::kafka_code);
        let answer = self.answer(local, intended, code, 0);
        let expected = code != 0 && self.expected(Some(op), code);
        let message = || error.map_or_else(String::new, |e| e.to_string());
        self.result.group_ops.stats[op as usize].record_classified(&answer, expected, message);
    }

    fn on_group_answer(&mut self, local: u32, outcome: Outcome, intended: Instant) {
        match outcome {
            Outcome::Join(response) => self.on_join(local, response, intended),
            Outcome::Sync(response) => self.on_sync(local, response, intended),
            Outcome::Heartbeat(result) => self.on_heartbeat(local, result, intended),
            Outcome::Leave(response) => {
                let error = response
                    .error
                    .or_else(|| response.members.first().and_then(|(_, e)| *e));
                self.record(Op::Leave, local, intended, error);
            }
        }
    }

    fn on_join(&mut self, local: u32, response: JoinGroupResponse, intended: Instant) {
        self.record(Op::Join, local, intended, response.error);
        if self.stopping {
            return;
        }
        match response.error {
            None => {
                let g = self.local_group[local as usize] as usize;
                self.generation_seen[g] = self.generation_seen[g].max(response.generation_id);
                let consumer = &mut self.consumers[local as usize];
                consumer.fence.generation_id = response.generation_id;
                consumer.fence.member_id.clone_from(&response.member_id);
                self.send_sync(local, &response);
            }
            Some(GroupError::MemberIdRequired) => {
                let consumer = &mut self.consumers[local as usize];
                consumer.fence.member_id = response.member_id;
                self.rejoin(local, false, Duration::ZERO);
            }
            Some(GroupError::UnknownMemberId) => self.rejoin(local, true, Duration::ZERO),
            Some(_) => self.rejoin(local, false, RETRY_BACKOFF),
        }
    }

    fn on_sync(&mut self, local: u32, response: SyncGroupResponse, intended: Instant) {
        self.record(Op::Sync, local, intended, response.error);
        if self.stopping {
            return;
        }
        match response.error {
            None => {
                let member = &self.fleet.members[self.globals[local as usize] as usize];
                if response.assignment != assignment_bytes(self.fleet, member) {
                    self.result.group_ops.counters.assignment_mismatches += 1;
                }
                self.become_stable(local);
            }
            Some(GroupError::RebalanceInProgress | GroupError::IllegalGeneration) => {
                self.rejoin(local, false, Duration::ZERO);
            }
            Some(GroupError::UnknownMemberId) => self.rejoin(local, true, Duration::ZERO),
            Some(_) => self.rejoin(local, false, RETRY_BACKOFF),
        }
    }

    fn on_heartbeat(&mut self, local: u32, result: Result<(), GroupError>, intended: Instant) {
        self.record(Op::Heartbeat, local, intended, result.err());
        self.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
        if self.stopping || self.consumers[local as usize].phase != Phase::Stable {
            return;
        }
        match result {
            Ok(()) => {}
            Err(GroupError::RebalanceInProgress | GroupError::IllegalGeneration) => {
                self.rejoin(local, false, Duration::ZERO);
                return;
            }
            Err(GroupError::UnknownMemberId | GroupError::FencedInstanceId) => {
                self.rejoin(local, true, Duration::ZERO);
                return;
            }
            // Anything else: the next heartbeat tries again.
            Err(_) => {}
        }
        if let Some(owed_ns) = self.consumers[local as usize].owed_heartbeat_ns.take() {
            self.send_heartbeat(local, owed_ns);
        }
    }

    fn on_commit(&mut self, local: u32, seq: u64, intended: Instant, outcome: coffer::Result<()>) {
        let code = match &outcome {
            Ok(()) => 0,
            Err(error) => error.kafka_error_code().unwrap_or(-1),
        };
        let member = &self.fleet.members[self.globals[local as usize] as usize];
        let mut answer = self.answer(local, intended, code, member.keys);
        answer.seq = seq;
        let expected = code > 0 && self.expected(None, code);
        let message = || {
            outcome
                .as_ref()
                .err()
                .map_or_else(String::new, |e| e.to_string())
        };
        self.result
            .commit
            .record_classified(&answer, expected, message);
        if answer.is_ok() {
            self.result.thread.total_acks += 1;
            self.live.acks.fetch_add(1, Ordering::Relaxed);
            let last = &mut self.result.thread.last_acked_seq[local as usize];
            *last = (*last).max(seq as i64);
        } else if !expected {
            self.live.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits for what is in flight: commits until the commit timeout (then `wait`, which
    /// fails one the engine never answered), group calls until the same deadline (a join
    /// may wait for a rebalance that needs a silent member's session to expire: those are
    /// abandoned and counted).
    fn drain(&mut self) {
        self.stopping = true;
        let deadline = Instant::now() + self.plan.commit_timeout + Duration::from_secs(1);
        while self.in_flight > 0 {
            match self.woken.recv_deadline(deadline) {
                Ok(slot) => self.complete(slot),
                Err(_) => break,
            }
        }
        for local in 0..self.consumers.len() {
            if let Some(entry) = self.commits[local].take() {
                let outcome = entry.future.wait();
                self.in_flight_changed(-1);
                self.on_commit(local as u32, entry.seq, entry.intended, outcome);
            }
            if self.group_calls[local].take().is_some() {
                self.in_flight_changed(-1);
                self.result.group_ops.counters.calls_abandoned_at_stop += 1;
            }
        }
    }

    fn finish(mut self) -> MembersResult {
        let counters = &mut self.result.group_ops.counters;
        counters.stable_at_stop = self.stable as u64;
        counters.generations_advanced = self
            .generation_seen
            .iter()
            .zip(&self.generation_at_setup)
            .map(|(now, then)| (now - then).max(0) as u64)
            .sum();
        self.result
    }
}

/// A member's range in Kafka's ConsumerProtocol assignment (version 0): version, then per
/// topic its name and partitions, then empty user data. Big-endian, as on the wire.
pub fn assignment_bytes(fleet: &Fleet, member: &Member) -> Vec<u8> {
    let group = fleet.group_of(member);
    let first = member.first_key - group.first_key;
    let owned = first..first + member.keys as usize;
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for local in owned {
        let (topic, partition) = group.topic_partition(local);
        match topics.last_mut() {
            Some((name, partitions)) if *name == topic => partitions.push(partition),
            _ => topics.push((topic, vec![partition])),
        }
    }
    let mut out = Vec::with_capacity(16 + member.keys as usize * 4);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for (topic, partitions) in &topics {
        let name_len = i16::try_from(topic.len()).unwrap_or(i16::MAX);
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(&topic.as_bytes()[..name_len as usize]);
        out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for p in partitions {
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{CommitPolicy, FleetSpec, GroupSpec};

    #[test]
    fn assignment_is_the_members_range_in_consumer_protocol_v0() {
        let fleet = Fleet::build(FleetSpec {
            kinds: vec![GroupSpec {
                prefix: "g".into(),
                count: 1,
                members: 2,
                topics: 2,
                partitions_per_topic: 3,
                hot: false,
            }],
            policy: CommitPolicy::Auto,
            auto_commit_interval_ms: 5000,
            records_per_poll: 500,
            records_per_sec: 5000.0,
            metadata_bytes: 0,
        })
        .expect("valid fleet");
        // The second member owns keys 3..6: partitions 0, 1, 2 of the second topic.
        let bytes = assignment_bytes(&fleet, &fleet.members[1]);
        let topic = b"g-000000-t1";
        let mut want = vec![0, 0, 0, 0, 0, 1, 0, topic.len() as u8];
        want.extend_from_slice(topic);
        want.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
        want.extend_from_slice(&[0xff; 4]);
        assert_eq!(bytes, want);
        // The first member's range covers the first topic only.
        let first = assignment_bytes(&fleet, &fleet.members[0]);
        assert_eq!(&first[8..8 + topic.len()], b"g-000000-t0");
    }
}
