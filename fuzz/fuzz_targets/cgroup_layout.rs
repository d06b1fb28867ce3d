//! `cgroup::Layout::from_proc`: the agent's view of the cgroup hierarchies from the text of
//! /proc/self/mountinfo and /proc/self/cgroup (parsed with the `procfs` crate) and the
//! `--cgroup.parent` flag. Input: the three texts separated by NUL bytes.
#![no_main]
use apptheus::cgroup::Layout;
use apptheus_fuzz::text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let mountinfo = text(parts.next().unwrap_or_default());
    let self_cgroup = text(parts.next().unwrap_or_default());
    let parent = text(parts.next().unwrap_or_default());
    if let Ok(layout) = Layout::from_proc(&mountinfo, &self_cgroup, &parent) {
        assert!(!layout.hierarchies.is_empty());
    }
});
