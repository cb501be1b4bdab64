//! SIGHUP (`systemctl reload redirector`): re-reads `--config FILE`, merges the command
//! line's flags over it again, and applies what changed ([`ReloadPlan`]) to the running
//! loader without dropping a connection: rules, their enabled state and the allow list
//! through [`Instance::edit`], as the control commands change them; the mark in this
//! loader's own map; the timeouts in its reaper; the metrics server rebound.
//!
//! Everything that can fail is checked first (the file, settings only a restart changes,
//! a mark on an XDP hook, the new metrics address bound): a refusal is one log line and
//! changes nothing.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use redirector::{
    config::{reload::ReloadPlan, RunSettings},
    dataplane::{maps::Maps, Dataplane},
    instance::{
        adopt,
        control::{self, ControlError},
        info::{read_info, TimeoutsInfo},
        Instance,
    },
    observe::http as metrics_http,
    reaper::Timeouts,
};
use tokio::task::JoinHandle;

use super::serve::MetricsBody;

/// What a reload needs to know: where the file is, the flags (which win over it again),
/// and the settings in force.
pub struct Reloader {
    config: Option<PathBuf>,
    flags: RunSettings,
    current: RunSettings,
}

/// The parts of the running loader a reload changes.
pub struct Live<'a> {
    /// The loader's dataplane (its mark map is not pinned).
    pub dp: &'a mut Dataplane,
    /// The pin directory and the instance file.
    pub pins: (&'a Path, &'a Path),
    /// The reaper's timeouts.
    pub timeouts: &'a mut Timeouts,
    /// The `/metrics` server.
    pub metrics: &'a mut MetricsServer,
}

impl Reloader {
    /// `current` was merged from `flags` over the file at `config` (if any).
    pub fn new(config: Option<PathBuf>, flags: RunSettings, current: RunSettings) -> Self {
        Reloader {
            config,
            flags,
            current,
        }
    }

    /// Handles one SIGHUP: prints `redirector reloaded FILE: CHANGES` on success, logs
    /// one error line on refusal.
    pub fn on_hangup(&mut self, live: Live<'_>) {
        let Some(path) = self.config.clone() else {
            log::warn!(
                "SIGHUP: started without --config, there is no file to re-read: nothing changed"
            );
            return;
        };
        let (plan, new, metrics) = match self.check(&path, &live) {
            Ok(checked) => checked,
            Err(e) => {
                log::error!(
                    "reload of {} refused, nothing changed: {e:#}",
                    path.display()
                );
                return;
            }
        };
        match apply(&plan, &new, metrics, live) {
            Ok(()) => {
                println!("redirector reloaded {}: {plan}", path.display());
                self.current = new;
            }
            Err(e) => log::error!(
                "reload of {}: applying `{plan}` failed: {e:#}; changes made before the \
                 failure stay (`redirector status` shows them)",
                path.display()
            ),
        }
    }

    /// Reads the file again and checks everything that can refuse the reload; binds a new
    /// metrics address.
    fn check(
        &self,
        path: &Path,
        live: &Live<'_>,
    ) -> anyhow::Result<(ReloadPlan, RunSettings, Option<Option<TcpListener>>)> {
        let new = self.flags.clone().or(RunSettings::load(path)?);
        let plan = ReloadPlan::between(&self.current, &new)?;
        if let Some(Some(mark)) = plan.mark {
            let info = read_info(live.pins.1)?;
            if let Some(iface) = info.interfaces.iter().find(|i| i.ingress_hook != "tc") {
                anyhow::bail!(
                    "`mark` {mark} needs the TC ingress hook, and {} runs ingress {} (`mode` \
                     and the hook cannot change while the loader runs: restart it with `mode = \
                     \"tc\"` or `\"auto\"`)",
                    iface.name,
                    iface.ingress_hook
                );
            }
        }
        let metrics = plan
            .metrics
            .map(|addr| addr.map(bind_metrics).transpose())
            .transpose()?;
        Ok((plan, new, metrics))
    }
}

/// Binds a new `--metrics` address (non-blocking, for the runtime).
fn bind_metrics(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("listening on `metrics` {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Applies a checked `plan` to `new` (`metrics`: the new listener, already bound).
fn apply(
    plan: &ReloadPlan,
    new: &RunSettings,
    metrics: Option<Option<TcpListener>>,
    live: Live<'_>,
) -> anyhow::Result<()> {
    let (pin_dir, info_path) = live.pins;
    let mut instance = Instance {
        info: read_info(info_path)?,
        maps: Maps::from_pins(pin_dir)?,
        info_path: info_path.to_path_buf(),
        loader_running: true,
    };
    for port in &plan.remove {
        match control::remove_rule(&mut instance, *port) {
            // Removed at runtime already (`redirector remove`).
            Ok(()) | Err(ControlError::UnknownPort(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for rule in &plan.add {
        match control::add_rule(&mut instance, *rule) {
            Ok(_) => {}
            // Added at runtime (`redirector add`), maybe to another port: the file's wins.
            Err(ControlError::RuleExists(port)) => {
                control::remove_rule(&mut instance, port)?;
                control::add_rule(&mut instance, *rule)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (ports, enabled) in [(&plan.disable, false), (&plan.enable, true)] {
        for port in ports {
            control::set_enabled(&mut instance, *port, enabled)?;
        }
    }
    if let Some(allow) = &plan.allow {
        instance.edit(|_, maps| adopt::apply_allow(maps, allow).map_err(ControlError::from))?;
    }
    if let Some(mark) = plan.mark {
        live.dp.set_mark(mark)?;
    }
    if plan.timeouts.is_some() {
        *live.timeouts = new.timeouts();
    }
    if let Some(listener) = metrics {
        live.metrics.replace(listener)?;
    }
    let url = live.metrics.url();
    instance.edit(|info, _| {
        info.timeouts = Some(TimeoutsInfo::from(&*live.timeouts));
        if let Some(mark) = plan.mark {
            info.mark = mark.map(|m| m.to_string());
        }
        info.metrics.clone_from(&url);
        Ok::<_, ControlError>(())
    })?;
    Ok(())
}

/// The `/metrics` server: a task on the loader's runtime, replaced when a reload changes
/// its address; stopped when dropped.
pub struct MetricsServer {
    render: Arc<MetricsBody>,
    addr: Option<SocketAddr>,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves on `listener` (if any) what `render` reads. Called on the runtime.
    pub fn start(listener: Option<TcpListener>, render: MetricsBody) -> anyhow::Result<Self> {
        let mut server = MetricsServer {
            render: Arc::new(render),
            addr: None,
            task: None,
        };
        server.replace(listener)?;
        Ok(server)
    }

    /// Stops serving the old address, serves `listener` (none: no server).
    fn replace(&mut self, listener: Option<TcpListener>) -> anyhow::Result<()> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.addr = None;
        if let Some(listener) = listener {
            self.addr = Some(listener.local_addr()?);
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("registering the --metrics listener")?;
            let render = Arc::clone(&self.render);
            self.task = Some(tokio::spawn(metrics_http::serve(listener, move || {
                render()
            })));
        }
        Ok(())
    }

    /// `http://ADDR/metrics`, if served.
    fn url(&self) -> Option<String> {
        self.addr.map(|addr| format!("http://{addr}/metrics"))
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
