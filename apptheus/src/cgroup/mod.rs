//! Everything about cgroups: the machine's layout, placing containers, sampling them.

mod constraints;
mod files;
mod layout;
mod placement;
mod sample;
mod stats;

pub use constraints::{dropped_by_move, Constraint};
pub use files::{set_open_file_budget, CgroupFiles, ContainerDescriptors, DESCRIPTORS};
pub use layout::{Hierarchy, Layout, Mode, Version};
pub use placement::{decide, prepare_parent, AttachError, ContainerCgroup, Decision, Placement, AGENT_LEAF, NESTED_MARK};
pub use sample::{CpuStats, DeviceIo, MemoryStats, PidStats, PressureStats, Sample, Timed};
pub use stats::{collectors_for, sample, CollectError, Collector, Sources};
