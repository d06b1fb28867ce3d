//! Who is calling: the peer's pid from SO_PEERCRED, pinned with a pidfd, and whether its
//! executable is one of the `--trust.path` files (same device and inode).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The trusted launcher executables. Paths are re-checked at every connection so that a
/// package upgrade that replaces a launcher keeps working (and the old inode stops matching).
#[derive(Debug, Clone)]
pub struct TrustedSet {
    paths: Vec<PathBuf>,
}

impl TrustedSet {
    /// Check at start that every path is absolute and readable; an empty list trusts nobody.
    pub fn new(paths: Vec<PathBuf>) -> Result<TrustedSet> {
        for p in &paths {
            if !p.is_absolute() {
                bail!("trusted path {} is not absolute", p.display());
            }
            let meta = std::fs::metadata(p).with_context(|| format!("cannot read trusted path {}", p.display()))?;
            if !meta.is_file() {
                bail!("trusted path {} is not a regular file", p.display());
            }
        }
        Ok(TrustedSet { paths })
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Is the file (device, inode) one of the trusted executables as they are on disk now?
    fn contains(&self, dev: u64, ino: u64) -> bool {
        self.paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .any(|m| m.dev() == dev && m.ino() == ino)
    }
}

/// A verified caller.
#[derive(Debug)]
pub struct Peer {
    pub pid: i32,
    /// Real uid of the caller (the user who started it, also for set-uid launchers).
    pub uid: u32,
    pub exe: PathBuf,
    /// Pins the process: while it is alive, `pid` is this process and no other.
    pub pidfd: OwnedFd,
}

impl Peer {
    /// `<basename of exe>_<pid>`, the container id (the Go Apptheus `job` label).
    pub fn container_id(&self) -> String {
        let base = self.exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "unknown".into());
        format!("{base}_{}", self.pid)
    }

    /// Is the caller still running? (A zombie still holds its pid, so this also means no reuse.)
    pub fn is_alive(&self) -> bool {
        pidfd_alive(&self.pidfd)
    }

    /// A second handle on the pidfd (to check liveness after `self` is consumed).
    pub fn pidfd_clone(&self) -> Option<OwnedFd> {
        self.pidfd.try_clone().ok()
    }
}

/// Why a caller is refused; sent back to it as the `reason`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no peer credentials: {0}")]
    NoCredentials(io::Error),
    #[error("the caller (pid {0}) exited before it could be checked")]
    Gone(i32),
    #[error("{exe} was deleted or replaced after the caller (pid {pid}) started")]
    Deleted { pid: i32, exe: String },
    #[error("{exe} (pid {pid}) is not a trusted launcher")]
    NotTrusted { pid: i32, exe: String },
    #[error("checking the caller (pid {pid}): {err}")]
    Io { pid: i32, err: io::Error },
}

impl Refusal {
    /// The `reason` label of `apptheus_connections_total{result="refused"}`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Gone(_) => REASON_GONE,
            Refusal::Deleted { .. } | Refusal::NotTrusted { .. } => "untrusted",
            Refusal::NoCredentials(_) | Refusal::Io { .. } => "unverifiable",
        }
    }
}

/// The reason label of a caller that exited before it was checked or placed.
pub const REASON_GONE: &str = "gone";

/// Check the process at the other end of `socket`.
pub fn verify(socket: &impl AsFd, trusted: &TrustedSet) -> Result<Peer, Refusal> {
    let cred = rustix::net::sockopt::socket_peercred(socket.as_fd()).map_err(|e| Refusal::NoCredentials(e.into()))?;
    let pid = cred.pid.as_raw_nonzero().get();
    let pidfd = peer_pidfd(socket.as_fd().as_raw_fd(), pid)?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let io_err = |err: io::Error| if err.raw_os_error() == Some(libc::ESRCH) || err.kind() == io::ErrorKind::NotFound {
        Refusal::Gone(pid)
    } else {
        Refusal::Io { pid, err }
    };
    let exe = std::fs::read_link(proc_dir.join("exe")).map_err(io_err)?;
    let exe_text = exe.to_string_lossy().into_owned();
    if exe_text.ends_with(" (deleted)") {
        return Err(Refusal::Deleted { pid, exe: exe_text });
    }
    // stat() through the magic link reaches the very file the process runs, even if renamed.
    let meta = std::fs::metadata(proc_dir.join("exe")).map_err(io_err)?;
    if !trusted.contains(meta.dev(), meta.ino()) {
        // A different file at the trusted path counts as replaced, not merely untrusted.
        if trusted.paths().iter().any(|p| p == &exe) {
            return Err(Refusal::Deleted { pid, exe: exe_text });
        }
        return Err(Refusal::NotTrusted { pid, exe: exe_text });
    }
    let uid = real_uid(&proc_dir).map_err(io_err)?;
    // Everything above was read from /proc/<pid>; if the pidfd's process is still alive now,
    // that pid was not reused in between, so it was this process we checked.
    if !pidfd_alive(&pidfd) {
        return Err(Refusal::Gone(pid));
    }
    Ok(Peer { pid, uid, exe, pidfd })
}

/// SO_PEERPIDFD (Linux 6.5+) names the process that connected even if it is gone; older kernels
/// fall back to pidfd_open on the credential pid, which the liveness check above then guards.
fn peer_pidfd(fd: i32, pid: i32) -> Result<OwnedFd, Refusal> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `pidfd`.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, SO_PEERPIDFD, (&mut pidfd as *mut libc::c_int).cast(), &mut len)
    };
    if rc == 0 && pidfd >= 0 {
        // SAFETY: the kernel just gave us this new descriptor.
        return Ok(unsafe { OwnedFd::from_raw_fd(pidfd) });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        return Err(Refusal::Gone(pid));
    }
    let raw_pid = rustix::process::Pid::from_raw(pid).ok_or(Refusal::Gone(pid))?;
    rustix::process::pidfd_open(raw_pid, rustix::process::PidfdFlags::empty()).map_err(|e| {
        if e == rustix::io::Errno::SRCH {
            Refusal::Gone(pid)
        } else {
            Refusal::Io { pid, err: e.into() }
        }
    })
}

/// Is the process behind `pidfd` still running (or a zombie, which still holds its pid)?
pub fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks that the process exists; no memory is passed.
    let rc = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    rc == 0
}

fn real_uid(proc_dir: &Path) -> io::Result<u32> {
    let status = std::fs::read_to_string(proc_dir.join("status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid line in /proc/<pid>/status"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn trusted_set_rejects_relative_and_missing_paths() {
        assert!(TrustedSet::new(vec![PathBuf::from("bin/sh")]).is_err());
        let err = TrustedSet::new(vec![PathBuf::from("/nonexistent/launcher")]).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/launcher"));
        assert!(TrustedSet::new(vec![]).unwrap().is_empty());
    }

    #[test]
    fn our_own_binary_is_trusted_only_when_listed() {
        let me = std::env::current_exe().unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = verify(&a, &TrustedSet::new(vec![me.clone()]).unwrap()).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert!(peer.is_alive());
        assert!(peer.container_id().ends_with(&format!("_{}", std::process::id())));
        let refused = verify(&a, &TrustedSet::new(vec![PathBuf::from("/bin/sh")]).unwrap()).unwrap_err();
        assert!(matches!(refused, Refusal::NotTrusted { .. }), "{refused}");
    }

    #[test]
    fn a_copy_at_another_path_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        std::fs::copy("/bin/true", &copy).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        // The copy has its own inode, so trusting it does not trust the test binary, and vice versa.
        assert!(verify(&a, &TrustedSet::new(vec![copy]).unwrap()).is_err());
    }
}
