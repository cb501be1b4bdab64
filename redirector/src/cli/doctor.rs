//! `redirector doctor`: checks the host for what would break redirected connections, one
//! line per finding with its fix (or `--json`); exits 1 if any check fails. Read-only.

use std::io::Write as _;

use anyhow::Context as _;
use redirector::{
    dataplane::{attach::Mode, iface},
    doctor::{self, Check, RunningInstance, Settings, Source, Status},
    instance,
    packet_mark::PacketMark,
    rules::{self, RedirectRule},
};
use redirector_common::maps::DEFAULT_CONNTRACK_SIZE;
use serde::Serialize;

/// Arguments of `doctor`. Each option defaults to the running instance's setting (in this
/// network namespace), else to `run`'s default.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Interface to check (repeatable). Default: the running instance's, else the
    /// default-route interface.
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// Rule to check (repeatable). Default: the running instance's rules, else 80:8080 and
    /// 443:8443.
    ///
    /// Example: --redirect 80:8080
    #[arg(long = "redirect", value_name = "FROM:TO")]
    pub redirects: Vec<RedirectRule>,

    /// Established-flow capacity to check against the open connections. Default: the
    /// running instance's, else 1048576.
    #[arg(long, value_name = "N")]
    pub conntrack_size: Option<u32>,

    /// Packet mark the firewall check assumes redirected packets carry. Default: the
    /// running instance's --mark, else none.
    ///
    /// Example: --mark 0x42/0xff
    #[arg(long, value_name = "VALUE[/MASK]")]
    pub mark: Option<PacketMark>,

    /// Check for --persist (a bpffs at /sys/fs/bpf). Default: whether the running
    /// instance is persisted.
    #[arg(long)]
    pub persist: bool,

    /// Mode to explain: auto, xdp, xdp-generic, tc, socket. Default: the running
    /// instance's, else auto.
    #[arg(long, value_name = "MODE", value_parser = Mode::parse)]
    pub mode: Option<Mode>,

    /// Print JSON: `{"checks": [{"name", "status", "message", "fix"}], "fail": N,
    /// "warn": N}`, status one of ok, skip, warn, fail (see docs/CONTROL.md).
    #[arg(long)]
    pub json: bool,
}

/// `doctor --json`.
#[derive(Serialize)]
struct Report<'a> {
    checks: &'a [Check],
    fail: usize,
    warn: usize,
}

/// Runs every check and prints the findings; exits with status 1 if one failed.
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let settings = settings(&args)?;
    let checks = doctor::run_all(&settings)?;
    let count = |status: Status| checks.iter().filter(|c| c.status == status).count();
    let (fail, warn) = (count(Status::Fail), count(Status::Warn));
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = Report {
            checks: &checks,
            fail,
            warn,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        for check in &checks {
            writeln!(out, "{check}")?;
        }
        writeln!(out, "{fail} failed, {warn} warnings")?;
    }
    out.flush()?;
    if fail > 0 {
        // Not an error of doctor's own: the findings above say what is wrong.
        std::process::exit(1);
    }
    Ok(())
}

/// The settings to check: the flags, else the running instance's, else `run`'s defaults.
fn settings(given: &DoctorArgs) -> anyhow::Result<Settings> {
    for name in &given.ifaces {
        iface::ifindex(name)?;
    }
    if !given.redirects.is_empty() {
        rules::validate(&given.redirects)?;
    }
    let found = instance::find_info(given.ifaces.first().map(String::as_str))
        .context("looking for a running redirector")?;
    let running = found.map(|(info, loader_running)| RunningInstance {
        info,
        loader_running,
    });
    let info = running.as_ref().map(|r| &r.info);
    let ifaces = match (given.ifaces.is_empty(), info) {
        (false, _) => given.ifaces.clone(),
        (true, Some(info)) => info.interfaces.iter().map(|i| i.name.clone()).collect(),
        (true, None) => vec![iface::default_route_interface()?],
    };
    let rules = match (given.redirects.is_empty(), info) {
        (false, _) => given.redirects.clone(),
        (true, Some(info)) => info
            .rules
            .iter()
            .map(|r| RedirectRule {
                from_port: r.from_port,
                to_port: r.to_port,
            })
            .collect(),
        (true, None) => rules::DEFAULT_RULES.to_vec(),
    };
    let conntrack_size = match (given.conntrack_size, info) {
        (Some(size), _) => (size, Source::Flag),
        (None, Some(info)) => (info.conntrack_size, Source::Instance),
        (None, None) => (DEFAULT_CONNTRACK_SIZE, Source::Default),
    };
    let mark = match (given.mark, info.and_then(|i| i.mark.as_deref())) {
        (Some(mark), _) => Some(mark),
        (None, Some(text)) => Some(
            text.parse()
                .with_context(|| format!("the running instance's mark `{text}`"))?,
        ),
        (None, None) => None,
    };
    let mode = match (given.mode, info) {
        (Some(mode), _) => mode,
        (None, Some(info)) => Mode::parse(&info.mode).map_err(anyhow::Error::msg)?,
        (None, None) => Mode::Auto,
    };
    let persist = given.persist || info.is_some_and(|i| i.persist);
    Ok(Settings {
        ifaces,
        rules,
        conntrack_size,
        mark,
        persist,
        mode,
        instance: running,
    })
}
