//! `redirector run`: load, configure, attach, serve until a signal, detach, report; with
//! `--sniff-listen`, the sniffing proxy of `redirector sniff` runs on the same runtime.

use std::time::Duration;

use anyhow::Context as _;
use redirector::{
    attach,
    dataplane::Dataplane,
    iface, instance, pin, privileges, reaper, rules,
    sniff::{
        detect::DetectConfig,
        server::{SniffConfig, SniffServer},
    },
    state::{InstanceInfo, InterfaceInfo, PinnedInstance, RuleInfo, INSTANCE_FORMAT},
    stats::Snapshot,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{RunArgs, RunSniffArgs};
use crate::sniff_cmd;

/// How often closed and idle flows are reclaimed.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the loader in the foreground.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let rules = if args.redirects.is_empty() {
        rules::DEFAULT_RULES.to_vec()
    } else {
        args.redirects.clone()
    };
    rules::validate(&rules)?;
    if let Some(listen) = args.sniff.sniff_listen {
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
    let sniff = sniff_config(&args.sniff)
        .map(|config| runtime.block_on(SniffServer::bind(config)))
        .transpose()?;
    let ifaces = if args.ifaces.is_empty() {
        vec![iface::default_route_interface()?]
    } else {
        args.ifaces.clone()
    };
    for name in &ifaces {
        iface::ifindex(name)?;
    }
    let _locks = ifaces
        .iter()
        .map(|name| instance::lock(name))
        .collect::<Result<Vec<_>, _>>()?;

    let mut dp = Dataplane::load(args.conntrack_size)?;
    dp.set_rules(&rules)?;
    dp.set_allowed_sources(&args.allow)?;
    let mut hooks = Vec::new();
    let mut interfaces = Vec::new();
    for name in &ifaces {
        let hook = attach::attach(&mut dp, name, args.mode)?;
        log::info!("attached to {name}: ingress {hook}, egress tc");
        hooks.push(format!("{name} ({hook})"));
        interfaces.push(InterfaceInfo {
            name: name.clone(),
            ingress_hook: hook.to_string(),
        });
    }
    let info = InstanceInfo {
        format: INSTANCE_FORMAT,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        netns_inode: pin::netns_inode(),
        mode: args.mode.to_string(),
        interfaces,
        conntrack_size: args.conntrack_size,
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
    };
    let pinned = PinnedInstance::create(&dp, &info).context("pinning the maps")?;
    log::info!("maps pinned in {}", pinned.dir().display());
    if let Some(server) = &sniff {
        let addrs = server.local_addrs().context("reading the sniff address")?;
        println!(
            "redirector sniff ready: listening on {}",
            sniff_cmd::listening(&addrs)
        );
    }
    let rule_list: Vec<String> = rules.iter().map(ToString::to_string).collect();
    println!(
        "redirector ready: {} rules {} conntrack-size {}",
        hooks.join(", "),
        rule_list.join(" "),
        args.conntrack_size
    );

    let sniff_counters = sniff.as_ref().map(SniffServer::counters);
    runtime.block_on(async {
        let (stop_sniff, sniff_stopped) = tokio::sync::oneshot::channel::<()>();
        let sniffing = sniff.map(|server| {
            tokio::spawn(server.serve(async move {
                let _ = sniff_stopped.await;
            }))
        });
        let served = serve(&mut dp).await;
        let _ = stop_sniff.send(());
        if let Some(sniffing) = sniffing {
            sniffing.await.context("the sniffing proxy's task failed")?;
        }
        served
    })?;
    // Sniffed connections still open are closed with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));

    // Unpin first, so control commands stop finding a stopping instance.
    drop(pinned);
    // Rules may have changed at runtime: the snapshot reads them from the RULES map.
    let snapshot = Snapshot::read(dp.maps())?;
    drop(dp); // Detaches every program and frees the maps.
    println!(
        "redirector stopped: programs detached from {}",
        ifaces.join(", ")
    );
    print!("{snapshot}");
    if let Some(counters) = sniff_counters {
        println!("redirector sniff stopped");
        print!("{counters}");
    }
    Ok(())
}

/// The sniffing proxy's configuration, if `--sniff-listen` was given (clap requires both
/// backends with it); all else at the defaults of `redirector sniff`.
fn sniff_config(args: &RunSniffArgs) -> Option<SniffConfig> {
    let mut config = SniffConfig::new(args.sniff_listen?, args.sniff_websocket?, args.sniff_http?);
    config.detect = DetectConfig {
        ws_paths: args.ws_paths.clone(),
        ..DetectConfig::default()
    };
    config.proxy_protocol = args.sniff_proxy_protocol;
    Some(config)
}

/// Reaps expired flows until SIGINT or SIGTERM (which also stop the sniffing proxy).
async fn serve(dp: &mut Dataplane) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    let timeouts = reaper::Timeouts::default();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                match reaper::reap(dp, &timeouts) {
                    Ok(0) => {}
                    Ok(n) => log::debug!("reclaimed {n} closed or idle flows"),
                    Err(e) => log::warn!("reaping flows: {e}"),
                }
            }
        }
    }
    log::info!("signal received, detaching");
    Ok(())
}
