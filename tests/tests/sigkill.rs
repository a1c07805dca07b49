//! A process killed with SIGKILL mid-load loses no acknowledged commit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use coffer::{Config, Engine};
use coffer_tests::fetch_one;

#[test]
fn every_acknowledged_commit_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    for run in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_commit_child"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        // Let it commit for a while (run-dependent), then kill it without warning.
        let until = Instant::now() + Duration::from_millis(300 + 200 * run);
        let mut acked: std::collections::BTreeMap<usize, i64> = Default::default();
        let mut compactions = 0;
        for line in lines.by_ref() {
            parse_line(&line.unwrap(), &mut acked, &mut compactions);
            if Instant::now() >= until {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines printed before the kill are acks too.
        for line in lines.map_while(Result::ok) {
            parse_line(&line, &mut acked, &mut compactions);
        }
        assert!(
            acked.len() > 4,
            "run {run}: the child committed before it was killed"
        );

        assert_every_ack_survived(dir.path(), run, &acked);
    }
}

/// A process killed while its background compactor runs (between or inside compaction
/// steps, possibly mid-swap) recovers every acknowledged commit, and recovery leaves no
/// `.cleaned` or `.swap` file behind.
#[test]
fn a_process_killed_during_compaction_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut compacted_runs = 0;
    for run in 0..3u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_commit_child"))
            .arg(dir.path())
            .arg("compact")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        let give_up = Instant::now() + Duration::from_secs(20);
        let mut acked: std::collections::BTreeMap<usize, i64> = Default::default();
        let mut compactions = 0u64;
        let mut kill_at = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            parse_line(&line, &mut acked, &mut compactions);
            // Kill a run-dependent time after the first compaction finished.
            if compactions > 0 && kill_at.is_none() {
                kill_at = Some(Instant::now() + Duration::from_millis(50 + 150 * run));
            }
            if kill_at.is_some_and(|at| Instant::now() >= at) || Instant::now() >= give_up {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in lines.map_while(Result::ok) {
            parse_line(&line, &mut acked, &mut compactions);
        }
        if compactions > 0 {
            compacted_runs += 1;
        }
        assert_every_ack_survived(dir.path(), run, &acked);
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            for file in std::fs::read_dir(entry.unwrap().path())
                .into_iter()
                .flatten()
            {
                let name = file.unwrap().file_name().into_string().unwrap();
                assert!(
                    !name.ends_with(".cleaned") && !name.ends_with(".swap"),
                    "run {run}: {name} left behind"
                );
            }
        }
    }
    assert!(
        compacted_runs > 0,
        "the child compacted before it was killed"
    );
}

/// Reopens the directory the killed child wrote and checks that every key it acknowledged
/// holds at least the acknowledged offset.
fn assert_every_ack_survived(
    dir: &std::path::Path,
    run: u64,
    acked: &std::collections::BTreeMap<usize, i64>,
) {
    let mut config = Config::new(dir);
    config.offsets_topic_num_partitions = 8;
    config.offsets_topic_segment_bytes = coffer::config::SEGMENT_BYTES_MIN;
    let engine = Engine::open(config).unwrap();
    for (group, offset) in acked {
        let group = format!("child-group-{group}");
        for partition in 0..4 {
            let found = fetch_one(&engine, &group, "events", partition).unwrap();
            assert!(
                found.is_some_and(|f| f >= *offset),
                "run {run}: {group}/{partition}: found {found:?}, acked {offset}"
            );
        }
    }
    engine.close().unwrap();
}

/// `group offset` (an acknowledged commit) or `compactions N`.
fn parse_line(
    line: &str,
    acked: &mut std::collections::BTreeMap<usize, i64>,
    compactions: &mut u64,
) {
    let mut fields = line.split(' ');
    match (fields.next(), fields.next()) {
        (Some("compactions"), Some(n)) => *compactions = n.parse().unwrap_or(*compactions),
        (Some(g), Some(o)) => {
            if let (Ok(g), Ok(o)) = (g.parse::<usize>(), o.parse::<i64>()) {
                acked.insert(g, o);
            }
        }
        _ => {}
    }
}
