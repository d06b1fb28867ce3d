//! The launcher socket: accept, verify the caller ([`trust`]), have it placed
//! ([`crate::placement`]), hand the new cgroup to the sampler, answer with one JSON line, and
//! hold the connection for the container's life.
//!
//! Apptainer's starter connects, sends nothing and never reads; the answer is for launchers
//! that do read (`apptheus exec`). Monitoring ends when the cgroup empties, not when the
//! connection closes.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use prometheus::IntCounterVec;
use tokio_util::sync::CancellationToken;

use crate::placement::{Caller, PlaceError, Placed, Placer};
use crate::sampler::SamplerQueue;
use trust::{Refusal, TrustedSet};

pub mod trust;



/// What serving launchers needs: whom to trust, placement, the sampler's queue, the
/// connection counter and the shutdown signal.
pub struct Gate {
    pub trusted: TrustedSet,
    pub placer: Arc<Placer>,
    pub sampler: SamplerQueue,
    pub connections: Connections,
    pub shutdown: CancellationToken,
}

/// `apptheus_connections_total{result}`, each result exported from the start at 0.
pub struct Connections(IntCounterVec);

impl Connections {
    const ACCEPTED: &str = "accepted";
    const REFUSED: &str = "refused";
    const FAILED: &str = "failed";

    pub fn new(counter: IntCounterVec) -> Connections {
        for result in [Self::ACCEPTED, Self::REFUSED, Self::FAILED] {
            counter.with_label_values(&[result]);
        }
        Connections(counter)
    }

    fn count(&self, result: &str) {
        self.0.with_label_values(&[result]).inc();
    }
}

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
        if std::fs::metadata(&self.path).map(|m| m.ino()).ok() == Some(self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn handle(gate: Arc<Gate>, mut stream: UnixStream) {
    let peer = match trust::verify(&stream, &gate.trusted) {
        Ok(peer) => peer,
        Err(refusal) => return refuse(&gate, &mut stream, refusal.to_string()).await,
    };
    let placer = gate.placer.clone();
    let placed = tokio::task::spawn_blocking(move || {
        let caller = Caller { pid: peer.pid, uid: peer.uid, exe: peer.exe.clone(), id: peer.container_id() };
        match placer.place(&caller) {
            // Whatever failed, a caller that died meanwhile is "gone", not an agent fault.
            Err(PlaceError::Failed(_)) if !peer.is_alive() => Err(PlaceError::Gone(peer.pid)),
            other => other,
        }
    })
    .await;
    let Placed { info, cgroup: cg } = match placed {
        Ok(Ok(p)) => p,
        Ok(Err(PlaceError::Gone(pid))) => return refuse(&gate, &mut stream, Refusal::Gone(pid).to_string()).await,
        Ok(Err(PlaceError::Unplaceable(reason))) => return refuse(&gate, &mut stream, reason).await,
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

/// Count, log and answer a refusal.
async fn refuse(gate: &Gate, stream: &mut UnixStream, reason: String) {
    gate.connections.count(Connections::REFUSED);
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

