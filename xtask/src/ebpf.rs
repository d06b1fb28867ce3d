//! `cargo xtask build-ebpf [--check]`: build the eBPF object that the agent embeds.
//!
//! Installs what is missing (the pinned nightly with `rust-src`, and bpf-linker built against
//! that nightly's own LLVM), builds `apptheus-ebpf` for `bpfel-unknown-none` with BTF, and copies
//! the object to `apptheus/src/ebpf/prebuilt/` with a record of the source hash it came from.
//!
//! `--check` rebuilds into a temporary directory and fails when the shipped object is not
//! byte-identical to the fresh build or the recorded source hash no longer matches. The build is
//! byte-reproducible, so the check compares bytes: the compiler is pinned, every absolute path
//! that could reach the object (sources, target directory, cargo home, sysroot) is remapped to a
//! fixed prefix, and the sources are built from a copy at a fixed path ([`STAGE`]), because cargo
//! hashes the absolute path of `apptheus-common` (a path dependency outside the eBPF crate's
//! workspace) into every crate's symbol hash, which lands in the DWARF strings.
use std::{
    ffi::OsString,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

/// The nightly that builds the shipped object. Another nightly (or its LLVM) would give other
/// bytes, so it is pinned; moving it means rebuilding and committing the object.
const TOOLCHAIN: &str = "nightly-2026-05-20";
const TOOLCHAIN_COMMIT: &str = "e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a";
const BPF_LINKER_VERSION: &str = "0.13.0";
const TARGET: &str = "bpfel-unknown-none";
const CRATE_DIR: &str = "apptheus-ebpf";
const BIN_NAME: &str = "apptheus-ebpf";
/// Where the object is shipped, relative to the workspace root.
pub const SHIPPED_DIR: &str = "apptheus/src/ebpf/prebuilt";
const OBJECT_FILE: &str = "apptheus-ebpf.o";
const RECORD_FILE: &str = "apptheus-ebpf.o.sources";
/// Inputs of the object, relative to the workspace root (directories are walked).
const SOURCES: &[&str] = &[
    "apptheus-ebpf/Cargo.toml",
    "apptheus-ebpf/Cargo.lock",
    "apptheus-ebpf/src",
    "apptheus-common/Cargo.toml",
    "apptheus-common/src",
];

/// Fixed build location of the staged sources (see the module docs), guarded by a lock file.
const STAGE: &str = "/tmp/apptheus-ebpf-stage";

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Rebuild into a temporary directory and fail if the shipped object is stale.
    #[arg(long)]
    pub check: bool,
}

pub fn build(args: BuildArgs) -> Result<()> {
    let root = workspace_root();
    let tools = Toolchain::ensure()?;
    if args.check {
        check(&root, &tools)
    } else {
        ship(&root, &tools)
    }
}

fn ship(root: &Path, tools: &Toolchain) -> Result<()> {
    let target_dir = root.join("target").join("ebpf");
    let bytes = tools.build_object(root, &target_dir)?;
    let dir = root.join(SHIPPED_DIR);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(OBJECT_FILE), &bytes)?;
    let record = Record {
        sources: source_hash(root)?,
        object: hex(&Sha256::digest(&bytes)),
    };
    fs::write(dir.join(RECORD_FILE), record.render())?;
    println!(
        "build-ebpf: shipped {}/{OBJECT_FILE} ({} bytes, sha256 {}), sources sha256 {}",
        SHIPPED_DIR,
        bytes.len(),
        record.object,
        record.sources
    );
    Ok(())
}

fn check(root: &Path, tools: &Toolchain) -> Result<()> {
    let dir = root.join(SHIPPED_DIR);
    let shipped = fs::read(dir.join(OBJECT_FILE)).with_context(|| {
        format!("no shipped object in {SHIPPED_DIR}: run `cargo xtask build-ebpf`")
    })?;
    let record = Record::parse(&fs::read_to_string(dir.join(RECORD_FILE)).with_context(|| {
        format!("no {RECORD_FILE} in {SHIPPED_DIR}: run `cargo xtask build-ebpf`")
    })?)?;

    let tmp = TempDir::new()?;
    let fresh = tools.build_object(root, &tmp.0)?;

    let mut problems = Vec::new();
    let sources = source_hash(root)?;
    if sources != record.sources {
        problems.push(format!(
            "eBPF sources changed since the object was built (recorded {}, now {sources})",
            record.sources
        ));
    }
    let shipped_hash = hex(&Sha256::digest(&shipped));
    if shipped_hash != record.object {
        problems.push(format!(
            "shipped object sha256 {shipped_hash} is not the recorded {}",
            record.object
        ));
    }
    if fresh != shipped {
        problems.push(format!(
            "shipped object (sha256 {shipped_hash}, {} bytes) differs from a fresh build (sha256 {}, {} bytes)",
            shipped.len(),
            hex(&Sha256::digest(&fresh)),
            fresh.len()
        ));
    }
    if problems.is_empty() {
        println!("build-ebpf --check: {SHIPPED_DIR}/{OBJECT_FILE} is up to date (sources sha256 {sources})");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("build-ebpf --check: {p}");
        }
        bail!(
            "the shipped eBPF object is stale: run `cargo xtask build-ebpf` and commit {SHIPPED_DIR}/"
        )
    }
}

/// The pinned nightly plus the bpf-linker built for it.
struct Toolchain {
    name: String,
    sysroot: PathBuf,
    linker_bin: PathBuf,
}

impl Toolchain {
    fn ensure() -> Result<Self> {
        let name = ensure_nightly()?;
        let sysroot =
            PathBuf::from(output(rustup_run(&name, "rustc").args(["--print", "sysroot"]))?.trim());
        if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
            run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                &name,
            ]))?;
        }
        let linker_bin = ensure_bpf_linker(&name, &sysroot)?;
        Ok(Self {
            name,
            sysroot,
            linker_bin,
        })
    }

    /// Builds the release object into `target_dir` and returns its bytes.
    fn build_object(&self, root: &Path, target_dir: &Path) -> Result<Vec<u8>> {
        let (stage, _lock) = stage_sources(root)?;
        fs::create_dir_all(target_dir)?;
        let target_dir = target_dir.canonicalize()?;
        let cargo_home = cargo_home();
        let remap = |from: &Path, to: &str| format!("--remap-path-prefix={}={to}", from.display());
        // BTF in the object (func/line info for the verifier log, BTF-described maps); aya 0.14
        // loads it on this kernel and sanitises it for kernels that lack BTF features.
        // Later remaps win when several match, so the most specific prefixes come last.
        let rustflags = [
            "-Cdebuginfo=2".to_owned(),
            "-Clink-arg=--btf".to_owned(),
            remap(&stage, "/apptheus"),
            remap(&cargo_home, "/cargo"),
            remap(&self.sysroot, "/rust"),
            remap(&target_dir, "/target"),
        ]
        .join("\x1f");

        let mut path = OsString::from(&self.linker_bin);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_default());
        let mut cmd = rustup_run(&self.name, "cargo");
        cmd.current_dir(stage.join(CRATE_DIR))
            .args([
                "build",
                "--release",
                "--locked",
                "-Z",
                "build-std=core",
                "--target",
                TARGET,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("PATH", path)
            // bpf-linker links the nightly's libLLVM dynamically.
            .env("LD_LIBRARY_PATH", self.sysroot.join("lib"))
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env("SOURCE_DATE_EPOCH", "0");
        for var in [
            "RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
        ] {
            cmd.env_remove(var);
        }
        run(&mut cmd)?;
        let object = target_dir.join(TARGET).join("release").join(BIN_NAME);
        fs::read(&object).with_context(|| format!("reading {}", object.display()))
    }
}

/// Returns the name of an installed toolchain that is the pinned nightly, installing it if none.
fn ensure_nightly() -> Result<String> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    for candidate in [TOOLCHAIN, "nightly"] {
        let present = installed.lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|n| n.starts_with(candidate))
        });
        if !present {
            continue;
        }
        let version = output(rustup_run(candidate, "rustc").arg("-vV")).unwrap_or_default();
        if version
            .lines()
            .any(|l| l == format!("commit-hash: {TOOLCHAIN_COMMIT}"))
        {
            return Ok(candidate.to_owned());
        }
    }
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
        "--no-self-update",
    ]))?;
    Ok(TOOLCHAIN.to_owned())
}

/// bpf-linker must be built against the same LLVM as the nightly rustc, so it gets its own
/// install root per toolchain under cargo home. Returns the directory holding the binary.
fn ensure_bpf_linker(toolchain: &str, sysroot: &Path) -> Result<PathBuf> {
    let tools = cargo_home().join("apptheus-ebpf-tools").join(toolchain);
    let bin_dir = tools.join("bin");
    let linker = bin_dir.join("bpf-linker");
    let lib_dir = sysroot.join("lib");
    let works = Command::new(&linker)
        .arg("--version")
        .env("LD_LIBRARY_PATH", &lib_dir)
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    if works {
        return Ok(bin_dir);
    }

    let version = output(rustup_run(toolchain, "rustc").arg("-vV"))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or_else(|| anyhow!("no LLVM version in `rustc -vV` of {toolchain}"))?
        .to_owned();
    // The nightly ships libLLVM as `libLLVM.so.<ver>-rust-<ver>-nightly`; llvm-sys wants a prefix
    // with lib/libLLVM.so, so make one of symlinks.
    let libllvm = fs::read_dir(&lib_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let prefix = tools.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in [
        OsString::from("libLLVM.so"),
        libllvm.file_name().unwrap_or_default().to_owned(),
    ] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)?;
    }
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--force",
        ])
        .args(["--version", &format!("={BPF_LINKER_VERSION}")])
        .args(["--features", &format!("llvm-{llvm_major}")])
        .arg("--root")
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix)
        .env_remove("CARGO_TARGET_DIR"))?;
    Ok(bin_dir)
}

/// Copies the object's inputs (and the workspace manifest they inherit from) to [`STAGE`].
/// Returns the stage and the lock that keeps other builds out of it until dropped.
fn stage_sources(root: &Path) -> Result<(PathBuf, fs::File)> {
    let stage = PathBuf::from(STAGE);
    fs::create_dir_all(&stage)?;
    let lock = fs::File::create(stage.join(".lock"))?;
    lock.lock().context("locking the eBPF build stage")?;
    for dir in ["apptheus-ebpf", "apptheus-common"] {
        let _ = fs::remove_dir_all(stage.join(dir));
    }
    let mut files = vec!["Cargo.toml".to_owned()];
    for source in SOURCES {
        collect_files(root, &root.join(source), &mut files)?;
    }
    for rel in files {
        let to = stage.join(&rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(root.join(&rel), &to).with_context(|| format!("staging {rel}"))?;
    }
    Ok((stage, lock))
}

/// SHA-256 over the object's inputs: each file's path, length and bytes, in path order.
fn source_hash(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    for source in SOURCES {
        collect_files(root, &root.join(source), &mut files)?;
    }
    files.sort();
    let mut hasher = Sha256::new();
    for rel in &files {
        let bytes = fs::read(root.join(rel))?;
        hasher.update(rel.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex(&hasher.finalize()))
}

fn collect_files(root: &Path, path: &Path, out: &mut Vec<String>) -> Result<()> {
    if path.is_dir() {
        for entry in fs::read_dir(path)? {
            collect_files(root, &entry?.path(), out)?;
        }
    } else {
        let rel = path.strip_prefix(root)?;
        let rel = rel
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 path {}", rel.display()))?;
        out.push(rel.to_owned());
    }
    Ok(())
}

/// `apptheus-ebpf.o.sources`: what the shipped object was built from.
struct Record {
    sources: String,
    object: String,
}

impl Record {
    fn render(&self) -> String {
        format!(
            "# Written by `cargo xtask build-ebpf`, verified by `cargo xtask build-ebpf --check`.\n\
             sources-sha256 {}\nobject-sha256 {}\ntoolchain {TOOLCHAIN} {TOOLCHAIN_COMMIT}\nbpf-linker {BPF_LINKER_VERSION}\n",
            self.sources, self.object
        )
    }

    fn parse(text: &str) -> Result<Self> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .map(|v| v.trim().to_owned())
                .ok_or_else(|| anyhow!("{RECORD_FILE} has no `{key}` line"))
        };
        Ok(Self {
            sources: field("sources-sha256")?,
            object: field("object-sha256")?,
        })
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("apptheus-ebpf-check-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_owned()
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn rustup_run(toolchain: &str, program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, program]);
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("build-ebpf: running {cmd:?}");
    let _ = std::io::stderr().flush();
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
