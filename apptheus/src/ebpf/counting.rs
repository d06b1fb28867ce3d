//! The loaded programs as placement and the sampler share them: placement starts counting a
//! container before its first process arrives, the sampler reads its counters and stops
//! counting when it ends. The agent's gauges of counted containers and failed watches are kept
//! here, next to what changes them.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use prometheus::{IntCounter, IntGauge};

use super::{cgroup_id, Ebpf};

pub struct Counting {
    ebpf: Mutex<Ebpf>,
    /// `apptheus_ebpf_containers`.
    containers: IntGauge,
    /// `apptheus_ebpf_watch_errors_total`.
    watch_errors: IntCounter,
}

impl Counting {
    pub fn new(ebpf: Ebpf, containers: IntGauge, watch_errors: IntCounter) -> Counting {
        Counting { ebpf: Mutex::new(ebpf), containers, watch_errors }
    }

    /// The eBPF state; a panic elsewhere while holding the lock leaves it usable.
    pub fn lock(&self) -> MutexGuard<'_, Ebpf> {
        self.ebpf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start counting the container whose cgroup v2 directory is `dir`; its cgroup id, or None
    /// when no program is attached or the maps cannot take it.
    pub fn watch(&self, container: &str, dir: &Path) -> Option<u64> {
        let mut ebpf = self.lock();
        // Some programs may have been rejected (an older kernel): count with those that work.
        if !ebpf.programs().iter().any(|(_, attached)| *attached) {
            return None;
        }
        let cgid = match cgroup_id(dir) {
            Ok(cgid) => cgid,
            Err(err) => {
                tracing::warn!(container, path = %dir.display(), %err, "no cgroup id; no eBPF counters");
                return None;
            }
        };
        let watched = ebpf.watch(cgid, dir);
        self.containers.set(ebpf.watched() as i64);
        match watched {
            Ok(()) => Some(cgid),
            Err(err) => {
                self.watch_errors.inc();
                tracing::warn!(container, err = %format!("{err:#}"), "cannot watch the container in the eBPF maps; no eBPF counters for it");
                None
            }
        }
    }

    /// Stop counting the container, freeing its entries for another container.
    pub fn unwatch(&self, cgid: u64) {
        let mut ebpf = self.lock();
        ebpf.unwatch(cgid);
        self.containers.set(ebpf.watched() as i64);
    }
}
