//! The run's report: a plain-text summary for stdout and the same figures as JSON, whose
//! schema (`schema_version`) docs/loadgen.md documents field by field.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use coffer::Config;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Args;
use crate::crash::Crash;
use crate::fleet::Fleet;
use crate::members::Op;
use crate::run::Measures;
use crate::scenario::{Mode, Plan};
use crate::stats::{ErrorCounts, OpStats};
use crate::sys::Env;

/// Bumped whenever a field changes meaning or disappears (additions keep it).
pub const SCHEMA_VERSION: u32 = 2;

/// Everything the report is built from.
pub struct Inputs<'a> {
    pub args: &'a Args,
    pub plan: &'a Plan,
    pub fleet: &'a Fleet,
    pub config: &'a Config,
    pub env: Env,
    pub measures: &'a Measures,
}

#[derive(Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub scenario: String,
    /// Per operation type: `commit` always; `commit_hot` (the hot group's subset) in
    /// hot-group; `join`, `sync`, `heartbeat`, `leave` in heartbeat-flood and rebalance-storm.
    pub ops: BTreeMap<String, OpReport>,
    pub fleet: FleetReport,
    /// heartbeat-flood and rebalance-storm: the group protocol's settings and life; null in
    /// the other scenarios.
    pub groups: Option<GroupsReport>,
    pub storage: Storage,
    pub cpu: Cpu,
    pub env: Env,
    pub config: RunConfig,
    pub verify: Verify,
}

#[derive(Serialize)]
pub struct OpReport {
    /// Successful answers inside the measurement window.
    pub requests: u64,
    pub per_sec: f64,
    pub partition_offsets_per_sec: f64,
    pub latency_us: Latency,
    /// "intended" (open loop: from the intended send time) or "issued" (closed loop).
    pub latency_from: &'static str,
    /// Failed requests in the window, by Kafka error code ("none": no Kafka code).
    pub errors: BTreeMap<String, u64>,
    /// Failed requests intended during the warmup, by code.
    pub errors_outside_window: BTreeMap<String, u64>,
    /// One message per error code seen.
    pub error_examples: BTreeMap<String, String>,
    /// Answers whose error code is the protocol at work, not a failure (a join's
    /// MEMBER_ID_REQUIRED; rebalance-storm's fenced commits and rejoin signals), in the
    /// window, by code. Their latency is in `latency_us`; they are not in `requests`.
    pub expected_errors: BTreeMap<String, u64>,
}

#[derive(Serialize)]
pub struct GroupsReport {
    pub heartbeat_interval_ms: u32,
    /// Heartbeats per second the fleet offers when every consumer is stable: members ÷
    /// interval.
    pub heartbeat_target_per_sec: f64,
    pub session_timeout_ms: u32,
    pub rebalance_timeout_ms: u32,
    pub churn_per_sec: f64,
    pub rejoin_delay_ms: u32,
    /// Before the timeline: every consumer joins and syncs.
    pub setup_secs: f64,
    pub setup_complete: bool,
    pub setup_stable_members: u64,
    /// Churn: consumers that sent LeaveGroup, and consumers that went silent.
    pub leaves: u64,
    pub expiries: u64,
    /// Generations advanced after setup, summed over groups: the rebalances.
    pub rebalances: u64,
    pub heartbeats_delayed: u64,
    pub heartbeats_late: u64,
    pub calls_abandoned_at_stop: u64,
    pub assignment_mismatches: u64,
    pub stable_at_stop: u64,
}
#[derive(Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    /// Requests in the histogram.
    pub count: u64,
}

#[derive(Serialize)]
pub struct FleetReport {
    pub groups: usize,
    pub members: usize,
    pub keys: usize,
    pub policy: &'static str,
    pub mode: &'static str,
    /// Open loop: the total rate aimed at; null for the closed loop.
    pub rate_target_per_sec: Option<f64>,
    pub in_flight: usize,
    pub generator_threads: usize,
    /// per-poll commits skipped because the previous one was unanswered.
    pub coalesced: u64,
    /// Commits sent while the same member had an earlier one unanswered.
    pub redundant_in_flight: u64,
    /// Open-loop requests sent more than 1 ms after their intended time.
    pub late_sends: u64,
    /// Open-loop requests intended before the stop but never sent: the in-flight cap was
    /// full (they are in no histogram; many of them mean the run under-reports latency).
    pub unsent_at_stop: u64,
    /// The offsets partition that received the most commits, and its share of them.
    pub busiest_offsets_partition: Option<usize>,
    pub busiest_offsets_partition_share: Option<f64>,
}

#[derive(Serialize)]
pub struct Storage {
    /// Sum of `*.log` sizes after close (preallocation trimmed).
    pub log_bytes: u64,
    /// Bytes allocated to every file under the data directory at the end of the run,
    /// before close: segments with their preallocated space, spare segments, shard
    /// journals (null in crash-resume).
    pub disk_bytes_before_close: Option<u64>,
    /// The same after close (crash-resume: after recovery and verification).
    pub disk_bytes_after_close: u64,
    /// Requests acknowledged over the whole run (warmup and drain included).
    pub commits_total: u64,
    /// "engine metrics" (bytes the shards wrote) or "log files" (crash-resume: the engine's
    /// metrics died with it).
    pub bytes_written_source: &'static str,
    pub bytes_written: u64,
    pub bytes_written_per_commit: f64,
    pub bytes_written_per_partition_offset: f64,
    /// Data syncs and group commits per second in the window (null: not known).
    pub syncs_per_sec: Option<f64>,
    pub flushes_per_sec: Option<f64>,
    /// Commit requests per sync in the window.
    pub commits_per_sync: Option<f64>,
    /// Keys holding a value after reopen, and their encoded size as records.
    pub live_keys: u64,
    pub live_bytes: u64,
    /// log_bytes ÷ live_bytes.
    pub space_amplification: f64,
    /// disk_bytes_before_close (crash-resume: disk_bytes_after_close) ÷ live_bytes: what
    /// the disk held for the engine against what a perfectly compacted log would hold.
    pub disk_amplification: f64,
    pub close_secs: Option<f64>,
    /// Reopen (recovery) time before the verification.
    pub reopen_secs: f64,
}

#[derive(Serialize)]
pub struct Cpu {
    /// "window": this process inside the measured window; "engine process, whole run":
    /// crash-resume's killed child, warmup included.
    pub scope: &'static str,
    pub process_cpu_secs: f64,
    pub cpu_us_per_commit: f64,
    /// The same ÷ answers of every operation type in the window (the group scenarios'
    /// heartbeats outnumber their commits).
    pub cpu_us_per_op: f64,
    /// The generator threads' own CPU inside the window (null: not known), per request sent,
    /// and as a share of the process's CPU.
    pub generator_cpu_secs: Option<f64>,
    pub generator_cpu_us_per_op: Option<f64>,
    pub generator_share: Option<f64>,
    /// The engine's shard threads' CPU inside the window (null: not known), per commit
    /// acknowledged, at clock-tick resolution.
    pub shards_cpu_secs: Option<f64>,
    pub shards_cpu_us_per_commit: Option<f64>,
    /// The process's CPU minus the generator's and the shards': mostly the kernel's io_uring
    /// workers (`iou-wrk-*`, where the syncs run), plus the progress thread.
    pub other_cpu_secs: Option<f64>,
    /// Peak resident set size (`ru_maxrss`) of the engine's process.
    pub peak_rss_bytes: u64,
}

#[derive(Serialize)]
pub struct RunConfig {
    pub scenario: String,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub mode: &'static str,
    pub rate_per_sec: Option<f64>,
    pub in_flight: usize,
    pub threads: usize,
    pub groups: usize,
    pub scale: usize,
    pub policy: &'static str,
    pub auto_commit_interval_ms: u64,
    pub records_per_poll: u32,
    pub records_per_sec: f64,
    pub metadata_bytes: usize,
    pub seed: u64,
    pub engine: EngineConfig,
}

#[derive(Serialize)]
pub struct EngineConfig {
    pub shards: usize,
    pub offsets_topic_num_partitions: u32,
    pub offsets_topic_segment_bytes: u64,
    pub offset_metadata_max_bytes: usize,
    pub offsets_commit_timeout_ms: u64,
    pub log_preallocate: bool,
    pub group_commit_bytes_max: usize,
    pub group_commit_linger_us: u64,
    pub request_queue_depth_max: usize,
    pub pin_shards: bool,
    /// `file` or `filesystem` (see `--fsync-scope`).
    pub fsync_scope: String,
    pub group_min_session_timeout_ms: u32,
    pub group_initial_rebalance_delay_ms: u32,
}

#[derive(Serialize)]
pub struct Verify {
    pub keys: u64,
    pub violations: u64,
    pub examples: Vec<String>,
    /// crash-resume only.
    pub crash: Option<Crash>,
}

fn code_name(code: Option<i16>) -> String {
    code.map_or_else(|| "none".to_string(), |c| c.to_string())
}

fn counts(errors: &ErrorCounts) -> BTreeMap<String, u64> {
    errors
        .iter()
        .map(|(code, count)| (code_name(*code), count.count))
        .collect()
}

fn per(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

fn latency(h: &Histogram<u64>) -> Latency {
    let q = |quantile: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(quantile)
        }
    };
    Latency {
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p999: q(0.999),
        max: h.max(),
        mean: if h.is_empty() { 0.0 } else { h.mean() },
        count: h.len(),
    }
}

fn op_report(stats: &OpStats, secs: f64, latency_from: &'static str) -> OpReport {
    let mut error_examples = BTreeMap::new();
    let all_errors = stats
        .errors
        .iter()
        .chain(&stats.errors_outside_window)
        .chain(&stats.expected_errors);
    for (code, count) in all_errors {
        error_examples
            .entry(code_name(*code))
            .or_insert_with(|| count.example.clone());
    }
    OpReport {
        requests: stats.acks_in_window,
        per_sec: per(stats.acks_in_window as f64, secs),
        partition_offsets_per_sec: per(stats.partition_offsets_in_window as f64, secs),
        latency_us: latency(&stats.latency_us),
        latency_from,
        errors: counts(&stats.errors),
        errors_outside_window: counts(&stats.errors_outside_window),
        error_examples,
        expected_errors: counts(&stats.expected_errors),
    }
}

fn group_report(plan: &Plan, fleet: &Fleet, m: &Measures) -> Option<GroupsReport> {
    let (settings, ops, setup) = (plan.groups?, m.group_ops.as_ref()?, m.setup?);
    let c = &ops.counters;
    Some(GroupsReport {
        heartbeat_interval_ms: settings.heartbeat_interval_ms,
        heartbeat_target_per_sec: per(
            fleet.members.len() as f64 * 1000.0,
            f64::from(settings.heartbeat_interval_ms),
        ),
        session_timeout_ms: settings.session_timeout_ms,
        rebalance_timeout_ms: settings.rebalance_timeout_ms,
        churn_per_sec: settings.churn_per_sec,
        rejoin_delay_ms: settings.rejoin_delay_ms,
        setup_secs: setup.secs,
        setup_complete: setup.complete,
        setup_stable_members: setup.stable_members,
        leaves: c.leaves,
        expiries: c.expiries,
        rebalances: c.generations_advanced,
        heartbeats_delayed: c.heartbeats_delayed,
        heartbeats_late: c.heartbeats_late,
        calls_abandoned_at_stop: c.calls_abandoned_at_stop,
        assignment_mismatches: c.assignment_mismatches,
        stable_at_stop: c.stable_at_stop,
    })
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Open => "open",
        Mode::Closed => "closed",
    }
}

impl Report {
    pub fn build(inputs: Inputs<'_>) -> Report {
        let Inputs {
            args,
            plan,
            fleet,
            config,
            env,
            measures: m,
        } = inputs;
        let secs = m.measured_secs;
        let latency_from = match plan.mode {
            Mode::Open => "intended",
            Mode::Closed => "issued",
        };
        let mut ops = BTreeMap::new();
        ops.insert(
            "commit".to_string(),
            op_report(&m.commit, secs, latency_from),
        );
        if let Some(hot) = &m.commit_hot {
            ops.insert("commit_hot".to_string(), op_report(hot, secs, latency_from));
        }
        if let Some(group_ops) = &m.group_ops {
            for op in Op::ALL {
                let stats = &group_ops.stats[op as usize];
                ops.insert(
                    op.name().to_string(),
                    op_report(stats, secs, op.latency_from()),
                );
            }
        }
        let answered_in_window: u64 = ops
            .iter()
            .filter(|(name, _)| name.as_str() != "commit_hot")
            .map(|(_, op)| op.requests + op.expected_errors.values().sum::<u64>())
            .sum();
        let groups = group_report(plan, fleet, m);
        let issued: u64 = m.per_offsets_partition.iter().sum();
        let busiest = m
            .per_offsets_partition
            .iter()
            .enumerate()
            .max_by_key(|(_, count)| **count)
            .filter(|_| issued > 0);
        let (bytes_source, bytes_written, commits, offsets) = match m.engine_total {
            Some(total) => (
                "engine metrics",
                total.bytes,
                total.commits,
                total.partition_offsets,
            ),
            None => (
                "log files",
                m.log_bytes,
                m.total_acks,
                m.total_partition_offsets,
            ),
        };
        let window = m.engine_window;
        let generator_cpu = m.generator_cpu.map(|d| d.as_secs_f64());
        let shards_cpu = m.shards_cpu.map(|d| d.as_secs_f64());
        let process_cpu = m.process_cpu.as_secs_f64();
        let cpu_commits = match window {
            Some(w) => w.commits,
            None => m.total_acks,
        };
        Report {
            schema_version: SCHEMA_VERSION,
            scenario: plan.scenario.name().to_string(),
            ops,
            groups,
            fleet: FleetReport {
                groups: fleet.groups.len(),
                members: fleet.members.len(),
                keys: fleet.keys,
                policy: fleet.spec.policy.name(),
                mode: mode_name(plan.mode),
                rate_target_per_sec: m.rate_target_per_sec,
                in_flight: plan.in_flight,
                generator_threads: plan.threads,
                coalesced: m.coalesced,
                redundant_in_flight: m.redundant,
                late_sends: m.late_sends,
                unsent_at_stop: m.unsent_at_stop,
                busiest_offsets_partition: busiest.map(|(p, _)| p),
                busiest_offsets_partition_share: busiest
                    .map(|(_, c)| per(*c as f64, issued as f64)),
            },
            storage: Storage {
                log_bytes: m.log_bytes,
                disk_bytes_before_close: m.disk_bytes_before_close,
                disk_bytes_after_close: m.disk_bytes_after_close,
                commits_total: m.total_acks,
                bytes_written_source: bytes_source,
                bytes_written,
                bytes_written_per_commit: per(bytes_written as f64, commits as f64),
                bytes_written_per_partition_offset: per(bytes_written as f64, offsets as f64),
                syncs_per_sec: window.map(|w| per(w.syncs as f64, secs)),
                flushes_per_sec: window.map(|w| per(w.flushes as f64, secs)),
                commits_per_sync: window.map(|w| per(w.commits as f64, w.syncs as f64)),
                live_keys: m.verification.live_keys,
                live_bytes: m.verification.live_bytes,
                space_amplification: per(m.log_bytes as f64, m.verification.live_bytes as f64),
                disk_amplification: per(
                    m.disk_bytes_before_close
                        .unwrap_or(m.disk_bytes_after_close) as f64,
                    m.verification.live_bytes as f64,
                ),
                close_secs: m.close_secs,
                reopen_secs: m.reopen_secs,
            },
            cpu: Cpu {
                scope: if m.crash.is_some() {
                    "engine process, whole run"
                } else {
                    "window"
                },
                process_cpu_secs: process_cpu,
                cpu_us_per_commit: per(process_cpu * 1e6, cpu_commits as f64),
                cpu_us_per_op: per(process_cpu * 1e6, answered_in_window as f64),
                generator_cpu_secs: generator_cpu,
                generator_cpu_us_per_op: generator_cpu
                    .map(|g| per(g * 1e6, m.issued_in_window as f64)),
                generator_share: generator_cpu.map(|g| per(g, process_cpu)),
                shards_cpu_secs: shards_cpu,
                shards_cpu_us_per_commit: shards_cpu.map(|s| per(s * 1e6, cpu_commits as f64)),
                other_cpu_secs: generator_cpu
                    .zip(shards_cpu)
                    .map(|(g, s)| (process_cpu - g - s).max(0.0)),
                peak_rss_bytes: m.peak_rss_bytes,
            },
            env,
            config: RunConfig {
                scenario: plan.scenario.name().to_string(),
                duration_secs: args.duration,
                warmup_secs: args.warmup,
                mode: mode_name(plan.mode),
                rate_per_sec: plan.rate_per_sec,
                in_flight: plan.in_flight,
                threads: plan.threads,
                groups: fleet.groups.len(),
                scale: args.scale,
                policy: fleet.spec.policy.name(),
                auto_commit_interval_ms: fleet.spec.auto_commit_interval_ms,
                records_per_poll: fleet.spec.records_per_poll,
                records_per_sec: fleet.spec.records_per_sec,
                metadata_bytes: fleet.spec.metadata_bytes,
                seed: args.seed,
                engine: EngineConfig {
                    shards: config.shards,
                    offsets_topic_num_partitions: config.offsets_topic_num_partitions,
                    offsets_topic_segment_bytes: config.offsets_topic_segment_bytes,
                    offset_metadata_max_bytes: config.offset_metadata_max_bytes,
                    offsets_commit_timeout_ms: config.offsets_commit_timeout_ms,
                    log_preallocate: config.log_preallocate,
                    group_commit_bytes_max: config.group_commit_bytes_max,
                    group_commit_linger_us: config.group_commit_linger_us,
                    request_queue_depth_max: config.request_queue_depth_max,
                    pin_shards: config.pin_shards,
                    fsync_scope: config.fsync_scope.name().to_string(),
                    group_min_session_timeout_ms: config.groups.group_min_session_timeout_ms,
                    group_initial_rebalance_delay_ms: config
                        .groups
                        .group_initial_rebalance_delay_ms,
                },
            },
            verify: Verify {
                keys: m.verification.keys,
                violations: m.verification.violations,
                examples: m.verification.examples.clone(),
                crash: m.crash.clone(),
            },
        }
    }

    /// The report as plain text: one table of operations, then aligned label/value rows.
    pub fn table(&self) -> String {
        let mut out = String::new();
        self.ops_table(&mut out);
        let mut rows = Rows(&mut out);
        for (name, op) in &self.ops {
            if !op.errors_outside_window.is_empty() {
                rows.row(
                    &format!("{name} errors (warmup)"),
                    errors(&op.errors_outside_window),
                );
            }
            if !op.expected_errors.is_empty() {
                rows.row(
                    &format!("{name} expected (protocol)"),
                    errors(&op.expected_errors),
                );
            }
            for (code, example) in &op.error_examples {
                rows.row(&format!("{name} code {code} e.g."), example.clone());
            }
        }
        if let Some(groups) = &self.groups {
            groups.rows(&mut rows);
        }
        self.fleet.rows(&mut rows);
        self.storage.rows(&mut rows);
        self.cpu.rows(&mut rows, self.groups.is_some());
        self.verify.rows(&mut rows);
        self.env.rows(&mut rows);
        self.config.rows(&mut rows);
        out
    }

    /// The header line, and one line per operation type.
    fn ops_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "loadgen report: {} ({} loop, latency from the {} time)",
            self.scenario,
            self.fleet.mode,
            self.ops.get("commit").map_or("issued", |c| c.latency_from)
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>12} {:>8} {:>8} {:>8} {:>9} {:>8}  errors (Kafka code: count)",
            "operation",
            "requests/s",
            "offsets/s",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9 us",
            "max us"
        );
        for (name, op) in &self.ops {
            let l = &op.latency_us;
            let _ = writeln!(
                out,
                "  {name:<12} {:>10.0} {:>12.0} {:>8} {:>8} {:>8} {:>9} {:>8}  {}",
                op.per_sec,
                op.partition_offsets_per_sec,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                errors(&op.errors)
            );
        }
    }
}

/// The report's labelled lines.
struct Rows<'a>(&'a mut String);

impl Rows<'_> {
    fn row(&mut self, label: &str, value: String) {
        let _ = writeln!(self.0, "  {label:<34} {value}");
    }
}

impl GroupsReport {
    fn rows(&self, rows: &mut Rows<'_>) {
        rows.row(
            "group protocol",
            format!(
                "heartbeat {} ms ({:.0}/s offered), session {} ms, rebalance timeout {} ms, churn {}/s, rejoin after {} ms",
                self.heartbeat_interval_ms,
                self.heartbeat_target_per_sec,
                self.session_timeout_ms,
                self.rebalance_timeout_ms,
                self.churn_per_sec,
                self.rejoin_delay_ms
            ),
        );
        rows.row(
            "setup",
            format!(
                "{} consumers stable in {:.2}s{}",
                self.setup_stable_members,
                self.setup_secs,
                if self.setup_complete {
                    ""
                } else {
                    " (INCOMPLETE)"
                }
            ),
        );
        rows.row(
            "leaves / expiries / rebalances",
            format!("{} / {} / {}", self.leaves, self.expiries, self.rebalances),
        );
        rows.row(
            "heartbeats delayed / late",
            format!(
                "{} (previous one unanswered) / {} (sent >1 ms after due)",
                self.heartbeats_delayed, self.heartbeats_late
            ),
        );
        rows.row(
            "stable at stop, calls abandoned",
            format!(
                "{} / {} (assignment mismatches {})",
                self.stable_at_stop, self.calls_abandoned_at_stop, self.assignment_mismatches
            ),
        );
    }
}

impl FleetReport {
    fn rows(&self, rows: &mut Rows<'_>) {
        rows.row(
            "fleet",
            format!(
                "{} groups, {} members, {} keys, policy {}, {} in flight max, {} generator threads",
                self.groups,
                self.members,
                self.keys,
                self.policy,
                self.in_flight,
                self.generator_threads
            ),
        );
        if let Some(rate) = self.rate_target_per_sec {
            rows.row(
                "open-loop target",
                format!(
                    "{rate:.0} requests/s, {} sent >1 ms late, {} never sent (window full at the stop)",
                    self.late_sends, self.unsent_at_stop
                ),
            );
        }
        rows.row(
            "coalesced / redundant in flight",
            format!("{} / {}", self.coalesced, self.redundant_in_flight),
        );
        if let (Some(p), Some(share)) = (
            self.busiest_offsets_partition,
            self.busiest_offsets_partition_share,
        ) {
            rows.row(
                "busiest offsets partition",
                format!("{p} ({:.1}% of commits)", share * 100.0),
            );
        }
    }
}

impl Storage {
    fn rows(&self, rows: &mut Rows<'_>) {
        rows.row(
            "bytes written per commit",
            format!(
                "{:.1} ({:.1} per partition offset; {})",
                self.bytes_written_per_commit,
                self.bytes_written_per_partition_offset,
                self.bytes_written_source
            ),
        );
        if let (Some(syncs), Some(flushes), Some(per_sync)) = (
            self.syncs_per_sec,
            self.flushes_per_sec,
            self.commits_per_sync,
        ) {
            rows.row(
                "syncs/s, flushes/s",
                format!("{syncs:.0}, {flushes:.0} ({per_sync:.1} commits per sync)"),
            );
        }
        rows.row(
            "log bytes, live bytes",
            format!(
                "{}, {} ({} keys)",
                self.log_bytes, self.live_bytes, self.live_keys
            ),
        );
        rows.row(
            "space amplification",
            format!("{:.1}", self.space_amplification),
        );
        let before_close = self
            .disk_bytes_before_close
            .map_or("-".to_string(), |b| b.to_string());
        rows.row(
            "on disk before / after close",
            format!(
                "{before_close} / {} ({:.1} × live)",
                self.disk_bytes_after_close, self.disk_amplification
            ),
        );
        let close = self
            .close_secs
            .map_or("killed".to_string(), |c| format!("{c:.3}"));
        rows.row(
            "close / reopen s",
            format!("{close} / {:.3}", self.reopen_secs),
        );
    }
}

impl Cpu {
    /// `group_ops`: the run had group operations besides commits.
    fn rows(&self, rows: &mut Rows<'_>, group_ops: bool) {
        rows.row(
            "CPU per commit",
            format!(
                "{:.2} us ({:.2} s, {})",
                self.cpu_us_per_commit, self.process_cpu_secs, self.scope
            ),
        );
        if group_ops {
            rows.row("CPU per operation", format!("{:.2} us", self.cpu_us_per_op));
        }
        if let (Some(g), Some(per_op), Some(share)) = (
            self.generator_cpu_secs,
            self.generator_cpu_us_per_op,
            self.generator_share,
        ) {
            rows.row(
                "generator CPU per op",
                format!(
                    "{per_op:.2} us ({g:.2} s, {:.0}% of the process)",
                    share * 100.0
                ),
            );
        }
        if let (Some(s), Some(per_commit), Some(other)) = (
            self.shards_cpu_secs,
            self.shards_cpu_us_per_commit,
            self.other_cpu_secs,
        ) {
            rows.row(
                "shard threads CPU per commit",
                format!(
                    "{per_commit:.2} us ({s:.2} s; io_uring workers and the rest {other:.2} s)"
                ),
            );
        }
        rows.row(
            "peak RSS",
            format!("{:.1} MiB", self.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
        );
    }
}

impl Verify {
    fn rows(&self, rows: &mut Rows<'_>) {
        rows.row(
            "verify keys / violations",
            format!("{} / {}", self.keys, self.violations),
        );
        if let Some(crash) = &self.crash {
            rows.row(
                "crash",
                format!(
                    "{} after {:.1}s, {} acknowledged requests reported, {} keys checked after recovery",
                    crash.signal,
                    crash.killed_after_secs,
                    crash.acked_requests_reported,
                    crash.keys_checked
                ),
            );
        }
    }
}

impl Env {
    fn rows(&self, rows: &mut Rows<'_>) {
        rows.row(
            "machine",
            format!(
                "{} cores, {}, kernel {}",
                self.cores, self.cpu_model, self.kernel
            ),
        );
        rows.row(
            "data dir",
            format!(
                "{} on {} ({}, {}, rotational {}) mounted at {} with {}",
                self.data_dir,
                self.data_dir_device,
                self.data_dir_fs,
                self.data_dir_device_id,
                if self.data_dir_rotational.is_empty() {
                    "?"
                } else {
                    &self.data_dir_rotational
                },
                self.data_dir_mount_point,
                self.data_dir_mount_options
            ),
        );
    }
}

impl RunConfig {
    fn rows(&self, rows: &mut Rows<'_>) {
        let g = &self.engine;
        rows.row(
            "run",
            format!(
                "{}s (+{}s warmup), seed {}, {} B metadata, records/poll {}, records/s {}, auto-commit {} ms",
                self.duration_secs,
                self.warmup_secs,
                self.seed,
                self.metadata_bytes,
                self.records_per_poll,
                self.records_per_sec,
                self.auto_commit_interval_ms
            ),
        );
        rows.row(
            "engine",
            format!(
                "shards {}, offsets partitions {}, segment {} B, preallocate {}, group commit max {} B, linger {} us, queue {}, commit timeout {} ms, fsync scope {}",
                g.shards,
                g.offsets_topic_num_partitions,
                g.offsets_topic_segment_bytes,
                g.log_preallocate,
                g.group_commit_bytes_max,
                g.group_commit_linger_us,
                g.request_queue_depth_max,
                g.offsets_commit_timeout_ms,
                g.fsync_scope
            ),
        );
    }
}

fn errors(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        "none".to_string()
    } else {
        map.iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
