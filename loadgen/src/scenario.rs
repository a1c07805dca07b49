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
    /// 3,200 consumers heartbeating every 500 ms [needs groups (issue 6): not available yet].
    HeartbeatFlood,
    /// Members joining, leaving and expiring [needs groups (issue 6): not available yet].
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

    /// What the scenario needs that this build lacks, if anything.
    pub fn missing(self) -> Option<&'static str> {
        match self {
            Scenario::HeartbeatFlood | Scenario::RebalanceStorm => Some(
                "the consumer-groups API (joins, heartbeats, sessions; issue 6), which this build of the engine does not have yet",
            ),
            _ => None,
        }
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
        };
        match self {
            Scenario::CommitStorm | Scenario::HeartbeatFlood | Scenario::RebalanceStorm => base,
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
}

/// Resolves the scenario's defaults and the flags into a plan, or says why it cannot run.
pub fn resolve(args: &Args) -> Result<Plan, String> {
    let scenario = args.scenario;
    if let Some(missing) = scenario.missing() {
        return Err(format!(
            "scenario {} needs {missing}; available now: {}",
            scenario.name(),
            available().join(", ")
        ));
    }
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
    Ok(Plan {
        scenario,
        fleet,
        mode,
        rate_per_sec: args.rate,
        in_flight,
        threads,
    })
}

/// Names of the scenarios this build can run.
pub fn available() -> Vec<&'static str> {
    Scenario::value_variants()
        .iter()
        .filter(|s| s.missing().is_none())
        .map(|s| s.name())
        .collect()
}
