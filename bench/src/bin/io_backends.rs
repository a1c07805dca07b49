//! Segment writer I/O backend comparison.
//!
//! The engine's writer appends small batches (hundreds of bytes to a few KiB) to a
//! preallocated segment file and makes each one durable before acking it. This binary measures
//! the candidate ways of doing that, side by side in one process:
//!
//! * `pwrite`  — `pwrite(2)` + `fdatasync(2)`: the floor.
//! * `uring`   — `io-uring` crate: buffered `Write` + `Fsync(DATASYNC)` as two SQEs linked with
//!   `IOSQE_IO_LINK`, one `io_uring_enter` per append.
//! * `glommio` — glommio `DmaFile` (`O_DIRECT`): rewrite the 4 KiB block(s) holding the append
//!   from an aligned in-memory mirror of the tail, then `fdatasync`.
//!
//! and the engine's per-shard group-commit shape: one batch to each of N files, each made
//! durable, as
//!
//! * `uring-xN`   — all 2N SQEs (N linked write → fdatasync pairs) in one submission;
//! * `pwrite-xN`  — the same with 2N sequential syscalls.
//!
//! Every file is preallocated before it is measured, either by writing zeros (written extents)
//! or with `fallocate(2)` (unwritten extents: the first write to a block converts the extent,
//! which makes `fdatasync` commit metadata too). Each run creates fresh files.
//!
//! ```text
//! cargo run --release -p coffer-bench --bin io_backends -- --dir tmp/io-bench
//! ```

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use io_uring::{IoUring, opcode, squeue, types};

const BLOCK: usize = 4096;

#[derive(Parser, Debug)]
#[command(about = "Compare segment-writer I/O backends: appends/s and latency of durable appends")]
struct Args {
    /// Data directory (created; must be on the disk under test, not tmpfs).
    #[arg(long, default_value = "tmp/io-bench")]
    dir: PathBuf,
    /// Runs per configuration; the report shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Durable appends per single-file measurement.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Rounds per multi-file measurement (each round appends to every file).
    #[arg(long, default_value_t = 500)]
    rounds: usize,
    /// Files in the multi-file (group commit) shape.
    #[arg(long, default_value_t = 8)]
    files: usize,
    /// Batch sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "512,4096")]
    batch: Vec<usize>,
    /// glommio io_memory in bytes (locked memory is scarce: `ulimit -l`).
    #[arg(long, default_value_t = 256 * 1024)]
    glommio_io_memory: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prealloc {
    Zeros,
    Fallocate,
}

impl Prealloc {
    fn name(self) -> &'static str {
        match self {
            Prealloc::Zeros => "zeros",
            Prealloc::Fallocate => "fallocate",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Pwrite,
    Uring,
    Glommio,
    PwriteMulti,
    UringMulti,
}

impl Backend {
    fn name(self, files: usize) -> String {
        match self {
            Backend::Pwrite => "pwrite+fdatasync".into(),
            Backend::Uring => "uring linked write+fsync".into(),
            Backend::Glommio => "glommio DMA+fdatasync".into(),
            Backend::PwriteMulti => format!("pwrite+fdatasync x{files} sequential"),
            Backend::UringMulti => format!("uring x{files}, 2x{files} SQEs one submit"),
        }
    }
}

/// One measurement: `ops` durable operations (appends, or rounds for the multi-file shape),
/// each timed.
struct Sample {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn sample(hist: &Histogram<u64>, ops: usize, elapsed: Duration) -> Sample {
    #[allow(clippy::cast_precision_loss)]
    Sample {
        ops_per_s: ops as f64 / elapsed.as_secs_f64(),
        p50_us: hist.value_at_quantile(0.50) as f64 / 1e3,
        p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
    }
}

fn record(hist: &mut Histogram<u64>, d: Duration) {
    hist.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` with `size` bytes preallocated and made durable (data and metadata), and
/// returns how long the preallocation took.
fn preallocate(path: &Path, size: u64, how: Prealloc) -> io::Result<Duration> {
    let _ = fs::remove_file(path);
    let start = Instant::now();
    let mut f = OpenOptions::new().create_new(true).write(true).open(path)?;
    match how {
        Prealloc::Zeros => {
            let zeros = vec![0_u8; 1 << 20];
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64);
                f.write_all(&zeros[..usize::try_from(n).expect("chunk")])?;
                left -= n;
            }
        }
        Prealloc::Fallocate => {
            let len = libc::off_t::try_from(size).expect("size");
            // SAFETY: valid fd; mode 0 allocates (unwritten extents) and extends the size.
            cvt(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) })?;
        }
    }
    f.sync_all()?;
    fsync_dir(path.parent().expect("parent"))?;
    Ok(start.elapsed())
}

fn open_buffered(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).open(path)
}

fn payload(batch: usize, seed: usize) -> Vec<u8> {
    (0..batch)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) & 0xff) as u8)
        .collect()
}

fn pwrite_all(fd: libc::c_int, buf: &[u8], pos: u64) -> io::Result<()> {
    let off = libc::off_t::try_from(pos).expect("offset");
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if usize::try_from(n).ok() != Some(buf.len()) {
        return Err(io::Error::other("short pwrite"));
    }
    Ok(())
}

fn run_pwrite(path: &Path, batch: usize, count: usize) -> io::Result<Sample> {
    let f = open_buffered(path)?;
    let fd = f.as_raw_fd();
    let buf = payload(batch, 1);
    let mut hist = new_hist();
    let start = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        pwrite_all(fd, &buf, (i * batch) as u64)?;
        // SAFETY: valid fd.
        cvt(unsafe { libc::fdatasync(fd) })?;
        record(&mut hist, t.elapsed());
    }
    Ok(sample(&hist, count, start.elapsed()))
}

fn run_pwrite_multi(paths: &[PathBuf], batch: usize, rounds: usize) -> io::Result<Sample> {
    let files: Vec<File> = paths
        .iter()
        .map(|p| open_buffered(p))
        .collect::<io::Result<_>>()?;
    let bufs: Vec<Vec<u8>> = (0..files.len()).map(|i| payload(batch, i)).collect();
    let mut hist = new_hist();
    let start = Instant::now();
    for r in 0..rounds {
        let t = Instant::now();
        for (f, buf) in files.iter().zip(&bufs) {
            pwrite_all(f.as_raw_fd(), buf, (r * batch) as u64)?;
            // SAFETY: valid fd.
            cvt(unsafe { libc::fdatasync(f.as_raw_fd()) })?;
        }
        record(&mut hist, t.elapsed());
    }
    Ok(sample(&hist, rounds, start.elapsed()))
}

/// Submits linked (write → fdatasync) pairs, one per file, in a single `io_uring_enter`, and
/// waits for all of them; checks every completion.
fn uring_round(ring: &mut IoUring, files: &[File], bufs: &[Vec<u8>], pos: u64) -> io::Result<()> {
    {
        let mut sq = ring.submission();
        for (i, (f, buf)) in files.iter().zip(bufs).enumerate() {
            let fd = types::Fd(f.as_raw_fd());
            let len = u32::try_from(buf.len()).expect("batch fits u32");
            let write = opcode::Write::new(fd, buf.as_ptr(), len)
                .offset(pos)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data((i as u64) << 1);
            let sync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(((i as u64) << 1) | 1);
            // SAFETY: buffers and fds outlive the submission: we wait for every CQE below.
            unsafe {
                sq.push(&write).map_err(|_| io::Error::other("SQ full"))?;
                sq.push(&sync).map_err(|_| io::Error::other("SQ full"))?;
            }
        }
    }
    let want = files.len() * 2;
    let mut seen = 0;
    while seen < want {
        ring.submit_and_wait(want - seen)?;
        for cqe in ring.completion() {
            let idx = usize::try_from(cqe.user_data() >> 1).expect("index");
            let res = cqe.result();
            if cqe.user_data() & 1 == 0 {
                if usize::try_from(res).ok() != Some(bufs[idx].len()) {
                    return Err(io::Error::other(format!("write {idx}: {res}")));
                }
            } else if res != 0 {
                return Err(io::Error::other(format!("fdatasync {idx}: {res}")));
            }
            seen += 1;
        }
    }
    Ok(())
}

fn run_uring(paths: &[PathBuf], batch: usize, rounds: usize) -> io::Result<Sample> {
    let files: Vec<File> = paths
        .iter()
        .map(|p| open_buffered(p))
        .collect::<io::Result<_>>()?;
    let bufs: Vec<Vec<u8>> = (0..files.len()).map(|i| payload(batch, i)).collect();
    let entries = u32::try_from((files.len() * 2).next_power_of_two()).expect("ring size");
    let mut ring = IoUring::new(entries.max(8))?;
    let mut hist = new_hist();
    let start = Instant::now();
    for r in 0..rounds {
        let t = Instant::now();
        uring_round(&mut ring, &files, &bufs, (r * batch) as u64)?;
        record(&mut hist, t.elapsed());
    }
    Ok(sample(&hist, rounds, start.elapsed()))
}

fn run_glommio(path: &Path, batch: usize, count: usize, io_memory: usize) -> io::Result<Sample> {
    use glommio::io::OpenOptions as GOpenOptions;
    use glommio::{LocalExecutorBuilder, Placement};

    let path = path.to_path_buf();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(io_memory)
        .ring_depth(32)
        .name("io-bench")
        .spawn(move || async move {
            let file = GOpenOptions::new()
                .write(true)
                .dma_open(&path)
                .await
                .map_err(io::Error::from)?;
            let data = payload(batch, 1);
            // In-memory mirror of the file tail: the last partial block is rewritten whole.
            let mut mirror = vec![0_u8; batch + 2 * BLOCK];
            let mut mirror_base = 0_usize; // file offset of mirror[0], block aligned
            let mut hist = new_hist();
            let start = Instant::now();
            for i in 0..count {
                let t = Instant::now();
                let pos = i * batch;
                let end = pos + batch;
                let w_start = pos / BLOCK * BLOCK;
                let w_end = end.div_ceil(BLOCK) * BLOCK;
                if w_end - mirror_base > mirror.len() {
                    // Slide: keep the partial block that holds `pos`.
                    let shift = w_start - mirror_base;
                    mirror.copy_within(shift.., 0);
                    let len = mirror.len();
                    mirror[len - shift..].fill(0);
                    mirror_base = w_start;
                }
                mirror[pos - mirror_base..end - mirror_base].copy_from_slice(&data);
                let mut buf = file.alloc_dma_buffer(w_end - w_start);
                buf.as_bytes_mut()
                    .copy_from_slice(&mirror[w_start - mirror_base..w_end - mirror_base]);
                let n = file
                    .write_at(buf, w_start as u64)
                    .await
                    .map_err(io::Error::from)?;
                if n != w_end - w_start {
                    return Err(io::Error::other("short DMA write"));
                }
                file.fdatasync().await.map_err(io::Error::from)?;
                record(&mut hist, t.elapsed());
            }
            let elapsed = start.elapsed();
            file.close().await.map_err(io::Error::from)?;
            Ok(sample(&hist, count, elapsed))
        })
        .map_err(io::Error::from)?;
    handle.join().map_err(io::Error::from)?
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    fs::create_dir_all(&args.dir)?;
    let dir = fs::canonicalize(&args.dir)?;
    let fs_type = {
        let c = CString::new(dir.as_os_str().as_bytes()).expect("path");
        // SAFETY: statfs writes into the zeroed struct.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::statfs(c.as_ptr(), &raw mut st) })?;
        format!("f_type={:#x}", st.f_type)
    };
    println!("# io_backends");
    println!("dir: {} ({fs_type})", dir.display());
    println!("nproc: {}", cmd_out("nproc", &[]));
    println!("kernel: {}", cmd_out("uname", &["-r"]));
    println!(
        "runs={} count={} rounds={} files={} batches={:?} glommio_io_memory={}",
        args.runs, args.count, args.rounds, args.files, args.batch, args.glommio_io_memory
    );

    let singles = [Backend::Pwrite, Backend::Uring, Backend::Glommio];
    let multis = [Backend::PwriteMulti, Backend::UringMulti];
    let preallocs = [Prealloc::Zeros, Prealloc::Fallocate];

    // (prealloc, batch, backend) -> samples over runs
    let mut results: Vec<((Prealloc, usize, Backend), Vec<Sample>)> = Vec::new();
    let mut prealloc_ms_per_mib: Vec<(Prealloc, Vec<f64>)> =
        preallocs.iter().map(|&p| (p, Vec::new())).collect();

    for run in 0..args.runs {
        for &pre in &preallocs {
            for &batch in &args.batch {
                for &backend in singles.iter().chain(&multis) {
                    let multi = multis.contains(&backend);
                    let n_files = if multi { args.files } else { 1 };
                    let ops = if multi { args.rounds } else { args.count };
                    let size = ((ops * batch + BLOCK) as u64).div_ceil(1 << 20) * (1 << 20);
                    let paths: Vec<PathBuf> = (0..n_files)
                        .map(|i| dir.join(format!("seg-{i}.log")))
                        .collect();
                    let mut prep = Duration::ZERO;
                    for p in &paths {
                        prep += preallocate(p, size, pre)?;
                    }
                    #[allow(clippy::cast_precision_loss)]
                    let mib = (size * n_files as u64) as f64 / f64::from(1 << 20);
                    if let Some((_, v)) = prealloc_ms_per_mib.iter_mut().find(|(p, _)| *p == pre) {
                        v.push(prep.as_secs_f64() * 1e3 / mib);
                    }
                    let s = match backend {
                        Backend::Pwrite => run_pwrite(&paths[0], batch, ops)?,
                        Backend::Uring => run_uring(&paths, batch, ops)?,
                        Backend::Glommio => {
                            run_glommio(&paths[0], batch, ops, args.glommio_io_memory)?
                        }
                        Backend::PwriteMulti => run_pwrite_multi(&paths, batch, ops)?,
                        Backend::UringMulti => run_uring(&paths, batch, ops)?,
                    };
                    println!(
                        "run {run} {:<9} {batch:>5} B  {:<34} {:>9.0} ops/s  p50 {:>8.1} us  p99 {:>8.1} us",
                        pre.name(),
                        backend.name(args.files),
                        s.ops_per_s,
                        s.p50_us,
                        s.p99_us
                    );
                    for p in &paths {
                        fs::remove_file(p)?;
                    }
                    match results
                        .iter_mut()
                        .find(|(k, _)| *k == (pre, batch, backend))
                    {
                        Some((_, v)) => v.push(s),
                        None => results.push(((pre, batch, backend), vec![s])),
                    }
                }
            }
        }
    }

    println!();
    println!(
        "Medians over {} runs. For the xN rows an op is one round (one batch durable in each of \
         {} files); appends/s = ops/s x {}.",
        args.runs, args.files, args.files
    );
    println!();
    println!("| prealloc | batch | backend | ops/s | appends/s | p50 µs | p99 µs |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    for ((pre, batch, backend), v) in &results {
        let ops = median(v.iter().map(|s| s.ops_per_s).collect());
        let per = if multis.contains(backend) {
            args.files
        } else {
            1
        };
        #[allow(clippy::cast_precision_loss)]
        let appends = ops * per as f64;
        println!(
            "| {} | {batch} | {} | {ops:.0} | {appends:.0} | {:.0} | {:.0} |",
            pre.name(),
            backend.name(args.files),
            median(v.iter().map(|s| s.p50_us).collect()),
            median(v.iter().map(|s| s.p99_us).collect()),
        );
    }
    println!();
    println!("| preallocation (incl. fsync) | ms per MiB, median |");
    println!("|---|---:|");
    for (pre, v) in prealloc_ms_per_mib {
        println!("| {} | {:.2} |", pre.name(), median(v));
    }
    Ok(())
}
