//! Cgroups as the kernel has them: the machine's layout, container cgroups (create, attach,
//! remove), and sampling them per cgroup version. Where a container goes is decided by
//! the placement module.

mod container;
mod files;
mod layout;
mod sample;
mod stats;

pub use container::{prepare_parent, AttachError, ContainerCgroup, AGENT_LEAF, NESTED_MARK};
pub use files::{set_open_file_budget, CgroupFiles, ContainerDescriptors, DESCRIPTORS};
pub use layout::{Hierarchy, Layout, Mode, Version, V2_CONTROLLERS};
pub use sample::{CpuStats, DeviceIo, MemoryStats, PidStats, PressureStats, Sample, Timed};
pub use stats::{collectors_for, sample, CollectError, Collector, Sources};
