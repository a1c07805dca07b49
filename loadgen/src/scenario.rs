//! The named scenarios: each one a fleet, a commit policy and a pacing, reproducing a
//! situation from the seed documents (see docs/loadgen.md). A flag given on the command line
//! overrides the scenario's default for it.

use clap::ValueEnum;

use crate::Args;
use crate::fleet::{CommitPolicy, FleetSpec, GroupSpec};

/// Most generator threads.
pub const THREADS_MAX: usize = 256;
/// Most requests in flight in total.
pub const IN_FLIGHT_MAX: usize = 1 << 20;
/// Highest open-loop rate accepted, in requests per second.
pub const RATE_MAX_PER_SEC: f64 = 100_000_000.0;
/// Largest `--scale`.
pub const SCALE_MAX: usize = 10_000;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Auto-commit fleet (commits every auto.commit.interval.ms = 5000), open loop.
    Steady,
    /// Commit after every poll batch, as fast as the engine acknowledges (closed loop).
    CommitStorm,
    /// One group shared by many applications: one hot offsets partition, open loop.
    HotGroup,
    /// The engine process is SIGKILLed mid-run; every acknowledged commit must survive.
    CrashResume,
    /// 3,200 consumers in 800 groups, joined through the engine, heartbeating every 500 ms
    /// (6,400 heartbeats/s) and auto-committing with their generation; --scale 100 for 100×.
    HeartbeatFlood,
    /// Consumers leaving, expiring (silent until their session times out) and rejoining:
    /// groups keep rebalancing, stale commits are fenced.
    RebalanceStorm,
}

/// How requests are paced, before durations are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Each member commits on its own timeline (fixed total rate); latency from the intended
    /// send time (coordinated-omission corrected).
    Open,
    /// A fixed number of requests in flight; the next one leaves when one returns.
    Closed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::CommitStorm => "commit-storm",
            Scenario::HotGroup => "hot-group",
            Scenario::CrashResume => "crash-resume",
            Scenario::HeartbeatFlood => "heartbeat-flood",
            Scenario::RebalanceStorm => "rebalance-storm",
        }
    }

    /// Whether the consumers really join groups through the engine (join, sync, heartbeat).
    pub fn uses_group_protocol(self) -> bool {
        matches!(self, Scenario::HeartbeatFlood | Scenario::RebalanceStorm)
    }

    fn defaults(self) -> Defaults {
        let base = Defaults {
            mode: Mode::Closed,
            in_flight: 1024,
            threads: 2,
            groups: 1000,
            members: 1,
            topics: 1,
            partitions: 4,
            policy: CommitPolicy::Async,
            apps: 0,
            heartbeat_interval_ms: 3000,
            session_timeout_ms: 45_000,
            churn_per_sec: 0.0,
        };
        match self {
            Scenario::CommitStorm => base,
            // 800 groups × 4 consumers = 3,200 consumers at 500 ms: 6,400 heartbeats/s.
            Scenario::HeartbeatFlood => Defaults {
                mode: Mode::Open,
                groups: 800,
                members: 4,
                partitions: 8,
                policy: CommitPolicy::Auto,
                heartbeat_interval_ms: 500,
                ..base
            },
            // Kafka's minimum session (group.min.session.timeout.ms = 6000) with the usual
            // heartbeat of a third of it; 10 leaves or expiries per second.
            Scenario::RebalanceStorm => Defaults {
                mode: Mode::Open,
                groups: 200,
                members: 4,
                partitions: 8,
                policy: CommitPolicy::PerPoll,
                heartbeat_interval_ms: 2000,
                session_timeout_ms: 6000,
                churn_per_sec: 10.0,
                ..base
            },
            Scenario::CrashResume => Defaults {
                in_flight: 256,
                ..base
            },
            Scenario::Steady => Defaults {
                mode: Mode::Open,
                in_flight: 4096,
                groups: 2000,
                members: 5,
                topics: 2,
                partitions: 10,
                policy: CommitPolicy::Auto,
                ..base
            },
            Scenario::HotGroup => Defaults {
                mode: Mode::Open,
                in_flight: 4096,
                groups: 256,
                members: 2,
                topics: 1,
                partitions: 8,
                policy: CommitPolicy::PerPoll,
                apps: 64,
                ..base
            },
        }
    }
}

struct Defaults {
    mode: Mode,
    in_flight: usize,
    threads: usize,
    groups: usize,
    members: u32,
    topics: usize,
    partitions: u32,
    policy: CommitPolicy,
    /// hot-group: applications sharing the one hot group.
    apps: usize,
    heartbeat_interval_ms: u32,
    session_timeout_ms: u32,
    churn_per_sec: f64,
}

/// Most `--churn-per-sec`.
pub const CHURN_PER_SEC_MAX: f64 = 1_000_000.0;
/// Longest `--rebalance-timeout-ms` and `--session-timeout-ms` (Kafka's
/// `group.max.session.timeout.ms` default, 30 minutes).
pub const GROUP_TIMEOUT_MS_MAX: u32 = 1_800_000;

/// The group-protocol settings of heartbeat-flood and rebalance-storm.
#[derive(Clone, Copy, Debug)]
pub struct GroupPlan {
    /// `heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u32,
    /// `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// `max.poll.interval.ms` (the JoinGroup's rebalance timeout).
    pub rebalance_timeout_ms: u32,
    /// Leaves and expiries per second over the fleet.
    pub churn_per_sec: f64,
    /// How long a consumer that left stays away.
    pub rejoin_delay_ms: u32,
    /// The engine's `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: u32,
}

/// A scenario with every flag resolved.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: Scenario,
    pub fleet: FleetSpec,
    pub mode: Mode,
    /// Open loop: total requests per second; `None` means the fleet's natural cadence.
    pub rate_per_sec: Option<f64>,
    pub in_flight: usize,
    pub threads: usize,
    /// heartbeat-flood and rebalance-storm only.
    pub groups: Option<GroupPlan>,
}

/// Resolves the scenario's defaults and the flags into a plan, or says why it cannot run.
pub fn resolve(args: &Args) -> Result<Plan, String> {
    let scenario = args.scenario;
    let d = scenario.defaults();
    let mode = match (args.mode, args.rate) {
        (Some(Mode::Closed), Some(_)) => {
            return Err(
                "--rate sets an open loop; it cannot be combined with --mode closed".into(),
            );
        }
        (_, Some(_)) => Mode::Open,
        (Some(mode), None) => mode,
        (None, None) => d.mode,
    };
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0 && rate <= RATE_MAX_PER_SEC)
    {
        return Err(format!(
            "--rate must be in (0, {RATE_MAX_PER_SEC}] requests/s"
        ));
    }
    let threads = args.threads.unwrap_or(d.threads);
    if threads == 0 || threads > THREADS_MAX {
        return Err(format!("--threads must be in 1..={THREADS_MAX}"));
    }
    let in_flight = args.in_flight.unwrap_or(d.in_flight);
    if scenario.uses_group_protocol() && args.in_flight.is_some() {
        return Err(format!(
            "--in-flight does not apply to {}: each consumer has one group call and one commit in flight at most",
            scenario.name()
        ));
    }
    if in_flight < threads || in_flight > IN_FLIGHT_MAX {
        return Err(format!(
            "--in-flight ({in_flight}) must be in --threads ({threads})..={IN_FLIGHT_MAX}"
        ));
    }
    if args.scale == 0 || args.scale > SCALE_MAX {
        return Err(format!("--scale must be in 1..={SCALE_MAX}"));
    }
    let groups = args
        .groups
        .unwrap_or(d.groups)
        .checked_mul(args.scale)
        .ok_or("--groups × --scale overflows")?;
    let members = args.members.unwrap_or(d.members);
    let topics = args.topics.unwrap_or(d.topics);
    let partitions = args.partitions.unwrap_or(d.partitions);
    let mut kinds = Vec::new();
    if scenario == Scenario::HotGroup {
        let apps = args.apps.unwrap_or(d.apps);
        if apps == 0 {
            return Err("--apps must be at least 1".into());
        }
        // Every application has its own topic and `members` consumers, but all of them use
        // the same group id: one group, one offsets partition.
        kinds.push(GroupSpec {
            prefix: "shared-group".into(),
            count: 1,
            members: u32::try_from(apps * members as usize).map_err(|_| "too many members")?,
            topics: apps,
            partitions_per_topic: partitions,
            hot: true,
        });
    }
    if groups > 0 {
        kinds.push(GroupSpec {
            prefix: "loadgen-group".into(),
            count: groups,
            members,
            topics,
            partitions_per_topic: partitions,
            hot: false,
        });
    }
    let fleet = FleetSpec {
        kinds,
        policy: args.policy.unwrap_or(d.policy),
        auto_commit_interval_ms: args.auto_commit_interval_ms,
        records_per_poll: args.records_per_poll,
        records_per_sec: args.records_per_sec,
        metadata_bytes: args.metadata_bytes,
    };
    if fleet.auto_commit_interval_ms == 0 || fleet.records_per_poll == 0 {
        return Err("--auto-commit-interval-ms and --records-per-poll must be positive".into());
    }
    if !(fleet.records_per_sec.is_finite() && fleet.records_per_sec > 0.0) {
        return Err("--records-per-sec must be positive".into());
    }
    let groups = if scenario.uses_group_protocol() {
        if mode == Mode::Closed || args.rate.is_some() {
            return Err(format!(
                "{} paces every consumer on its own timers (open loop): --mode closed and --rate do not apply",
                scenario.name()
            ));
        }
        Some(group_plan(args, &d)?)
    } else {
        None
    };
    Ok(Plan {
        scenario,
        fleet,
        mode,
        rate_per_sec: args.rate,
        in_flight,
        threads,
        groups,
    })
}

fn group_plan(args: &Args, d: &Defaults) -> Result<GroupPlan, String> {
    let plan = GroupPlan {
        heartbeat_interval_ms: args
            .heartbeat_interval_ms
            .unwrap_or(d.heartbeat_interval_ms),
        session_timeout_ms: args.session_timeout_ms.unwrap_or(d.session_timeout_ms),
        rebalance_timeout_ms: args.rebalance_timeout_ms,
        churn_per_sec: args.churn_per_sec.unwrap_or(d.churn_per_sec),
        rejoin_delay_ms: args.rejoin_delay_ms,
        initial_rebalance_delay_ms: args.initial_rebalance_delay_ms,
    };
    if plan.session_timeout_ms == 0 || plan.session_timeout_ms > GROUP_TIMEOUT_MS_MAX {
        return Err(format!(
            "--session-timeout-ms must be in 1..={GROUP_TIMEOUT_MS_MAX}"
        ));
    }
    if plan.heartbeat_interval_ms == 0 || plan.heartbeat_interval_ms >= plan.session_timeout_ms {
        return Err(
            "--heartbeat-interval-ms must be positive and below --session-timeout-ms".into(),
        );
    }
    if plan.rebalance_timeout_ms == 0 || plan.rebalance_timeout_ms > GROUP_TIMEOUT_MS_MAX {
        return Err(format!(
            "--rebalance-timeout-ms must be in 1..={GROUP_TIMEOUT_MS_MAX}"
        ));
    }
    if !(plan.churn_per_sec.is_finite() && (0.0..=CHURN_PER_SEC_MAX).contains(&plan.churn_per_sec))
    {
        return Err(format!(
            "--churn-per-sec must be in 0..={CHURN_PER_SEC_MAX}"
        ));
    }
    if plan.rejoin_delay_ms > GROUP_TIMEOUT_MS_MAX
        || plan.initial_rebalance_delay_ms > GROUP_TIMEOUT_MS_MAX
    {
        return Err(format!(
            "--rejoin-delay-ms and --initial-rebalance-delay-ms must be at most {GROUP_TIMEOUT_MS_MAX}"
        ));
    }
    Ok(plan)
}
