//! Command-line interface (clap derive); the doc comments are the `--help` text.

use clap::{Parser, Subcommand};
use redirector::{attach::Mode, rules::RedirectRule, source_filter::SourcePrefix};
use redirector_common::maps::DEFAULT_CONNTRACK_SIZE;

/// Kernel-level (eBPF) port redirector for WebSocket traffic.
///
/// Rewrites the destination port of new TCP flows (80→8080, 443→8443 by default) at
/// XDP ingress and the source port of their replies at TC egress, so servers listen
/// on 8080/8443 while clients only ever see 80/443.
#[derive(Debug, Parser)]
#[command(name = "redirector", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the redirector to interfaces and run in the foreground until SIGINT/SIGTERM.
    ///
    /// Example: redirector run --iface eth0 --redirect 80:8080 --redirect 443:8443
    Run(RunArgs),
}

/// Arguments of `redirector run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to attach to (repeatable). Default: the default-route interface.
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// Redirect new TCP flows to port FROM to port TO (repeatable).
    /// Default: 80:8080 and 443:8443.
    #[arg(long = "redirect", value_name = "FROM:TO")]
    pub redirects: Vec<RedirectRule>,

    /// Ingress hook: auto (native XDP, else generic XDP, else TC), xdp, xdp-generic, tc.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub mode: Mode,

    /// Only redirect flows from sources in this IPv4/IPv6 prefix (repeatable).
    /// Default: all sources.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<SourcePrefix>,

    /// Maximum number of tracked flows (LRU: the least recently used entry is evicted
    /// when full).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONNTRACK_SIZE)]
    pub conntrack_size: u32,
}
