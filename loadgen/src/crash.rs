//! crash-resume: the engine runs in a child process (this binary, re-executed with the
//! hidden `crash-child` subcommand) that reports every answer on its stdout, a pipe. The
//! parent SIGKILLs it mid-run, reopens the data directory and checks that every commit the
//! child saw acknowledged is there, with at least the acknowledged offset.
//!
//! A frame is written only after its commit was acknowledged, so whatever reaches the pipe
//! before the kill is a promise the engine made; frames still in the child's buffer are
//! simply not checked (never a false alarm).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer::{Config, Engine};
use serde::Serialize;

use crate::Args;
use crate::driver::LiveCounters;
use crate::fleet::Fleet;
use crate::progress::Progress;
use crate::run::{self, Measures, Timeline};
use crate::scenario::Plan;
use crate::stats::{Answer, OpStats};
use crate::sys::{self, Who};
use crate::verify::Expected;

/// Bytes of one frame: member u32, partition offsets u32, seq u64, latency µs u32, status
/// i16 (0 ok, a Kafka error code, or -1 for an error without one), flags u8, padding u8;
/// little-endian.
pub const FRAME_BYTES: usize = 24;
/// The member index of the frame the child sends once its engine is open.
const READY_MEMBER: u32 = u32::MAX;
const FLAG_LATENCY_WINDOW: u8 = 1;
const FLAG_RATE_WINDOW: u8 = 2;
const FLAG_HOT: u8 = 4;
/// How long the parent waits for the child's engine to open.
const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The child stops by itself this long after the parent should have killed it.
const CHILD_OVERRUN: Duration = Duration::from_secs(30);

pub fn encode_frame(out: &mut Vec<u8>, frame: &Answer) {
    out.extend_from_slice(&frame.member.to_le_bytes());
    out.extend_from_slice(&frame.partition_offsets.to_le_bytes());
    out.extend_from_slice(&frame.seq.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(frame.latency_us)
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&i16::try_from(frame.code).unwrap_or(-1).to_le_bytes());
    let mut flags = 0;
    for (set, flag) in [
        (frame.in_latency_window, FLAG_LATENCY_WINDOW),
        (frame.in_rate_window, FLAG_RATE_WINDOW),
        (frame.hot, FLAG_HOT),
    ] {
        if set {
            flags |= flag;
        }
    }
    out.push(flags);
    out.push(0);
}

pub fn decode_frame(bytes: &[u8; FRAME_BYTES]) -> Answer {
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    let flags = bytes[22];
    Answer {
        member: u32_at(0),
        partition_offsets: u32_at(4),
        seq: u64::from_le_bytes(seq),
        latency_us: u64::from(u32_at(16)),
        code: i32::from(i16::from_le_bytes([bytes[20], bytes[21]])),
        in_latency_window: flags & FLAG_LATENCY_WINDOW != 0,
        in_rate_window: flags & FLAG_RATE_WINDOW != 0,
        hot: flags & FLAG_HOT != 0,
    }
}

/// The child's end: frames from every generator thread go to stdout, whole.
pub struct AckPipe {
    out: Mutex<std::io::Stdout>,
}

impl AckPipe {
    /// Writes whole frames; a parent that went away ends the child.
    pub fn write(&self, frames: &[u8]) {
        let out = self.out.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut out = out.lock();
        if out.write_all(frames).and_then(|()| out.flush()).is_err() {
            // The parent is gone: nobody will check these commits; stop the load.
            std::process::exit(3);
        }
    }
}

/// `loadgen ... crash-child`: opens the engine, says so, and commits until killed (or until
/// well past the time the parent should have killed it).
pub fn run_child(args: &Args) -> Result<(), String> {
    let (plan, fleet) = run::prepare(args)?;
    let data_dir = args
        .data_dir
        .as_ref()
        .ok_or("crash-child needs --data-dir")?;
    let config = run::engine_config(args, data_dir, None)?;
    let engine = Engine::open(config).map_err(|e| format!("opening the engine: {e}"))?;
    let pipe = Arc::new(AckPipe {
        out: Mutex::new(std::io::stdout()),
    });
    let mut ready = Vec::with_capacity(FRAME_BYTES);
    encode_frame(
        &mut ready,
        &Answer {
            member: READY_MEMBER,
            seq: 0,
            latency_us: 0,
            code: 0,
            in_latency_window: false,
            in_rate_window: false,
            hot: false,
            partition_offsets: 0,
        },
    );
    pipe.write(&ready);
    let mut timeline = Timeline::from_now(args);
    timeline.stop_at += Duration::from_secs_f64(args.duration) + CHILD_OVERRUN;
    let live = Arc::new(LiveCounters::default());
    let handles = run::start_drivers(
        &engine,
        &fleet,
        &plan,
        timeline,
        args.seed,
        &live,
        Some(pipe),
    )?;
    for handle in handles {
        handle
            .join()
            .map_err(|_| "a generator thread panicked".to_string())?;
    }
    engine
        .close()
        .map_err(|e| format!("closing the engine: {e}"))
}

/// What the parent learnt from the child's frames.
struct Heard {
    commit: OpStats,
    commit_hot: OpStats,
    last_acked_seq: Vec<i64>,
    acks: u64,
    /// Partition offsets in those acknowledged requests.
    partition_offsets: u64,
}

fn listen(
    mut pipe: impl Read,
    members: usize,
    live: &LiveCounters,
    ready: std::sync::mpsc::Sender<()>,
) -> Heard {
    let mut heard = Heard {
        commit: OpStats::default(),
        commit_hot: OpStats::default(),
        last_acked_seq: vec![-1; members],
        acks: 0,
        partition_offsets: 0,
    };
    let mut frame = [0u8; FRAME_BYTES];
    // A short read at the end is a frame cut by the kill: it was never complete, so it is
    // not counted.
    while pipe.read_exact(&mut frame).is_ok() {
        let frame = decode_frame(&frame);
        if frame.member == READY_MEMBER {
            let _ = ready.send(());
            continue;
        }
        let Some(last) = heard.last_acked_seq.get_mut(frame.member as usize) else {
            continue;
        };
        if frame.code == 0 {
            *last = (*last).max(i64::try_from(frame.seq).unwrap_or(i64::MAX));
            heard.acks += 1;
            heard.partition_offsets += u64::from(frame.partition_offsets);
            live.acks.fetch_add(1, Ordering::Relaxed);
        } else {
            live.errors.fetch_add(1, Ordering::Relaxed);
        }
        let message = || format!("error code {} reported by the engine process", frame.code);
        heard.commit.record(&frame, message);
        if frame.hot {
            heard.commit_hot.record(&frame, message);
        }
    }
    heard
}

/// Runs crash-resume: child, kill, reopen, verify.
pub fn run_parent(
    args: &Args,
    plan: &Plan,
    fleet: &Arc<Fleet>,
    config: &Config,
) -> Result<Measures, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the loadgen binary: {e}"))?;
    let mut child_args: Vec<std::ffi::OsString> = Vec::new();
    let mut original = std::env::args_os().skip(1);
    while let Some(arg) = original.next() {
        let text = arg.to_string_lossy();
        if text == "--data-dir" {
            original.next();
        } else if !text.starts_with("--data-dir=") {
            child_args.push(arg);
        }
    }
    let mut child = Command::new(exe)
        .args(child_args)
        .arg("--data-dir")
        .arg(&config.data_dir)
        .arg("crash-child")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the engine process: {e}"))?;
    let pipe = child
        .stdout
        .take()
        .ok_or("the engine process has no stdout pipe")?;
    let live = Arc::new(LiveCounters::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let members = fleet.members.len();
    let listener = {
        let live = Arc::clone(&live);
        std::thread::Builder::new()
            .name("crash-listener".into())
            .spawn(move || listen(pipe, members, &live, ready_tx))
            .map_err(|e| format!("spawning the listener: {e}"))?
    };
    if ready_rx.recv_timeout(CHILD_READY_TIMEOUT).is_err() {
        let _ = child.kill();
        let status = child
            .wait()
            .map_err(|e| format!("waiting for the engine process: {e}"))?;
        return Err(format!("the engine process did not start ({status})"));
    }

    let timeline = Timeline::from_now(args);
    let mut progress =
        Progress::new(timeline, run::pacing(plan, fleet), plan.rate_per_sec).without_in_flight();
    progress.run_until(timeline.stop_at, &live);
    progress.finish(&live);
    let ended_early = child
        .try_wait()
        .map_err(|e| format!("checking the engine process: {e}"))?;
    if let Some(status) = ended_early {
        return Err(format!(
            "the engine process ended before it was killed ({status})"
        ));
    }
    let killed_at = Instant::now();
    child
        .kill()
        .map_err(|e| format!("killing the engine process: {e}"))?;
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the engine process: {e}"))?;
    let heard = listener
        .join()
        .map_err(|_| "the listener panicked".to_string())?;
    eprintln!(
        "loadgen: engine process killed ({status}) after {:.1}s with {} acknowledged commits reported; recovering",
        killed_at.duration_since(timeline.start).as_secs_f64(),
        heard.acks
    );

    let expected = Expected {
        last_acked_seq: heard.last_acked_seq,
        last_issued_seq: None,
    };
    let (verification, reopen_secs) = run::reopen_and_verify(config, fleet, &expected)?;
    let after = run::dir_bytes(&config.data_dir)?;
    let hot = fleet.groups.iter().any(|g| g.hot);
    let keys_checked = verification.keys;
    Ok(Measures {
        measured_secs: killed_at
            .duration_since(timeline.measure_from)
            .as_secs_f64(),
        commit: heard.commit,
        commit_hot: hot.then_some(heard.commit_hot),
        group_ops: None,
        setup: None,
        total_acks: heard.acks,
        total_partition_offsets: heard.partition_offsets,
        issued_in_window: 0,
        coalesced: 0,
        redundant: 0,
        late_sends: 0,
        unsent_at_stop: 0,
        per_offsets_partition: Vec::new(),
        engine_window: None,
        engine_total: None,
        process_cpu: sys::process_cpu(Who::Children),
        generator_cpu: None,
        shards_cpu: None,
        peak_rss_bytes: sys::peak_rss_bytes(Who::Children),
        log_bytes: after.log,
        disk_bytes_before_close: None,
        disk_bytes_after_close: after.allocated,
        close_secs: None,
        reopen_secs,
        verification,
        crash: Some(Crash {
            signal: "SIGKILL".into(),
            killed_after_secs: killed_at.duration_since(timeline.start).as_secs_f64(),
            acked_requests_reported: heard.acks,
            keys_checked,
        }),
        rate_target_per_sec: run::target_rate(plan, fleet),
    })
}

/// What the report says about the crash.
#[derive(Serialize, Clone, Debug)]
pub struct Crash {
    pub signal: String,
    /// Seconds from the engine process being ready to the kill.
    pub killed_after_secs: f64,
    /// Acknowledged commit requests the engine process reported before it died.
    pub acked_requests_reported: u64,
    /// Keys with an acknowledged offset, checked after recovery.
    pub keys_checked: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = Answer {
            member: 7,
            seq: 1 << 40,
            latency_us: 123_456,
            code: 15,
            in_latency_window: true,
            in_rate_window: false,
            hot: true,
            partition_offsets: 4,
        };
        let mut out = Vec::new();
        encode_frame(&mut out, &frame);
        assert_eq!(out.len(), FRAME_BYTES);
        let bytes: [u8; FRAME_BYTES] = out.try_into().unwrap();
        assert_eq!(decode_frame(&bytes), frame);
    }

    #[test]
    fn a_cut_frame_is_not_counted() {
        let mut bytes = Vec::new();
        for seq in 0..3 {
            encode_frame(
                &mut bytes,
                &Answer {
                    member: 1,
                    seq,
                    latency_us: 10,
                    code: 0,
                    in_latency_window: true,
                    in_rate_window: true,
                    hot: false,
                    partition_offsets: 2,
                },
            );
        }
        bytes.truncate(bytes.len() - 5);
        let live = LiveCounters::default();
        let (tx, _rx) = std::sync::mpsc::channel();
        let heard = listen(&bytes[..], 4, &live, tx);
        assert_eq!(heard.acks, 2);
        assert_eq!(heard.last_acked_seq, vec![-1, 1, -1, -1]);
        assert_eq!(heard.commit.partition_offsets_in_window, 4);
    }
}
