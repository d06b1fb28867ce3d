//! Container cgroups: creating them, moving processes into them, removing them again; and
//! `--cgroup.parent` itself, with the v2 controllers delegated down to it.

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use super::files::CgroupFiles;
use super::layout::{Hierarchy, Layout, Mode, Version, V2_CONTROLLERS};
use crate::kernfs;

/// Extended attribute that marks a container cgroup nested in its caller's cgroup (value: the
/// container id), so that a restarted agent finds it again anywhere in the hierarchy. systemd
/// marks its cgroups the same way (`trusted.invocation_id`); only root can set `trusted.*`.
pub const NESTED_MARK: &str = "trusted.apptheus.container";

/// Name of the leaf the agent moves itself into when it must enable controllers in its own
/// cgroup (cgroup v2 forbids processes in a cgroup that delegates controllers to children).
pub const AGENT_LEAF: &str = "apptheus-agent";

/// Make `--cgroup.parent` in every hierarchy, with the v2 controllers delegated down to it.
pub fn prepare_parent(layout: &Layout) -> Result<()> {
    for h in &layout.hierarchies {
        std::fs::create_dir_all(&h.parent_dir)
            .with_context(|| format!("creating cgroup parent {}", h.parent_dir.display()))?;
        if h.version == Version::V2 {
            enable_controllers_down_to(h)?;
        }
    }
    Ok(())
}

/// Enable our controllers in `cgroup.subtree_control` of every directory from the top we own
/// (the hierarchy root for an absolute parent, our own cgroup for a relative one) down to the
/// parent itself, so that each container cgroup gets cpu, io, memory and pids files.
fn enable_controllers_down_to(h: &Hierarchy) -> Result<()> {
    let top = if h.parent_dir.starts_with(&h.own_dir) { h.own_dir.clone() } else { h.mount.clone() };
    let Ok(below) = h.parent_dir.strip_prefix(&top) else { return Ok(()) };
    let mut dir = top.clone();
    let mut chain = vec![dir.clone()];
    for part in below.components() {
        dir.push(part);
        chain.push(dir.clone());
    }
    for dir in &chain {
        let available = std::fs::read_to_string(dir.join("cgroup.controllers"))
            .with_context(|| format!("reading {}", dir.join("cgroup.controllers").display()))?;
        let wanted: Vec<&str> =
            V2_CONTROLLERS.iter().copied().filter(|c| available.split_whitespace().any(|a| a == *c)).collect();
        if wanted.is_empty() {
            continue; // hybrid mode: the unified hierarchy carries none of them
        }
        if *dir == h.own_dir && dir != &h.mount {
            leave_own_cgroup(dir)?;
        }
        let control = dir.join("cgroup.subtree_control");
        let request: String = wanted.iter().map(|c| format!("+{c} ")).collect();
        if let Err(err) = std::fs::write(&control, request.trim_end()) {
            // Not fatal: the containers are still placed and sampled, without those controllers' files.
            tracing::warn!(path = %control.display(), controllers = %request.trim_end(), %err,
                "cannot enable cgroup v2 controllers; their metrics will be missing");
        }
    }
    Ok(())
}

/// Move the agent into `<own>/apptheus-agent` so that its own cgroup may delegate controllers.
fn leave_own_cgroup(own: &Path) -> Result<()> {
    let procs_file = own.join("cgroup.procs");
    let procs = std::fs::read_to_string(&procs_file).with_context(|| format!("reading {}", procs_file.display()))?;
    if kernfs::pid_count(&procs).unwrap_or(0) == 0 {
        return Ok(());
    }
    let leaf = own.join(AGENT_LEAF);
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", leaf.display())),
    }
    let me = std::process::id().to_string();
    std::fs::write(leaf.join("cgroup.procs"), &me)
        .with_context(|| format!("moving the agent (pid {me}) into {}", leaf.display()))?;
    tracing::info!(leaf = %leaf.display(), "moved the agent into a leaf cgroup (no-internal-process rule)");
    Ok(())
}

/// A container's cgroup, one directory per hierarchy.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    /// The `id` label: the cgroup path in the primary hierarchy, e.g. `/metric_gateway/starter_42`.
    pub path: String,
    pub dirs: Vec<CgroupDir>,
    /// Whether the unified hierarchy exists, so that `cgroup.events` tells when it is empty.
    mode: Mode,
}

#[derive(Debug, Clone)]
pub struct CgroupDir {
    pub version: Version,
    pub controllers: Vec<String>,
    pub dir: PathBuf,
}

/// False once the kernel refused `memory.move_charge_at_immigrate` (charge moving was removed
/// in Linux 6.x, which answers EINVAL): later placements skip the open and write.
static MOVE_CHARGE_SUPPORTED: AtomicBool = AtomicBool::new(true);

/// Carry the memory the caller already uses into the new v1 memory cgroup. Newer kernels no
/// longer support it, so a refusal is not an error.
fn move_charge_at_immigrate(dir: &Path) {
    if !MOVE_CHARGE_SUPPORTED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(err) = std::fs::write(dir.join("memory.move_charge_at_immigrate"), "3") {
        tracing::debug!(path = %dir.display(), %err, "memory.move_charge_at_immigrate not supported; not trying again");
        if err.raw_os_error() == Some(libc::EINVAL) || err.kind() == ErrorKind::NotFound {
            MOVE_CHARGE_SUPPORTED.store(false, Ordering::Relaxed);
        }
    }
}

impl ContainerCgroup {
    /// Create `<parents[i]>/<name>` in hierarchy `i`. On failure nothing is left behind.
    pub fn create_in(layout: &Layout, parents: &[PathBuf], name: &str) -> Result<ContainerCgroup> {
        let nested = layout.hierarchies.iter().zip(parents).any(|(h, p)| *p != h.parent_dir);
        let cg = if nested {
            let dirs: Vec<(usize, PathBuf)> = parents.iter().map(|p| p.join(name)).enumerate().collect();
            ContainerCgroup::from_dirs(layout, &dirs)
        } else {
            ContainerCgroup::at(layout, name)
        };
        let mut made: Vec<&Path> = Vec::new();
        for d in &cg.dirs {
            match make_dir(&d.dir) {
                Ok(()) => {
                    made.push(&d.dir);
                    if nested {
                        if let Err(err) = rustix::fs::setxattr(&d.dir, NESTED_MARK, name.as_bytes(), rustix::fs::XattrFlags::empty()) {
                            tracing::warn!(path = %d.dir.display(), %err, "cannot mark the nested cgroup; a restarted agent will not find it");
                        }
                    }
                    crate::support::faults::point("placement::created_one");
                }
                Err(err) => {
                    for m in made.iter().rev() {
                        let _ = std::fs::remove_dir(m);
                    }
                    return Err(err).with_context(|| format!("creating cgroup {}", d.dir.display()));
                }
            }
            if d.version == Version::V1 && d.controllers.iter().any(|c| c == "memory") {
                move_charge_at_immigrate(&d.dir);
            }
        }
        Ok(cg)
    }

    /// A container cgroup by its directories (hierarchy index, directory): a nested one, or one
    /// a restarted agent finds by its mark. Its `id` label is its path below the primary mount.
    pub fn from_dirs(layout: &Layout, found: &[(usize, PathBuf)]) -> ContainerCgroup {
        let dirs: Vec<CgroupDir> = found
            .iter()
            .filter_map(|(i, dir)| {
                let h = layout.hierarchies.get(*i)?;
                Some(CgroupDir { version: h.version, controllers: h.controllers.clone(), dir: dir.clone() })
            })
            .collect();
        let primary = layout.primary();
        let path = found
            .iter()
            .find(|(i, _)| layout.hierarchies.get(*i) == Some(primary))
            .or(found.first())
            .and_then(|(i, d)| Some(format!("/{}", d.strip_prefix(&layout.hierarchies.get(*i)?.mount).ok()?.display())))
            .unwrap_or_default();
        ContainerCgroup { path, dirs, mode: layout.mode }
    }

    /// The cgroup `<parent>/<name>` without touching the file system (for an existing one).
    pub fn at(layout: &Layout, name: &str) -> ContainerCgroup {
        let dirs = layout
            .hierarchies
            .iter()
            .map(|h| CgroupDir { version: h.version, controllers: h.controllers.clone(), dir: h.parent_dir.join(name) })
            .collect();
        let path = format!("{}/{name}", layout.primary().parent_path.trim_end_matches('/'));
        ContainerCgroup { path, dirs, mode: layout.mode }
    }

    /// The directory in the unified hierarchy, if there is one.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.dirs.iter().find(|d| d.version == Version::V2).map(|d| d.dir.as_path())
    }

    /// The v1 directory that carries `controller`.
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.version == Version::V1 && d.controllers.iter().any(|c| c == controller))
            .map(|d| d.dir.as_path())
    }

    /// Move one process (all its threads) into the cgroup in every hierarchy.
    pub fn attach(&self, pid: i32) -> Result<(), AttachError> {
        let text = pid.to_string();
        for d in &self.dirs {
            let file = d.dir.join("cgroup.procs");
            if let Err(err) = std::fs::write(&file, &text) {
                return Err(if err.raw_os_error() == Some(libc::ESRCH) {
                    AttachError::Gone
                } else {
                    AttachError::Io { path: file, err }
                });
            }
            crate::support::faults::point("placement::attached_one");
        }
        Ok(())
    }

    /// Does any process remain (in this cgroup or below it)?
    pub fn is_populated(&self, files: &mut CgroupFiles) -> io::Result<bool> {
        if let Some(dir) = self.unified_dir() {
            let text = files
                .read_rarely(dir, "cgroup.events")?
                .ok_or_else(|| io::Error::new(ErrorKind::NotFound, "cgroup.events is gone"))?;
            for item in kernfs::flat_keyed(text) {
                let (key, value) = item.map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                if key == "populated" {
                    return Ok(value != 0);
                }
            }
            return Err(io::Error::new(ErrorKind::InvalidData, "cgroup.events has no populated key"));
        }
        debug_assert_eq!(self.mode, Mode::V1);
        let dir = &self.dirs.first().ok_or_else(|| io::Error::new(ErrorKind::NotFound, "no cgroup dirs"))?.dir;
        populated_v1(dir)
    }

    /// Remove the cgroup in every hierarchy. A cgroup may stay busy for a moment after its last
    /// process exits (zombies being reaped), so EBUSY is retried briefly.
    pub fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for d in &self.dirs {
            if let Err(err) = remove_dir_retrying(&d.dir) {
                tracing::warn!(path = %d.dir.display(), %err, "cannot remove cgroup");
                first_err.get_or_insert_with(|| anyhow::Error::new(err).context(format!("removing {}", d.dir.display())));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("the process exited before it could be moved")]
    Gone,
    #[error("writing {path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

fn make_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            // Left by an earlier agent: reuse it only if nothing runs in it.
            std::fs::remove_dir(dir)?;
            std::fs::create_dir(dir)
        }
        other => other,
    }
}

fn populated_v1(dir: &Path) -> io::Result<bool> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    if kernfs::pid_count(&procs).map_err(|e| io::Error::new(ErrorKind::InvalidData, e))? > 0 {
        return Ok(true);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() && populated_v1(&entry.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn remove_dir_retrying(dir: &Path) -> io::Result<()> {
    // Child cgroups someone made inside the container's (an inner runtime) go first.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_dir_retrying(&entry.path())?;
            }
        }
    }
    let mut delay = Duration::from_millis(5);
    for _ in 0..8 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    std::fs::remove_dir(dir)
}
