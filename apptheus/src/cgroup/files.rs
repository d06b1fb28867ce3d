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
pub struct DescriptorBudget {
    available: AtomicIsize,
    /// The size it was set to.
    size: AtomicIsize,
    /// Descriptors kept for settings: they yield to files read every sample.
    settings: AtomicIsize,
}

/// The agent's budget ([`CgroupFiles::new`] draws from it).
pub static DESCRIPTORS: DescriptorBudget = DescriptorBudget::new(0);

impl DescriptorBudget {
    pub const fn new(n: isize) -> DescriptorBudget {
        DescriptorBudget { available: AtomicIsize::new(n), size: AtomicIsize::new(n), settings: AtomicIsize::new(0) }
    }

    /// Allow `n` descriptors (set once at start).
    pub fn set(&self, n: usize) {
        let n = n.min(isize::MAX as usize) as isize;
        self.available.store(n, Ordering::Relaxed);
        self.size.store(n, Ordering::Relaxed);
    }

    pub fn available(&self) -> isize {
        self.available.load(Ordering::Relaxed)
    }

    fn take_one(&self) -> bool {
        if self.available.fetch_sub(1, Ordering::Relaxed) > 0 {
            true
        } else {
            self.available.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// For a file read every sample: a free descriptor, else one that a kept setting will
    /// give back (the budget is then owed until a container holding settings samples).
    fn take_for_sampling(&self) -> bool {
        if self.take_one() {
            return true;
        }
        if self.available() + self.settings.load(Ordering::Relaxed) > 0 {
            self.available.fetch_sub(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// For a setting: only while more than a quarter of the budget is left.
    fn take_for_setting(&self) -> bool {
        if self.available() > self.size.load(Ordering::Relaxed) / 4 && self.take_one() {
            self.settings.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn give_back(&self, n: usize) {
        self.available.fetch_add(n as isize, Ordering::Relaxed);
    }

    fn give_back_settings(&self, n: usize) {
        self.settings.fetch_sub(n as isize, Ordering::Relaxed);
        self.give_back(n);
    }

    /// The `n` descriptors a container needs besides its sampled files (its launcher's
    /// connection, its own cgroup_skb links), held for its life.
    pub fn take_for_container(&'static self, n: usize) -> ContainerDescriptors {
        self.available.fetch_sub(n as isize, Ordering::Relaxed);
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

/// Whether a file read is worth a kept descriptor.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// Read every sample: kept while the budget lasts.
    Always,
    /// A setting: kept while the budget is ample, and given up first.
    Setting,
    Never,
}

/// Settings (limits) are re-read on every this many samples, and kept in between: they change
/// only when someone writes them, and reading them every time would be ~15 % of a sample.
/// Counters of rare events are re-read on the same cadence while they stand still.
pub const SETTING_REFRESH_SAMPLES: u64 = 10;

/// A file not read every sample: its content when last read (None: absent), in which sample,
/// and whether it had changed then (a rare-event counter that moves is read every sample).
struct Cached {
    content: Option<String>,
    sample: u64,
    moved: bool,
}

/// A file: its directory (index into [`CgroupFiles::dirs`]) and name. The same name can be
/// read from two hierarchies (`cpu.stat` of v1 `cpu` and of the unified hierarchy).
type FileKey = (usize, &'static str);

/// The files of one container, by directory and name.
pub struct CgroupFiles {
    budget: &'static DescriptorBudget,
    /// The directories read so far (one per hierarchy: a handful).
    dirs: Vec<std::path::PathBuf>,
    /// Files read every sample (and rare ones that turned out missing), in the order first read.
    slots: Vec<(FileKey, Slot)>,
    /// Where the next read of a sample is expected in `slots`: collectors read the same files
    /// in the same order every sample, so a lookup is one comparison.
    cursor: usize,
    /// Files not read every sample (settings and rare-event counters): their descriptors, and
    /// what was last read.
    setting_slots: Vec<(FileKey, Slot)>,
    settings: Vec<(FileKey, Cached)>,
    /// Samples started ([`CgroupFiles::start_sample`]).
    samples: u64,
    /// This sample reads every file afresh ([`CgroupFiles::refresh_all`]).
    exact: bool,
    exact_next: bool,
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
        CgroupFiles {
            budget,
            dirs: Vec::new(),
            slots: Vec::new(),
            cursor: 0,
            setting_slots: Vec::new(),
            settings: Vec::new(),
            samples: 0,
            exact: false,
            exact_next: false,
            buf: Vec::new(),
        }
    }

    /// Marks the start of a sample (for the refresh of settings).
    pub fn start_sample(&mut self) {
        self.samples += 1;
        self.cursor = 0;
        self.exact = std::mem::take(&mut self.exact_next);
        // Pay back what the budget is owed (new containers need descriptors): settings first;
        // files read every sample only for debts no kept setting elsewhere will pay.
        while self.budget.available() < 0 {
            if let Some(i) = self.setting_slots.iter().rposition(|(_, slot)| matches!(slot, Slot::Open(_))) {
                self.setting_slots.remove(i);
                self.budget.give_back_settings(1);
                continue;
            }
            if self.budget.available() + self.budget.settings.load(Ordering::Relaxed) >= 0 {
                break;
            }
            let Some(i) = self.slots.iter().rposition(|(_, slot)| matches!(slot, Slot::Open(_))) else { break };
            self.slots.remove(i);
            self.cursor = 0;
            self.budget.give_back(1);
        }
    }

    /// The next sample reads every file afresh, settings and rare-event counters included (a
    /// container's final sample).
    pub fn refresh_all(&mut self) {
        self.exact_next = true;
    }

    /// Like [`CgroupFiles::read`] for a file that changes only when someone writes it (a
    /// limit): read in the first sample and then every [`SETTING_REFRESH_SAMPLES`] samples,
    /// and the content then read returned in between.
    pub fn read_setting(&mut self, dir: &Path, name: &'static str) -> io::Result<Option<&str>> {
        self.read_cached(dir, name, false)
    }

    /// Like [`CgroupFiles::read`] for counters of events that are rare in nearly every
    /// container, and only happen under a limit or an OOM (CFS throttling, `failcnt`, OOM
    /// kills): read every sample while the content keeps changing, else like a setting. A
    /// counter that starts moving shows it within [`SETTING_REFRESH_SAMPLES`] samples, and a
    /// container's final sample reads it exactly ([`CgroupFiles::refresh_all`]).
    pub fn read_rare_counter(&mut self, dir: &Path, name: &'static str) -> io::Result<Option<&str>> {
        self.read_cached(dir, name, true)
    }

    fn read_cached(&mut self, dir: &Path, name: &'static str, counter: bool) -> io::Result<Option<&str>> {
        let now = self.samples;
        let key = self.key(dir, name);
        let known = self.settings.iter().position(|(k, _)| *k == key);
        let fresh_enough = |c: &Cached| !c.moved && now.saturating_sub(c.sample) < SETTING_REFRESH_SAMPLES;
        let i = match known {
            Some(i) if !self.exact && fresh_enough(&self.settings[i].1) => i,
            _ => {
                let content = self.read_keeping(dir, name, Keep::Setting)?.map(str::to_owned);
                let moved = counter && known.is_some_and(|i| self.settings[i].1.content != content);
                let cached = Cached { content, sample: now, moved };
                match known {
                    Some(i) => {
                        self.settings[i].1 = cached;
                        i
                    }
                    None => {
                        self.settings.push((key, cached));
                        self.settings.len() - 1
                    }
                }
            }
        };
        Ok(self.settings[i].1.content.as_deref())
    }

    /// The file's current content, or `None` when it does not exist (or its cgroup is gone).
    pub fn read(&mut self, dir: &Path, name: &'static str) -> io::Result<Option<&str>> {
        self.read_keeping(dir, name, Keep::Always)
    }

    /// Like [`CgroupFiles::read`], opening the file for each read: for a file read now and then
    /// only, which is not worth a kept descriptor, and for one whose content the kernel keeps per
    /// open descriptor (cgroup v1 `cgroup.procs`).
    pub fn read_rarely(&mut self, dir: &Path, name: &'static str) -> io::Result<Option<&str>> {
        self.read_keeping(dir, name, Keep::Never)
    }

    /// The key of `dir`/`name`, remembering `dir` the first time.
    fn key(&mut self, dir: &Path, name: &'static str) -> FileKey {
        let i = match self.dirs.iter().position(|d| d.as_os_str() == dir.as_os_str()) {
            Some(i) => i,
            None => {
                self.dirs.push(dir.to_path_buf());
                self.dirs.len() - 1
            }
        };
        (i, name)
    }

    /// The slot of `dir`/`name` in `slots` (or `setting_slots`), if it has one.
    fn find(&mut self, dir: &Path, name: &'static str, setting: bool) -> (FileKey, Option<usize>) {
        if !setting {
            // The expected file: the same name (one string literal) in the same directory.
            if let Some(((d, n), _)) = self.slots.get(self.cursor) {
                if std::ptr::eq(n.as_ptr(), name.as_ptr()) && n.len() == name.len() && self.dirs[*d].as_os_str() == dir.as_os_str() {
                    return ((*d, n), Some(self.cursor));
                }
            }
        }
        let key = self.key(dir, name);
        let list = if setting { &self.setting_slots } else { &self.slots };
        (key, list.iter().position(|(k, _)| *k == key))
    }

    fn read_keeping(&mut self, dir: &Path, name: &'static str, keep: Keep) -> io::Result<Option<&str>> {
        let setting = keep == Keep::Setting;
        let (key, at) = self.find(dir, name, setting);
        if let (false, Some(i)) = (setting, at) {
            self.cursor = i + 1;
        }
        let list = if setting { &mut self.setting_slots } else { &mut self.slots };
        let found = match at {
            Some(i) => match &list[i].1 {
                Slot::Missing => return Ok(None),
                Slot::Open(f) => read_whole(f, &mut self.buf),
            },
            None => match File::open(dir.join(name)) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    list.push((key, Slot::Missing));
                    if !setting {
                        self.cursor = list.len();
                    }
                    return Ok(None);
                }
                Err(e) => Err(e),
                Ok(f) => {
                    let r = read_whole(&f, &mut self.buf);
                    let kept = match keep {
                        Keep::Always => self.budget.take_for_sampling(),
                        Keep::Setting => self.budget.take_for_setting(),
                        Keep::Never => false,
                    };
                    if kept {
                        list.push((key, Slot::Open(f)));
                        if !setting {
                            self.cursor = list.len();
                        }
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
        let open = |slots: &[(FileKey, Slot)]| slots.iter().filter(|(_, s)| matches!(s, Slot::Open(_))).count();
        self.budget.give_back(open(&self.slots));
        self.budget.give_back_settings(open(&self.setting_slots));
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
    fn a_rare_counter_is_read_every_sample_only_while_it_moves() {
        static BUDGET: DescriptorBudget = DescriptorBudget::new(10);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.failcnt");
        let set = |v: &str| std::fs::write(&path, v).unwrap();
        set("0\n");
        let mut files = CgroupFiles::with_budget(&BUDGET);
        let read = |files: &mut CgroupFiles| {
            files.start_sample();
            files.read_rare_counter(dir.path(), "memory.failcnt").unwrap().map(str::to_owned)
        };
        assert_eq!(read(&mut files).as_deref(), Some("0\n"), "first sample: read");
        // Standing still: not re-read until the settings' refresh.
        set("1\n");
        let seen: Vec<_> = (1..SETTING_REFRESH_SAMPLES).map(|_| read(&mut files)).collect();
        assert!(seen.iter().all(|s| s.as_deref() == Some("0\n")), "{seen:?}");
        assert_eq!(read(&mut files).as_deref(), Some("1\n"), "refresh after {SETTING_REFRESH_SAMPLES} samples");
        // It moved: now read every sample, as long as it keeps moving.
        set("2\n");
        assert_eq!(read(&mut files).as_deref(), Some("2\n"));
        set("3\n");
        assert_eq!(read(&mut files).as_deref(), Some("3\n"));
        // Still again (read once more to see that), then back to the settings' cadence.
        assert_eq!(read(&mut files).as_deref(), Some("3\n"));
        set("4\n");
        assert_eq!(read(&mut files).as_deref(), Some("3\n"), "still: not read every sample");
        // A final sample reads it afresh (and it moved, so the next one reads it too).
        files.refresh_all();
        assert_eq!(read(&mut files).as_deref(), Some("4\n"), "refresh_all");
        set("5\n");
        assert_eq!(read(&mut files).as_deref(), Some("5\n"), "moved at the last read");
        // refresh_all re-reads settings too, for one sample.
        let limit = dir.path().join("pids.max");
        let read_limit = |files: &mut CgroupFiles| {
            files.start_sample();
            files.read_setting(dir.path(), "pids.max").unwrap().map(str::to_owned)
        };
        std::fs::write(&limit, "10\n").unwrap();
        assert_eq!(read_limit(&mut files).as_deref(), Some("10\n"));
        std::fs::write(&limit, "20\n").unwrap();
        assert_eq!(read_limit(&mut files).as_deref(), Some("10\n"));
        files.refresh_all();
        assert_eq!(read_limit(&mut files).as_deref(), Some("20\n"), "refresh_all");
        std::fs::write(&limit, "30\n").unwrap();
        assert_eq!(read_limit(&mut files).as_deref(), Some("20\n"), "refresh_all is for one sample");
    }

    #[test]
    fn one_name_in_two_directories_is_two_files() {
        // As `cpu.stat` of the v1 cpu controller and of the unified hierarchy, both kept open.
        static BUDGET: DescriptorBudget = DescriptorBudget::new(10);
        let (v1, unified) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(v1.path().join("cpu.stat"), "nr_periods 7\n").unwrap();
        std::fs::write(unified.path().join("cpu.stat"), "usage_usec 9\n").unwrap();
        let mut files = CgroupFiles::with_budget(&BUDGET);
        for _ in 0..2 {
            files.start_sample();
            assert_eq!(files.read(unified.path(), "cpu.stat").unwrap(), Some("usage_usec 9\n"));
            assert_eq!(files.read(v1.path(), "cpu.stat").unwrap(), Some("nr_periods 7\n"));
        }
        assert_eq!(BUDGET.available(), 8, "both kept open");
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
        let container = BUDGET.take_for_container(3);
        assert_eq!(BUDGET.available(), -3);
        files.start_sample();
        assert_eq!((kept(&files), BUDGET.available()), (1, 0));
        for name in ["a", "b", "c", "d"] {
            assert_eq!(files.read(dir.path(), name).unwrap(), Some(name), "still read, per read now");
        }
        assert_eq!(kept(&files), 1);
        // Rare reads never take a descriptor, and a file found missing stays missing.
        drop(container);
        assert_eq!(files.read_rarely(dir.path(), "e").unwrap(), None);
        std::fs::write(dir.path().join("e"), "e").unwrap();
        assert_eq!(files.read_rarely(dir.path(), "e").unwrap(), None, "a missing file stays missing");
        std::fs::write(dir.path().join("f"), "f").unwrap();
        assert_eq!(files.read_rarely(dir.path(), "f").unwrap(), Some("f"));
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
    fn settings_keep_descriptors_only_while_the_budget_is_ample_and_give_them_up_first() {
        static BUDGET: DescriptorBudget = DescriptorBudget::new(8);
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "s1", "s2", "s3"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let kept = |f: &CgroupFiles| {
            let open = |slots: &[(FileKey, Slot)]| slots.iter().filter(|(_, s)| matches!(s, Slot::Open(_))).count();
            (open(&f.slots), open(&f.setting_slots))
        };
        let mut files = CgroupFiles::with_budget(&BUDGET);
        files.start_sample();
        for name in ["s1", "a", "s2", "b", "s3"] {
            let text = if name.starts_with('s') { files.read_setting(dir.path(), name) } else { files.read(dir.path(), name) };
            assert_eq!(text.unwrap(), Some(name));
        }
        // 8 → s1 (7) → a (6) → s2 (5) → b (4) → s3 (3): always more than a quarter (2) left.
        assert_eq!((kept(&files), BUDGET.available()), ((2, 3), 3));
        let mut other = CgroupFiles::with_budget(&BUDGET);
        other.start_sample();
        assert_eq!(other.read_setting(dir.path(), "s1").unwrap(), Some("s1"));
        assert_eq!(other.read(dir.path(), "a").unwrap(), Some("a"));
        assert_eq!(other.read_setting(dir.path(), "s2").unwrap(), Some("s2"));
        // 3 → s1 (2) → a (1) → s2: 1 is not above 2, so read per refresh instead.
        assert_eq!((kept(&other), BUDGET.available()), ((1, 1), 1));
        // A container arrives and is owed 2: settings are closed first.
        let container = BUDGET.take_for_container(3);
        files.start_sample();
        assert_eq!((kept(&files), BUDGET.available()), ((2, 1), 0));
        // Still read, and right.
        assert_eq!(files.read_setting(dir.path(), "s2").unwrap(), Some("s2"));
        // None left: a file read every sample borrows one that a kept setting gives back.
        let mut third = CgroupFiles::with_budget(&BUDGET);
        third.start_sample();
        assert_eq!(third.read(dir.path(), "a").unwrap(), Some("a"));
        assert_eq!((kept(&third), BUDGET.available()), ((1, 0), -1));
        third.start_sample();
        assert_eq!(kept(&third), (1, 0), "the debt is left to containers holding settings");
        other.start_sample();
        assert_eq!((kept(&other), BUDGET.available()), ((1, 0), 0));
        drop((container, files, other, third));
        assert_eq!(BUDGET.available(), 8);
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
