//! Test support shared by the namespace tests, `cargo xtask` and the benchmark: network
//! namespaces, child processes, external commands, Ctrl-C handling and the machine-wide
//! lock that serializes everything loading redirector programs into the kernel.
//!
//! Everything that creates kernel or process state returns an RAII guard that removes
//! exactly what it created (by name or PID) when dropped, also on error or panic. Functions
//! meant for tests panic on failure; those meant for xtask and the benchmark return the
//! typed error of their module.

pub mod cgroup;
pub mod cmd;
pub mod interrupt;
pub mod lock;
pub mod netns;
pub mod process;

/// An error and its causes on one line, as anyhow's `{:#}` prints them.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
