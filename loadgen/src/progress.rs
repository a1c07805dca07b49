//! Live progress while a run goes on: an indicatif bar on a terminal, one plain line per
//! second otherwise (logs, CI).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::driver::{LiveCounters, Pacing};
use crate::members::Coordination;
use crate::run::Timeline;

/// How often the bar is refreshed.
const TICK: Duration = Duration::from_millis(250);
/// How often a plain line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(1);

pub struct Progress {
    timeline: Timeline,
    bar: Option<ProgressBar>,
    target: String,
    last_line: Instant,
    last_acks: u64,
    last_at: Instant,
    /// False when the requests in flight are in another process (crash-resume).
    in_flight_known: bool,
    /// heartbeat-flood, rebalance-storm: heartbeats answered, and consumers stable.
    groups: Option<Arc<Coordination>>,
    last_heartbeats: u64,
}

impl Progress {
    pub fn new(timeline: Timeline, pacing: Pacing, rate: Option<f64>) -> Progress {
        let total_ms = timeline.stop_at.duration_since(timeline.start).as_millis() as u64;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total_ms.max(1));
            let style =
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let target = match (pacing, rate) {
            (Pacing::Closed, _) => "closed loop".to_string(),
            (Pacing::Open { .. }, Some(rate)) => format!("open loop at {rate:.0}/s"),
            (Pacing::Open { .. }, None) => "open loop at the fleet's cadence".to_string(),
        };
        Progress {
            timeline,
            bar,
            target,
            last_line: timeline.start,
            last_acks: 0,
            last_at: timeline.start,
            in_flight_known: true,
            groups: None,
            last_heartbeats: 0,
        }
    }

    /// Also shows heartbeats per second and the consumers stable.
    pub fn with_heartbeats(mut self, groups: Arc<Coordination>) -> Progress {
        self.last_heartbeats = groups.heartbeats.load(Ordering::Relaxed);
        self.groups = Some(groups);
        self
    }

    /// ", N heartbeats/s, M stable" over the last `secs`, for the group scenarios.
    fn heartbeats(&mut self, secs: f64) -> String {
        let Some(groups) = &self.groups else {
            return String::new();
        };
        let heartbeats = groups.heartbeats.load(Ordering::Relaxed);
        let rate = (heartbeats - self.last_heartbeats) as f64 / secs.max(1e-3);
        self.last_heartbeats = heartbeats;
        let stable = groups.stable.load(Ordering::Relaxed);
        format!(", {rate:.0} heartbeats/s, {stable} consumers stable")
    }

    /// For crash-resume, whose requests in flight live in the engine's process.
    pub fn without_in_flight(mut self) -> Progress {
        self.in_flight_known = false;
        self
    }

    /// Refreshes the display until `until`.
    pub fn run_until(&mut self, until: Instant, live: &LiveCounters) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep(TICK.min(until - now));
            self.tick(live);
        }
    }

    fn tick(&mut self, live: &LiveCounters) {
        let now = Instant::now();
        let acks = live.acks.load(Ordering::Relaxed);
        let errors = live.errors.load(Ordering::Relaxed);
        let in_flight = if self.in_flight_known {
            format!(", {} in flight", live.in_flight.load(Ordering::Relaxed))
        } else {
            String::new()
        };
        let phase = if now < self.timeline.measure_from {
            "warmup"
        } else {
            "measuring"
        };
        let elapsed = now.duration_since(self.timeline.start).as_secs_f64();
        match &self.bar {
            Some(_) => {
                let secs = now.duration_since(self.last_at).as_secs_f64();
                let rate = (acks - self.last_acks) as f64 / secs.max(1e-3);
                let heartbeats = self.heartbeats(secs);
                self.last_acks = acks;
                self.last_at = now;
                if let Some(bar) = &self.bar {
                    bar.set_position(now.duration_since(self.timeline.start).as_millis() as u64);
                    bar.set_message(format!(
                        "{phase}, {}: {rate:.0} commits/s, {acks} acked, {errors} errors{in_flight}{heartbeats}",
                        self.target
                    ));
                }
            }
            None if now.duration_since(self.last_line) >= LINE_EVERY => {
                let secs = now.duration_since(self.last_at).as_secs_f64();
                let rate = (acks - self.last_acks) as f64 / secs.max(1e-3);
                let heartbeats = self.heartbeats(secs);
                self.last_acks = acks;
                self.last_at = now;
                self.last_line = now;
                eprintln!(
                    "[{elapsed:6.1}s] {phase}: {rate:.0} commits/s, {acks} acked, {errors} errors{in_flight}{heartbeats}"
                );
            }
            None => {}
        }
    }

    pub fn finish(&mut self, live: &LiveCounters) {
        self.tick(live);
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
