//! The launcher socket: accept, verify the caller ([`trust`]), admit it within the container
//! caps ([`limits`]), have it placed ([`crate::placement`]), hand the new cgroup to the sampler,
//! answer with one JSON line, and hold the connection for the container's life.
//!
//! Apptainer's starter connects, sends nothing and never reads; the answer is for launchers
//! that do read (`apptheus exec`). Monitoring ends when the cgroup empties, not when the
//! connection closes.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use prometheus::IntCounterVec;
use tokio_util::sync::CancellationToken;

use crate::placement::{Caller, PlaceError, Placed, Placer};
use crate::sampler::SamplerQueue;
use crate::support::owned_dir::OwnedDir;
use limits::Admission;
use rustix::fs::{FileType, Mode};
use trust::{Refusal, TrustedSet};

pub mod limits;
pub mod trust;

/// What serving launchers needs: whom to trust, the container caps, placement, the sampler's
/// queue, the connection counter and the shutdown signal.
pub struct Gate {
    pub trusted: TrustedSet,
    pub admission: Arc<Admission>,
    pub placer: Arc<Placer>,
    pub sampler: SamplerQueue,
    pub connections: Connections,
    pub shutdown: CancellationToken,
}

/// `apptheus_connections_total{result,reason}`, every series exported from the start at 0. The
/// reason is set on refusals only, from a fixed set ([`Connections::REFUSAL_REASONS`]).
pub struct Connections(IntCounterVec);

impl Connections {
    const ACCEPTED: &str = "accepted";
    const REFUSED: &str = "refused";
    const FAILED: &str = "failed";
    /// Every `reason` of a refusal: [`Refusal::label`], [`limits::Limit::label`], and a caller
    /// whose cgroup cannot take the container.
    pub const REFUSAL_REASONS: [&str; 6] =
        ["untrusted", "unverifiable", trust::REASON_GONE, REASON_UNPLACEABLE, "per_user_limit", "global_limit"];

    pub fn new(counter: IntCounterVec) -> Connections {
        for result in [Self::ACCEPTED, Self::FAILED] {
            counter.with_label_values(&[result, ""]);
        }
        for reason in Self::REFUSAL_REASONS {
            counter.with_label_values(&[Self::REFUSED, reason]);
        }
        Connections(counter)
    }

    fn count(&self, result: &str) {
        self.0.with_label_values(&[result, ""]).inc();
    }

    fn count_refused(&self, reason: &'static str) {
        self.0.with_label_values(&[Self::REFUSED, reason]).inc();
    }
}

/// The reason label of a caller whose cgroup cannot take the container.
const REASON_UNPLACEABLE: &str = "unplaceable";

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
    dir: OwnedDir,
    name: OsString,
    inode: u64,
}

impl Socket {
    /// Create the parent directory (0755) when missing, refuse one another user could swap names
    /// in, replace a stale socket (only a socket: never a file, never through a symlink), refuse
    /// to steal the socket of a live agent, and bind it open to every user (trust is checked per
    /// connection), the mode set before the node exists rather than by a chmod of its path.
    pub fn bind(path: &Path) -> Result<Socket> {
        let name = path.file_name().with_context(|| format!("--socket.path {} has no file name", path.display()))?;
        let parent = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = OwnedDir::open(parent, name, true).map_err(|e| anyhow::anyhow!("--socket.path: {e}"))?;
        let existing = dir.stat(name).with_context(|| format!("checking socket path {}", path.display()))?;
        match existing.map(|st| FileType::from_raw_mode(st.st_mode)) {
            Some(FileType::Socket) => {
                if std::os::unix::net::UnixStream::connect(dir.path_via_fd(name)).is_ok() {
                    bail!("socket {} is already served by a running agent", path.display());
                }
                dir.remove_socket(name).with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            Some(_) => bail!("{} exists and is not a socket; not replacing it", path.display()),
            None => {}
        }
        let (listener, inode) = bind_open_to_all(&dir, name).with_context(|| format!("binding socket {}", path.display()))?;
        let listener = UnixListener::from_std(listener).with_context(|| format!("listening on {}", path.display()))?;
        Ok(Socket { listener, dir, name: name.to_os_string(), inode })
    }

    /// Accept launchers until shutdown.
    pub async fn serve(&self, gate: Arc<Gate>) {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = gate.shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(gate.clone(), stream));
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
        let _ = self.dir.remove_if_inode(&self.name, self.inode);
    }
}

/// A listening socket at `name` in `dir`, mode 0777 from its creation: `bind` gives the new node
/// the socket inode's mode less the umask, so both are set first (the umask only for the `bind`
/// call, at start-up, when no other thread creates files). The path goes through the directory's
/// descriptor, so the node is made in the directory that was checked.
/// Returns the listener and the node's inode (what the agent removes at exit, if still there).
fn bind_open_to_all(dir: &OwnedDir, name: &OsStr) -> std::io::Result<(std::os::unix::net::UnixListener, u64)> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)?;
    rustix::fs::fchmod(&sock, Mode::from_raw_mode(0o777))?;
    let addr = SocketAddrUnix::new(dir.path_via_fd(name))?;
    let umask = rustix::process::umask(Mode::empty());
    let bound = rustix::net::bind(&sock, &addr);
    rustix::process::umask(umask);
    bound?;
    let inode = dir.stat(name)?.map_or(0, |st| st.st_ino);
    // Where a chmod by path used to be: a test swaps the path for a symlink here.
    crate::support::faults::point("launcher::socket_bound");
    rustix::net::listen(&sock, 1024)?;
    Ok((std::os::unix::net::UnixListener::from(sock), inode))
}

async fn handle(gate: Arc<Gate>, mut stream: UnixStream) {
    let peer = match trust::verify(&stream, &gate.trusted) {
        Ok(peer) => peer,
        Err(refusal) => return refuse(&gate, &mut stream, refusal.label(), refusal.to_string()).await,
    };
    let id = peer.container_id();
    // Taken before placement, so that a refused launcher costs no cgroup and no blocking thread.
    let slot = match gate.admission.admit(peer.uid, &id) {
        Ok(slot) => slot,
        Err(limit) => return refuse(&gate, &mut stream, limit.label(), limit.to_string()).await,
    };
    let placer = gate.placer.clone();
    let placed = tokio::task::spawn_blocking(move || {
        let caller = Caller { pid: peer.pid, uid: peer.uid, exe: peer.exe.clone(), id };
        let placed = match placer.place(&caller) {
            // Whatever failed, a caller that died meanwhile is "gone", not an agent fault.
            Err(PlaceError::Failed(_)) if !peer.is_alive() => Err(PlaceError::Gone(peer.pid)),
            other => other,
        };
        // The slot goes with a new container; otherwise (a failure, or the launcher connecting
        // again and getting its container) it is given back here.
        if matches!(placed, Ok(Placed { cgroup: Some(_), .. })) {
            slot.keep();
        }
        placed
    })
    .await;
    let Placed { info, cgroup: cg } = match placed {
        Ok(Ok(p)) => p,
        Ok(Err(PlaceError::Gone(pid))) => {
            let refusal = Refusal::Gone(pid);
            return refuse(&gate, &mut stream, refusal.label(), refusal.to_string()).await;
        }
        Ok(Err(PlaceError::Unplaceable(reason))) => return refuse(&gate, &mut stream, REASON_UNPLACEABLE, reason).await,
        Ok(Err(PlaceError::Failed(err))) => {
            gate.connections.count(Connections::FAILED);
            tracing::error!(err = %format!("{err:#}"), "placing launcher failed");
            reply(&mut stream, &Ack::Refused { reason: format!("placement failed: {err:#}") }).await;
            return;
        }
        Err(join) => {
            gate.connections.count(Connections::FAILED);
            tracing::error!(err = %join, "placement task failed");
            return;
        }
    };
    gate.connections.count(Connections::ACCEPTED);
    if let Some((cg, ebpf_id)) = cg {
        tracing::info!(container = %info.id, pid = info.pid, user = %info.user, exe = %info.exe.display(), cgroup = %info.cgroup_path, "container placed");
        gate.sampler.watch(info.id.clone(), cg, ebpf_id);
    }
    reply(&mut stream, &Ack::Ok { id: info.id.clone(), cgroup: info.cgroup_path.clone() }).await;
    hold(&gate.shutdown, stream, &info.id).await;
}

/// Count (under its reason `label`), log and answer a refusal.
async fn refuse(gate: &Gate, stream: &mut UnixStream, label: &'static str, reason: String) {
    gate.connections.count_refused(label);
    tracing::warn!(%reason, "launcher refused");
    reply(stream, &Ack::Refused { reason }).await;
}

/// Keep the launcher's connection open until it closes it (or the agent stops); what it sends
/// is read and dropped so that a chatty client cannot fill our buffers.
async fn hold(shutdown: &CancellationToken, mut stream: UnixStream, id: &str) {
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            _ = shutdown.cancelled() => return,
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


#[cfg(test)]
mod tests {
    use super::*;
    use limits::Limit;

    /// Every reason a refusal can be counted under is exported from the start (bounded
    /// cardinality: a fixed set, never text from the caller).
    #[test]
    fn every_refusal_reason_is_in_the_fixed_set() {
        let io = || std::io::Error::from(std::io::ErrorKind::Other);
        let labels = [
            Refusal::NoCredentials(io()).label(),
            Refusal::Gone(1).label(),
            Refusal::Deleted { pid: 1, exe: "x".into() }.label(),
            Refusal::NotTrusted { pid: 1, exe: "x".into() }.label(),
            Refusal::Io { pid: 1, err: io() }.label(),
            Limit::PerUser { uid: 1, limit: 1 }.label(),
            Limit::Total { limit: 1 }.label(),
            REASON_UNPLACEABLE,
        ];
        for label in labels {
            assert!(Connections::REFUSAL_REASONS.contains(&label), "{label} is not exported at 0");
        }
        let counter = IntCounterVec::new(prometheus::Opts::new("c", "c"), &["result", "reason"]).unwrap();
        let connections = Connections::new(counter.clone());
        connections.count_refused("global_limit");
        assert_eq!(counter.with_label_values(&["refused", "global_limit"]).get(), 1);
        assert_eq!(counter.with_label_values(&["accepted", ""]).get(), 0);
    }
}
