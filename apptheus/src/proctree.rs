//! Process tree from /proc: the descendants a launcher has already forked when it connects.

use std::collections::HashMap;

/// All live descendants of `root` (not `root` itself), parents before children.
/// Processes that vanish during the scan are skipped.
pub fn descendants(root: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in all.flatten() {
        if let Ok(stat) = p.stat() {
            children.entry(stat.ppid).or_default().push(stat.pid);
        }
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
        child.kill().unwrap();
        child.wait().unwrap();
        for p in &under_sh {
            let _ = Command::new("kill").arg(p.to_string()).status();
        }
        assert!(found.contains(&pid));
        assert_eq!(under_sh.len(), 2, "{under_sh:?}");
    }
}
