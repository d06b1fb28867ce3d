//! What the host learns from the guest: the init's start and exit markers on the console (which is
//! also kept in a log file and a tail for error messages), and the test script's `ok - ...` /
//! `not ok - ...` lines, relayed to stdout and counted.
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result};

use super::lockup::{self, Alarm};
use super::qemu::{Outcome, Sink};

const TAIL_LINES: usize = 60;

pub struct Console {
    start_marker: String,
    exit_marker: String,
    log: File,
    verbose: bool,
    tail: VecDeque<String>,
    alarm: Arc<Alarm>,
    /// Where this boot's kernel text starts (`_stext`, printed by the init).
    pub stext: Option<u64>,
    /// Host time and guest uptime (s) when the init started the command.
    pub started: Option<(Instant, f64)>,
    /// The command's exit status and the guest uptime (s) when it ended.
    pub exited: Option<(i32, f64)>,
}

impl Console {
    pub fn new(token: &str, log: &Path, verbose: bool, alarm: Arc<Alarm>) -> Result<Self> {
        Ok(Console {
            start_marker: format!("VM-TEST-START-{token} "),
            exit_marker: format!("VM-TEST-EXIT-{token}="),
            log: File::create(log).with_context(|| format!("creating {}", log.display()))?,
            verbose,
            tail: VecDeque::new(),
            alarm,
            stext: None,
            started: None,
            exited: None,
        })
    }

    fn line(&mut self, line: &str) {
        let _ = writeln!(self.log, "{line}");
        if self.verbose {
            eprintln!("console| {line}");
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
        if lockup::is_alarm(line) {
            self.alarm.raise(line);
        }
        if let Some(rest) = after(line, "init: kernel _stext=") {
            self.stext = u64::from_str_radix(rest.trim(), 16).ok();
        } else if let Some(rest) = after(line, &self.start_marker) {
            self.started = Some((Instant::now(), uptime(rest)));
        } else if let Some(rest) = after(line, &self.exit_marker) {
            let code = rest
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1);
            self.exited = Some((code, uptime(rest)));
        }
    }

    pub fn tail(&self) -> String {
        if self.tail.is_empty() {
            return "console| (nothing)\n".to_string();
        }
        self.tail
            .iter()
            .map(|l| format!("console| {l}\n"))
            .collect()
    }
}

/// The text after `marker` in `line` (kernel messages may share the line).
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

fn uptime(text: &str) -> f64 {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))
        .and_then(|u| u.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn console_sink(console: Arc<Mutex<Console>>) -> Sink {
    Box::new(move |line| {
        console
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .line(line)
    })
}

#[derive(Default)]
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
}

/// Relays the guest's stdout and counts its TAP-style check lines.
pub fn stdout_sink(tally: Arc<Mutex<Tally>>) -> Sink {
    Box::new(move |line| {
        {
            let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
            if line.starts_with("ok ") {
                t.passed += 1;
            } else if line.starts_with("not ok ") {
                t.failed += 1;
            }
        }
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })
}

pub fn stderr_sink() -> Sink {
    Box::new(|line| eprintln!("{line}"))
}

pub struct Failure {
    pub reason: String,
    /// The VM itself misbehaved (did not boot, crashed, timed out): the console tells why.
    pub vm: bool,
}

/// Why the run failed, if it did.
pub fn judge(
    outcome: &Outcome,
    console: &Console,
    tally: &Tally,
    is_test: bool,
    timeout: u64,
) -> Option<Failure> {
    let vm = |reason: String| Some(Failure { reason, vm: true });
    if let Some((at, line, _)) = &outcome.lockup {
        let line = line.split("] ").nth(1).unwrap_or(line);
        return vm(format!(
            "the guest kernel locked up {:.0}s after qemu started (\"{line}\"); the run was ended {}s later, \
             after the backtraces above",
            at.as_secs_f64(),
            lockup::GRACE.as_secs()
        ));
    }
    let test = |reason: String| Some(Failure { reason, vm: false });
    let qemu_said = match outcome.qemu_stderr.trim() {
        "" => String::new(),
        s => format!("; qemu: {s}"),
    };
    if console.started.is_none() {
        return match outcome.status {
            None => vm(format!(
                "the VM did not start its command within {timeout}s{qemu_said}"
            )),
            Some(status) => vm(format!(
                "the VM did not start its command (qemu {status}){qemu_said}"
            )),
        };
    }
    let Some((code, _)) = console.exited else {
        return match outcome.status {
            None => vm(format!(
                "timed out after {timeout}s while the guest command was running"
            )),
            Some(status) => vm(format!(
                "the guest stopped before its command finished (qemu {status}){qemu_said}"
            )),
        };
    };
    if !is_test {
        return (code != 0).then(|| Failure {
            reason: format!("the guest command exited with status {code}"),
            vm: false,
        });
    }
    if tally.failed > 0 {
        return test(format!(
            "{} of {} guest checks failed",
            tally.failed,
            tally.failed + tally.passed
        ));
    }
    if code != 0 {
        return test(format!("the guest test exited with status {code}"));
    }
    if tally.passed == 0 {
        return test("the guest test ran no checks".to_string());
    }
    None
}
