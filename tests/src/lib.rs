//! Test support for redirector: network namespaces, child processes, packet builders.
//!
//! Everything that creates kernel or process state returns an RAII guard that removes
//! exactly what it created (by name or PID) when dropped, also when a test panics.

pub mod bins;
pub mod fixtures;
pub mod netns;
pub mod packets;
pub mod process;
