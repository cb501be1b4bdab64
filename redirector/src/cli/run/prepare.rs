//! Step 1 of `run`: everything that can fail before anything is loaded or attached — the
//! rules, privileges, the interfaces, the sniff and metrics ports (bound now, so a busy
//! one fails cleanly), the interface locks, and the persisted instance to adopt, if any.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use redirector::{
    config::{LocalSetting, RunSettings},
    dataplane::{
        attach::{Hook, Mode},
        iface, local, privileges, steer,
    },
    instance::{self, adopt, info::InstanceInfo, lock},
    packet_mark::PacketMark,
    reaper::Timeouts,
    rules::{self, RedirectRule},
    source_filter::SourcePrefix,
};
use redirector_sniff::server::{SniffConfig, SniffServer};

use super::proxy_child::SniffChild;
use tokio::runtime::Runtime;

/// What `run` checked and claimed, ready to [`Prepared::start`].
pub struct Prepared {
    pub(super) rules: Vec<RedirectRule>,
    /// FROM ports whose rule is loaded disabled (`--disable`).
    pub(super) disabled: Vec<u16>,
    pub(super) ifaces: Vec<String>,
    /// The mode in force: `Socket` for socket steering (asked, chosen by `auto`, or
    /// adopted), else the ingress hook asked of each interface.
    pub(super) mode: Mode,
    /// With `--mode auto`: what it chose and why, for the ready line.
    pub(super) auto_note: Option<String>,
    /// `--mark`, if given.
    pub(super) mark: Option<PacketMark>,
    pub(super) conntrack_size: u32,
    pub(super) allow: Vec<SourcePrefix>,
    pub(super) timeouts: Timeouts,
    pub(super) persist: bool,
    /// Local clients: the cgroup to attach the connect programs to, or off.
    pub(super) local: LocalSetting,
    pub(super) runtime: Runtime,
    /// The sniffing proxy's process, serving the listeners bound here.
    pub(super) sniff: Option<SniffChild>,
    /// The `--metrics` listener, bound (non-blocking, for the runtime).
    pub(super) metrics: Option<TcpListener>,
    /// The loader's lock of every interface, held until it exits.
    pub(super) locks: Vec<lock::FileLock>,
    /// The persisted instance on these interfaces, to adopt instead of starting afresh.
    pub(super) adopt: Option<Adoption>,
}

/// A persisted instance whose loader exited, checked to be adoptable.
pub struct Adoption {
    /// Its instance file.
    pub(super) old: InstanceInfo,
    /// Its interfaces (in its order) and their ingress hooks (none: it steers sockets).
    pub(super) hooks: Vec<(String, Hook)>,
    /// It steers sockets: its link is on the network namespace.
    pub(super) socket: bool,
    /// Pinned by the previous state format ([`instance::migrate::MIGRATES_FROM`]): its
    /// flow table is migrated into today's two.
    pub(super) migrate: bool,
}

impl Prepared {
    /// Checks and claims what the merged `settings` (and the sniffing proxy, if any) need.
    pub fn new(
        settings: RunSettings,
        sniff: Option<SniffConfig>,
        persist: bool,
    ) -> anyhow::Result<Self> {
        let rules = if settings.redirects.is_empty() {
            rules::DEFAULT_RULES.to_vec()
        } else {
            settings.redirects.clone()
        };
        rules::validate(&rules)?;
        if let Some(listen) = sniff.as_ref().map(|c| c.listen) {
            check_sniff_port(&rules, listen)?;
        }
        privileges::check()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        // Bound here (a busy port fails now), served by the unprivileged child.
        let sniff = sniff
            .map(|config| SniffChild::spawn(SniffServer::bind_std(&config)?, config.max_conns))
            .transpose()?;
        let ifaces = if settings.ifaces.is_empty() {
            vec![iface::default_route_interface()?]
        } else {
            settings.ifaces.clone()
        };
        let metrics = settings.metrics.map(bind_metrics).transpose()?;
        let locks = ifaces
            .iter()
            .map(|name| lock::lock(name))
            .collect::<Result<Vec<_>, _>>()?;
        let mode = mode_for_mark(settings.mode, settings.mark)?;
        let adopt = find_adoptable(&ifaces, mode)?;
        if adopt.is_none() {
            // A fresh start attaches now; an adopted instance waits for a missing interface.
            for name in &ifaces {
                iface::ifindex(name)?;
            }
        }
        let (mode, auto_note) = match &adopt {
            Some(adoption) if adoption.socket => (Some(Mode::Socket), None),
            Some(_) => (mode, None),
            None => resolve_auto(mode, &rules),
        };
        if mode == Some(Mode::Socket) && !privileges::may_take_sockets() {
            anyhow::bail!(
                "--mode socket needs CAP_SYS_PTRACE: the loader takes each TO port's listening \
                 socket from the server that owns it (pidfd_getfd); run as root, or grant it \
                 (the systemd unit: dist/socket-steering.conf)"
            );
        }
        let local = if mode == Some(Mode::Socket) {
            if matches!(settings.local, Some(LocalSetting::Cgroup(_))) {
                log::info!(
                    "socket steering takes local clients too (their connects go through socket \
                     lookup): --local-cgroup is not needed, no cgroup programs are attached"
                );
            }
            LocalSetting::Off
        } else {
            local_setting(settings.local.clone())?
        };
        let conntrack_size = match &adopt {
            Some(adoption) if !adoption.migrate => {
                adopted_size(&adoption.old, settings.conntrack_size)
            }
            // Socket steering tracks no flow: its tables take their least room.
            _ if mode == Some(Mode::Socket) => 1,
            // A migration creates new flow tables: the asked (or default) size applies.
            _ => settings.conntrack_size(),
        };
        Ok(Prepared {
            mode: mode.unwrap_or_default(),
            auto_note,
            mark: settings.mark,
            conntrack_size,
            timeouts: settings.timeouts(),
            disabled: settings.disabled.clone(),
            allow: settings.allow,
            rules,
            ifaces,
            persist,
            local,
            runtime,
            sniff,
            metrics,
            locks,
            adopt,
        })
    }
}

/// Local clients: an explicit `--local-cgroup` must be a cgroup v2 directory; by default
/// the cgroup v2 root of this mount namespace, and without one (e.g. under `ip netns
/// exec`, whose /sys has no cgroup mount) local clients are not redirected, with a warning.
fn local_setting(given: Option<LocalSetting>) -> anyhow::Result<LocalSetting> {
    match given {
        Some(LocalSetting::Cgroup(path)) => {
            local::check_cgroup(&path)?;
            Ok(LocalSetting::Cgroup(path))
        }
        Some(LocalSetting::Off) => Ok(LocalSetting::Off),
        None => match local::cgroup2_root() {
            Some(root) => Ok(LocalSetting::Cgroup(root)),
            None => {
                log::warn!(
                    "no cgroup v2 hierarchy is mounted here (under `ip netns exec`, /sys is \
                     a fresh one: use `nsenter --net=`): local clients are not redirected; \
                     --local-cgroup PATH names one, --no-local silences this"
                );
                Ok(LocalSetting::Off)
            }
        },
    }
}

/// The ingress mode with `--mark`: the mark lives in the skb, which XDP runs before, so a
/// mark takes the TC ingress hook (`auto` becomes `tc`) and an explicit XDP mode is refused.
fn mode_for_mark(mode: Option<Mode>, mark: Option<PacketMark>) -> anyhow::Result<Option<Mode>> {
    match (mark, mode) {
        (None, mode) => Ok(mode),
        (Some(_), None | Some(Mode::Auto | Mode::Tc)) => Ok(Some(Mode::Tc)),
        (Some(mark), Some(Mode::Socket)) => anyhow::bail!(
            "--mark {mark} is for the packet rewrite: with --mode socket no packet is rewritten \
             and the firewall's INPUT chain sees the FROM port, so accept that port instead"
        ),
        (Some(mark), Some(mode)) => anyhow::bail!(
            "--mark {mark} needs the TC ingress hook (the mark lives in the skb, which XDP runs \
             before): use --mode tc or auto, not --mode {mode}"
        ),
    }
}

/// `--mode auto` (or none) without `--mark`: socket steering where it is right
/// ([`steer::auto_choice`]), else the rewrite; with the choice and why for the ready line.
fn resolve_auto(mode: Option<Mode>, rules: &[RedirectRule]) -> (Option<Mode>, Option<String>) {
    if !matches!(mode, None | Some(Mode::Auto)) {
        return (mode, None);
    }
    let to_ports: Vec<u16> = rules.iter().map(|r| r.to_port).collect();
    let choice = steer::auto_choice(&to_ports);
    log::info!(
        "--mode auto: {} ({})",
        if choice.socket {
            "socket steering"
        } else {
            "packet rewrite"
        },
        choice.why
    );
    if choice.socket {
        (Some(Mode::Socket), Some(format!("socket: {}", choice.why)))
    } else {
        (mode, Some(format!("rewrite: {}", choice.why)))
    }
}

/// The kernel would move the sniffed port's connections away before the proxy saw them
/// (e.g. the default 80:8080 rule with --sniff-listen 0.0.0.0:80).
fn check_sniff_port(rules: &[RedirectRule], listen: SocketAddr) -> anyhow::Result<()> {
    if let Some(rule) = rules.iter().find(|r| r.from_port == listen.port()) {
        anyhow::bail!(
            "--sniff-listen {listen}: port {} is also redirected in the kernel by rule \
             {rule}; give --redirect rules that leave it alone (e.g. --redirect 443:8443)",
            listen.port()
        );
    }
    Ok(())
}

/// Binds the `--metrics` address.
fn bind_metrics(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("listening on --metrics {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The persisted instance on `ifaces` whose loader exited, checked for adoption: same
/// state format or the previous one, migrated (else
/// [`instance::StateError::IncompatiblePersisted`]), same interfaces,
/// and an explicit `mode` only if its hooks already are that mode — a hook cannot change
/// without a moment with no program attached. (Called with the interface locks held:
/// another loader cannot be starting.)
fn find_adoptable(ifaces: &[String], mode: Option<Mode>) -> anyhow::Result<Option<Adoption>> {
    for name in ifaces {
        if let Some(old) = instance::persisted_on(name)? {
            if !old.pin_dir_from_here(false).exists() {
                // `ip netns exec`: its pins are in the host's bpffs, not this one.
                return Err(
                    instance::StateError::PersistedElsewhere(old.key_iface().into()).into(),
                );
            }
            instance::stale::check_same_namespace(old.netns_cookie, old.key_iface())?;
            let hooks = adopt::check(&old, ifaces, mode)?;
            let migrate = old.format == instance::migrate::MIGRATES_FROM;
            let socket = old.mode == Mode::Socket.to_string();
            return Ok(Some(Adoption {
                old,
                hooks,
                socket,
                migrate,
            }));
        }
    }
    Ok(None)
}

/// The established capacity of an adopted instance: the pinned table's, which a live map
/// cannot change; a different `--conntrack-size` is ignored with a warning.
fn adopted_size(old: &InstanceInfo, asked: Option<u32>) -> u32 {
    if let Some(asked) = asked.filter(|asked| *asked != old.conntrack_size) {
        log::warn!(
            "--conntrack-size {asked} ignored: the adopted tables hold {} established flows \
             and a live table cannot be resized (`redirector detach`, which drops every \
             flow, then a new start applies it)",
            old.conntrack_size
        );
    }
    old.conntrack_size
}
