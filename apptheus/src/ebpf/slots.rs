//! Which watched cgroup owns which `FAST_COUNTERS` entry (the programs' fast slots), and how
//! many entries the map gets. Bookkeeping only: `Ebpf` writes the map.
//!
//! A cgroup's slot is one of the `FAST_SLOT_PROBES` entries from its home
//! ([`fast_slot_home`]) on, where the programs look for it; a cgroup that finds all of them
//! taken is counted in the `COUNTERS` hash instead (slower per event, same figures).
use std::collections::HashMap;

use apptheus_common::{fast_slot_home, SlotCounters, FAST_SLOT_PROBES, MAX_FAST_SLOTS};

/// Kernel memory the fast slots may take at most (entries x possible CPUs x value size): on
/// machines with many CPUs the map gets fewer entries, and more containers use the hash.
pub const MEMORY_BUDGET: usize = 16 << 20;

/// Entries of `FAST_COUNTERS` for `cpus` possible CPUs: the largest power of two, at most
/// `MAX_FAST_SLOTS` and `max_containers`, whose per-CPU copies fit [`MEMORY_BUDGET`]; at least 1.
pub fn entries_for(cpus: usize, max_containers: u32) -> u32 {
    let per_entry = cpus.max(1) * std::mem::size_of::<SlotCounters>();
    let by_memory = (MEMORY_BUDGET / per_entry).min(u32::MAX as usize) as u32;
    let limit = by_memory.min(MAX_FAST_SLOTS).min(max_containers).max(1);
    // The largest power of two not above `limit`.
    1 << (31 - limit.leading_zeros())
}

pub struct FastSlots {
    /// Owner cgroup id per entry (0: free).
    owners: Vec<u64>,
    by_cgroup: HashMap<u64, u32>,
}

impl FastSlots {
    /// `entries` is a power of two (see [`entries_for`]).
    pub fn new(entries: u32) -> FastSlots {
        debug_assert!(entries.is_power_of_two());
        FastSlots { owners: vec![0; entries as usize], by_cgroup: HashMap::new() }
    }

    /// What the programs mask indexes with (`FAST_SLOT_MASK`).
    pub fn mask(&self) -> u32 {
        self.owners.len() as u32 - 1
    }

    /// Gives `cgroup_id` a free entry where the programs will look for it, if one is free (its
    /// own, if it has one already).
    pub fn take(&mut self, cgroup_id: u64) -> Option<u32> {
        if let Some(&index) = self.by_cgroup.get(&cgroup_id) {
            return Some(index);
        }
        let home = fast_slot_home(cgroup_id, self.mask());
        let index = (0..FAST_SLOT_PROBES)
            .map(|probe| home.wrapping_add(probe) & self.mask())
            .find(|&i| self.owners[i as usize] == 0)?;
        self.owners[index as usize] = cgroup_id;
        self.by_cgroup.insert(cgroup_id, index);
        Some(index)
    }

    /// The entry `cgroup_id` owns.
    pub fn index_of(&self, cgroup_id: u64) -> Option<u32> {
        self.by_cgroup.get(&cgroup_id).copied()
    }

    /// Frees `cgroup_id`'s entry, returning it.
    pub fn give_back(&mut self, cgroup_id: u64) -> Option<u32> {
        let index = self.by_cgroup.remove(&cgroup_id)?;
        self.owners[index as usize] = 0;
        Some(index)
    }

    /// Each owner and its entry.
    pub fn owned(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.by_cgroup.iter().map(|(&id, &index)| (id, index))
    }

    /// Entries owned now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.by_cgroup.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fit_the_budget_and_are_powers_of_two() {
        assert_eq!(entries_for(2, 4096), MAX_FAST_SLOTS);
        assert_eq!(entries_for(2, 100), 64);
        assert_eq!(entries_for(2, 0), 1);
        for cpus in [1, 2, 64, 128, 384, 8192, 1 << 20] {
            let n = entries_for(cpus, 4096);
            assert!(n.is_power_of_two(), "{cpus} CPUs: {n}");
            assert!(n == 1 || n as usize * cpus * std::mem::size_of::<SlotCounters>() <= MEMORY_BUDGET, "{cpus} CPUs: {n}");
        }
        // 352-byte values: 128 CPUs take 256 entries (11 MiB), 384 CPUs 64 (8.3 MiB).
        assert_eq!(entries_for(128, 4096), 256);
        assert_eq!(entries_for(384, 4096), 64);
    }

    #[test]
    fn a_cgroup_gets_an_entry_the_programs_probe() {
        let mut slots = FastSlots::new(16);
        for id in 1000..1010u64 {
            let index = slots.take(id).expect("free entries");
            let home = fast_slot_home(id, slots.mask());
            let probed: Vec<u32> = (0..FAST_SLOT_PROBES).map(|p| (home + p) & slots.mask()).collect();
            assert!(probed.contains(&index), "id {id}: entry {index} outside {probed:?}");
            assert_eq!(slots.take(id), Some(index), "taking again keeps the entry");
            assert_eq!(slots.index_of(id), Some(index));
        }
        let mut indexes: Vec<u32> = (1000..1010u64).filter_map(|id| slots.index_of(id)).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), 10, "one owner per entry");
    }

    #[test]
    fn a_full_neighbourhood_sends_the_cgroup_to_the_hash_until_an_entry_frees() {
        let mut slots = FastSlots::new(1);
        assert_eq!(slots.take(7), Some(0));
        assert_eq!(slots.take(8), None);
        assert_eq!(slots.used(), 1);
        assert_eq!(slots.give_back(7), Some(0));
        assert_eq!(slots.give_back(7), None);
        assert_eq!(slots.take(8), Some(0));
        assert_eq!(slots.index_of(7), None);
    }
}
