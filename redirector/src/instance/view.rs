//! What the noun commands (`status`, `flows`) read from an instance, in the shape their
//! `--json` prints (field names are stable, see docs/CONTROL.md).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use redirector_common::{
    addr::as_v4,
    conntrack,
    maps::{FlowKey, FlowValue},
};
use serde::Serialize;

use super::{control::ControlError, info::TimeoutsInfo, paths, Instance};
use crate::{
    dataplane::link_state::{InstanceMarker, LinkState},
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
    /// `xdp`, `xdp-generic` or `tc`.
    pub ingress_hook: String,
    /// `attached`, `severed` (the interface exists, the programs are not on it) or
    /// `missing` (no interface of that name), from the kernel's links; null if the kernel
    /// could not be asked.
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
                    .and_then(|marker| marker.states(&names))
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
    /// Seconds since the SYN.
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

#[cfg(test)]
mod tests {
    use redirector_common::{addr::v4_mapped, conntrack::STATE_ESTABLISHED};

    use super::*;

    fn flow(client_addr: [u8; 16], server_addr: [u8; 16]) -> (FlowKey, FlowValue) {
        let key = FlowKey {
            client_addr,
            server_addr,
            client_port_be: 40000u16.to_be(),
            _pad: 0,
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
