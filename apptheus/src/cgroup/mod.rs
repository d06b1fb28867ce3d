//! Everything about cgroups: the machine's layout, placing containers, sampling them.

mod files;
mod layout;
mod placement;
mod sample;
mod stats;

pub use files::{set_open_file_budget, CgroupFiles, ContainerDescriptors, DESCRIPTORS};
pub use layout::{Hierarchy, Layout, Mode, Version};
pub use placement::{prepare_parent, AttachError, ContainerCgroup, AGENT_LEAF};
pub use sample::{CpuStats, DeviceIo, MemoryStats, PidStats, PressureStats, Sample, Timed};
pub use stats::{collectors_for, sample, CollectError, Collector};
