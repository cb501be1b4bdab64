//! What the noun commands (`status`, `flows`) read from an instance, in the shape their
//! `--json` prints (field names are stable, see docs/CONTROL.md).

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use redirector_common::{
    addr::as_v4,
    conntrack,
    maps::{FlowKey, FlowValue, LISTENERS_MAP, LISTENER_V4},
};
use serde::Serialize;

use super::{control::ControlError, info::TimeoutsInfo, paths, Instance};
use crate::{
    dataplane::{
        link_state::{InstanceMarker, LinkState},
        listeners,
    },
    kernel_truth::sock_diag::{self, TcpState},
    observe::{sniff_publish, stats::evicted},
    reaper::monotonic_ns,
};

/// `redirector status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    /// Loader pid.
    pub pid: u32,
    /// Loader version.
    pub version: String,
    /// Requested `--mode`.
    pub mode: String,
    /// Interfaces and the ingress hook on each.
    pub interfaces: Vec<InterfaceJson>,
    /// Rules in slot order.
    pub rules: Vec<RuleJson>,
    /// Conntrack fill.
    pub conntrack: ConntrackJson,
    /// Which sources may create flows.
    pub sources: SourcesJson,
    /// Idle time after which the reaper forgets a flow, per state (null if the loader did
    /// not record them).
    pub timeouts: Option<TimeoutsInfo>,
    /// `http://ADDR/metrics` if the loader serves `--metrics`, else null.
    pub metrics: Option<String>,
    /// Started with `--persist` (programs stay attached after the loader exits).
    pub persist: bool,
    /// The cgroup whose local clients are redirected (`--local-cgroup`); null if none
    /// (`--no-local`, or a loader older than local redirection).
    pub local_cgroup: Option<String>,
    /// The loader runs; false for a persisted instance whose loader exited (then no
    /// reaper runs and no metrics are served).
    pub loader_running: bool,
    /// The sniffing proxy the loader runs (`run --sniff-listen`), else null.
    pub sniff: Option<SniffJson>,
    /// Socket steering (`mode` `socket`): the listening sockets new connections are
    /// handed to; null for the packet rewrite.
    pub steering: Option<SteeringJson>,
}

/// Socket steering in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct SteeringJson {
    /// The listening sockets in `LISTENERS`: `ADDR:PORT` (`0.0.0.0`/`[::]` for wildcards)
    /// and the family of the connections each takes (`ipv4`, `ipv6`).
    pub listeners: Vec<ListenerJson>,
    /// TO ports of the rules that no listening socket in `LISTENERS` serves: new
    /// connections steered there are refused (`steer_no_listener`).
    pub ports_without_listener: Vec<u16>,
}

/// One listening socket in [`SteeringJson`].
#[derive(Debug, Serialize)]
pub struct ListenerJson {
    /// Bound address and port.
    pub addr: String,
    /// `ipv4` or `ipv6`: the connections it takes.
    pub family: &'static str,
}

/// The sniffing proxy in [`StatusJson`], from the file the loader publishes
/// ([`crate::observe::sniff_publish`]).
#[derive(Debug, Serialize)]
pub struct SniffJson {
    /// Connections it holds open at once: `--sniff-max-conns`, or the default derived
    /// from the open-file limit. Null if the loader did not publish it.
    pub max_conns: Option<u64>,
}

/// The source filter in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct SourcesJson {
    /// True if only sources in `allow` create flows; false if every source does.
    pub filtered: bool,
    /// Allowed prefixes (`--allow`, `redirector allow`), e.g. `10.0.0.0/8`.
    pub allow: Vec<String>,
}

/// One interface in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct InterfaceJson {
    /// Interface name.
    pub name: String,
    /// `xdp`, `xdp-generic` or `tc`; `socket` for socket steering (no program on the
    /// interface, which only names the instance).
    pub ingress_hook: String,
    /// `attached`, `severed` (the interface exists, the programs are not on it) or
    /// `missing` (no interface of that name), from the kernel's links; null if the kernel
    /// could not be asked. Socket steering: `attached` while its program is on the network
    /// namespace, else `severed`.
    pub link: Option<LinkState>,
}

/// One rule in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct RuleJson {
    /// Port clients connect to.
    pub from_port: u16,
    /// Port the server listens on.
    pub to_port: u16,
    /// Counter slot.
    pub slot: u32,
    /// New flows are redirected.
    pub enabled: bool,
}

/// Conntrack fill in [`StatusJson`].
#[derive(Debug, Serialize)]
pub struct ConntrackJson {
    /// Entries in both tables.
    pub tracked: usize,
    /// Established capacity (`--conntrack-size`).
    pub size: u32,
    /// Half-open entries the LRU evicted to make room (`stats::evicted`).
    pub evicted: u64,
    /// The two tables, their fill and memory.
    #[serde(flatten)]
    pub tables: crate::observe::flow_tables::TablesJson,
}

/// Reads the status of `instance`.
pub fn status(instance: &Instance) -> Result<StatusJson, ControlError> {
    let info = &instance.info;
    Ok(StatusJson {
        pid: info.pid,
        version: info.version.clone(),
        mode: info.mode.clone(),
        interfaces: {
            let names: Vec<String> = info.interfaces.iter().map(|i| i.name.clone()).collect();
            let states =
                InstanceMarker::from_pins(&info.pin_dir_from_here(instance.loader_running))
                    .and_then(|marker| marker.states_for(&names, info.steers_sockets()))
                    .map_err(|e| log::warn!("reading the interfaces' links: {e}"))
                    .unwrap_or_default();
            info.interfaces
                .iter()
                .map(|i| InterfaceJson {
                    name: i.name.clone(),
                    ingress_hook: i.ingress_hook.clone(),
                    link: states
                        .iter()
                        .find(|(name, _)| *name == i.name)
                        .map(|(_, state)| *state),
                })
                .collect()
        },
        rules: instance
            .maps
            .rules()?
            .into_iter()
            .map(|(from_port, rule)| RuleJson {
                from_port,
                to_port: rule.to_port,
                slot: rule.slot,
                enabled: rule.enabled != 0,
            })
            .collect(),
        conntrack: {
            let counters = instance.maps.counters()?;
            // One dump of each table serves both the per-table fill and the total.
            let tables = crate::observe::flow_tables::TablesJson::read(
                &instance.maps,
                info.conntrack_size,
                &counters,
            )?;
            let tracked = tables.established + tables.half_open;
            ConntrackJson {
                tracked,
                size: info.conntrack_size,
                evicted: evicted(&counters, tracked),
                tables,
            }
        },
        sources: SourcesJson {
            filtered: instance.maps.filtering_sources()?,
            allow: instance
                .maps
                .allowed_sources()?
                .iter()
                .map(ToString::to_string)
                .collect(),
        },
        timeouts: info.timeouts,
        metrics: info.metrics.clone().filter(|_| instance.loader_running),
        persist: info.persist,
        local_cgroup: info.local_cgroup.clone(),
        loader_running: instance.loader_running,
        sniff: sniff_publish::read(
            &paths::sniff_stats_file(info.netns_inode, info.key_iface()),
            info.pid,
        )
        .map_err(Box::new)?
        .map(|published| SniffJson {
            max_conns: published.max_conns,
        }),
        steering: info
            .steers_sockets()
            .then(|| steering(instance))
            .transpose()?,
    })
}

/// What socket steering hands connections to, from the pinned `LISTENERS`.
fn steering(instance: &Instance) -> Result<SteeringJson, ControlError> {
    let dir = instance.info.pin_dir_from_here(instance.loader_running);
    let keys = listeners::pinned_keys(&dir.join(LISTENERS_MAP)).map_err(Box::new)?;
    let mut ports_without_listener: Vec<u16> = instance
        .maps
        .rules()?
        .into_iter()
        .map(|(_, rule)| rule.to_port)
        .filter(|port| !keys.iter().any(|k| k.port == *port))
        .collect();
    ports_without_listener.sort_unstable();
    ports_without_listener.dedup();
    let listeners = keys
        .iter()
        .map(|key| {
            let v4 = key.family == LISTENER_V4;
            let addr = match (key.addr == [0; 16], v4) {
                (true, true) => IpAddr::from([0, 0, 0, 0]),
                (true, false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                (false, _) => ip(&key.addr),
            };
            ListenerJson {
                addr: SocketAddr::new(addr, key.port).to_string(),
                family: if v4 { "ipv4" } else { "ipv6" },
            }
        })
        .collect();
    Ok(SteeringJson {
        listeners,
        ports_without_listener,
    })
}

/// One flow in `redirector flows --json`.
#[derive(Debug, Serialize)]
pub struct FlowJson {
    /// Client address and port, e.g. `10.0.0.1:40000` or `[fd00::1]:40000`.
    pub client: String,
    /// Server address the client connected to.
    pub server_addr: String,
    /// Port the client connected to (the rule's FROM).
    pub orig_port: u16,
    /// Port the server listens on (the rule's TO).
    pub target_port: u16,
    /// `syn_sent`, `syn_recv`, `established`, `fin_wait`, `closing` (else `unknown`).
    pub state: &'static str,
    /// Seconds since the SYN (0 for a connection socket steering made: the socket table
    /// does not say).
    pub age_secs: u64,
    /// Seconds since the last packet (1 s granularity).
    pub idle_secs: u64,
}

fn ip(addr: &[u8; 16]) -> IpAddr {
    match as_v4(addr) {
        Some(v4) => IpAddr::from(v4),
        None => IpAddr::V6(Ipv6Addr::from(*addr)),
    }
}

fn flow_json(key: &FlowKey, value: &FlowValue, now_ns: u64) -> FlowJson {
    let secs = |ns: u64| now_ns.saturating_sub(ns) / 1_000_000_000;
    FlowJson {
        client: SocketAddr::new(ip(&key.client_addr), u16::from_be(key.client_port_be)).to_string(),
        server_addr: ip(&key.server_addr).to_string(),
        orig_port: value.orig_port,
        target_port: value.target_port,
        state: conntrack::state_name(value.state),
        age_secs: secs(value.created_ns),
        idle_secs: secs(value.last_seen_ns),
    }
}

/// Tracked flows, to `port` (the FROM port) only if given, oldest first.
pub fn flows(instance: &Instance, port: Option<u16>) -> Result<Vec<FlowJson>, ControlError> {
    if instance.info.steers_sockets() {
        return steered(instance, port);
    }
    let now = monotonic_ns();
    let mut flows: Vec<(FlowKey, FlowValue)> = instance
        .maps
        .flows()?
        .into_iter()
        .filter(|(_, v)| port.is_none_or(|p| v.orig_port == p))
        .collect();
    flows.sort_by_key(|(_, v)| v.created_ns);
    Ok(flows.iter().map(|(k, v)| flow_json(k, v, now)).collect())
}

/// Socket steering tracks nothing: its connections are the socket table's on the rules'
/// FROM ports (each local port is the port the client dialled), listed from sock_diag.
/// `age_secs` is 0: the socket table does not say when a connection opened.
fn steered(instance: &Instance, port: Option<u16>) -> Result<Vec<FlowJson>, ControlError> {
    let rules: HashMap<u16, u16> = instance
        .maps
        .rules()?
        .into_iter()
        .filter(|(from, _)| port.is_none_or(|p| *from == p))
        .map(|(from, rule)| (from, rule.to_port))
        .collect();
    let ports: HashSet<u16> = rules.keys().copied().collect();
    let mut connections = sock_diag::connections(&ports).map_err(Box::new)?;
    connections.sort_by_key(|c| {
        (
            c.tuple.server_port,
            c.tuple.client_addr,
            c.tuple.client_port,
        )
    });
    Ok(connections
        .iter()
        .map(|c| FlowJson {
            client: SocketAddr::new(ip(&c.tuple.client_addr), c.tuple.client_port).to_string(),
            server_addr: ip(&c.tuple.server_addr).to_string(),
            orig_port: c.tuple.server_port,
            target_port: rules[&c.tuple.server_port],
            state: socket_state_name(c.state),
            age_secs: 0,
            idle_secs: u64::from(c.idle_ms.unwrap_or(0) / 1000),
        })
        .collect())
}

/// A socket's state under the names `flows` uses for tracked flows.
fn socket_state_name(state: TcpState) -> &'static str {
    match state {
        TcpState::Established => "established",
        TcpState::SynSent => "syn_sent",
        TcpState::SynRecv | TcpState::NewSynRecv => "syn_recv",
        TcpState::FinWait1 | TcpState::FinWait2 | TcpState::CloseWait => "fin_wait",
        TcpState::TimeWait | TcpState::Close | TcpState::LastAck | TcpState::Closing => "closing",
        TcpState::Listen | TcpState::Other(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use redirector_common::{addr::v4_mapped, conntrack::STATE_ESTABLISHED};

    use super::*;

    fn flow(client_addr: [u8; 16], server_addr: [u8; 16]) -> (FlowKey, FlowValue) {
        let key = FlowKey {
            client_addr,
            server_addr,
            client_port_be: 40000u16.to_be(),
            lane: 0,
        };
        let value = FlowValue {
            orig_port: 443,
            target_port: 8443,
            state: STATE_ESTABLISHED,
            fin_flags: 0,
            flags: 0,
            rule_slot: 1,
            _pad2: 0,
            created_ns: 1_000_000_000,
            last_seen_ns: 9_500_000_000,
        };
        (key, value)
    }

    #[test]
    fn flow_json_of_v4_and_v6() {
        let (k, v) = flow(v4_mapped([10, 0, 0, 1]), v4_mapped([10, 0, 0, 2]));
        let j = flow_json(&k, &v, 11_000_000_000);
        assert_eq!(j.client, "10.0.0.1:40000");
        assert_eq!(j.server_addr, "10.0.0.2");
        assert_eq!((j.orig_port, j.target_port), (443, 8443));
        assert_eq!(j.state, "established");
        assert_eq!((j.age_secs, j.idle_secs), (10, 1));

        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        let (k, v) = flow(v6.octets(), v6.octets());
        let j = flow_json(&k, &v, 0);
        assert_eq!(j.client, "[fd00::1]:40000");
        assert_eq!((j.age_secs, j.idle_secs), (0, 0), "clock before creation");
    }

    #[test]
    fn flow_json_field_names_are_stable() {
        let (k, v) = flow(v4_mapped([10, 0, 0, 1]), v4_mapped([10, 0, 0, 2]));
        let text = serde_json::to_string(&flow_json(&k, &v, 0)).unwrap();
        for field in [
            "\"client\"",
            "\"server_addr\"",
            "\"orig_port\"",
            "\"target_port\"",
            "\"state\"",
            "\"age_secs\"",
            "\"idle_secs\"",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
    }
}
