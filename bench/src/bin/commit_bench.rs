//! Macro benchmark (issue 3, item 6): durable offset commits through the engine, and in the
//! same run the physical floor of the same records on the same disk.
//!
//! 1. **Engine.** `--committers` threads (pinned to the last core) keep `--in-flight`
//!    requests of `--partitions-per-request` offsets in flight in total, against an engine with
//!    `--shards` shards (pinned from core 0) on a real data directory. Reported: durable
//!    partition-offset commits/s, ack latency (issue → observed ack, µs), and from
//!    `Engine::metrics`: flushes, records per flush, syncs/s.
//! 2. **Floor.** The same key distribution, `R` records per batch where `R` is the engine's
//!    mean records per flush, encoded with `BatchWriter` (one RecordBatch per offsets
//!    partition, as the engine lays them out) into one buffer, appended to one preallocated
//!    file with one `pwrite` + one `fdatasync` per batch. No index, no cache, one batch at a
//!    time (the in-flight window collapsed into the batch). Batches are encoded before the
//!    timed loop, so the floor is the disk only.
//! 3. The ratios engine ÷ floor.
//!
//! `cargo run --release -p coffer-bench --bin commit_bench -- --duration 10 --in-flight 1024`

use std::collections::VecDeque;
use std::error::Error;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use coffer::format::{BatchParams, BatchWriter, OffsetCommitKey, OffsetCommitValue};
use coffer::routing::GroupPartitioner;
use coffer::{CommitFuture, Config, Engine, OffsetCommit, ShardMetrics};
use coffer_bench::{drain_resolved, histogram, record_us};
use hdrhistogram::Histogram;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The topic every commit names.
const TOPIC: &str = "bench-topic";
/// Leader epoch every commit carries.
const LEADER_EPOCH: i32 = 1;
/// Distinct pre-encoded floor batches cycled through (different keys and offsets).
const FLOOR_BUFFERS: usize = 16;
/// Size the floor file is preallocated to; appends wrap to 0 past it (never in 10 s here).
const FLOOR_FILE_BYTES: u64 = 8 << 30;

#[derive(Parser, Debug, Clone)]
#[command(about = "Durable offset commits through the engine vs the physical floor")]
struct Args {
    /// Measured seconds per phase (engine, then floor).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warmup seconds per phase, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Commit requests in flight, in total across committers.
    #[arg(long, default_value_t = 1024)]
    in_flight: usize,
    /// Committer threads (all pinned to the last core).
    #[arg(long, default_value_t = 1)]
    committers: usize,
    /// Engine shards (shard i pinned to core i, or to `--shard-cores`).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Engine `shard_cores`: the cores the shards are pinned to, comma-separated (default:
    /// every core, in order). The floors run on the first.
    #[arg(long, value_delimiter = ',')]
    shard_cores: Vec<usize>,
    /// The core the committers (and by default the heartbeat thread) are pinned to
    /// (default: the last core).
    #[arg(long)]
    committer_core: Option<usize>,
    /// Topic partitions per commit request.
    #[arg(long, default_value_t = 4)]
    partitions_per_request: usize,
    /// Consumer groups committing.
    #[arg(long, default_value_t = 1000)]
    groups: u32,
    /// Partitions of the topic each group consumes (key space = groups × this).
    #[arg(long, default_value_t = 64)]
    topic_partitions: i32,
    /// offsets.topic.num.partitions.
    #[arg(long, default_value_t = 50)]
    offsets_partitions: u32,
    /// Engine group_commit_linger_us (0 = adaptive batching only).
    #[arg(long, default_value_t = 0)]
    linger_us: u64,
    /// Data directory (created, and removed at the end).
    #[arg(long, default_value = "./tmp/commit_bench")]
    dir: PathBuf,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Open loop: issue this many requests per second in total (split over the committers)
    /// on a fixed schedule, and measure each ack from its scheduled send time (corrected
    /// for coordinated omission, as wrk2 does). `--in-flight` then only caps the requests
    /// outstanding. Without it, a closed loop keeps `--in-flight` outstanding.
    #[arg(long)]
    rate: Option<f64>,
    /// How the engine makes a group commit durable: `file` (one fdatasync per written
    /// segment), `filesystem` (one syncfs per flush; a dedicated volume) or `journal` (one
    /// fdatasync of the shard journal per flush, the default).
    #[arg(long, default_value = "journal")]
    fsync_scope: String,
    /// Engine journal_file_bytes in MiB (journal scope): how much is written between
    /// checkpoints.
    #[arg(long, default_value_t = 64)]
    journal_file_mib: u64,
    /// Engine `log_preallocate` (`log.preallocate`): reserve each active segment's file
    /// ahead of its data.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    log_preallocate: bool,
    /// Heartbeats per second sent during the engine phase (from one more thread on the
    /// committers' core, or see `--heartbeat-core`) by `--heartbeat-members` Stable
    /// one-member groups, distinct from the committing groups (0: none).
    #[arg(long, default_value_t = 0)]
    heartbeats_per_sec: u64,
    /// Group members heartbeating (each alone in its group).
    #[arg(long, default_value_t = 3200)]
    heartbeat_members: usize,
    /// Where the heartbeat thread runs (or `inline`: no thread, the committers send them).
    #[arg(long, value_enum, default_value_t = HeartbeatCore::Committers)]
    heartbeat_core: HeartbeatCore,
}

/// Where the heartbeat thread runs.
#[derive(ValueEnum, Debug, Clone, Copy)]
enum HeartbeatCore {
    /// Pinned to the committers' core.
    Committers,
    /// Pinned to the first shard's core.
    Shard,
    /// Not pinned.
    Any,
    /// No heartbeat thread: each committer sends its share between its commits, as a
    /// broker's request handler threads interleave the Heartbeat and OffsetCommit requests
    /// they read (the heartbeats' answers are collected without blocking).
    Inline,
}

/// Who commits what: group `g` commits `partitions_per_request` consecutive partitions of
/// [`TOPIC`] starting at its cursor, which then advances; offsets increase per key.
struct KeyStream {
    names: Vec<String>,
    /// Positions in `names` this stream visits, round robin.
    owned: Vec<usize>,
    cursors: Vec<i32>,
    next: usize,
    seq: i64,
    partitions_per_request: usize,
    topic_partitions: i32,
}

impl KeyStream {
    fn new(names: Vec<String>, owned: Vec<usize>, args: &Args) -> KeyStream {
        let cursors = vec![0; names.len()];
        KeyStream {
            names,
            owned,
            cursors,
            next: 0,
            seq: 0,
            partitions_per_request: args.partitions_per_request,
            topic_partitions: args.topic_partitions,
        }
    }

    /// The next request: its group position, and `(partition, offset)` pairs into `out`.
    fn next_request(&mut self, out: &mut Vec<(i32, i64)>) -> usize {
        let group = self.owned[self.next];
        self.next = (self.next + 1) % self.owned.len();
        self.seq += 1;
        out.clear();
        let cursor = &mut self.cursors[group];
        for _ in 0..self.partitions_per_request {
            out.push((*cursor, self.seq));
            *cursor = (*cursor + 1) % self.topic_partitions;
        }
        group
    }
}

fn group_names(count: u32) -> Vec<String> {
    (0..count).map(|g| format!("bench-group-{g:06}")).collect()
}

#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"p50\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}}",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

/// What one committer saw inside the measurement window.
struct CommitterOut {
    latency_us: Histogram<u64>,
    acks: u64,
    /// Inline heartbeats (`--heartbeat-core inline`): answered in the measured window, and
    /// answered with an error.
    heartbeats_answered: u64,
    heartbeat_errors: u64,
}

/// Longest an open-loop committer sleeps between checks for acks and sends.
const OPEN_LOOP_NAP: Duration = Duration::from_micros(50);

/// One committer. Closed loop (`rate_per_s` = None): keeps `in_flight` requests
/// outstanding. Open loop: sends on a fixed schedule of `rate_per_s`, at most `in_flight`
/// outstanding, each ack's latency measured from its scheduled send time. Acks observed in
/// `[measure_from, stop_at)` are counted and their latency recorded.
fn run_committer(
    engine: &Engine,
    mut keys: KeyStream,
    in_flight: usize,
    rate_per_s: Option<f64>,
    (measure_from, stop_at): (Instant, Instant),
    mut heartbeats: Option<heartbeat::Share<'_>>,
) -> BoxResult<CommitterOut> {
    let mut out = CommitterOut {
        latency_us: histogram(),
        acks: 0,
        heartbeats_answered: 0,
        heartbeat_errors: 0,
    };
    let mut queue: VecDeque<(Instant, CommitFuture)> = VecDeque::with_capacity(in_flight);
    let mut pairs = Vec::with_capacity(keys.partitions_per_request);
    let mut commits: Vec<OffsetCommit<'_>> = Vec::with_capacity(keys.partitions_per_request);
    let mut cx = Context::from_waker(Waker::noop());
    let mut complete = |issued: Instant, result: coffer::Result<()>| -> BoxResult<()> {
        result?;
        let now = Instant::now();
        if now >= measure_from && now < stop_at {
            out.acks += 1;
            record_us(&mut out.latency_us, now - issued);
        }
        Ok(())
    };
    let interval = rate_per_s.map(|rate| Duration::from_secs_f64(1.0 / rate.max(1e-3)));
    let mut next_send = Instant::now();
    loop {
        let now = Instant::now();
        let stopping = now >= stop_at;
        if let Some(heartbeats) = heartbeats.as_mut().filter(|_| !stopping) {
            heartbeats.send_due(engine, now >= measure_from);
        }
        if !stopping {
            while queue.len() < in_flight {
                // Open loop: the send time is the schedule's, not the moment we got to it.
                let issued = match interval {
                    Some(_) if next_send > now => break,
                    Some(interval) => {
                        let scheduled = next_send;
                        next_send += interval;
                        scheduled
                    }
                    None => Instant::now(),
                };
                let group = keys.next_request(&mut pairs);
                commits.clear();
                commits.extend(pairs.iter().map(|&(partition, offset)| OffsetCommit {
                    topic: TOPIC,
                    partition,
                    offset,
                    leader_epoch: Some(LEADER_EPOCH),
                    metadata: "",
                }));
                let name = keys.names[group].as_str();
                queue.push_back((issued, engine.commit_offsets(name, &commits)));
            }
        }
        if interval.is_some() && !stopping {
            // Open loop: never block on an ack past the next scheduled send.
            let front = queue.front_mut();
            match front.map(|(issued, future)| (*issued, Pin::new(future).poll(&mut cx))) {
                Some((issued, Poll::Ready(result))) => {
                    queue.pop_front();
                    complete(issued, result)?;
                }
                _ => {
                    let nap = next_send.saturating_duration_since(Instant::now());
                    std::thread::sleep(nap.min(OPEN_LOOP_NAP));
                }
            }
            continue;
        }
        let Some((issued, future)) = queue.pop_front() else {
            break;
        };
        complete(issued, future.wait())?;
        drain_resolved(&mut queue, &mut cx, &mut complete)?;
    }
    if let Some(heartbeats) = heartbeats {
        (out.heartbeats_answered, out.heartbeat_errors) = heartbeats.finish();
    }
    Ok(out)
}

/// Sums of the counters of every shard.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    commits: u64,
    partition_offsets: u64,
    flushes: u64,
    flushes_encoded_in_shadow: u64,
    flushes_acked_in_shadow: u64,
    batches: u64,
    records: u64,
    bytes: u64,
    syncs: u64,
    dirty_rolls: u64,
    journal_checkpoints: u64,
    compaction_steps: u64,
}

impl Counters {
    fn of(metrics: &[ShardMetrics]) -> Counters {
        let mut c = Counters::default();
        for m in metrics {
            c.commits += m.commits;
            c.partition_offsets += m.partition_offsets;
            c.flushes += m.flushes;
            c.flushes_encoded_in_shadow += m.flushes_encoded_in_shadow;
            c.flushes_acked_in_shadow += m.flushes_acked_in_shadow;
            c.batches += m.batches;
            c.records += m.records;
            c.bytes += m.bytes;
            c.syncs += m.syncs;
            c.dirty_rolls += m.dirty_rolls;
            c.journal_checkpoints += m.journal_checkpoints;
            c.compaction_steps += m.compaction.steps;
        }
        c
    }

    fn minus(&self, before: &Counters) -> Counters {
        Counters {
            commits: self.commits - before.commits,
            partition_offsets: self.partition_offsets - before.partition_offsets,
            flushes: self.flushes - before.flushes,
            flushes_encoded_in_shadow: self.flushes_encoded_in_shadow
                - before.flushes_encoded_in_shadow,
            flushes_acked_in_shadow: self.flushes_acked_in_shadow - before.flushes_acked_in_shadow,
            batches: self.batches - before.batches,
            records: self.records - before.records,
            bytes: self.bytes - before.bytes,
            syncs: self.syncs - before.syncs,
            dirty_rolls: self.dirty_rolls - before.dirty_rolls,
            journal_checkpoints: self.journal_checkpoints - before.journal_checkpoints,
            compaction_steps: self.compaction_steps - before.compaction_steps,
        }
    }
}

/// A histogram of the window: every shard's `pick` at the end minus at the start.
fn window_histogram(
    before: &[ShardMetrics],
    after: &[ShardMetrics],
    pick: fn(&ShardMetrics) -> &Histogram<u64>,
) -> Histogram<u64> {
    let mut total = histogram();
    for (b, a) in before.iter().zip(after) {
        let mut h = pick(a).clone();
        if h.subtract(pick(b)).is_ok() {
            let _ = total.add(&h);
        }
    }
    total
}

struct EngineOut {
    seconds: f64,
    acks: u64,
    partition_offsets_per_s: f64,
    ack_us: Percentiles,
    counters: Counters,
    flush_us: Percentiles,
    /// Durations of the dirty rolls in the measured window (their count is in `counters`).
    dirty_roll_us: Percentiles,
    /// Durations of the switches to a new journal file in the measured window.
    journal_rotation_us: Percentiles,
    /// Durations of the compaction steps in the measured window (count in `counters`).
    compaction_step_us: Percentiles,
    engine_commit_us: Percentiles,
    /// CPU time of the shard threads in the measured window.
    shard_cpu: Duration,
    /// CPU time of the shards' io_uring workers in the measured window (those alive at
    /// its end).
    io_worker_cpu: Duration,
}

/// Name prefixes of the engine's threads whose CPU time the run reports: the shards, and
/// the io_uring workers the kernel starts for them (named after the submitting thread).
const ENGINE_THREADS: [&str; 2] = ["coffer-shard", "iou-wrk"];

/// The first shard's core (where the floors run too).
fn shard_core(args: &Args, cores: &[core_affinity::CoreId]) -> Option<core_affinity::CoreId> {
    match args.shard_cores.first() {
        Some(&id) => Some(core_affinity::CoreId { id }),
        None => cores.first().copied(),
    }
}

/// The engine's configuration for the run.
fn engine_config(args: &Args, dir: &Path) -> BoxResult<Config> {
    let mut config = Config::new(dir);
    config.shards = args.shards;
    config.pin_shards = true;
    config.shard_cores = args.shard_cores.clone();
    config.offsets_topic_num_partitions = args.offsets_partitions;
    config.group_commit_linger_us = args.linger_us;
    config.fsync_scope = args.fsync_scope.parse()?;
    config.journal_file_bytes = args.journal_file_mib << 20;
    config.log_preallocate = args.log_preallocate;
    config.groups.group_initial_rebalance_delay_ms = 0;
    Ok(config)
}

fn run_engine(args: &Args, dir: &Path, cores: &[core_affinity::CoreId]) -> BoxResult<EngineOut> {
    let engine = Engine::open(engine_config(args, dir)?)?;
    let members = if args.heartbeats_per_sec > 0 {
        heartbeat::join_members(&engine, args.heartbeat_members)?
    } else {
        Vec::new()
    };

    let names = group_names(args.groups);
    let committers = args.committers.max(1);
    let committer_core = match args.committer_core {
        Some(id) => Some(core_affinity::CoreId { id }),
        None => cores.last().copied(),
    };
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);

    let mut cpu = [Duration::ZERO; ENGINE_THREADS.len()];
    let (before, after, outs) = std::thread::scope(|scope| -> BoxResult<_> {
        let mut handles = Vec::with_capacity(committers);
        for thread in 0..committers {
            // Each group belongs to one committer, so per-key order is that thread's order.
            let owned: Vec<usize> = (0..names.len())
                .filter(|g| g % committers == thread)
                .collect();
            let keys = KeyStream::new(names.clone(), owned, args);
            let in_flight =
                args.in_flight / committers + usize::from(thread < args.in_flight % committers);
            let engine = &engine;
            let inline = (matches!(args.heartbeat_core, HeartbeatCore::Inline)
                && !members.is_empty())
            .then(|| {
                let share = args.heartbeats_per_sec as f64 / committers as f64;
                heartbeat::Share::new(&members, thread, committers, share)
            });
            handles.push(scope.spawn(move || {
                if let Some(core) = committer_core {
                    core_affinity::set_for_current(core);
                }
                let rate = args.rate.map(|rate| rate / committers as f64);
                run_committer(
                    engine,
                    keys,
                    in_flight.max(1),
                    rate,
                    (measure_from, stop_at),
                    inline,
                )
            }));
        }
        let heartbeat_core = match args.heartbeat_core {
            HeartbeatCore::Committers => committer_core,
            HeartbeatCore::Shard => shard_core(args, cores),
            HeartbeatCore::Any | HeartbeatCore::Inline => None,
        };
        let inline = matches!(args.heartbeat_core, HeartbeatCore::Inline);
        let heartbeater = if members.is_empty() || inline {
            None
        } else {
            let (engine, members) = (&engine, &members);
            let named = std::thread::Builder::new().name("heartbeater".into());
            Some(named.spawn_scoped(scope, move || {
                if let Some(core) = heartbeat_core {
                    core_affinity::set_for_current(core);
                }
                heartbeat::run(
                    engine,
                    members,
                    args.heartbeats_per_sec,
                    measure_from,
                    stop_at,
                )
            })?)
        };
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let before = engine.metrics()?;
        let cpu_before = coffer_bench::threads_cpu_time(&ENGINE_THREADS)?;
        std::thread::sleep(stop_at.saturating_duration_since(Instant::now()));
        let cpu_after = coffer_bench::threads_cpu_time(&ENGINE_THREADS)?;
        let after = engine.metrics()?;
        for (used, (after, before)) in cpu.iter_mut().zip(cpu_after.iter().zip(&cpu_before)) {
            *used = after.saturating_sub(*before);
        }
        if let Some(heartbeater) = heartbeater {
            match heartbeater.join() {
                Ok((answered, errors, cpu_share)) => println!(
                    "heartbeats: {answered} answered in the measured window ({:.0}/s), {errors} errors, heartbeat thread on CPU {:.1} % of its run",
                    answered as f64 / args.duration,
                    cpu_share * 100.0
                ),
                Err(_) => return Err("the heartbeat thread panicked".into()),
            }
        }
        let mut outs = Vec::with_capacity(committers);
        for handle in handles {
            match handle.join() {
                Ok(out) => outs.push(out?),
                Err(_) => return Err("a committer thread panicked".into()),
            }
        }
        Ok((before, after, outs))
    })?;
    engine.close()?;
    EngineOut::of(args, &outs, (&before, &after), cpu)
}

impl EngineOut {
    /// The engine's figures from its committers' results, its metrics at the start and the
    /// end of the measured window, and its threads' CPU time in the window.
    fn of(
        args: &Args,
        outs: &[CommitterOut],
        (before, after): (&[ShardMetrics], &[ShardMetrics]),
        cpu: [Duration; ENGINE_THREADS.len()],
    ) -> BoxResult<EngineOut> {
        let mut latency = histogram();
        let mut acks = 0;
        let (mut heartbeats, mut heartbeat_errors) = (0, 0);
        for out in outs {
            latency.add(&out.latency_us)?;
            acks += out.acks;
            heartbeats += out.heartbeats_answered;
            heartbeat_errors += out.heartbeat_errors;
        }
        if matches!(args.heartbeat_core, HeartbeatCore::Inline) && args.heartbeats_per_sec > 0 {
            println!(
                "heartbeats: {heartbeats} answered in the measured window ({:.0}/s), {heartbeat_errors} errors, sent inline by the committers",
                heartbeats as f64 / args.duration
            );
        }
        let seconds = args.duration;
        Ok(EngineOut {
            seconds,
            acks,
            partition_offsets_per_s: (acks * args.partitions_per_request as u64) as f64 / seconds,
            ack_us: Percentiles::of(&latency),
            counters: Counters::of(after).minus(&Counters::of(before)),
            flush_us: Percentiles::of(&window_histogram(before, after, |m| &m.flush_latency_us)),
            dirty_roll_us: Percentiles::of(&window_histogram(before, after, |m| &m.dirty_roll_us)),
            journal_rotation_us: Percentiles::of(&window_histogram(before, after, |m| {
                &m.journal_rotation_us
            })),
            compaction_step_us: Percentiles::of(&window_histogram(before, after, |m| {
                &m.compaction_step_us
            })),
            engine_commit_us: Percentiles::of(&window_histogram(before, after, |m| {
                &m.commit_latency_us
            })),
            shard_cpu: cpu[0],
            io_worker_cpu: cpu[1],
        })
    }
}

/// Encodes `records` records of the key stream the way a flush lays them out: one
/// RecordBatch per offsets partition, back to back in `out`.
fn encode_floor_batch(
    keys: &mut KeyStream,
    partition_of: &[u32],
    records: usize,
    out: &mut Vec<u8>,
) {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut items: Vec<(u32, usize, i32, i64)> = Vec::with_capacity(records);
    let mut pairs = Vec::new();
    while items.len() < records {
        let group = keys.next_request(&mut pairs);
        for &(partition, offset) in &pairs {
            if items.len() < records {
                items.push((partition_of[group], group, partition, offset));
            }
        }
    }
    items.sort_by_key(|&(offsets_partition, ..)| offsets_partition);
    out.clear();
    let mut i = 0;
    while i < items.len() {
        let offsets_partition = items[i].0;
        let mut writer = BatchWriter::begin(out, BatchParams::default());
        while i < items.len() && items[i].0 == offsets_partition {
            let (_, group, partition, offset) = items[i];
            let key = OffsetCommitKey {
                group: &keys.names[group],
                topic: TOPIC,
                partition,
            };
            let value = OffsetCommitValue {
                offset,
                leader_epoch: LEADER_EPOCH,
                metadata: "",
                commit_timestamp: timestamp,
                expire_timestamp: coffer::format::schema::NO_TIMESTAMP,
                topic_id: None,
            };
            let version = value.version_for_write();
            writer.append_offset_commit(timestamp, &key, Some((&value, version)));
            i += 1;
        }
        writer.finish();
    }
}

struct FloorOut {
    records_per_batch: usize,
    bytes_per_batch: usize,
    batches: u64,
    records_per_s: f64,
    batch_us: Percentiles,
}

fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The floors' key stream (every group, in order) and each group's offsets partition.
fn floor_keys(args: &Args) -> (KeyStream, Vec<u32>) {
    let names = group_names(args.groups);
    let partitioner = GroupPartitioner::Kafka;
    let partition_of: Vec<u32> = names
        .iter()
        .map(|n| partitioner.partition_for(n, args.offsets_partitions))
        .collect();
    let owned = (0..names.len()).collect();
    (KeyStream::new(names, owned, args), partition_of)
}

/// A new floor file at `path`, preallocated to [`FLOOR_FILE_BYTES`] and synced.
fn create_floor_file(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    preallocate(&file, FLOOR_FILE_BYTES)?;
    file.sync_all()?;
    Ok(file)
}

fn run_floor(args: &Args, dir: &Path, records_per_batch: usize) -> BoxResult<FloorOut> {
    let (mut keys, partition_of) = floor_keys(args);
    let mut buffers = Vec::with_capacity(FLOOR_BUFFERS);
    for _ in 0..FLOOR_BUFFERS {
        let mut buffer = Vec::new();
        encode_floor_batch(&mut keys, &partition_of, records_per_batch, &mut buffer);
        buffers.push(buffer);
    }
    let bytes_per_batch = buffers[0].len();

    let path = dir.join("floor.log");
    let file = create_floor_file(&path)?;

    let mut latency = histogram();
    let mut batches = 0u64;
    let mut position = 0u64;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let mut measured_start = None;
    let mut measured_end = measure_from;
    for n in 0.. {
        let began = Instant::now();
        if began >= stop_at {
            break;
        }
        let buffer = &buffers[n % FLOOR_BUFFERS];
        if position + buffer.len() as u64 > FLOOR_FILE_BYTES {
            position = 0;
        }
        file.write_all_at(buffer, position)?;
        file.sync_data()?;
        position += buffer.len() as u64;
        let done = Instant::now();
        if began >= measure_from {
            measured_start.get_or_insert(began);
            measured_end = done;
            batches += 1;
            record_us(&mut latency, done - began);
        }
    }
    drop(file);
    std::fs::remove_file(&path)?;
    let seconds = measured_start.map_or(0.0, |s| (measured_end - s).as_secs_f64());
    Ok(FloorOut {
        records_per_batch,
        bytes_per_batch,
        batches,
        records_per_s: if seconds > 0.0 {
            (batches * records_per_batch as u64) as f64 / seconds
        } else {
            0.0
        },
        batch_us: Percentiles::of(&latency),
    })
}

/// The latency floor of the open loop: an ideal group commit on the same disk. Requests are
/// due on the schedule of `--rate`; each round writes every request due by then (up to
/// `group_commit_bytes_max`, as the engine caps a flush) with one write + fdatasync, then
/// acks them, each measured from its scheduled time as the engine's committers measure
/// theirs. It has no queue, index, cache or checkpoint: what it shows is the disk's own
/// tail at this rate.
fn run_floor_open_loop(
    args: &Args,
    dir: &Path,
    rate_per_s: f64,
    bytes_per_request: usize,
) -> BoxResult<OpenLoopFloorOut> {
    let (mut keys, partition_of) = floor_keys(args);
    let batch_bytes_max = Config::new(dir).group_commit_bytes_max;
    let requests_per_batch_max = (batch_bytes_max / bytes_per_request.max(1)).max(1) as u64;
    // Real encoded records, written as prefixes of the size each round needs.
    let records = requests_per_batch_max as usize * args.partitions_per_request;
    let mut buffer = Vec::new();
    encode_floor_batch(&mut keys, &partition_of, records, &mut buffer);

    let path = dir.join("floor-open-loop.log");
    let file = create_floor_file(&path)?;

    let mut latency = histogram();
    let (mut written, mut batches, mut position) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let stop_at = measure_from + Duration::from_secs_f64(args.duration);
    let scheduled = |n: u64| start + Duration::from_secs_f64(n as f64 / rate_per_s);
    loop {
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        let due = ((now - start).as_secs_f64() * rate_per_s) as u64;
        if due <= written {
            let nap = scheduled(written + 1).saturating_duration_since(now);
            std::thread::sleep(nap.min(OPEN_LOOP_NAP));
            continue;
        }
        let requests = (due - written).min(requests_per_batch_max);
        let bytes = (requests as usize * bytes_per_request).min(buffer.len());
        if position + bytes as u64 > FLOOR_FILE_BYTES {
            position = 0;
        }
        file.write_all_at(&buffer[..bytes], position)?;
        file.sync_data()?;
        position += bytes as u64;
        let done = Instant::now();
        for n in written + 1..=written + requests {
            let issued = scheduled(n);
            if issued >= measure_from {
                record_us(&mut latency, done - issued);
            }
        }
        written += requests;
        batches += u64::from(done >= measure_from);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(OpenLoopFloorOut {
        bytes_per_request,
        batches,
        ack_us: Percentiles::of(&latency),
    })
}

struct OpenLoopFloorOut {
    bytes_per_request: usize,
    batches: u64,
    ack_us: Percentiles,
}

/// The heartbeat load: Stable one-member groups and a paced heartbeater.
mod heartbeat {
    use std::time::{Duration, Instant};

    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use coffer::group::{GroupError, JoinGroupRequest, JoinProtocol, SyncGroupRequest};
    use coffer::{Engine, GroupFuture};

    use super::BoxResult;

    /// Pacing step of the heartbeater.
    const STEP: Duration = Duration::from_millis(1);

    /// Joins and syncs `count` one-member groups (all joins, then all syncs, in flight
    /// together so the group metadata writes share flushes); returns (group, member) ids.
    pub fn join_members(engine: &Engine, count: usize) -> BoxResult<Vec<(String, String)>> {
        let groups: Vec<String> = (0..count).map(|i| format!("hb-group-{i:06}")).collect();
        let joins: Vec<_> = groups
            .iter()
            .map(|group_id| {
                engine.join_group(JoinGroupRequest {
                    group_id: group_id.clone(),
                    member_id: String::new(),
                    group_instance_id: None,
                    client_id: "hb".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout_ms: 45_000,
                    rebalance_timeout_ms: 300_000,
                    protocol_type: "consumer".into(),
                    protocols: vec![JoinProtocol {
                        name: "range".into(),
                        metadata: Vec::new(),
                    }],
                    require_known_member_id: false,
                })
            })
            .collect();
        let mut members = Vec::with_capacity(count);
        for (group_id, join) in groups.into_iter().zip(joins) {
            let joined = join.wait();
            if let Some(error) = joined.error {
                return Err(format!("joining {group_id}: {error}").into());
            }
            members.push((group_id, joined.member_id));
        }
        let syncs: Vec<_> = members
            .iter()
            .map(|(group_id, member_id)| {
                engine.sync_group(SyncGroupRequest {
                    group_id: group_id.clone(),
                    member_id: member_id.clone(),
                    group_instance_id: None,
                    generation_id: 1,
                    protocol_type: None,
                    protocol_name: None,
                    assignments: vec![(member_id.clone(), vec![0; 16])],
                })
            })
            .collect();
        for sync in syncs {
            if let Some(error) = sync.wait().error {
                return Err(format!("syncing: {error}").into());
            }
        }
        Ok(members)
    }

    /// Sends `per_sec` heartbeats per second round robin over `members` until `stop_at`,
    /// waiting for each step's answers; returns (answers in the measured window, errors,
    /// the thread's CPU time as a share of its wall time).
    pub fn run(
        engine: &Engine,
        members: &[(String, String)],
        per_sec: u64,
        measure_from: Instant,
        stop_at: Instant,
    ) -> (u64, u64, f64) {
        let started = Instant::now();
        let cpu_started = thread_cpu_time();
        let mut heartbeats = Share::new(members, 0, 1, per_sec as f64);
        while Instant::now() < stop_at {
            heartbeats.send_due(engine, Instant::now() >= measure_from);
            heartbeats.wait_answers();
            std::thread::sleep(STEP);
        }
        let (answered, errors) = heartbeats.finish();
        let cpu_share =
            (thread_cpu_time() - cpu_started).as_secs_f64() / started.elapsed().as_secs_f64();
        (answered, errors, cpu_share)
    }

    /// The heartbeats' ids laid out back to back in sending order, as requests sit in a
    /// broker's receive buffer (the criterion benchmark does the same): a heartbeat reads
    /// its ids from memory the previous one's read brought in, not from strings scattered
    /// over the heap since the joins.
    struct RequestIds {
        text: String,
        /// Per member: where its group id ends and its member id starts, and where that
        /// ends (its group id starts where the previous member id ends).
        ends: Vec<(usize, usize)>,
    }

    impl RequestIds {
        fn laid_out(members: &[(String, String)]) -> RequestIds {
            let mut text = String::new();
            let mut ends = Vec::with_capacity(members.len());
            for (group_id, member_id) in members {
                text.push_str(group_id);
                let group_end = text.len();
                text.push_str(member_id);
                ends.push((group_end, text.len()));
            }
            RequestIds { text, ends }
        }

        fn get(&self, i: usize) -> (&str, &str) {
            let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
            let (group_end, end) = self.ends[i];
            (&self.text[start..group_end], &self.text[group_end..end])
        }
    }

    /// A share of the heartbeats: members `first`, `first + stride`, ... in turn, at
    /// `per_sec`, sent by whoever calls [`send_due`](Self::send_due) (the heartbeat thread
    /// between its naps, or a committer between its commits: `--heartbeat-core inline`).
    pub struct Share<'m> {
        requests: RequestIds,
        members: &'m [(String, String)],
        first: usize,
        stride: usize,
        per_sec: f64,
        started: Instant,
        sent: u64,
        next: usize,
        /// Answers not in yet (heartbeats that went to the shard), oldest first, with
        /// whether they count (sent in the measured window).
        pending: std::collections::VecDeque<(bool, GroupFuture<Result<(), GroupError>>)>,
        answered: u64,
        errors: u64,
    }

    impl<'m> Share<'m> {
        pub fn new(
            members: &'m [(String, String)],
            first: usize,
            stride: usize,
            per_sec: f64,
        ) -> Share<'m> {
            Share {
                requests: RequestIds::laid_out(members),
                members,
                first,
                stride,
                per_sec,
                started: Instant::now(),
                sent: 0,
                next: first,
                pending: std::collections::VecDeque::new(),
                answered: 0,
                errors: 0,
            }
        }

        /// Sends the heartbeats due by now; collects the answers already in.
        pub fn send_due(&mut self, engine: &Engine, measured: bool) {
            let due = (self.started.elapsed().as_secs_f64() * self.per_sec) as u64;
            let mut cx = Context::from_waker(Waker::noop());
            while self.sent < due {
                let (group_id, member_id) = self.requests.get(self.next);
                self.next += self.stride;
                if self.next >= self.members.len() {
                    self.next = self.first;
                }
                self.sent += 1;
                let mut answer = engine.heartbeat(group_id, member_id, None, 1);
                match Pin::new(&mut answer).poll(&mut cx) {
                    Poll::Ready(result) => self.count(measured, result),
                    Poll::Pending => self.pending.push_back((measured, answer)),
                }
            }
            while let Some((counts, answer)) = self.pending.front_mut() {
                let counts = *counts;
                let Poll::Ready(result) = Pin::new(answer).poll(&mut cx) else {
                    break;
                };
                self.pending.pop_front();
                self.count(counts, result);
            }
        }

        fn count(&mut self, measured: bool, result: Result<(), GroupError>) {
            self.answered += u64::from(measured);
            self.errors += u64::from(result.is_err());
        }

        /// Waits for the answers still out.
        pub fn wait_answers(&mut self) {
            while let Some((counts, answer)) = self.pending.pop_front() {
                let result = answer.wait();
                self.count(counts, result);
            }
        }

        /// Waits for the answers still out; returns (answered in the measured window,
        /// errors).
        pub fn finish(mut self) -> (u64, u64) {
            self.wait_answers();
            (self.answered, self.errors)
        }
    }

    /// CPU time the calling thread has used (zero if the clock cannot be read).
    fn thread_cpu_time() -> Duration {
        coffer_bench::thread_cpu_time().unwrap_or_default()
    }
}

fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let args = Args::parse();
    if args.partitions_per_request == 0 || args.groups == 0 || args.topic_partitions <= 0 {
        return Err(
            "--partitions-per-request, --groups and --topic-partitions must be positive".into(),
        );
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let dir = args.dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &dir, &cores);
    let removed = std::fs::remove_dir_all(&dir);
    // Best effort: the parent goes too when no other run is using it.
    let _ = std::fs::remove_dir(&args.dir);
    result?;
    removed?;
    Ok(())
}

fn run(args: &Args, dir: &Path, cores: &[core_affinity::CoreId]) -> BoxResult<()> {
    print_header(args, dir, cores);
    let engine = run_engine(args, &dir.join("engine"), cores)?;
    let floors = run_floors(args, dir, cores, &engine)?;
    let ratios = Ratios::of(&engine, &floors.closed);
    print_engine(&engine);
    print_floors(args, &engine, &floors, ratios);
    if let Some(path) = &args.json {
        write_json(path, args, &engine, &floors, ratios)?;
    }
    Ok(())
}

/// What the run is, on one line.
fn print_header(args: &Args, dir: &Path, cores: &[core_affinity::CoreId]) {
    println!(
        "commit_bench: {} committer(s) on core {:?}, {} shard(s) on cores {}, {} in flight ({}), {} partitions/request, {} groups × {} topic partitions, {} offsets partitions, linger {} µs, {} heartbeats/s over {} members, {} s + {} s warmup, dir {}",
        args.committers,
        args.committer_core.or(cores.last().map(|c| c.id)),
        args.shards,
        if args.shard_cores.is_empty() {
            "0, 1, ...".to_string()
        } else {
            format!("{:?}", args.shard_cores)
        },
        args.in_flight,
        args.rate.map_or("closed loop".to_string(), |rate| format!(
            "open loop at {rate} requests/s"
        )),
        args.partitions_per_request,
        args.groups,
        args.topic_partitions,
        args.offsets_partitions,
        args.linger_us,
        args.heartbeats_per_sec,
        args.heartbeat_members,
        args.duration,
        args.warmup,
        dir.display()
    );
}

/// The physical floors measured after the engine's run, on the shard's core with the engine
/// closed: the closed loop's at the engine's records per flush, and with `--rate` the open
/// loop's.
struct Floors {
    closed: FloorOut,
    open_loop: Option<OpenLoopFloorOut>,
}

fn run_floors(
    args: &Args,
    dir: &Path,
    cores: &[core_affinity::CoreId],
    engine: &EngineOut,
) -> BoxResult<Floors> {
    let c = engine.counters;
    let floor_records = (records_per_flush(engine).round() as usize).max(1);
    // The floor runs on the shard's core, with the engine closed.
    let floor_core = shard_core(args, cores);
    let floor = std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            if let Some(core) = floor_core {
                core_affinity::set_for_current(core);
            }
            run_floor(args, dir, floor_records)
        });
        handle
            .join()
            .unwrap_or_else(|_| Err("the floor thread panicked".into()))
    })?;

    // With --rate, the open loop's own floor too (same core, engine closed).
    let bytes_per_request = if c.records > 0 {
        (c.bytes as f64 / c.records as f64 * args.partitions_per_request as f64).round() as usize
    } else {
        0
    };
    let open_loop = match args.rate {
        Some(rate) if bytes_per_request > 0 => Some(std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                if let Some(core) = floor_core {
                    core_affinity::set_for_current(core);
                }
                run_floor_open_loop(args, dir, rate, bytes_per_request)
            });
            handle
                .join()
                .unwrap_or_else(|_| Err("the open-loop floor thread panicked".into()))
        })?),
        _ => None,
    };

    Ok(Floors {
        closed: floor,
        open_loop,
    })
}

/// The engine's records per flush.
fn records_per_flush(engine: &EngineOut) -> f64 {
    let c = engine.counters;
    if c.flushes > 0 {
        c.records as f64 / c.flushes as f64
    } else {
        0.0
    }
}

/// The engine against the closed-loop floor.
#[derive(Clone, Copy)]
struct Ratios {
    throughput: f64,
    p99: f64,
}

impl Ratios {
    fn of(engine: &EngineOut, floor: &FloorOut) -> Ratios {
        let throughput = if floor.records_per_s > 0.0 {
            engine.partition_offsets_per_s / floor.records_per_s
        } else {
            0.0
        };
        let p99 = engine.ack_us.p99 as f64 / floor.batch_us.p99.max(1) as f64;
        Ratios { throughput, p99 }
    }
}

fn print_engine(engine: &EngineOut) {
    let (c, secs) = (engine.counters, engine.seconds);
    let records_per_flush = records_per_flush(engine);
    println!();
    println!("engine: {} requests acked in {secs} s", engine.acks);
    println!(
        "  durable partition-offset commits/s  {:>12.0}",
        engine.partition_offsets_per_s
    );
    let a = engine.ack_us;
    println!(
        "  ack latency µs p50/p99/p99.9/max     {} / {} / {} / {}",
        a.p50, a.p99, a.p999, a.max
    );
    let e = engine.engine_commit_us;
    println!(
        "  engine-side commit latency µs p50/p99/p99.9  {} / {} / {}",
        e.p50, e.p99, e.p999
    );
    println!(
        "  flushes {} ({:.0}/s; {:.0} % encoded during the previous one's sync, {:.0} % acked during the next one's), records/flush {:.1}, batches/flush {:.1}, syncs {} ({:.0}/s), bytes/record {:.1}",
        c.flushes,
        c.flushes as f64 / secs,
        100.0 * c.flushes_encoded_in_shadow as f64 / c.flushes.max(1) as f64,
        100.0 * c.flushes_acked_in_shadow as f64 / c.flushes.max(1) as f64,
        records_per_flush,
        c.batches as f64 / c.flushes.max(1) as f64,
        c.syncs,
        c.syncs as f64 / secs,
        c.bytes as f64 / c.records.max(1) as f64
    );
    let f = engine.flush_us;
    println!(
        "  flush latency µs p50/p99/p99.9/max   {} / {} / {} / {}",
        f.p50, f.p99, f.p999, f.max
    );
    let per_sec = |count: u64| (count, count as f64 / secs);
    print_timed("dirty rolls", per_sec(c.dirty_rolls), engine.dirty_roll_us);
    print_timed(
        "journal checkpoints",
        per_sec(c.journal_checkpoints),
        engine.journal_rotation_us,
    );
    let offsets = c.partition_offsets.max(1) as f64;
    println!(
        "  shard threads on CPU {:.1} % of a core, {:.0} ns per partition offset; io workers {:.1} % ({:.0} ns)",
        engine.shard_cpu.as_secs_f64() / secs * 100.0,
        engine.shard_cpu.as_nanos() as f64 / offsets,
        engine.io_worker_cpu.as_secs_f64() / secs * 100.0,
        engine.io_worker_cpu.as_nanos() as f64 / offsets
    );
    print_timed(
        "compaction steps",
        per_sec(c.compaction_steps),
        engine.compaction_step_us,
    );
}

/// One line for events of the shard that hold it: how many (and per second), and how long
/// each took (for journal checkpoints: each switch to a new file).
fn print_timed(what: &str, (count, per_sec): (u64, f64), took: Percentiles) {
    println!(
        "  {what} {count} ({per_sec:.1}/s), µs p50/p99/max   {} / {} / {}",
        took.p50, took.p99, took.max
    );
}

fn print_floors(args: &Args, engine: &EngineOut, floors: &Floors, ratios: Ratios) {
    let floor = &floors.closed;
    println!(
        "floor: {} records ({} bytes) per pwrite + fdatasync, {} batches",
        floor.records_per_batch, floor.bytes_per_batch, floor.batches
    );
    println!(
        "  records/s                           {:>12.0}",
        floor.records_per_s
    );
    let b = floor.batch_us;
    println!(
        "  batch latency µs p50/p99/p99.9/max   {} / {} / {} / {}",
        b.p50, b.p99, b.p999, b.max
    );
    println!(
        "ratio engine ÷ floor: throughput {:.3}, p99 {:.2}",
        ratios.throughput, ratios.p99
    );
    if let (Some(open), Some(rate)) = (&floors.open_loop, args.rate) {
        let o = open.ack_us;
        println!(
            "open-loop floor at {rate:.0} requests/s ({} bytes each, {} batches): ack latency µs p50/p99/p99.9/max {} / {} / {} / {}",
            open.bytes_per_request, open.batches, o.p50, o.p99, o.p999, o.max
        );
        println!(
            "ratio engine ÷ open-loop floor: ack p99 {:.2}",
            engine.ack_us.p99 as f64 / o.p99.max(1) as f64
        );
    }
}

/// The run's figures as JSON, to `path`.
fn write_json(
    path: &Path,
    args: &Args,
    engine: &EngineOut,
    floors: &Floors,
    ratios: Ratios,
) -> BoxResult<()> {
    let (c, secs, floor) = (engine.counters, engine.seconds, &floors.closed);
    let records_per_flush = records_per_flush(engine);
    let json = format!(
        "{{\n  \"heartbeats_per_sec\": {},\n  \"in_flight\": {},\n  \"rate_per_s\": {},\n  \"committers\": {},\n  \"shards\": {},\n  \"partitions_per_request\": {},\n  \"groups\": {},\n  \"duration_s\": {},\n  \"engine\": {{\"acks\": {}, \"partition_offsets_per_s\": {:.1}, \"ack_us\": {}, \"engine_commit_us\": {}, \"flush_us\": {}, \"flushes\": {}, \"records\": {}, \"batches\": {}, \"syncs\": {}, \"bytes\": {}, \"records_per_flush\": {:.2}, \"syncs_per_s\": {:.1}}},\n  \"floor\": {{\"records_per_batch\": {}, \"bytes_per_batch\": {}, \"batches\": {}, \"records_per_s\": {:.1}, \"batch_us\": {}}},\n  \"floor_open_loop\": {},\n  \"ratio\": {{\"throughput\": {:.4}, \"p99\": {:.4}}}\n}}\n",
        args.heartbeats_per_sec,
        args.in_flight,
        args.rate
            .map_or("null".to_string(), |rate| format!("{rate:.1}")),
        args.committers,
        args.shards,
        args.partitions_per_request,
        args.groups,
        secs,
        engine.acks,
        engine.partition_offsets_per_s,
        engine.ack_us.json(),
        engine.engine_commit_us.json(),
        engine.flush_us.json(),
        c.flushes,
        c.records,
        c.batches,
        c.syncs,
        c.bytes,
        records_per_flush,
        c.syncs as f64 / secs,
        floor.records_per_batch,
        floor.bytes_per_batch,
        floor.batches,
        floor.records_per_s,
        floor.batch_us.json(),
        floors
            .open_loop
            .as_ref()
            .map_or("null".to_string(), |open| format!(
                "{{\"bytes_per_request\": {}, \"batches\": {}, \"ack_us\": {}}}",
                open.bytes_per_request,
                open.batches,
                open.ack_us.json()
            )),
        ratios.throughput,
        ratios.p99,
    );
    std::fs::write(path, json)?;
    Ok(())
}
