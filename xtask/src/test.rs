//! `cargo xtask test`: the project's whole test command, as README.md and CI run it.

use std::process::Command;

use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Extra arguments passed to `cargo test` (after the workspace selection).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

pub fn run(args: TestArgs) -> Result<()> {
    cargo(&["test", "--workspace", "--locked", "--no-fail-fast"], &args.cargo_args)
}

fn cargo(base: &[&str], extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(base)
        .args(extra)
        .status()
        .with_context(|| format!("running {cargo} {}", base.join(" ")))?;
    if !status.success() {
        bail!("{cargo} {} failed ({status})", base.join(" "));
    }
    Ok(())
}
