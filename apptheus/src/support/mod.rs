//! Small utilities every layer may use; they import nothing else of the crate.

pub mod duration;
pub mod faults;
pub mod heap;
pub mod logging;
pub mod owned_dir;
