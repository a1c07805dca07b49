//! Runs the `loadgen` binary for a short commit storm and checks its JSON report.

use std::process::Command;

#[test]
fn short_commit_storm_reports_and_cleans_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .current_dir(dir.path())
        .args(["--duration", "2", "--warmup", "0", "--json"])
        .arg(&json)
        .output()
        .expect("running loadgen");
    assert!(
        output.status.success(),
        "loadgen failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let text = std::fs::read_to_string(&json).expect("reading the JSON report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("parsing the JSON report");
    let at = |pointer: &str| {
        report
            .pointer(pointer)
            .unwrap_or_else(|| panic!("report lacks {pointer}: {text}"))
    };
    assert!(at("/ops/commit/per_sec").as_f64().unwrap() > 0.0);
    assert!(
        at("/ops/commit/partition_offsets_per_sec")
            .as_f64()
            .unwrap()
            > 0.0
    );
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(at(&format!("/ops/commit/latency_us/{q}")).is_u64());
    }
    assert!(at("/ops/commit/errors").is_object());
    assert!(at("/storage/bytes_written_per_commit").as_f64().unwrap() > 0.0);
    assert!(at("/env/cores").as_u64().unwrap() > 0);
    assert!(at("/env/cpu_model").is_string());
    assert!(at("/env/kernel").is_string());
    assert_eq!(at("/config/scenario").as_str(), Some("commit-storm"));
    assert!(at("/config/engine/offsets_topic_num_partitions").is_u64());
    assert!(at("/verify/keys").as_u64().unwrap() > 0);
    assert_eq!(at("/verify/violations").as_u64(), Some(0));

    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("listing the temp dir")
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("coffer-loadgen-")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "data directory left behind: {leftovers:?}"
    );
}

#[test]
fn unknown_scenario_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--scenario", "no-such-thing"])
        .output()
        .expect("running loadgen");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("commit-storm"), "stderr: {stderr}");
}
