//! The metric store: every monitored container with its latest sample. The sampler writes,
//! scrapes read a snapshot; nothing here does I/O except [`persistence`], the file that keeps
//! the store across restarts.

pub mod persistence;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::cgroup::Timed;

/// What is known of a container from its placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// `<exe basename>_<pid>`: the `name` label (and the legacy `job` label).
    pub id: String,
    /// The cgroup path: the `id` label.
    pub cgroup_path: String,
    pub pid: i32,
    /// Name of the launcher's real uid (the uid as a number when it has no name).
    pub user: String,
    pub exe: PathBuf,
    /// What the container runs: the `image` label (see placement's `image` module); never empty
    /// (a record of an older agent gets the executable when restored).
    #[serde(default)]
    pub image: String,
    /// Placement time: `container_start_time_seconds`.
    pub started: SystemTime,
    /// Labels from the launcher's environment (`--metrics.env-labels`), sanitised names.
    #[serde(default)]
    pub labels: Vec<(String, String)>,
}

/// A container's latest state, as a scrape sees it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub info: Arc<ContainerInfo>,
    pub latest: Option<Arc<Timed>>,
    /// CPU use in percent of one core between the last two samples (legacy `cpu_usage_per`).
    pub cpu_percent: Option<f64>,
    /// When its last process was gone; its final sample stays exported for the retention.
    pub ended: Option<SystemTime>,
}

/// A container as the persistence file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub info: ContainerInfo,
    pub latest: Option<Timed>,
    pub cpu_percent: Option<f64>,
    pub ended: Option<SystemTime>,
}

#[derive(Debug, Default)]
pub struct Store {
    containers: RwLock<BTreeMap<String, Entry>>,
    /// Ended containers kept at most (`--limits.retained-containers`); 0: no bound.
    retained_max: usize,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// A store that keeps at most `retained_max` ended containers (0: no bound); beyond it the
    /// oldest-ended are dropped first ([`Store::finish`], [`Store::trim_retained`]).
    pub fn with_retained_max(retained_max: usize) -> Store {
        Store { retained_max, ..Store::default() }
    }

    /// Register a newly placed container (no sample yet).
    pub fn insert(&self, info: ContainerInfo) {
        let id = info.id.clone();
        self.write().insert(id, Entry { info: Arc::new(info), latest: None, cpu_percent: None, ended: None });
    }

    /// Mark a container ended: its series stay, frozen, until `expire` drops them, or until
    /// more ended containers than the bound are kept. Returns the ids dropped for the bound
    /// (oldest-ended first).
    pub fn finish(&self, id: &str, at: SystemTime) -> Vec<String> {
        let mut map = self.write();
        if let Some(e) = map.get_mut(id) {
            e.ended = Some(at);
        }
        trim(&mut map, self.retained_max)
    }

    /// Drop the oldest-ended containers beyond the bound (after a start that restored more
    /// than it); returns their ids.
    pub fn trim_retained(&self) -> Vec<String> {
        trim(&mut self.write(), self.retained_max)
    }

    /// Ended containers kept now.
    pub fn retained_count(&self) -> usize {
        self.read().values().filter(|e| e.ended.is_some()).count()
    }

    /// Drop containers that ended more than `retention` ago; returns their ids.
    pub fn expire(&self, now: SystemTime, retention: Duration) -> Vec<String> {
        let mut map = self.write();
        let gone: Vec<String> = map
            .iter()
            .filter(|(_, e)| e.ended.is_some_and(|end| now.duration_since(end).is_ok_and(|d| d >= retention)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            map.remove(id);
        }
        gone
    }

    /// Containers still running (not ended).
    pub fn live_count(&self) -> usize {
        self.read().values().filter(|e| e.ended.is_none()).count()
    }

    /// Everything, for the persistence file.
    pub fn records(&self) -> Vec<Record> {
        self.read()
            .values()
            .map(|e| Record {
                info: (*e.info).clone(),
                latest: e.latest.as_deref().cloned(),
                cpu_percent: e.cpu_percent,
                ended: e.ended,
            })
            .collect()
    }

    /// Put back a container from the persistence file (it replaces nothing newer).
    pub fn restore(&self, mut r: Record) {
        if r.info.image.is_empty() {
            r.info.image = r.info.exe.to_string_lossy().into_owned();
        }
        let mut map = self.write();
        if map.contains_key(&r.info.id) {
            return;
        }
        let id = r.info.id.clone();
        map.insert(
            id,
            Entry { info: Arc::new(r.info), latest: r.latest.map(Arc::new), cpu_percent: r.cpu_percent, ended: r.ended },
        );
    }

    /// A container that runs (again): keep its stored sample if there is one, clear `ended`.
    pub fn restore_live(&self, info: ContainerInfo) {
        let mut map = self.write();
        match map.get_mut(&info.id) {
            Some(e) => e.ended = None,
            None => {
                let id = info.id.clone();
                map.insert(id, Entry { info: Arc::new(info), latest: None, cpu_percent: None, ended: None });
            }
        }
    }

    /// Mark every container not in `running` as ended now (they ended while no agent watched).
    pub fn end_all_except(&self, running: &[String], at: SystemTime) {
        for (id, e) in self.write().iter_mut() {
            if e.ended.is_none() && !running.contains(id) {
                e.ended = Some(at);
            }
        }
    }

    /// The stored record of one container, if any.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.read().get(id).cloned()
    }

    /// Record a sample; the CPU percentage comes from this and the previous sample of the same
    /// container (the Go original compared against zero and reported nonsense).
    pub fn record(&self, id: &str, sample: Timed) {
        let mut map = self.write();
        let Some(entry) = map.get_mut(id) else { return };
        entry.cpu_percent = entry.latest.as_deref().and_then(|prev| cpu_percent(prev, &sample));
        entry.latest = Some(Arc::new(sample));
    }

    pub fn remove(&self, id: &str) -> Option<Entry> {
        self.write().remove(id)
    }

    /// The running container a launcher pid already has, if it connected before.
    pub fn find_by_pid(&self, pid: i32) -> Option<Arc<ContainerInfo>> {
        self.read().values().find(|e| e.info.pid == pid && e.ended.is_none()).map(|e| e.info.clone())
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A consistent copy for one scrape (cheap: reference-counted).
    pub fn snapshot(&self) -> Vec<Entry> {
        self.read().values().cloned().collect()
    }

    // A panic while holding the lock cannot leave the map half-updated (every update is one
    // insert/remove), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.containers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.containers.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Remove the oldest-ended containers of `map` until at most `max` ended ones are left (0: no
/// bound); ties go by id, so the choice does not depend on the map's order.
fn trim(map: &mut BTreeMap<String, Entry>, max: usize) -> Vec<String> {
    if max == 0 {
        return Vec::new();
    }
    let mut ended: Vec<(SystemTime, &String)> = map.iter().filter_map(|(id, e)| Some((e.ended?, id))).collect();
    if ended.len() <= max {
        return Vec::new();
    }
    let excess = ended.len() - max;
    ended.select_nth_unstable(excess - 1);
    let gone: Vec<String> = ended[..excess].iter().map(|(_, id)| (*id).clone()).collect();
    for id in &gone {
        map.remove(id);
    }
    gone
}

fn cpu_percent(prev: &Timed, now: &Timed) -> Option<f64> {
    let used = now.sample.cpu.usage_ns?.checked_sub(prev.sample.cpu.usage_ns?)?;
    let wall = now.at.duration_since(prev.at).ok()?.as_nanos();
    if wall == 0 {
        return None;
    }
    Some(used as f64 / wall as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Sample;
    use std::time::Duration;

    fn info(id: &str, pid: i32) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            cgroup_path: format!("/metric_gateway/{id}"),
            pid,
            user: "root".into(),
            exe: "/usr/bin/x".into(),
            image: "/usr/bin/x".into(),
            started: SystemTime::UNIX_EPOCH,
            labels: vec![],
        }
    }

    fn timed(at_ms: u64, usage_ns: u64) -> Timed {
        let mut sample = Sample::default();
        sample.cpu.usage_ns = Some(usage_ns);
        Timed { at: SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms), sample }
    }

    #[test]
    fn cpu_percent_comes_from_consecutive_samples() {
        let s = Store::new();
        s.insert(info("a_1", 1));
        s.record("a_1", timed(1000, 5_000_000_000));
        assert_eq!(s.snapshot()[0].cpu_percent, None, "one sample gives no rate");
        // 250 ms of CPU in 500 ms of wall time: 50 %.
        s.record("a_1", timed(1500, 5_250_000_000));
        let p = s.snapshot()[0].cpu_percent.unwrap();
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        // A counter that went backwards (cgroup recreated) gives no figure rather than a wild one.
        s.record("a_1", timed(2000, 1));
        assert_eq!(s.snapshot()[0].cpu_percent, None);
    }

    #[test]
    fn ended_containers_stay_until_the_retention_passes() {
        let s = Store::new();
        s.insert(info("a_1", 1));
        s.insert(info("b_2", 2));
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        s.finish("a_1", end);
        assert_eq!(s.live_count(), 1);
        assert_eq!(s.len(), 2);
        assert!(s.find_by_pid(1).is_none(), "an ended container is not reused");
        assert!(s.expire(end + Duration::from_secs(299), Duration::from_secs(300)).is_empty());
        assert_eq!(s.expire(end + Duration::from_secs(300), Duration::from_secs(300)), vec!["a_1".to_string()]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_oldest_ended_are_dropped_beyond_the_bound() {
        let s = Store::with_retained_max(2);
        for (i, id) in ["a_1", "b_2", "c_3", "d_4", "e_5"].iter().enumerate() {
            s.insert(info(id, i as i32 + 1));
        }
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        // Not in id order: the end time decides.
        assert!(s.finish("c_3", at(10)).is_empty());
        assert!(s.finish("a_1", at(20)).is_empty());
        assert_eq!(s.finish("d_4", at(30)), vec!["c_3".to_string()]);
        assert_eq!(s.finish("b_2", at(40)), vec!["a_1".to_string()]);
        assert_eq!(s.retained_count(), 2);
        // The live one is never dropped, whatever the bound.
        assert_eq!(s.live_count(), 1);
        assert!(s.get("e_5").is_some() && s.get("d_4").is_some() && s.get("b_2").is_some());
        // Restored from a file beyond the bound: trimmed at once, the oldest first.
        let t = Store::with_retained_max(1);
        for r in s.records() {
            t.restore(r);
        }
        assert_eq!(t.trim_retained(), vec!["d_4".to_string()]);
        assert_eq!(t.len(), 2);
        // No bound: nothing dropped.
        let u = Store::new();
        for i in 0..100 {
            let id = format!("x_{i}");
            u.insert(info(&id, i));
            assert!(u.finish(&id, at(i as u64)).is_empty());
        }
        assert_eq!(u.retained_count(), 100);
    }

    #[test]
    fn records_round_trip() {
        let s = Store::new();
        s.insert(info("a_1", 1));
        s.record("a_1", timed(1000, 7));
        let t = Store::new();
        for r in s.records() {
            t.restore(r);
        }
        let e = t.get("a_1").unwrap();
        assert_eq!(*e.info, info("a_1", 1));
        assert_eq!(e.latest.unwrap().sample.cpu.usage_ns, Some(7));
    }

    #[test]
    fn find_and_remove() {
        let s = Store::new();
        s.insert(info("a_1", 1));
        s.insert(info("b_2", 2));
        assert_eq!(s.find_by_pid(2).unwrap().id, "b_2");
        assert!(s.remove("a_1").is_some());
        assert_eq!(s.len(), 1);
        s.record("a_1", timed(1, 1)); // a late sample of a removed container is dropped
        assert_eq!(s.len(), 1);
    }
}
