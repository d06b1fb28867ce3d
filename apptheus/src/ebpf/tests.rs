//! Privileged tests on the real kernel: workloads with known behaviour run in a watched test
//! cgroup, and the counters must agree with them.
//!
//! Each test creates its cgroups only below this process's own cgroup and removes them (after
//! killing what it started) even when an assertion fails. Without root or when eBPF cannot load,
//! a test prints `SKIP: reason` and passes, unless `APPTHEUS_REQUIRE_PRIVILEGED=1`, where it fails.
//!
//! Workloads that need code run as this test binary re-executed on the ignored test
//! [`child_process`], with the role in an environment variable.
use std::{
    ffi::CString,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use apptheus_common::TaskFilter;

use super::{
    cgroup_id, cgroup_level, programs::Fallbacks, task_filter_for, Ebpf, EbpfCounters, EbpfOptions,
    OBJECT,
};

const REQUIRE_ENV: &str = "APPTHEUS_REQUIRE_PRIVILEGED";
const CHILD_ENV: &str = "APPTHEUS_EBPF_TEST_CHILD";
const CHILD_DONE: &str = "APPTHEUS-EBPF-CHILD-DONE";
const CHILD_READY: &str = "APPTHEUS-EBPF-CHILD-READY";

/// One test at a time: they load their own programs and time workloads on 2 CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

struct Setup {
    ebpf: Ebpf,
    _serial: MutexGuard<'static, ()>,
}

/// Loads the programs, or says why the test cannot run (and fails if it is required to).
fn setup() -> Option<Setup> {
    setup_with(Fallbacks::default())
}

/// The programs as on a kernel without `sched_info` and the cgroup fields the task filter needs:
/// the sched_wakeup programs stamp run-queue waits, and every task is looked up.
fn setup_fallbacks() -> Option<Setup> {
    setup_with(Fallbacks {
        runq_stamps: true,
        no_task_filter: true,
        ..Fallbacks::default()
    })
}

fn setup_with(fallbacks: Fallbacks) -> Option<Setup> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let skip = |reason: String| -> Option<Setup> {
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("{REQUIRE_ENV}=1 but this privileged test cannot run: {reason}");
        }
        eprintln!("SKIP: {reason}");
        None
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root".into());
    }
    if unified_root().is_none() {
        return skip("no cgroup v2 hierarchy mounted".into());
    }
    let ebpf = Ebpf::load_object(&EbpfOptions::default(), OBJECT, fallbacks);
    if !ebpf.up() {
        return skip(format!("eBPF cannot load here: {:?}", ebpf.programs()));
    }
    Some(Setup {
        ebpf,
        _serial: serial,
    })
}

// --- cgroups -------------------------------------------------------------------------------

/// Mount point of the unified (v2) hierarchy: hybrid mode or pure v2.
fn unified_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
}

/// This process's cgroup path for the hierarchy whose /proc/self/cgroup line starts with
/// `prefix` ("0::" for v2, "N:memory:" for v1 memory).
fn own_cgroup(matches: impl Fn(&str) -> bool) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        matches(controllers).then(|| path.to_owned())
    })
}

/// A test cgroup below our own, in the unified hierarchy (and in the v1 memory hierarchy when
/// a memory limit is asked for in hybrid mode). Drop kills what runs in it and removes it.
struct TestCgroup {
    unified: PathBuf,
    memory_v1: Option<PathBuf>,
    children: Vec<u32>,
}

impl TestCgroup {
    fn new(tag: &str) -> Self {
        let root = unified_root().expect("checked in setup");
        let own = own_cgroup(|c| c.is_empty()).expect("a 0:: line in /proc/self/cgroup");
        Self::new_below(&root.join(own.trim_start_matches('/')), tag)
    }

    /// A test cgroup below another one (dropped first, since declared later).
    fn new_in(parent: &TestCgroup, tag: &str) -> Self {
        Self::new_below(&parent.unified, tag)
    }

    fn new_below(dir: &Path, tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "apptheus-test-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let unified = dir.join(&name);
        std::fs::create_dir(&unified)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", unified.display()));
        Self {
            unified,
            memory_v1: None,
            children: Vec::new(),
        }
    }

    fn id(&self) -> u64 {
        cgroup_id(&self.unified).expect("cgroup inode")
    }

    /// Limits memory: v1 memory controller in hybrid mode, else memory.max in v2.
    /// Returns false when neither is available.
    fn limit_memory(&mut self, bytes: u64) -> bool {
        if let Some(own) = own_cgroup(|c| c.split(',').any(|c| c == "memory")) {
            let name = self.unified.file_name().expect("named");
            let dir = Path::new("/sys/fs/cgroup/memory")
                .join(own.trim_start_matches('/'))
                .join(name);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            self.memory_v1 = Some(dir.clone());
            std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).expect("v1 limit");
            return true;
        }
        std::fs::write(self.unified.join("memory.max"), bytes.to_string()).is_ok()
    }

    /// Spawns `cmd` with the child moved into this cgroup before it execs.
    fn spawn(&mut self, cmd: &mut Command, pin_cpu: Option<usize>) -> Child {
        let procs: Vec<CString> = std::iter::once(&self.unified)
            .chain(self.memory_v1.as_ref())
            .map(|d| CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()))
            .collect::<Result<_, _>>()
            .expect("path without NUL");
        // SAFETY: an all-zero cpu_set_t is valid; CPU_SET writes inside it.
        let cpus = pin_cpu.map(|cpu| unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            set
        });
        // SAFETY: the closure only makes async-signal-safe syscalls on data prepared above.
        unsafe {
            cmd.pre_exec(move || {
                for path in &procs {
                    // Writing "0" moves the writing process.
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(set) = &cpus {
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn workload");
        self.children.push(child.id());
        child
    }

    fn pids(dir: &Path) -> Vec<i32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = std::iter::once(self.unified.clone())
            .chain(self.memory_v1.clone())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Our children first, then anything they left in our own cgroups.
            let mut pids: Vec<i32> = self
                .children
                .iter()
                .filter_map(|&p| i32::try_from(p).ok())
                .collect();
            dirs.iter().for_each(|d| pids.extend(Self::pids(d)));
            pids.retain(|&p| p > 0);
            for &pid in &pids {
                // SAFETY: plain kill(2) of a pid we started or that sits in our test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            self.children.clear();
            if dirs.iter().all(|d| Self::pids(d).is_empty()) || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        for dir in &dirs {
            // A cgroup whose last task just died can be busy for a moment.
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            if dir.exists() {
                eprintln!("warning: could not remove test cgroup {}", dir.display());
            }
        }
    }
}

// --- child workloads -----------------------------------------------------------------------

/// This test binary re-executed as a workload with the given role.
fn child_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--ignored",
        "--exact",
        "ebpf::tests::child_process",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(CHILD_ENV, role)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// Reads the child's stdout until it reports its work done; the rest is drained in the
/// background so the child never writes into a closed pipe.
fn wait_done(child: &mut Child) {
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    for line in lines.by_ref() {
        if line.expect("child stdout") == CHILD_DONE {
            thread::spawn(move || lines.for_each(drop));
            return;
        }
    }
    panic!("workload exited before finishing: {:?}", child.wait());
}

/// Reads the child's stdout up to the line `marker`.
fn wait_line(lines: &mut std::io::Lines<BufReader<std::process::ChildStdout>>, marker: &str) {
    for line in lines.by_ref() {
        if line.expect("child stdout") == marker {
            return;
        }
    }
    panic!("workload exited before printing {marker}");
}

/// Waits until every thread of `pid` sleeps (state S or D in /proc/<pid>/task/*/stat), so that
/// no run-queue wait of it is under way.
fn wait_all_blocked(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocked = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc/<pid>/task")
            .all(|task| {
                let stat = std::fs::read_to_string(task.expect("task").path().join("stat"))
                    .unwrap_or_default();
                let state = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next());
                matches!(state, Some('S' | 'D'))
            });
        if blocked {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} never blocked");
        thread::sleep(Duration::from_millis(5));
    }
}

fn arg(role: &str) -> u64 {
    role.split_once(':')
        .and_then(|(_, n)| n.parse().ok())
        .expect("role:<number>")
}

/// Entry point of the re-executed workloads; does nothing in a normal test run.
#[test]
#[ignore = "workload process of the eBPF tests, run by them"]
fn child_process() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    match role.split_once(':').map_or(role.as_str(), |(r, _)| r) {
        // Block and wake `n` times, then stay alive (blocked on stdin) until the parent has read
        // /proc.
        "sleep" => {
            for _ in 0..arg(&role) {
                thread::sleep(Duration::from_micros(100));
            }
            println!("{CHILD_DONE}");
            let _ = std::io::stdout().flush();
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        }
        // Wait for a byte on stdin, burn CPU for `n` ms, then stay alive (blocked on stdin)
        // until the parent has read /proc.
        "spin-wait" => {
            println!("{CHILD_READY}");
            let _ = std::io::stdout().flush();
            let _ = std::io::stdin().read(&mut [0u8; 1]);
            let end = Instant::now() + Duration::from_millis(arg(&role));
            let mut x = 0u64;
            while Instant::now() < end {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            println!("{CHILD_DONE}");
            let _ = std::io::stdout().flush();
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        }
        // Burn CPU for `n` ms.
        "spin" => {
            let end = Instant::now() + Duration::from_millis(arg(&role));
            let mut x = 0u64;
            while Instant::now() < end {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        // Send exactly `n` bytes to ourselves over loopback TCP.
        "net" => {
            let n = arg(&role) as usize;
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let mut client =
                TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            let sender = thread::spawn(move || {
                client.write_all(&vec![0x5a; n]).expect("send");
                client.shutdown(std::net::Shutdown::Both).expect("shutdown");
            });
            let mut received = Vec::with_capacity(n);
            server.read_to_end(&mut received).expect("receive");
            sender.join().expect("sender");
            assert_eq!(received.len(), n);
            println!("{CHILD_DONE}");
        }
        // Allocate and touch `n` MiB.
        "alloc" => {
            let mut chunks = Vec::new();
            for _ in 0..arg(&role) {
                let mut chunk = vec![0u8; 1 << 20];
                chunk.iter_mut().step_by(4096).for_each(|b| *b = 1);
                chunks.push(std::hint::black_box(chunk));
            }
            println!("{CHILD_DONE}");
        }
        other => panic!("unknown child role {other}"),
    }
}

fn read(ebpf: &Ebpf, id: u64) -> EbpfCounters {
    ebpf.read(id).expect("watched cgroup has counters")
}

/// (run_delay ns, waits) of a process from the kernel's own accounting: the 2nd and 3rd fields
/// of /proc/<pid>/task/*/schedstat, summed over its threads.
fn proc_run_delay(pid: u32) -> (u64, u64) {
    let mut sum = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task") {
        let text = std::fs::read_to_string(task.expect("task").path().join("schedstat"))
            .unwrap_or_default();
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [_, delay, waits, ..] = fields[..] {
            sum.0 += delay;
            sum.1 += waits;
        }
    }
    sum
}

/// Sum of voluntary_ctxt_switches over the tasks of a process.
fn proc_voluntary_switches(pid: u32) -> u64 {
    let mut sum = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task") {
        let status =
            std::fs::read_to_string(task.expect("task").path().join("status")).unwrap_or_default();
        sum += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    sum
}

// --- tests ---------------------------------------------------------------------------------

#[test]
fn disabled_loads_nothing() {
    let ebpf = Ebpf::load(&EbpfOptions { disable: true, ..Default::default() });
    assert!(!ebpf.up());
    assert!(ebpf.programs().iter().all(|(_, attached)| !attached));
    assert!(ebpf.read(1).is_none());
}

#[test]
fn a_broken_object_degrades_instead_of_failing() {
    let ebpf = Ebpf::load_object(
        &EbpfOptions::default(),
        b"not an ELF object",
        Fallbacks::default(),
    );
    assert!(!ebpf.up());
    assert!(ebpf.programs().iter().all(|(_, attached)| !attached));
    let mut ebpf = ebpf;
    assert!(ebpf.watch(1, Path::new("/nonexistent")).is_err());
    ebpf.unwatch(1);
}

#[test]
fn cgroup_id_is_the_directory_inode() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = std::env::temp_dir();
    assert_eq!(
        cgroup_id(&dir).unwrap(),
        std::fs::metadata(&dir).unwrap().ino()
    );
}

#[test]
fn all_programs_attach_here() {
    let Some(s) = setup() else { return };
    let failed: Vec<_> = s
        .ebpf
        .programs()
        .into_iter()
        .filter(|(_, ok)| !ok)
        .collect();
    assert!(failed.is_empty(), "programs not attached: {failed:?}");
}

#[test]
fn exec_and_fork_counts_only_the_watched_cgroup() {
    let Some(mut s) = setup() else { return };
    let mut cg = TestCgroup::new("exec");
    let id = cg.id();
    s.ebpf.watch(id, &cg.unified).expect("watch");
    assert_eq!(read(&s.ebpf, id), EbpfCounters::default());

    let script = "i=0; while [ $i -lt 50 ]; do /bin/true; i=$((i+1)); done";
    let status = cg
        .spawn(Command::new("/bin/sh").args(["-c", script]), None)
        .wait()
        .expect("wait");
    assert!(status.success());
    let after = read(&s.ebpf, id);
    eprintln!("exec loop: {after:?}");
    assert!(after.execs >= 50, "execs {after:?}");
    assert!(after.forks >= 50, "forks {after:?}");
    assert!(after.exits >= 50, "exits {after:?}");

    // The same workload outside the watched cgroup moves nothing.
    let status = Command::new("/bin/sh")
        .args(["-c", script])
        .status()
        .expect("sibling");
    assert!(status.success());
    let sibling = read(&s.ebpf, id);
    assert_eq!(
        (sibling.execs, sibling.forks, sibling.exits),
        (after.execs, after.forks, after.exits)
    );

    s.ebpf.unwatch(id);
    assert!(s.ebpf.read(id).is_none(), "unwatch deletes the counters");
}

/// Runs `/bin/true` `n` times from a shell in `cg` (one fork, exec and exit each).
fn run_true(cg: &mut TestCgroup, n: usize) {
    let script = format!("i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done");
    assert!(cg.spawn(Command::new("/bin/sh").args(["-c", &script]), None).wait().expect("wait").success());
}

#[test]
fn containers_without_a_fast_slot_are_counted_in_the_hash_alike() {
    // One fast slot: the first container gets it, the second goes to the COUNTERS hash.
    let Some(mut s) = setup_with(Fallbacks { fast_slots: Some(1), ..Fallbacks::default() }) else { return };
    let run = run_true;
    let (mut fast, mut hashed) = (TestCgroup::new("tier-fast"), TestCgroup::new("tier-hash"));
    let (idf, idh) = (fast.id(), hashed.id());
    s.ebpf.watch(idf, &fast.unified).expect("watch the first");
    s.ebpf.watch(idh, &hashed.unified).expect("watch the second");
    let loaded = s.ebpf.loaded.as_ref().expect("loaded");
    assert_eq!(loaded.fast.index_of(idf), Some(0), "the first container has the fast slot");
    assert_eq!(loaded.fast.index_of(idh), None, "the second has none");
    assert_eq!((read(&s.ebpf, idf), read(&s.ebpf, idh)), (EbpfCounters::default(), EbpfCounters::default()));

    run(&mut fast, 7);
    run(&mut hashed, 13);
    for (id, n) in [(idf, 7), (idh, 13)] {
        let c = read(&s.ebpf, id);
        eprintln!("{n} execs: {c:?}");
        assert!(c.execs >= n && c.execs < n + 3, "execs of the {n}-exec cgroup: {c:?}");
        assert!(c.forks >= n && c.exits >= n, "{c:?}");
        assert!(c.voluntary_switches > 0 && c.runqueue_latency_log2_ns.iter().sum::<u64>() > 0, "{c:?}");
        assert_eq!(s.ebpf.read_recent(id, &EbpfCounters::default(), Duration::ZERO), Some(c), "the batch read covers both tiers");
    }

    // The slot freed by the first container starts at zero for the next one, which counts
    // there while the second stays in the hash.
    s.ebpf.unwatch(idf);
    assert!(s.ebpf.read(idf).is_none());
    let mut next = TestCgroup::new("tier-next");
    let idn = next.id();
    s.ebpf.watch(idn, &next.unified).expect("watch the third");
    assert_eq!(s.ebpf.loaded.as_ref().expect("loaded").fast.index_of(idn), Some(0));
    assert_eq!(read(&s.ebpf, idn), EbpfCounters::default(), "nothing inherited from the slot's last owner");
    run(&mut fast, 5);
    run(&mut next, 3);
    let c = read(&s.ebpf, idn);
    assert!(c.execs >= 3 && c.execs < 6, "{c:?}");
    assert!(read(&s.ebpf, idh).execs < 16, "the hashed container is not counted for others");
    for id in [idh, idn] {
        s.ebpf.unwatch(id);
        assert!(s.ebpf.read(id).is_none());
    }
}

#[test]
fn the_batch_read_matches_per_container_lookups() {
    let Some(mut s) = setup() else { return };
    let run = run_true;
    let (mut a, mut b) = (TestCgroup::new("batch-a"), TestCgroup::new("batch-b"));
    let (ida, idb) = (a.id(), b.id());
    s.ebpf.watch(ida, &a.unified).expect("watch a");
    s.ebpf.watch(idb, &b.unified).expect("watch b");
    run(&mut a, 5);
    run(&mut b, 12);

    // A fresh batch read (max age 0) gives what one lookup per container gives.
    let fresh = Duration::ZERO;
    for id in [ida, idb] {
        assert_eq!(s.ebpf.read_recent(id, &EbpfCounters::default(), fresh), Some(read(&s.ebpf, id)));
    }
    assert!(s.ebpf.recent.taken.is_some() && !s.ebpf.recent.unsupported, "the batch lookup works on this kernel");
    assert!(read(&s.ebpf, idb).execs > read(&s.ebpf, ida).execs, "the two cgroups' entries are not mixed up");
    // It continues an earlier run's counts like read_continuing.
    let base = EbpfCounters { execs: 1000, ..Default::default() };
    assert_eq!(s.ebpf.read_recent(ida, &base, fresh), s.ebpf.read_continuing(ida, &base));

    // Within the max age the batch is reused: the figures trail the map...
    let long = Duration::from_secs(3600);
    let before = s.ebpf.read_recent(ida, &EbpfCounters::default(), long).expect("watched");
    run(&mut a, 3);
    assert_eq!(s.ebpf.read_recent(ida, &EbpfCounters::default(), long), Some(before.clone()));
    assert!(read(&s.ebpf, ida).execs >= before.execs + 3);
    // ...and a cgroup watched after the batch read gets its own lookup.
    let mut c = TestCgroup::new("batch-c");
    let idc = c.id();
    s.ebpf.watch(idc, &c.unified).expect("watch c");
    run(&mut c, 2);
    assert_eq!(s.ebpf.read_recent(idc, &EbpfCounters::default(), long), Some(read(&s.ebpf, idc)));
    assert!(read(&s.ebpf, idc).execs >= 2);
    for id in [ida, idb, idc] {
        s.ebpf.unwatch(id);
    }
}

#[test]
fn loopback_tcp_bytes_are_counted_both_ways() {
    let Some(mut s) = setup() else { return };
    let mut cg = TestCgroup::new("net");
    let id = cg.id();
    s.ebpf.attach_network_programs_to(cg.unified.parent().expect("parent"));
    s.ebpf.watch(id, &cg.unified).expect("watch");
    // Counted through the links on the parent, not links of its own.
    assert_eq!(s.ebpf.descriptors_per_container(), 0, "cgroup_skb not attached to the parent");
    assert!(s.ebpf.loaded.as_ref().is_some_and(|l| l.skb_links.get(&id).is_some_and(Vec::is_empty)));

    const N: u64 = 4 << 20;
    let mut child = cg.spawn(&mut child_command(&format!("net:{N}")), None);
    wait_done(&mut child);
    assert!(child.wait().expect("wait").success());
    let c = read(&s.ebpf, id);
    eprintln!("{N} bytes over loopback: {c:?}");
    // Headers (IP + TCP, ~52-64 bytes per skb incl. ACKs) are the only overhead on loopback.
    let overhead = N / 50;
    for (what, bytes) in [("tx", c.tx_bytes), ("rx", c.rx_bytes)] {
        assert!(
            (N..=N + overhead).contains(&bytes),
            "{what} bytes {bytes} for {N} sent: {c:?}"
        );
    }
    assert!(c.tx_packets > 2 && c.rx_packets > 2, "{c:?}");
    s.ebpf.unwatch(id);
}

#[test]
fn voluntary_switches_match_proc() {
    let Some(s) = setup() else { return };
    voluntary_switches(s);
}

#[test]
fn voluntary_switches_match_proc_with_the_fallbacks() {
    let Some(s) = setup_fallbacks() else { return };
    voluntary_switches(s);
}

fn voluntary_switches(mut s: Setup) {
    let mut cg = TestCgroup::new("sleep");
    let id = cg.id();
    s.ebpf.watch(id, &cg.unified).expect("watch");

    let mut child = cg.spawn(&mut child_command("sleep:2000"), None);
    wait_done(&mut child);
    let proc = proc_voluntary_switches(child.id());
    let c = read(&s.ebpf, id);
    drop(child.stdin.take()); // lets the child exit
    assert!(child.wait().expect("wait").success());
    eprintln!("2000 sleeps: /proc voluntary {proc}, eBPF {c:?}");
    assert!(proc >= 2000, "/proc says {proc}");
    let diff = c.voluntary_switches.abs_diff(proc);
    assert!(
        diff * 10 <= proc,
        "eBPF {} vs /proc {proc}: {c:?}",
        c.voluntary_switches
    );
    s.ebpf.unwatch(id);
}

#[test]
fn cpu_hogs_on_one_cpu_are_preempted_and_wait() {
    let Some(s) = setup() else { return };
    cpu_hogs(s, "sched_info");
}

#[test]
fn cpu_hogs_on_one_cpu_are_preempted_and_wait_with_the_fallbacks() {
    let Some(s) = setup_fallbacks() else { return };
    cpu_hogs(s, "stamps");
}

/// Two hogs on CPU 0 take turns: each waits on the run queue about as long as the other runs.
/// The histogram must agree with the kernel's own run_delay of the two processes over the same
/// window, which starts and ends with every thread of both blocked (no wait under way): the
/// same waits, from the same stamps where the programs read `sched_info`, and from their own
/// clock reads at wake-up or preemption otherwise.
fn cpu_hogs(mut s: Setup, mode: &str) {
    let mut cg = TestCgroup::new("hogs");
    let id = cg.id();
    s.ebpf.watch(id, &cg.unified).expect("watch");

    let mut hogs: Vec<Child> = (0..2)
        .map(|_| cg.spawn(&mut child_command("spin-wait:500"), Some(0)))
        .collect();
    let mut outputs: Vec<_> = hogs
        .iter_mut()
        .map(|h| BufReader::new(h.stdout.take().expect("piped stdout")).lines())
        .collect();
    let snapshot = |hogs: &[Child]| {
        hogs.iter().for_each(|h| wait_all_blocked(h.id()));
        hogs.iter()
            .map(|h| proc_run_delay(h.id()))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    outputs.iter_mut().for_each(|o| wait_line(o, CHILD_READY));
    let (delay0, waits0) = snapshot(&hogs);
    let c0 = read(&s.ebpf, id);
    for hog in &mut hogs {
        hog.stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"g")
            .expect("go");
    }
    outputs.iter_mut().for_each(|o| wait_line(o, CHILD_DONE));
    let (delay1, waits1) = snapshot(&hogs);
    let c = read(&s.ebpf, id);
    for (hog, output) in hogs.iter_mut().zip(outputs) {
        thread::spawn(move || output.for_each(drop));
        drop(hog.stdin.take());
        assert!(hog.wait().expect("wait").success());
    }
    let (delay, waits) = (delay1 - delay0, waits1 - waits0);
    let counted = c.runqueue_latency_log2_ns.iter().sum::<u64>()
        - c0.runqueue_latency_log2_ns.iter().sum::<u64>();
    let waited = c.runqueue_latency_sum_ns - c0.runqueue_latency_sum_ns;
    eprintln!(
        "two hogs on CPU 0 ({mode}): schedstat run_delay {delay} ns in {waits} waits; eBPF {waited} ns in {counted} waits: {c:?}"
    );
    assert!(c.involuntary_switches > c0.involuntary_switches, "{c:?}");
    // Each spun 500 ms on a CPU shared with the other.
    assert!(delay >= 300_000_000, "schedstat run_delay {delay} ns");
    let tolerance = delay / 100 + 1_000_000;
    assert!(
        waited.abs_diff(delay) <= tolerance,
        "eBPF waited {waited} ns, schedstat {delay} ns"
    );
    assert!(
        counted.abs_diff(waits) <= waits / 20 + 2,
        "eBPF {counted} waits, schedstat {waits}"
    );
    s.ebpf.unwatch(id);
}

#[test]
fn the_task_filter_follows_the_watched_parents() {
    let Some(mut s) = setup() else { return };
    if s.ebpf.task_filter().is_none() {
        eprintln!("SKIP: no task filter on this kernel");
        return;
    }
    assert_eq!(s.ebpf.task_filter(), Some(TaskFilter::NOTHING));
    let mut a = TestCgroup::new("filter-a");
    let parent = a.unified.parent().expect("parent").to_path_buf();
    let level = cgroup_level(&a.unified);
    assert_eq!(
        level,
        cgroup_level(&parent).map(|l| l + 1),
        "{}",
        a.unified.display()
    );
    assert_eq!(cgroup_level(&unified_root().expect("root")), Some(0));
    // The root cgroup has no parent cgroup to filter on.
    assert_eq!(
        task_filter_for(&unified_root().expect("root")),
        TaskFilter::OFF
    );
    let id = a.id();
    s.ebpf.watch(id, &a.unified).expect("watch a");
    assert_eq!(
        s.ebpf.task_filter(),
        Some(TaskFilter {
            parent_id: cgroup_id(&parent).expect("parent id"),
            level: level.unwrap_or(0),
            _pad: 0,
        })
    );
    let script = "i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done";
    let run = |cg: &mut TestCgroup| {
        let status = cg
            .spawn(Command::new("/bin/sh").args(["-c", script]), None)
            .wait()
            .expect("wait");
        assert!(status.success());
    };
    run(&mut a);
    let counted = read(&s.ebpf, id);
    assert!(
        counted.execs >= 20 && counted.voluntary_switches > 0,
        "{counted:?}"
    );

    // A cgroup one level further down has another parent: the filter must let both through.
    let host = TestCgroup::new("filter-host");
    let mut b = TestCgroup::new_in(&host, "filter-b");
    let id_b = b.id();
    s.ebpf.watch(id_b, &b.unified).expect("watch b");
    assert_eq!(s.ebpf.task_filter(), Some(TaskFilter::OFF));
    run(&mut a);
    run(&mut b);
    let (a_after, b_after) = (read(&s.ebpf, id), read(&s.ebpf, id_b));
    assert!(a_after.execs >= counted.execs + 20, "{a_after:?}");
    assert!(
        b_after.execs >= 20 && b_after.voluntary_switches > 0,
        "{b_after:?}"
    );
    s.ebpf.unwatch(id_b);
    s.ebpf.unwatch(id);
}

#[test]
fn oom_kill_is_counted_for_the_victim() {
    let Some(mut s) = setup() else { return };
    let mut cg = TestCgroup::new("oom");
    let id = cg.id();
    if !cg.limit_memory(64 << 20) {
        if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
            panic!("no memory controller to set a limit with");
        }
        eprintln!("SKIP: no memory controller to set a limit with");
        return;
    }
    s.ebpf.watch(id, &cg.unified).expect("watch");

    let mut child = cg.spawn(child_command("alloc:512").stdin(Stdio::null()), None);
    let status = child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the OOM killer ends the child: {status:?}"
    );
    let c = read(&s.ebpf, id);
    eprintln!("OOM: {c:?}");
    assert_eq!(c.oom_kills, 1, "{c:?}");
    s.ebpf.unwatch(id);
}
