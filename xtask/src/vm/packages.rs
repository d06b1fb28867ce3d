//! The host-side prerequisites: qemu (installed with apt-get when missing) and the Debian packages
//! the guest is made of (downloaded with `apt-get download`, unpacked with `dpkg-deb -x` into
//! `target/vm-cache/<package>_<version>/`, never installed).
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// The stock kernel: a metapackage that depends on the current `linux-image-<abi>-cloud-amd64`.
const KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";
const QEMU_PACKAGE: &str = "qemu-system-x86";
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// A prerequisite that this machine cannot provide (no apt, not root, no network): the caller may
/// treat it as "cannot run here" rather than as a test failure.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

pub struct Kernel {
    /// The kernel release, as `uname -r` says it (`6.1.0-57-cloud-amd64`).
    pub version: String,
    /// The Debian package it came from and that package's version (`6.1.192-3`): what names the
    /// guest kernel in every report, since the release string stays the same across rebuilds.
    pub package: String,
    pub package_version: String,
    /// Where the package is unpacked (the cache of anything derived from this kernel).
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
    /// `brd.ko` as shipped (possibly `.ko.xz` / `.ko.zst`); `None` if the package lacks it.
    pub brd_module: Option<PathBuf>,
}

/// `qemu-system-x86_64`, installing Debian's qemu-system-x86 first if it is not on PATH.
pub fn ensure_qemu() -> Result<PathBuf> {
    ensure_installed(QEMU_BINARY, QEMU_PACKAGE)
}

/// The program `binary`, installing Debian's `package` first (apt-get, as root) if it is not on
/// PATH.
pub fn ensure_installed(binary: &str, package: &str) -> Result<PathBuf> {
    if let Some(path) = find_in_path(binary) {
        return Ok(path);
    }
    if !is_root() {
        return Err(Unavailable(format!(
            "{binary} is not installed and installing {package} needs root"
        ))
        .into());
    }
    if find_in_path("apt-get").is_none() {
        return Err(
            Unavailable(format!("{binary} is not installed and there is no apt-get")).into(),
        );
    }
    eprintln!("vm-test: installing {package} (apt-get)");
    let install = || {
        run_quiet(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", package])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        // A fresh machine may never have fetched the package lists.
        apt_update()?;
        install().map_err(|e| Unavailable(format!("cannot install {package}: {e:#}")))?;
    }
    find_in_path(binary)
        .ok_or_else(|| anyhow!("{package} was installed but {binary} is not on PATH"))
}

/// `QEMU emulator version 7.2.22 (...)` as `qemu 7.2.22`, for the reports.
pub fn qemu_version(qemu: &Path) -> String {
    Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let version = text.split_whitespace().skip_while(|w| *w != "version").nth(1)?;
            Some(format!("qemu {version}"))
        })
        .unwrap_or_else(|| "qemu (version unknown)".to_string())
}

/// The current Debian cloud kernel, unpacked in the cache.
pub fn kernel(cache: &Path) -> Result<Kernel> {
    let root = unpacked(
        cache,
        KERNEL_PACKAGE,
        Resolve::ThroughDependency("linux-image-"),
    )?;
    let vmlinuz = single_entry(&root.join("boot"), "vmlinuz-")?;
    let name = file_name(&vmlinuz);
    let version = name.trim_start_matches("vmlinuz-").to_string();
    let drivers = root
        .join("lib/modules")
        .join(&version)
        .join("kernel/drivers/block");
    let brd_module = ["brd.ko", "brd.ko.xz", "brd.ko.zst"]
        .iter()
        .map(|n| drivers.join(n))
        .find(|p| p.is_file());
    let (package, package_version) = package_of(&root);
    Ok(Kernel {
        version,
        package,
        package_version,
        root,
        vmlinuz,
        brd_module,
    })
}

/// The package name and version of an unpacked directory (`<package>_<version>`, see
/// [`unpacked`]).
fn package_of(dir: &Path) -> (String, String) {
    let name = file_name(dir);
    match name.split_once('_') {
        Some((package, version)) => (package.to_string(), version.replace("%3a", ":")),
        None => (name, "unknown".to_string()),
    }
}

/// The statically linked busybox binary, unpacked in the cache.
pub fn busybox(cache: &Path) -> Result<PathBuf> {
    let root = unpacked(cache, BUSYBOX_PACKAGE, Resolve::Itself)?;
    let path = root.join("bin/busybox");
    if !path.is_file() {
        bail!("{} not found in {BUSYBOX_PACKAGE}", path.display());
    }
    Ok(path)
}

enum Resolve {
    Itself,
    /// A metapackage: use its first dependency whose name starts with this prefix.
    ThroughDependency(&'static str),
}

/// The directory `package` (or the package it resolves to) is unpacked in, downloading it if this
/// version is not cached yet. Offline, the last version resolved is used.
fn unpacked(cache: &Path, package: &str, resolve: Resolve) -> Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let pointer = cache.join(format!("{package}.resolved"));
    let (name, version) = match candidate(package, &resolve) {
        Ok(found) => found,
        Err(e) => {
            let dir = fs::read_to_string(&pointer)
                .ok()
                .map(|d| cache.join(d.trim()));
            match dir {
                Some(dir) if dir.is_dir() => {
                    eprintln!("vm-test: {e:#}; using the cached {}", dir.display());
                    return Ok(dir);
                }
                _ => return Err(e),
            }
        }
    };
    let dir_name = format!("{name}_{}", version.replace(':', "%3a"));
    let dir = cache.join(&dir_name);
    if !dir.is_dir() {
        download(cache, &name, &version, &dir)?;
    }
    fs::write(&pointer, &dir_name).with_context(|| format!("writing {}", pointer.display()))?;
    Ok(dir)
}

/// (package name, candidate version) from apt's package lists.
fn candidate(package: &str, resolve: &Resolve) -> Result<(String, String)> {
    let fields = match show(package) {
        Ok(fields) => fields,
        Err(_) if is_root() && find_in_path("apt-get").is_some() => {
            apt_update()?;
            show(package)?
        }
        Err(e) => return Err(e),
    };
    let field = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| anyhow!("apt-cache show {package}: no {key} field"))
    };
    match resolve {
        Resolve::Itself => Ok((package.to_string(), field("Version")?)),
        Resolve::ThroughDependency(prefix) => {
            let depends = field("Depends")?;
            let dep = depends
                .split([',', '|'])
                .map(|d| d.split_whitespace().next().unwrap_or_default())
                .find(|d| d.starts_with(prefix))
                .ok_or_else(|| anyhow!("{package} depends on no {prefix}* package: {depends}"))?
                .to_string();
            candidate(&dep, &Resolve::Itself)
        }
    }
}

/// The fields of the candidate version's record in `apt-cache show`.
fn show(package: &str) -> Result<Vec<(String, String)>> {
    if find_in_path("apt-cache").is_none() {
        return Err(Unavailable(format!("no apt-cache to look up {package}")).into());
    }
    let out = run_quiet(Command::new("apt-cache").args(["show", "--no-all-versions", package]))
        .map_err(|e| Unavailable(format!("{package} is not in apt's package lists: {e:#}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<(String, String)> = text
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    if fields.is_empty() {
        return Err(Unavailable(format!("{package} is not in apt's package lists")).into());
    }
    Ok(fields)
}

fn download(cache: &Path, name: &str, version: &str, dest: &Path) -> Result<()> {
    eprintln!("vm-test: downloading {name} {version}");
    let tmp = cache.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| {
        run_quiet(
            Command::new("apt-get")
                .arg("download")
                .arg(format!("{name}={version}"))
                .current_dir(&tmp),
        )
        .map_err(|e| Unavailable(format!("cannot download {name} {version}: {e:#}")))?;
        let deb = single_entry(&tmp, name)?;
        let root = tmp.join("root");
        run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        fs::rename(&root, dest)
            .with_context(|| format!("moving {} to {}", root.display(), dest.display()))
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn apt_update() -> Result<()> {
    eprintln!("vm-test: apt-get update");
    run_quiet(Command::new("apt-get").arg("update"))
        .map(|_| ())
        .map_err(|e| Unavailable(format!("apt-get update failed: {e:#}")).into())
}

/// Runs a command with its output captured; on failure the error carries its stderr.
fn run_quiet(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{shown} failed ({}): {}", out.status, stderr.trim());
    }
    Ok(out)
}

/// The one entry of `dir` whose name starts with `prefix`.
fn single_entry(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| file_name(p).starts_with(prefix))
        .collect::<Vec<_>>();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no {prefix}* in {}", dir.display()),
        _ => bail!("several {prefix}* in {}: {found:?}", dir.display()),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Effective uid 0, from /proc/self/status (no libc needed).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
