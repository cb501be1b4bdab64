//! Step 3 of `run`: reap expired flows, follow the interfaces and the namespace's
//! addresses by rtnetlink (or, steering sockets, the TO ports' listeners), serve `/metrics`, publish the sniffing proxy's counters, reload
//! the config file on SIGHUP ([`super::reload`]), until SIGINT or SIGTERM (or the proxy's
//! process dies); then stop the proxy.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use redirector::{
    dataplane::{
        follow::{Change, Follower},
        local,
        netlink::{Event, Events},
        steer::Steering,
        Dataplane,
    },
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
/// How often the namespace's addresses and interfaces are compared with the kernel's
/// anyway: rtnetlink events drive both, this only bounds what a lost event could cost.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// How often socket steering looks for listening sockets of the TO ports that are not in
/// `LISTENERS` (a restarted server's): one dump of the kernel's listening hash, so that a
/// new listener is steered to within this interval.
const LISTENER_INTERVAL: Duration = Duration::from_millis(200);

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
                served = reap_until_signal((&mut loaded.dp, &mut loaded.follower, loaded.steering.as_mut()), &mut timeouts, signals, metrics, fill, local, (&mut reloader, pins)) => served,
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
/// also stop the sniffing proxy); reloads the config file on SIGHUP; follows the
/// interfaces by rtnetlink events (re-attaching one that comes back). With `local` (local
/// clients redirected), also keeps the namespace's addresses in `LOCAL_ADDRS` current, on
/// each address event. With `steering`, keeps the TO ports' listeners in `LISTENERS`.
async fn reap_until_signal(
    (dp, follower, mut steering): (&mut Dataplane, &mut Follower, Option<&mut Steering>),
    timeouts: &mut reaper::Timeouts,
    mut signals: Signals,
    metrics: (Option<std::net::TcpListener>, MetricsBody),
    mut fill: FillWatch,
    local: bool,
    (reloader, pins): (&mut Reloader, (PathBuf, PathBuf)),
) -> anyhow::Result<()> {
    let (listener, render) = metrics;
    let mut metrics = MetricsServer::start(listener, render)?;
    let mut events = match Events::subscribe(local) {
        Ok(events) => Some(events),
        Err(e) => {
            log::warn!(
                "{e}: interfaces and addresses are compared with the kernel's every {} s instead",
                REAP_INTERVAL.as_secs()
            );
            None
        }
    };
    // What changed between the attachment and the subscription.
    log_changes(follower.resync(dp, Instant::now()));
    if local {
        refresh_local_addrs(dp);
    }
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.reset();
    let mut pace = reaper::Pace::default();
    let mut listeners = tokio::time::interval(LISTENER_INTERVAL);
    listeners.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = listeners.tick(), if steering.is_some() => {
                if let Some(steering) = steering.as_deref_mut() {
                    steering.sync_logged(dp);
                }
            }
            _ = signals.interrupt.recv() => break,
            _ = signals.terminate.recv() => break,
            _ = signals.hangup.recv() => reloader.on_hangup(Live {
                dp: &mut *dp,
                pins: (&pins.0, &pins.1),
                timeouts: &mut *timeouts,
                metrics: &mut metrics,
            }),
            received = next_events(&mut events) => match received {
                Ok(batch) => on_events(dp, follower, local, &batch),
                Err(e) => {
                    log::warn!("{e}; comparing with the kernel every {} s instead", REAP_INTERVAL.as_secs());
                    events = None;
                }
            },
            _ = resync.tick() => {
                log_changes(follower.resync(dp, Instant::now()));
                if local {
                    refresh_local_addrs(dp);
                }
            }
            _ = tick.tick() => {
                match pace.reap(dp, timeouts, std::time::Instant::now()) {
                    Ok(0) => {}
                    Ok(n) => log::debug!("reclaimed {n} closed or idle flows"),
                    Err(e) => log::warn!("reaping flows: {e}"),
                }
                if let Err(e) = fill.check(dp.maps()) {
                    log::warn!("reading the flow tables' fill: {e}");
                }
                if events.is_none() {
                    log_changes(follower.resync(dp, Instant::now()));
                    if local {
                        refresh_local_addrs(dp);
                    }
                }
            }
        }
    }
    log::info!("signal received, detaching");
    Ok(())
}

/// The next batch of rtnetlink events (never, without a subscription), with when it came.
async fn next_events(
    events: &mut Option<Events>,
) -> Result<(Instant, Vec<Event>), redirector::dataplane::netlink::RtnetlinkError> {
    match events {
        Some(events) => {
            let batch = events.next().await?;
            Ok((Instant::now(), batch))
        }
        None => std::future::pending().await,
    }
}

/// Applies a batch of events: interfaces to the follower, addresses to `LOCAL_ADDRS` (once
/// per batch).
fn on_events(
    dp: &mut Dataplane,
    follower: &mut Follower,
    local: bool,
    batch: &(Instant, Vec<Event>),
) {
    let (received, events) = batch;
    let mut addresses = false;
    for event in events {
        addresses |= matches!(event, Event::Addresses | Event::Overrun);
        log_changes(follower.on_event(dp, event, *received));
    }
    if local && addresses {
        refresh_local_addrs(dp);
    }
}

/// Logs what following the interfaces did.
fn log_changes(changes: Vec<Change>) {
    for change in changes {
        match change {
            Change::Attached { iface, millis } => {
                log::info!("re-attached to {iface} in {millis} ms");
            }
            Change::Lost {
                iface,
                renamed_to: Some(new_name),
            } => log::warn!(
                "interface {iface} was renamed to {new_name}: detached from it (the redirect \
                 follows the name {iface}); flows kept, waiting for an interface named {iface}"
            ),
            Change::Lost {
                iface,
                renamed_to: None,
            } => log::warn!(
                "interface {iface} went away: flows kept, the programs will be attached again \
                 as soon as an interface named {iface} appears"
            ),
        }
    }
}

/// Makes `LOCAL_ADDRS` the namespace's addresses now.
fn refresh_local_addrs(dp: &mut Dataplane) {
    let refreshed = local::namespace_addrs()
        .map_err(anyhow::Error::from)
        .and_then(|addrs| Ok(dp.set_local_addrs(&addrs)?));
    if let Err(e) = refreshed {
        log::warn!("refreshing the namespace's local addresses: {e:#}");
    }
}
