//! Where a container's cgroup goes (`--placement`): moved to `--cgroup.parent`, or nested in its
//! caller's cgroup when a move would drop something the caller is under.

use std::path::PathBuf;

use super::constraints::{dropped_by_move, Constraint, Search};
use crate::cgroup::Layout;

/// Where a launcher's container cgroup goes (`--placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Move to `--cgroup.parent` when that drops nothing the caller is under (limits, device
    /// and socket rules, a scheduler's tracking); nest otherwise.
    Auto,
    /// Always inside the caller's own cgroup: every limit and rule above it still applies.
    Nest,
    /// Always to `--cgroup.parent` (the Go Apptheus layout), logging what the move drops.
    Move,
}

/// Where one container goes, and why.
#[derive(Debug)]
pub struct Decision {
    /// The directory to create the container's cgroup in, per hierarchy (layout order).
    pub parents: Vec<PathBuf>,
    pub nested: bool,
    /// What moving to `--cgroup.parent` would drop (for `auto` only the first found).
    pub dropped: Vec<Constraint>,
}

/// Chooses the parents of a container for a caller now in `origin` (one directory per
/// hierarchy, layout order).
pub fn decide(layout: &Layout, mode: Placement, origin: &[PathBuf], name: &str) -> Decision {
    let dropped = match mode {
        Placement::Nest => Vec::new(),
        Placement::Auto | Placement::Move => {
            let mut all = Vec::new();
            for (h, from) in layout.hierarchies.iter().zip(origin) {
                let search = if mode == Placement::Auto { Search::First } else { Search::All };
                all.extend(dropped_by_move(h, from, &h.parent_dir.join(name), search));
                if mode == Placement::Auto && !all.is_empty() {
                    break; // one reason is enough to nest
                }
            }
            all
        }
    };
    let nested = match mode {
        Placement::Nest => true,
        Placement::Move => false,
        Placement::Auto => !dropped.is_empty(),
    };
    let parents = if nested {
        origin.to_vec()
    } else {
        layout.hierarchies.iter().map(|h| h.parent_dir.clone()).collect()
    };
    Decision { parents, nested, dropped }
}

