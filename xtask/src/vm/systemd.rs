//! `cargo xtask vm-test --systemd --deb PATH`: the same stock kernel booting Debian's systemd as
//! PID 1 on pure cgroup v2, and the agent's Debian package installed, upgraded and purged there
//! by `tests/vm/systemd-test.sh`, run as a systemd unit (tests/vm/README.md, "The systemd VM").
//!
//! No disk image and no kernel module: the whole root filesystem is the initramfs. A minimal
//! Debian bookworm with systemd is built once with `mmdebstrap` from the host's apt sources and
//! cached as a compressed cpio archive in `target/vm-cache/rootfs-systemd-<recipe hash>/`; each run
//! appends a small uncompressed cpio (the kernel unpacks concatenated archives in order, so its
//! files win) with `/init`, the package, the test scripts and the test unit.
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::cpio::{self, Archive};
use super::initramfs;
use super::packages::{self, Unavailable};

/// The root filesystem lives in RAM (about 110 MiB unpacked, plus the archive until it is freed).
pub const MEMORY_MIB: u32 = 2048;
/// Wall-clock limit of a run when `--timeout` is not given.
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// Added to the kernel command line: systemd prints only failures on the console (which the
/// harness keeps in console.log), not a line per unit.
pub const KERNEL_ARGS: &str = "systemd.show_status=error";

/// The Debian release of the guest: the one the kernel comes from.
const SUITE: &str = "bookworm";
/// What the guest is made of, on top of apt's essential set. udev is left out: nothing here
/// waits for a device unit (no disk, no network but `lo`), and `/dev` is systemd's devtmpfs.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "curl",
    "sudo",
    "procps",
    "iproute2",
    "passwd",
];
/// Nothing of these is needed, in the build or later by the package under test (the options stay
/// in the guest's /etc/dpkg/dpkg.cfg.d/).
const DPKG_EXCLUDES: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
];
/// Merged /usr through the debootstrap way (directory symlinks and usr-is-merged), not the
/// usrmerge package, which brings perl: 50 MiB less.
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";
/// Run in the finished tree (`$1`): root without a password, the unprivileged user of the test
/// with password-less sudo.
const CUSTOMIZE: &str = "set -e
chroot \"$1\" passwd -d root
chroot \"$1\" useradd -m -u 1000 -s /bin/bash alice
echo 'alice ALL=(ALL) NOPASSWD: ALL' > \"$1/etc/sudoers.d/alice\"
chmod 0440 \"$1/etc/sudoers.d/alice\"
";
/// Part of the cache key: raise it when the build changes in a way the recipe does not show.
const RECIPE_VERSION: u32 = 1;

/// PID 1 hands over to systemd at once. There is no /etc/initrd-release, so systemd runs this
/// root filesystem as the real one (no switch-root).
const INIT: &str = "#!/bin/sh\nexec /lib/systemd/systemd\n";
/// The test unit's program: markers, the command with its output on ttyS1/ttyS2, poweroff.
const UNIT_SCRIPT: &str = include_str!("systemd-unit.sh");
const UNIT: &str = "[Unit]
Description=apptheus VM test (tests/vm/systemd-test.sh)
After=multi-user.target

[Service]
Type=oneshot
Environment=HOME=/root
WorkingDirectory=/root
StandardInput=null
StandardOutput=journal+console
StandardError=journal+console
ExecStart=/usr/local/sbin/vm-test-unit
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
";
/// Units masked in the guest, and why.
const MASKED: &[&str] = &[
    // a getty on the console (the generator makes one from console=ttyS0) would read and write
    // the port of the markers; none on ttyS1/ttyS2 either, nor on a VT nobody sees
    "serial-getty@.service",
    "getty@.service",
    // would take the dpkg lock in the middle of the test
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    // nothing to trim; autofs is a module, and the guest has no modules
    "fstrim.timer",
    "proc-sys-fs-binfmt_misc.automount",
    // never prompt on the console (the machine id below makes it no first boot anyway)
    "systemd-firstboot.service",
];
/// systemd's and the units' warnings reach the console (console.log), the rest stays in the
/// journal.
const JOURNALD_CONF: &str = "[Journal]\nForwardToConsole=yes\nMaxLevelConsole=warning\n";

/// The cached root filesystem.
pub struct Rootfs {
    /// The cpio archive (zstd-compressed when zstd is at hand).
    pub archive: PathBuf,
    /// `systemd 252.x` etc. for the report.
    pub summary: String,
}

/// The root filesystem for this recipe, built on first use.
pub fn rootfs(cache: &Path) -> Result<Rootfs> {
    let dir = cache.join(format!("rootfs-systemd-{SUITE}-{}", recipe_hash()));
    let archive = ["rootfs.cpio.zst", "rootfs.cpio"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file());
    let archive = match archive {
        Some(archive) => archive,
        None => build(&dir)?,
    };
    let versions = fs::read_to_string(dir.join("packages.txt")).unwrap_or_default();
    let version = |package: &str| {
        versions
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{package} ")))
            .unwrap_or("?")
            .to_string()
    };
    Ok(Rootfs {
        summary: format!(
            "Debian {SUITE} rootfs (systemd {}, {} packages, {} MiB archive)",
            version("systemd"),
            versions.lines().count(),
            fs::metadata(&archive).map(|m| m.len() >> 20).unwrap_or(0)
        ),
        archive,
    })
}

fn recipe_hash() -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "{RECIPE_VERSION}\n{SUITE}\n{PACKAGES:?}\n{DPKG_EXCLUDES:?}\n{MERGED_USR_HOOKS}\n{CUSTOMIZE}"
    ));
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs mmdebstrap into a scratch directory next to `dir`, archives the tree, and moves the result
/// into place (so an interrupted build leaves no half cache).
fn build(dir: &Path) -> Result<PathBuf> {
    if !packages::is_root() {
        return Err(Unavailable("building the systemd root filesystem needs root".into()).into());
    }
    let mmdebstrap = packages::ensure_installed("mmdebstrap", "mmdebstrap")?;
    let parent = dir.parent().context("cache directory has no parent")?;
    let scratch = parent.join(format!(".rootfs-build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = build_in(&mmdebstrap, &scratch, dir);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn build_in(mmdebstrap: &Path, scratch: &Path, dir: &Path) -> Result<PathBuf> {
    let tree = scratch.join("tree");
    let log = scratch.join("mmdebstrap.log");
    let mut cmd = Command::new(mmdebstrap);
    cmd.arg("--variant=apt")
        .arg(format!("--include={}", PACKAGES.join(",")));
    if Path::new(MERGED_USR_HOOKS).is_dir() {
        cmd.arg(format!("--hook-dir={MERGED_USR_HOOKS}"));
    }
    for path in DPKG_EXCLUDES {
        cmd.arg(format!("--dpkgopt=path-exclude={path}"));
    }
    cmd.arg(format!("--customize-hook={CUSTOMIZE}"))
        .arg(SUITE)
        .arg(&tree);
    // The host's mirror when its sources are the guest's release (a deb822 file is pasted into the
    // guest's sources as it is); otherwise mmdebstrap's default, deb.debian.org.
    let sources = Path::new("/etc/apt/sources.list.d/debian.sources");
    if fs::read_to_string(sources).is_ok_and(|s| s.contains(SUITE)) {
        cmd.arg(sources);
    }
    eprintln!(
        "vm-test: building the systemd root filesystem (mmdebstrap {SUITE}, once; about a minute): {}",
        dir.display()
    );
    let started = std::time::Instant::now();
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("log file")?)
        .stderr(log_file)
        .status()
        .with_context(|| format!("running {}", mmdebstrap.display()))?;
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        let message = format!("mmdebstrap {SUITE} failed ({status}):\n{tail}");
        // No mirror here: this machine cannot provide the guest, as when the kernel cannot be
        // downloaded.
        if [
            "Failed to fetch",
            "Temporary failure resolving",
            "Could not resolve",
        ]
        .iter()
        .any(|m| text.contains(m))
        {
            return Err(Unavailable(message).into());
        }
        bail!(message);
    }

    let versions = Command::new("chroot")
        .arg(&tree)
        .args(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"])
        .output()
        .context("running dpkg-query in the new root filesystem")?;
    let staged = scratch.join("out");
    fs::create_dir_all(&staged).with_context(|| format!("creating {}", staged.display()))?;
    fs::write(staged.join("packages.txt"), &versions.stdout).context("writing packages.txt")?;
    let archive = archive_tree(&tree, &staged)?;
    fs::rename(&staged, dir)
        .with_context(|| format!("moving {} to {}", staged.display(), dir.display()))?;
    eprintln!(
        "vm-test: root filesystem built in {:.0}s ({} MiB)",
        started.elapsed().as_secs_f64(),
        fs::metadata(dir.join(archive))
            .map(|m| m.len() >> 20)
            .unwrap_or(0)
    );
    Ok(dir.join(archive))
}

/// Archives `tree` as `rootfs.cpio.zst` in `out` (zstd -3: a third of the size, about a second
/// more to unpack under TCG), or as `rootfs.cpio` without zstd. Returns the file name.
fn archive_tree(tree: &Path, out: &Path) -> Result<&'static str> {
    let Some(zstd) = packages::find_in_path("zstd") else {
        let path = out.join("rootfs.cpio");
        let file =
            fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::new(file);
        cpio::write_tree(tree, &mut w)?;
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok("rootfs.cpio");
    };
    let path = out.join("rootfs.cpio.zst");
    let mut child = Command::new(zstd)
        .args(["-q", "-3", "-T0", "-o"])
        .arg(&path)
        .stdin(Stdio::piped())
        .spawn()
        .context("running zstd")?;
    let written = {
        let stdin = child.stdin.take().context("zstd stdin")?;
        let mut w = BufWriter::new(stdin);
        cpio::write_tree(tree, &mut w).and_then(|_| w.flush().context("writing to zstd"))
    };
    let status = child.wait().context("waiting for zstd")?;
    written?;
    if !status.success() {
        bail!("zstd failed ({status})");
    }
    // The kernel looks for the next archive (the overlay) at a 4-byte boundary and skips zeros.
    let len = fs::metadata(&path)?.len();
    let pad = (4 - len % 4) % 4;
    if pad > 0 {
        let mut f = fs::OpenOptions::new().append(true).open(&path)?;
        f.write_all(&[0u8; 3][..pad as usize])?;
    }
    Ok("rootfs.cpio.zst")
}

/// What one run adds to the cached root filesystem.
pub struct Overlay<'a> {
    /// The package under test, copied to `/root/<its file name>`.
    pub deb: &'a Path,
    pub tests_dir: &'a Path,
    /// The project's README.md, at `/tests/README.md`: its quick start is run as written.
    pub readme: &'a Path,
    pub token: &'a str,
    pub verbose: bool,
}

/// The guest path of the package.
pub fn guest_deb(deb: &Path) -> String {
    format!(
        "/root/{}",
        deb.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "apptheus.deb".to_string())
    )
}

/// Writes the initramfs of a run: the cached root filesystem followed by this run's overlay.
pub fn initrd(rootfs: &Rootfs, overlay: &Overlay, out: &Path) -> Result<()> {
    let mut a = Archive::default();
    a.file("init", 0o755, INIT);
    // Only paths through real directories: an archive entry below /lib (a symlink to usr/lib on
    // merged /usr) would replace the symlink with a directory. Directories named here get these
    // permissions.
    a.dir_mode("root", 0o700);
    a.host_file(&guest_deb(overlay.deb), 0o644, overlay.deb);
    initramfs::add_tests(&mut a, overlay.tests_dir)?;
    a.host_file("/tests/README.md", 0o644, overlay.readme);
    a.file("etc/hostname", 0o644, "vm\n");
    a.file(
        "etc/hosts",
        0o644,
        "127.0.0.1 localhost\n127.0.1.1 vm\n::1 localhost\n",
    );
    // A machine id of this run's own: no first boot (systemd-firstboot, presets), and journal
    // files that belong to this boot.
    let id: String = Sha256::digest(overlay.token.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    a.file("etc/machine-id", 0o444, format!("{id}\n"));
    a.file(
        "etc/vm-test.conf",
        0o644,
        format!(
            "TOKEN={}\nVERBOSE={}\nDEB={}\n",
            overlay.token,
            u8::from(overlay.verbose),
            guest_deb(overlay.deb)
        ),
    );
    a.file(
        "etc/vm-test.cmd",
        0o644,
        format!(
            "exec sh {}/systemd-test.sh {}\n",
            initramfs::GUEST_TESTS,
            guest_deb(overlay.deb)
        ),
    );
    a.file("usr/local/sbin/vm-test-unit", 0o755, UNIT_SCRIPT);
    a.file("etc/systemd/system/vm-test.service", 0o644, UNIT);
    a.symlink(
        "etc/systemd/system/multi-user.target.wants/vm-test.service",
        "/etc/systemd/system/vm-test.service",
    );
    for unit in MASKED {
        a.symlink(&format!("etc/systemd/system/{unit}"), "/dev/null");
    }
    a.file(
        "etc/systemd/journald.conf.d/vm-test.conf",
        0o644,
        JOURNALD_CONF,
    );

    let overlay_path = out.with_extension("overlay.cpio");
    a.write_to(&overlay_path)?;
    fs::copy(&rootfs.archive, out)
        .with_context(|| format!("copying {} to {}", rootfs.archive.display(), out.display()))?;
    let overlay_bytes =
        fs::read(&overlay_path).with_context(|| format!("reading {}", overlay_path.display()))?;
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    f.write_all(&overlay_bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    let _ = fs::remove_file(&overlay_path);
    Ok(())
}
