use std::collections::HashMap;

use super::*;

const STATUS: &str = "Name:\tcredbroker\nThreads:\t1\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed_list:\t0\n";

/// A read function over fixture files.
fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> io::Result<String> + use<> {
    let map: HashMap<PathBuf, String> = entries
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    move |p: &Path| {
        map.get(p)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

#[test]
fn cpu_lists() {
    assert_eq!(count_cpu_list("0-1"), Ok(2));
    assert_eq!(count_cpu_list("1"), Ok(1));
    assert_eq!(count_cpu_list("0-3,8,10-11\n"), Ok(7));
    assert!(count_cpu_list("").is_err());
    assert!(count_cpu_list("3-1").is_err());
    assert!(count_cpu_list("a-b").is_err());
    assert_eq!(cpus_allowed(STATUS), Ok(2));
    assert!(cpus_allowed("Name:\tx\n").is_err());
}

#[test]
fn cgroup_v2_cpu_max() {
    assert_eq!(parse_cpu_max("max 100000\n"), Ok(None));
    assert_eq!(parse_cpu_max("50000 100000\n"), Ok(Some(0.5)));
    assert_eq!(parse_cpu_max("150000 100000"), Ok(Some(1.5)));
    assert_eq!(parse_cpu_max("25000"), Ok(Some(0.25)));
    assert!(parse_cpu_max("").is_err());
    assert!(parse_cpu_max("lots 100000").is_err());
    assert!(parse_cpu_max("50000 0").is_err());
}

#[test]
fn cgroup_v1_cfs() {
    assert_eq!(parse_cfs("-1\n", "100000\n"), Ok(None));
    assert_eq!(parse_cfs("50000\n", "100000\n"), Ok(Some(0.5)));
    assert_eq!(parse_cfs("200000", "100000"), Ok(Some(2.0)));
    assert!(parse_cfs("x", "100000").is_err());
}

#[test]
fn worker_threads_setting() {
    assert_eq!("auto".parse(), Ok(WorkerThreads::Auto));
    assert_eq!("AUTO".parse(), Ok(WorkerThreads::Auto));
    assert_eq!("0".parse(), Ok(WorkerThreads::Auto));
    assert_eq!(
        " 3 ".parse(),
        Ok(WorkerThreads::Fixed(NonZeroUsize::new(3).unwrap()))
    );
    assert!("many".parse::<WorkerThreads>().is_err());
    assert!("-1".parse::<WorkerThreads>().is_err());
}

fn n(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap()
}

#[test]
fn choosing() {
    let unlimited = Cpus {
        affinity: Some(8),
        quota: None,
    };
    let half = Cpus {
        affinity: Some(8),
        quota: Some(0.5),
    };
    let pinned = Cpus {
        affinity: Some(1),
        quota: None,
    };
    let one_and_a_half = Cpus {
        affinity: Some(8),
        quota: Some(1.5),
    };
    let unknown = Cpus {
        affinity: None,
        quota: None,
    };
    use WorkerThreads::{Auto, Fixed};
    assert_eq!(choose(Auto, Flavor::Auto, &half), Shape::CurrentThread);
    assert_eq!(choose(Auto, Flavor::Auto, &pinned), Shape::CurrentThread);
    assert_eq!(
        choose(Auto, Flavor::Auto, &one_and_a_half),
        Shape::MultiThread(n(2))
    );
    assert_eq!(
        choose(Auto, Flavor::Auto, &unlimited),
        Shape::MultiThread(n(8))
    );
    assert_eq!(unknown.usable(), n(4096));
    assert_eq!(
        choose(Fixed(n(1)), Flavor::Auto, &unlimited),
        Shape::CurrentThread
    );
    assert_eq!(
        choose(Fixed(n(1)), Flavor::MultiThread, &unlimited),
        Shape::MultiThread(n(1))
    );
    assert_eq!(
        choose(Fixed(n(2)), Flavor::Auto, &pinned),
        Shape::MultiThread(n(2))
    );
    assert_eq!(
        choose(Auto, Flavor::CurrentThread, &unlimited),
        Shape::CurrentThread
    );
    // A quota below one CPU still allows one thread.
    let tiny = Cpus {
        affinity: Some(2),
        quota: Some(0.01),
    };
    assert_eq!(tiny.usable(), n(1));
}

const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn v1_quota_in_own_group_and_ancestors() {
    let cgroup = "4:memory:/x\n1:cpu:/bench/inner\n0::/\n";
    let read = files(&[
        ("/proc/thread-self/status", STATUS),
        ("/proc/self/cgroup", cgroup),
        ("/proc/self/mountinfo", MOUNTINFO_V1),
        ("/sys/fs/cgroup/cpu/bench/inner/cpu.cfs_quota_us", "-1\n"),
        (
            "/sys/fs/cgroup/cpu/bench/inner/cpu.cfs_period_us",
            "100000\n",
        ),
        ("/sys/fs/cgroup/cpu/bench/cpu.cfs_quota_us", "50000\n"),
        ("/sys/fs/cgroup/cpu/bench/cpu.cfs_period_us", "100000\n"),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n"),
        ("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n"),
        ("/sys/fs/cgroup/unified/cpu.max", "max 100000\n"),
    ]);
    let (cpus, problems) = detect(read);
    assert_eq!(problems, vec![]);
    assert_eq!(
        cpus,
        Cpus {
            affinity: Some(2),
            quota: Some(0.5)
        }
    );
    assert_eq!(
        choose(WorkerThreads::Auto, Flavor::Auto, &cpus),
        Shape::CurrentThread
    );
}

#[test]
fn v2_in_a_cgroup_namespace() {
    // Inside a container with its own cgroup namespace: the process sees `/`, the mount's root.
    let mountinfo = "1200 1100 0:27 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw,nsdelegate\n";
    let read = files(&[
        ("/proc/thread-self/status", "Cpus_allowed_list:\t0-7\n"),
        ("/proc/self/cgroup", "0::/\n"),
        ("/proc/self/mountinfo", mountinfo),
        ("/sys/fs/cgroup/cpu.max", "150000 100000\n"),
    ]);
    let (cpus, problems) = detect(read);
    assert!(problems.is_empty());
    assert_eq!(cpus.quota, Some(1.5));
    assert_eq!(cpus.usable(), n(2));
}

#[test]
fn v2_host_view_of_a_pod() {
    let path = "/kubepods.slice/kubepods-burstable.slice/pod1.slice/cri-containerd-abc.scope";
    let mountinfo = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
    let cgroup = format!("0::{path}\n");
    let own = format!("/sys/fs/cgroup{path}/cpu.max");
    let pod = "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/pod1.slice/cpu.max";
    let read = files(&[
        ("/proc/thread-self/status", "Cpus_allowed_list:\t0-15\n"),
        ("/proc/self/cgroup", &cgroup),
        ("/proc/self/mountinfo", mountinfo),
        (&own, "max 100000\n"),
        (pod, "50000 100000\n"),
    ]);
    let (cpus, _) = detect(read);
    assert_eq!(cpus.quota, Some(0.5));
    assert_eq!(cpus.affinity, Some(16));
}

#[test]
fn mount_of_a_subtree() {
    // A v1 mount showing only part of the hierarchy (mountinfo root field not `/`).
    let mountinfo = "50 40 0:40 /kubepods/pod1/c1 /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n";
    let read = files(&[
        ("/proc/thread-self/status", "Cpus_allowed_list:\t0\n"),
        ("/proc/self/cgroup", "3:cpu,cpuacct:/kubepods/pod1/c1\n"),
        ("/proc/self/mountinfo", mountinfo),
        ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "25000\n"),
        ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
    ]);
    let (cpus, _) = detect(read);
    assert_eq!(
        cpus,
        Cpus {
            affinity: Some(1),
            quota: Some(0.25)
        }
    );
}

#[test]
fn unreadable_or_odd_files_mean_no_limit() {
    // No /proc at all: no quota, affinity from the standard library.
    let (cpus, problems) = detect(files(&[]));
    assert!(problems.is_empty());
    assert_eq!(cpus.quota, None);
    // A garbled cpu.max is reported, and ignored.
    let read = files(&[
        ("/proc/thread-self/status", STATUS),
        ("/proc/self/cgroup", "0::/a\n"),
        (
            "/proc/self/mountinfo",
            "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        ),
        ("/sys/fs/cgroup/a/cpu.max", "garbage\n"),
    ]);
    let (cpus, problems) = detect(read);
    assert_eq!(cpus.quota, None);
    assert_eq!(problems.len(), 1);
    // Paths that try to climb out of the mount are not followed.
    assert_eq!(under_mount("/", Path::new("/m"), "/../etc"), None);
    assert_eq!(under_mount("/", Path::new("/m"), "relative"), None);
    assert_eq!(
        under_mount("/a", Path::new("/m"), "/ab"),
        Some(PathBuf::from("/m"))
    );
}

#[test]
fn mountinfo_escapes() {
    assert_eq!(
        unescape(r"/sys/fs/cgroup/with\040space"),
        "/sys/fs/cgroup/with space"
    );
    assert_eq!(unescape(r"\04"), r"\04");
}
