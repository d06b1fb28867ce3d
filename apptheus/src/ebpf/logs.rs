//! Forwards aya-log records of the eBPF programs to the agent log, at debug level.
use std::{
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use anyhow::Result;
use aya_log::EbpfLogger;

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

/// A thread draining the `AYA_LOGS` ring buffer; stopped and joined on drop.
pub struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    pub fn start(bpf: &mut aya::Ebpf) -> Result<Self> {
        let mut logger = EbpfLogger::init_with_logger(bpf, AtDebug)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("ebpf-log".into()).spawn({
            let stop = stop.clone();
            move || {
                let fd = logger.as_raw_fd();
                while !stop.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the timeout bounds how long a stop waits.
                    let ready = unsafe { libc::poll(&mut pfd, 1, 200) };
                    if ready > 0 {
                        logger.flush();
                    }
                }
                logger.flush();
            }
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
