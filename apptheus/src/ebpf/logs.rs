//! Forwards aya-log records of the eBPF programs to the agent log, at debug level.

use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use anyhow::Result;
use aya_log::EbpfLogger;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

/// A `log::Log` that re-emits every record as a tracing debug event, whatever level the
/// program logged at: these are diagnostics of the programs, not of the agent.
struct AtDebug;

impl log::Log for AtDebug {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "apptheus::ebpf::programs", "{}", record.args());
    }
    fn flush(&self) {}
}

/// A thread draining the `AYA_LOGS` ring buffer when it has records; it sleeps in poll(2) on the
/// ring and on an eventfd that drop signals, so it has no periodic wake-up. (tokio's `AsyncFd`
/// would save the thread, but its safe constructor is deprecated as unsound since tokio 1.54
/// and the other one is `unsafe`.)
pub struct LogPump {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    pub fn start(bpf: &mut aya::Ebpf) -> Result<Self> {
        let mut logger = EbpfLogger::init_with_logger(bpf, AtDebug)?;
        let stop = eventfd(0, EventfdFlags::CLOEXEC)?;
        let stopped = stop.try_clone()?;
        let thread = std::thread::Builder::new().name("ebpf-log".into()).spawn(move || {
            loop {
                let mut fds = [PollFd::new(&logger, PollFlags::IN), PollFd::new(&stopped, PollFlags::IN)];
                match poll(&mut fds, None) {
                    Ok(_) if fds[1].revents().is_empty() => logger.flush(),
                    Err(rustix::io::Errno::INTR) => continue,
                    _ => break,
                }
            }
            logger.flush();
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
