//! Restart recovery: container cgroups left under `--cgroup.parent` by an earlier agent (crash,
//! upgrade, SIGKILL) are re-adopted when processes still run in them, and removed when empty.
//! A half-made placement (the agent died between hierarchies) is completed: every process
//! found in any hierarchy's directory is moved into all of them.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::cgroup::{ContainerCgroup, Layout, AGENT_LEAF};
use crate::store::{ContainerInfo, Store};

/// What the scan found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Containers to monitor again, with their cgroups.
    pub adopted: Vec<(String, ContainerCgroup)>,
    /// Empty leftovers that were removed.
    pub removed: Vec<String>,
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
    for name in names {
        let cg = ContainerCgroup::at(layout, &name);
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
        store.restore_live(info);
        tracing::info!(container = %name, processes = pids.len(), "re-adopted a running container from an earlier run");
        out.adopted.push((name, cg));
    }
    out
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
        .map(crate::user_names::name_of)
        .unwrap_or_default();
    let started = cg
        .dirs
        .first()
        .and_then(|d| std::fs::metadata(&d.dir).ok())
        .and_then(|m| m.modified().ok())
        .unwrap_or_else(SystemTime::now);
    ContainerInfo { id: name.to_string(), cgroup_path: cg.path.clone(), pid, user, exe: exe.into(), started, labels: Vec::new() }
}
