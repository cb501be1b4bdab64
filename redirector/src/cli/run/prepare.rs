//! Step 1 of `run`: everything that can fail before anything is loaded or attached — the
//! rules, privileges, the interfaces, the sniff and metrics ports (bound now, so a busy
//! one fails cleanly), the interface locks, and no persisted instance in the way.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use redirector::{
    config::RunSettings,
    dataplane::{attach::Mode, iface, privileges},
    instance::{self, lock},
    reaper::Timeouts,
    rules::{self, RedirectRule},
    source_filter::SourcePrefix,
};
use redirector_sniff::server::{SniffConfig, SniffServer};
use tokio::runtime::Runtime;

/// What `run` checked and claimed, ready to [`Prepared::start`].
pub struct Prepared {
    pub(super) rules: Vec<RedirectRule>,
    pub(super) ifaces: Vec<String>,
    pub(super) mode: Mode,
    pub(super) conntrack_size: u32,
    pub(super) allow: Vec<SourcePrefix>,
    pub(super) timeouts: Timeouts,
    pub(super) persist: bool,
    pub(super) runtime: Runtime,
    /// The sniffing proxy, bound.
    pub(super) sniff: Option<SniffServer>,
    /// The `--metrics` listener, bound (non-blocking, for the runtime).
    pub(super) metrics: Option<TcpListener>,
    /// The loader's lock of every interface, held until it exits.
    pub(super) locks: Vec<lock::FileLock>,
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
        let sniff = sniff
            .map(|config| runtime.block_on(SniffServer::bind(config)))
            .transpose()?;
        let ifaces = if settings.ifaces.is_empty() {
            vec![iface::default_route_interface()?]
        } else {
            settings.ifaces.clone()
        };
        for name in &ifaces {
            iface::ifindex(name)?;
        }
        let metrics = settings.metrics.map(bind_metrics).transpose()?;
        let locks = ifaces
            .iter()
            .map(|name| lock::lock(name))
            .collect::<Result<Vec<_>, _>>()?;
        refuse_persisted(&ifaces)?;
        Ok(Prepared {
            mode: settings.mode(),
            conntrack_size: settings.conntrack_size(),
            timeouts: settings.timeouts(),
            allow: settings.allow,
            rules,
            ifaces,
            persist,
            runtime,
            sniff,
            metrics,
            locks,
        })
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

/// A persisted instance is not adopted: its maps may come from another version, and its
/// links would have to be replaced one by one. `detach` first makes the choice explicit.
/// (Called with the interface locks held: another loader cannot be starting.)
fn refuse_persisted(ifaces: &[String]) -> anyhow::Result<()> {
    for name in ifaces {
        if let Some(old) = instance::persisted_on(name)? {
            anyhow::bail!(
                "interface {name} still carries a persisted redirector (run --persist, loader \
                 pid {} exited); remove it with `redirector detach --iface {}` first",
                old.pid,
                old.key_iface()
            );
        }
    }
    Ok(())
}
