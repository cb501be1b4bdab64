//! The `redirector` command line: one module per verb, each holding its clap arguments
//! (whose doc comments are the `--help` text) and its handler; this one holds the verbs
//! themselves and [`dispatch`]es to them.

mod detach;
mod doctor;
mod flows;
mod flush;
pub mod generate;
mod rules;
mod run;
mod sniff;
mod sources;
mod stats;
mod status;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use redirector::config::sniff::{
    parse_ws_path, SniffSettings, CONNECT_TIMEOUT_RANGE, HEADER_TIMEOUT_RANGE, MAX_CONNS_RANGE,
    MAX_HEADER_BYTES_RANGE,
};

use doctor::DoctorArgs;
use flows::FlowsArgs;
use flush::FlushArgs;
use redirector_sniff::{
    proxy_protocol::ProxyProtocol, server::NotHttpPolicy, sni::SniPattern, splice::RelayMode,
};
use rules::{AddArgs, PortArgs};
use run::RunArgs;
use sniff::SniffArgs;
use sources::SourceArgs;
use stats::StatsArgs;
use status::ReadArgs;

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
    ///
    /// With --sniff-listen it also runs the sniffing proxy of `redirector sniff`, e.g. TLS
    /// moved in the kernel and WebSocket and HTTP on port 80 told apart in user space:
    ///
    /// Example: redirector run --redirect 443:8443 --sniff-listen 0.0.0.0:80 --sniff-websocket 127.0.0.1:8080 --sniff-http 127.0.0.1:8000
    Run(Box<RunArgs>),
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
    /// Forget tracked flows; a connection the kernel still holds gets its entry back at its
    /// next packet (a heal), so this clears state without ending connections.
    ///
    /// Example: redirector flush --port 80
    Flush(FlushArgs),
    /// Redirect new connections from CIDR too (the source filter of `--allow`).
    ///
    /// On an instance without a filter this turns it on: from then on only listed
    /// prefixes are redirected.
    ///
    /// Example: redirector allow 10.0.0.0/8
    Allow(SourceArgs),
    /// Stop redirecting new connections from CIDR; established ones keep working.
    ///
    /// CIDR must be given as `status` lists it. Removing the last prefix allows no source
    /// (not every source).
    ///
    /// Example: redirector disallow 10.0.0.0/8
    Disallow(SourceArgs),
    /// Remove what `run --persist` left attached (after its loader exited).
    ///
    /// Unpins its links, which detaches the programs, and its maps. In a network namespace
    /// run it with `nsenter --net=/run/netns/NS` (see docs/CONTROL.md). With --stale,
    /// removes instead the pins of network namespaces that no longer exist.
    ///
    /// Example: redirector detach --iface eth0
    Detach(detach::DetachArgs),
    /// Check this host for what would break redirected connections, one line per finding
    /// with its fix: a TO port nobody listens on, a firewall that drops redirected
    /// packets, a conntrack size below the open connections, the ingress hook and why, tx
    /// checksum offload on a veth, bpffs for --persist, a foreign XDP or tcx program, an
    /// interface without the programs, pins of a namespace that is gone.
    ///
    /// Read-only; works with or without a running instance (whose settings are the
    /// defaults). Exit status 1 if a check fails (FAIL), else 0 (warnings included).
    ///
    /// Example: redirector doctor
    ///
    /// Example: ip netns exec srv redirector doctor --iface veth-s --mark 0x42/0xff --json
    Doctor(DoctorArgs),

    /// Proxy one TCP port to a WebSocket and an HTTP backend, by sniffing each connection.
    ///
    /// A user-space TCP proxy that runs in the foreground until SIGINT/SIGTERM.
    /// A connection is WebSocket if its first request is an HTTP/1.1 GET with
    /// `Upgrade: websocket` and `Connection: upgrade` (any case, any order, token lists
    /// allowed), on one of the --ws-path prefixes if given. The bytes read are replayed
    /// to the backend, then both directions are relayed untouched. Prints
    /// `redirector sniff ready: listening on ADDR` once bound and `sniff counter NAME=VALUE`
    /// lines on exit. Needs no privileges. With --tls-listen, TLS clients are also
    /// accepted and routed by the server name of their ClientHello, without decrypting.
    ///
    /// Example: redirector sniff --listen 0.0.0.0:80 --websocket 127.0.0.1:8080 --http 127.0.0.1:8000 --ws-path /ws/
    Sniff(Box<SniffArgs>),
}

/// Which running instance to talk to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The instance attached to IFACE. Needed only when several run in this network
    /// namespace.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
}

/// The options of the sniffing proxy, shared by `redirector sniff` (as written here) and
/// `redirector run` (with a `--sniff-` prefix: [`command`] renames them). None has a clap
/// default: "not given" must stay apart from the default so that under `run` the config
/// file's `[sniff]` table can fill it ([`SniffSettings`] applies the defaults).
#[derive(Debug, clap::Args)]
pub struct SniffOptions {
    /// After binding, run as this unprivileged user, with no capabilities and
    /// `no_new_privs` (only when started as root; otherwise the user is kept and only the
    /// capabilities are dropped). Refused if the user does not exist [default: nobody].
    ///
    /// Example: --user redirector-sniff (under `run`: --sniff-user)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Group to run as after binding. Default: the user's primary group (`nogroup` for
    /// `nobody` on Debian).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Only upgrades whose path starts with PREFIX count as WebSocket (repeatable);
    /// others go to the HTTP backend. Default: any path.
    #[arg(long = "ws-path", value_name = "PREFIX", value_parser = parse_ws_path)]
    pub ws_paths: Vec<String>,

    /// Most connections open at once; further ones are closed on accept and counted.
    /// Default: what the hard open-file limit allows, as HAProxy derives maxconn (2.5
    /// descriptors a connection after a reserve of 64, at most 1,000,000); the soft limit
    /// is raised to match.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(MAX_CONNS_RANGE))]
    pub max_conns: Option<u32>,

    /// Most connections open at once from one client address (IPv4: the address; IPv6:
    /// its /64 prefix); further ones are closed on accept and counted. Default: no limit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(MAX_CONNS_RANGE))]
    pub max_conns_per_ip: Option<u32>,

    /// Seconds a client has, from accept, to send its complete request head [default: 10].
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(HEADER_TIMEOUT_RANGE))]
    pub header_timeout: Option<u64>,

    /// Close relays that moved no byte in either direction for SECS; 0 never closes them
    /// [default: 300].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Seconds allowed to connect to a backend [default: 5].
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(CONNECT_TIMEOUT_RANGE))]
    pub connect_timeout: Option<u64>,

    /// Largest request head read before deciding, in bytes; larger heads are closed
    /// [default: 16384].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(MAX_HEADER_BYTES_RANGE))]
    pub max_header_bytes: Option<u32>,

    /// What to do with connections that do not start with HTTP/1.x (TLS, HTTP/2 prior
    /// knowledge, other protocols): close, or relay them to the HTTP backend
    /// [default: close].
    #[arg(long, value_name = "close|http")]
    pub not_http: Option<NotHttpPolicy>,

    /// Also accept TLS clients on ADDR:PORT and route them, without decrypting, by the
    /// server name (SNI) of their ClientHello: names matching the ws-sni patterns go to
    /// the tls-websocket backend, all others (and clients sending no name) to tls-http.
    #[arg(long, value_name = "ADDR:PORT")]
    pub tls_listen: Option<SocketAddr>,

    /// Backend of TLS connections whose server name matches a ws-sni pattern.
    #[arg(long, value_name = "ADDR:PORT")]
    pub tls_websocket: Option<SocketAddr>,

    /// Backend of all other TLS connections.
    #[arg(long, value_name = "ADDR:PORT")]
    pub tls_http: Option<SocketAddr>,

    /// Server name routed to the tls-websocket backend: a host name, or *.DOMAIN for every
    /// name under DOMAIN (repeatable; case-insensitive).
    #[arg(long = "ws-sni", value_name = "PATTERN")]
    pub ws_sni: Vec<SniPattern>,

    /// Send a PROXY protocol header (v1: text, v2: binary) to every backend before the
    /// client's bytes, so backends learn the client address. Default: none.
    #[arg(long, value_name = "v1|v2")]
    pub proxy_protocol: Option<ProxyProtocol>,

    /// How bytes are relayed once the backend is chosen: splice (zero-copy splice(2)
    /// through a pipe per direction), copy (user-space buffers), or auto (copy small
    /// messages, splice while 16 KiB or more arrive at a time) [default: auto].
    #[arg(long, value_name = "auto|splice|copy")]
    pub relay: Option<RelayMode>,
}

impl SniffOptions {
    /// These options as settings, without the addresses (`listen` and the backends).
    pub fn settings(&self) -> SniffSettings {
        SniffSettings {
            user: self.user.clone(),
            group: self.group.clone(),
            ws_paths: self.ws_paths.clone(),
            max_conns: self.max_conns,
            max_conns_per_ip: self.max_conns_per_ip,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            connect_timeout: self.connect_timeout,
            max_header_bytes: self.max_header_bytes,
            not_http: self.not_http,
            tls_listen: self.tls_listen,
            tls_websocket: self.tls_websocket,
            tls_http: self.tls_http,
            ws_sni: self.ws_sni.clone(),
            proxy_protocol: self.proxy_protocol,
            relay: self.relay,
            ..SniffSettings::default()
        }
    }
}

/// Names `redirector run` accepted for sniff options before they all took the `--sniff-`
/// prefix; still accepted (hidden).
const RUN_SNIFF_LEGACY_NAMES: &[(&str, &str)] = &[("ws_paths", "ws-path")];

/// What the TLS options of [`SniffOptions`] need on the command line of `redirector sniff`
/// (argument id, the ids it requires). Under `run` the same is checked once the config file
/// is merged ([`SniffSettings::validate`]), since the file may give the other half.
const SNIFF_TLS_REQUIRES: &[(&str, &[&str])] = &[
    ("tls_listen", &["tls_websocket", "tls_http"]),
    ("tls_websocket", &["tls_listen"]),
    ("tls_http", &["tls_listen"]),
    ("ws_sni", &["tls_listen"]),
];

/// The command line, with the options of [`SniffOptions`] renamed `--sniff-NAME` under
/// `run` (clap derives one name per field; the prefix is applied here, so both commands
/// share one definition).
pub fn command() -> clap::Command {
    use clap::{Args as _, CommandFactory as _};
    let sniff_ids: Vec<String> = SniffOptions::augment_args(clap::Command::new("options"))
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect();
    Cli::command()
        .mut_subcommand("run", |mut run| {
            for id in &sniff_ids {
                run = run.mut_arg(id, |arg| {
                    let long = arg.get_long().unwrap_or(id).to_string();
                    let mut arg = arg.long(format!("sniff-{long}"));
                    if let Some((_, old)) = RUN_SNIFF_LEGACY_NAMES.iter().find(|(i, _)| i == id) {
                        arg = arg.alias(*old);
                    }
                    arg
                });
            }
            run
        })
        .mut_subcommand("sniff", |mut sniff| {
            for (id, needs) in SNIFF_TLS_REQUIRES {
                sniff = sniff.mut_arg(*id, |mut arg| {
                    for need in *needs {
                        arg = arg.requires(*need);
                    }
                    arg
                });
            }
            sniff
        })
}

/// Runs the handler of `command`.
pub fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => run::run(*args),
        Command::Status(args) => status::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Flows(args) => flows::run(args),
        Command::Enable(args) => rules::enable(args),
        Command::Disable(args) => rules::disable(args),
        Command::Add(args) => rules::add(args),
        Command::Remove(args) => rules::remove(args),
        Command::Flush(args) => flush::run(args),
        Command::Allow(args) => sources::allow(args),
        Command::Disallow(args) => sources::disallow(args),
        Command::Detach(args) => detach::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Sniff(args) => sniff::sniff(*args),
    }
}

/// Parses the process's command line with [`command`]; exits with clap's message on error.
pub fn parse() -> Cli {
    use clap::FromArgMatches as _;
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use clap::FromArgMatches as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = command()
            .try_get_matches_from(std::iter::once("redirector").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&matches)
    }

    const RUN: &[&str] = &[
        "run",
        "--sniff-listen",
        "127.0.0.1:80",
        "--sniff-websocket",
        "127.0.0.1:8080",
        "--sniff-http",
        "127.0.0.1:8000",
    ];

    #[test]
    fn command_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn run_takes_every_sniff_option_with_the_prefix() {
        let mut args = RUN.to_vec();
        args.extend([
            "--sniff-max-conns",
            "7",
            "--sniff-max-conns-per-ip",
            "3",
            "--sniff-header-timeout",
            "2",
            "--sniff-idle-timeout",
            "0",
            "--sniff-not-http",
            "http",
            "--sniff-proxy-protocol",
            "v2",
            "--ws-path",
            "/old/",
            "--sniff-ws-path",
            "/new/",
            "--sniff-tls-listen",
            "127.0.0.1:443",
            "--sniff-tls-websocket",
            "127.0.0.1:8443",
            "--sniff-tls-http",
            "127.0.0.1:9443",
            "--sniff-ws-sni",
            "ws.example.com",
            "--sniff-relay",
            "copy",
        ]);
        let Command::Run(run) = parse(&args).unwrap().command else {
            panic!("not run")
        };
        let o = &run.sniff.options;
        assert_eq!(o.max_conns, Some(7));
        assert_eq!(o.max_conns_per_ip, Some(3));
        assert_eq!(o.header_timeout, Some(2));
        assert_eq!(o.idle_timeout, Some(0));
        assert_eq!(o.not_http, Some(NotHttpPolicy::Http));
        assert_eq!(o.proxy_protocol, Some(ProxyProtocol::V2));
        assert_eq!(o.ws_paths, ["/old/", "/new/"]);
        assert!(o.tls_listen.is_some() && o.tls_http.is_some() && o.ws_sni.len() == 1);
        assert_eq!(o.relay, Some(RelayMode::Copy));
    }

    #[test]
    fn run_leaves_unset_sniff_options_unset_and_refuses_unprefixed_ones() {
        let Command::Run(run) = parse(RUN).unwrap().command else {
            panic!("not run")
        };
        // Unset, so that the config file can fill them; the defaults come last.
        assert_eq!(run.sniff.options.max_conns, None);
        assert_eq!(run.sniff.options.header_timeout, None);
        assert!(parse(&["run"]).is_ok());
        let mut unprefixed = RUN.to_vec();
        unprefixed.extend(["--max-conns", "7"]);
        assert!(parse(&unprefixed).is_err(), "run has no --max-conns");
        // An orphan option parses: the file may hold `[sniff] listen`; the merged
        // settings are checked in `run` (SniffSettings::validate).
        assert!(parse(&["run", "--sniff-max-conns", "7"]).is_ok());
    }

    #[test]
    fn sniff_keeps_its_tls_requirements_on_the_command_line() {
        let base = [
            "sniff",
            "--listen",
            "127.0.0.1:80",
            "--websocket",
            "127.0.0.1:8080",
            "--http",
            "127.0.0.1:8000",
        ];
        let mut tls = base.to_vec();
        tls.extend([
            "--tls-listen",
            "127.0.0.1:443",
            "--tls-http",
            "127.0.0.1:9443",
        ]);
        let err = parse(&tls).unwrap_err();
        assert!(err.to_string().contains("--tls-websocket"), "{err}");
        let mut sni = base.to_vec();
        sni.extend(["--ws-sni", "ws.example.com"]);
        assert!(parse(&sni).is_err());
    }

    #[test]
    fn help_defaults_are_the_defaults_applied() {
        use redirector_sniff::{
            detect::DEFAULT_MAX_HEADER_BYTES,
            server::{
                DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_HEADER_TIMEOUT_SECS,
                DEFAULT_IDLE_TIMEOUT_SECS,
            },
        };
        let mut sniff = command().find_subcommand("sniff").unwrap().clone();
        let help = sniff.render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for (flag, default) in [
            ("--header-timeout", DEFAULT_HEADER_TIMEOUT_SECS.to_string()),
            ("--idle-timeout", DEFAULT_IDLE_TIMEOUT_SECS.to_string()),
            (
                "--connect-timeout",
                DEFAULT_CONNECT_TIMEOUT_SECS.to_string(),
            ),
            ("--max-header-bytes", DEFAULT_MAX_HEADER_BYTES.to_string()),
            ("--user", redirector::privdrop::DEFAULT_USER.to_string()),
            ("--not-http", "close".to_string()),
            ("--relay", RelayMode::default().to_string()),
        ] {
            let at = help
                .find(&format!("{flag} "))
                .unwrap_or_else(|| panic!("{flag}"));
            let rest = &help[at..];
            let next = rest[2..].find(" --").map_or(rest.len(), |i| i + 2);
            assert!(
                rest[..next].contains(&format!("[default: {default}]")),
                "{flag}: {}",
                &rest[..next]
            );
        }
    }

    #[test]
    fn sniff_takes_the_options_unprefixed() {
        let args = [
            "sniff",
            "--listen",
            "127.0.0.1:80",
            "--websocket",
            "127.0.0.1:8080",
            "--http",
            "127.0.0.1:8000",
            "--max-conns-per-ip",
            "4",
            "--header-timeout",
            "3",
            "--metrics",
            "127.0.0.1:0",
        ];
        let Command::Sniff(sniff) = parse(&args).unwrap().command else {
            panic!("not sniff")
        };
        assert_eq!(sniff.options.max_conns_per_ip, Some(4));
        assert_eq!(sniff.options.header_timeout, Some(3));
        assert!(sniff.metrics.is_some());
        let mut prefixed = args.to_vec();
        prefixed.extend(["--sniff-max-conns", "3"]);
        assert!(parse(&prefixed).is_err(), "sniff has no --sniff-max-conns");
    }
}
