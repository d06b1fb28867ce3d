//! Admission: how many containers may run at once, per user (`--limits.containers-per-user`)
//! and on the node (`--limits.containers`). A launcher takes a slot before it is placed; the
//! slot is given back when placement fails, and when its container ends (the sampler calls
//! [`Admission::release`]). Slots are counted by container id under one lock, so two launchers
//! cannot both take the last one, and a container is never counted twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The caps; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub per_user: usize,
    pub total: usize,
    /// Whether root's (uid 0) launches obey `per_user` too (they always obey `total`).
    pub root_per_user: bool,
}

/// Why a new container is refused: the limit it would exceed (sent back as the `reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    #[error("uid {uid} is at its cap of {limit} running containers (--limits.containers-per-user)")]
    PerUser { uid: u32, limit: usize },
    #[error("the node is at its cap of {limit} running containers, all users together (--limits.containers)")]
    Total { limit: usize },
}

impl Limit {
    /// The `reason` label of `apptheus_connections_total{result="refused"}`.
    pub fn label(&self) -> &'static str {
        match self {
            Limit::PerUser { .. } => "per_user_limit",
            Limit::Total { .. } => "global_limit",
        }
    }
}

/// The running containers, by id, and how many each user has.
pub struct Admission {
    caps: Caps,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Every container holding a slot, with its user (None: not known, counted in the total only).
    uid_of: HashMap<String, Option<u32>>,
    per_uid: HashMap<u32, usize>,
}

impl Held {
    fn add(&mut self, id: &str, uid: Option<u32>) {
        if self.uid_of.insert(id.to_string(), uid).is_none() {
            if let Some(uid) = uid {
                *self.per_uid.entry(uid).or_default() += 1;
            }
        }
    }

    fn remove(&mut self, id: &str) {
        let Some(Some(uid)) = self.uid_of.remove(id) else { return };
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
    }
}

impl Admission {
    pub fn new(caps: Caps) -> Admission {
        Admission { caps, held: Mutex::new(Held::default()) }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// A slot for container `id` of user `uid`, or the limit it would exceed. A container that
    /// already holds a slot (its launcher connecting again) gets a slot that takes nothing.
    pub fn admit(self: &Arc<Self>, uid: u32, id: &str) -> Result<Slot, Limit> {
        let mut held = self.lock();
        if held.uid_of.contains_key(id) {
            return Ok(Slot { admission: None, id: id.to_string() });
        }
        let per_user = self.caps.per_user;
        if per_user > 0 && (uid != 0 || self.caps.root_per_user) && held.per_uid.get(&uid).is_some_and(|n| *n >= per_user) {
            return Err(Limit::PerUser { uid, limit: per_user });
        }
        if self.caps.total > 0 && held.uid_of.len() >= self.caps.total {
            return Err(Limit::Total { limit: self.caps.total });
        }
        held.add(id, Some(uid));
        Ok(Slot { admission: Some(self.clone()), id: id.to_string() })
    }

    /// A container that runs already (re-adopted at start): counted, never refused, even
    /// beyond the caps (they were lowered, or an older agent had none).
    pub fn adopt(&self, uid: Option<u32>, id: &str) {
        self.lock().add(id, uid);
    }

    /// The container `id` ended: its slot is free (nothing happens if it held none).
    pub fn release(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Containers holding a slot, all users together.
    pub fn running(&self) -> usize {
        self.lock().uid_of.len()
    }

    /// Containers holding a slot for user `uid`.
    pub fn running_for(&self, uid: u32) -> usize {
        self.lock().per_uid.get(&uid).copied().unwrap_or(0)
    }

    // Every update is one insert or remove of both maps under the lock; a panic cannot leave
    // them half-updated, so a poisoned lock is still safe to use.
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A slot taken for one container: given back when dropped (placement failed, or the launcher
/// got an existing container), unless [`Slot::keep`] hands it to the placed container.
pub struct Slot {
    admission: Option<Arc<Admission>>,
    id: String,
}

impl Slot {
    /// The container was placed: the slot stays taken until [`Admission::release`].
    pub fn keep(mut self) {
        self.admission = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.release(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_user: usize, total: usize, root_per_user: bool) -> Arc<Admission> {
        Arc::new(Admission::new(Caps { per_user, total, root_per_user }))
    }

    #[test]
    fn a_user_gets_exactly_the_cap_and_others_still_get_theirs() {
        let a = admission(2, 0, false);
        a.admit(1000, "x_1").unwrap().keep();
        a.admit(1000, "x_2").unwrap().keep();
        let refused = a.admit(1000, "x_3").err().unwrap();
        assert_eq!(refused, Limit::PerUser { uid: 1000, limit: 2 });
        assert_eq!(refused.label(), "per_user_limit");
        assert!(refused.to_string().contains("--limits.containers-per-user"), "{refused}");
        a.admit(1001, "x_4").unwrap().keep();
        assert_eq!((a.running_for(1000), a.running_for(1001), a.running()), (2, 1, 3));
        // One ends: the user may start one more, and only one.
        a.release("x_1");
        a.admit(1000, "x_5").unwrap().keep();
        assert!(a.admit(1000, "x_6").is_err());
    }

    #[test]
    fn the_total_cap_holds_across_users_and_for_root() {
        let a = admission(0, 3, false);
        for (uid, id) in [(1, "a_1"), (2, "a_2"), (0, "a_3")] {
            a.admit(uid, id).unwrap().keep();
        }
        for uid in [0, 1, 3] {
            let refused = a.admit(uid, "a_9").err().unwrap();
            assert_eq!(refused, Limit::Total { limit: 3 });
            assert_eq!(refused.label(), "global_limit");
            assert!(refused.to_string().contains("(--limits.containers)"), "{refused}");
        }
    }

    #[test]
    fn root_obeys_the_per_user_cap_only_when_asked() {
        let a = admission(1, 0, false);
        for id in ["r_1", "r_2", "r_3"] {
            a.admit(0, id).unwrap().keep();
        }
        let strict = admission(1, 0, true);
        strict.admit(0, "r_1").unwrap().keep();
        assert_eq!(strict.admit(0, "r_2").err(), Some(Limit::PerUser { uid: 0, limit: 1 }));
    }

    #[test]
    fn a_slot_not_kept_is_given_back() {
        let a = admission(1, 1, false);
        drop(a.admit(5, "p_1").unwrap());
        assert_eq!(a.running(), 0);
        a.admit(5, "p_2").unwrap().keep();
        assert_eq!(a.running(), 1);
    }

    #[test]
    fn the_same_container_again_takes_no_second_slot() {
        let a = admission(1, 1, false);
        a.admit(7, "c_1").unwrap().keep();
        // Its launcher connects again: admitted, nothing more counted, and dropping that slot
        // frees nothing.
        let again = a.admit(7, "c_1").unwrap();
        drop(again);
        assert_eq!((a.running(), a.running_for(7)), (1, 1));
        assert!(a.admit(8, "c_2").is_err(), "still at the total cap");
        a.release("c_1");
        a.release("c_1"); // twice is harmless
        assert_eq!(a.running(), 0);
    }

    #[test]
    fn adopted_containers_count_even_beyond_the_caps() {
        let a = admission(1, 2, false);
        a.adopt(Some(9), "o_1");
        a.adopt(Some(9), "o_2");
        a.adopt(None, "o_3");
        assert_eq!((a.running(), a.running_for(9)), (3, 2));
        assert!(a.admit(10, "n_1").is_err(), "over the total cap");
        a.release("o_3");
        a.release("o_2");
        assert!(a.admit(9, "n_2").is_err(), "uid 9 still at its cap");
        a.admit(10, "n_3").unwrap().keep();
    }

    #[test]
    fn two_launchers_racing_for_the_last_slot_do_not_both_get_it() {
        let a = admission(0, 50, false);
        for i in 0..49 {
            a.adopt(Some(1), &format!("held_{i}"));
        }
        let won: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let a = a.clone();
                    s.spawn(move || match a.admit(2, &format!("race_{i}")) {
                        Ok(slot) => {
                            slot.keep();
                            1
                        }
                        Err(_) => 0,
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(won, 1);
        assert_eq!(a.running(), 50);
    }
}
