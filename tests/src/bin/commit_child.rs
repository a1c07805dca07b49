//! A child process for the SIGKILL test: opens an engine on the directory given as the first
//! argument and commits forever, printing `group partition offset` for every acknowledged
//! commit. The test kills it with SIGKILL mid-load and checks the acknowledged commits.
//!
//! With `compact` as the second argument it commits big-metadata offsets (segments roll and
//! go dirty fast) with the background compactor on, and prints `compactions N` every
//! `METRICS_EVERY` acknowledgements, so the test can kill it while compaction runs.

use std::io::Write;

use coffer::{Config, Engine, OffsetCommit};

const GROUPS: usize = 16;
const PARTITIONS_PER_REQUEST: i32 = 4;
const IN_FLIGHT_MAX: usize = 32;
const METRICS_EVERY: i64 = 64;
const COMPACT_METADATA_BYTES: usize = 3000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: commit_child DATA_DIR")?;
    let compact = std::env::args()
        .nth(2)
        .is_some_and(|mode| mode == "compact");
    let metadata = if compact {
        "c".repeat(COMPACT_METADATA_BYTES)
    } else {
        String::new()
    };
    let mut config = Config::new(dir);
    config.log_cleaner_enable = compact;
    config.offsets_topic_num_partitions = 8;
    config.offsets_topic_segment_bytes = coffer::config::SEGMENT_BYTES_MIN;
    let engine = Engine::open(config)?;
    let groups: Vec<String> = (0..GROUPS).map(|g| format!("child-group-{g}")).collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut in_flight = std::collections::VecDeque::new();
    for round in 0i64.. {
        let group = (round as usize) % GROUPS;
        let offsets: Vec<OffsetCommit<'_>> = (0..PARTITIONS_PER_REQUEST)
            .map(|partition| OffsetCommit {
                topic: "events",
                partition,
                offset: round,
                leader_epoch: None,
                metadata: &metadata,
            })
            .collect();
        in_flight.push_back((
            engine.commit_offsets(&groups[group], &offsets),
            group,
            round,
        ));
        if in_flight.len() >= IN_FLIGHT_MAX
            && let Some((future, group, offset)) = in_flight.pop_front()
        {
            future.wait()?;
            // Printed only after the ack: every line is an acknowledged commit.
            writeln!(out, "{group} {offset}")?;
            if compact && offset % METRICS_EVERY == 0 {
                let metrics = engine.metrics()?;
                let done: u64 = metrics.iter().map(|m| m.compaction.compactions).sum();
                writeln!(out, "compactions {done}")?;
            }
            out.flush()?;
        }
    }
    Ok(())
}
