//! `loadgen`: plays a fleet of Kafka consumers against the embedded coffer engine on a real
//! data directory and reports what it sustained, how long answers took, what it cost on
//! disk and in CPU, and whether everything acknowledged survived. See `docs/loadgen.md`.

mod crash;
mod driver;
mod fleet;
mod group_run;
mod members;
mod progress;
mod report;
mod run;
mod scenario;
mod stats;
mod sys;
mod verify;
mod wheel;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::fleet::CommitPolicy;
use crate::scenario::{Mode, Scenario};

/// Load generator for the embedded coffer engine: a fleet of consumer groups committing
/// offsets, joining groups and heartbeating, in named scenarios.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", version, about)]
pub struct Args {
    /// Scenario to run. Flags below override its defaults.
    #[arg(long, value_enum, default_value_t = Scenario::CommitStorm, value_name = "NAME")]
    pub scenario: Scenario,
    /// Data directory [default: a fresh ./coffer-loadgen-<pid>, removed at the end unless
    /// --keep]. A given directory must be absent or empty; it is removed at the end only if
    /// loadgen created it and --keep is not set.
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// Keep the data directory at the end.
    #[arg(long)]
    pub keep: bool,
    /// Measured run time, in seconds (after the warmup). crash-resume kills the engine at
    /// its end.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub duration: f64,
    /// Warmup time, in seconds, excluded from the statistics.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub warmup: f64,
    /// Pacing [default: the scenario's]: open (fixed rate, latency from the intended send
    /// time) or closed (--in-flight requests outstanding).
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// Open loop at this many commit requests per second in total (implies --mode open)
    /// [default: the fleet's own cadence].
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// Requests in flight in total: exactly (closed loop) or at most (open loop).
    #[arg(long, value_name = "N")]
    pub in_flight: Option<usize>,
    /// Generator threads.
    #[arg(long, alias = "committers", value_name = "N")]
    pub threads: Option<usize>,
    /// Consumer groups (hot-group: the groups besides the shared one).
    #[arg(long, value_name = "G")]
    pub groups: Option<usize>,
    /// Members per group (hot-group: per application).
    #[arg(long, value_name = "M")]
    pub members: Option<u32>,
    /// Topics each group reads.
    #[arg(long, value_name = "T")]
    pub topics: Option<usize>,
    /// Partitions per topic (commit-storm: the partitions in each request).
    #[arg(long, alias = "partitions-per-request", value_name = "P")]
    pub partitions: Option<u32>,
    /// hot-group: applications sharing the one hot group, each with its own topic.
    #[arg(long, value_name = "N")]
    pub apps: Option<usize>,
    /// Multiply the number of groups by this.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub scale: usize,
    /// Commit policy of every member [default: the scenario's].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub policy: Option<CommitPolicy>,
    /// `auto.commit.interval.ms` of the auto policy.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub auto_commit_interval_ms: u64,
    /// Records one poll returns (`max.poll.records`); with --records-per-sec it sets the poll
    /// cadence of the per-poll, async and sync policies.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub records_per_poll: u32,
    /// Records per second one member processes.
    #[arg(long, value_name = "N", default_value_t = 5000.0)]
    pub records_per_sec: f64,
    /// Bytes of metadata string per committed offset.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub metadata_bytes: usize,
    /// `offsets.topic.num.partitions` of the engine.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub offsets_partitions: u32,
    /// Engine shard threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// How the engine makes a group commit durable: `journal` (one fdatasync of the shard
    /// journal per group commit, the default), `file` (one fdatasync per written segment) or
    /// `filesystem` (one syncfs per group commit; for a data directory on a volume of its own).
    #[arg(long, value_name = "SCOPE", default_value = "journal", value_parser = ["file", "filesystem", "journal"])]
    pub fsync_scope: String,
    /// `log.preallocate` of the engine: reserve each active segment's file ahead of its data
    /// (and keep dropped segments as spares), so appends' syncs carry no length change. Off,
    /// the data directory holds about half the disk with a small key set.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_preallocate: bool,
    /// Seed of the members' phases and visiting orders (and of nothing else).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// heartbeat-flood, rebalance-storm: `heartbeat.interval.ms` [default: 500 in
    /// heartbeat-flood, 2000 in rebalance-storm].
    #[arg(long, value_name = "MS")]
    pub heartbeat_interval_ms: Option<u32>,
    /// heartbeat-flood, rebalance-storm: `session.timeout.ms` [default: 45000 (Kafka's) in
    /// heartbeat-flood, 6000 (Kafka's group.min.session.timeout.ms) in rebalance-storm]. The
    /// engine's group.min.session.timeout.ms is lowered to it when it is below 6000.
    #[arg(long, value_name = "MS")]
    pub session_timeout_ms: Option<u32>,
    /// heartbeat-flood, rebalance-storm: `max.poll.interval.ms`, the JoinGroup's rebalance
    /// timeout.
    #[arg(long, value_name = "MS", default_value_t = 300_000)]
    pub rebalance_timeout_ms: u32,
    /// rebalance-storm: consumers leaving or going silent (their session then expires) per
    /// second, over the fleet, half each [default: 10; 0 in heartbeat-flood].
    #[arg(long, value_name = "PER_SEC")]
    pub churn_per_sec: Option<f64>,
    /// rebalance-storm: how long a consumer that left stays away before rejoining.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub rejoin_delay_ms: u32,
    /// heartbeat-flood, rebalance-storm: the engine's `group.initial.rebalance.delay.ms`
    /// (Kafka's default is 3000; 0 forms each group as soon as its members have joined).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub initial_rebalance_delay_ms: u32,
    /// Also write the report as JSON to this file (schema in docs/loadgen.md).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    #[command(subcommand)]
    pub child: Option<Child>,
}

/// Internal roles of a re-executed loadgen.
#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// crash-resume's engine process: runs the load and reports each acknowledged commit on
    /// stdout until it is killed.
    #[command(hide = true)]
    CrashChild,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = if args.child == Some(Child::CrashChild) {
        crash::run_child(&args).map(|()| true)
    } else {
        run::run(&args)
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("loadgen: error: {message}");
            ExitCode::from(2)
        }
    }
}
