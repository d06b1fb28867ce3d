//! `cargo xtask dist`: the packages admins install. A `.deb` (cargo-deb) and an `.rpm`
//! (cargo-generate-rpm), both described in apptheus/Cargo.toml, and a plain `tar.gz` with the
//! same files, all in `target/dist/`. The man pages and shell completions are generated from
//! the agent's own clap definitions, so they cannot drift from `--help`. `--lint` runs lintian
//! and rpmlint on the result and fails on any error.
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use flate2::{Compression, GzBuilder};

/// The packaging tools, pinned: the versions whose metadata keys apptheus/Cargo.toml uses.
const CARGO_DEB: (&str, &str) = ("cargo-deb", "3.8.0");
const CARGO_GENERATE_RPM: (&str, &str) = ("cargo-generate-rpm", "0.21.1");

/// Where the generated man pages and completions go, below the target dir's `release/`: both
/// packaging tools map a `target/release/` source onto the real target dir.
const GENERATED: &str = "dist-gen";

#[derive(clap::Args)]
pub struct DistArgs {
    /// Also run lintian on the .deb and rpmlint on the .rpm (packaging/rpm/rpmlint.toml); fail on
    /// any error.
    #[arg(long)]
    pub lint: bool,
}

/// The three artefacts of one `dist` run.
pub struct Packages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
    pub tarball: PathBuf,
}

pub fn run(args: DistArgs) -> Result<()> {
    let packages = build()?;
    for p in [&packages.deb, &packages.rpm, &packages.tarball] {
        println!("dist: {}", p.display());
    }
    if args.lint {
        lint(&packages)?;
    }
    Ok(())
}

/// Build the release binary, the generated docs, and the three packages.
pub fn build() -> Result<Packages> {
    let workspace = workspace_root();
    let target = target_dir(&workspace);
    let out = target.join("dist");
    ensure_tool(CARGO_DEB)?;
    ensure_tool(CARGO_GENERATE_RPM)?;
    cargo(&workspace, &["build", "--release", "--locked", "-p", "apptheus"])?;
    let generated = target.join("release").join(GENERATED);
    generate_docs(&generated)?;
    strip(&target.join("release/apptheus"), &generated.join("apptheus"))?;
    // Only this run's packages in target/dist (a stale version would be picked up by globs).
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out_arg = out.to_string_lossy().into_owned();
    cargo(&workspace, &["deb", "-p", "apptheus", "--no-build", "--locked", "--output", &out_arg])?;
    cargo(&workspace, &["generate-rpm", "-p", "apptheus", "--output", &out_arg])?;
    let deb = single_file(&out, ".deb")?;
    let rpm = single_file(&out, ".rpm")?;
    let tarball = out.join(format!("apptheus-{}-x86_64-linux.tar.gz", env!("CARGO_PKG_VERSION")));
    tarball_from_deb(&deb, &tarball)?;
    Ok(Packages { deb, rpm, tarball })
}

/// lintian and rpmlint, each failing on an error; their full output is shown.
pub fn lint(packages: &Packages) -> Result<()> {
    let workspace = workspace_root();
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", "--display-info", "--tag-display-limit", "0"])
        .arg(&packages.deb)
        .status()
        .context("running lintian (apt-get install lintian)")?;
    let rpmlint = Command::new("rpmlint")
        .arg("-c")
        .arg(workspace.join("packaging/rpm/rpmlint.toml"))
        .arg(&packages.rpm)
        .status()
        .context("running rpmlint (apt-get install rpmlint)")?;
    match (lintian.success(), rpmlint.success()) {
        (true, true) => {
            println!("dist: lintian and rpmlint report no error");
            Ok(())
        }
        (l, r) => bail!(
            "{}{}",
            if l { "" } else { "lintian reports errors on the .deb (above). " },
            if r { "" } else { "rpmlint reports errors on the .rpm (above)." }
        ),
    }
}

/// Man pages `apptheus(8)` and `apptheus-exec(1)`, and bash, zsh and fish completions, from the
/// agent's clap definitions.
fn generate_docs(dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let agent = apptheus::cli::Cli::command();
    let exec = agent
        .find_subcommand("exec")
        .context("the agent has no exec subcommand")?
        .clone()
        .name("apptheus-exec")
        // the synopsis shows how it is typed
        .bin_name("apptheus exec");
    let mut page = Vec::new();
    man(agent.clone(), "8", &mut page)?;
    page.extend_from_slice(AGENT_PAGE_TAIL.as_bytes());
    write_gzip(&dir.join("apptheus.8.gz"), &page)?;
    let mut page = Vec::new();
    man(exec, "1", &mut page)?;
    page.extend_from_slice(EXEC_PAGE_TAIL.as_bytes());
    write_gzip(&dir.join("apptheus-exec.1.gz"), &page)?;
    for (shell, name) in [
        (clap_complete::Shell::Bash, "apptheus.bash"),
        (clap_complete::Shell::Zsh, "_apptheus"),
        (clap_complete::Shell::Fish, "apptheus.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut agent.clone(), "apptheus", &mut text);
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn man(cmd: clap::Command, section: &str, out: &mut Vec<u8>) -> Result<()> {
    clap_mangen::Man::new(cmd)
        .section(section)
        .source(format!("apptheus {}", env!("CARGO_PKG_VERSION")))
        .manual(if section == "8" { "System Administration" } else { "User Commands" })
        .render(out)
        .context("rendering a man page")
}

/// What `--help` cannot say: where the service keeps its settings and state.
const AGENT_PAGE_TAIL: &str = r#".SH FILES
.TP
\fI/etc/default/apptheus\fR (Debian), \fI/etc/sysconfig/apptheus\fR (RPM systems)
\fBARGS=\fR, the agent's arguments under \fBapptheus.service\fR.
.TP
\fI/run/apptheus/gateway.sock\fR
The socket trusted launchers connect to (\fB\-\-socket.path\fR).
.TP
\fI/var/lib/apptheus/store.json\fR
The store of live and recently ended containers, kept across restarts and upgrades
(\fB\-\-persistence.file\fR in the unit).
.SH SEE ALSO
\fBapptheus\-exec\fR(1), \fBsystemd.service\fR(5), \fBapptainer\fR(1)
"#;

const EXEC_PAGE_TAIL: &str = r#".SH EXIT STATUS
The exit status of \fICMD\fR; 125 when the agent is absent or refuses the launch.
.SH SEE ALSO
\fBapptheus\fR(8)
"#;

/// The packaged binary without its symbol table and debug info (cargo-generate-rpm does not
/// strip; target/release/apptheus keeps them for profiling).
fn strip(binary: &Path, out: &Path) -> Result<()> {
    let status = Command::new("strip")
        .args(["--strip-unneeded", "-o"])
        .arg(out)
        .arg(binary)
        .status()
        .context("running strip (binutils)")?;
    if !status.success() {
        bail!("strip {} failed ({status})", binary.display());
    }
    Ok(())
}

/// gzip as Debian wants it: maximum compression, no name or time stamp in the header.
fn write_gzip(path: &Path, data: &[u8]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut gz = GzBuilder::new().mtime(0).write(file, Compression::best());
    gz.write_all(data).with_context(|| format!("writing {}", path.display()))?;
    gz.finish().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The tarball holds exactly the .deb's files (`tar -C / -xzf` installs them by hand).
fn tarball_from_deb(deb: &Path, tarball: &Path) -> Result<()> {
    let out = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stderr(Stdio::inherit())
        .output()
        .context("running dpkg-deb --fsys-tarfile")?;
    if !out.status.success() {
        bail!("dpkg-deb --fsys-tarfile {} failed ({})", deb.display(), out.status);
    }
    write_gzip(tarball, &out.stdout)
}

/// `cargo <tool>` works, or is installed now with `cargo install --locked`.
fn ensure_tool((krate, version): (&str, &str)) -> Result<()> {
    let sub = krate.trim_start_matches("cargo-");
    let works = Command::new(cargo_bin())
        .args([sub, "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    eprintln!("dist: installing {krate} {version}");
    cargo(&workspace_root(), &["install", "--locked", krate, "--version", version])
}

fn cargo(dir: &Path, args: &[&str]) -> Result<()> {
    eprintln!("dist: cargo {}", args.join(" "));
    let status = Command::new(cargo_bin())
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn single_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one {suffix} in {}, found {found:?}", dir.display()),
    }
}

fn cargo_bin() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

pub fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(t) if t.is_absolute() => t,
        Some(t) => workspace.join(t),
        None => workspace.join("target"),
    }
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
