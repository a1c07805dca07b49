//! The run's report: a plain-text table for stdout and the same figures as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use coffer::Config;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Args;
use crate::storm::{ErrorCounts, Verification};

/// Everything the report is built from.
pub struct Inputs<'a> {
    pub args: &'a Args,
    pub config: &'a Config,
    pub measured_secs: f64,
    pub measured_acks: u64,
    pub total_acks: u64,
    pub latency: &'a Histogram<u64>,
    pub errors: &'a ErrorCounts,
    pub errors_outside: &'a ErrorCounts,
    pub bytes_on_disk: u64,
    pub close_secs: f64,
    pub reopen_secs: f64,
    pub verification: &'a Verification,
}

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    pub ops: Ops,
    pub storage: Storage,
    pub env: Env,
    pub config: RunConfig,
    pub verify: Verify,
}

#[derive(Serialize)]
pub struct Ops {
    pub commit: CommitOps,
}

#[derive(Serialize)]
pub struct CommitOps {
    /// Requests acknowledged in the measurement window.
    pub requests: u64,
    pub per_sec: f64,
    pub partition_offsets_per_sec: f64,
    pub latency_us: Latency,
    /// Failed requests in the window, by Kafka error code ("none": no Kafka code).
    pub errors: BTreeMap<String, u64>,
    /// Failed requests during warmup or the final drain, by code.
    pub errors_outside_window: BTreeMap<String, u64>,
    /// One message per error code seen.
    pub error_examples: BTreeMap<String, String>,
}

#[derive(Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Serialize)]
pub struct Storage {
    /// Sum of `*.log` sizes after close.
    pub log_bytes: u64,
    /// Requests acknowledged over the whole run (warmup and drain included).
    pub commits_total: u64,
    pub bytes_written_per_commit: f64,
    pub bytes_written_per_partition_offset: f64,
    pub close_secs: f64,
    pub reopen_secs: f64,
}

#[derive(Serialize)]
pub struct Env {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Serialize)]
pub struct RunConfig {
    pub scenario: String,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub committers: usize,
    pub in_flight: usize,
    pub groups: u32,
    pub partitions_per_request: usize,
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
}

#[derive(Serialize)]
pub struct Verify {
    pub keys: u64,
    pub violations: u64,
    pub examples: Vec<String>,
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

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

fn per(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

impl Report {
    pub fn build(inputs: Inputs<'_>) -> Report {
        let args = inputs.args;
        let config = inputs.config;
        let per_sec = per(inputs.measured_acks as f64, inputs.measured_secs);
        let partitions = args.partitions_per_request as f64;
        let latency = inputs.latency;
        let q = |quantile: f64| {
            if latency.is_empty() {
                0
            } else {
                latency.value_at_quantile(quantile)
            }
        };
        let mut error_examples = BTreeMap::new();
        for (code, count) in inputs.errors.iter().chain(inputs.errors_outside) {
            error_examples
                .entry(code_name(*code))
                .or_insert_with(|| count.example.clone());
        }
        let total = inputs.total_acks as f64;
        let scenario = args.scenario.name().to_string();
        Report {
            scenario: scenario.clone(),
            ops: Ops {
                commit: CommitOps {
                    requests: inputs.measured_acks,
                    per_sec,
                    partition_offsets_per_sec: per_sec * partitions,
                    latency_us: Latency {
                        p50: q(0.50),
                        p90: q(0.90),
                        p99: q(0.99),
                        p999: q(0.999),
                        max: latency.max(),
                        mean: if latency.is_empty() {
                            0.0
                        } else {
                            latency.mean()
                        },
                    },
                    errors: counts(inputs.errors),
                    errors_outside_window: counts(inputs.errors_outside),
                    error_examples,
                },
            },
            storage: Storage {
                log_bytes: inputs.bytes_on_disk,
                commits_total: inputs.total_acks,
                bytes_written_per_commit: per(inputs.bytes_on_disk as f64, total),
                bytes_written_per_partition_offset: per(
                    inputs.bytes_on_disk as f64,
                    total * partitions,
                ),
                close_secs: inputs.close_secs,
                reopen_secs: inputs.reopen_secs,
            },
            env: Env {
                cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
                cpu_model: cpu_model(),
                kernel: kernel(),
            },
            config: RunConfig {
                scenario,
                duration_secs: args.duration,
                warmup_secs: args.warmup,
                committers: args.committers,
                in_flight: args.in_flight,
                groups: args.groups,
                partitions_per_request: args.partitions_per_request,
                metadata_bytes: args.metadata_bytes,
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
                },
            },
            verify: Verify {
                keys: inputs.verification.keys,
                violations: inputs.verification.violations,
                examples: inputs.verification.examples.clone(),
            },
        }
    }

    /// The report as an aligned plain-text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let c = &self.ops.commit;
        let l = &c.latency_us;
        let s = &self.storage;
        let e = &self.env;
        let k = &self.config;
        let g = &k.engine;
        let mut row = |label: &str, value: String| {
            let _ = writeln!(out, "  {label:<36} {value}");
        };
        row("scenario", self.scenario.clone());
        row("requests/s", format!("{:.0}", c.per_sec));
        row(
            "partition-offset commits/s",
            format!("{:.0}", c.partition_offsets_per_sec),
        );
        row("requests acked (measured)", c.requests.to_string());
        row(
            "ack latency us p50/p90/p99",
            format!("{} / {} / {}", l.p50, l.p90, l.p99),
        );
        row(
            "ack latency us p99.9/max",
            format!("{} / {}", l.p999, l.max),
        );
        row("ack latency us mean", format!("{:.0}", l.mean));
        let errors = |map: &BTreeMap<String, u64>| {
            if map.is_empty() {
                "none".to_string()
            } else {
                map.iter()
                    .map(|(code, n)| format!("code {code}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        row("errors (measured)", errors(&c.errors));
        row("errors (warmup/drain)", errors(&c.errors_outside_window));
        for (code, example) in &c.error_examples {
            row(&format!("  code {code} e.g."), example.clone());
        }
        row("log bytes after close", s.log_bytes.to_string());
        row("commits in the run (all)", s.commits_total.to_string());
        row(
            "bytes on disk per commit",
            format!("{:.1}", s.bytes_written_per_commit),
        );
        row(
            "bytes on disk per partition offset",
            format!("{:.1}", s.bytes_written_per_partition_offset),
        );
        row(
            "close / reopen s",
            format!("{:.3} / {:.3}", s.close_secs, s.reopen_secs),
        );
        row(
            "verify keys / violations",
            format!("{} / {}", self.verify.keys, self.verify.violations),
        );
        row("machine cores", e.cores.to_string());
        row("machine cpu", e.cpu_model.clone());
        row("machine kernel", e.kernel.clone());
        row(
            "run",
            format!(
                "{}s (+{}s warmup), {} committers, {} in flight, {} groups, {} partitions/request, {} B metadata, seed {}",
                k.duration_secs,
                k.warmup_secs,
                k.committers,
                k.in_flight,
                k.groups,
                k.partitions_per_request,
                k.metadata_bytes,
                k.seed
            ),
        );
        row(
            "engine",
            format!(
                "shards {}, offsets partitions {}, segment {} B, preallocate {}, group commit max {} B, linger {} us, queue {}, commit timeout {} ms, metadata max {} B",
                g.shards,
                g.offsets_topic_num_partitions,
                g.offsets_topic_segment_bytes,
                g.log_preallocate,
                g.group_commit_bytes_max,
                g.group_commit_linger_us,
                g.request_queue_depth_max,
                g.offsets_commit_timeout_ms,
                g.offset_metadata_max_bytes
            ),
        );
        format!("loadgen report\n{out}")
    }
}
