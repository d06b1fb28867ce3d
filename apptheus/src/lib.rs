//! apptheus: per-container Prometheus metrics for Apptainer and any program a trusted launcher
//! starts. One module per concern:
//!
//! - [`cli`], [`duration`], [`logging`]: command line and log output
//! - [`trust`]: who is calling (SO_PEERCRED, pidfd, executable identity)
//! - [`gateway`]: the launcher socket and placement of callers
//! - [`cgroup`]: hierarchy layout, container cgroups, sampling per cgroup version
//! - [`kernfs`]: every kernel file format, parsed in one place each
//! - [`proctree`]: descendants of a launcher from /proc
//! - [`store`], [`exposition`], [`telemetry`]: the metric store, the container series written
//!   from it at each scrape, the agent's own series
//! - [`monitor`]: the per-container sampling task
//! - [`http`]: the metrics endpoint
//! - [`exec`]: our own launcher, `apptheus exec`
//! - [`service_manager`]: readiness and watchdog notifications to systemd
//! - [`agent`]: wiring and lifecycle of the daemon

pub mod agent;
pub mod cgroup;
pub mod cgroup_labels;
pub mod cli;
pub mod duration;
pub mod environ;
pub mod ebpf;
pub mod exec;
pub mod exposition;
pub mod faults;
pub mod gateway;
pub mod heap;
pub mod http;
pub mod kernfs;
pub mod logging;
pub mod monitor;
pub mod persistence;
pub mod proctree;
pub mod recovery;
pub mod service_manager;
pub mod store;
pub mod telemetry;
pub mod trust;
pub mod user_names;
