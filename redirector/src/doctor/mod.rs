//! `redirector doctor`: read-only checks of a host before and while redirector runs, each
//! with a typed result ([`Check`]) that says what is wrong and how to fix it.
//!
//! Every check only reads kernel state (`/proc/net/tcp*`, the nftables ruleset, ethtool,
//! `statfs`, program and link ids): nothing is attached, mounted or changed. The checks:
//! [`listener`] (something listens on each TO port), [`firewall`] (the input hook accepts
//! redirected packets), [`capacity`] (the established table holds the host's connections),
//! [`hook`] (which ingress hook `--mode` gets, and why), [`offload`] (tx checksum offload
//! on a veth), [`bpffs`] (mounted for `--persist`), [`programs`] (no foreign XDP, tcx or tc
//! program on the interface), [`interfaces`] (the instance's programs are on each of its
//! interfaces), [`stale`] (no pinned state of a network namespace that is gone);
//! [`proc_net`] and [`xdp_features`] read what they share.

pub mod bpffs;
pub mod capacity;
pub mod firewall;
pub mod hook;
pub mod interfaces;
pub mod listener;
pub mod offload;
pub mod proc_net;
pub mod programs;
pub mod stale;
pub mod xdp_features;

use std::fmt;

use serde::Serialize;

use crate::{
    dataplane::{attach::Mode, steer},
    instance::info::InstanceInfo,
    packet_mark::PacketMark,
    rules::RedirectRule,
};

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to fix (informational messages too).
    Ok,
    /// Could not be checked here (a tool or a kernel interface is missing).
    Skip,
    /// Works, but worth fixing (or matters only in some cases).
    Warn,
    /// Redirected connections would fail: `doctor` exits with status 1.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One finding: a check's name, its outcome, what it found and, unless it is fine, the fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Which check (`listener`, `firewall`, `conntrack`, `hook`, `offload`, `bpffs`,
    /// `programs`, `interfaces`, `stale`); a check may report several findings (one per rule or interface).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found, in one line.
    pub message: String,
    /// What to do about it (none when there is nothing to do).
    pub fix: Option<String>,
}

impl Check {
    /// A finding without a fix.
    pub fn new(name: &'static str, status: Status, message: impl Into<String>) -> Self {
        Check {
            name,
            status,
            message: message.into(),
            fix: None,
        }
    }

    /// This finding with `fix`.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Check {
    /// `STATUS name: message — fix: …`, the status padded so messages line up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4} {}: {}",
            self.status.to_string(),
            self.name,
            self.message
        )?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every check's name, in the order they run (what `--json` always holds).
pub const CHECK_NAMES: [&str; 9] = [
    "listener",
    "firewall",
    "conntrack",
    "hook",
    "offload",
    "bpffs",
    "programs",
    "interfaces",
    "stale",
];

/// `doctor` could not run at all (as opposed to a check that found a problem).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// `/proc/net/tcp` or `tcp6` could not be read.
    #[error("reading {path}")]
    ProcNet {
        /// The file.
        path: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where a setting came from, for messages that name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Given on the command line.
    Flag,
    /// The running (or persisted) instance's.
    Instance,
    /// The default of `run`.
    Default,
}

/// What the checks check: the settings `run` would use (or the running instance uses).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Interfaces.
    pub ifaces: Vec<String>,
    /// Rules.
    pub rules: Vec<RedirectRule>,
    /// Established capacity, and where it came from.
    pub conntrack_size: (u32, Source),
    /// The packet mark, if any.
    pub mark: Option<PacketMark>,
    /// `--persist` wanted or in use.
    pub persist: bool,
    /// Requested `--mode`.
    pub mode: Mode,
    /// The instance of this network namespace, if one runs (or is persisted).
    pub instance: Option<RunningInstance>,
}

/// The instance `doctor` found.
#[derive(Clone, Debug)]
pub struct RunningInstance {
    /// Its instance file.
    pub info: InstanceInfo,
    /// Its loader runs (false: persisted, loader exited).
    pub loader_running: bool,
}

impl Settings {
    /// What `--mode auto` would pick for these rules ([`steer::auto_choice`]); `None` for
    /// another mode, or with `--mark` (which takes the TC rewrite).
    pub fn auto_choice(&self) -> Option<steer::AutoChoice> {
        (self.mode == Mode::Auto && self.mark.is_none()).then(|| {
            let to_ports: Vec<u16> = self.rules.iter().map(|r| r.to_port).collect();
            steer::auto_choice(&to_ports)
        })
    }

    /// Socket steering is (or would be) in use: the running instance's, or asked, or
    /// chosen by `auto` (`auto`: [`Settings::auto_choice`]).
    pub fn steers_sockets(&self, auto: Option<&steer::AutoChoice>) -> bool {
        match &self.instance {
            Some(instance) => instance.info.steers_sockets(),
            None => self.mode == Mode::Socket || auto.is_some_and(|c| c.socket),
        }
    }
}

impl RunningInstance {
    /// The ingress hook it uses on `iface`, if `iface` is one of its interfaces.
    pub fn hook_on(&self, iface: &str) -> Option<&str> {
        self.info
            .interfaces
            .iter()
            .find(|i| i.name == iface)
            .map(|i| i.ingress_hook.as_str())
    }
}

/// Runs every check against `settings`, in [`CHECK_NAMES`] order.
pub fn run_all(settings: &Settings) -> Result<Vec<Check>, DoctorError> {
    let sockets = proc_net::tcp_sockets()?;
    // Asked once: it lists the nftables ruleset and the socket table.
    let auto = settings.auto_choice();
    let steering = settings.steers_sockets(auto.as_ref());
    let mut checks = listener::check(&settings.rules, &sockets);
    checks.extend(firewall::check(settings, steering));
    if steering {
        checks.push(Check::new(
            "conntrack",
            Status::Ok,
            "socket steering keeps no flow table: the connections are the kernel's alone",
        ));
    } else {
        checks.push(capacity::check(settings.conntrack_size, &sockets));
    }
    for iface in &settings.ifaces {
        checks.push(hook::check(settings, iface, auto.as_ref()));
    }
    // Socket steering rewrites no packet: no checksum for an offload to hide.
    for iface in settings.ifaces.iter().filter(|_| !steering) {
        checks.push(offload::check(iface));
    }
    checks.push(bpffs::check(settings.persist));
    for iface in &settings.ifaces {
        checks.extend(programs::check(settings, iface));
    }
    checks.extend(interfaces::check(settings.instance.as_ref()));
    checks.push(stale::check());
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_status_check_message_and_fix() {
        let check = Check::new("listener", Status::Fail, "nothing listens on 8080")
            .with_fix("start the server on 8080");
        assert_eq!(
            check.to_string(),
            "FAIL listener: nothing listens on 8080 — fix: start the server on 8080"
        );
        assert_eq!(
            Check::new("bpffs", Status::Ok, "mounted").to_string(),
            "ok   bpffs: mounted"
        );
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["status"], "fail");
        assert_eq!(json["fix"], "start the server on 8080");
    }
}
