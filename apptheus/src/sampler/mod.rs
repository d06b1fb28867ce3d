//! Sampling: one thread samples every container's cgroup at `--monitor.interval`, takes a final
//! sample when it empties, then has the cgroup removed. The final sample stays exported for
//! `--metrics.retention`, the oldest first dropped beyond `--limits.retained-containers`.
//!
//! One thread rather than a task per container: a slot's containers are sampled in one wake-up
//! without a runtime poll, timer or task switch each, and the thread's kept cgroup files are
//! read one after the other (bench/RESULTS.md, "Sampling cost"). The shipped Go original shares
//! one ticker too, but samples only about two jobs a second.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use tokio_util::sync::CancellationToken;

use crate::cgroup::{self, CgroupFiles, Collector, ContainerCgroup, ContainerDescriptors, Timed};
use crate::ebpf::{Counting, EbpfCounters};
use crate::store::Store;

/// The shortest `--monitor.interval`. Cgroup counters move in scheduler ticks and the kernel's
/// own statistics flushes; sampling faster shows little more and costs a core: at 1ns one
/// container kept 60 % of a core busy.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What the sampling thread needs, and nothing else.
pub struct Setup {
    pub collectors: Vec<Box<dyn Collector>>,
    pub store: Arc<Store>,
    pub ebpf: Arc<Counting>,
    /// `--monitor.interval`.
    pub interval: Duration,
    /// `--metrics.retention`: zero drops an ended container's series at once.
    pub retention: Duration,
    pub metrics: Metrics,
    /// Called with the id of every container whose monitoring ends (the launcher's admission
    /// gives its slot back).
    pub on_end: Box<dyn Fn(&str) + Send + Sync>,
    pub shutdown: CancellationToken,
}

/// The agent's own series the sampler keeps up to date.
pub struct Metrics {
    /// `apptheus_sample_duration_seconds`.
    pub duration: Histogram,
    /// `apptheus_sample_errors_total{source}`.
    pub errors: IntCounterVec,
    /// `apptheus_containers`.
    pub containers: IntGauge,
    /// `apptheus_retained_containers_dropped_total`.
    pub retained_dropped: IntCounter,
}

/// The way in to the sampling thread.
#[derive(Clone)]
pub struct SamplerQueue {
    queue: Sender<Command>,
}

enum Command {
    /// Start sampling a container (its first sample is taken at once).
    Watch { id: String, cg: ContainerCgroup, ebpf_id: Option<u64> },
    /// Stop sampling; running containers keep running and their cgroups stay.
    Stop,
    /// Answer at once: proof that the thread is not stuck (the systemd watchdog).
    Ping(tokio::sync::oneshot::Sender<()>),
}

impl SamplerQueue {
    /// The queue, and its receiving end that [`start`] takes.
    pub fn new() -> (SamplerQueue, Commands) {
        let (queue, commands) = mpsc::channel();
        (SamplerQueue { queue }, Commands(commands))
    }

    /// Sample `cg` until no process is left in it; `ebpf_id` is its cgroup id when it is
    /// counted in the eBPF maps ([`ebpf_watch`]).
    pub fn watch(&self, id: String, cg: ContainerCgroup, ebpf_id: Option<u64>) {
        if self.queue.send(Command::Watch { id, cg, ebpf_id }).is_err() {
            // Only after shutdown: the container keeps running; recovery adopts it at the next
            // start.
            tracing::warn!("sampling has stopped; container not monitored");
        }
    }

    /// True once the sampling thread has answered; false if it has ended.
    pub async fn answers(&self) -> bool {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue.send(Command::Ping(reply)).is_ok() && answer.await.is_ok()
    }

    /// Ask the sampling thread to end (it does at once, between two samples).
    pub fn stop(&self) {
        let _ = self.queue.send(Command::Stop);
    }
}

/// The receiving end of a [`SamplerQueue`].
pub struct Commands(Receiver<Command>);

/// Start the sampling thread. Removing cgroups (which may wait and retry) and freeing eBPF map
/// entries go to `runtime`'s blocking pool, so that they never delay a sample.
pub fn start(setup: Setup, commands: Commands, runtime: tokio::runtime::Handle) -> Result<JoinHandle<()>> {
    let setup = Arc::new(setup);
    std::thread::Builder::new()
        .name("apptheus-sample".into())
        .spawn(move || Sampler { setup, runtime, containers: Vec::new() }.run(commands.0))
        .context("starting the sampling thread")
}

/// A container being sampled.
struct Watched {
    id: String,
    cg: ContainerCgroup,
    files: CgroupFiles,
    ebpf: EbpfTrack,
    /// Its launcher's connection and eBPF links, in the descriptor budget.
    descriptors: ContainerDescriptors,
    /// When its next sample is due; None: at once (its first).
    due: Option<Instant>,
}

/// A container's eBPF identity: its cgroup id (None when not counted) and the counts of an
/// earlier agent run.
struct EbpfTrack {
    id: Option<u64>,
    base: EbpfCounters,
}

struct Sampler {
    setup: Arc<Setup>,
    runtime: tokio::runtime::Handle,
    containers: Vec<Watched>,
}

impl Sampler {
    fn run(mut self, commands: Receiver<Command>) {
        loop {
            let now = Instant::now();
            let wait = self.containers.iter().map(|c| c.due.unwrap_or(now)).min().map(|due| due.saturating_duration_since(now));
            let command = match wait {
                Some(wait) => commands.recv_timeout(wait),
                None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match command {
                Ok(Command::Watch { id, cg, ebpf_id }) => self.add(id, cg, ebpf_id),
                Ok(Command::Ping(reply)) => {
                    let _ = reply.send(());
                }
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.setup.shutdown.is_cancelled() {
                return;
            }
            crate::support::faults::point("monitor::pass");
            self.sample_due(Instant::now());
        }
    }

    fn add(&mut self, id: String, cg: ContainerCgroup, ebpf_id: Option<u64>) {
        // What an earlier agent run counted (from the persistence file) is the base the
        // counters continue.
        let base = self.setup.store.get(&id).and_then(|e| e.latest).and_then(|t| t.sample.ebpf.clone()).unwrap_or_default();
        // The launcher's connection and the container's own eBPF links.
        let descriptors = cgroup::DESCRIPTORS.take_for_container(1 + self.setup.ebpf.lock().descriptors_per_container());
        let files = CgroupFiles::new();
        self.containers.push(Watched { id, cg, files, ebpf: EbpfTrack { id: ebpf_id, base }, descriptors, due: None });
    }

    /// Sample every container due by `now`; those found empty are finished.
    fn sample_due(&mut self, now: Instant) {
        let interval = self.setup.interval;
        let mut i = 0;
        while i < self.containers.len() {
            let c = &mut self.containers[i];
            if c.due.is_some_and(|due| due > now) {
                i += 1;
                continue;
            }
            let setup = &self.setup;
            // A bug met while sampling one container ends its monitoring, not everyone's.
            let state = catch_unwind(AssertUnwindSafe(|| sample_once(setup, c))).unwrap_or_else(|_| {
                tracing::error!(container = %c.id, "sampling panicked; ending monitoring");
                State::Gone
            });
            match state {
                State::Running => {
                    c.due = Some(next_due(c.due, interval, now));
                    i += 1;
                }
                State::Ended | State::Gone => {
                    let c = self.containers.swap_remove(i);
                    self.finish(c);
                }
            }
        }
    }

    /// The container's cgroup is empty (or gone): freeze its series, then remove the cgroup.
    fn finish(&self, c: Watched) {
        let Watched { id, cg, files, ebpf, descriptors, .. } = c;
        drop(files); // the descriptors keep the cgroup's files open; close them before rmdir
        drop(descriptors);
        let setup = &self.setup;
        if setup.retention.is_zero() {
            setup.store.remove(&id);
        } else {
            let dropped = setup.store.finish(&id, SystemTime::now());
            if !dropped.is_empty() {
                setup.metrics.retained_dropped.inc_by(dropped.len() as u64);
                tracing::debug!(dropped = ?dropped, "--limits.retained-containers reached; the oldest ended containers dropped");
            }
        }
        setup.metrics.containers.set(setup.store.live_count() as i64);
        (setup.on_end)(&id);
        let counting = setup.ebpf.clone();
        self.runtime.spawn_blocking(move || {
            if let Some(cgid) = ebpf.id {
                counting.unwatch(cgid);
            }
            let path = cg.path.clone();
            match cg.remove() {
                Ok(()) => tracing::info!(container = %id, cgroup = %path, "container ended; cgroup removed"),
                Err(err) => tracing::warn!(container = %id, cgroup = %path, err = %format!("{err:#}"), "container ended; cgroup not removed"),
            }
        });
    }
}

enum State {
    Running,
    /// Its last process left; the final sample is stored.
    Ended,
    /// Its cgroup vanished or cannot be read.
    Gone,
}

fn sample_once(setup: &Setup, c: &mut Watched) -> State {
    let sample = take_sample(setup, &c.id, &c.cg, &mut c.files, &c.ebpf);
    // Processes listed in the sample mean it is populated; only an empty list (or none) needs
    // the cgroup's own answer, which also covers processes in sub-cgroups.
    let populated = match sample.sample.processes {
        Some(n) if n > 0 => Ok(true),
        _ => c.cg.is_populated(&mut c.files),
    };
    match populated {
        Ok(true) => {
            setup.store.record(&c.id, sample);
            State::Running
        }
        Ok(false) => {
            // The cgroup still holds the final figures until it is removed: a job shorter than
            // one interval is still accounted. The final sample reads every file afresh (limits
            // and rare-event counters are not read in every sample), and the eBPF counters
            // exactly (the sample's may trail by part of an interval).
            c.files.refresh_all();
            let mut sample = take_sample(setup, &c.id, &c.cg, &mut c.files, &c.ebpf);
            if let Some(cgid) = c.ebpf.id {
                sample.sample.ebpf = setup.ebpf.lock().read_continuing(cgid, &c.ebpf.base);
            }
            setup.store.record(&c.id, sample);
            State::Ended
        }
        Err(err) => {
            // Someone removed the cgroup, or it cannot be read: stop monitoring.
            tracing::warn!(container = %c.id, path = %c.cg.path, %err, "cannot read cgroup state; ending monitoring");
            State::Gone
        }
    }
}

/// Slots per interval in which containers are sampled.
const GRID_SLOTS: u32 = 10;

/// The first point after `now` of a grid of `interval / GRID_SLOTS` steps shared by all
/// containers. Containers due in the same slot are sampled in one wake-up of the sampling
/// thread, instead of one wake-up per container at its own phase; spread over ten slots, the
/// work is not one burst per interval either.
fn next_grid_point(interval: Duration, now: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    let step = (interval / GRID_SLOTS).max(Duration::from_millis(1));
    let since = now.saturating_duration_since(epoch).as_nanos();
    let steps = since / step.as_nanos() + 1;
    epoch + step * u32::try_from(steps).unwrap_or(u32::MAX)
}

/// When a container sampled at `now` is due next: its first sample is followed by the next
/// grid point, later ones keep their phase on the grid; after a stall, the missed ones are
/// skipped rather than taken in a burst.
fn next_due(due: Option<Instant>, interval: Duration, now: Instant) -> Instant {
    let Some(due) = due else { return next_grid_point(interval, now) };
    let next = due + interval;
    if next > now {
        return next;
    }
    let missed = now.duration_since(next).as_nanos() / interval.as_nanos().max(1) + 1;
    next + interval * u32::try_from(missed).unwrap_or(u32::MAX)
}

fn take_sample(setup: &Setup, id: &str, cg: &ContainerCgroup, files: &mut CgroupFiles, ebpf: &EbpfTrack) -> Timed {
    let start = Instant::now();
    let (mut sample, errors) = cgroup::sample(&setup.collectors, cg, files);
    if let Some(cgid) = ebpf.id {
        sample.ebpf = setup.ebpf.lock().read_recent(cgid, &ebpf.base, setup.interval);
    }
    let at = SystemTime::now();
    setup.metrics.duration.observe(start.elapsed().as_secs_f64());
    for (source, err) in errors {
        setup.metrics.errors.with_label_values(&[source]).inc();
        tracing::debug!(container = %id, source, %err, "sample error");
    }
    Timed { at, sample }
}

/// Drop the series of containers that ended more than `--metrics.retention` ago.
pub async fn expire_ended(store: Arc<Store>, retention: Duration, shutdown: CancellationToken) {
    let period = retention.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for id in store.expire(SystemTime::now(), retention) {
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

    #[test]
    fn a_container_keeps_its_phase_and_skips_what_a_stall_missed() {
        let interval = Duration::from_millis(500);
        let t0 = Instant::now();
        // First sample: on to the grid, within one step.
        let first = next_due(None, interval, t0);
        assert!(first > t0 && first <= t0 + interval / GRID_SLOTS);
        // Sampled on time (or a little late): the next is one interval after the due point.
        assert_eq!(next_due(Some(first), interval, first), first + interval);
        assert_eq!(next_due(Some(first), interval, first + Duration::from_millis(30)), first + interval);
        // A stall of 1.2 intervals: the missed sample is skipped, the phase kept.
        let late = first + Duration::from_millis(1200);
        assert_eq!(next_due(Some(first), interval, late), first + interval * 3);
        // Exactly on a missed point: the next one, never `now` itself (no sample twice).
        assert_eq!(next_due(Some(first), interval, first + interval), first + interval * 2);
    }
}
