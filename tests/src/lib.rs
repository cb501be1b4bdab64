//! Test support for redirector: the binaries under test, the fixtures of the namespace
//! suites, packet builders. Generic support (network namespaces, child processes, the
//! machine-wide test lock) is in the `testkit` crate.
//!
//! Everything that creates kernel or process state returns an RAII guard that removes
//! exactly what it created (by name or PID) when dropped, also when a test panics.

pub mod bins;
pub mod container;
pub mod fixtures;
pub mod format2;
pub mod packets;
pub mod privileges;
pub mod raw;
pub mod releases;
pub mod sandbox;
pub mod unit;
pub mod ws;
