//! What the operating system says about this process and this machine: CPU time, peak
//! memory, and the environment a report records (kernel, CPU, the data directory's mount).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// CPU time (user + system) of the whole process so far, or of its reaped children.
pub fn process_cpu(who: Who) -> Duration {
    let usage = rusage(who);
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// Whose resource usage to read.
#[derive(Clone, Copy)]
pub enum Who {
    /// This process, every thread.
    SelfProcess,
    /// Terminated and waited-for children (the crash-resume engine process).
    Children,
}

/// Peak resident set size in bytes (`ru_maxrss`, which Linux reports in KiB).
pub fn peak_rss_bytes(who: Who) -> u64 {
    u64::try_from(rusage(who).ru_maxrss)
        .unwrap_or(0)
        .saturating_mul(1024)
}

fn rusage(who: Who) -> libc::rusage {
    let which = match who {
        Who::SelfProcess => libc::RUSAGE_SELF,
        Who::Children => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: `getrusage` only writes the struct it is given; an all-zero `rusage` is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage`. On failure it stays zeroed, which reads
    // as "no CPU used": the report then shows 0 rather than aborting the run.
    unsafe { libc::getrusage(which, &mut usage) };
    usage
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
}

/// CPU time consumed by the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`; on failure it stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::from_secs(u64::try_from(ts.tv_sec).unwrap_or(0))
        + Duration::from_nanos(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// CPU time (user + system) of this process's threads whose name starts with `prefix`
/// (the engine's `coffer-shard-N` threads), from `/proc/self/task/*/stat`, at the kernel's
/// clock-tick resolution (usually 10 ms). Threads that cannot be read count as zero.
pub fn threads_cpu(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_sec = u64::try_from(ticks_per_sec).unwrap_or(100).max(1);
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, used)) = parse_task_stat(&stat)
            && name.starts_with(prefix)
        {
            ticks += used;
        }
    }
    Duration::from_secs(ticks / ticks_per_sec)
        + Duration::from_nanos((ticks % ticks_per_sec) * 1_000_000_000 / ticks_per_sec)
}

/// The thread name and utime + stime (clock ticks) of a `/proc/<pid>/task/<tid>/stat` line:
/// `tid (name) state ppid ... utime(14) stime(15) ...`; the name may contain spaces and
/// parentheses, so fields are counted from the last ')'.
fn parse_task_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th and stime the 13th.
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((name, utime + stime))
}

/// The machine and the data directory's storage, as recorded in every report.
#[derive(Serialize, Clone, Debug)]
pub struct Env {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// The data directory, absolute.
    pub data_dir: String,
    /// Mount point holding the data directory (longest matching one in mountinfo).
    pub data_dir_mount_point: String,
    /// What is mounted there (`/dev/nvme0n1p2`, `tmpfs`, ...).
    pub data_dir_device: String,
    /// `major:minor` of the device.
    pub data_dir_device_id: String,
    pub data_dir_fs: String,
    /// Per-mount options (`rw,noatime`, ...).
    pub data_dir_mount_options: String,
    /// Filesystem (superblock) options.
    pub data_dir_super_options: String,
    /// `/sys/dev/block/<id>/queue/rotational`: "0" SSD/NVMe, "1" spinning, "" unknown.
    pub data_dir_rotational: String,
}

const UNKNOWN: &str = "unknown";

impl Env {
    /// Reads `/proc` and `/sys`; anything unreadable is "unknown", never an error.
    pub fn read(data_dir: &Path) -> Env {
        let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| Mount::containing(&text, &data_dir.to_string_lossy()));
        let mount = mount.unwrap_or_else(|| Mount {
            mount_point: UNKNOWN.into(),
            device_id: UNKNOWN.into(),
            options: UNKNOWN.into(),
            fs: UNKNOWN.into(),
            source: UNKNOWN.into(),
            super_options: UNKNOWN.into(),
        });
        let rotational = std::fs::read_to_string(format!(
            "/sys/dev/block/{}/queue/rotational",
            mount.device_id
        ))
        .map(|text| text.trim().to_string())
        .unwrap_or_default();
        Env {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(),
            kernel: kernel(),
            data_dir: data_dir.to_string_lossy().into_owned(),
            data_dir_mount_point: mount.mount_point,
            data_dir_device: mount.source,
            data_dir_device_id: mount.device_id,
            data_dir_fs: mount.fs,
            data_dir_mount_options: mount.options,
            data_dir_super_options: mount.super_options,
            data_dir_rotational: rotational,
        }
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    mount_point: String,
    device_id: String,
    options: String,
    fs: String,
    source: String,
    super_options: String,
}

impl Mount {
    /// Parses one mountinfo line: `id parent maj:min root mount_point options [optional...] -
    /// fstype source super_options`.
    fn parse(line: &str) -> Option<Mount> {
        let (head, tail) = line.split_once(" - ")?;
        let head: Vec<&str> = head.split(' ').collect();
        let tail: Vec<&str> = tail.split(' ').collect();
        Some(Mount {
            device_id: (*head.get(2)?).to_string(),
            mount_point: unescape(head.get(4)?),
            options: (*head.get(5)?).to_string(),
            fs: (*tail.first()?).to_string(),
            source: unescape(tail.get(1)?),
            super_options: tail.get(2).map_or(String::new(), |s| s.to_string()),
        })
    }

    /// The mount whose mount point is the longest prefix of `path` (the last one listed wins
    /// ties: it is mounted over the earlier ones).
    fn containing(mountinfo: &str, path: &str) -> Option<Mount> {
        let mut best: Option<Mount> = None;
        for mount in mountinfo.lines().filter_map(Mount::parse) {
            let point = mount.mount_point.as_str();
            let contains = point == "/"
                || path == point
                || (path.starts_with(point) && path.as_bytes().get(point.len()) == Some(&b'/'));
            let longer = best
                .as_ref()
                .is_none_or(|b| point.len() >= b.mount_point.len());
            if contains && longer {
                best = Some(mount);
            }
        }
        best
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        if let Some(digits) = octal {
            let code = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(code).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| UNKNOWN.to_string())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| UNKNOWN.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
40 22 0:35 / /tmp rw,nosuid,nodev shared:20 - tmpfs tmpfs rw,size=8g
41 22 259:3 / /data rw,noatime shared:21 - xfs /dev/nvme1n1 rw,attr2,inode64
42 41 259:4 / /data/my\\040disk rw,noatime - xfs /dev/nvme2n1 rw
";

    #[test]
    fn longest_mount_point_wins() {
        let m = Mount::containing(MOUNTINFO, "/data/coffer").unwrap();
        assert_eq!(m.mount_point, "/data");
        assert_eq!(m.fs, "xfs");
        assert_eq!(m.source, "/dev/nvme1n1");
        assert_eq!(m.options, "rw,noatime");
        assert_eq!(m.super_options, "rw,attr2,inode64");
        assert_eq!(m.device_id, "259:3");
        // A sibling that merely shares a prefix is not inside the mount.
        let m = Mount::containing(MOUNTINFO, "/database").unwrap();
        assert_eq!(m.mount_point, "/");
        assert_eq!(Mount::containing(MOUNTINFO, "/tmp").unwrap().fs, "tmpfs");
        let m = Mount::containing(MOUNTINFO, "/data/my disk/x").unwrap();
        assert_eq!(m.source, "/dev/nvme2n1");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert_eq!(Mount::parse("garbage"), None);
        assert_eq!(Mount::containing("1 2 3\n", "/x"), None);
    }

    #[test]
    fn task_stat_fields_are_counted_from_the_name_end() {
        let stat = "4242 (coffer-shard-0) S 1 4242 4242 0 -1 4194368 500 0 0 0 70 30 0 0 20 0 1 0";
        assert_eq!(parse_task_stat(stat), Some(("coffer-shard-0", 100)));
        let odd = "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0";
        assert_eq!(parse_task_stat(odd), Some(("a) b (c)", 11)));
        assert_eq!(parse_task_stat("7 (x) R 1"), None);
    }

    #[test]
    fn cpu_clocks_advance() {
        let start = thread_cpu();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(std::hint::black_box(x), 1);
        assert!(thread_cpu() > start);
        assert!(process_cpu(Who::SelfProcess) > Duration::ZERO);
        assert!(peak_rss_bytes(Who::SelfProcess) > 0);
    }
}
