//! What a process keeps only while it stays below a cgroup: limits, device and socket rules
//! (cgroup BPF programs), and the tracking of a scheduler or service manager. Placement asks
//! this before it moves a launcher out of its cgroup (`--placement`): a move must not drop any
//! of it unless the admin chose so.
//!
//! Each controller file is read once here, with its "no limit" value; a file this kernel does
//! not have limits nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::ebpf::query::{programs_at, BPF_ATTACH_TYPES};

use crate::cgroup::{Hierarchy, Version};

/// One thing set on a cgroup that a process would leave by moving out from under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The cgroup it is set on (a directory).
    pub cgroup: PathBuf,
    pub what: String,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.what, self.cgroup.display())
    }
}

/// v2 files and the value meaning "not set".
const V2_FILES: &[(&str, Unset)] = &[
    ("memory.max", Unset::Is("max")),
    ("memory.high", Unset::Is("max")),
    ("memory.swap.max", Unset::Is("max")),
    ("memory.low", Unset::Is("0")),
    ("memory.min", Unset::Is("0")),
    ("pids.max", Unset::Is("max")),
    ("cpu.max", Unset::FirstWordIs("max")),
    ("cpu.weight", Unset::Is("100")),
    ("cpuset.cpus", Unset::Empty),
    ("cpuset.mems", Unset::Empty),
    ("io.max", Unset::Empty),
    ("cgroup.freeze", Unset::Is("0")),
];

/// v1 files (each in the hierarchy that carries its controller) and the value meaning "not set".
const V1_FILES: &[(&str, Unset)] = &[
    ("memory.limit_in_bytes", Unset::Unlimited),
    ("memory.memsw.limit_in_bytes", Unset::Unlimited),
    ("memory.soft_limit_in_bytes", Unset::Unlimited),
    ("pids.max", Unset::Is("max")),
    ("cpu.cfs_quota_us", Unset::Is("-1")),
    ("cpu.shares", Unset::Is("1024")),
    ("blkio.throttle.read_bps_device", Unset::Empty),
    ("blkio.throttle.write_bps_device", Unset::Empty),
    ("blkio.throttle.read_iops_device", Unset::Empty),
    ("blkio.throttle.write_iops_device", Unset::Empty),
];

#[derive(Clone, Copy)]
enum Unset {
    Is(&'static str),
    FirstWordIs(&'static str),
    Empty,
    /// v1 memory: "no limit" is PAGE_COUNTER_MAX in bytes, which depends on the page size.
    Unlimited,
}

impl Unset {
    fn matches(self, text: &str) -> bool {
        let t = text.trim();
        match self {
            Unset::Is(v) => t == v,
            Unset::FirstWordIs(v) => t.split_whitespace().next() == Some(v),
            Unset::Empty => t.is_empty(),
            Unset::Unlimited => t.parse::<u64>().is_ok_and(|n| n >= 1 << 62),
        }
    }
}

/// The directories a move from `from` to (below) `to` takes a process out from under: `from` and
/// its ancestors that are not ancestors of `to`, deepest first. Empty when `to` is `from` or
/// below it.
pub fn left_behind(from: &Path, to: &Path) -> Vec<PathBuf> {
    from.ancestors()
        .take_while(|dir| !to.starts_with(dir))
        .map(Path::to_path_buf)
        .collect()
}

/// What to look for in [`dropped_by_move`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Everything (for the warning of `--placement=move`).
    All,
    /// Stop at the first thing found (enough for `auto` to nest): the cheap checks go first,
    /// the scheduler's names (no system call), then the limit files, then cgroup BPF programs.
    First,
}

/// Everything set on the cgroups a move from `from` to `to` leaves, in one hierarchy (with
/// [`Search::First`], at most one thing).
pub fn dropped_by_move(h: &Hierarchy, from: &Path, to: &Path, search: Search) -> Vec<Constraint> {
    let mut out = Vec::new();
    let left = left_behind(from, to);
    let left: Vec<&PathBuf> = left.iter().filter(|d| d.starts_with(&h.mount) && **d != h.mount).collect();
    if search == Search::First {
        if let Some((dir, owner)) = left.iter().find_map(|d| Some((*d, tracked_by(d)?))) {
            return vec![Constraint { cgroup: dir.clone(), what: owner }];
        }
    }
    for dir in left.iter().copied() {
        let files: &[(&str, Unset)] = match h.version {
            Version::V2 => V2_FILES,
            Version::V1 => V1_FILES,
        };
        for (file, unset) in files {
            // hugetlb limits are per page size: hugetlb.2MB.max, hugetlb.1GB.max, ...
            let Ok(text) = std::fs::read_to_string(dir.join(file)) else { continue };
            if !unset.matches(&text) {
                out.push(Constraint { cgroup: dir.clone(), what: format!("{file}={}", one_line(&text)) });
            }
        }
        if h.version == Version::V2 {
            out.extend(hugetlb_limits(dir));
        }
        if let Some(owner) = tracked_by(dir) {
            out.push(Constraint { cgroup: dir.clone(), what: owner });
        }
        if search == Search::First && !out.is_empty() {
            out.truncate(1);
            return out;
        }
    }
    if h.version == Version::V2 && !left.is_empty() {
        out.extend(bpf_programs_dropped(from, to));
    }
    out
}

/// Programs in force (effective) at `from` that are not in force at `to`.
fn bpf_programs_dropped(from: &Path, to: &Path) -> Vec<Constraint> {
    // The target may not exist yet: what will be in force there is what its nearest existing
    // ancestor has (programs are inherited).
    let Some(to) = to.ancestors().find(|d| d.is_dir()) else { return Vec::new() };
    let mut out = Vec::new();
    for (attach_type, what) in BPF_ATTACH_TYPES {
        let (Some(here), Some(there)) = (programs_at(from, *attach_type, true), programs_at(to, *attach_type, true))
        else {
            continue;
        };
        let dropped = here.ids.iter().filter(|id| !there.ids.contains(id)).count();
        if dropped > 0 {
            out.push(Constraint { cgroup: from.to_path_buf(), what: format!("{dropped} {what} BPF program(s) in force") });
        }
    }
    out
}


fn hugetlb_limits(dir: &Path) -> Vec<Constraint> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("hugetlb.") && name.ends_with(".max") && !name.ends_with(".rsvd.max") {
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                if !Unset::Is("max").matches(&text) {
                    out.push(Constraint { cgroup: dir.to_path_buf(), what: format!("{name}={}", one_line(&text)) });
                }
            }
        }
    }
    out.sort_by(|a, b| a.what.cmp(&b.what));
    out
}

/// A scheduler or service manager that finds its processes by this cgroup: a Slurm job or step,
/// or a systemd unit (scope, service, slice).
fn tracked_by(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_string_lossy();
    if name.strip_prefix("job_").is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())) {
        return Some(format!("the tracking of Slurm {name}"));
    }
    if name.strip_prefix("step_").is_some() {
        return Some(format!("the tracking of Slurm {name}"));
    }
    let unit = [".scope", ".service", ".slice"].iter().any(|s| name.ends_with(s));
    (unit && name != "-.slice").then(|| format!("the tracking of systemd unit {name}"))
}

fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 80 {
        format!("{}...", joined.chars().take(80).collect::<String>())
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Version;

    fn v2(mount: &Path) -> Hierarchy {
        Hierarchy {
            version: Version::V2,
            controllers: Vec::new(),
            mount: mount.to_path_buf(),
            own_dir: mount.to_path_buf(),
            parent_dir: mount.join("metric_gateway"),
            parent_path: "/metric_gateway".into(),
        }
    }

    #[test]
    fn left_behind_is_the_ancestors_not_shared() {
        let from = Path::new("/sys/fs/cgroup/system.slice/job_42/step_0/user/task_0");
        let gone = left_behind(from, Path::new("/sys/fs/cgroup/metric_gateway/starter_9"));
        assert_eq!(gone.len(), 5);
        assert_eq!(gone[0], from);
        assert_eq!(gone[4], Path::new("/sys/fs/cgroup/system.slice"));
        assert!(left_behind(from, &from.join("starter_9")).is_empty());
        assert_eq!(left_behind(Path::new("/sys/fs/cgroup"), Path::new("/sys/fs/cgroup/x")), Vec::<PathBuf>::new());
    }

    /// A pure v2 tree as the kernel shows it (file contents from a 6.1 kernel), Slurm layout.
    #[test]
    fn slurm_job_limits_are_found_in_a_v2_fixture_tree() {
        let root = tempfile::tempdir().unwrap();
        let mount = root.path();
        let job = mount.join("system.slice/slurmstepd.scope/job_42");
        let task = job.join("step_0/user/task_0");
        std::fs::create_dir_all(&task).unwrap();
        for dir in [mount.join("system.slice"), mount.join("system.slice/slurmstepd.scope"), job.clone(), task.clone()] {
            for (file, value) in [("memory.max", "max\n"), ("pids.max", "max\n"), ("cpu.max", "max 100000\n"), ("io.max", ""), ("cpuset.cpus", "\n")] {
                std::fs::write(dir.join(file), value).unwrap();
            }
        }
        std::fs::write(job.join("memory.max"), "67108864\n").unwrap();
        std::fs::write(job.join("pids.max"), "64\n").unwrap();
        std::fs::write(job.join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(job.join("cpuset.cpus"), "0\n").unwrap();
        std::fs::write(job.join("hugetlb.2MB.max"), "0\n").unwrap();
        std::fs::write(job.join("hugetlb.2MB.rsvd.max"), "0\n").unwrap();
        let h = v2(mount);
        let dropped = dropped_by_move(&h, &task, &mount.join("metric_gateway/starter_1"), Search::All);
        let on_job: Vec<&str> = dropped.iter().filter(|c| c.cgroup == job).map(|c| c.what.as_str()).collect();
        assert_eq!(
            on_job,
            vec![
                "memory.max=67108864",
                "pids.max=64",
                "cpu.max=50000 100000",
                "cpuset.cpus=0",
                "hugetlb.2MB.max=0",
                "the tracking of Slurm job_42"
            ]
        );
        assert!(dropped.iter().any(|c| c.what == "the tracking of systemd unit slurmstepd.scope"));
        assert!(dropped.iter().any(|c| c.what == "the tracking of Slurm step_0"));
        // nothing is dropped by going deeper
        assert!(dropped_by_move(&h, &task, &task.join("starter_1"), Search::All).is_empty());
        // auto needs one reason: the scheduler's name, found without reading a file
        let first = dropped_by_move(&h, &task, &mount.join("metric_gateway/starter_1"), Search::First);
        assert_eq!(first.iter().map(|c| c.to_string()).collect::<Vec<_>>().len(), 1);
        assert_eq!(first[0].what, "the tracking of Slurm step_0");
        // a limit alone (no scheduler's name) is found too, and stops the search
        let plain = mount.join("limited/child");
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("memory.max"), "max\n").unwrap();
        std::fs::write(mount.join("limited/memory.max"), "1048576\n").unwrap();
        std::fs::write(mount.join("limited/pids.max"), "10\n").unwrap();
        let first = dropped_by_move(&h, &plain, &mount.join("metric_gateway/starter_1"), Search::First);
        assert_eq!(first.iter().map(|c| c.what.as_str()).collect::<Vec<_>>(), vec!["memory.max=1048576"]);
    }

    #[test]
    fn v1_memory_limits_use_the_kernel_unlimited_value() {
        let root = tempfile::tempdir().unwrap();
        let mount = root.path().join("memory");
        let from = mount.join("slurm/uid_0/job_7/step_0/task_0");
        std::fs::create_dir_all(&from).unwrap();
        for dir in from.ancestors().take(5) {
            std::fs::write(dir.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
            std::fs::write(dir.join("memory.soft_limit_in_bytes"), "9223372036854771712\n").unwrap();
        }
        std::fs::write(mount.join("slurm/uid_0/job_7/memory.limit_in_bytes"), "104857600\n").unwrap();
        let h = Hierarchy {
            version: Version::V1,
            controllers: vec!["memory".into()],
            mount: mount.clone(),
            own_dir: mount.clone(),
            parent_dir: mount.join("metric_gateway"),
            parent_path: "/metric_gateway".into(),
        };
        let dropped: Vec<String> = dropped_by_move(&h, &from, &mount.join("metric_gateway/x"), Search::All).iter().map(|c| c.to_string()).collect();
        assert!(dropped.iter().any(|c| c.starts_with("memory.limit_in_bytes=104857600 on ")), "{dropped:?}");
        assert!(!dropped.iter().any(|c| c.contains("soft_limit")), "{dropped:?}");
    }

    #[test]
    fn unset_values() {
        assert!(Unset::Is("max").matches("max\n"));
        assert!(!Unset::Is("max").matches("1000\n"));
        assert!(Unset::FirstWordIs("max").matches("max 100000\n"));
        assert!(!Unset::FirstWordIs("max").matches("50000 100000\n"));
        assert!(Unset::Empty.matches("\n"));
        assert!(Unset::Unlimited.matches("9223372036854771712"));
        assert!(Unset::Unlimited.matches("9223372036854775807"));
        assert!(!Unset::Unlimited.matches("104857600"));
        assert!(!Unset::Unlimited.matches("garbage"));
    }
}
