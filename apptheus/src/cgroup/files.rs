//! A container's cgroup files, kept open and re-read with `pread` at offset 0. Opening a
//! cgroupfs file costs the kernel a path walk each time: re-reading an open one is ~4x cheaper
//! per sample (bench/RESULTS.md), at the price of one descriptor per file.
//!
//! Descriptors come from one budget: what RLIMIT_NOFILE leaves after a fixed reserve, minus what
//! each container needs for itself ([`ContainerDescriptors`]). Files beyond the budget are opened
//! per read. When new containers shrink the budget below zero, the others close kept files at
//! their next sample, so the agent never runs out of descriptors for placing one.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};

/// Descriptors that containers may keep open together (negative: owed back).
pub struct DescriptorBudget(AtomicIsize);

/// The agent's budget ([`CgroupFiles::new`] draws from it).
pub static DESCRIPTORS: DescriptorBudget = DescriptorBudget::new(0);

impl DescriptorBudget {
    pub const fn new(n: isize) -> DescriptorBudget {
        DescriptorBudget(AtomicIsize::new(n))
    }

    /// Allow `n` descriptors (set once at start).
    pub fn set(&self, n: usize) {
        self.0.store(n.min(isize::MAX as usize) as isize, Ordering::Relaxed);
    }

    pub fn available(&self) -> isize {
        self.0.load(Ordering::Relaxed)
    }

    fn take_one(&self) -> bool {
        if self.0.fetch_sub(1, Ordering::Relaxed) > 0 {
            true
        } else {
            self.0.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    fn give_back(&self, n: usize) {
        self.0.fetch_add(n as isize, Ordering::Relaxed);
    }

    /// What a container needs besides its sampled files (its launcher's connection, and
    /// `extra` more, such as its own cgroup_skb links), held for its life.
    pub fn take_for_container(&'static self, extra: usize) -> ContainerDescriptors {
        let n = 1 + extra;
        self.0.fetch_sub(n as isize, Ordering::Relaxed);
        ContainerDescriptors { budget: self, n }
    }
}

/// Allow `n` descriptors to be kept open for sampling (set once at start).
pub fn set_open_file_budget(n: usize) {
    DESCRIPTORS.set(n);
}

/// Descriptors a container needs besides its sampled files, taken from the budget until
/// dropped.
pub struct ContainerDescriptors {
    budget: &'static DescriptorBudget,
    n: usize,
}

impl Drop for ContainerDescriptors {
    fn drop(&mut self) {
        self.budget.give_back(self.n);
    }
}

enum Slot {
    Open(File),
    /// This kernel or hierarchy does not have the file.
    Missing,
}

/// Settings (limits) are re-read on every this many samples, and kept in between: they change
/// only when someone writes them, and reading them every time would be ~15 % of a sample.
pub const SETTING_REFRESH_SAMPLES: u64 = 10;

/// The files of one container, by name (a name is read from one directory only per layout).
pub struct CgroupFiles {
    budget: &'static DescriptorBudget,
    slots: Vec<(&'static str, Slot)>,
    /// Samples started ([`CgroupFiles::start_sample`]).
    samples: u64,
    /// Setting files: name, content (None: absent), and the sample it was read in.
    settings: Vec<(&'static str, Option<String>, u64)>,
    /// Read buffer, kept initialised at its full length so reads need not zero it again.
    buf: Vec<u8>,
}

impl Default for CgroupFiles {
    fn default() -> Self {
        CgroupFiles::with_budget(&DESCRIPTORS)
    }
}

impl CgroupFiles {
    pub fn new() -> CgroupFiles {
        CgroupFiles::default()
    }

    pub fn with_budget(budget: &'static DescriptorBudget) -> CgroupFiles {
        CgroupFiles { budget, slots: Vec::new(), samples: 0, settings: Vec::new(), buf: Vec::new() }
    }

    /// Marks the start of a sample (for the refresh of settings).
    pub fn start_sample(&mut self) {
        self.samples += 1;
        // Close kept files while the budget is owed (new containers need descriptors).
        while self.budget.available() < 0 {
            let Some(i) = self.slots.iter().rposition(|(_, slot)| matches!(slot, Slot::Open(_))) else { break };
            self.slots.remove(i);
            self.budget.give_back(1);
        }
    }

    /// Like [`CgroupFiles::read`] for a file that changes only when someone writes it (a
    /// limit): read in the first sample and then every [`SETTING_REFRESH_SAMPLES`] samples,
    /// and the content then read returned in between.
    pub fn read_setting(&mut self, dir: &Path, name: &'static str) -> io::Result<Option<&str>> {
        let now = self.samples;
        let i = match self.settings.iter().position(|(n, _, _)| *n == name) {
            Some(i) if now.saturating_sub(self.settings[i].2) < SETTING_REFRESH_SAMPLES => i,
            known => {
                let content = self.read_keeping(dir, name, false)?.map(str::to_owned);
                match known {
                    Some(i) => {
                        self.settings[i] = (name, content, now);
                        i
                    }
                    None => {
                        self.settings.push((name, content, now));
                        self.settings.len() - 1
                    }
                }
            }
        };
        Ok(self.settings[i].1.as_deref())
    }

    /// The file's current content, or `None` when it does not exist (or its cgroup is gone).
    pub fn read(&mut self, dir: &Path, name: &'static str) -> io::Result<Option<&str>> {
        self.read_keeping(dir, name, true)
    }

    /// Like [`CgroupFiles::read`] for a file read now and then only, which is not worth a kept
    /// descriptor.
    pub fn read_rarely(&mut self, dir: &Path, name: &'static str) -> io::Result<Option<&str>> {
        self.read_keeping(dir, name, false)
    }

    fn read_keeping(&mut self, dir: &Path, name: &'static str, keep: bool) -> io::Result<Option<&str>> {
        let found = match self.slots.iter().position(|(n, _)| *n == name) {
            Some(i) => match &self.slots[i].1 {
                Slot::Missing => return Ok(None),
                Slot::Open(f) => read_whole(f, &mut self.buf),
            },
            None => match File::open(dir.join(name)) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.slots.push((name, Slot::Missing));
                    return Ok(None);
                }
                Err(e) => Err(e),
                Ok(f) => {
                    let r = read_whole(&f, &mut self.buf);
                    if keep && self.budget.take_one() {
                        self.slots.push((name, Slot::Open(f)));
                    }
                    r
                }
            },
        };
        match found {
            Ok(len) => std::str::from_utf8(&self.buf[..len])
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
        self.budget.give_back(open);
    }
}

/// Below this many bytes, a read that returns less than asked is the whole file. A cgroup file
/// is a seq_file, which fills the caller's buffer until its content ends or the next record no
/// longer fits in its own buffer (a page at first, grown to hold any single record). Records of
/// cgroup files are short lines or the whole file, so a short read that stays this far below a
/// page is the end: no second read asking for EOF, which would cost one more syscall per file
/// per sample. Larger content (a long `cgroup.procs`) is read on until EOF.
const SURE_END_BELOW: usize = 4096 - 256;

/// The file's content from offset 0 into `buf` (grown as needed); returns its length.
fn read_whole(f: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    // A page holds every usual cgroup file; the buffer grows for the rare longer one.
    if buf.len() < 4096 {
        buf.resize(4096, 0);
    }
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], len as u64)?;
        len += n;
        if n == 0 || (len < SURE_END_BELOW && len < buf.len()) {
            return Ok(len);
        }
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_see_new_content_and_missing_files_stay_missing() {
        static BUDGET: DescriptorBudget = DescriptorBudget::new(10);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "1\n").unwrap();
        let mut files = CgroupFiles::with_budget(&BUDGET);
        assert_eq!(files.read(dir.path(), "a").unwrap(), Some("1\n"));
        // Rewritten in place (same inode, as the kernel regenerates a cgroup file).
        std::fs::OpenOptions::new().write(true).open(dir.path().join("a")).unwrap().write_all_at(b"2\n", 0).unwrap();
        assert_eq!(files.read(dir.path(), "a").unwrap(), Some("2\n"));
        assert_eq!(files.read(dir.path(), "b").unwrap(), None);
        // Around the sizes where one read is no longer taken as the whole file, and past the
        // buffer's first size.
        for size in [0, 1, SURE_END_BELOW - 1, SURE_END_BELOW, 4095, 4096, 4097, 8192, 100_000] {
            let content = "x".repeat(size);
            std::fs::write(dir.path().join("c"), &content).unwrap();
            let mut fresh = CgroupFiles::new();
            assert_eq!(fresh.read(dir.path(), "c").unwrap().map(str::len), Some(size));
            assert_eq!(fresh.read(dir.path(), "c").unwrap(), Some(content.as_str()), "re-read of {size} bytes");
        }
    }

    #[test]
    fn a_new_container_takes_descriptors_back_from_kept_files() {
        static BUDGET: DescriptorBudget = DescriptorBudget::new(4);
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c", "d"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let mut files = CgroupFiles::with_budget(&BUDGET);
        files.start_sample();
        for name in ["a", "b", "c", "d"] {
            assert_eq!(files.read(dir.path(), name).unwrap(), Some(name));
        }
        let kept = |f: &CgroupFiles| f.slots.iter().filter(|(_, s)| matches!(s, Slot::Open(_))).count();
        assert_eq!((kept(&files), BUDGET.available()), (4, 0), "all four kept open");
        // A container arrives: the budget is owed 3, and the next sample pays it back.
        let container = BUDGET.take_for_container(2);
        assert_eq!(BUDGET.available(), -3);
        files.start_sample();
        assert_eq!((kept(&files), BUDGET.available()), (1, 0));
        for name in ["a", "b", "c", "d"] {
            assert_eq!(files.read(dir.path(), name).unwrap(), Some(name), "still read, per read now");
        }
        assert_eq!(kept(&files), 1);
        // Settings and rare reads never take a descriptor.
        drop(container);
        assert_eq!(files.read_rarely(dir.path(), "e").unwrap(), None);
        std::fs::write(dir.path().join("e"), "e").unwrap();
        let _ = files.read_setting(dir.path(), "e").unwrap();
        assert_eq!(files.read_rarely(dir.path(), "e").unwrap(), None, "a missing file stays missing");
        assert_eq!(BUDGET.available(), 3);
        files.start_sample();
        for name in ["a", "b", "c", "d"] {
            files.read(dir.path(), name).unwrap();
        }
        assert_eq!((kept(&files), BUDGET.available()), (4, 0), "freed descriptors are taken again");
        drop(files);
        assert_eq!(BUDGET.available(), 4);
    }

    #[test]
    fn settings_are_reread_every_refresh_period() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("limit"), "max\n").unwrap();
        let mut files = CgroupFiles::new();
        files.start_sample();
        assert_eq!(files.read_setting(dir.path(), "limit").unwrap(), Some("max\n"));
        assert_eq!(files.read_setting(dir.path(), "absent").unwrap(), None);
        std::fs::write(dir.path().join("limit"), "1024\n").unwrap();
        for _ in 1..SETTING_REFRESH_SAMPLES {
            files.start_sample();
            assert_eq!(files.read_setting(dir.path(), "limit").unwrap(), Some("max\n"), "kept between refreshes");
        }
        files.start_sample();
        assert_eq!(files.read_setting(dir.path(), "limit").unwrap(), Some("1024\n"), "re-read after the period");
        assert_eq!(files.read_setting(dir.path(), "absent").unwrap(), None);
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
