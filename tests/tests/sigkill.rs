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
        for line in lines.by_ref() {
            let line = line.unwrap();
            let mut fields = line.split(' ');
            let group: usize = fields.next().unwrap().parse().unwrap();
            let offset: i64 = fields.next().unwrap().parse().unwrap();
            acked.insert(group, offset);
            if Instant::now() >= until {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines printed before the kill are acks too.
        for line in lines.map_while(Result::ok) {
            let mut fields = line.split(' ');
            if let (Some(g), Some(o)) = (fields.next(), fields.next())
                && let (Ok(g), Ok(o)) = (g.parse::<usize>(), o.parse::<i64>())
            {
                acked.insert(g, o);
            }
        }
        assert!(
            acked.len() > 4,
            "run {run}: the child committed before it was killed"
        );

        let mut config = Config::new(dir.path());
        config.offsets_topic_num_partitions = 8;
        config.offsets_topic_segment_bytes = coffer::config::SEGMENT_BYTES_MIN;
        let engine = Engine::open(config).unwrap();
        for (group, offset) in &acked {
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
}
