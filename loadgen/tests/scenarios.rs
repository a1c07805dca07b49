//! Runs the `loadgen` binary for each scenario, briefly, on small data, and
//! checks its JSON report: the documented fields are there, nothing failed unexpectedly,
//! and everything acknowledged was found after the reopen (or after the crash).

use std::path::Path;
use std::process::{Command, Output};

fn loadgen(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running loadgen")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs one scenario for about a second and returns its parsed JSON report, after checking
/// the fields docs/loadgen.md promises and that the data directory was removed.
fn run_scenario(scenario: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let json_arg = json.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "--scenario",
        scenario,
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--json",
        json_arg,
    ];
    args.extend_from_slice(extra);
    let output = loadgen(dir.path(), &args);
    assert!(
        output.status.success(),
        "loadgen failed: {}",
        describe(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("loadgen report: "), "no summary: {stdout}");

    let text = std::fs::read_to_string(&json).expect("reading the JSON report");
    let report: serde_json::Value = serde_json::from_str(&text).expect("parsing the JSON report");
    let at = |pointer: &str| {
        report
            .pointer(pointer)
            .unwrap_or_else(|| panic!("report lacks {pointer}: {text}"))
            .clone()
    };
    assert_eq!(at("/schema_version").as_u64(), Some(2));
    assert_eq!(at("/scenario").as_str(), Some(scenario));
    assert_eq!(at("/config/scenario").as_str(), Some(scenario));
    assert!(at("/ops/commit/per_sec").as_f64().unwrap() > 0.0, "{text}");
    assert!(
        at("/ops/commit/partition_offsets_per_sec")
            .as_f64()
            .unwrap()
            > 0.0
    );
    let p50 = at("/ops/commit/latency_us/p50").as_u64().unwrap();
    let max = at("/ops/commit/latency_us/max").as_u64().unwrap();
    for q in ["p90", "p99", "p999"] {
        let v = at(&format!("/ops/commit/latency_us/{q}")).as_u64().unwrap();
        assert!(p50 <= v && v <= max, "{q} = {v} outside [{p50}, {max}]");
    }
    assert!(p50 > 0);
    // Zero unexpected errors: none in the window, none in the warmup.
    assert_eq!(at("/ops/commit/errors"), serde_json::json!({}), "{text}");
    assert_eq!(
        at("/ops/commit/errors_outside_window"),
        serde_json::json!({}),
        "{text}"
    );
    assert!(at("/storage/bytes_written_per_commit").as_f64().unwrap() > 0.0);
    let amplification = at("/storage/space_amplification").as_f64().unwrap();
    assert!(amplification >= 1.0, "space amplification {amplification}");
    assert!(at("/storage/live_bytes").as_u64().unwrap() > 0);
    // Allocation is in whole blocks, so the disk holds at least the segments' data.
    let disk_after = at("/storage/disk_bytes_after_close").as_u64().unwrap();
    let log_bytes = at("/storage/log_bytes").as_u64().unwrap();
    assert!(disk_after >= log_bytes, "{disk_after} < {log_bytes}");
    if scenario != "crash-resume" {
        let disk_before = at("/storage/disk_bytes_before_close").as_u64().unwrap();
        assert!(disk_before >= log_bytes, "{disk_before} < {log_bytes}");
    }
    assert!(at("/storage/disk_amplification").as_f64().unwrap() >= 1.0);
    assert!(at("/cpu/cpu_us_per_commit").as_f64().unwrap() > 0.0);
    assert!(at("/cpu/peak_rss_bytes").as_u64().unwrap() > 0);
    assert!(at("/env/cores").as_u64().unwrap() > 0);
    for field in [
        "cpu_model",
        "kernel",
        "data_dir",
        "data_dir_fs",
        "data_dir_device",
        "data_dir_mount_options",
    ] {
        assert!(at(&format!("/env/{field}")).is_string(), "env.{field}");
    }
    assert_ne!(at("/env/data_dir_fs").as_str(), Some("unknown"));
    assert!(at("/config/engine/offsets_topic_num_partitions").is_u64());
    assert!(at("/config/engine/shards").is_u64());
    assert!(at("/verify/keys").as_u64().unwrap() > 0);
    assert_eq!(at("/verify/violations").as_u64(), Some(0), "{text}");

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
    report
}

#[test]
fn commit_storm_runs_closed_loop() {
    let report = run_scenario("commit-storm", &["--in-flight", "256", "--groups", "200"]);
    assert_eq!(report["fleet"]["mode"], "closed");
    assert_eq!(report["ops"]["commit"]["latency_from"], "issued");
    assert!(report["storage"]["syncs_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["cpu"]["generator_cpu_us_per_op"].as_f64().unwrap() > 0.0);
    assert!(report["cpu"]["shards_cpu_secs"].as_f64().unwrap() >= 0.0);
    assert!(report["cpu"]["other_cpu_secs"].as_f64().unwrap() >= 0.0);
}

#[test]
fn steady_runs_open_loop_at_the_asked_rate() {
    let report = run_scenario(
        "steady",
        &[
            "--groups",
            "200",
            "--rate",
            "1000",
            "--log-preallocate",
            "false",
        ],
    );
    assert_eq!(report["config"]["engine"]["log_preallocate"], false);
    assert_eq!(report["fleet"]["mode"], "open");
    assert_eq!(report["fleet"]["policy"], "auto");
    assert_eq!(report["ops"]["commit"]["latency_from"], "intended");
    assert_eq!(
        report["fleet"]["rate_target_per_sec"].as_f64(),
        Some(1000.0)
    );
    // An open loop offers its rate whatever the engine does; on a loaded CI machine the
    // answers may lag, but far fewer than half the asked rate would mean pacing is broken.
    let per_sec = report["ops"]["commit"]["per_sec"].as_f64().unwrap();
    assert!((500.0..1500.0).contains(&per_sec), "per_sec {per_sec}");
}

#[test]
fn hot_group_concentrates_commits_on_one_offsets_partition() {
    let report = run_scenario("hot-group", &["--groups", "32", "--apps", "16"]);
    assert!(report["ops"]["commit_hot"]["per_sec"].as_f64().unwrap() > 0.0);
    // 16 apps × 2 members share one group, 32 groups × 2 members have their own: a third of
    // the members, hence of the commits, land on the hot group's offsets partition.
    let share = report["fleet"]["busiest_offsets_partition_share"]
        .as_f64()
        .unwrap();
    assert!(share > 0.3, "busiest share {share}");
}

#[test]
fn crash_resume_finds_every_acknowledged_commit() {
    let report = run_scenario("crash-resume", &["--groups", "200"]);
    let crash = &report["verify"]["crash"];
    assert_eq!(crash["signal"], "SIGKILL");
    assert!(
        crash["acked_requests_reported"].as_u64().unwrap() > 0,
        "{crash}"
    );
    assert_eq!(crash["keys_checked"], report["verify"]["keys"]);
    assert_eq!(report["storage"]["close_secs"], serde_json::Value::Null);
    assert_eq!(
        report["storage"]["disk_bytes_before_close"],
        serde_json::Value::Null
    );
}

/// The group operations' rows: documented fields, no unexpected error anywhere, and only
/// protocol codes among the expected ones (MEMBER_ID_REQUIRED for joins; the fencing and
/// rejoin codes where `fencing` is allowed).
fn check_group_ops(report: &serde_json::Value, fencing: bool) {
    let text = report.to_string();
    for op in ["commit", "join", "sync", "heartbeat", "leave"] {
        let row = &report["ops"][op];
        assert!(row["per_sec"].is_f64(), "ops.{op}: {text}");
        assert!(row["latency_us"]["p999"].is_u64(), "ops.{op}: {text}");
        assert_eq!(row["errors"], serde_json::json!({}), "ops.{op}: {text}");
        assert_eq!(
            row["errors_outside_window"],
            serde_json::json!({}),
            "ops.{op}: {text}"
        );
        let expected = row["expected_errors"].as_object().expect("expected_errors");
        for code in expected.keys() {
            let allowed = (op == "join" && code == "79")
                || (fencing && ["22", "25", "27"].contains(&code.as_str()));
            assert!(allowed, "ops.{op} expected code {code}: {text}");
        }
    }
    let heartbeat = &report["ops"]["heartbeat"];
    assert_eq!(heartbeat["latency_from"], "intended");
    assert!(heartbeat["requests"].as_u64().unwrap() > 0, "{text}");
    assert!(heartbeat["latency_us"]["count"].as_u64().unwrap() > 0);
    let groups = &report["groups"];
    assert_eq!(groups["setup_complete"], true, "{text}");
    assert_eq!(
        groups["setup_stable_members"], report["fleet"]["members"],
        "{text}"
    );
    assert_eq!(groups["assignment_mismatches"], 0, "{text}");
    assert!(report["cpu"]["cpu_us_per_op"].as_f64().unwrap() > 0.0);
    assert!(report["config"]["engine"]["group_min_session_timeout_ms"].is_u64());
}

#[test]
fn heartbeat_flood_joins_everyone_and_heartbeats_on_schedule() {
    // 50 groups × 4 consumers at 200 ms: 1,000 heartbeats/s, commits every 500 ms.
    let report = run_scenario(
        "heartbeat-flood",
        &[
            "--groups",
            "50",
            "--heartbeat-interval-ms",
            "200",
            "--auto-commit-interval-ms",
            "500",
        ],
    );
    check_group_ops(&report, false);
    assert_eq!(report["fleet"]["members"], 200);
    assert_eq!(report["groups"]["heartbeat_interval_ms"], 200);
    // Nobody left, expired or rebalanced: every consumer is still in its generation.
    assert_eq!(report["groups"]["rebalances"], 0);
    assert_eq!(report["groups"]["stable_at_stop"], 200);
    assert_eq!(report["ops"]["join"]["requests"], 0);
    // An open loop offers its rate whatever the engine does; far below half of it would
    // mean the pacing is broken.
    let per_sec = report["ops"]["heartbeat"]["per_sec"].as_f64().unwrap();
    assert!((500.0..1500.0).contains(&per_sec), "heartbeats/s {per_sec}");
}

#[test]
fn rebalance_storm_keeps_groups_rebalancing_and_fences_stale_commits() {
    let report = run_scenario(
        "rebalance-storm",
        &[
            "--groups",
            "8",
            "--members",
            "3",
            "--session-timeout-ms",
            "600",
            "--heartbeat-interval-ms",
            "100",
            "--churn-per-sec",
            "20",
            "--rejoin-delay-ms",
            "100",
        ],
    );
    check_group_ops(&report, true);
    let text = report.to_string();
    let members = report["fleet"]["members"].as_u64().unwrap();
    let joins = report["ops"]["join"]["requests"].as_u64().unwrap();
    assert!(
        joins > members,
        "{joins} joins for {members} members: {text}"
    );
    let groups = &report["groups"];
    assert!(groups["leaves"].as_u64().unwrap() > 0, "{text}");
    assert!(groups["expiries"].as_u64().unwrap() > 0, "{text}");
    assert!(groups["rebalances"].as_u64().unwrap() > 0, "{text}");
    assert!(report["ops"]["sync"]["requests"].as_u64().unwrap() > 0);
    assert!(report["ops"]["leave"]["requests"].as_u64().unwrap() > 0);
    // The session below Kafka's 6 s minimum lowered the engine's minimum to it.
    assert_eq!(
        report["config"]["engine"]["group_min_session_timeout_ms"],
        600
    );
}

#[test]
fn group_scenarios_refuse_a_closed_loop() {
    let dir = tempfile::tempdir().expect("temp dir");
    for flags in [
        &["--mode", "closed"][..],
        &["--rate", "100"],
        &["--in-flight", "8"],
    ] {
        let mut args = vec!["--scenario", "heartbeat-flood", "--duration", "1"];
        args.extend_from_slice(flags);
        let output = loadgen(dir.path(), &args);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "it created a data dir"
        );
    }
}

#[test]
fn unknown_scenario_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = loadgen(dir.path(), &["--scenario", "no-such-thing"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("commit-storm"), "stderr: {stderr}");
}
