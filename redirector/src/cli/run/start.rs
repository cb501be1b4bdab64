//! Step 2 of `run`: load the dataplane, attach it to every interface, pin the instance,
//! publish the proxy's counters, install the signal handlers, and announce `ready`.

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use redirector::observe::sniff_publish::Publisher;
use redirector::{
    dataplane::{
        attach::{self, Hook, Mode},
        bpf_link,
        follow::{self, Follower, Published},
        iface,
        link_state::{InstanceMarker, LinkState},
        local,
        maps::Maps,
        steer::{self, Steering},
        Dataplane,
    },
    instance::{
        adopt::{self, AdoptedRule},
        info::{InstanceInfo, InterfaceInfo, RuleInfo, TimeoutsInfo, INSTANCE_FORMAT},
        lock::FileLock,
        paths,
        pinned::PinnedInstance,
    },
    observe::{
        interfaces, kernel_log,
        prometheus::{self, Labels},
        stats::Snapshot,
    },
    packet_mark::PacketMark,
    reaper::Timeouts,
    rules::{RedirectRule, RuleSlots},
};
use redirector_common::stats::Counter;
use redirector_sniff::counters::Counters;
use tokio::signal::unix::{signal, SignalKind};

use super::{
    prepare::{Adoption, Prepared},
    proxy_child::SniffChild,
    serve::{MetricsBody, Signals},
};
use crate::cli::sniff as sniff_cmd;

/// What starting produced: the dataplane, its pins, its instance file, the adoption note
/// of the ready line (if it adopted), and where each interface stands.
pub(super) type Begun = (
    Dataplane,
    PinnedInstance,
    InstanceInfo,
    Option<String>,
    Follower,
);

/// A loaded, attached and pinned redirector, announced ready; [`Started::serve`] runs it.
pub struct Started {
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) loaded: Loaded,
    pub(super) timeouts: Timeouts,
    pub(super) signals: Signals,
    /// The `--metrics` listener (if any) and what it serves (also to one a reload opens).
    pub(super) metrics: (Option<std::net::TcpListener>, MetricsBody),
    pub(super) sniff: Option<SniffChild>,
}

/// What stays in place while the loader serves, and [`Loaded::stop`] takes down.
pub struct Loaded {
    pub(super) dp: Dataplane,
    /// The configured interfaces and their links, followed by rtnetlink while serving
    /// (none with socket steering).
    pub(super) follower: Follower,
    /// With socket steering: its listeners, kept in `LISTENERS` while serving.
    pub(super) steering: Option<Steering>,
    pub(super) pinned: PinnedInstance,
    pub(super) ifaces: Vec<String>,
    pub(super) persist: bool,
    /// Local clients are redirected: `LOCAL_ADDRS` is kept current.
    pub(super) local: bool,
    /// The established-flow capacity (`--conntrack-size`), for the fill warnings.
    pub(super) conntrack_size: u32,
    /// The sniffing proxy's counters, and their publication for `redirector stats`.
    pub(super) sniff_counters: Option<Arc<Counters>>,
    pub(super) sniff_publisher: Option<Publisher>,
    /// The sniffing proxy's process exited while the loader served.
    pub(super) sniff_died: bool,
    pub(super) locks: Vec<FileLock>,
}

impl Prepared {
    /// Loads, attaches and pins (or adopts the persisted instance found by `prepare`);
    /// prints the ready line(s).
    pub fn start(mut self) -> anyhow::Result<Started> {
        let metrics_url = self
            .metrics
            .as_ref()
            .map(|listener| anyhow::Ok(format!("http://{}/metrics", listener.local_addr()?)))
            .transpose()?;
        let (mut dp, pinned, info, adopted, follower) = match self.adopt.take() {
            Some(adoption) if adoption.migrate => {
                self.start_migrated(adoption, metrics_url.clone())?
            }
            Some(adoption) => self.start_adopted(adoption, metrics_url.clone())?,
            None => self.start_fresh(metrics_url.clone())?,
        };
        for port in &self.disabled {
            dp.maps_mut().set_rule_enabled(*port, false)?;
        }
        let steering = (self.mode == Mode::Socket).then(Steering::default);
        let sniff_counters = self.sniff.as_ref().map(SniffChild::counters);
        let sniff_shown = self
            .sniff
            .as_ref()
            .map(|child| (child.counters(), child.max_conns() as u64));
        // `redirector stats` and `status` of other processes read the proxy's counters
        // and limit from this file.
        let sniff_publisher = sniff_shown
            .as_ref()
            .map(|(counters, max_conns)| {
                let path = paths::sniff_stats_file(info.netns_inode, info.key_iface());
                Publisher::create(path, Arc::clone(counters), *max_conns)
            })
            .transpose()
            .context("publishing the sniff counters")?;
        let render = self.metrics_body(&pinned, sniff_shown, follower.published())?;
        let metrics = (self.metrics.take(), render);
        // Handlers are installed before `ready` is printed: a SIGTERM right after it must
        // still detach cleanly instead of killing the process with its pins in place.
        let signals = {
            let _runtime = self.runtime.enter();
            Signals {
                interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
                terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
                hangup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
            }
        };
        if let Some(child) = &self.sniff {
            println!(
                "redirector sniff ready: listening on {}",
                sniff_cmd::listening(child.addrs())
            );
            println!("{}", sniff_cmd::limits_line(child.max_conns()));
        }
        print_ready(
            &info,
            (&self.rules, self.auto_note.as_deref()),
            &metrics_url,
            adopted.as_deref(),
            self.mark,
        );
        Ok(Started {
            runtime: self.runtime,
            loaded: Loaded {
                dp,
                follower,
                steering,
                pinned,
                ifaces: self.ifaces,
                persist: self.persist,
                local: self.local.cgroup().is_some(),
                conntrack_size: self.conntrack_size,
                sniff_counters,
                sniff_publisher,
                sniff_died: false,
                locks: self.locks,
            },
            timeouts: self.timeouts,
            signals,
            metrics,
            sniff: self.sniff,
        })
    }

    /// What every freshly loaded object gets, whether it starts, adopts or migrates an
    /// instance: its kernel log drained on the runtime, this loader's `--mark`, and (local
    /// clients redirected) the namespace's addresses, before any program is attached.
    pub(super) fn configure_loaded(&self, dp: &mut Dataplane) -> anyhow::Result<()> {
        kernel_log::spawn(dp, self.runtime.handle());
        dp.set_mark(self.mark)?;
        if self.local.cgroup().is_some() {
            dp.set_local_addrs(&local::namespace_addrs()?)?;
        }
        Ok(())
    }

    /// A new instance: loads, attaches, pins.
    fn start_fresh(&self, metrics_url: Option<String>) -> anyhow::Result<Begun> {
        let mut dp = Dataplane::load(self.conntrack_size)?;
        self.configure_loaded(&mut dp)?;
        dp.set_rules(&self.rules)?;
        dp.set_allowed_sources(&self.allow)?;
        let mut links = Vec::new();
        let mut follower = Follower::new(None);
        let interfaces = if self.mode == Mode::Socket {
            self.attach_socket(&mut dp, &mut links)?
        } else {
            self.attach_interfaces(&mut dp, &mut links, &mut follower)?
        };
        links.extend(self.attach_local(&mut dp)?);
        let info = self.info(interfaces, metrics_url);
        let pinned = PinnedInstance::create(&dp, &info, links).context("pinning the maps")?;
        log::info!("maps pinned in {}", pinned.dir().display());
        if self.persist {
            follower.pin_links_in(pinned.dir().join(paths::LINKS_DIR));
        }
        Ok((dp, pinned, info, None, follower))
    }

    /// Socket steering: the listeners of the TO ports into `LISTENERS` first (a connection
    /// steered before would find none and be refused), then the program on the network
    /// namespace. The interfaces only name the instance.
    fn attach_socket(
        &self,
        dp: &mut Dataplane,
        links: &mut Vec<(String, aya::programs::links::FdLink)>,
    ) -> anyhow::Result<Vec<InterfaceInfo>> {
        Steering::default().sync(dp)?;
        let held = steer::attach(dp)?;
        if self.persist {
            links.push((steer::LINK_PIN_NAME.to_string(), held.take_link(dp)?));
        }
        log::info!("socket steering attached to the network namespace");
        Ok(self
            .ifaces
            .iter()
            .map(|name| InterfaceInfo {
                name: name.clone(),
                ingress_hook: steer::HOOK_NAME.to_string(),
            })
            .collect())
    }

    /// The packet rewrite: the programs on every interface, followed by `follower`.
    fn attach_interfaces(
        &self,
        dp: &mut Dataplane,
        links: &mut Vec<(String, aya::programs::links::FdLink)>,
        follower: &mut Follower,
    ) -> anyhow::Result<Vec<InterfaceInfo>> {
        let mut interfaces = Vec::new();
        for name in &self.ifaces {
            let ifindex = iface::ifindex(name)?;
            let attached = attach::attach(dp, name, self.mode)?;
            let hook = attached.hook;
            if self.persist {
                let (ingress, egress) = attached.take_links(dp)?;
                links.push((paths::link_pin_name(name, "ingress"), ingress));
                links.push((paths::link_pin_name(name, "egress"), egress));
                follower.attached(name, hook, ifindex, None);
            } else {
                follower.attached(name, hook, ifindex, Some(attached));
            }
            log::info!("attached to {name}: ingress {hook}, egress tc");
            interfaces.push(InterfaceInfo {
                name: name.clone(),
                ingress_hook: hook.to_string(),
            });
        }
        Ok(interfaces)
    }

    /// Adopts the persisted instance `adoption`: loads the programs on its pinned maps,
    /// installs this loader's rules and allow list in them, replaces the programs on its
    /// pinned links (`bpf_link_update`: never a moment without one), then rewrites its
    /// instance file. Until that last step an error leaves the pins as they were (the old
    /// programs or, on interfaces already updated, the new ones, on the same maps).
    fn start_adopted(
        &self,
        adoption: Adoption,
        metrics_url: Option<String>,
    ) -> anyhow::Result<Begun> {
        let old = &adoption.old;
        let dir = paths::pin_dir(old.netns_inode, old.key_iface());
        let mut dp = Dataplane::load_pinned(old.conntrack_size, &dir)
            .context("loading the new programs on the persisted maps")?;
        self.configure_loaded(&mut dp)?;
        let stats_len = dp.maps().stats_len()?;
        if stats_len < Counter::COUNT {
            // A live map cannot grow; its missing counters read as 0 (`Maps::counters`).
            log::warn!(
                "the adopted STATS map predates the last {} counters (local_* among them): \
                 they stay 0 for this instance (`redirector detach` and a new start, which \
                 drops every flow, gives a full map)",
                Counter::COUNT - stats_len
            );
        }
        let flow_slots = || -> anyhow::Result<_> {
            Ok(dp.flows()?.iter().map(|(_, flow)| flow.rule_slot).collect())
        };
        let (rules, next_slot) = adopt::assign_slots(old, &self.rules, flow_slots)?;
        adopt::apply_rules(dp.maps_mut(), old, &rules)?;
        adopt::apply_allow(dp.maps_mut(), &self.allow)?;
        let links = dir.join(paths::LINKS_DIR);
        let mut follower = Follower::new(Some(links.clone()));
        for (name, hook) in &adoption.hooks {
            adopt_links(&mut dp, &mut follower, &links, name, *hook)?;
        }
        if adoption.socket {
            Steering::default().sync(&mut dp)?;
            steer::adopt(&mut dp, &links.join(steer::LINK_PIN_NAME))?;
            log::info!("adopted socket steering on the network namespace");
        }
        self.adopt_local(&mut dp, &dir, old)?;
        let mut info = self.info(old.interfaces.clone(), metrics_url);
        info.mode.clone_from(&old.mode);
        info.rules = rules.iter().map(AdoptedRule::info).collect();
        info.next_slot = next_slot;
        let established = dp.maps().established_count()?;
        let pinned = PinnedInstance::adopt(&info).context("rewriting the instance file")?;
        let note = if adoption.socket {
            format!("adopted socket steering from pid {}", old.pid)
        } else {
            format!(
                "adopted {established} established flows from pid {}",
                old.pid
            )
        };
        log::info!(
            "{note} (maps and links pinned in {})",
            pinned.dir().display()
        );
        Ok((dp, pinned, info, Some(note), follower))
    }

    /// The instance file of what was attached.
    pub(super) fn info(
        &self,
        interfaces: Vec<InterfaceInfo>,
        metrics: Option<String>,
    ) -> InstanceInfo {
        let mut slots = RuleSlots::default();
        let rules = slots.assign(&self.rules);
        InstanceInfo {
            format: INSTANCE_FORMAT,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            netns_inode: paths::netns_inode(),
            netns_cookie: local::netns_cookie().ok(),
            mode: self.mode.to_string(),
            interfaces,
            conntrack_size: self.conntrack_size,
            rules: rules
                .into_iter()
                .map(|(rule, slot)| RuleInfo::new(rule, slot))
                .collect(),
            next_slot: slots.next_fresh(),
            timeouts: Some(TimeoutsInfo::from(&self.timeouts)),
            metrics,
            persist: self.persist,
            local_cgroup: self.local.cgroup().map(|path| path.display().to_string()),
            mark: self.mark.map(|mark| mark.to_string()),
        }
    }

    /// What `/metrics` serves: the maps (through handles of its own, opened from their
    /// pins, so scrapes never wait for the reaper's `&mut Dataplane`) and the sniffing
    /// proxy's counters and connection limit.
    fn metrics_body(
        &self,
        pinned: &PinnedInstance,
        sniff: Option<(Arc<Counters>, u64)>,
        followed: Published,
    ) -> anyhow::Result<MetricsBody> {
        let maps = Maps::from_pins(pinned.dir()).context("opening the maps for --metrics")?;
        let marker = InstanceMarker::from_pins(pinned.dir())?;
        let ifaces = self.ifaces.clone();
        let steering = self.mode == Mode::Socket;
        let labels = Labels {
            iface: self.ifaces[0].clone(),
            conntrack_capacity: self.conntrack_size,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        Ok(Box::new(move || {
            let snapshot = Snapshot::read(&maps).map_err(|e| format!("reading the maps: {e}"))?;
            let mut registry = Registry::default();
            prometheus::register(&mut registry, snapshot, labels.clone());
            // Listing the kernel's links takes CAP_SYS_ADMIN, which the systemd unit does
            // not grant: then the loader's own view, which rtnetlink keeps current.
            let states = marker.states_for(&ifaces, steering).unwrap_or_else(|e| {
                log::debug!("reading the interfaces' links for /metrics: {e}");
                if steering {
                    // This loader attached (or adopted) the namespace's link and holds it.
                    return ifaces
                        .iter()
                        .map(|name| (name.clone(), LinkState::Attached))
                        .collect();
                }
                followed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .map(|(name, attached)| {
                        let state = if *attached {
                            LinkState::Attached
                        } else if iface::ifindex(name).is_ok() {
                            LinkState::Severed
                        } else {
                            LinkState::Missing
                        };
                        (name.clone(), state)
                    })
                    .collect()
            });
            interfaces::register(&mut registry, states);
            if let Some((counters, max_conns)) = &sniff {
                redirector_sniff::metrics::register(
                    &mut registry,
                    Arc::clone(counters),
                    *max_conns,
                );
            }
            Ok(registry)
        }))
    }
}

/// Adopts the pinned links of `name` (in `links`) into `dp` and `follower`: links attached
/// to the interface that now has that name get the new programs in place
/// (`bpf_link_update`); links severed while no loader ran (the interface went away, or was
/// renamed) are replaced by new ones attached to the interface of that name, or, if there
/// is none, the loader waits for it.
pub(super) fn adopt_links(
    dp: &mut Dataplane,
    follower: &mut Follower,
    links: &std::path::Path,
    name: &str,
    hook: Hook,
) -> anyhow::Result<()> {
    let ingress = links.join(paths::link_pin_name(name, "ingress"));
    let egress = links.join(paths::link_pin_name(name, "egress"));
    let now = iface::ifindex(name).ok();
    let on = |path: &std::path::Path| bpf_link::pinned_info(path).ok().map(|i| i.ifindex);
    let (on_ingress, on_egress) = (on(&ingress), on(&egress));
    if let Some(ifindex) = now.filter(|i| on_ingress == Some(*i) && on_egress == Some(*i)) {
        let held = attach::adopt(dp, name, hook, &ingress, &egress)?;
        follower.attached(name, hook, ifindex, Some(held));
        log::info!("adopted the links on {name}: ingress {hook}, egress tc");
        return Ok(());
    }
    // Still attached to a device renamed away from `name`: it no longer carries the redirect.
    for (path, on) in [(&ingress, on_ingress), (&egress, on_egress)] {
        if on.is_some_and(|index| index != 0) {
            let fd = bpf_link::obj_get(path)?;
            bpf_link::detach(std::os::fd::AsFd::as_fd(&fd))
                .with_context(|| format!("detaching {}", path.display()))?;
        }
    }
    match now {
        Some(ifindex) => {
            let held = follow::attach_pinned(dp, name, hook, Some(links))?;
            follower.attached(name, hook, ifindex, held);
            log::warn!(
                "the persisted links on {name} were severed (the interface went away or was \
                 renamed while no loader ran): attached afresh to {name}, ingress {hook}, \
                 egress tc, with every pinned flow"
            );
        }
        None => {
            follower.missing(name, hook);
            log::warn!(
                "interface {name} is missing (its persisted links were severed): the flows \
                 are kept and the programs will be attached as soon as {name} appears"
            );
        }
    }
    Ok(())
}

/// `redirector ready: IFACE (HOOK), …[ [auto: CHOICE: WHY]] rules FROM->TO … conntrack-size
/// N[ mark V/M][ metrics URL][ adopted N established flows from pid P]`; steering sockets,
/// `steering sockets (no flow table)` in place of the conntrack size.
fn print_ready(
    info: &InstanceInfo,
    (rules, auto_note): (&[RedirectRule], Option<&str>),
    metrics_url: &Option<String>,
    adopted: Option<&str>,
    mark: Option<PacketMark>,
) {
    let hooks: Vec<String> = info
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.ingress_hook))
        .collect();
    let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
    let metrics_note = match metrics_url {
        Some(url) => format!(" metrics {url}"),
        None => String::new(),
    };
    let adopted_note = adopted.map(|note| format!(" {note}")).unwrap_or_default();
    let mark_note = mark.map(|mark| format!(" mark {mark}")).unwrap_or_default();
    let auto_note = auto_note
        .map(|note| format!(" [auto: {note}]"))
        .unwrap_or_default();
    let table = if info.steers_sockets() {
        "steering sockets (no flow table)".to_string()
    } else {
        format!("conntrack-size {}", info.conntrack_size)
    };
    println!(
        "redirector ready: {}{auto_note} rules {} {table}{mark_note}{metrics_note}{adopted_note}",
        hooks.join(", "),
        rules.join(" "),
    );
}
