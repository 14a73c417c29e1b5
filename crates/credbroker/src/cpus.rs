//! How much CPU this process may use, and the tokio runtime that fits it.
//!
//! Two limits bound a container: the CPUs it may be scheduled on (the affinity mask: `taskset`,
//! or the cpuset kubelet's static CPU manager assigns) and the CPU *time* it may use per period
//! (the CFS quota a Kubernetes CPU limit becomes: cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` /
//! `cpu.cfs_period_us`). A runtime with more worker threads than that budget does not serve
//! more: its threads take turns on the same core, and every hand-over between them is a wake-up,
//! a context switch and, under a quota, time taken from the next period.
//!
//! Reading the limits is split into pure parsing functions (unit-tested on file contents) and
//! [`detect`], which takes the file reader as an argument.

use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What `--worker-threads` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerThreads {
    /// Size the runtime to the CPUs this process may use (`auto` or `0`).
    #[default]
    Auto,
    Fixed(NonZeroUsize),
}

impl FromStr for WorkerThreads {
    type Err = CpusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(WorkerThreads::Auto);
        }
        let n: usize = s.parse().map_err(|_| CpusError::Setting(s.to_string()))?;
        Ok(NonZeroUsize::new(n).map_or(WorkerThreads::Auto, WorkerThreads::Fixed))
    }
}

/// Which tokio scheduler to use for one worker (hidden `--runtime-flavor`, for measuring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Flavor {
    /// One worker: the current-thread scheduler; more: the multi-thread one.
    #[default]
    Auto,
    /// The current-thread scheduler whatever the worker count.
    CurrentThread,
    /// The multi-thread scheduler even for one worker.
    MultiThread,
}

/// The runtime chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Everything on the main thread: no worker threads, no work stealing, no cross-thread wake.
    CurrentThread,
    MultiThread(NonZeroUsize),
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::CurrentThread => f.write_str("current-thread"),
            Shape::MultiThread(n) => write!(f, "multi-thread({n})"),
        }
    }
}

/// Why a limit could not be read. Never fatal: an unreadable limit is treated as no limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpusError {
    #[error("--worker-threads {0:?}: expected auto, 0 or a number of threads")]
    Setting(String),
    #[error("{what}: cannot parse {text:?}")]
    Parse { what: &'static str, text: String },
}

fn parse_err(what: &'static str, text: &str) -> CpusError {
    CpusError::Parse {
        what,
        text: text.trim().chars().take(80).collect(),
    }
}

/// The CPU budget found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpus {
    /// CPUs in the affinity mask; `None` if it could not be read.
    pub affinity: Option<usize>,
    /// CPU time allowed per period, in CPUs (0.5 = half a core); `None` when unlimited or
    /// unreadable. The tightest quota of the process's cgroup and its ancestors.
    pub quota: Option<f64>,
}

impl Cpus {
    /// Whole CPUs' worth of threads that can run at once: the affinity count, capped by the quota
    /// rounded up (a 1.5-CPU quota can keep two threads busy part of the time), at least one.
    pub fn usable(&self) -> NonZeroUsize {
        let by_affinity = self.affinity.unwrap_or(usize::MAX);
        let by_quota = self
            .quota
            .map_or(usize::MAX, |q| q.ceil().clamp(1.0, 4096.0) as usize);
        NonZeroUsize::new(by_affinity.min(by_quota).min(4096)).unwrap_or(NonZeroUsize::MIN)
    }
}

/// The runtime for `setting` on `cpus`. `Auto` uses one worker per usable CPU: a sidecar under a
/// limit of one core or less gets the current-thread scheduler.
pub fn choose(setting: WorkerThreads, flavor: Flavor, cpus: &Cpus) -> Shape {
    let workers = match setting {
        WorkerThreads::Auto => cpus.usable(),
        WorkerThreads::Fixed(n) => n,
    };
    match flavor {
        Flavor::CurrentThread => Shape::CurrentThread,
        Flavor::MultiThread => Shape::MultiThread(workers),
        Flavor::Auto if workers.get() == 1 => Shape::CurrentThread,
        Flavor::Auto => Shape::MultiThread(workers),
    }
}

/// Builds the runtime for `shape`.
pub fn build(shape: Shape) -> io::Result<tokio::runtime::Runtime> {
    match shape {
        Shape::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Shape::MultiThread(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.get())
            .enable_all()
            .build(),
    }
}

/// Detects the budget, chooses and builds the runtime, and logs the choice.
pub fn runtime(setting: WorkerThreads, flavor: Flavor) -> io::Result<tokio::runtime::Runtime> {
    let (cpus, problems) = detect(|p| std::fs::read_to_string(p));
    for p in &problems {
        tracing::warn!(error = %p, "CPU limit not read; treated as unlimited");
    }
    let shape = choose(setting, flavor, &cpus);
    tracing::info!(
        runtime = %shape,
        affinity_cpus = cpus.affinity,
        cpu_quota = cpus.quota,
        "runtime sized"
    );
    build(shape)
}

// === detection ===

/// Reads the affinity mask and the cgroup quota through `read` (a file's whole text).
pub fn detect(read: impl Fn(&Path) -> io::Result<String>) -> (Cpus, Vec<CpusError>) {
    let mut problems = Vec::new();
    let affinity = match read(Path::new("/proc/thread-self/status")) {
        Ok(text) => match cpus_allowed(&text) {
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        Err(_) => std::thread::available_parallelism().ok().map(|n| n.get()),
    };
    let quota = match (
        read(Path::new("/proc/self/cgroup")),
        read(Path::new("/proc/self/mountinfo")),
    ) {
        (Ok(cgroup), Ok(mountinfo)) => cgroup_dirs(&cgroup, &mountinfo)
            .into_iter()
            .filter_map(|dir| match quota_in(&dir, &read) {
                Ok(q) => q,
                Err(e) => {
                    problems.push(e);
                    None
                }
            })
            .reduce(f64::min),
        _ => None,
    };
    (Cpus { affinity, quota }, problems)
}

/// The tightest quota of `dir` and every ancestor up to its mount point.
fn quota_in(
    dir: &CgroupDir,
    read: &impl Fn(&Path) -> io::Result<String>,
) -> Result<Option<f64>, CpusError> {
    let mut tightest: Option<f64> = None;
    let mut cur = dir.path.clone();
    loop {
        let q = match dir.version {
            Version::V2 => match read(&cur.join("cpu.max")) {
                Ok(text) => parse_cpu_max(&text)?,
                Err(_) => None,
            },
            Version::V1 => match (
                read(&cur.join("cpu.cfs_quota_us")),
                read(&cur.join("cpu.cfs_period_us")),
            ) {
                (Ok(quota), Ok(period)) => parse_cfs(&quota, &period)?,
                _ => None,
            },
        };
        if let Some(q) = q {
            tightest = Some(tightest.map_or(q, |t| t.min(q)));
        }
        if cur == dir.mount || !cur.pop() || !cur.starts_with(&dir.mount) {
            return Ok(tightest);
        }
    }
}

/// `Cpus_allowed_list` of a `/proc/<pid>/status` text: the number of CPUs this thread may run on.
pub fn cpus_allowed(status: &str) -> Result<usize, CpusError> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .ok_or_else(|| parse_err("Cpus_allowed_list", status))?;
    count_cpu_list(list)
}

/// CPUs in a kernel CPU list (`0-3,8,10-11`).
pub fn count_cpu_list(list: &str) -> Result<usize, CpusError> {
    let bad = || parse_err("CPU list", list);
    let mut n = 0usize;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: usize = lo.trim().parse().map_err(|_| bad())?;
        let hi: usize = hi.trim().parse().map_err(|_| bad())?;
        if hi < lo {
            return Err(bad());
        }
        n += hi - lo + 1;
    }
    if n == 0 { Err(bad()) } else { Ok(n) }
}

/// cgroup v2 `cpu.max`: `max 100000` (unlimited) or `50000 100000` (0.5 CPU).
pub fn parse_cpu_max(text: &str) -> Result<Option<f64>, CpusError> {
    let mut fields = text.split_whitespace();
    let (Some(limit), period) = (fields.next(), fields.next()) else {
        return Err(parse_err("cpu.max", text));
    };
    if limit == "max" {
        return Ok(None);
    }
    // The period defaults to 100 ms when only a limit was ever written.
    let period = period.unwrap_or("100000");
    ratio(limit, period).ok_or_else(|| parse_err("cpu.max", text))
}

/// cgroup v1 `cpu.cfs_quota_us` (`-1` is unlimited) over `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Result<Option<f64>, CpusError> {
    let quota = quota.trim();
    if quota == "-1" {
        return Ok(None);
    }
    ratio(quota, period.trim()).ok_or_else(|| parse_err("cpu.cfs_quota_us", quota))
}

fn ratio(limit: &str, period: &str) -> Option<Option<f64>> {
    let limit: u64 = limit.parse().ok()?;
    let period: u64 = period.parse().ok()?;
    (period > 0).then(|| Some(limit as f64 / period as f64))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A cgroup directory holding CPU limits, and the mount point its hierarchy ends at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupDir {
    version: Version,
    path: PathBuf,
    mount: PathBuf,
}

/// The directories of this process's CPU cgroups: the v2 group, and the v1 group of the `cpu`
/// controller, each located through the mount that shows its hierarchy (`/proc/self/mountinfo`:
/// field 4 is the root of the hierarchy the mount shows, field 5 where it is mounted).
fn cgroup_dirs(proc_cgroup: &str, mountinfo: &str) -> Vec<CgroupDir> {
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        // `hierarchy-id:controllers:path`; v2 is `0::path`.
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let version = if controllers.is_empty() {
            Version::V2
        } else if controllers.split(',').any(|c| c == "cpu") {
            Version::V1
        } else {
            continue;
        };
        if let Some((root, mount)) = find_mount(mountinfo, version)
            && let Some(path) = under_mount(&root, &mount, path)
        {
            dirs.push(CgroupDir {
                version,
                path,
                mount,
            });
        }
    }
    dirs
}

/// `(root, mount point)` of the first cgroup2 mount, or of the v1 mount carrying `cpu`.
fn find_mount(mountinfo: &str, version: Version) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let pre: Vec<&str> = pre.split(' ').collect();
        let mut post = post.split(' ');
        let (fstype, _source, options) = (post.next()?, post.next()?, post.next()?);
        let ok = match version {
            Version::V2 => fstype == "cgroup2",
            Version::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "cpu"),
        };
        if !ok {
            return None;
        }
        Some((unescape(pre.get(3)?), PathBuf::from(unescape(pre.get(4)?))))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where cgroup `path` is, given a mount of the hierarchy's `root` at `mount`. A path outside the
/// mount's root (a cgroup namespace shows `/`, or the mount is of a sub-tree) is the mount itself.
fn under_mount(root: &str, mount: &Path, path: &str) -> Option<PathBuf> {
    if !path.starts_with('/') {
        return None;
    }
    let rel = if root == "/" {
        Some(path)
    } else {
        path.strip_prefix(root)
            .filter(|r| r.is_empty() || r.starts_with('/'))
    };
    let rel = rel.unwrap_or("/").trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

#[cfg(test)]
mod tests;
