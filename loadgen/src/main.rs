//! `loadgen`: drives the embedded coffer engine with a closed-loop workload and reports
//! throughput, ack latency, bytes on disk and a durability check. See `docs/loadgen.md`.

mod report;
mod storm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use coffer::{Config, Engine};
use hdrhistogram::Histogram;

use crate::report::Report;
use crate::storm::{CommitterPlan, CommitterResult, ErrorCounts};

/// Closed-loop load generator for the embedded coffer engine.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about)]
struct Args {
    /// Workload to run.
    #[arg(long, value_enum, default_value_t = Scenario::CommitStorm, value_name = "NAME")]
    scenario: Scenario,
    /// Data directory [default: a fresh ./coffer-loadgen-<pid>, removed at the end unless --keep].
    /// A given directory must be absent or empty; it is removed at the end only if loadgen
    /// created it and --keep is not set.
    #[arg(long, value_name = "PATH")]
    data_dir: Option<PathBuf>,
    /// Keep the data directory at the end.
    #[arg(long)]
    keep: bool,
    /// Measured run time, in seconds (after the warmup).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    duration: f64,
    /// Warmup time, in seconds, excluded from the statistics.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    warmup: f64,
    /// Committer threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    committers: usize,
    /// Commit requests in flight, in total over all committers.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    in_flight: usize,
    /// Consumer groups committed for (spread over the committers).
    #[arg(long, value_name = "G", default_value_t = 1000)]
    groups: u32,
    /// Topic partitions in each commit request.
    #[arg(long, value_name = "P", default_value_t = 4)]
    partitions_per_request: usize,
    /// Bytes of metadata string per committed offset.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    metadata_bytes: usize,
    /// `offsets.topic.num.partitions` of the engine.
    #[arg(long, value_name = "N", default_value_t = 50)]
    offsets_partitions: u32,
    /// Engine shard threads (default: one per core).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Seed of the order in which each committer visits its groups.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Every committer commits offsets as fast as the engine acknowledges them.
    CommitStorm,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::CommitStorm => "commit-storm",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("loadgen: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn validate(args: &Args) -> Result<(), String> {
    if !args.duration.is_finite() || args.duration <= 0.0 || args.duration > 1e6 {
        return Err("--duration must be a positive number of seconds".into());
    }
    if !args.warmup.is_finite() || args.warmup < 0.0 || args.warmup > 1e6 {
        return Err("--warmup must be a non-negative number of seconds".into());
    }
    if args.committers == 0 {
        return Err("--committers must be at least 1".into());
    }
    if args.groups == 0 {
        return Err("--groups must be at least 1".into());
    }
    if (args.groups as usize) < args.committers {
        return Err(format!(
            "--groups ({}) must be at least --committers ({}): each committer owns its groups",
            args.groups, args.committers
        ));
    }
    if args.in_flight < args.committers {
        return Err(format!(
            "--in-flight ({}) must be at least --committers ({})",
            args.in_flight, args.committers
        ));
    }
    if args.partitions_per_request == 0 || args.partitions_per_request > i32::MAX as usize {
        return Err("--partitions-per-request must be at least 1".into());
    }
    Ok(())
}

/// Removes the data directory on drop when asked to (so errors also clean up).
struct DirGuard {
    path: PathBuf,
    remove: bool,
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
    Ok(DirGuard {
        path,
        remove: created && !args.keep,
    })
}

/// Sum of the sizes of the `*.log` files under `dir`.
fn log_bytes(dir: &Path) -> Result<u64, String> {
    let mut total = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let kind = entry
            .file_type()
            .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
        if kind.is_dir() {
            total += log_bytes(&entry.path())?;
        } else if kind.is_file() && entry.file_name().to_string_lossy().ends_with(".log") {
            let meta = entry
                .metadata()
                .map_err(|e| format!("reading {}: {e}", entry.path().display()))?;
            total += meta.len();
        }
    }
    Ok(total)
}

fn merge_errors(into: &mut ErrorCounts, from: ErrorCounts) {
    for (code, count) in from {
        into.entry(code)
            .and_modify(|c| c.count += count.count)
            .or_insert(count);
    }
}

/// Runs the scenario; `Ok(false)` when the durability check found violations.
fn run(args: &Args) -> Result<bool, String> {
    validate(args)?;
    let mut dir = prepare_data_dir(args)?;
    let mut config = Config::new(&dir.path);
    config.offsets_topic_num_partitions = args.offsets_partitions;
    if let Some(shards) = args.shards {
        config.shards = shards;
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

    let engine = Engine::open(config.clone()).map_err(|e| {
        format!(
            "opening the engine on {}: {e}",
            config.data_dir.as_path().display()
        )
    })?;
    eprintln!(
        "loadgen: {} on {} for {}s after {}s warmup: {} committers, {} in flight, {} groups, {} partitions/request",
        args.scenario.name(),
        dir.path.display(),
        args.duration,
        args.warmup,
        args.committers,
        args.in_flight,
        args.groups,
        args.partitions_per_request
    );

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let acks = Arc::new(AtomicU64::new(0));
    let metadata = "m".repeat(args.metadata_bytes);

    let mut handles = Vec::with_capacity(args.committers);
    for thread in 0..args.committers {
        let groups: Vec<u32> = (0..args.groups)
            .filter(|g| *g as usize % args.committers == thread)
            .collect();
        let in_flight = args.in_flight / args.committers
            + usize::from(thread < args.in_flight % args.committers);
        let plan = CommitterPlan {
            thread,
            groups,
            in_flight,
            partitions_per_request: args.partitions_per_request,
            metadata: metadata.clone(),
            seed: args.seed,
            measure_from,
            stop_at,
        };
        let engine = engine.clone();
        let acks = Arc::clone(&acks);
        let handle = std::thread::Builder::new()
            .name(format!("committer-{thread}"))
            .spawn(move || storm::run_committer(engine, plan, acks))
            .map_err(|e| format!("spawning committer thread {thread}: {e}"))?;
        handles.push(handle);
    }

    // Progress, once per second, until the run ends.
    let mut last_acks = 0u64;
    let mut tick = start;
    loop {
        tick += Duration::from_secs(1);
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        std::thread::sleep(tick.min(stop_at).saturating_duration_since(now));
        let now = Instant::now();
        let total = acks.load(Ordering::Relaxed);
        let elapsed = now.duration_since(start).as_secs_f64();
        let interval = total - last_acks;
        last_acks = total;
        let phase = if now < measure_from { "  (warmup)" } else { "" };
        eprintln!(
            "[{elapsed:6.1}s] {interval} commits/s in the last second, {:.0} commits/s so far{phase}",
            total as f64 / elapsed
        );
    }

    let mut results: Vec<CommitterResult> = Vec::with_capacity(handles.len());
    for handle in handles {
        let result = handle
            .join()
            .map_err(|_| "a committer thread panicked".to_string())?;
        results.push(result);
    }
    let measured_secs = args.duration;

    let close_started = Instant::now();
    engine
        .close()
        .map_err(|e| format!("closing the engine: {e}"))?;
    let close_secs = close_started.elapsed().as_secs_f64();
    drop(engine);
    let bytes_on_disk = log_bytes(&dir.path)?;

    let reopen_started = Instant::now();
    let reopened = Engine::open(config.clone())
        .map_err(|e| format!("reopening the engine for verification: {e}"))?;
    let reopen_secs = reopen_started.elapsed().as_secs_f64();
    let verification =
        storm::verify(&reopened, &results).map_err(|e| format!("verification fetch: {e}"))?;
    reopened
        .close()
        .map_err(|e| format!("closing the reopened engine: {e}"))?;
    drop(reopened);

    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| format!("creating histogram: {e}"))?;
    let mut errors = ErrorCounts::new();
    let mut errors_outside = ErrorCounts::new();
    let mut measured_acks = 0;
    let mut total_acks = 0;
    for result in &mut results {
        latency
            .add(&result.latency_us)
            .map_err(|e| format!("merging histograms: {e}"))?;
        measured_acks += result.measured_acks;
        total_acks += result.total_acks;
        merge_errors(&mut errors, std::mem::take(&mut result.errors));
        merge_errors(
            &mut errors_outside,
            std::mem::take(&mut result.errors_outside_window),
        );
    }

    let ok = verification.violations == 0;
    if !ok && dir.remove {
        dir.remove = false;
        eprintln!(
            "loadgen: keeping {} for inspection after verification violations",
            dir.path.display()
        );
    }

    let report = Report::build(report::Inputs {
        args,
        config: &config,
        measured_secs,
        measured_acks,
        total_acks,
        latency: &latency,
        errors: &errors,
        errors_outside: &errors_outside,
        bytes_on_disk,
        close_secs,
        reopen_secs,
        verification: &verification,
    });
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("encoding the JSON report: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if !ok {
        eprintln!(
            "loadgen: DURABILITY VIOLATION: {} of {} keys",
            verification.violations, verification.keys
        );
        for example in &verification.examples {
            eprintln!("  {example}");
        }
    }
    Ok(ok)
}
