//! The floor: the least a sampler can do. One thread reads every file of the agent's sampled
//! set for every container cgroup once per interval, with open/read/close and nothing else (no
//! parsing, no storing). It runs as a separate process (this binary, re-executed with a hidden
//! flag) so that its CPU, memory, threads and descriptors are measured the same way as the
//! agent's, from /proc.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

/// Totals the floor prints when it stops.
#[derive(Debug, Default, Clone)]
pub struct FloorTotals {
    pub passes: u64,
    pub reads: u64,
    pub errors: u64,
    pub bytes: u64,
    /// Passes that ran past their interval.
    pub late: u64,
    /// Wall nanoseconds spent in open/read/close per file of [`super::sys::SAMPLED_FILES`]
    /// (the list holds those files in that order for each cgroup).
    pub ns_per_file: Vec<u64>,
}

/// Entry point of the re-executed floor process: read the path list, then one pass per
/// interval until stdin closes.
///
/// With `keep_open`, every file is opened once and re-read with pread at offset 0 each pass
/// (one syscall per file instead of open/read/read/close): not the floor, but what a
/// sampler that keeps its descriptors could reach.
pub fn floor_main(spec: &Path, interval: Duration, keep_open: bool) -> Result<()> {
    let list = std::fs::read_to_string(spec).with_context(|| format!("reading {}", spec.display()))?;
    let paths: Vec<std::ffi::CString> = list
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| std::ffi::CString::new(l).unwrap())
        .collect();
    let mut buf = vec![0u8; 64 * 1024];
    let kinds = super::sys::SAMPLED_FILES.len();
    let mut t = FloorTotals { ns_per_file: vec![0; kinds], ..Default::default() };
    let interval_ns = interval.as_nanos() as u64;
    let mut fds: Vec<libc::c_int> = Vec::new();
    if keep_open {
        let want = (paths.len() + 64) as libc::rlim_t;
        let lim = libc::rlimit { rlim_cur: want.max(1024), rlim_max: want.max(1024) };
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        for p in &paths {
            fds.push(unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) });
        }
    }
    let mut next = super::sys::mono_ns();
    loop {
        if keep_open {
            for (i, fd) in fds.iter().enumerate() {
                let start = super::sys::mono_ns();
                if *fd < 0 {
                    t.errors += 1;
                    continue;
                }
                let mut off = 0;
                loop {
                    let n = unsafe { libc::pread(*fd, buf.as_mut_ptr().cast(), buf.len(), off) };
                    if n < 0 {
                        t.errors += 1;
                        break;
                    }
                    t.bytes += n as u64;
                    // A short read is the whole file: no second call for the end.
                    if (n as usize) < buf.len() {
                        break;
                    }
                    off += n as libc::off_t;
                }
                t.reads += 1;
                t.ns_per_file[i % kinds] += super::sys::mono_ns() - start;
            }
        }
        for (i, p) in paths.iter().enumerate().filter(|_| !keep_open) {
            let start = super::sys::mono_ns();
            // Plain syscalls: open, read until end of file, close.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                t.errors += 1;
                continue;
            }
            loop {
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    if n < 0 {
                        t.errors += 1;
                    }
                    break;
                }
                t.bytes += n as u64;
            }
            unsafe { libc::close(fd) };
            t.reads += 1;
            t.ns_per_file[i % kinds] += super::sys::mono_ns() - start;
        }
        t.passes += 1;
        next += interval_ns;
        let now = super::sys::mono_ns();
        if now > next {
            t.late += 1;
            next = now;
        }
        // Sleep until the next pass, or stop when the harness closes our stdin.
        let wait = next.saturating_sub(now);
        let ts = libc::timespec { tv_sec: (wait / 1_000_000_000) as _, tv_nsec: (wait % 1_000_000_000) as _ };
        let mut pfd = libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 };
        let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r > 0 {
            break;
        }
    }
    let mut out = std::io::stdout();
    let per_file: Vec<String> = t.ns_per_file.iter().map(|n| n.to_string()).collect();
    writeln!(out, "{} {} {} {} {} {}", t.passes, t.reads, t.errors, t.bytes, t.late, per_file.join(" "))?;
    Ok(())
}

/// A running floor process.
pub struct Floor {
    child: Option<Child>,
    pub pid: u32,
}

impl Floor {
    pub fn start(bin: &Path, spec: &Path, interval: Duration, keep_open: bool) -> Result<Floor> {
        let child = Command::new(bin)
            .arg("bench")
            .arg(format!("--internal-floor={}", spec.display()))
            .args(keep_open.then_some("--internal-keep-open"))
            .arg(format!("--interval-ms={}", interval.as_millis()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .context("starting the floor")?;
        let pid = child.id();
        Ok(Floor { child: Some(child), pid })
    }

    /// Close its stdin (it stops after the current pass) and collect its totals.
    pub fn stop(mut self) -> Result<FloorTotals> {
        let mut child = self.child.take().unwrap();
        drop(child.stdin.take());
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out)?;
        child.wait()?;
        let v: Vec<u64> = out.split_whitespace().filter_map(|s| s.parse().ok()).collect();
        anyhow::ensure!(v.len() == 5 + super::sys::SAMPLED_FILES.len(), "floor printed {out:?}");
        Ok(FloorTotals { passes: v[0], reads: v[1], errors: v[2], bytes: v[3], late: v[4], ns_per_file: v[5..].to_vec() })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::sys::kill(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
    }
}
