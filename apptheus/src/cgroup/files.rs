//! A container's cgroup files, kept open and re-read with `pread` at offset 0. Opening a
//! cgroupfs file costs the kernel a path walk each time: re-reading an open one is ~4x cheaper
//! per sample (bench/RESULTS.md), at the price of one descriptor per file. Descriptors come
//! from a budget set at start (a share of RLIMIT_NOFILE); past it files are opened per read.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};

/// Descriptors all containers may keep open together.
static BUDGET: AtomicIsize = AtomicIsize::new(0);

/// Allow `n` descriptors to be kept open for sampling (set once at start).
pub fn set_open_file_budget(n: usize) {
    BUDGET.store(n.min(isize::MAX as usize) as isize, Ordering::Relaxed);
}

fn take_budget() -> bool {
    if BUDGET.fetch_sub(1, Ordering::Relaxed) > 0 {
        true
    } else {
        BUDGET.fetch_add(1, Ordering::Relaxed);
        false
    }
}

enum Slot {
    Open(File),
    /// This kernel or hierarchy does not have the file.
    Missing,
}

/// The files of one container, by name (a name is read from one directory only per layout).
#[derive(Default)]
pub struct CgroupFiles {
    slots: Vec<(&'static str, Slot)>,
    buf: Vec<u8>,
}

impl CgroupFiles {
    pub fn new() -> CgroupFiles {
        CgroupFiles::default()
    }

    /// The file's current content, or `None` when it does not exist (or its cgroup is gone).
    pub fn read(&mut self, dir: &Path, name: &'static str) -> io::Result<Option<&str>> {
        self.buf.clear();
        let found = match self.slots.iter().position(|(n, _)| *n == name) {
            Some(i) => match &self.slots[i].1 {
                Slot::Missing => return Ok(None),
                Slot::Open(f) => pread_all(f, &mut self.buf),
            },
            None => match File::open(dir.join(name)) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.slots.push((name, Slot::Missing));
                    return Ok(None);
                }
                Err(e) => Err(e),
                Ok(f) if take_budget() => {
                    let r = pread_all(&f, &mut self.buf);
                    self.slots.push((name, Slot::Open(f)));
                    r
                }
                Ok(mut f) => f.read_to_end(&mut self.buf).map(|_| ()),
            },
        };
        match found {
            Ok(()) => std::str::from_utf8(&self.buf)
                .map(Some)
                .map_err(|_| io::Error::new(ErrorKind::InvalidData, format!("{name} is not UTF-8"))),
            // A removed cgroup: its open files answer ENODEV.
            Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for CgroupFiles {
    fn drop(&mut self) {
        let open = self.slots.iter().filter(|(_, s)| matches!(s, Slot::Open(_))).count();
        BUDGET.fetch_add(open as isize, Ordering::Relaxed);
    }
}

fn pread_all(f: &File, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut offset = 0u64;
    loop {
        let start = buf.len();
        buf.resize(start + 4096, 0);
        let n = f.read_at(&mut buf[start..], offset)?;
        buf.truncate(start + n);
        if n == 0 {
            return Ok(());
        }
        offset += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_see_new_content_and_missing_files_stay_missing() {
        set_open_file_budget(10);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "1\n").unwrap();
        let mut files = CgroupFiles::new();
        assert_eq!(files.read(dir.path(), "a").unwrap(), Some("1\n"));
        // Rewritten in place (same inode, as the kernel regenerates a cgroup file).
        std::fs::OpenOptions::new().write(true).open(dir.path().join("a")).unwrap().write_all_at(b"2\n", 0).unwrap();
        assert_eq!(files.read(dir.path(), "a").unwrap(), Some("2\n"));
        assert_eq!(files.read(dir.path(), "b").unwrap(), None);
        let big = "x".repeat(10_000);
        std::fs::write(dir.path().join("c"), &big).unwrap();
        assert_eq!(files.read(dir.path(), "c").unwrap(), Some(big.as_str()));
    }

    #[test]
    fn real_cgroup_files_reread_with_pread() {
        let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else { return };
        let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) else { return };
        let dir = Path::new("/sys/fs/cgroup/unified").join(path.trim_start_matches('/'));
        let dir = if dir.exists() { dir } else { Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')) };
        let mut files = CgroupFiles::new();
        let Some(first) = files.read(&dir, "cgroup.procs").unwrap().map(str::to_owned) else { return };
        assert!(first.lines().any(|l| l.trim() == std::process::id().to_string()));
        let second = files.read(&dir, "cgroup.procs").unwrap().unwrap();
        assert!(second.lines().any(|l| l.trim() == std::process::id().to_string()));
    }
}
