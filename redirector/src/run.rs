//! `redirector run`: load, configure, attach, serve until a signal, detach, report; with
//! `--sniff-listen`, the sniffing proxy of `redirector sniff` runs on the same runtime, its
//! counters on `/metrics` and published for `redirector stats`.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use redirector::{
    attach,
    config::{RunSettings, TimeoutSettings},
    dataplane::Dataplane,
    flow_tables::FillWatch,
    iface, instance,
    maps::Maps,
    metrics::{self, Labels},
    metrics_http, pin, privileges, reaper, rules,
    sniff::{
        self,
        publish::Publisher,
        server::{SniffConfig, SniffServer},
    },
    state::{
        self, InstanceInfo, InterfaceInfo, PinnedInstance, RuleInfo, TimeoutsInfo, INSTANCE_FORMAT,
    },
    stats::Snapshot,
};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    cli::{RunArgs, RunSniffArgs},
    sniff_cmd,
};

/// How often closed and idle flows are reclaimed.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// The flags as settings ("not given" kept apart from defaults).
fn flag_settings(args: RunArgs) -> RunSettings {
    RunSettings {
        ifaces: args.ifaces,
        redirects: args.redirects,
        mode: args.mode,
        allow: args.allow,
        conntrack_size: args.conntrack_size,
        metrics: args.metrics,
        timeouts: TimeoutSettings {
            established: args.timeout_established,
            closing: args.timeout_closing,
            fin_wait: args.timeout_fin_wait,
            handshake: args.timeout_handshake,
        },
    }
}

/// Runs the loader in the foreground.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.config.clone();
    let persist = args.persist;
    let sniff = sniff_config(&args.sniff);
    let flags = flag_settings(args);
    let settings = match config {
        Some(path) => flags.or(RunSettings::load(&path)?),
        None => flags,
    };
    load_and_serve(settings, sniff, persist)
}

/// The sniffing proxy's configuration, if `--sniff-listen` was given (clap requires both
/// backends with it), with every `--sniff-*` option.
fn sniff_config(args: &RunSniffArgs) -> Option<SniffConfig> {
    Some(sniff_cmd::sniff_config(
        args.sniff_listen?,
        args.sniff_websocket?,
        args.sniff_http?,
        &args.options,
    ))
}

/// Loads, attaches and serves with the merged `settings` (and the sniffing proxy, if any).
fn load_and_serve(
    settings: RunSettings,
    sniff: Option<SniffConfig>,
    persist: bool,
) -> anyhow::Result<()> {
    let (mode, conntrack_size) = (settings.mode(), settings.conntrack_size());
    let rules = if settings.redirects.is_empty() {
        rules::DEFAULT_RULES.to_vec()
    } else {
        settings.redirects.clone()
    };
    rules::validate(&rules)?;
    if let Some(listen) = sniff.as_ref().map(|c| c.listen) {
        // The kernel would move the sniffed port's connections away before the proxy saw
        // them (e.g. the default 80:8080 rule with --sniff-listen 0.0.0.0:80).
        if let Some(rule) = rules.iter().find(|r| r.from_port == listen.port()) {
            anyhow::bail!(
                "--sniff-listen {listen}: port {} is also redirected in the kernel by rule \
                 {rule}; give --redirect rules that leave it alone (e.g. --redirect 443:8443)",
                listen.port()
            );
        }
    }
    privileges::check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Bound before anything is attached, so a busy sniff port fails cleanly.
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
    // Bound before anything is attached, so a busy address fails cleanly.
    let metrics_listener = settings
        .metrics
        .map(|addr| {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("listening on --metrics {addr}"))?;
            listener.set_nonblocking(true)?;
            anyhow::Ok(listener)
        })
        .transpose()?;
    let _locks = ifaces
        .iter()
        .map(|name| instance::lock(name))
        .collect::<Result<Vec<_>, _>>()?;
    // A persisted instance is not adopted: its maps may come from another version, and its
    // links would have to be replaced one by one. `detach` first makes the choice explicit.
    for name in &ifaces {
        if let Some(old) = state::persisted_on(name)? {
            anyhow::bail!(
                "interface {name} still carries a persisted redirector (run --persist, loader \
                 pid {} exited); remove it with `redirector detach --iface {}` first",
                old.pid,
                old.key_iface()
            );
        }
    }

    let mut dp = Dataplane::load(conntrack_size)?;
    dp.set_rules(&rules)?;
    dp.set_allowed_sources(&settings.allow)?;
    let mut hooks = Vec::new();
    let mut interfaces = Vec::new();
    let mut links = Vec::new();
    for name in &ifaces {
        let attached = attach::attach(&mut dp, name, mode)?;
        let hook = attached.hook;
        if persist {
            let (ingress, egress) = attached.take_links(&mut dp)?;
            links.push((pin::link_pin_name(name, "ingress"), ingress));
            links.push((pin::link_pin_name(name, "egress"), egress));
        }
        log::info!("attached to {name}: ingress {hook}, egress tc");
        hooks.push(format!("{name} ({hook})"));
        interfaces.push(InterfaceInfo {
            name: name.clone(),
            ingress_hook: hook.to_string(),
        });
    }
    let timeouts = settings.timeouts();
    let metrics_url = metrics_listener
        .as_ref()
        .map(|listener| anyhow::Ok(format!("http://{}/metrics", listener.local_addr()?)))
        .transpose()?;
    let info = InstanceInfo {
        format: INSTANCE_FORMAT,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        netns_inode: pin::netns_inode(),
        mode: mode.to_string(),
        interfaces,
        conntrack_size,
        rules: rules
            .iter()
            .enumerate()
            .map(|(slot, r)| RuleInfo {
                from_port: r.from_port,
                to_port: r.to_port,
                slot: slot as u32,
            })
            .collect(),
        next_slot: rules.len() as u32,
        timeouts: Some(TimeoutsInfo::from(&timeouts)),
        metrics: metrics_url.clone(),
        persist,
    };
    let pinned = PinnedInstance::create(&dp, &info, links).context("pinning the maps")?;
    log::info!("maps pinned in {}", pinned.dir().display());
    let sniff_counters = sniff.as_ref().map(SniffServer::counters);
    // `redirector stats` of other processes reads the proxy's counters from this file.
    let sniff_publisher = sniff_counters
        .as_ref()
        .map(|counters| {
            let path = pin::sniff_stats_file(info.netns_inode, info.key_iface());
            Publisher::create(path, Arc::clone(counters))
        })
        .transpose()
        .context("publishing the sniff counters")?;
    let metrics = match metrics_listener {
        Some(listener) => {
            // Its own handles on the maps (through their pins), so scrapes never wait for
            // the reaper's `&mut Dataplane`.
            let maps = Maps::from_pins(pinned.dir()).context("opening the maps for --metrics")?;
            let labels = Labels {
                iface: ifaces[0].clone(),
                conntrack_capacity: conntrack_size,
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let sniff_counters = sniff_counters.clone();
            let render: MetricsBody = Box::new(move || {
                let snapshot =
                    Snapshot::read(&maps).map_err(|e| format!("reading the maps: {e}"))?;
                let mut body = metrics::render(&snapshot, &labels);
                if let Some(counters) = &sniff_counters {
                    body.push_str(&sniff::metrics::render(counters));
                }
                Ok(body)
            });
            Some((listener, render))
        }
        None => None,
    };
    // Handlers are installed before `ready` is printed: a SIGTERM right after it must
    // still detach cleanly instead of killing the process with its pins in place.
    let signals = {
        let _runtime = runtime.enter();
        Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        }
    };
    if let Some(server) = &sniff {
        let addrs = server.local_addrs().context("reading the sniff address")?;
        println!(
            "redirector sniff ready: listening on {}",
            sniff_cmd::listening(&addrs)
        );
    }
    let rule_list: Vec<String> = rules.iter().map(ToString::to_string).collect();
    let metrics_note = match &metrics_url {
        Some(url) => format!(" metrics {url}"),
        None => String::new(),
    };
    println!(
        "redirector ready: {} rules {} conntrack-size {}{metrics_note}",
        hooks.join(", "),
        rule_list.join(" "),
        conntrack_size
    );

    runtime.block_on(async {
        let (stop_sniff, sniff_stopped) = tokio::sync::oneshot::channel::<()>();
        let sniffing = sniff.map(|server| {
            tokio::spawn(server.serve(async move {
                let _ = sniff_stopped.await;
            }))
        });
        let publishing = async {
            match &sniff_publisher {
                Some(publisher) => publisher.run().await,
                None => std::future::pending().await,
            }
        };
        let served = tokio::select! {
            served = serve(&mut dp, &timeouts, signals, metrics, FillWatch::new(conntrack_size)) => served,
            () = publishing => unreachable!("publishing runs until dropped"),
        };
        let _ = stop_sniff.send(());
        if let Some(sniffing) = sniffing {
            sniffing.await.context("the sniffing proxy's task failed")?;
        }
        served
    })?;
    // Sniffed connections still open are closed with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));

    // The proxy stops with the process, persisted or not: its counters file goes.
    drop(sniff_publisher);
    if persist {
        // The pinned links keep the programs attached, the pinned maps their state.
        pinned.keep();
    } else {
        // Unpin first, so control commands stop finding a stopping instance.
        drop(pinned);
    }
    // Rules may have changed at runtime: the snapshot reads them from the RULES map.
    let snapshot = Snapshot::read(dp.maps())?;
    drop(dp); // Detaches every program it still owns and closes the maps.
    if persist {
        println!(
            "redirector stopped: programs left attached to {} (--persist; `redirector detach` removes them)",
            ifaces.join(", ")
        );
    } else {
        println!(
            "redirector stopped: programs detached from {}",
            ifaces.join(", ")
        );
    }
    print!("{snapshot}");
    if let Some(counters) = sniff_counters {
        println!("redirector sniff stopped");
        print!("{counters}");
    }
    Ok(())
}

/// Renders the `/metrics` body at each scrape.
type MetricsBody = Box<dyn Fn() -> Result<String, String>>;

/// The signals that stop the loader.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

/// Reaps expired flows (and serves `/metrics` if asked) until SIGINT or SIGTERM (which
/// also stop the sniffing proxy).
async fn serve(
    dp: &mut Dataplane,
    timeouts: &reaper::Timeouts,
    mut signals: Signals,
    metrics: Option<(std::net::TcpListener, MetricsBody)>,
    mut fill: FillWatch,
) -> anyhow::Result<()> {
    let metrics = match metrics {
        Some((listener, render)) => {
            let listener = tokio::net::TcpListener::from_std(listener)
                .context("registering the --metrics listener")?;
            Some(metrics_http::serve(listener, render))
        }
        None => None,
    };
    let metrics = async move {
        match metrics {
            Some(server) => server.await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(metrics);
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => break,
            _ = signals.terminate.recv() => break,
            () = &mut metrics => unreachable!("the metrics server runs until dropped"),
            _ = tick.tick() => {
                match reaper::reap(dp, timeouts) {
                    Ok(0) => {}
                    Ok(n) => log::debug!("reclaimed {n} closed or idle flows"),
                    Err(e) => log::warn!("reaping flows: {e}"),
                }
                if let Err(e) = fill.check(dp.maps()) {
                    log::warn!("reading the flow tables' fill: {e}");
                }
            }
        }
    }
    log::info!("signal received, detaching");
    Ok(())
}
