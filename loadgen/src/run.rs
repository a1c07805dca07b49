//! Running a scenario in this process: open the engine, start the generator threads, show
//! progress, then close, reopen, verify and report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::{Config, Engine, ShardMetrics};

use crate::Args;
use crate::driver::{DriverPlan, DriverResult, LiveCounters, Pacing, run_driver};
use crate::fleet::Fleet;
use crate::progress::Progress;
use crate::report::{self, Report};
use crate::scenario::{self, GroupPlan, Mode, Plan, Scenario};
use crate::stats::OpStats;
use crate::sys::{self, Who};
use crate::verify::{self, Expected, Verification};

/// Name prefix of the engine's shard threads (`coffer-shard-N`, set in engine.rs).
const SHARD_THREAD_PREFIX: &str = "coffer-shard-";

/// When the run starts measuring and stops.
#[derive(Clone, Copy)]
pub struct Timeline {
    pub start: Instant,
    pub measure_from: Instant,
    pub stop_at: Instant,
}

impl Timeline {
    pub fn from_now(args: &Args) -> Timeline {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(args.warmup);
        Timeline {
            start,
            measure_from,
            stop_at: measure_from + Duration::from_secs_f64(args.duration),
        }
    }
}

/// Engine counters summed over the shards.
#[derive(Clone, Copy, Default, Debug)]
pub struct EngineCounters {
    pub commits: u64,
    pub commit_errors: u64,
    pub partition_offsets: u64,
    pub flushes: u64,
    pub records: u64,
    pub bytes: u64,
    pub syncs: u64,
}

impl EngineCounters {
    pub fn read(engine: &Engine) -> Result<EngineCounters, String> {
        let shards = engine
            .metrics()
            .map_err(|e| format!("reading engine metrics: {e}"))?;
        Ok(shards
            .iter()
            .fold(EngineCounters::default(), |sum, m: &ShardMetrics| {
                EngineCounters {
                    commits: sum.commits + m.commits,
                    commit_errors: sum.commit_errors + m.commit_errors,
                    partition_offsets: sum.partition_offsets + m.partition_offsets,
                    flushes: sum.flushes + m.flushes,
                    records: sum.records + m.records,
                    bytes: sum.bytes + m.bytes,
                    syncs: sum.syncs + m.syncs,
                }
            }))
    }

    pub fn since(self, earlier: EngineCounters) -> EngineCounters {
        EngineCounters {
            commits: self.commits - earlier.commits,
            commit_errors: self.commit_errors - earlier.commit_errors,
            partition_offsets: self.partition_offsets - earlier.partition_offsets,
            flushes: self.flushes - earlier.flushes,
            records: self.records - earlier.records,
            bytes: self.bytes - earlier.bytes,
            syncs: self.syncs - earlier.syncs,
        }
    }
}

/// Everything a run measured, for the report.
pub struct Measures {
    pub measured_secs: f64,
    pub commit: OpStats,
    /// Only for scenarios with hot groups.
    pub commit_hot: Option<OpStats>,
    /// heartbeat-flood and rebalance-storm: join, sync, heartbeat, leave.
    pub group_ops: Option<crate::members::GroupOps>,
    /// heartbeat-flood and rebalance-storm: how the fleet formed before the timeline.
    pub setup: Option<crate::group_run::Setup>,
    pub total_acks: u64,
    /// Partition offsets in those requests (crash-resume only: in-process runs read the
    /// engine's own counters).
    pub total_partition_offsets: u64,
    pub issued_in_window: u64,
    pub coalesced: u64,
    pub redundant: u64,
    pub late_sends: u64,
    pub unsent_at_stop: u64,
    /// Commits issued per offsets partition (empty when not known).
    pub per_offsets_partition: Vec<u64>,
    /// Engine counters inside the window, and over the whole run (`None`: the engine was
    /// killed before it could be asked).
    pub engine_window: Option<EngineCounters>,
    pub engine_total: Option<EngineCounters>,
    /// CPU time of the engine's process inside the window (whole run for crash-resume).
    pub process_cpu: Duration,
    /// CPU time of the generator threads inside the window, when known.
    pub generator_cpu: Option<Duration>,
    /// CPU time of the engine's shard threads inside the window, when known.
    pub shards_cpu: Option<Duration>,
    pub peak_rss_bytes: u64,
    /// `*.log` sizes after close (after recovery for crash-resume).
    pub log_bytes: u64,
    /// Bytes allocated under the data directory at the end of the window, before close
    /// (`None`: crash-resume, whose engine died in another process).
    pub disk_bytes_before_close: Option<u64>,
    /// The same after close (after recovery and verification for crash-resume).
    pub disk_bytes_after_close: u64,
    pub close_secs: Option<f64>,
    pub reopen_secs: f64,
    pub verification: Verification,
    pub crash: Option<crate::crash::Crash>,
    pub rate_target_per_sec: Option<f64>,
}

/// Removes the data directory on drop when asked to (so errors also clean up).
pub struct DirGuard {
    pub path: PathBuf,
    pub remove: bool,
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if self.remove
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            eprintln!(
                "loadgen: warning: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

fn prepare_data_dir(args: &Args) -> Result<DirGuard, String> {
    let path = match &args.data_dir {
        Some(path) => path.clone(),
        None => {
            let cwd = std::env::current_dir()
                .map_err(|e| format!("reading the current directory: {e}"))?;
            cwd.join(format!("coffer-loadgen-{}", std::process::id()))
        }
    };
    let created = match std::fs::read_dir(&path) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "data directory {} is not empty; give a fresh one with --data-dir",
                    path.display()
                ));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("creating data directory {}: {e}", path.display()))?;
            true
        }
        Err(e) => return Err(format!("reading data directory {}: {e}", path.display())),
    };
    let path =
        std::fs::canonicalize(&path).map_err(|e| format!("resolving {}: {e}", path.display()))?;
    Ok(DirGuard {
        path,
        remove: created && !args.keep,
    })
}

fn validate_times(args: &Args) -> Result<(), String> {
    if !args.duration.is_finite() || args.duration <= 0.0 || args.duration > 1e6 {
        return Err("--duration must be a positive number of seconds".into());
    }
    if !args.warmup.is_finite() || args.warmup < 0.0 || args.warmup > 1e6 {
        return Err("--warmup must be a non-negative number of seconds".into());
    }
    Ok(())
}

/// The engine configuration the flags ask for.
pub fn engine_config(
    args: &Args,
    data_dir: &Path,
    groups: Option<&GroupPlan>,
) -> Result<Config, String> {
    let mut config = Config::new(data_dir);
    config.offsets_topic_num_partitions = args.offsets_partitions;
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    config.fsync_scope = args.fsync_scope.parse()?;
    config.log_preallocate = args.log_preallocate;
    if let Some(groups) = groups {
        config.groups.group_initial_rebalance_delay_ms = groups.initial_rebalance_delay_ms;
        // A session below Kafka's minimum (tests, quick storms) needs a lower broker minimum.
        config.groups.group_min_session_timeout_ms = config
            .groups
            .group_min_session_timeout_ms
            .min(groups.session_timeout_ms);
    }
    config
        .validate()
        .map_err(|e| format!("engine configuration: {e}"))?;
    if args.metadata_bytes > config.offset_metadata_max_bytes {
        return Err(format!(
            "--metadata-bytes ({}) is over offset.metadata.max.bytes ({})",
            args.metadata_bytes, config.offset_metadata_max_bytes
        ));
    }
    Ok(config)
}

/// Resolves the scenario and builds its fleet; shared by the parent and the crash child.
pub fn prepare(args: &Args) -> Result<(Plan, Arc<Fleet>), String> {
    validate_times(args)?;
    let mut plan = scenario::resolve(args)?;
    let fleet = Fleet::build(plan.fleet.clone())?;
    if plan.groups.is_some() {
        // One group call and one commit per consumer at most.
        plan.in_flight = fleet.members.len() * 2;
    }
    if fleet.members.len() < plan.threads {
        return Err(format!(
            "{} members cannot be shared by {} generator threads",
            fleet.members.len(),
            plan.threads
        ));
    }
    Ok((plan, Arc::new(fleet)))
}

/// The pacing for the driver threads: the open loop's per-member interval follows from the
/// total rate (`--rate`) or from the fleet's own cadence.
pub fn pacing(plan: &Plan, fleet: &Fleet) -> Pacing {
    match plan.mode {
        Mode::Closed => Pacing::Closed,
        Mode::Open => {
            let interval_secs = match plan.rate_per_sec {
                Some(rate) => fleet.members.len() as f64 / rate,
                None => fleet.commit_interval_secs(),
            };
            Pacing::Open {
                member_interval: Duration::from_secs_f64(interval_secs.clamp(1e-9, 1e6)),
            }
        }
    }
}

/// The open loop's total rate in requests per second; `None` for the closed loop.
pub fn target_rate(plan: &Plan, fleet: &Fleet) -> Option<f64> {
    match pacing(plan, fleet) {
        Pacing::Open { member_interval } => {
            Some(fleet.members.len() as f64 / member_interval.as_secs_f64())
        }
        Pacing::Closed => None,
    }
}

/// Deals the fleet's members out to `threads` generator threads and starts them.
pub fn start_drivers(
    engine: &Engine,
    fleet: &Arc<Fleet>,
    plan: &Plan,
    timeline: Timeline,
    seed: u64,
    live: &Arc<LiveCounters>,
    pipe: Option<Arc<crate::crash::AckPipe>>,
) -> Result<Vec<std::thread::JoinHandle<DriverResult>>, String> {
    let pacing = pacing(plan, fleet);
    let mut handles = Vec::with_capacity(plan.threads);
    for thread in 0..plan.threads {
        let members: Vec<u32> = (0..fleet.members.len() as u32)
            .filter(|m| *m as usize % plan.threads == thread)
            .collect();
        let in_flight =
            plan.in_flight / plan.threads + usize::from(thread < plan.in_flight % plan.threads);
        let driver_plan = DriverPlan {
            thread,
            members,
            pacing,
            in_flight,
            seed,
            start: timeline.start,
            measure_from: timeline.measure_from,
            stop_at: timeline.stop_at,
            commit_timeout: Duration::from_millis(engine.config().offsets_commit_timeout_ms),
        };
        let engine = engine.clone();
        let fleet = Arc::clone(fleet);
        let live = Arc::clone(live);
        let pipe = pipe.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{thread}"))
            .spawn(move || run_driver(&engine, &fleet, &driver_plan, &live, pipe.as_deref()))
            .map_err(|e| format!("spawning generator thread {thread}: {e}"))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Runs the scenario; `Ok(false)` when the durability check found violations.
pub fn run(args: &Args) -> Result<bool, String> {
    let (plan, fleet) = prepare(args)?;
    let mut dir = prepare_data_dir(args)?;
    let config = engine_config(args, &dir.path, plan.groups.as_ref())?;
    let env = sys::Env::read(&dir.path);
    eprintln!(
        "loadgen: {} on {} ({} on {}) for {}s after {}s warmup: {} groups, {} members, {} keys, policy {}, {:?} loop",
        plan.scenario.name(),
        dir.path.display(),
        env.data_dir_fs,
        env.data_dir_device,
        args.duration,
        args.warmup,
        fleet.groups.len(),
        fleet.members.len(),
        fleet.keys,
        fleet.spec.policy.name(),
        plan.mode
    );
    let measures = if plan.scenario == Scenario::CrashResume {
        crate::crash::run_parent(args, &plan, &fleet, &config)?
    } else if plan.groups.is_some() {
        crate::group_run::run_in_process(args, &plan, &fleet, &config)?
    } else {
        run_in_process(args, &plan, &fleet, &config)?
    };
    let ok = measures.verification.violations == 0;
    if !ok && dir.remove {
        dir.remove = false;
        eprintln!(
            "loadgen: keeping {} for inspection after verification violations",
            dir.path.display()
        );
    }
    let report = Report::build(report::Inputs {
        args,
        plan: &plan,
        fleet: &fleet,
        config: &config,
        env,
        measures: &measures,
    });
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("encoding the JSON report: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if !ok {
        let v = &measures.verification;
        eprintln!(
            "loadgen: DURABILITY VIOLATION: {} of {} keys",
            v.violations, v.keys
        );
        for example in &v.examples {
            eprintln!("  {example}");
        }
    }
    Ok(ok)
}

/// Engine and CPU readings at the start and the end of the measured window.
pub struct WindowReadings {
    engine_at_measure: EngineCounters,
    engine_at_stop: EngineCounters,
    cpu: Duration,
    shards_cpu: Duration,
}

/// Shows progress through the timeline and reads the engine's counters and the CPU clocks
/// at the window's edges.
pub fn watch_window(
    engine: &Engine,
    timeline: Timeline,
    progress: &mut Progress,
    live: &LiveCounters,
) -> Result<WindowReadings, String> {
    progress.run_until(timeline.measure_from, live);
    let engine_at_measure = EngineCounters::read(engine)?;
    let cpu_at_measure = sys::process_cpu(Who::SelfProcess);
    let shards_cpu_at_measure = sys::threads_cpu(SHARD_THREAD_PREFIX);
    progress.run_until(timeline.stop_at, live);
    let engine_at_stop = EngineCounters::read(engine)?;
    let cpu_at_stop = sys::process_cpu(Who::SelfProcess);
    let shards_cpu_at_stop = sys::threads_cpu(SHARD_THREAD_PREFIX);
    progress.finish(live);
    Ok(WindowReadings {
        engine_at_measure,
        engine_at_stop,
        cpu: cpu_at_stop.saturating_sub(cpu_at_measure),
        shards_cpu: shards_cpu_at_stop.saturating_sub(shards_cpu_at_measure),
    })
}

/// Joins the generator threads.
pub fn join_all<T>(handles: Vec<std::thread::JoinHandle<T>>) -> Result<Vec<T>, String> {
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| "a generator thread panicked".to_string())
        })
        .collect()
}

/// Closes the engine after the run and builds the measures of an in-process run, before
/// the generator threads' results are merged in and the directory is verified.
pub fn close_and_measure(
    args: &Args,
    plan: &Plan,
    fleet: &Fleet,
    config: &Config,
    engine: Engine,
    window: &WindowReadings,
) -> Result<Measures, String> {
    let engine_total = EngineCounters::read(&engine)?;
    let before_close = dir_bytes(&config.data_dir)?;
    let close_started = Instant::now();
    engine
        .close()
        .map_err(|e| format!("closing the engine: {e}"))?;
    let close_secs = close_started.elapsed().as_secs_f64();
    drop(engine);
    let after_close = dir_bytes(&config.data_dir)?;
    Ok(Measures {
        measured_secs: args.duration,
        commit: OpStats::default(),
        commit_hot: fleet.groups.iter().any(|g| g.hot).then(OpStats::default),
        group_ops: None,
        setup: None,
        total_acks: 0,
        total_partition_offsets: 0,
        issued_in_window: 0,
        coalesced: 0,
        redundant: 0,
        late_sends: 0,
        unsent_at_stop: 0,
        per_offsets_partition: vec![0; config.offsets_topic_num_partitions as usize],
        engine_window: Some(window.engine_at_stop.since(window.engine_at_measure)),
        engine_total: Some(engine_total),
        process_cpu: window.cpu,
        generator_cpu: Some(Duration::ZERO),
        shards_cpu: Some(window.shards_cpu),
        peak_rss_bytes: sys::peak_rss_bytes(Who::SelfProcess),
        log_bytes: after_close.log,
        disk_bytes_before_close: Some(before_close.allocated),
        disk_bytes_after_close: after_close.allocated,
        close_secs: Some(close_secs),
        reopen_secs: 0.0,
        verification: Verification::default(),
        crash: None,
        rate_target_per_sec: target_rate(plan, fleet),
    })
}

/// Reopens the directory, checks it against what the threads saw acknowledged and issued.
pub fn verify_into(
    measures: &mut Measures,
    config: &Config,
    fleet: &Fleet,
    expected: &Expected,
) -> Result<(), String> {
    let (verification, reopen_secs) = reopen_and_verify(config, fleet, expected)?;
    measures.verification = verification;
    measures.reopen_secs = reopen_secs;
    Ok(())
}

/// Nothing acknowledged or issued yet, for every member.
pub fn expected_nothing(fleet: &Fleet) -> Expected {
    Expected {
        last_acked_seq: vec![-1; fleet.members.len()],
        last_issued_seq: Some(vec![-1; fleet.members.len()]),
    }
}

fn run_in_process(
    args: &Args,
    plan: &Plan,
    fleet: &Arc<Fleet>,
    config: &Config,
) -> Result<Measures, String> {
    let engine = Engine::open(config.clone())
        .map_err(|e| format!("opening the engine on {}: {e}", config.data_dir.display()))?;
    let timeline = Timeline::from_now(args);
    let live = Arc::new(LiveCounters::default());
    let handles = start_drivers(&engine, fleet, plan, timeline, args.seed, &live, None)?;
    let mut progress = Progress::new(timeline, pacing(plan, fleet), plan.rate_per_sec);
    let window = watch_window(&engine, timeline, &mut progress, &live)?;
    let results = join_all(handles)?;
    let mut measures = close_and_measure(args, plan, fleet, config, engine, &window)?;
    let mut expected = expected_nothing(fleet);
    for result in &results {
        merge_result(&mut measures, &mut expected, result);
    }
    verify_into(&mut measures, config, fleet, &expected)?;
    Ok(measures)
}

fn merge_result(measures: &mut Measures, expected: &mut Expected, result: &DriverResult) {
    measures.commit.merge(&result.commit);
    if let Some(hot) = &mut measures.commit_hot {
        hot.merge(&result.commit_hot);
    }
    measures.redundant += result.redundant;
    measures.unsent_at_stop += result.unsent_at_stop;
    merge_thread(measures, expected, &result.thread);
}

/// What every kind of generator thread counts (the commit drivers and the consumer
/// drivers), merged the same way.
pub struct ThreadTotals {
    /// Successful commit answers over the whole run (warmup and drain included).
    pub total_acks: u64,
    /// Requests issued inside the window (for the generator's cost per operation).
    pub issued_in_window: u64,
    /// Commits skipped because the member's previous commit was unanswered.
    pub coalesced: u64,
    /// Requests sent more than 1 ms after they were due.
    pub late_sends: u64,
    /// The thread's CPU time inside the window.
    pub cpu_in_window: Duration,
    /// Commits per offsets partition.
    pub per_offsets_partition: Vec<u64>,
    /// Global member indices; the sequence numbers are indexed by position.
    pub members: Vec<u32>,
    /// Sequence number of the last successfully acknowledged commit per member; -1 if none.
    pub last_acked_seq: Vec<i64>,
    /// Sequence number of the last commit issued per member; -1 if none.
    pub last_issued_seq: Vec<i64>,
}

impl ThreadTotals {
    /// Zero counts for `members` (global indices), with `offsets_partitions` partitions.
    pub fn new(members: Vec<u32>, offsets_partitions: usize) -> ThreadTotals {
        let count = members.len();
        ThreadTotals {
            total_acks: 0,
            issued_in_window: 0,
            coalesced: 0,
            late_sends: 0,
            cpu_in_window: Duration::ZERO,
            per_offsets_partition: vec![0; offsets_partitions],
            members,
            last_acked_seq: vec![-1; count],
            last_issued_seq: vec![-1; count],
        }
    }
}

/// Adds one generator thread's counts and its members' sequence numbers.
pub fn merge_thread(measures: &mut Measures, expected: &mut Expected, share: &ThreadTotals) {
    measures.total_acks += share.total_acks;
    measures.issued_in_window += share.issued_in_window;
    measures.coalesced += share.coalesced;
    measures.late_sends += share.late_sends;
    if let Some(cpu) = &mut measures.generator_cpu {
        *cpu += share.cpu_in_window;
    }
    for (sum, count) in measures
        .per_offsets_partition
        .iter_mut()
        .zip(&share.per_offsets_partition)
    {
        *sum += count;
    }
    for (position, &member) in share.members.iter().enumerate() {
        expected.last_acked_seq[member as usize] = share.last_acked_seq[position];
        if let Some(issued) = &mut expected.last_issued_seq {
            issued[member as usize] = share.last_issued_seq[position];
        }
    }
}

/// Reopens the data directory (recovery), checks every key, closes; returns the reopen time.
pub fn reopen_and_verify(
    config: &Config,
    fleet: &Fleet,
    expected: &Expected,
) -> Result<(Verification, f64), String> {
    let started = Instant::now();
    let engine = Engine::open(config.clone())
        .map_err(|e| format!("reopening the engine for verification: {e}"))?;
    let reopen_secs = started.elapsed().as_secs_f64();
    let verification =
        verify::verify(&engine, fleet, expected).map_err(|e| format!("verification fetch: {e}"))?;
    engine
        .close()
        .map_err(|e| format!("closing the reopened engine: {e}"))?;
    Ok((verification, reopen_secs))
}

/// What the files under a data directory take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirBytes {
    /// Sum of the sizes of the `*.log` files (segments' lengths).
    pub log: u64,
    /// Blocks allocated to every file (`st_blocks` × 512): segments with their
    /// preallocated space, spare segments, shard journals. What the disk holds for the engine.
    pub allocated: u64,
}

/// [`DirBytes`] of everything under `dir`.
pub fn dir_bytes(dir: &Path) -> Result<DirBytes, String> {
    use std::os::unix::fs::MetadataExt;
    let mut total = DirBytes::default();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let kind = entry
            .file_type()
            .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
        if kind.is_dir() {
            let below = dir_bytes(&entry.path())?;
            total.log += below.log;
            total.allocated += below.allocated;
        } else if kind.is_file() {
            let meta = entry
                .metadata()
                .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
            // st_blocks counts 512-byte units whatever the filesystem's block size.
            total.allocated += meta.blocks() * 512;
            if entry.file_name().to_string_lossy().ends_with(".log") {
                total.log += meta.len();
            }
        }
    }
    Ok(total)
}
