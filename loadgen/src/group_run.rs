//! Running heartbeat-flood and rebalance-storm in this process: open the engine, let every
//! consumer join (setup, before the timeline), then run warmup and window, close, reopen,
//! verify and report like the other scenarios.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use coffer::{Config, Engine};
use serde::Serialize;

use crate::Args;
use crate::driver::LiveCounters;
use crate::fleet::Fleet;
use crate::members::{
    Coordination, GroupOps, GroupPacing, MembersPlan, MembersResult, run_members,
};
use crate::progress::Progress;
use crate::run::{self, Measures, Timeline};
use crate::scenario::{GroupPlan, Plan, Scenario};
use crate::verify::Expected;

/// Longest wait for the whole fleet to be stable before the timeline starts anyway.
pub const SETUP_WAIT_MAX: Duration = Duration::from_secs(300);
/// How often setup progress is printed.
const SETUP_LINE_EVERY: Duration = Duration::from_secs(1);

/// How the fleet formed before the timeline.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Setup {
    /// From the first JoinGroup to every consumer stable (or to the give-up).
    pub secs: f64,
    /// Whether every consumer was stable when the timeline started.
    pub complete: bool,
    /// Consumers stable when the timeline started.
    pub stable_members: u64,
}

/// The pacing every thread's consumers follow.
fn pacing(plan: &Plan, groups: &GroupPlan, fleet: &Fleet) -> GroupPacing {
    GroupPacing {
        heartbeat_interval: Duration::from_millis(u64::from(groups.heartbeat_interval_ms)),
        session_timeout_ms: i32::try_from(groups.session_timeout_ms).unwrap_or(i32::MAX),
        rebalance_timeout_ms: i32::try_from(groups.rebalance_timeout_ms).unwrap_or(i32::MAX),
        commit_interval: Duration::from_secs_f64(fleet.commit_interval_secs().clamp(1e-6, 1e6)),
        churn_per_sec: groups.churn_per_sec / plan.threads as f64,
        rejoin_delay: Duration::from_millis(u64::from(groups.rejoin_delay_ms)),
        fencing_expected: plan.scenario == Scenario::RebalanceStorm,
    }
}

fn start(
    engine: &Engine,
    fleet: &Arc<Fleet>,
    plan: &Plan,
    groups: &GroupPlan,
    seed: u64,
    live: &Arc<LiveCounters>,
    shared: &Arc<Coordination>,
) -> Result<Vec<std::thread::JoinHandle<MembersResult>>, String> {
    let pacing = pacing(plan, groups, fleet);
    let mut handles = Vec::with_capacity(plan.threads);
    for thread in 0..plan.threads {
        // Whole groups per thread: a leader assigns its group without another thread.
        let owned: Vec<u32> = (0..fleet.groups.len() as u32)
            .filter(|g| *g as usize % plan.threads == thread)
            .collect();
        let consumers: usize = owned
            .iter()
            .map(|&g| fleet.groups[g as usize].members)
            .sum();
        if consumers > crate::members::CONSUMERS_PER_THREAD_MAX {
            return Err(format!(
                "{consumers} consumers on one generator thread (most {}); add --threads",
                crate::members::CONSUMERS_PER_THREAD_MAX
            ));
        }
        let members_plan = MembersPlan {
            thread,
            groups: owned,
            pacing,
            seed,
            commit_timeout: Duration::from_millis(engine.config().offsets_commit_timeout_ms),
        };
        let engine = engine.clone();
        let fleet = Arc::clone(fleet);
        let live = Arc::clone(live);
        let shared = Arc::clone(shared);
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{thread}"))
            .spawn(move || run_members(&engine, &fleet, &members_plan, &live, &shared))
            .map_err(|e| format!("spawning generator thread {thread}: {e}"))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Waits until every thread's consumers have all been stable once (or the give-up).
fn wait_for_setup(shared: &Coordination, threads: usize, members: usize) -> Setup {
    let started = Instant::now();
    let mut last_line = started;
    loop {
        let ready = shared.threads_ready.load(Ordering::Acquire) == threads;
        let elapsed = started.elapsed();
        let stable = shared.stable.load(Ordering::Relaxed);
        if ready || elapsed >= SETUP_WAIT_MAX {
            eprintln!(
                "loadgen: setup: {stable} of {members} consumers joined and synced in {:.2}s{}",
                elapsed.as_secs_f64(),
                if ready { "" } else { " (gave up waiting)" }
            );
            return Setup {
                secs: elapsed.as_secs_f64(),
                complete: ready,
                stable_members: stable,
            };
        }
        if last_line.elapsed() >= SETUP_LINE_EVERY {
            last_line = Instant::now();
            eprintln!(
                "loadgen: setup: {stable} of {members} consumers stable after {:.1}s",
                elapsed.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs heartbeat-flood or rebalance-storm; the measures feed the common report.
pub fn run_in_process(
    args: &Args,
    plan: &Plan,
    fleet: &Arc<Fleet>,
    config: &Config,
) -> Result<Measures, String> {
    let groups = plan
        .groups
        .ok_or("a group-protocol scenario without group settings")?;
    if fleet.groups.len() < plan.threads {
        return Err(format!(
            "{} groups cannot be shared by {} generator threads",
            fleet.groups.len(),
            plan.threads
        ));
    }
    let engine = Engine::open(config.clone())
        .map_err(|e| format!("opening the engine on {}: {e}", config.data_dir.display()))?;
    let live = Arc::new(LiveCounters::default());
    let shared = Arc::new(Coordination::new());
    let handles = start(&engine, fleet, plan, &groups, args.seed, &live, &shared)?;
    let setup = wait_for_setup(&shared, plan.threads, fleet.members.len());
    let timeline = Timeline::from_now(args);
    // Set once, here; the threads only read it.
    let _ = shared.timeline.set(timeline);
    let mut progress = Progress::new(timeline, run::pacing(plan, fleet), None)
        .with_heartbeats(Arc::clone(&shared));
    let window = run::watch_window(&engine, timeline, &mut progress, &live)?;
    let results = run::join_all(handles)?;
    let mut measures = run::close_and_measure(args, plan, fleet, config, engine, &window)?;
    measures.setup = Some(setup);
    let mut group_ops = GroupOps::default();
    let mut expected = run::expected_nothing(fleet);
    for result in &results {
        merge(&mut measures, &mut group_ops, &mut expected, result);
    }
    measures.group_ops = Some(group_ops);
    run::verify_into(&mut measures, config, fleet, &expected)?;
    Ok(measures)
}

fn merge(
    measures: &mut Measures,
    group_ops: &mut GroupOps,
    expected: &mut Expected,
    result: &MembersResult,
) {
    group_ops.merge(&result.group_ops);
    measures.commit.merge(&result.commit);
    run::merge_thread(measures, expected, &result.thread);
}
