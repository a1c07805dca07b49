//! Per-operation statistics: an HDR latency histogram, throughput counts and errors by
//! Kafka error code, mergeable across generator threads.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// Highest latency the histograms track exactly (60 s, in µs); above it values saturate.
pub const LATENCY_US_MAX: u64 = 60_000_000;
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// Errors seen, by Kafka error code (`None`: the error has no Kafka code).
pub type ErrorCounts = BTreeMap<Option<i16>, ErrorCount>;

/// How often one error code was seen, and the first message seen with it.
#[derive(Clone, Debug)]
pub struct ErrorCount {
    pub count: u64,
    pub example: String,
}

pub fn record_error(errors: &mut ErrorCounts, code: Option<i16>, message: impl FnOnce() -> String) {
    errors
        .entry(code)
        .or_insert_with(|| ErrorCount {
            count: 0,
            example: message(),
        })
        .count += 1;
}

pub fn merge_errors(into: &mut ErrorCounts, from: &ErrorCounts) {
    for (code, count) in from {
        into.entry(*code)
            .and_modify(|c| c.count += count.count)
            .or_insert_with(|| count.clone());
    }
}

/// One answer to a request, as accounted (and as crash-resume's child reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Global member index.
    pub member: u32,
    pub seq: u64,
    pub latency_us: u64,
    /// 0: success; a Kafka error code; -1: an error without one.
    pub code: i32,
    /// Intended (open loop) or sent (closed loop) inside the measurement window.
    pub in_latency_window: bool,
    /// Answered inside the measurement window.
    pub in_rate_window: bool,
    /// For a hot group.
    pub hot: bool,
    /// Partition offsets the request carried.
    pub partition_offsets: u32,
}

impl Answer {
    pub fn is_ok(&self) -> bool {
        self.code == 0
    }

    /// The Kafka error code of a failed answer (`None`: success or no code).
    pub fn kafka_code(&self) -> Option<i16> {
        i16::try_from(self.code).ok().filter(|c| *c > 0)
    }
}

/// The statistics of one operation type.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Latency in µs of requests intended (open loop) or issued (closed loop) inside the
    /// measurement window, measured from that instant to the answer, drained ones included.
    pub latency_us: Histogram<u64>,
    /// Successful answers that arrived inside the window: the throughput.
    pub acks_in_window: u64,
    /// Partition offsets in those answers.
    pub partition_offsets_in_window: u64,
    /// Failed requests intended inside the window, by code.
    pub errors: ErrorCounts,
    /// Failed requests intended outside it (warmup), by code.
    pub errors_outside_window: ErrorCounts,
    /// Answers with an error code that is the protocol at work, not a failure (a join's
    /// `MEMBER_ID_REQUIRED`, rebalance-storm's fenced commits and heartbeats), intended
    /// inside the window, by code.
    pub expected_errors: ErrorCounts,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency_us: new_histogram(),
            acks_in_window: 0,
            partition_offsets_in_window: 0,
            errors: ErrorCounts::new(),
            errors_outside_window: ErrorCounts::new(),
            expected_errors: ErrorCounts::new(),
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

impl OpStats {
    /// Records a latency, saturating at the histogram's bound. Allocation-free.
    pub fn record_latency_us(&mut self, micros: u64) {
        self.latency_us
            .saturating_record(micros.clamp(1, LATENCY_US_MAX));
    }

    /// Accounts one answer; `message` describes a failure (called once per error code).
    pub fn record(&mut self, answer: &Answer, message: impl FnOnce() -> String) {
        self.record_classified(answer, false, message);
    }

    /// Accounts one answer; an `expected` error is a real round trip (its latency counts)
    /// but is counted apart from the failures.
    pub fn record_classified(
        &mut self,
        answer: &Answer,
        expected: bool,
        message: impl FnOnce() -> String,
    ) {
        if expected {
            if answer.in_latency_window {
                self.record_latency_us(answer.latency_us);
                record_error(&mut self.expected_errors, answer.kafka_code(), message);
            }
        } else if answer.is_ok() {
            if answer.in_latency_window {
                self.record_latency_us(answer.latency_us);
            }
            if answer.in_rate_window {
                self.acks_in_window += 1;
                self.partition_offsets_in_window += u64::from(answer.partition_offsets);
            }
        } else {
            let errors = if answer.in_latency_window {
                &mut self.errors
            } else {
                &mut self.errors_outside_window
            };
            record_error(errors, answer.kafka_code(), message);
        }
    }

    pub fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.acks_in_window += other.acks_in_window;
        self.partition_offsets_in_window += other.partition_offsets_in_window;
        merge_errors(&mut self.errors, &other.errors);
        merge_errors(
            &mut self.errors_outside_window,
            &other.errors_outside_window,
        );
        merge_errors(&mut self.expected_errors, &other.expected_errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = OpStats::default();
        a.record_latency_us(100);
        a.acks_in_window = 1;
        record_error(&mut a.errors, Some(15), || "timeout".into());
        let mut b = OpStats::default();
        b.record_latency_us(0);
        b.record_latency_us(u64::MAX);
        b.acks_in_window = 2;
        record_error(&mut b.errors, Some(15), || "other".into());
        record_error(&mut b.errors, None, || "no code".into());
        a.merge(&b);
        assert_eq!(a.latency_us.len(), 3);
        assert_eq!(a.acks_in_window, 3);
        assert_eq!(a.errors[&Some(15)].count, 2);
        assert_eq!(a.errors[&Some(15)].example, "timeout");
        assert_eq!(a.errors[&None].count, 1);
        assert!(a.latency_us.max() >= LATENCY_US_MAX);
    }
}
