//! `cargo xtask test`: the project's whole test command, as README.md and CI run it.
//! It ends with one plain line, `tests: N passed, N failed, N skipped`, summed over every test
//! binary (cargo prints one result line per binary, the last of which may be an empty doc-test run).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Extra arguments passed to `cargo test` (after the workspace selection).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

pub fn run(args: TestArgs) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The shipped eBPF object must be what its sources build (installs the toolchain if needed).
    let fresh = crate::ebpf::build(crate::ebpf::BuildArgs { check: true });
    if let Err(err) = &fresh {
        eprintln!("build-ebpf --check: {err:#}");
    }
    println!("test ebpf_object_is_fresh ... {}", if fresh.is_ok() { "ok" } else { "FAILED" });
    let mut child = Command::new(&cargo)
        // failpoints: the named fault points some privileged tests arm (apptheus/src/support/faults.rs).
        .args(["test", "--workspace", "--locked", "--no-fail-fast", "--features", "apptheus/failpoints"])
        .args(&args.cargo_args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo} test"))?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        add_result_line(&mut totals, &line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    let cargo_passed = totals.passed;
    // Every fuzz target for the short CI budget, each counted as one test.
    let fuzz_failed = run_fuzz(&mut totals);
    if fresh.is_ok() {
        totals.passed += 1;
    } else {
        totals.failed += 1;
    }
    // Skipped privileged tests print "SKIP" but count as passed in cargo's tally; with
    // APPTHEUS_REQUIRE_PRIVILEGED=1 they fail instead, so there are none in CI.
    println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if fresh.is_err() {
        bail!("the shipped eBPF object is stale: run `cargo xtask build-ebpf` and commit apptheus/src/ebpf/prebuilt/");
    }
    if cargo_passed == 0 {
        bail!("cargo test ran no test");
    }
    if fuzz_failed > 0 {
        bail!("fuzzing failed ({fuzz_failed} failure(s) above; crashing inputs in fuzz/artifacts/)");
    }
    Ok(())
}

/// After the tests: every fuzz target (fuzz/, `cargo xtask fuzz`) for the short CI budget, each
/// target counted as one test. `APPTHEUS_FUZZ_SECONDS=N` changes the budget per target; `0`
/// skips fuzzing (one skipped test). Returns the number of failures; a harness that cannot
/// build or run counts as one.
fn run_fuzz(totals: &mut Totals) -> u64 {
    let seconds = match std::env::var("APPTHEUS_FUZZ_SECONDS") {
        Err(_) => crate::fuzz::CI_SECONDS,
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                println!("fuzz: FAILED: APPTHEUS_FUZZ_SECONDS={text:?} is not a number of seconds");
                totals.failed += 1;
                return 1;
            }
        },
    };
    if seconds == 0 {
        println!("fuzz: skipped (APPTHEUS_FUZZ_SECONDS=0)");
        totals.ignored += 1;
        return 0;
    }
    match crate::fuzz::fuzz(seconds, 1, &[]) {
        Ok(outcomes) => {
            let failed = outcomes.iter().filter(|o| !o.passed).count() as u64;
            let passed = outcomes.len() as u64 - failed;
            println!("fuzz: {} targets, {passed} passed, {failed} failed ({seconds} s each)", outcomes.len());
            for o in outcomes.iter().filter(|o| !o.passed) {
                println!("fuzz {}: {}", o.target, o.summary);
            }
            totals.passed += passed;
            totals.failed += failed;
            failed
        }
        Err(err) => {
            println!("fuzz: FAILED: {err:#}");
            totals.failed += 1;
            1
        }
    }
}

/// Add a `test result: ok. 14 passed; 0 failed; 0 ignored; ...` line to the totals.
fn add_result_line(t: &mut Totals, line: &str) {
    let Some(rest) = line.strip_prefix("test result: ") else { return };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
        let Ok(n) = n.parse::<u64>() else { continue };
        match kind {
            "passed" => t.passed += n,
            "failed" => t.failed += n,
            "ignored" => t.ignored += n,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_result_lines() {
        let mut t = Totals::default();
        add_result_line(&mut t, "test result: ok. 14 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 12.20s");
        add_result_line(&mut t, "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out");
        add_result_line(&mut t, "running 3 tests");
        assert_eq!(t, Totals { passed: 17, failed: 2, ignored: 1 });
    }
}
