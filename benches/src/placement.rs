//! Where the servers and the load generator run: pinned to separate CPUs with `taskset` (a
//! sidecar's one core, and a generator that cannot take CPU from it), unpinned (the scheduler
//! decides, generator and server share the cores), or the server under a real cgroup CPU quota
//! (what a Kubernetes CPU limit becomes) with the generator pinned.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Server on `--server-cpu`, generator on `--client-cpu` (taskset).
    Pinned,
    /// No affinity for either.
    Unpinned,
    /// Server in a cgroup limited to `--quota` CPUs (all CPUs in its mask), generator pinned.
    Quota,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Pinned => "pinned",
            Placement::Unpinned => "unpinned",
            Placement::Quota => "quota",
        }
    }
}

/// The CPUs used for pinning and the quota.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub server_cpu: usize,
    pub client_cpu: usize,
    /// CPUs of the quota placement (0.5 = 50 ms per 100 ms period).
    pub quota: f64,
}

impl Layout {
    /// The command prefix that starts a server in `placement`.
    pub fn server_prefix(&self, placement: Placement, cgroup: Option<&Cgroup>) -> Vec<String> {
        match placement {
            Placement::Pinned => taskset(self.server_cpu),
            Placement::Unpinned => Vec::new(),
            Placement::Quota => cgroup.map(Cgroup::enter_prefix).unwrap_or_default(),
        }
    }

    /// The command prefix that starts the load generator in `placement`.
    pub fn client_prefix(&self, placement: Placement) -> Vec<String> {
        match placement {
            Placement::Pinned | Placement::Quota => taskset(self.client_cpu),
            Placement::Unpinned => Vec::new(),
        }
    }

    /// The CPUs a server may use in `placement` (GOMAXPROCS for the Go floor).
    pub fn server_cpus(&self, placement: Placement) -> usize {
        let all = std::thread::available_parallelism().map_or(1, |n| n.get());
        match placement {
            Placement::Pinned => 1,
            Placement::Unpinned => all,
            Placement::Quota => (self.quota.ceil() as usize).clamp(1, all),
        }
    }
}

fn taskset(cpu: usize) -> Vec<String> {
    vec!["taskset".into(), "-c".into(), cpu.to_string()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// A cgroup made for this run with a CPU quota; removed when dropped (after its processes).
#[derive(Debug)]
pub struct Cgroup {
    pub dir: PathBuf,
    pub version: CgroupVersion,
    pub quota: f64,
}

const PERIOD_US: u64 = 100_000;

impl Cgroup {
    /// Creates `credbroker-bench-<pid>` with a `cores` CPU quota: under the cgroup v2 mount if
    /// its `cpu` controller can be enabled there, else under the v1 `cpu` hierarchy. `Err` says
    /// what was tried and why each failed (the report prints it).
    pub fn create(cores: f64) -> Result<Cgroup, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let name = format!("credbroker-bench-{}", std::process::id());
        let quota_us = (cores * PERIOD_US as f64).round() as u64;
        let mut why = Vec::new();
        if let Some(mount) = mount_of(&mountinfo, "cgroup2", None) {
            match make_v2(&mount, &name, quota_us) {
                Ok(dir) => {
                    return Ok(Cgroup {
                        dir,
                        version: CgroupVersion::V2,
                        quota: cores,
                    });
                }
                Err(e) => why.push(format!("cgroup v2 at {}: {e}", mount.display())),
            }
        } else {
            why.push("no cgroup2 mount".into());
        }
        if let Some(mount) = mount_of(&mountinfo, "cgroup", Some("cpu")) {
            match make_v1(&mount, &name, quota_us) {
                Ok(dir) => {
                    return Ok(Cgroup {
                        dir,
                        version: CgroupVersion::V1,
                        quota: cores,
                    });
                }
                Err(e) => why.push(format!("cgroup v1 cpu at {}: {e}", mount.display())),
            }
        } else {
            why.push("no cgroup v1 cpu mount".into());
        }
        Err(why.join("; "))
    }

    /// `sh -c 'echo $$ > DIR/cgroup.procs && exec "$@"' DIR …`: the server is in the cgroup
    /// before its first instruction, so its own detection sees the quota.
    pub fn enter_prefix(&self) -> Vec<String> {
        vec![
            "sh".into(),
            "-c".into(),
            r#"echo $$ > "$0/cgroup.procs" && exec "$@""#.into(),
            self.dir.display().to_string(),
        ]
    }

    /// `nr_throttled` and `throttled_time`/`throttled_usec` from `cpu.stat`.
    pub fn throttling(&self) -> Option<(u64, f64)> {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        let periods = get("nr_throttled ")?;
        let secs = match self.version {
            CgroupVersion::V1 => get("throttled_time ")? as f64 / 1e9,
            CgroupVersion::V2 => get("throttled_usec ")? as f64 / 1e6,
        };
        Some((periods, secs))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes are killed before it is dropped; give the kernel a moment to see them go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn make_v2(mount: &Path, name: &str, quota_us: u64) -> Result<PathBuf, String> {
    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))
        .map_err(|e| format!("cgroup.controllers: {e}"))?;
    if !controllers.split_whitespace().any(|c| c == "cpu") {
        return Err(format!(
            "the cpu controller is not available there (cgroup.controllers: {:?})",
            controllers.trim()
        ));
    }
    std::fs::write(mount.join("cgroup.subtree_control"), "+cpu")
        .map_err(|e| format!("enabling +cpu in cgroup.subtree_control: {e}"))?;
    let dir = mount.join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    if let Err(e) = std::fs::write(dir.join("cpu.max"), format!("{quota_us} {PERIOD_US}")) {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!("cpu.max: {e}"));
    }
    Ok(dir)
}

fn make_v1(mount: &Path, name: &str, quota_us: u64) -> Result<PathBuf, String> {
    let dir = mount.join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let set = |file: &str, value: String| {
        std::fs::write(dir.join(file), value).map_err(|e| format!("{file}: {e}"))
    };
    if let Err(e) = set("cpu.cfs_period_us", PERIOD_US.to_string())
        .and_then(|()| set("cpu.cfs_quota_us", quota_us.to_string()))
    {
        let _ = std::fs::remove_dir(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// Mount point of the first mount of `fstype` (with `option` among its super options).
fn mount_of(mountinfo: &str, fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split(' ');
        let (ty, _source, opts) = (post.next()?, post.next()?, post.next()?);
        let ok = ty == fstype && option.is_none_or(|o| opts.split(',').any(|x| x == o));
        if !ok {
            return None;
        }
        Some(PathBuf::from(pre.split(' ').nth(4)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_and_prefixes() {
        let mi = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                  33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_of(mi, "cgroup", Some("cpu")),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(
            mount_of(mi, "cgroup2", None),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_of(mi, "cgroup", Some("memory")), None);
        let l = Layout {
            server_cpu: 1,
            client_cpu: 0,
            quota: 0.5,
        };
        assert_eq!(
            l.server_prefix(Placement::Pinned, None),
            ["taskset", "-c", "1"]
        );
        assert!(l.server_prefix(Placement::Unpinned, None).is_empty());
        assert_eq!(l.client_prefix(Placement::Quota), ["taskset", "-c", "0"]);
        assert_eq!(l.server_cpus(Placement::Pinned), 1);
    }
}
