//! Which cgroup hierarchies this machine has (pure v2, pure v1 or hybrid) and where the
//! `--cgroup.parent` directory lives in each of them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use procfs::process::MountInfos;
use procfs::ProcessCGroups;
use procfs::FromBufRead;

/// v1 controllers whose files we sample. cpuset, devices and freezer are left alone: we read
/// nothing from them, and a v1 cpuset child starts with no CPUs, which would make moves fail.
pub const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids", "blkio"];
/// v2 controllers we enable for container cgroups.
pub const V2_CONTROLLERS: &[&str] = &["cpu", "io", "memory", "pids"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only cgroup2, every controller in one hierarchy.
    V2,
    /// Only v1 hierarchies.
    V1,
    /// v1 controllers plus a cgroup2 mount (usually /sys/fs/cgroup/unified) without them.
    Hybrid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One mounted hierarchy we place containers in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// v1: the controllers bound to this mount (only those we care about). v2: empty.
    pub controllers: Vec<String>,
    /// Mount point, e.g. /sys/fs/cgroup/memory.
    pub mount: PathBuf,
    /// The agent's own cgroup here, as a directory.
    pub own_dir: PathBuf,
    /// The `--cgroup.parent` directory here.
    pub parent_dir: PathBuf,
    /// The cgroup path of `parent_dir` as the kernel names it (from the hierarchy root).
    pub parent_path: String,
}

impl Hierarchy {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub mode: Mode,
    pub hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// Read this process's mounts and cgroups.
    pub fn detect(parent: &str) -> Result<Layout> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        Layout::from_proc(&mountinfo, &cgroups, parent)
    }

    /// The pure part of `detect`, on the text of /proc/self/mountinfo and /proc/self/cgroup.
    pub fn from_proc(mountinfo: &str, self_cgroup: &str, parent: &str) -> Result<Layout> {
        let mounts = MountInfos::from_buf_read(mountinfo.as_bytes()).context("parsing /proc/self/mountinfo")?;
        let own = ProcessCGroups::from_buf_read(self_cgroup.as_bytes()).context("parsing /proc/self/cgroup")?;
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for m in mounts.iter() {
            let (version, controllers) = match m.fs_type.as_str() {
                "cgroup2" => (Version::V2, Vec::new()),
                "cgroup" => {
                    let ours: Vec<String> = V1_CONTROLLERS
                        .iter()
                        .filter(|c| m.super_options.contains_key(**c))
                        .map(|c| c.to_string())
                        .collect();
                    if ours.is_empty() {
                        continue;
                    }
                    (Version::V1, ours)
                }
                _ => continue,
            };
            // The same hierarchy may be mounted twice (bind mounts); keep the first.
            if hierarchies.iter().any(|h| h.version == version && h.controllers == controllers) {
                continue;
            }
            let own_path = own
                .0
                .iter()
                .find(|c| match version {
                    Version::V2 => c.hierarchy == 0,
                    Version::V1 => controllers.iter().all(|ctl| c.controllers.contains(ctl)),
                })
                .map(|c| c.pathname.clone())
                .with_context(|| format!("/proc/self/cgroup has no entry for the hierarchy at {}", m.mount_point.display()))?;
            let parent_path = if parent.starts_with('/') {
                parent.to_string()
            } else {
                join_cgroup_path(&own_path, parent)
            };
            let own_dir = dir_in_mount(&m.mount_point, &m.root, &own_path)?;
            let parent_dir = dir_in_mount(&m.mount_point, &m.root, &parent_path)?;
            hierarchies.push(Hierarchy { version, controllers, mount: m.mount_point.clone(), own_dir, parent_dir, parent_path });
        }
        let has_v1 = hierarchies.iter().any(|h| h.version == Version::V1);
        let has_v2 = hierarchies.iter().any(|h| h.version == Version::V2);
        let mode = match (has_v1, has_v2) {
            (true, true) => Mode::Hybrid,
            (true, false) => Mode::V1,
            (false, true) => Mode::V2,
            (false, false) => bail!("no cgroup hierarchy is mounted (looked for cgroup and cgroup2 in /proc/self/mountinfo)"),
        };
        // Every v1 controller we read must be somewhere, or some series would silently vanish.
        if mode != Mode::V2 {
            for c in V1_CONTROLLERS {
                if !hierarchies.iter().any(|h| h.has(c)) {
                    tracing::warn!(controller = c, "cgroup v1 controller is not mounted; its metrics are missing");
                }
            }
        }
        Ok(Layout { mode, hierarchies })
    }

    /// The directories `pid` is in now, one per hierarchy (same order as `hierarchies`).
    pub fn cgroup_dirs_of(&self, pid: i32) -> Result<Vec<PathBuf>> {
        let path = format!("/proc/{pid}/cgroup");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let groups = ProcessCGroups::from_buf_read(text.as_bytes()).with_context(|| format!("parsing {path}"))?;
        self.hierarchies
            .iter()
            .map(|h| {
                let cg = groups
                    .0
                    .iter()
                    .find(|c| match h.version {
                        Version::V2 => c.hierarchy == 0,
                        Version::V1 => h.controllers.iter().all(|ctl| c.controllers.contains(ctl)),
                    })
                    .with_context(|| format!("{path} has no entry for {}", h.mount.display()))?;
                Ok(h.mount.join(cg.pathname.trim_start_matches('/')))
            })
            .collect()
    }

    /// The cgroup v2 hierarchy (pure v2, or the unified one in hybrid mode).
    pub fn unified(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.version == Version::V2)
    }

    /// The v1 hierarchy that carries `controller`.
    pub fn v1(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.version == Version::V1 && h.has(controller))
    }

    /// The hierarchy whose cgroup path names a container in the `id` label: the unified one
    /// where it exists (what systemd and cAdvisor show), else the memory hierarchy.
    pub fn primary(&self) -> &Hierarchy {
        self.unified()
            .or_else(|| self.v1("memory"))
            .unwrap_or(&self.hierarchies[0])
    }
}

fn join_cgroup_path(base: &str, rel: &str) -> String {
    if base == "/" {
        format!("/{rel}")
    } else {
        format!("{}/{rel}", base.trim_end_matches('/'))
    }
}

/// A cgroup path as a directory: the mount shows the hierarchy from `mount_root` down.
fn dir_in_mount(mount_point: &Path, mount_root: &str, cgroup_path: &str) -> Result<PathBuf> {
    let root = mount_root.trim_end_matches('/');
    let below = cgroup_path.strip_prefix(root).filter(|rest| rest.is_empty() || rest.starts_with('/'));
    let Some(below) = below else {
        bail!(
            "cgroup {cgroup_path} is outside the part of the hierarchy mounted at {} (mount root {mount_root})",
            mount_point.display()
        );
    };
    Ok(mount_point.join(below.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = include_str!("../../tests/fixtures/proc/hybrid.mountinfo");
    const HYBRID_CGROUP: &str = include_str!("../../tests/fixtures/proc/hybrid.cgroup");
    const V2_MOUNTINFO: &str = include_str!("../../tests/fixtures/proc/v2.mountinfo");
    const V2_CGROUP: &str = include_str!("../../tests/fixtures/proc/v2.cgroup");

    #[test]
    fn hybrid_with_absolute_parent() {
        let l = Layout::from_proc(HYBRID_MOUNTINFO, HYBRID_CGROUP, "/metric_gateway").unwrap();
        assert_eq!(l.mode, Mode::Hybrid);
        let mem = l.v1("memory").unwrap();
        assert_eq!(mem.parent_dir, PathBuf::from("/sys/fs/cgroup/memory/metric_gateway"));
        assert_eq!(l.unified().unwrap().parent_dir, PathBuf::from("/sys/fs/cgroup/unified/metric_gateway"));
        assert!(l.v1("cpuacct").is_some() && l.v1("pids").is_some() && l.v1("blkio").is_some());
        // cpuset, devices, freezer and name=systemd are not ours.
        assert_eq!(l.hierarchies.len(), 6);
        assert_eq!(l.primary().parent_path, "/metric_gateway");
    }

    #[test]
    fn hybrid_with_relative_parent_goes_below_own_cgroup() {
        let l = Layout::from_proc(HYBRID_MOUNTINFO, HYBRID_CGROUP, "apptheus").unwrap();
        let mem = l.v1("memory").unwrap();
        assert_eq!(mem.own_dir, PathBuf::from("/sys/fs/cgroup/memory/process_api/18667c3b"));
        assert_eq!(mem.parent_dir, PathBuf::from("/sys/fs/cgroup/memory/process_api/18667c3b/apptheus"));
        assert_eq!(mem.parent_path, "/process_api/18667c3b/apptheus");
        assert_eq!(l.v1("cpu").unwrap().parent_dir, PathBuf::from("/sys/fs/cgroup/cpu/apptheus"));
    }

    #[test]
    fn pure_v2_with_delegated_relative_parent() {
        let l = Layout::from_proc(V2_MOUNTINFO, V2_CGROUP, "containers").unwrap();
        assert_eq!(l.mode, Mode::V2);
        assert_eq!(l.hierarchies.len(), 1);
        let u = l.unified().unwrap();
        assert_eq!(u.own_dir, PathBuf::from("/sys/fs/cgroup/system.slice/apptheus.service"));
        assert_eq!(u.parent_dir, PathBuf::from("/sys/fs/cgroup/system.slice/apptheus.service/containers"));
        assert_eq!(u.parent_path, "/system.slice/apptheus.service/containers");
    }

    #[test]
    fn mount_roots_other_than_slash_are_honoured() {
        let mi = "30 20 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = Layout::from_proc(mi, "0::/kubepods/pod1\n", "x").unwrap();
        assert_eq!(l.unified().unwrap().parent_dir, PathBuf::from("/sys/fs/cgroup/pod1/x"));
        assert!(Layout::from_proc(mi, "0::/elsewhere\n", "x").is_err());
    }

    #[test]
    fn no_cgroups_is_an_error() {
        let err = Layout::from_proc("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n", "0::/\n", "/x").unwrap_err();
        assert!(err.to_string().contains("no cgroup hierarchy"));
    }
}
