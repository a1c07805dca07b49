//! Compaction macro benchmark (issue 5): a steady commit storm over a fixed key set, with the
//! background compactor off and on, side by side on the same disk; then recovery's replay
//! rate from the compacted log.
//!
//! For each mode (`off`, then `on`, repeated `--rounds` times alternately so drift on a noisy
//! machine hits both): a fresh data directory, one committer thread keeping `--in-flight`
//! requests of `--partitions-per-request` offsets in flight, cycling over `--groups` groups ×
//! `--topic-partitions` partitions (the fixed key set) for `--duration` seconds after
//! `--warmup`. Reported per run: durable partition offsets/s, ack latency p50/p99/p999 (µs),
//! log bytes and estimated live bytes (space amplification), compactor bytes read/written,
//! compaction step p99.
//!
//! Then, on the last `on` run's directory: `Engine::compact` to the end, close, and reopen
//! with one shard and the compactor off; replay rate = records replayed / open time.
//!
//! With `--replay-dir DIR` only the replay is measured, on a log kept in `DIR`: made there
//! once (one storm with the compactor on, compacted to the end) if `DIR` does not exist, and
//! reused as is otherwise, so builds can be compared on the very same bytes.
//!
//! `cargo run --release -p coffer-bench --bin compaction_bench -- --duration 10 --rounds 2`

use std::collections::VecDeque;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::task::{Context, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use coffer::{CommitFuture, Config, Engine, OffsetCommit, ShardMetrics};
use coffer_bench::{drain_resolved, histogram, record_us};
use hdrhistogram::Histogram;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The topic every commit names.
const TOPIC: &str = "bench-topic";

#[derive(Parser, Debug, Clone)]
#[command(about = "Commit storm with the compactor off and on; replay rate of a compacted log")]
struct Args {
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warmup seconds per run, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Runs per mode (off/on alternate).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Commit requests in flight.
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// Topic partitions per commit request.
    #[arg(long, default_value_t = 4)]
    partitions_per_request: i32,
    /// Consumer groups (key set = groups × topic partitions).
    #[arg(long, default_value_t = 2000)]
    groups: u32,
    /// Partitions of the topic each group commits.
    #[arg(long, default_value_t = 64)]
    topic_partitions: i32,
    /// offsets.topic.num.partitions.
    #[arg(long, default_value_t = 10)]
    offsets_partitions: u32,
    /// offsets.topic.segment.bytes.
    #[arg(long, default_value_t = 1 << 20)]
    segment_bytes: u64,
    /// Engine shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Data directory (created, and removed at the end).
    #[arg(long, default_value = "./tmp/compaction_bench")]
    dir: PathBuf,
    /// Measure only the replay, on the compacted log kept in this directory (made by one
    /// `on` storm first if it does not exist; never removed).
    #[arg(long)]
    replay_dir: Option<PathBuf>,
    /// Reopenings timed for the replay rate.
    #[arg(long, default_value_t = 3)]
    replay_attempts: u32,
    /// Engine journal_file_bytes in MiB: a shard's journal files (at most two) are part of
    /// the data directory's bytes on disk.
    #[arg(long, default_value_t = 64)]
    journal_file_mib: u64,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct RunOut {
    offsets_per_s: f64,
    /// CPU time of the shard threads and their io_uring workers in the measured window, per
    /// acknowledged partition offset: what the compactor costs the shard's core, without the
    /// noise a shared machine puts in throughput.
    engine_cpu_ns_per_offset: f64,
    latency_us: Histogram<u64>,
    metrics: Vec<ShardMetrics>,
}

fn config(args: &Args, dir: &Path, compactor: bool) -> Config {
    let mut config = Config::new(dir);
    config.offsets_topic_num_partitions = args.offsets_partitions;
    config.offsets_topic_segment_bytes = args.segment_bytes;
    config.shards = args.shards;
    config.log_cleaner_enable = compactor;
    config.journal_file_bytes = args.journal_file_mib << 20;
    config
}

/// Bytes the data directory takes on disk (allocated blocks, as `du` counts them): segments,
/// preallocated space and journal files.
fn dir_bytes_on_disk(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() {
            dir_bytes_on_disk(&entry.path())?
        } else {
            metadata.blocks() * 512
        };
    }
    Ok(total)
}

/// The closed-loop storm: returns what was measured and the engine, still open.
fn storm(args: &Args, engine: &Engine) -> BoxResult<RunOut> {
    let names: Vec<String> = (0..args.groups).map(|g| format!("group-{g}")).collect();
    let mut latency_us = histogram();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let mut queue: VecDeque<(Instant, CommitFuture)> = VecDeque::with_capacity(args.in_flight);
    let mut cx = Context::from_waker(Waker::noop());
    let mut acks = 0u64;
    let mut request = 0u64;
    let mut commits = Vec::with_capacity(args.partitions_per_request as usize);
    let (mut cpu_from, mut cpu_to) = (None, None);
    let mut complete = |issued: Instant, result: coffer::Result<()>| -> BoxResult<()> {
        result?;
        let now = Instant::now();
        if now >= measure_from && now < stop_at {
            acks += 1;
            record_us(&mut latency_us, now - issued);
        }
        Ok(())
    };
    loop {
        let now = Instant::now();
        if cpu_from.is_none() && now >= measure_from {
            cpu_from = Some(engine_cpu()?);
        }
        if cpu_to.is_none() && now >= stop_at {
            cpu_to = Some(engine_cpu()?);
        }
        if now < stop_at {
            while queue.len() < args.in_flight {
                let group = (request % u64::from(args.groups)) as usize;
                let slices = (args.topic_partitions / args.partitions_per_request).max(1);
                let slice = ((request / u64::from(args.groups)) % slices as u64) as i32;
                commits.clear();
                commits.extend((0..args.partitions_per_request).map(|i| OffsetCommit {
                    topic: TOPIC,
                    partition: (slice * args.partitions_per_request + i) % args.topic_partitions,
                    offset: request as i64,
                    leader_epoch: Some(1),
                    metadata: "",
                }));
                request += 1;
                queue.push_back((
                    Instant::now(),
                    engine.commit_offsets(&names[group], &commits),
                ));
            }
        }
        let Some((issued, future)) = queue.pop_front() else {
            break;
        };
        complete(issued, future.wait())?;
        drain_resolved(&mut queue, &mut cx, &mut complete)?;
    }
    let offsets = acks * args.partitions_per_request as u64;
    let cpu = match (cpu_from, cpu_to) {
        (Some(from), Some(to)) => to.saturating_sub(from),
        _ => Duration::ZERO,
    };
    Ok(RunOut {
        offsets_per_s: offsets as f64 / args.duration,
        engine_cpu_ns_per_offset: cpu.as_nanos() as f64 / offsets.max(1) as f64,
        latency_us,
        metrics: engine.metrics()?,
    })
}

/// CPU time the engine's threads (shards and their io_uring workers) have used.
fn engine_cpu() -> BoxResult<Duration> {
    let sums = coffer_bench::threads_cpu_time(&["coffer-shard", "iou-wrk"])?;
    Ok(sums.iter().sum())
}

fn report(mode: &str, round: u32, out: &RunOut, dir_bytes: u64) {
    let space = out.metrics.iter().flat_map(|m| &m.partitions);
    let (log, live) = space.fold((0u64, 0u64), |(l, v), p| {
        (l + p.log_bytes, v + p.live_bytes_estimate)
    });
    let sum = |f: fn(&ShardMetrics) -> u64| out.metrics.iter().map(f).sum::<u64>();
    let step = |q: f64| {
        let values = out.metrics.iter();
        values
            .map(|m| m.compaction_step_us.value_at_quantile(q))
            .max()
            .unwrap_or(0)
    };
    let h = &out.latency_us;
    println!(
        "{mode:>3} round {round}: {:>10.0} offsets/s  ack p50 {:>6} p99 {:>6} p999 {:>6} µs  \
         engine CPU {:.0} ns/offset  log {:>6.1} MiB live {:>5.1} MiB ({:.2}x)  on disk {:.1} MiB ({:.2}x)  compactions {} read {:.1} MiB written {:.1} MiB  tested by key {}  step p50 {} p99 {} max {} µs",
        out.offsets_per_s,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        out.engine_cpu_ns_per_offset,
        log as f64 / 1048576.0,
        live as f64 / 1048576.0,
        log as f64 / live.max(1) as f64,
        dir_bytes as f64 / 1048576.0,
        dir_bytes as f64 / live.max(1) as f64,
        sum(|m| m.compaction.compactions),
        sum(|m| m.compaction.bytes_read) as f64 / 1048576.0,
        sum(|m| m.compaction.bytes_written) as f64 / 1048576.0,
        sum(|m| m.compaction.records_tested_by_key),
        step(0.5),
        step(0.99),
        step(1.0),
    );
}

/// Compacts what is left and closes.
fn compact_and_close(engine: Engine) -> BoxResult<()> {
    engine.compact(wall_ms())?;
    engine.close()?;
    Ok(())
}

/// Bytes of the engine's logs.
fn log_bytes(engine: &Engine) -> BoxResult<u64> {
    let metrics = engine.metrics()?;
    Ok(metrics
        .iter()
        .flat_map(|m| &m.partitions)
        .map(|p| p.log_bytes)
        .sum())
}

/// User plus system CPU seconds of this process so far.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is plain old data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Reopens `dir` with one shard, `--replay-attempts` times, and times the replay.
fn replay_rate(args: &Args, dir: &Path) -> BoxResult<()> {
    let mut config = config(args, dir, false);
    config.shards = 1;
    // The fixed cost of an open (thread, io_uring, one directory and active segment per
    // partition), measured on an empty directory and subtracted.
    let empty = dir.with_extension("empty");
    let mut empty_config = config.clone();
    empty_config.data_dir = empty.clone();
    Engine::open(empty_config.clone())?.close()?;
    let (started, cpu_started) = (Instant::now(), process_cpu_s());
    Engine::open(empty_config)?.close()?;
    let fixed = started.elapsed().as_secs_f64();
    let fixed_cpu = process_cpu_s() - cpu_started;
    std::fs::remove_dir_all(&empty)?;
    for attempt in 0..args.replay_attempts {
        // Open syncs the active segments; without this they wait behind the writeback of
        // everything the storm left dirty, and the figure measures the disk, not replay.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let (started, cpu_started) = (Instant::now(), process_cpu_s());
        let engine = Engine::open(config.clone())?;
        let seconds = started.elapsed().as_secs_f64();
        // CPU time of the process: the shard thread replaying (the caller only waits), so
        // time the shard spent preempted by other work on a shared machine is left out.
        let cpu = process_cpu_s() - cpu_started;
        let records = engine.recovery_report().records;
        let batches: u64 = engine
            .recovery_report()
            .partitions
            .iter()
            .map(|p| p.batches)
            .sum();
        let log_bytes = log_bytes(&engine)?;
        let replay = (seconds - fixed).max(1e-9);
        let replay_cpu = (cpu - fixed_cpu).max(1e-9);
        print!("attempt {attempt}: ");
        println!(
            "replay (1 shard, compacted log of {:.1} MiB): {records} records in {batches} batches; open {:.3} s, of an \
         empty dir {:.3} s; replay {:.2} M records/s (open time: {:.2} M records/s); \
         CPU {:.3} s, of an empty dir {:.3} s: {:.2} M records/s per CPU second",
            log_bytes as f64 / 1048576.0,
            seconds,
            fixed,
            records as f64 / replay / 1e6,
            records as f64 / seconds / 1e6,
            cpu,
            fixed_cpu,
            records as f64 / replay_cpu / 1e6,
        );
        engine.close()?;
    }
    Ok(())
}

/// `--replay-dir`: makes the compacted log in `dir` unless it exists, then times replays.
fn replay_only(args: &Args, dir: &Path) -> BoxResult<()> {
    if !dir.exists() {
        let engine = Engine::open(config(args, dir, true))?;
        let out = storm(args, &engine)?;
        report("on", 0, &out, dir_bytes_on_disk(dir)?);
        compact_and_close(engine)?;
    }
    replay_rate(args, dir)
}

fn main() -> BoxResult<()> {
    let args = Args::parse();
    if args.partitions_per_request <= 0 || args.groups == 0 || args.topic_partitions <= 0 {
        return Err(
            "--partitions-per-request, --groups and --topic-partitions must be positive".into(),
        );
    }
    println!("{args:?}");
    if let Some(dir) = &args.replay_dir {
        return replay_only(&args, dir);
    }
    let root = args.dir.join(format!("run-{}", std::process::id()));
    let result = (|| -> BoxResult<()> {
        let mut last_on = None;
        for round in 0..args.rounds {
            for compactor in [false, true] {
                let dir = root.join(format!("{round}-{compactor}"));
                let engine = Engine::open(config(&args, &dir, compactor))?;
                let out = storm(&args, &engine)?;
                let dir_bytes = dir_bytes_on_disk(&dir)?;
                report(if compactor { "on" } else { "off" }, round, &out, dir_bytes);
                if compactor {
                    if let Some((old_dir, old)) = last_on.replace((dir.clone(), engine)) {
                        drop::<Engine>(old);
                        std::fs::remove_dir_all(old_dir)?;
                    }
                } else {
                    engine.close()?;
                    drop(engine);
                    std::fs::remove_dir_all(&dir)?;
                }
            }
        }
        if let Some((dir, engine)) = last_on {
            compact_and_close(engine)?;
            replay_rate(&args, &dir)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir(&args.dir);
    result
}
