//! `apptheus exec -- CMD`: our own launcher. It connects to the agent, waits for its answer,
//! then runs CMD as its child (so CMD starts inside the new cgroup), holds the connection while
//! CMD runs, and exits with CMD's status.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use crate::cli::ExecArgs;
use crate::launcher::Ack;

/// Exit code when the launcher itself fails (no agent, refused), as `env` and container
/// runtimes use it.
pub const LAUNCH_FAILED: u8 = 125;

pub fn run(args: ExecArgs) -> ExitCode {
    match launch(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("apptheus exec: {err:#}");
            ExitCode::from(LAUNCH_FAILED)
        }
    }
}

fn launch(args: &ExecArgs) -> Result<ExitCode> {
    let stream = UnixStream::connect(&args.socket_path)
        .with_context(|| format!("cannot connect to the agent at {}", args.socket_path.display()))?;
    stream.set_read_timeout(Some(args.timeout)).context("setting the answer timeout")?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .with_context(|| format!("no answer from the agent within {:?}", args.timeout))?;
    let ack: Ack = serde_json::from_str(line.trim()).with_context(|| format!("unreadable answer from the agent: {line:?}"))?;
    match ack {
        Ack::Ok { id, cgroup } => {
            if std::env::var_os("APPTHEUS_EXEC_VERBOSE").is_some() {
                eprintln!("apptheus exec: container {id} in cgroup {cgroup}");
            }
        }
        Ack::Refused { reason } => bail!("the agent refused: {reason}"),
    }
    let (program, rest) = args.command.split_first().context("no command given")?;
    let status = Command::new(program)
        .args(rest)
        .status()
        .with_context(|| format!("cannot run {}", program.to_string_lossy()))?;
    drop(stream);
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::from(LAUNCH_FAILED),
    })
}
