//! The launcher socket: accept, verify the caller, place it and its descendants into a new
//! cgroup, answer with one JSON line, and hold the connection for the container's life.
//!
//! Apptainer's starter connects, sends nothing and never reads; the answer is for launchers
//! that do read (`apptheus exec`). Monitoring ends when the cgroup empties, not when the
//! connection closes.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::Agent;
use crate::cgroup::{self, AttachError, ContainerCgroup, Decision, Layout};
use crate::store::ContainerInfo;
use crate::telemetry::{RESULT_ACCEPTED, RESULT_FAILED, RESULT_REFUSED};
use crate::trust::{self, Peer, Refusal};

/// The one line the agent writes back to a launcher.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Ack {
    Ok { id: String, cgroup: String },
    Refused { reason: String },
}

/// The bound socket; removes its file when dropped (only if the file is still ours).
pub struct Socket {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl Socket {
    /// Create the parent directory, replace a stale socket file, refuse to steal the socket of
    /// a live agent, and open it to every user (trust is checked per connection).
    pub fn bind(path: &Path) -> Result<Socket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating socket directory {}", dir.display()))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    bail!("socket {} is already served by a running agent", path.display());
                }
                std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            Ok(_) => bail!("{} exists and is not a socket; not replacing it", path.display()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking socket path {}", path.display())),
        }
        let listener = UnixListener::bind(path).with_context(|| format!("binding socket {}", path.display()))?;
        let inode = std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0);
        let socket = Socket { listener, path: path.to_path_buf(), inode };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
            .with_context(|| format!("chmod 0777 {}", path.display()))?;
        Ok(socket)
    }

    /// Accept launchers until shutdown.
    pub async fn serve(&self, agent: Arc<Agent>) {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = agent.shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(agent.clone(), stream));
                }
                Err(err) => {
                    // EMFILE and the like: back off briefly rather than spin.
                    tracing::error!(%err, "accept on launcher socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).map(|m| m.ino()).ok() == Some(self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn handle(agent: Arc<Agent>, mut stream: UnixStream) {
    let peer = match trust::verify(&stream, &agent.trusted) {
        Ok(peer) => peer,
        Err(refusal) => {
            agent.telemetry.count_connection(RESULT_REFUSED);
            tracing::warn!(reason = %refusal, "launcher refused");
            reply(&mut stream, &Ack::Refused { reason: refusal.to_string() }).await;
            return;
        }
    };
    let placing = agent.clone();
    let placed = tokio::task::spawn_blocking(move || {
        let pid = peer.pid;
        let alive = peer.pidfd_clone();
        match place(&placing, peer) {
            // Whatever failed, a caller that died meanwhile is "gone", not an agent fault.
            Err(PlaceError::Failed(_)) if alive.as_ref().is_some_and(|fd| !trust::pidfd_alive(fd)) => {
                Err(PlaceError::Refused(Refusal::Gone(pid)))
            }
            other => other,
        }
    })
    .await;
    let Placed { info, cgroup: cg } = match placed {
        Ok(Ok(p)) => p,
        Ok(Err(PlaceError::Refused(refusal))) => {
            agent.telemetry.count_connection(RESULT_REFUSED);
            tracing::warn!(reason = %refusal, "launcher refused");
            reply(&mut stream, &Ack::Refused { reason: refusal.to_string() }).await;
            return;
        }
        Ok(Err(PlaceError::Unplaceable(reason))) => {
            agent.telemetry.count_connection(RESULT_REFUSED);
            tracing::warn!(%reason, "launcher refused");
            reply(&mut stream, &Ack::Refused { reason }).await;
            return;
        }
        Ok(Err(PlaceError::Failed(err))) => {
            agent.telemetry.count_connection(RESULT_FAILED);
            tracing::error!(err = %format!("{err:#}"), "placing launcher failed");
            reply(&mut stream, &Ack::Refused { reason: format!("placement failed: {err:#}") }).await;
            return;
        }
        Err(join) => {
            agent.telemetry.count_connection(RESULT_FAILED);
            tracing::error!(err = %join, "placement task failed");
            return;
        }
    };
    agent.telemetry.count_connection(RESULT_ACCEPTED);
    if let Some((cg, ebpf_id)) = cg {
        tracing::info!(container = %info.id, pid = info.pid, user = %info.user, exe = %info.exe.display(), cgroup = %info.cgroup_path, "container placed");
        agent.monitor.watch(info.id.clone(), cg, ebpf_id);
    }
    reply(&mut stream, &Ack::Ok { id: info.id.clone(), cgroup: info.cgroup_path.clone() }).await;
    hold(agent, stream, &info.id).await;
}

/// Keep the launcher's connection open until it closes it (or the agent stops); what it sends
/// is read and dropped so that a chatty client cannot fill our buffers.
async fn hold(agent: Arc<Agent>, mut stream: UnixStream, id: &str) {
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            _ = agent.shutdown.cancelled() => return,
        }
    }
    tracing::debug!(container = %id, "launcher connection closed");
}

async fn reply(stream: &mut UnixStream, ack: &Ack) {
    let mut line = serde_json::to_vec(ack).unwrap_or_default();
    line.push(b'\n');
    // A launcher that never reads (Apptainer) or already left is fine: the line is a courtesy.
    if let Err(err) = stream.write_all(&line).await {
        tracing::debug!(%err, "could not write the answer to the launcher");
    }
}

/// The descendants of `pid` still in its original cgroups (`origin`): only those are moved, a
/// descendant that something else placed elsewhere is left there.
fn unmoved_descendants(pid: i32, origin: &[PathBuf]) -> Vec<i32> {
    match crate::proctree::descendants_from_children_lists(pid) {
        // Usually none: no need to read the origin's process list.
        Some(all) if all.is_empty() => all,
        Some(all) => match smallest_procs(origin) {
            Some(in_origin) => all.into_iter().filter(|p| in_origin.contains(p)).collect(),
            None => all,
        },
        // No children lists in this kernel: look among the processes of the smallest original
        // cgroup rather than all of /proc.
        None => match smallest_procs(origin) {
            Some(candidates) => crate::proctree::descendants_among(pid, &candidates),
            None => crate::proctree::descendants(pid),
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

enum PlaceError {
    Refused(Refusal),
    /// The caller's cgroup cannot take the container (gone, or at `cgroup.max.descendants`).
    Unplaceable(String),
    Failed(anyhow::Error),
}

/// What placement made of a launcher.
struct Placed {
    info: ContainerInfo,
    /// The new cgroup and its eBPF cgroup id (None when not counted in the kernel); `None` when
    /// the launcher connected again and gets its existing container.
    cgroup: Option<(ContainerCgroup, Option<u64>)>,
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

/// Create the container's cgroup and move the caller and all its descendants in (blocking).
fn place(agent: &Agent, peer: Peer) -> Result<Placed, PlaceError> {
    if let Some(existing) = agent.store.find_by_pid(peer.pid) {
        return Ok(Placed { info: (*existing).clone(), cgroup: None });
    }
    let id = peer.container_id();
    let origin = agent.layout.cgroup_dirs_of(peer.pid).map_err(|e| PlaceError::Failed(e.context(format!("pid {}", peer.pid))))?;
    // Who the caller is, from where it runs now (a user cannot forge a cgroup path).
    let from_cgroup = agent.cgroup_labels.labels(&kernel_paths(&agent.layout, &origin));
    let decision = cgroup::decide(&agent.layout, agent.placement, &origin, &id);
    log_decision(&id, peer.pid, &decision);
    crate::faults::point("placement::decided");
    let cg = ContainerCgroup::create_in(&agent.layout, &decision.parents, &id).map_err(|e| creation_error(e, &decision))?;
    crate::faults::point("placement::created");
    // Count in the kernel from before the first process arrives.
    let ebpf_id = crate::monitor::ebpf_watch(agent, &id, &cg);
    let mut moved: Vec<i32> = Vec::new();
    // On failure, put what was moved back where it was, then remove the new cgroups.
    let undo = |moved: &[i32]| {
        for pid in moved {
            for back in &origin {
                let _ = std::fs::write(back.join("cgroup.procs"), pid.to_string());
            }
        }
        if let Some(cgid) = ebpf_id {
            crate::monitor::ebpf_unwatch(agent, cgid);
        }
        let _ = cg.remove();
    };
    match cg.attach(peer.pid) {
        Ok(()) => moved.push(peer.pid),
        Err(AttachError::Gone) => {
            undo(&moved);
            return Err(PlaceError::Refused(Refusal::Gone(peer.pid)));
        }
        Err(err) => {
            undo(&moved);
            return Err(PlaceError::Failed(anyhow::Error::new(err).context(format!("pid {}", peer.pid))));
        }
    }
    crate::faults::point("placement::caller_attached");
    // The launcher may still be forking while we move: repeat until a scan finds nothing new.
    for _ in 0..16 {
        let fresh: Vec<i32> = unmoved_descendants(peer.pid, &origin).into_iter().filter(|p| !moved.contains(p)).collect();
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
    let user = crate::user_names::name_of(peer.uid);
    let info = ContainerInfo {
        id,
        cgroup_path: cg.path.clone(),
        pid: peer.pid,
        user,
        exe: peer.exe.clone(),
        started: SystemTime::now(),
        labels: crate::cgroup_labels::merge(from_cgroup, crate::environ::env_labels(peer.pid, &agent.env_labels)),
    };
    // Registered even if the launcher died just now: its descendants are the container, and
    // the monitor removes the cgroup as soon as it is empty.
    agent.store.insert(info.clone());
    agent.telemetry.containers.set(agent.store.live_count() as i64);
    crate::faults::point("placement::placed");
    Ok(Placed { info, cgroup: Some((cg, ebpf_id)) })
}
