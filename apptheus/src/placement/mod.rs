//! Placement: where a verified launcher's container cgroup goes, moving the launcher and its
//! descendants in, and who the container is (user, job labels). One concern per file:
//!
//! - [`decide`] and [`constraints`]: move to `--cgroup.parent` or nest in the caller's cgroup;
//! - [`proctree`]: the launcher's descendants from /proc;
//! - [`cgroup_labels`], [`environ`], [`image`], [`user_names`]: the container's labels;
//! - [`recovery`]: containers an earlier agent left, found again at start.

pub mod cgroup_labels;
pub mod constraints;
mod decide;
pub mod environ;
pub mod image;
pub mod proctree;
pub mod recovery;
pub mod user_names;

pub use decide::{decide, Decision, Placement};

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Result;
use prometheus::IntGauge;

use crate::cgroup::{AttachError, ContainerCgroup, Layout};
use crate::ebpf::Counting;
use crate::store::{ContainerInfo, Store};
use cgroup_labels::CgroupLabels;

/// What placing a launcher needs: the layout, the mode, the store it registers containers in,
/// the label sources, the eBPF counting to start, and the gauge of live containers.
pub struct Placer {
    pub layout: Arc<Layout>,
    pub mode: Placement,
    pub store: Arc<Store>,
    /// Launcher environment variables exported as labels.
    pub env_labels: Vec<String>,
    /// Labels from the launcher's cgroup path (Slurm built in, `--metrics.cgroup-labels`).
    pub cgroup_labels: CgroupLabels,
    pub ebpf: Arc<Counting>,
    /// `apptheus_containers`.
    pub containers: IntGauge,
}

/// A verified launcher, as placement needs it.
pub struct Caller {
    pub pid: i32,
    /// Real uid (the user who started it, also for set-uid launchers).
    pub uid: u32,
    pub exe: PathBuf,
    /// The container id, `<exe basename>_<pid>`.
    pub id: String,
}

impl Placer {
    /// Create the container's cgroup and move the caller and all its descendants in (blocking).
    pub fn place(&self, caller: &Caller) -> Result<Placed, PlaceError> {
        if let Some(existing) = self.store.find_by_pid(caller.pid) {
            return Ok(Placed { info: (*existing).clone(), cgroup: None });
        }
        let id = caller.id.clone();
        let origin = self.layout.cgroup_dirs_of(caller.pid).map_err(|e| PlaceError::Failed(e.context(format!("pid {}", caller.pid))))?;
        // Who the caller is, from where it runs now (a user cannot forge a cgroup path).
        let from_cgroup = self.cgroup_labels.labels(&kernel_paths(&self.layout, &origin));
        let decision = decide(&self.layout, self.mode, &origin, &id);
        log_decision(&id, caller.pid, &decision);
        crate::support::faults::point("placement::decided");
        let cg = ContainerCgroup::create_in(&self.layout, &decision.parents, &id).map_err(|e| creation_error(e, &decision))?;
        crate::support::faults::point("placement::created");
        // Count in the kernel from before the first process arrives.
        let ebpf_id = cg.unified_dir().and_then(|dir| self.ebpf.watch(&id, dir));
        let mut moved: Vec<i32> = Vec::new();
        // On failure, put what was moved back where it was, then remove the new cgroups.
        let undo = |moved: &[i32]| {
            for pid in moved {
                for back in &origin {
                    let _ = std::fs::write(back.join("cgroup.procs"), pid.to_string());
                }
            }
            if let Some(cgid) = ebpf_id {
                self.ebpf.unwatch(cgid);
            }
            let _ = cg.remove();
        };
        match cg.attach(caller.pid) {
            Ok(()) => moved.push(caller.pid),
            Err(AttachError::Gone) => {
                undo(&moved);
                return Err(PlaceError::Gone(caller.pid));
            }
            Err(err) => {
                undo(&moved);
                return Err(PlaceError::Failed(anyhow::Error::new(err).context(format!("pid {}", caller.pid))));
            }
        }
        crate::support::faults::point("placement::caller_attached");
        // The launcher may still be forking while we move: repeat until a scan finds nothing new.
        for _ in 0..16 {
            let fresh: Vec<i32> = unmoved_descendants(caller.pid, &origin).into_iter().filter(|p| !moved.contains(p)).collect();
            if fresh.is_empty() {
                break;
            }
            for pid in fresh {
                match cg.attach(pid) {
                    Ok(()) => moved.push(pid),
                    Err(AttachError::Gone) => {}
                    Err(err) => {
                        undo(&moved);
                        return Err(PlaceError::Failed(anyhow::Error::new(err).context(format!("moving descendant pid {pid}"))));
                    }
                }
            }
        }
        let user = user_names::name_of(caller.uid);
        let info = ContainerInfo {
            id,
            cgroup_path: cg.path.clone(),
            pid: caller.pid,
            user,
            exe: caller.exe.clone(),
            image: image::image_of(caller.pid, &caller.exe),
            started: SystemTime::now(),
            labels: cgroup_labels::merge(from_cgroup, environ::env_labels(caller.pid, &self.env_labels)),
        };
        // Registered even if the launcher died just now: its descendants are the container, and
        // the monitor removes the cgroup as soon as it is empty.
        self.store.insert(info.clone());
        self.containers.set(self.store.live_count() as i64);
        crate::support::faults::point("placement::placed");
        Ok(Placed { info, cgroup: Some((cg, ebpf_id)) })
    }
}

/// The descendants of `pid` still in its original cgroups (`origin`): only those are moved, a
/// descendant that something else placed elsewhere is left there.
fn unmoved_descendants(pid: i32, origin: &[PathBuf]) -> Vec<i32> {
    match proctree::descendants_from_children_lists(pid) {
        // Usually none: no need to read the origin's process list.
        Some(all) if all.is_empty() => all,
        Some(all) => match smallest_procs(origin) {
            Some(in_origin) => all.into_iter().filter(|p| in_origin.contains(p)).collect(),
            None => all,
        },
        // No children lists in this kernel: look among the processes of the smallest original
        // cgroup rather than all of /proc.
        None => match smallest_procs(origin) {
            Some(candidates) => proctree::descendants_among(pid, &candidates),
            None => proctree::descendants(pid),
        },
    }
}

/// The pids of the most specific of `dirs` (the deepest cgroup: a root cgroup lists every
/// process of the machine, so it is read only when the caller is in no other).
fn smallest_procs(dirs: &[std::path::PathBuf]) -> Option<Vec<i32>> {
    let deepest = dirs.iter().max_by_key(|d| d.components().count())?;
    let text = std::fs::read_to_string(deepest.join("cgroup.procs")).ok()?;
    Some(crate::kernfs::pids(&text).flatten().filter(|p| *p > 0).collect())
}

pub enum PlaceError {
    /// The caller exited before it was placed.
    Gone(i32),
    /// The caller's cgroup cannot take the container (gone, or at `cgroup.max.descendants`).
    Unplaceable(String),
    Failed(anyhow::Error),
}

/// What placement made of a launcher.
pub struct Placed {
    pub info: ContainerInfo,
    /// The new cgroup and its eBPF cgroup id (None when not counted in the kernel); `None` when
    /// the launcher connected again and gets its existing container.
    pub cgroup: Option<(ContainerCgroup, Option<u64>)>,
}

/// The caller's cgroup paths as the kernel names them, the primary hierarchy's first.
fn kernel_paths(layout: &Layout, dirs: &[PathBuf]) -> Vec<String> {
    let primary = layout.primary();
    let mut paths: Vec<(bool, String)> = layout
        .hierarchies
        .iter()
        .zip(dirs)
        .filter_map(|(h, d)| Some((h != primary, format!("/{}", d.strip_prefix(&h.mount).ok()?.display()))))
        .collect();
    paths.sort_by_key(|(secondary, _)| *secondary);
    paths.into_iter().map(|(_, p)| p).collect()
}

/// One line per container that moves away from something it was under (`--placement=move`),
/// naming all of it; a debug line for why `auto` nested.
fn log_decision(id: &str, pid: i32, decision: &Decision) {
    if decision.dropped.is_empty() {
        return;
    }
    let dropped: Vec<String> = decision.dropped.iter().map(|c| c.to_string()).collect();
    if decision.nested {
        tracing::debug!(container = %id, pid, reason = %dropped.join("; "), "nesting the container in the cgroup of its caller: a move would drop this");
    } else {
        tracing::warn!(container = %id, pid, dropped = %dropped.join("; "), "moving the container to --cgroup.parent drops what its caller was under (--placement=move)");
    }
}

/// A refusal when the caller's side is at fault (its cgroup went away, or takes no more
/// children); a failure otherwise.
fn creation_error(err: anyhow::Error, decision: &Decision) -> PlaceError {
    let io = err.chain().find_map(|c| c.downcast_ref::<std::io::Error>());
    match io.map(|e| (e.kind(), e.raw_os_error())) {
        Some((ErrorKind::NotFound, _)) if decision.nested => {
            PlaceError::Unplaceable(format!("the caller's cgroup went away during placement: {err:#}"))
        }
        Some((_, Some(libc::EAGAIN))) => {
            PlaceError::Unplaceable(format!("no room for another cgroup there (cgroup.max.descendants): {err:#}"))
        }
        _ => PlaceError::Failed(err),
    }
}

