//! The guest's root filesystem: busybox with all its applets, the agent and its shared libraries,
//! the guest scripts from tests/vm/, brd.ko (decompressed here: busybox insmod cannot), and the
//! init program that mounts the cgroup hierarchies (pure v2, or pure v1) and runs the command.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::cpio::Archive;

/// Where things live in the guest.
pub const GUEST_AGENT: &str = "/usr/local/bin/apptheus";
pub const GUEST_TESTS: &str = "/tests/vm";

const INIT: &str = include_str!("init.sh");

pub struct Spec<'a> {
    pub busybox: &'a Path,
    pub agent: Option<&'a Path>,
    /// More binaries: (host path, guest path).
    pub binaries: &'a [(&'a Path, &'a str)],
    pub tests_dir: &'a Path,
    pub brd_module: Option<&'a Path>,
    /// Shell command line the init runs (stdout/stderr relayed to the host).
    pub command: String,
    /// Marker that ties the init's start/exit lines on the console to this run.
    pub token: String,
    pub ramdisk_mib: u32,
    pub verbose: bool,
    /// The cgroup hierarchies init mounts: "v2" (one cgroup2) or "v1" (each controller apart).
    pub cgroup: &'a str,
}

pub fn build(spec: &Spec, out: &Path) -> Result<()> {
    let mut a = Archive::default();
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "run",
        "root",
        "lib/modules",
    ] {
        a.dir(dir);
    }
    a.file("tmp/.keep", 0o644, Vec::new());
    // The kernel opens /dev/console for init before anything is mounted.
    a.char_dev("dev/console", 5, 1);
    a.char_dev("dev/null", 1, 3);
    a.file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    a.file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n");
    a.file(
        "etc/hosts",
        0o644,
        "127.0.0.1 localhost vm\n::1 localhost\n",
    );

    add_busybox(&mut a, spec.busybox)?;
    if let Some(agent) = spec.agent {
        add_elf(&mut a, agent, GUEST_AGENT)?;
    }
    for (host, guest) in spec.binaries {
        add_elf(&mut a, host, guest)?;
    }
    add_tests(&mut a, spec.tests_dir)?;
    if let Some(brd) = spec.brd_module {
        let data = decompress_module(brd, spec.busybox)?;
        a.file("lib/modules/brd.ko", 0o644, data);
    }

    a.file("init", 0o755, INIT);
    a.file(
        "etc/vm-test.conf",
        0o644,
        format!(
            "TOKEN={}\nRAMDISK_MB={}\nVERBOSE={}\nAPPTHEUS={GUEST_AGENT}\nCGROUP={}\n",
            spec.token,
            spec.ramdisk_mib,
            u8::from(spec.verbose),
            spec.cgroup
        ),
    );
    a.file("etc/vm-test.cmd", 0o644, format!("{}\n", spec.command));
    a.write_to(out)
}

fn add_busybox(a: &mut Archive, busybox: &Path) -> Result<()> {
    a.host_file("bin/busybox", 0o755, busybox);
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {} --list-full", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list-full failed: {}", busybox.display(), out.status);
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.ends_with("/busybox") || a.contains(applet) {
            continue;
        }
        a.symlink(applet, "/bin/busybox");
    }
    Ok(())
}

/// An ELF binary at `guest_path`, with the shared libraries `ldd` finds for it at their host paths.
fn add_elf(a: &mut Archive, host: &Path, guest_path: &str) -> Result<()> {
    if !host.is_file() {
        bail!("{} does not exist", host.display());
    }
    a.host_file(guest_path, 0o755, host);
    for lib in shared_libraries(host)? {
        let guest = lib.to_string_lossy().into_owned();
        if !a.contains(&guest) {
            a.host_file(&guest, 0o755, &lib);
        }
    }
    Ok(())
}

/// Absolute paths of the libraries (and the interpreter) `ldd` resolves; none for a static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable" / "statically linked"
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("ldd {}: {line}", binary.display());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The guest scripts (`*.sh`) of tests/vm/.
pub fn add_tests(a: &mut Archive, dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "sh") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            a.host_file(&format!("{GUEST_TESTS}/{name}"), 0o755, &path);
        }
    }
    Ok(())
}

fn decompress_module(module: &Path, busybox: &Path) -> Result<Vec<u8>> {
    let name = module.to_string_lossy();
    let mut cmd = if name.ends_with(".xz") {
        let mut c = Command::new(busybox);
        c.arg("xzcat");
        c
    } else if name.ends_with(".zst") {
        let mut c = Command::new("zstd");
        c.args(["-dc", "--"]);
        c
    } else {
        return fs::read(module).with_context(|| format!("reading {}", module.display()));
    };
    let out = cmd
        .arg(module)
        .output()
        .with_context(|| format!("decompressing {}", module.display()))?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "decompressing {} failed: {}",
            module.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}
