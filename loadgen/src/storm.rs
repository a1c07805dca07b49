//! The commit-storm scenario: committer threads, each keeping its share of the requests in
//! flight against the engine (a closed loop), and the durability check that follows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use coffer::{CommitFuture, Engine, OffsetCommit};
use hdrhistogram::Histogram;

/// The topic every commit names; partitions `0..partitions_per_request` of it.
pub const TOPIC: &str = "loadgen-topic";

/// Highest latency the histograms track exactly (60 s, in µs); above it values saturate.
const LATENCY_US_MAX: u64 = 60_000_000;

/// The name of group `index`.
pub fn group_name(index: u32) -> String {
    format!("loadgen-group-{index:06}")
}

/// What one committer thread is told to do.
pub struct CommitterPlan {
    /// Index of the thread, for its seed.
    pub thread: usize,
    /// Global indices of the groups this thread owns (no other thread commits for them).
    pub groups: Vec<u32>,
    /// Requests this thread keeps in flight.
    pub in_flight: usize,
    pub partitions_per_request: usize,
    pub metadata: String,
    pub seed: u64,
    /// Acks before this instant are warmup: not in the statistics.
    pub measure_from: Instant,
    /// No request is issued at or after this instant; what is in flight is then drained.
    pub stop_at: Instant,
}

/// Errors seen, by Kafka error code (`None`: the error has no Kafka code).
pub type ErrorCounts = BTreeMap<Option<i16>, ErrorCount>;

/// How often one error code was seen, and the first message seen with it.
pub struct ErrorCount {
    pub count: u64,
    pub example: String,
}

/// What one committer thread reports back.
pub struct CommitterResult {
    /// Ack latency (issue → ack) in µs of requests issued and acknowledged in the window.
    pub latency_us: Histogram<u64>,
    /// Requests acknowledged successfully inside the measurement window.
    pub measured_acks: u64,
    /// Requests acknowledged successfully over the whole run (warmup and drain included).
    pub total_acks: u64,
    /// Failed requests inside the measurement window, by code.
    pub errors: ErrorCounts,
    /// Failed requests outside it (warmup, drain), by code.
    pub errors_outside_window: ErrorCounts,
    /// Global group indices, as in the plan; the vectors below are indexed by position here.
    pub groups: Vec<u32>,
    pub partitions_per_request: usize,
    /// Last acknowledged offset per key, at `group_position * partitions + partition`; -1 if none.
    pub last_acked: Vec<i64>,
    /// Sequence number of the last request issued per group position; -1 if none.
    pub last_issued_seq: Vec<i64>,
}

/// The offset a request with sequence number `seq` commits for `partition`: increasing per
/// key, and different across the partitions of one request, so that a partition mix-up in
/// the engine shows up in the verification.
pub fn offset_for(seq: i64, partition: usize) -> i64 {
    seq + partition as i64
}

struct InFlight {
    future: CommitFuture,
    issued: Instant,
    group_position: usize,
    seq: i64,
}

/// splitmix64: a tiny seeded generator, enough to shuffle the group order.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn record_error(errors: &mut ErrorCounts, error: &coffer::Error) {
    errors
        .entry(error.kafka_error_code())
        .or_insert_with(|| ErrorCount {
            count: 0,
            example: error.to_string(),
        })
        .count += 1;
}

/// Runs one committer thread until `plan.stop_at`, then drains its requests in flight.
/// `acks` counts every successful ack, for the progress line.
pub fn run_committer(engine: Engine, plan: CommitterPlan, acks: Arc<AtomicU64>) -> CommitterResult {
    let partitions = plan.partitions_per_request;
    let group_count = plan.groups.len();
    let names: Vec<String> = plan.groups.iter().map(|&g| group_name(g)).collect();

    // Visit the groups in a seeded order (a permutation, so each is visited equally often).
    let mut order: Vec<usize> = (0..group_count).collect();
    let mut rng = SplitMix64(plan.seed ^ (plan.thread as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    for i in (1..order.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }

    let mut result = CommitterResult {
        latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
            .expect("constant histogram bounds are valid"),
        measured_acks: 0,
        total_acks: 0,
        errors: BTreeMap::new(),
        errors_outside_window: BTreeMap::new(),
        groups: plan.groups,
        partitions_per_request: partitions,
        last_acked: vec![-1; group_count * partitions],
        last_issued_seq: vec![-1; group_count],
    };
    if group_count == 0 || plan.in_flight == 0 {
        return result;
    }

    let mut queue: VecDeque<InFlight> = VecDeque::with_capacity(plan.in_flight);
    let mut commits: Vec<OffsetCommit<'_>> = Vec::with_capacity(partitions);
    let mut cursor = 0usize;
    let metadata = plan.metadata.as_str();

    let complete = |entry: InFlight, result: &mut CommitterResult| {
        let outcome = entry.future.wait();
        let acked = Instant::now();
        let in_window = entry.issued >= plan.measure_from && acked < plan.stop_at;
        match outcome {
            Ok(()) => {
                result.total_acks += 1;
                acks.fetch_add(1, Ordering::Relaxed);
                let base = entry.group_position * partitions;
                for p in 0..partitions {
                    let slot = &mut result.last_acked[base + p];
                    *slot = (*slot).max(offset_for(entry.seq, p));
                }
                if in_window {
                    result.measured_acks += 1;
                    let micros = acked.duration_since(entry.issued).as_micros();
                    result
                        .latency_us
                        .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                }
            }
            Err(error) if in_window => record_error(&mut result.errors, &error),
            Err(error) => record_error(&mut result.errors_outside_window, &error),
        }
    };

    loop {
        let now = Instant::now();
        if now >= plan.stop_at {
            break;
        }
        if queue.len() >= plan.in_flight {
            if let Some(oldest) = queue.pop_front() {
                complete(oldest, &mut result);
            }
            continue;
        }
        let position = order[cursor];
        cursor = (cursor + 1) % group_count;
        let seq = result.last_issued_seq[position] + 1;
        result.last_issued_seq[position] = seq;
        commits.clear();
        commits.extend((0..partitions).map(|p| OffsetCommit {
            topic: TOPIC,
            partition: p as i32,
            offset: offset_for(seq, p),
            leader_epoch: None,
            metadata,
        }));
        let issued = Instant::now();
        let future = engine.commit_offsets(&names[position], &commits);
        queue.push_back(InFlight {
            future,
            issued,
            group_position: position,
            seq,
        });
    }
    while let Some(entry) = queue.pop_front() {
        complete(entry, &mut result);
    }
    result
}

/// Outcome of checking the reopened engine against what was acknowledged.
#[derive(Default)]
pub struct Verification {
    /// Keys with an acknowledged offset, all of which were checked.
    pub keys: u64,
    /// Keys whose stored offset is missing, below the last ack, or above anything issued.
    pub violations: u64,
    /// Descriptions of the first few violations.
    pub examples: Vec<String>,
}

const VIOLATION_EXAMPLES_MAX: usize = 10;

/// Fetches every key of every group from `engine` and compares it with the committers' acks.
pub fn verify(engine: &Engine, results: &[CommitterResult]) -> coffer::Result<Verification> {
    let mut verification = Verification::default();
    for result in results {
        let partitions = result.partitions_per_request;
        let wanted: Vec<(&str, i32)> = (0..partitions).map(|p| (TOPIC, p as i32)).collect();
        for (position, &group) in result.groups.iter().enumerate() {
            let name = group_name(group);
            let fetched = engine.fetch_offsets(&name, &wanted)?;
            let last_seq = result.last_issued_seq[position];
            for (p, stored) in fetched.iter().enumerate() {
                let acked = result.last_acked[position * partitions + p];
                let issued_max = if last_seq < 0 {
                    -1
                } else {
                    offset_for(last_seq, p)
                };
                let problem = match stored.as_ref().map(|c| c.offset) {
                    None if acked >= 0 => Some(format!("offset {acked} acknowledged, none stored")),
                    None => None,
                    Some(offset) if offset < acked => Some(format!(
                        "offset {acked} acknowledged, {offset} stored (lost commit)"
                    )),
                    Some(offset) if offset > issued_max => Some(format!(
                        "offset {offset} stored, but at most {issued_max} was ever committed"
                    )),
                    Some(_) => None,
                };
                if acked >= 0 {
                    verification.keys += 1;
                }
                if let Some(problem) = problem {
                    verification.violations += 1;
                    if verification.examples.len() < VIOLATION_EXAMPLES_MAX {
                        verification
                            .examples
                            .push(format!("{name} {TOPIC}-{p}: {problem}"));
                    }
                }
            }
        }
    }
    Ok(verification)
}
