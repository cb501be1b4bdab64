//! redirector: load, configure and attach the eBPF port redirector; read its state; or run
//! the user-space sniffing proxy (`sniff`) that routes WebSocket and HTTP to different backends.
//!
//! The `redirector` binary is a thin CLI over this library; the tests drive it directly
//! (e.g. `BPF_PROG_TEST_RUN` on the loaded programs).

pub mod attach;
pub mod batch;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod flow_tables;
pub mod iface;
pub mod instance;
pub mod maps;
pub mod metrics;
pub mod metrics_http;
pub mod pin;
pub mod privileges;
pub mod reaper;
pub mod rules;
pub mod sniff;
pub mod source_filter;
pub mod state;
pub mod stats;
