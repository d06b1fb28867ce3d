//! `cargo xtask fuzz`: run every cargo-fuzz target of `fuzz/` (kernel file parsers, the
//! persistence decoder, the launcher environment, the cgroup layout from /proc) for a fixed
//! time each. `cargo xtask test` runs the same with the short CI budget.
//!
//! Installs what is missing: a nightly toolchain (libFuzzer needs `-Zsanitizer`) and
//! `cargo-fuzz`. Each target starts from its corpus (`fuzz/corpus/<target>`, kept between runs,
//! not committed), the committed seeds (`fuzz/seeds/<target>`) and the kernel file fixtures
//! (`apptheus/tests/fixtures`). A crash leaves its input in `fuzz/artifacts/<target>/`; make it a
//! unit test next to the parser, fix the parser, and rerun.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Seconds per target of the long run.
const DEFAULT_SECONDS: u64 = 60;
/// Seconds per target in CI (`--ci`, `cargo xtask test`): about two minutes for every target.
pub const CI_SECONDS: u64 = 10;
/// The toolchain the fuzz crate builds with (any recent nightly).
const TOOLCHAIN: &str = "nightly";
/// Build options, the same for `build` and `run` (different ones would rebuild everything):
/// optimised, with debug assertions and overflow checks, AddressSanitizer (the default).
const BUILD_FLAGS: &[&str] = &["--debug-assertions"];
/// libFuzzer's limit on one input: a parser that takes this long on a file is a bug.
const INPUT_TIMEOUT_SECONDS: u64 = 10;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target (default 60).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: Option<u64>,
    /// The short CI budget: 10 seconds per target.
    #[arg(long, conflicts_with = "seconds")]
    pub ci: bool,
    /// libFuzzer processes per target (`-fork=N` when above 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: u32,
    /// Targets to run (default: every target of fuzz/Cargo.toml).
    pub targets: Vec<String>,
}

/// What happened to one target.
pub struct Outcome {
    pub target: String,
    pub passed: bool,
    /// One line: runs and corpus size, or what failed and where its input is.
    pub summary: String,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let seconds = if args.ci {
        CI_SECONDS
    } else {
        args.seconds.unwrap_or(DEFAULT_SECONDS)
    };
    let outcomes = fuzz(seconds, args.jobs, &args.targets)?;
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    println!(
        "fuzz: {} targets, {} passed, {failed} failed ({seconds} s each)",
        outcomes.len(),
        outcomes.len() - failed
    );
    if failed > 0 {
        bail!("{failed} fuzz target(s) failed; inputs in fuzz/artifacts/, see above");
    }
    Ok(())
}

/// Install what is missing, build every target, run the chosen ones (all when empty) for
/// `seconds` each. An error here is a failure of the harness (no toolchain, the fuzz crate
/// does not build); a crash is an `Outcome` that did not pass.
pub fn fuzz(seconds: u64, jobs: u32, only: &[String]) -> Result<Vec<Outcome>> {
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    ensure_tools()?;

    let all = list_targets(&fuzz_dir)?;
    for name in only {
        if !all.contains(name) {
            bail!(
                "no fuzz target {name:?}; the targets are: {}",
                all.join(", ")
            );
        }
    }
    let targets: Vec<String> = if only.is_empty() { all } else { only.to_vec() };

    let started = Instant::now();
    println!("fuzz: building the fuzz targets (fuzz/target, nightly, AddressSanitizer)");
    let _ = std::io::stdout().flush();
    let mut build = cargo_fuzz(&fuzz_dir, "build");
    build.args(BUILD_FLAGS);
    if let [one] = targets.as_slice() {
        build.arg(one);
    }
    let status = build.status().context("starting cargo fuzz build")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    println!("fuzz: built in {:.0} s", started.elapsed().as_secs_f64());

    let logs = fuzz_dir.join("target").join("fuzz-logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut outcomes = Vec::new();
    for target in &targets {
        print!("fuzz {target}: {seconds} s ... ");
        let _ = std::io::stdout().flush();
        let outcome = run_target(&root, &fuzz_dir, &logs, target, seconds, jobs)?;
        println!("{}", outcome.summary);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn run_target(
    root: &Path,
    fuzz_dir: &Path,
    logs: &Path,
    target: &str,
    seconds: u64,
    jobs: u32,
) -> Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let before = files_in(&artifacts);

    // The first directory is the corpus libFuzzer adds to; the others are read-only seeds.
    let mut dirs = vec![corpus];
    let seeds = fuzz_dir.join("seeds").join(target);
    if seeds.is_dir() {
        dirs.push(seeds);
    }
    dirs.push(root.join("apptheus/tests/fixtures"));

    let log_path = logs.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = cargo_fuzz(fuzz_dir, "run");
    cmd.args(BUILD_FLAGS).arg(target).args(&dirs).arg("--");
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1");
    if jobs > 1 {
        cmd.arg(format!("-fork={jobs}"));
    }
    let dict = fuzz_dir.join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();

    if status.success() {
        return Ok(Outcome {
            target: target.into(),
            passed: true,
            summary: format!("ok ({})", stats(&text)),
        });
    }
    // libFuzzer names the input it saved; a crash seen before keeps its old file name.
    let written = text.lines().rev().find_map(|l| {
        let path = l.split("Test unit written to ").nth(1)?;
        Some(PathBuf::from(path.trim()))
    });
    let new: Vec<PathBuf> = written
        .into_iter()
        .chain(
            files_in(&artifacts)
                .into_iter()
                .filter(|f| !before.contains(f)),
        )
        .collect();
    // The failure itself, for the CI log: the panic or sanitizer report, without the
    // recommended dictionary libFuzzer prints after it.
    let report: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('"') && !l.contains("recommended dictionary"))
        .collect();
    eprintln!(
        "---- fuzz {target}: {status}; from {} ----",
        log_path.display()
    );
    for line in failure_report(&report) {
        eprintln!("{line}");
    }
    let summary = match new.first() {
        Some(input) => {
            let rel = input.strip_prefix(root).unwrap_or(input);
            eprintln!(
                "---- reproduce: cargo +{TOOLCHAIN} fuzz run {} {target} {}\n---- then add that input as a unit test next to the parser",
                BUILD_FLAGS.join(" "),
                rel.display()
            );
            format!("FAILED: {} ({status})", rel.display())
        }
        None => format!(
            "FAILED ({status}, no input saved; see {})",
            log_path.display()
        ),
    };
    Ok(Outcome {
        target: target.into(),
        passed: false,
        summary,
    })
}

/// The lines worth showing of a failed run: from the panic or sanitizer report on (at most 50
/// lines, a backtrace is long), then libFuzzer's lines naming the saved input.
fn failure_report<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    const MARKS: &[&str] = &[
        "panicked at",
        "ERROR: ",
        "==ERROR",
        "ALARM: working on the last Unit",
        "out-of-memory",
    ];
    const SAVED: &[&str] = &["Test unit written to", "Base64:", "SUMMARY:"];
    let Some(start) = lines
        .iter()
        .position(|l| MARKS.iter().any(|m| l.contains(m)))
    else {
        return lines[lines.len().saturating_sub(40)..].to_vec();
    };
    let end = (start + 50).min(lines.len());
    let mut out = lines[start..end].to_vec();
    let saved: Vec<&str> = lines[end..]
        .iter()
        .copied()
        .filter(|l| SAVED.iter().any(|m| l.contains(m)))
        .collect();
    if end < lines.len() {
        out.push("...");
    }
    out.extend(saved);
    out
}

/// "1234567 runs, corpus 321": from libFuzzer's `Done N runs` (or, with `-fork`, its last
/// `#N:` status line) and last `corp:` figure.
fn stats(log: &str) -> String {
    let done = log.lines().rev().find_map(|l| {
        l.strip_prefix("Done ")?
            .split_whitespace()
            .next()
            .map(str::to_owned)
    });
    let runs = done.or_else(|| {
        log.lines().rev().find_map(|l| {
            let digits: String = l
                .strip_prefix('#')?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            (!digits.is_empty()).then_some(digits)
        })
    });
    let corpus = log.lines().rev().find_map(|l| {
        let rest = l.split(" corp: ").nth(1)?;
        rest.split(['/', ' ']).next().map(str::to_owned)
    });
    match (runs, corpus) {
        (Some(r), Some(c)) => format!("{r} runs, corpus {c}"),
        (Some(r), None) => format!("{r} runs"),
        _ => "no stats".into(),
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The targets as cargo-fuzz sees them (every `[[bin]]` of fuzz/Cargo.toml).
fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let out = cargo_fuzz(fuzz_dir, "list")
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo fuzz list")?;
    if !out.status.success() {
        bail!("cargo fuzz list failed ({})", out.status);
    }
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("fuzz/Cargo.toml has no fuzz target");
    }
    Ok(targets)
}

/// `rustup run nightly cargo fuzz <sub> --fuzz-dir fuzz`, isolated from the caller's cargo.
fn cargo_fuzz(fuzz_dir: &Path, sub: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo", "fuzz", sub, "--fuzz-dir"])
        .arg(fuzz_dir);
    cmd.current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir));
    // `cargo xtask` runs under the stable cargo; none of its settings may leak into the
    // nightly build (a different target dir or RUSTFLAGS would also force full rebuilds).
    for var in [
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The nightly toolchain and cargo-fuzz, installed when missing.
fn ensure_tools() -> Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--version"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running rustup (the fuzz targets need rustup and a nightly toolchain)")?
        .success();
    if !has_nightly {
        run_install(Command::new("rustup").args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
            "--no-self-update",
        ]))?;
    }
    let has_cargo_fuzz = Command::new("rustup")
        .args(["run", TOOLCHAIN, "cargo", "fuzz", "--version"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_cargo_fuzz {
        run_install(Command::new("rustup").args([
            "run",
            TOOLCHAIN,
            "cargo",
            "install",
            "cargo-fuzz",
            "--locked",
        ]))?;
    }
    Ok(())
}

fn run_install(cmd: &mut Command) -> Result<()> {
    cmd.env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO");
    eprintln!("fuzz: installing: {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_from_libfuzzer_output() {
        let log = "#2\tINITED cov: 10 ft: 10 corp: 3/120b exec/s: 0 rss: 30Mb\n\
                   #503003\tDONE   cov: 431 ft: 1234 corp: 212/9876b lim: 4096 exec/s: 45727 rss: 64Mb\n\
                   Done 503003 runs in 11 second(s)\n";
        assert_eq!(stats(log), "503003 runs, corpus 212");
        assert_eq!(stats("nothing"), "no stats");
        let fork = "#88855: cov: 155 ft: 699 corp: 211 exec/s: 14166 oom/timeout/crash: 0/0/0 time: 3s job: 2\n\
                    #137423: cov: 155 ft: 699 corp: 212 exec/s: 12142 oom/timeout/crash: 0/0/0 time: 6s job: 3\n\
                    INFO: exiting: 0 time: 6s\n";
        assert_eq!(stats(fork), "137423 runs, corpus 212");
    }

    #[test]
    fn failure_report_shows_the_panic_and_the_saved_input() {
        let mut lines = vec!["#1 INITED", "#2 NEW"];
        lines.push("thread '<unnamed>' panicked at fuzz_targets/psi.rs:15:21:");
        lines.push("average inf");
        lines.extend(std::iter::repeat_n("   frame", 100));
        lines.push("Test unit written to fuzz/artifacts/psi/crash-1");
        lines.extend(std::iter::repeat_n("   cargo-fuzz frame", 10));
        let shown = failure_report(&lines);
        assert_eq!(shown[0], lines[2]);
        assert_eq!(shown[1], "average inf");
        assert!(shown.contains(&"..."));
        assert_eq!(
            shown.last(),
            Some(&"Test unit written to fuzz/artifacts/psi/crash-1")
        );
        assert!(shown.len() < 60);

        let short = ["a", "thread panicked at x", "b", "Test unit written to y"];
        assert_eq!(
            failure_report(&short),
            vec!["thread panicked at x", "b", "Test unit written to y"]
        );
        assert_eq!(failure_report(&["x", "y"]), vec!["x", "y"]);
    }
}
