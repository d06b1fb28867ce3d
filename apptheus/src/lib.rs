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
