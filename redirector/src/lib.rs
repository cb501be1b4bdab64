//! redirector: load, configure and attach the eBPF port redirector; read its state; or run
//! the user-space sniffing proxy (`sniff`, the `redirector-sniff` crate) that routes WebSocket
//! and HTTP to different backends.
//!
//! The `redirector` binary is a thin CLI over this library; the tests drive it directly
//! (e.g. `BPF_PROG_TEST_RUN` on the loaded programs).

pub mod config;
pub mod dataplane;
pub mod doctor;
pub mod instance;
pub mod kernel_truth;
pub mod observe;
pub mod packet_mark;
pub mod privdrop;
pub mod reaper;
pub mod rules;
pub mod source_filter;
