//! A directory the agent writes in (the socket's, the persistence file's), held open once, so
//! that every create, rename and remove is made relative to that descriptor and never follows a
//! name someone else made: a root daemon must not depend on `fs.protected_symlinks`, which is
//! off on some machines and does not cover group-writable directories anyway.
//!
//! At start a directory is refused, in one line, when another user could swap names in it:
//! owned by someone other than root or the agent, writable by group or others without the
//! sticky bit, a symlink owned by someone else, or (sticky and writable by others, like /tmp)
//! holding the agent's file under another owner.

use std::ffi::OsStr;
use std::io::{self, ErrorKind, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};

/// Why a directory is no place for the agent's files (a start-up error: one line).
#[derive(Debug, thiserror::Error)]
pub enum UnsafeDir {
    #[error("{path}: {err}")]
    Open { path: PathBuf, err: io::Error },
    #[error("{path} is a symlink owned by uid {owner}, not root: another user could point it anywhere")]
    ForeignSymlink { path: PathBuf, owner: u32 },
    #[error("{path} is owned by uid {owner}: only root's (or the agent's) directories are used")]
    ForeignOwner { path: PathBuf, owner: u32 },
    #[error("{path} is writable by other users (mode {mode:04o}) and not sticky: they could swap the agent's files")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path}/{name} belongs to uid {owner} (or is a symlink) in a directory others can write: not using it")]
    ForeignFile { path: PathBuf, name: String, owner: u32 },
}

pub struct OwnedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl OwnedDir {
    /// Open `path` (with `create`, creating it and its parents, 0755 and owned by the agent, when
    /// missing) and check that nobody else can swap names in it; `file` is the name the agent
    /// will use there.
    pub fn open(path: &Path, file: &OsStr, create: bool) -> Result<OwnedDir, UnsafeDir> {
        let open_err = |err: io::Error| UnsafeDir::Open { path: path.to_path_buf(), err };
        let created = match std::fs::symlink_metadata(path) {
            Err(e) if create && e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir_all(path).map_err(open_err)?;
                true
            }
            _ => false,
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(path, flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => fd,
            // The last component is a symlink: followed only when root owns it (/var/run -> /run).
            Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
                let link = rustix::fs::lstat(path).map_err(|e| open_err(e.into()))?;
                if FileType::from_raw_mode(link.st_mode) == FileType::Symlink && link.st_uid != 0 {
                    return Err(UnsafeDir::ForeignSymlink { path: path.to_path_buf(), owner: link.st_uid });
                }
                rustix::fs::open(path, flags, Mode::empty()).map_err(|e| open_err(e.into()))?
            }
            Err(e) => return Err(open_err(e.into())),
        };
        if created {
            // create_dir_all applied the umask: the mode is set on the descriptor, exactly.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(|e| open_err(e.into()))?;
        }
        let dir = OwnedDir { fd, path: path.to_path_buf() };
        dir.check(file)?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn check(&self, file: &OsStr) -> Result<(), UnsafeDir> {
        let st = rustix::fs::fstat(&self.fd).map_err(|e| UnsafeDir::Open { path: self.path.clone(), err: e.into() })?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != 0 && st.st_uid != me {
            return Err(UnsafeDir::ForeignOwner { path: self.path.clone(), owner: st.st_uid });
        }
        let mode = st.st_mode & 0o7777;
        let others_write = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if others_write && !sticky {
            return Err(UnsafeDir::Writable { path: self.path.clone(), mode });
        }
        if others_write {
            if let Some(f) = self.stat(file).map_err(|err| UnsafeDir::Open { path: self.path.join(file), err })? {
                if f.st_uid != me || FileType::from_raw_mode(f.st_mode) == FileType::Symlink {
                    let name = file.to_string_lossy().into_owned();
                    return Err(UnsafeDir::ForeignFile { path: self.path.clone(), name, owner: f.st_uid });
                }
            }
        }
        Ok(())
    }

    /// The entry itself (a symlink is not followed); `None` when there is none.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Read a regular file of this directory; a symlink there is an error, not followed.
    pub fn read(&self, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(io::Error::other(format!("{} is not a regular file", self.path.join(name).display())));
                }
                let mut out = Vec::new();
                io::Read::read_to_end(&mut std::fs::File::from(fd), &mut out)?;
                Ok(Some(out))
            }
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replace `name` with `bytes`, atomically (a reader or a crash sees the old file or the new
    /// one, whole): a new temp file of an unpredictable name, created exclusively (so never one
    /// somebody planted), synced, renamed over `name` (which replaces a planted symlink itself,
    /// not its target), and the directory synced.
    pub fn write_atomic(&self, name: &OsStr, bytes: &[u8], mode: u32) -> io::Result<()> {
        let (tmp, fd) = self.create_temp(name, mode)?;
        let write = || -> io::Result<()> {
            let mut file = std::fs::File::from(fd);
            file.write_all(bytes)?;
            file.sync_all()?;
            crate::support::faults::point("owned_dir::temp_written");
            rustix::fs::renameat(&self.fd, &tmp, &self.fd, name)?;
            rustix::fs::fsync(&self.fd)?;
            Ok(())
        };
        let result = write();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
        }
        result
    }

    fn create_temp(&self, name: &OsStr, mode: u32) -> io::Result<(Vec<u8>, OwnedFd)> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for _ in 0..8 {
            let mut random = [0u8; 8];
            rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
            let mut tmp = b".".to_vec();
            tmp.extend_from_slice(name.as_bytes());
            tmp.extend_from_slice(format!(".tmp-{:016x}", u64::from_ne_bytes(random)).as_bytes());
            match rustix::fs::openat(&self.fd, OsStr::from_bytes(&tmp), flags, Mode::from_raw_mode(mode)) {
                Ok(fd) => {
                    // The umask may have narrowed the mode: set it exactly, on the descriptor.
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
                    return Ok((tmp, fd));
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::new(ErrorKind::AlreadyExists, "no free temp file name after 8 tries"))
    }

    /// Rename `name` to `aside` in this directory, never over an existing entry.
    pub fn rename_noreplace(&self, name: &OsStr, aside: &OsStr) -> io::Result<()> {
        rustix::fs::renameat_with(&self.fd, name, &self.fd, aside, RenameFlags::NOREPLACE).map_err(Into::into)
    }

    /// Remove `name` if it is a socket (a stale one); anything else is left alone.
    pub fn remove_socket(&self, name: &OsStr) -> io::Result<bool> {
        match self.stat(name)? {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Socket => {
                rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Remove `name` if it is still the entry of inode `ino`.
    pub fn remove_if_inode(&self, name: &OsStr, ino: u64) -> io::Result<()> {
        if self.stat(name)?.is_some_and(|st| st.st_ino == ino) {
            rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?;
        }
        Ok(())
    }

    /// A path to `name` through this directory's descriptor (`/proc/self/fd/<n>/<name>`), for
    /// calls that take only a path (`bind`): it resolves in this very directory, whatever
    /// happens to the directory's own path meanwhile.
    pub fn path_via_fd(&self, name: &OsStr) -> PathBuf {
        use std::os::fd::AsRawFd;
        Path::new("/proc/self/fd").join(self.fd.as_raw_fd().to_string()).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_created_directory_is_0755_whatever_the_umask() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b");
        let old = rustix::process::umask(Mode::from_raw_mode(0o077));
        let opened = OwnedDir::open(&dir, OsStr::new("f"), true);
        rustix::process::umask(old);
        opened.unwrap();
        assert_eq!(mode(&dir), 0o755);
    }

    #[test]
    fn writes_replace_a_planted_symlink_and_never_follow_it() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("victim");
        std::fs::write(&target, "precious").unwrap();
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let owned = OwnedDir::open(&dir, OsStr::new("store.json"), true).unwrap();
        symlink(&target, dir.join("store.json")).unwrap();
        assert!(owned.read(OsStr::new("store.json")).is_err(), "a symlink is not read through");
        owned.write_atomic(OsStr::new("store.json"), b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(std::fs::read(dir.join("store.json")).unwrap(), b"{}");
        assert_eq!(mode(&dir.join("store.json")), 0o600);
        // Nothing left behind but the file.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn set_aside_never_replaces() {
        let base = tempfile::tempdir().unwrap();
        let owned = OwnedDir::open(base.path(), OsStr::new("s"), true).unwrap();
        std::fs::write(base.path().join("s"), "x").unwrap();
        symlink("/nonexistent", base.path().join("s.corrupt-1")).unwrap();
        assert!(owned.rename_noreplace(OsStr::new("s"), OsStr::new("s.corrupt-1")).is_err());
        owned.rename_noreplace(OsStr::new("s"), OsStr::new("s.corrupt-2")).unwrap();
        assert_eq!(std::fs::read_link(base.path().join("s.corrupt-1")).unwrap(), Path::new("/nonexistent"));
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(OwnedDir::open(&open, OsStr::new("f"), true), Err(UnsafeDir::Writable { mode: 0o777, .. })));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        OwnedDir::open(&open, OsStr::new("f"), true).unwrap();
        // Sticky and open to all: a symlink at the agent's name is refused.
        symlink("/etc/passwd", open.join("f")).unwrap();
        assert!(matches!(OwnedDir::open(&open, OsStr::new("f"), true), Err(UnsafeDir::ForeignFile { .. })));
        // A root-owned symlink to a directory is followed.
        let link = base.path().join("link");
        symlink(base.path(), &link).unwrap();
        if rustix::process::geteuid().is_root() {
            OwnedDir::open(&link, OsStr::new("f"), true).unwrap();
            let other = base.path().join("theirs");
            std::fs::create_dir(&other).unwrap();
            rustix::fs::chown(&other, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
            assert!(matches!(OwnedDir::open(&other, OsStr::new("f"), true), Err(UnsafeDir::ForeignOwner { owner: 65534, .. })));
            std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
            assert!(matches!(OwnedDir::open(&link, OsStr::new("f"), true), Err(UnsafeDir::ForeignSymlink { owner: 65534, .. })));
        }
    }
}
