//! Command-line interface (clap derive); the doc comments are the `--help` text.

use clap::{Parser, Subcommand};
use redirector::{attach::Mode, rules::RedirectRule, source_filter::SourcePrefix};

/// Kernel-level (eBPF) port redirector for WebSocket traffic.
///
/// Rewrites the destination port of new TCP flows (80→8080, 443→8443 by default) at
/// XDP ingress and the source port of their replies at TC egress, so servers listen
/// on 8080/8443 while clients only ever see 80/443.
///
/// `run` is the loader; every other command talks to the loader running in the same
/// network namespace (through its pinned maps), e.g. `ip netns exec NS redirector status`.
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
    /// Show the running instance: interfaces, hook mode, rules, conntrack fill.
    ///
    /// Example: redirector status --json
    Status(ReadArgs),
    /// Show per-rule and global counters.
    ///
    /// Example: redirector stats --json
    ///
    /// Example: redirector stats --watch 2
    Stats(StatsArgs),
    /// List tracked flows: client, ports, TCP state, age.
    ///
    /// Example: redirector flows --port 443 --json
    Flows(FlowsArgs),
    /// Redirect new connections to PORT again (after `disable`).
    ///
    /// Example: redirector enable 443
    Enable(PortArgs),
    /// Stop redirecting new connections to PORT; established ones keep working.
    ///
    /// Example: redirector disable 443
    Disable(PortArgs),
    /// Add a rule at runtime: new connections to FROM go to TO.
    ///
    /// Example: redirector add 8000:8080
    Add(AddArgs),
    /// Remove the rule on FROM; its established connections keep working.
    ///
    /// Example: redirector remove 8000
    Remove(PortArgs),
    /// Forget tracked flows (their connections break: packets are no longer rewritten).
    ///
    /// Example: redirector flush --port 80
    Flush(FlushArgs),
}

/// Arguments of `redirector run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Read settings from a TOML file (same keys as these flags, see
    /// dist/redirector.toml); flags given here override it.
    ///
    /// Example: --config /etc/redirector/redirector.toml
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Interface to attach to (repeatable). Default: the default-route interface.
    /// The first one names the instance (`--iface` of the other commands accepts any).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// Redirect new TCP flows to port FROM to port TO (repeatable).
    /// Default: 80:8080 and 443:8443.
    #[arg(long = "redirect", value_name = "FROM:TO")]
    pub redirects: Vec<RedirectRule>,

    /// Ingress hook: auto (native XDP, else generic XDP, else TC), xdp, xdp-generic, tc
    /// [default: auto].
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,

    /// Only redirect flows from sources in this IPv4/IPv6 prefix (repeatable).
    /// Default: all sources.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<SourcePrefix>,

    /// Maximum number of tracked flows (LRU: the least recently used entry is evicted
    /// when full) [default: 65536].
    #[arg(long, value_name = "N")]
    pub conntrack_size: Option<u32>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default). Port 0 picks a
    /// free port; the `redirector ready` line shows the address in use.
    ///
    /// Example: --metrics 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Forget an established flow idle for SECS seconds [default: 432000, 5 days].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_established: Option<u64>,

    /// Forget a flow SECS seconds after FIN was seen in both directions [default: 10].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_closing: Option<u64>,

    /// Forget a flow idle for SECS seconds after FIN in one direction [default: 120].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_fin_wait: Option<u64>,

    /// Forget a flow whose handshake has not completed after SECS seconds [default: 60].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_handshake: Option<u64>,
}

/// Which running instance to talk to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The instance attached to IFACE. Needed only when several run in this network
    /// namespace.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
}

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Print JSON (field names are stable; see docs/CONTROL.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON (field names are stable; see docs/CONTROL.md). With --watch, one
    /// compact JSON document per line.
    #[arg(long)]
    pub json: bool,
    /// Print the counters again every SECS seconds until interrupted (Ctrl-C); stops
    /// with an error when the loader goes away.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub watch: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `flows`.
#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Only flows to this FROM port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Print JSON (field names are stable; see docs/CONTROL.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `enable`, `disable` and `remove`.
#[derive(Debug, clap::Args)]
pub struct PortArgs {
    /// The rule's FROM port.
    #[arg(value_name = "PORT")]
    pub port: u16,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The new rule.
    #[arg(value_name = "FROM:TO")]
    pub rule: RedirectRule,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `flush`.
#[derive(Debug, clap::Args)]
pub struct FlushArgs {
    /// Only flows to this FROM port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    #[command(flatten)]
    pub target: Target,
}
