//! apptheus: per-container Prometheus metrics for Apptainer and any program a trusted launcher
//! starts. One module per concern; data flows down this list, never back up:
//!
//! - [`cli`]: the command line; [`exec`]: our own launcher, `apptheus exec`
//! - [`daemon`]: start-up, wiring (each part gets the narrow handle it needs), shutdown, systemd
//! - [`launcher`]: the launcher socket and trust (accepting, verifying, answering)
//! - [`placement`]: where a container's cgroup goes, moving the launcher in, who it is
//! - [`sampler`]: one thread sampling every container's cgroup
//! - [`http`]: the metrics endpoint (TLS, auth, limits, routes)
//! - [`scrape`]: the container series and the agent's own registry, encoded for a scrape
//! - [`store`]: every container and its latest sample; the persistence file
//! - [`ebpf`]: the eBPF programs, their maps and per-container counting
//! - [`cgroup`]: hierarchy layout, container cgroups, sampling per cgroup version
//! - [`kernfs`]: every kernel file format, parsed in one place each
//! - [`support`]: durations, logging, heap tuning, fault points for tests

pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod ebpf;
pub mod exec;
pub mod http;
pub mod kernfs;
pub mod launcher;
pub mod placement;
pub mod sampler;
pub mod scrape;
pub mod store;
pub mod support;

/// The rule of the layout: a module uses only modules below it in [`LAYERS`] (lowest first), so
/// data flows one way and no import runs back up. A new module takes its place here.
#[cfg(test)]
const LAYERS: &[&str] =
    &["support", "kernfs", "ebpf", "cgroup", "store", "scrape", "placement", "sampler", "launcher", "http", "cli", "exec", "daemon"];

#[cfg(test)]
mod layering {
    use super::LAYERS;

    fn layer(module: &str) -> usize {
        LAYERS.iter().position(|m| *m == module).unwrap_or_else(|| panic!("module {module} is not in LAYERS (lib.rs)"))
    }

    /// Every `crate::<module>` a file names outside its inline tests (doc links included: they
    /// show where a reader is sent), as (file, module).
    fn uses() -> Vec<(String, String)> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut out = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let rel = path.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or_default();
                for (i, _) in code.match_indices("crate::") {
                    let name: String = code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    out.push((rel.clone(), name));
                }
            }
        }
        out
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let mut wrong = Vec::new();
        for (file, used) in uses() {
            let own = file.split(['/', '.']).next().unwrap_or_default();
            if matches!(own, "lib" | "main") || used == own {
                continue;
            }
            if layer(&used) > layer(own) {
                wrong.push(format!("{file} uses crate::{used}, which is above {own}"));
            }
        }
        assert!(wrong.is_empty(), "imports that run back up (see LAYERS in lib.rs):\n{}", wrong.join("\n"));
    }

    #[test]
    fn every_module_has_a_layer() {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
        let declared: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';')).collect();
        assert_eq!(declared.len(), LAYERS.len(), "{declared:?}");
        for m in declared {
            layer(m);
        }
    }
}
