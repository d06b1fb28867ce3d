//! Restart recovery: container cgroups left under `--cgroup.parent` by an earlier agent (crash,
//! upgrade, SIGKILL), and those it nested in their callers' cgroups (found anywhere by their
//! mark, [`NESTED_MARK`]), are re-adopted when processes still run in them, and removed when
//! empty.
//! A half-made placement (the agent died between hierarchies) is completed: every process
//! found in any hierarchy's directory is moved into all of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cgroup::{ContainerCgroup, Layout, AGENT_LEAF, NESTED_MARK};
use crate::store::{ContainerInfo, Store};

/// What the scan found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Containers to monitor again.
    pub adopted: Vec<Adopted>,
    /// Empty leftovers that were removed.
    pub removed: Vec<String>,
}

/// A container found running, to monitor again.
#[derive(Debug)]
pub struct Adopted {
    pub id: String,
    pub cg: ContainerCgroup,
    /// The real uid of its launcher when that still runs in it, else of one of its processes
    /// (what the container caps count it under); None if they all exited meanwhile.
    pub uid: Option<u32>,
}

pub fn scan(layout: &Layout, store: &Store) -> Recovered {
    let mut names = BTreeSet::new();
    for h in &layout.hierarchies {
        let Ok(entries) = std::fs::read_dir(&h.parent_dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name != AGENT_LEAF {
                    names.insert(name);
                }
            }
        }
    }
    let mut out = Recovered::default();
    let nested = find_nested(layout);
    let mut candidates: Vec<(String, ContainerCgroup)> = names
        .into_iter()
        .filter(|n| !nested.contains_key(n))
        .map(|n| {
            let cg = ContainerCgroup::at(layout, &n);
            (n, cg)
        })
        .collect();
    candidates.extend(nested.into_iter().map(|(n, found)| {
        let cg = ContainerCgroup::from_dirs(layout, &found);
        (n, cg)
    }));
    for (name, cg) in candidates {
        let pids = pids_anywhere(&cg);
        if pids.is_empty() {
            match cg.remove() {
                Ok(()) => tracing::info!(container = %name, "removed an empty container cgroup left by an earlier run"),
                Err(err) => tracing::warn!(container = %name, err = %format!("{err:#}"), "cannot remove a leftover container cgroup"),
            }
            out.removed.push(name);
            continue;
        }
        // Complete a placement that was cut short: every hierarchy, every process.
        for d in &cg.dirs {
            if let Err(err) = std::fs::create_dir_all(&d.dir) {
                tracing::warn!(path = %d.dir.display(), %err, "cannot recreate a missing container cgroup");
            }
        }
        for pid in &pids {
            let _ = cg.attach(*pid); // a process that exited meanwhile is fine
        }
        let info = match store.get(&name) {
            Some(entry) => (*entry.info).clone(),
            None => info_from_name(&name, &cg, pids[0]),
        };
        let owner = if pids.contains(&info.pid) { info.pid } else { pids[0] };
        let uid = procfs::process::Process::new(owner).and_then(|p| p.status()).ok().map(|s| s.ruid);
        store.restore_live(info);
        tracing::info!(container = %name, processes = pids.len(), "re-adopted a running container from an earlier run");
        out.adopted.push(Adopted { id: name, cg, uid });
    }
    out
}

/// Directories at most this deep below a mount are searched for nested containers, and at most
/// this many in all: a bound for hierarchies that are not ours.
const NESTED_MAX_DEPTH: usize = 24;
const NESTED_MAX_DIRS: usize = 200_000;

/// Nested container cgroups by id: (hierarchy index, directory) for each hierarchy that has one.
fn find_nested(layout: &Layout) -> BTreeMap<String, Vec<(usize, PathBuf)>> {
    let mut found: BTreeMap<String, Vec<(usize, PathBuf)>> = BTreeMap::new();
    let mut budget = NESTED_MAX_DIRS;
    for (i, h) in layout.hierarchies.iter().enumerate() {
        let mut stack: Vec<(PathBuf, usize)> = vec![(h.mount.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) || budget == 0 {
                    continue;
                }
                budget -= 1;
                let path = e.path();
                if let Some(id) = mark_of(&path) {
                    // A container's own children (an inner runtime's) are not containers.
                    found.entry(id).or_default().push((i, path));
                } else if depth < NESTED_MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            }
        }
    }
    if budget == 0 {
        tracing::warn!(dirs = NESTED_MAX_DIRS, "stopped looking for nested containers: too many cgroups");
    }
    found
}

fn mark_of(dir: &Path) -> Option<String> {
    let mut buf = [0u8; 256];
    let n = rustix::fs::getxattr(dir, NESTED_MARK, &mut buf[..]).ok()?;
    let id = std::str::from_utf8(buf.get(..n)?).ok()?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
}

/// Pids in the container's directory of any hierarchy (deduplicated, sorted).
fn pids_anywhere(cg: &ContainerCgroup) -> Vec<i32> {
    let mut all = BTreeSet::new();
    for d in &cg.dirs {
        if let Ok(text) = std::fs::read_to_string(d.dir.join("cgroup.procs")) {
            all.extend(crate::kernfs::pids(&text).flatten().filter(|p| *p > 0));
        }
    }
    all.into_iter().collect()
}

/// Without a persisted record the directory name `<exe>_<pid>` still gives the id and pid.
fn info_from_name(name: &str, cg: &ContainerCgroup, any_pid: i32) -> ContainerInfo {
    let (exe, pid) = match name.rsplit_once('_').and_then(|(e, p)| Some((e, p.parse::<i32>().ok()?))) {
        Some((e, p)) => (e.to_string(), p),
        None => (name.to_string(), any_pid),
    };
    let owner = if std::path::Path::new(&format!("/proc/{pid}")).exists() { pid } else { any_pid };
    let user = procfs::process::Process::new(owner)
        .and_then(|p| p.uid())
        .ok()
        .map(crate::placement::user_names::name_of)
        .unwrap_or_default();
    let started = cg
        .dirs
        .first()
        .and_then(|d| std::fs::metadata(&d.dir).ok())
        .and_then(|m| m.modified().ok())
        .unwrap_or_else(SystemTime::now);
    // The launcher still running: what it runs, as at placement; else its executable's name.
    let image = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(real) if owner == pid => super::image::image_of(pid, &real),
        _ => exe.clone(),
    };
    ContainerInfo { id: name.to_string(), cgroup_path: cg.path.clone(), pid, user, exe: exe.into(), image, started, labels: Vec::new() }
}
