//! Step 3 of `run`: reap expired flows, serve `/metrics`, publish the sniffing proxy's
//! counters, reload the config file on SIGHUP ([`super::reload`]), until SIGINT or SIGTERM
//! (or the proxy's process dies); then stop the proxy.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use redirector::{
    dataplane::{local, Dataplane},
    observe::flow_tables::FillWatch,
    reaper,
};
use tokio::signal::unix::Signal;

use super::{
    reload::{Live, MetricsServer, Reloader},
    start::{Loaded, Started},
};

/// How often closed and idle flows are reclaimed (less often over large tables:
/// [`reaper::Pace`]).
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the `/metrics` series at each scrape.
pub type MetricsBody = Box<dyn Fn() -> Result<Registry, String> + Send + Sync>;

/// The signals that stop the loader, and the one that reloads its config file.
pub struct Signals {
    pub(super) interrupt: Signal,
    pub(super) terminate: Signal,
    pub(super) hangup: Signal,
}

impl Started {
    /// Serves until a signal or the proxy's death; then stops the sniffing proxy's process
    /// (closing the sniffed connections still open) and the runtime, and hands back what
    /// [`Loaded::stop`] takes down.
    pub fn serve(self, mut reloader: Reloader) -> anyhow::Result<Loaded> {
        let Started {
            runtime,
            mut loaded,
            mut timeouts,
            signals,
            metrics,
            mut sniff,
        } = self;
        runtime.block_on(async {
            let sniff_exited = async {
                match &mut sniff {
                    Some(child) => child.exited().await,
                    None => std::future::pending().await,
                }
            };
            let publishing = async {
                match &loaded.sniff_publisher {
                    Some(publisher) => publisher.run().await,
                    None => std::future::pending().await,
                }
            };
            let fill = FillWatch::new(loaded.conntrack_size);
            let local = loaded.local;
            let pins = (loaded.pinned.dir().to_path_buf(), loaded.pinned.info_path().to_path_buf());
            let served = tokio::select! {
                served = reap_until_signal(&mut loaded.dp, &mut timeouts, signals, metrics, fill, local, (&mut reloader, pins)) => served,
                () = publishing => unreachable!("publishing runs until dropped"),
                () = sniff_exited => {
                    log::error!("the sniffing proxy's process exited; stopping the loader");
                    loaded.sniff_died = true;
                    Ok(())
                }
            };
            served
        })?;
        // Its last report makes the counters final.
        if let Some(child) = sniff {
            child.stop().context("stopping the sniffing proxy")?;
        }
        runtime.shutdown_timeout(Duration::from_millis(100));
        Ok(loaded)
    }
}

/// Reaps expired flows (and serves `/metrics` if asked) until SIGINT or SIGTERM (which
/// also stop the sniffing proxy); reloads the config file on SIGHUP. With `local` (local
/// clients redirected), also keeps the namespace's addresses in `LOCAL_ADDRS` current, at
/// the same pace: an address added to an interface is local within a second.
async fn reap_until_signal(
    dp: &mut Dataplane,
    timeouts: &mut reaper::Timeouts,
    mut signals: Signals,
    metrics: (Option<std::net::TcpListener>, MetricsBody),
    mut fill: FillWatch,
    local: bool,
    (reloader, pins): (&mut Reloader, (PathBuf, PathBuf)),
) -> anyhow::Result<()> {
    let (listener, render) = metrics;
    let mut metrics = MetricsServer::start(listener, render)?;
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    let mut pace = reaper::Pace::default();
    loop {
        tokio::select! {
            _ = signals.interrupt.recv() => break,
            _ = signals.terminate.recv() => break,
            _ = signals.hangup.recv() => reloader.on_hangup(Live {
                dp: &mut *dp,
                pins: (&pins.0, &pins.1),
                timeouts: &mut *timeouts,
                metrics: &mut metrics,
            }),
            _ = tick.tick() => {
                match pace.reap(dp, timeouts, std::time::Instant::now()) {
                    Ok(0) => {}
                    Ok(n) => log::debug!("reclaimed {n} closed or idle flows"),
                    Err(e) => log::warn!("reaping flows: {e}"),
                }
                if let Err(e) = fill.check(dp.maps()) {
                    log::warn!("reading the flow tables' fill: {e}");
                }
                if local {
                    let refreshed = local::namespace_addrs()
                        .map_err(anyhow::Error::from)
                        .and_then(|addrs| Ok(dp.set_local_addrs(&addrs)?));
                    if let Err(e) = refreshed {
                        log::warn!("refreshing the namespace's local addresses: {e:#}");
                    }
                }
            }
        }
    }
    log::info!("signal received, detaching");
    Ok(())
}
