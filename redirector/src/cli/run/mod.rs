//! `redirector run`: its arguments, and the loader in four steps — [`prepare`] (check and
//! claim), [`start`] (load, attach, pin, announce — or adopt a persisted instance, [`migrate`]
//! one of the previous state format), [`serve`] (until a signal), [`stop`]
//! (unpin, detach, report). With `--sniff-listen`, the sniffing proxy of `redirector sniff`
//! runs in an unprivileged child process ([`proxy_child`], [`proxy_main`]), its counters
//! copied back to the loader for `/metrics`, `redirector stats` and the final report.

mod local;
mod migrate;
mod prepare;
mod proxy_child;
mod proxy_main;
mod reload;
mod serve;
mod start;
mod stop;

use std::{net::SocketAddr, path::PathBuf};

use redirector::{
    config::{sniff::SniffSettings, LocalSetting, RunSettings, TimeoutSettings},
    dataplane::attach::Mode,
    packet_mark::PacketMark,
    rules::RedirectRule,
    source_filter::SourcePrefix,
};

use super::SniffOptions;
use prepare::Prepared;

/// Arguments of `redirector run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Read settings from a TOML file (same keys as these flags, see
    /// dist/redirector.toml); flags given here override it.
    ///
    /// Example: --config /etc/redirector/redirector.toml
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Interface to attach to (repeatable). Default: the default-route interface.
    /// The first one names the instance (`--iface` of the other commands accepts any).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// Redirect new TCP flows to port FROM to port TO (repeatable).
    /// Default: 80:8080 and 443:8443.
    #[arg(long = "redirect", value_name = "FROM:TO")]
    pub redirects: Vec<RedirectRule>,

    /// Load the rule on FROM port PORT disabled (repeatable): new connections to it are
    /// not redirected until `redirector enable PORT` (or a reload without it).
    ///
    /// Example: --disable 443
    #[arg(long = "disable", value_name = "PORT")]
    pub disabled: Vec<u16>,

    /// How to redirect: socket (steer each new connection to the TO port's listener at
    /// socket lookup; no packet rewritten, no flow state; the servers must listen in this
    /// network namespace, and the loader needs CAP_SYS_PTRACE to take their listening
    /// sockets), or the packet rewrite at an ingress hook: xdp, xdp-generic, tc. auto takes
    /// socket where every TO port has a listener here, no NAT rule applies to it and the
    /// loader may take its sockets; else TC on a veth (whose peer would lose TSO under XDP),
    /// elsewhere native XDP, else generic XDP, else TC [default: auto].
    #[arg(long, value_name = "MODE", value_parser = Mode::parse)]
    pub mode: Option<Mode>,

    /// Only redirect flows from sources in this IPv4/IPv6 prefix (repeatable).
    /// Default: all sources.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<SourcePrefix>,

    /// Established flows held at most; they are never evicted. When full, new connections
    /// are not redirected (counted as pass_table_full) until one closes. Handshakes wait
    /// in a separate table of min(N, 65536) that evicts only other handshakes. Entries are
    /// allocated on demand [default: 1048576].
    #[arg(long, value_name = "N")]
    pub conntrack_size: Option<u32>,

    /// Set these bits of the packet mark on every redirected inbound packet, so a host
    /// firewall can accept exactly those (`meta mark & MASK == VALUE`) while INPUT sees
    /// their new port and direct connections to it stay closed. VALUE and MASK are decimal
    /// or 0x-hex; MASK defaults to all bits. The mark lives in the skb, so this takes the
    /// TC ingress hook (auto picks it; an explicit XDP mode is refused).
    ///
    /// Example: --mark 0x42/0xff
    #[arg(long, value_name = "VALUE[/MASK]")]
    pub mark: Option<PacketMark>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default). Port 0 picks a
    /// free port; the `redirector ready` line shows the address in use.
    ///
    /// Example: --metrics 127.0.0.1:9464
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Forget an established flow (also one with a FIN one way) idle for SECS seconds,
    /// where the kernel cannot judge it: a flow routed on without conntrack. A flow whose
    /// connection the kernel holds (socket, or conntrack entry) stays however long it idles.
    /// [default: 432000, 5 days]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_established: Option<u64>,

    /// Forget a flow SECS seconds after its connection closed (socket or conntrack entry in
    /// TIME_WAIT/CLOSE; where the kernel cannot judge, FIN seen in both directions)
    /// [default: 10].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_closing: Option<u64>,

    /// No longer used, accepted for compatibility: a FIN in one direction (which a blind
    /// sender can forge) leaves --timeout-established in force [default: 120].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_fin_wait: Option<u64>,

    /// Forget a flow whose handshake has not completed after SECS seconds, where the kernel
    /// cannot judge it (no socket or conntrack entry to ask) [default: 60].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_handshake: Option<u64>,

    /// Redirect local clients too: processes of this cgroup (v2 directory, descendants
    /// included) in the loader's network namespace connecting to one of the namespace's
    /// own addresses (127.0.0.1 and ::1 included) on a FROM port are connected to TO at
    /// connect time, and getpeername still shows FROM. Such traffic never crosses the
    /// interface hooks. [default: the cgroup v2 mount — /sys/fs/cgroup, or
    /// /sys/fs/cgroup/unified on hybrid hosts — i.e. every process; none mounted (`ip
    /// netns exec`): off, with a warning]
    ///
    /// Example: --local-cgroup /sys/fs/cgroup/system.slice
    #[arg(long, value_name = "PATH", conflicts_with = "no_local")]
    pub local_cgroup: Option<PathBuf>,

    /// Do not redirect local clients (no cgroup programs are attached).
    #[arg(long)]
    pub no_local: bool,

    /// Leave the programs attached when the loader exits (links and maps pinned in the
    /// initial mount namespace's bpffs); `redirector detach` removes them. While no loader
    /// runs, no reaper does: closed flows stay tracked until `flush` or a new loader.
    #[arg(long)]
    pub persist: bool,

    #[command(flatten)]
    pub sniff: RunSniffArgs,
}

/// The sniffing proxy run inside `redirector run`: its addresses, then every option of
/// `redirector sniff` under a `--sniff-` prefix (see [`command`]).
#[derive(Debug, clap::Args)]
pub struct RunSniffArgs {
    /// Also run the sniffing proxy of `redirector sniff`, accepting on ADDR:PORT: the
    /// loader binds it, the proxy serves it in a child process as --sniff-user (default
    /// nobody) with no capabilities; it stops with the redirector and its counters follow
    /// the redirector's.
    /// Every option of `redirector sniff` is available with a `--sniff-` prefix
    /// (`--sniff-max-conns`, `--sniff-header-timeout`, `--sniff-tls-listen`, …).
    #[arg(long, value_name = "ADDR:PORT")]
    pub sniff_listen: Option<SocketAddr>,

    /// Backend of sniffed WebSocket upgrades (`--websocket` of `redirector sniff`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub sniff_websocket: Option<SocketAddr>,

    /// Backend of other sniffed HTTP (`--http` of `redirector sniff`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub sniff_http: Option<SocketAddr>,

    #[command(flatten)]
    pub options: SniffOptions,
}

/// The flags as settings ("not given" kept apart from defaults).
fn flag_settings(args: RunArgs) -> RunSettings {
    let sniff = SniffSettings {
        listen: args.sniff.sniff_listen,
        websocket: args.sniff.sniff_websocket,
        http: args.sniff.sniff_http,
        ..args.sniff.options.settings()
    };
    RunSettings {
        ifaces: args.ifaces,
        redirects: args.redirects,
        disabled: args.disabled,
        mode: args.mode,
        allow: args.allow,
        conntrack_size: args.conntrack_size,
        metrics: args.metrics,
        mark: args.mark,
        local: match (args.no_local, args.local_cgroup) {
            (true, _) => Some(LocalSetting::Off),
            (false, Some(path)) => Some(LocalSetting::Cgroup(path)),
            (false, None) => None,
        },
        timeouts: TimeoutSettings {
            established: args.timeout_established,
            closing: args.timeout_closing,
            fin_wait: args.timeout_fin_wait,
            handshake: args.timeout_handshake,
        },
        persist: args.persist.then_some(true),
        sniff,
    }
}

/// The `flags` merged over the file at `config` (if given), checked.
fn settings(flags: &RunSettings, config: Option<&std::path::Path>) -> anyhow::Result<RunSettings> {
    let settings = match config {
        Some(path) => flags.clone().or(RunSettings::load(path)?),
        None => flags.clone(),
    };
    settings.check_rules()?;
    settings.sniff.validate("sniff-")?;
    Ok(settings)
}

/// Runs the loader in the foreground.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.config.clone();
    let flags = flag_settings(args);
    let settings = settings(&flags, config.as_deref())?;
    let reloader = reload::Reloader::new(config, flags, settings.clone());
    let sniff = settings.sniff.config();
    // The loader re-executes itself, same arguments (so same file), as the proxy's child.
    if let Ok(spec) = std::env::var(proxy_child::CHILD_ENV) {
        let sniff =
            sniff.ok_or_else(|| anyhow::anyhow!("proxy child started without --sniff-listen"))?;
        return proxy_main::serve_inherited(&spec, sniff, &settings.sniff);
    }
    if sniff.is_some() {
        // The proxy's user and group are refused now, before anything is bound.
        redirector::privdrop::Identity::resolve(
            settings.sniff.user(),
            settings.sniff.group.as_deref(),
        )?;
    }
    let persist = settings.persist();
    let report = Prepared::new(settings, sniff, persist)?
        .start()?
        .serve(reloader)?
        .stop()?;
    print!("{report}");
    if report.sniff_died() {
        // A supervisor (systemd's Restart=on-failure) starts the loader, and the proxy, again.
        anyhow::bail!("the sniffing proxy's process exited unexpectedly");
    }
    Ok(())
}

#[cfg(test)]
mod flag_keys;
