//! One reading of a container's cgroup: plain numbers in base units, `None` where this
//! kernel or hierarchy does not provide the figure (so it is omitted, never reported as 0).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::kernfs::{Limit, Pressure};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidStats,
    /// Processes (thread-group leaders) directly in the cgroup.
    pub processes: Option<u64>,
    pub io: Vec<DeviceIo>,
    pub pressure: PressureStats,
    /// Counters from the eBPF programs (cgroup v2 only, when they are loaded).
    #[serde(default)]
    pub ebpf: Option<crate::ebpf::EbpfCounters>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CpuStats {
    pub usage_ns: Option<u64>,
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    pub periods: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
    /// CFS bandwidth: CPU time allowed per period (v2 `cpu.max`, v1 `cpu.cfs_quota_us`).
    pub quota_us: Option<Limit>,
    pub period_us: Option<u64>,
    /// v1 `cpu.shares`, or v2 `cpu.weight` mapped to shares as cAdvisor does.
    pub shares: Option<u64>,
    /// CPUs in the effective cpuset (v2: of the nearest cgroup that has one).
    pub cpuset_cpus: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct MemoryStats {
    pub usage_bytes: Option<u64>,
    /// The highest usage recorded (v2 `memory.peak`, v1 `max_usage_in_bytes`).
    pub max_usage_bytes: Option<u64>,
    /// Usage minus inactive file pages: what the kernel cannot easily reclaim (cAdvisor's definition).
    pub working_set_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub cache_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub failcnt: Option<u64>,
    pub limit: Option<Limit>,
    pub swap_limit: Option<Limit>,
    /// Memory the container is guaranteed: v2 `memory.min`, v1 `memory.soft_limit_in_bytes`
    /// (cAdvisor's reservation).
    pub reservation: Option<Limit>,
    pub oom_kills: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PidStats {
    pub current: Option<u64>,
    pub limit: Option<Limit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIo {
    /// `/dev/sda` where sysfs names the device, else `MAJ:MIN`.
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PressureStats {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
}

/// A sample with the time it was taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timed {
    pub at: SystemTime,
    pub sample: Sample,
}
