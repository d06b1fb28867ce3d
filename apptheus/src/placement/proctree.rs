//! Process tree from /proc: the descendants a launcher has already forked when it connects.

use std::collections::HashMap;
use std::path::Path;

/// The live descendants of `root` (not `root` itself), parents before children, from the
/// kernel's own lists, `/proc/<pid>/task/<tid>/children` (CONFIG_PROC_CHILDREN): a read per
/// thread of each descendant, where the other ways cost a `stat` read (~10 µs) per candidate
/// process. `None` when this kernel has no such lists. A child forked during the walk may be
/// missed, as with any /proc scan; the caller repeats until a walk finds nothing new.
pub fn descendants_from_children_lists(root: i32) -> Option<Vec<i32>> {
    if !Path::new(&format!("/proc/{root}/task/{root}/children")).exists() {
        return None;
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        // A process that exited meanwhile has no task directory: it has no children to move.
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("children")) else { continue };
            for kid in crate::kernfs::child_pids(&text).flatten() {
                // The kernel's tree has no cycles, but a torn read must not loop forever.
                if kid > 0 && kid != root && !out.contains(&kid) {
                    out.push(kid);
                    queue.push(kid);
                }
            }
        }
    }
    Some(out)
}

/// All live descendants of `root` (not `root` itself), parents before children.
/// Processes that vanish during the scan are skipped.
pub fn descendants(root: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    tree_below(root, all.flatten().filter_map(|p| p.stat().ok()).map(|s| (s.pid, s.ppid)))
}

/// The descendants of `root` among `candidates` only: a launcher's descendants that have not
/// been moved yet are still in the launcher's original cgroup, so its `cgroup.procs` is a much
/// smaller place to look than all of /proc (which costs ~10 µs per process).
pub fn descendants_among(root: i32, candidates: &[i32]) -> Vec<i32> {
    let parents = candidates.iter().filter(|&&p| p != root).filter_map(|&pid| {
        let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
        Some((stat.pid, stat.ppid))
    });
    tree_below(root, parents)
}

fn tree_below(root: i32, parents: impl Iterator<Item = (i32, i32)>) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                // A pid cycle cannot happen in the kernel's tree, but a torn /proc read could fake one.
                if kid != root && !out.contains(&kid) {
                    out.push(kid);
                    queue.push(kid);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn children_lists_give_the_same_tree_as_a_full_scan() {
        // sh -> (sleep, sh -> sleep): a grandchild too.
        let mut child = Command::new("sh").args(["-c", "sleep 5 & sh -c 'sleep 5 & wait' & wait"]).spawn().unwrap();
        let pid = child.id() as i32;
        let mut scanned = Vec::new();
        for _ in 0..200 {
            scanned = descendants(pid);
            if scanned.len() >= 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut listed = descendants_from_children_lists(pid).expect("CONFIG_PROC_CHILDREN");
        for p in &scanned {
            let _ = Command::new("kill").arg(p.to_string()).status();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(scanned.len(), 3, "{scanned:?}");
        scanned.sort();
        listed.sort();
        assert_eq!(listed, scanned);
    }

    #[test]
    fn finds_children_and_grandchildren() {
        let mut child = Command::new("sh").args(["-c", "sleep 5 & sleep 5 & wait"]).spawn().unwrap();
        let pid = child.id() as i32;
        let mut found = Vec::new();
        for _ in 0..100 {
            found = descendants(std::process::id() as i32);
            if found.iter().filter(|&&p| p != pid).count() >= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let under_sh = descendants(pid);
        let mut among = under_sh.first().map(|&first| {
            let mut all = descendants_among(pid, &[under_sh[1..].to_vec(), vec![first, std::process::id() as i32]].concat());
            all.sort();
            (all, descendants_among(pid, &[first]))
        });
        child.kill().unwrap();
        child.wait().unwrap();
        for p in &under_sh {
            let _ = Command::new("kill").arg(p.to_string()).status();
        }
        assert!(found.contains(&pid));
        assert_eq!(under_sh.len(), 2, "{under_sh:?}");
        let (all, only_first) = among.take().unwrap();
        let mut expected = under_sh.clone();
        expected.sort();
        assert_eq!(all, expected, "among candidates: the descendants, not the test process");
        assert_eq!(only_first, vec![under_sh[0]]);

    }
}
