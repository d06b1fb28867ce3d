//! One task per container: sample its cgroup at `--monitor.interval` on its own timer (the Go
//! original shared one ticker between all containers), take a final sample when it empties,
//! then remove the cgroup. The final sample stays exported for `--metrics.retention`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::time::MissedTickBehavior;

use crate::agent::Agent;
use crate::cgroup::{self, CgroupFiles, ContainerCgroup, Timed};
use crate::ebpf::EbpfCounters;

/// Whether a container still has to be put into the eBPF maps.
pub enum EbpfWatch {
    /// Placement already tried: the cgroup id when it is counted, None when not.
    Tried(Option<u64>),
    /// A container re-adopted after a restart: watch it now.
    Start,
}

/// Sample `cg` until no process is left in it, then freeze its series and remove it.
pub async fn watch(agent: Arc<Agent>, id: String, cg: ContainerCgroup, ebpf: EbpfWatch) {
    // What an earlier agent run counted (from the persistence file) is the base the counters
    // continue.
    let ebpf = EbpfTrack {
        id: match ebpf {
            EbpfWatch::Tried(id) => id,
            EbpfWatch::Start => ebpf_watch(&agent, &id, &cg),
        },
        base: agent.store.get(&id).and_then(|e| e.latest).and_then(|t| t.sample.ebpf.clone()).unwrap_or_default(),
    };
    let descriptors = cgroup::DESCRIPTORS.take_for_container(agent.ebpf().descriptors_per_container());
    let mut files = CgroupFiles::new();
    // The first sample at once, the next ones on the grid all containers share.
    let mut ticker = tokio::time::interval_at(next_grid_point(agent.interval, Instant::now()).into(), agent.interval);
    // After a stall, carry on at the interval instead of sampling in a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = agent.shutdown.cancelled() => return,
            }
        }
        let sample = take_sample(&agent, &id, &cg, &mut files, &ebpf);
        // Processes listed in the sample mean it is populated; only an empty list (or none)
        // needs the cgroup's own answer, which also covers processes in sub-cgroups.
        let populated = match sample.sample.processes {
            Some(n) if n > 0 => Ok(true),
            _ => cg.is_populated(&mut files),
        };
        match populated {
            Ok(true) => agent.store.record(&id, sample),
            Ok(false) => {
                // The cgroup still holds the final figures until it is removed: a job shorter
                // than one interval is still accounted. The eBPF counters are re-read exactly
                // (the sample's may trail by part of an interval).
                let mut sample = sample;
                if let Some(cgid) = ebpf.id {
                    sample.sample.ebpf = agent.ebpf().read_continuing(cgid, &ebpf.base);
                }
                agent.store.record(&id, sample);
                break;
            }
            Err(err) => {
                // The cgroup vanished or cannot be read: someone removed it; stop monitoring.
                tracing::warn!(container = %id, path = %cg.path, %err, "cannot read cgroup state; ending monitoring");
                break;
            }
        }
    }
    if let Some(cgid) = ebpf.id {
        ebpf_unwatch(&agent, cgid);
    }
    drop(files); // the descriptors keep the cgroup's files open; close them before rmdir
    drop(descriptors);
    finish(&agent, &id, cg).await;
}

/// Slots per interval in which containers are sampled.
const GRID_SLOTS: u32 = 10;

/// The first point after `now` of a grid of `interval / GRID_SLOTS` steps shared by all
/// containers. Containers due in the same slot are sampled in one wake-up of the runtime,
/// instead of one wake-up (and thread switch) per container at its own phase; spread over ten
/// slots, the work is not one burst per interval either.
fn next_grid_point(interval: Duration, now: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    let step = (interval / GRID_SLOTS).max(Duration::from_millis(1));
    let since = now.saturating_duration_since(epoch).as_nanos();
    let steps = since / step.as_nanos() + 1;
    epoch + step * u32::try_from(steps).unwrap_or(u32::MAX)
}

/// A container's eBPF identity: its cgroup id (None when not counted) and the counts of an
/// earlier agent run.
struct EbpfTrack {
    id: Option<u64>,
    base: EbpfCounters,
}

/// Start counting the container in the eBPF maps; its cgroup id, or None when eBPF is off or
/// the container has no cgroup v2 directory.
pub fn ebpf_watch(agent: &Agent, id: &str, cg: &ContainerCgroup) -> Option<u64> {
    let dir = cg.unified_dir()?;
    let mut ebpf = agent.ebpf();
    // Some programs may have been rejected (an older kernel): count with those that work.
    if !ebpf.programs().iter().any(|(_, attached)| *attached) {
        return None;
    }
    let cgid = match crate::ebpf::cgroup_id(dir) {
        Ok(cgid) => cgid,
        Err(err) => {
            tracing::warn!(container = %id, path = %dir.display(), %err, "no cgroup id; no eBPF counters");
            return None;
        }
    };
    let watched = ebpf.watch(cgid, dir);
    agent.telemetry.ebpf_containers.set(ebpf.watched() as i64);
    match watched {
        Ok(()) => Some(cgid),
        Err(err) => {
            agent.telemetry.ebpf_watch_errors.inc();
            tracing::warn!(container = %id, err = %format!("{err:#}"), "cannot watch the container in the eBPF maps; no eBPF counters for it");
            None
        }
    }
}

/// Stop counting the container in the eBPF maps, freeing its entries for another container.
pub fn ebpf_unwatch(agent: &Agent, cgid: u64) {
    let mut ebpf = agent.ebpf();
    ebpf.unwatch(cgid);
    agent.telemetry.ebpf_containers.set(ebpf.watched() as i64);
}

fn take_sample(agent: &Agent, id: &str, cg: &ContainerCgroup, files: &mut CgroupFiles, ebpf: &EbpfTrack) -> Timed {
    let start = Instant::now();
    let (mut sample, errors) = cgroup::sample(&agent.collectors, cg, files);
    if let Some(cgid) = ebpf.id {
        sample.ebpf = agent.ebpf().read_recent(cgid, &ebpf.base, agent.interval);
    }
    let at = SystemTime::now();
    agent.telemetry.sample_duration.observe(start.elapsed().as_secs_f64());
    for (source, err) in errors {
        agent.telemetry.sample_errors.with_label_values(&[source]).inc();
        tracing::debug!(container = %id, source, %err, "sample error");
    }
    Timed { at, sample }
}

async fn finish(agent: &Agent, id: &str, cg: ContainerCgroup) {
    if agent.retention.is_zero() {
        agent.store.remove(id);
    } else {
        agent.store.finish(id, SystemTime::now());
    }
    agent.telemetry.containers.set(agent.store.live_count() as i64);
    let path = cg.path.clone();
    match tokio::task::spawn_blocking(move || cg.remove()).await {
        Ok(Ok(())) => tracing::info!(container = %id, cgroup = %path, "container ended; cgroup removed"),
        Ok(Err(err)) => tracing::warn!(container = %id, cgroup = %path, err = %format!("{err:#}"), "container ended; cgroup not removed"),
        Err(err) => tracing::error!(container = %id, %err, "cgroup removal task failed"),
    }
}

/// Drop the series of containers that ended more than `--metrics.retention` ago.
pub async fn expire_ended(agent: Arc<Agent>) {
    let period = agent.retention.clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = agent.shutdown.cancelled() => return,
        }
        for id in agent.store.expire(SystemTime::now(), agent.retention) {
            tracing::debug!(container = %id, "retention over; series dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_share_grid_points() {
        let interval = Duration::from_millis(500);
        let t0 = Instant::now();
        let first = next_grid_point(interval, t0);
        assert!(first > t0);
        // Any later container lands on the same grid: whole 50 ms steps from the first point.
        for offset_ms in [1u64, 7, 49, 50, 51, 499, 1234] {
            let now = t0 + Duration::from_millis(offset_ms);
            let point = next_grid_point(interval, now);
            assert!(point > now && point <= now + Duration::from_millis(50), "{offset_ms} ms: {point:?}");
            let from_first = point.saturating_duration_since(first).as_nanos();
            assert_eq!(from_first % Duration::from_millis(50).as_nanos(), 0, "{offset_ms} ms: off the grid");
        }
    }
}
