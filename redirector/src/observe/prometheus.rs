//! Prometheus text exposition (format 0.0.4) of a [`Snapshot`]: a pure function, so the
//! whole `/metrics` body is unit-tested without a kernel.
//!
//! Every series carries `iface`, the interface that names the instance (its first
//! `--iface`): counters are per instance, not per interface.

use std::fmt::Write as _;

use redirector_common::stats::Counter;

use super::stats::Snapshot;

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the scrape needs besides the counters.
#[derive(Clone, Debug)]
pub struct Labels {
    /// Interface that names the instance.
    pub iface: String,
    /// Conntrack capacity (`--conntrack-size`).
    pub conntrack_capacity: u32,
    /// Version of the loader.
    pub version: String,
}

/// Metric family and label (key, value) of one global counter.
///
/// Exhaustive on purpose: a new counter does not compile until it is given a series.
pub fn global_series(counter: Counter) -> (&'static str, &'static str, &'static str) {
    const PASSED: &str = "redirector_packets_passed_total";
    const EVENTS: &str = "redirector_flow_events_total";
    const REWRITES: &str = "redirector_rewrites_total";
    match counter {
        Counter::PassNotIp => (PASSED, "reason", "not_ip"),
        Counter::PassNotTcp => (PASSED, "reason", "not_tcp"),
        Counter::PassTruncated => (PASSED, "reason", "truncated"),
        Counter::PassBadIpHeader => (PASSED, "reason", "bad_ip_header"),
        Counter::PassFragment => (PASSED, "reason", "fragment"),
        Counter::PassIpv6ExtUnsupported => (PASSED, "reason", "ipv6_ext_unsupported"),
        Counter::PassVlanDepth => (PASSED, "reason", "vlan_depth"),
        Counter::PassUntracked => (PASSED, "reason", "untracked"),
        Counter::PassRuleDisabled => (PASSED, "reason", "rule_disabled"),
        Counter::PassSourceDenied => (PASSED, "reason", "source_denied"),
        Counter::PassPortMismatch => (PASSED, "reason", "port_mismatch"),
        Counter::FlowCreated => (EVENTS, "event", "created"),
        Counter::FlowInsertFailed => (EVENTS, "event", "insert_failed"),
        Counter::FlowClosedRst => (EVENTS, "event", "closed_rst"),
        Counter::FlowClosedFin => (EVENTS, "event", "closed_fin"),
        Counter::RewriteIngress => (REWRITES, "result", "in"),
        Counter::RewriteEgress => (REWRITES, "result", "out"),
        Counter::RewriteFailed => (REWRITES, "result", "failed"),
        Counter::FlowReplaced => (EVENTS, "event", "replaced"),
        Counter::FlowReaped => (EVENTS, "event", "reaped"),
        Counter::FlowFlushed => (EVENTS, "event", "flushed"),
        Counter::PassTableFull => (PASSED, "reason", "table_full"),
        Counter::FlowPromoted => (EVENTS, "event", "promoted"),
        Counter::FlowPromoteFailed => (EVENTS, "event", "promote_failed"),
    }
}

/// HELP text of each family, in output order.
const FAMILIES: [(&str, &str, &str); 13] = [
    (
        "redirector_build_info",
        "gauge",
        "Version of the running loader (always 1).",
    ),
    (
        "redirector_rule_enabled",
        "gauge",
        "1 if new connections to the rule's FROM port are redirected, else 0.",
    ),
    (
        "redirector_rule_flows_new_total",
        "counter",
        "Flows created by the rule.",
    ),
    (
        "redirector_rule_packets_total",
        "counter",
        "Packets rewritten for the rule: in = client to server, out = server to client.",
    ),
    (
        "redirector_rule_bytes_total",
        "counter",
        "Bytes (L3 length) of the packets rewritten for the rule.",
    ),
    (
        "redirector_packets_passed_total",
        "counter",
        "Packets passed untouched, by reason.",
    ),
    (
        "redirector_flow_events_total",
        "counter",
        "Conntrack flow events.",
    ),
    (
        "redirector_rewrites_total",
        "counter",
        "Port rewrites: in (FROM to TO), out (TO to FROM), failed (helper error, packet passed).",
    ),
    (
        "redirector_conntrack_entries",
        "gauge",
        "Flows tracked in the conntrack table.",
    ),
    (
        "redirector_conntrack_capacity",
        "gauge",
        "Established flows held at most (--conntrack-size; never evicted: when full, new connections pass unredirected).",
    ),
    (
        "redirector_conntrack_established_entries",
        "gauge",
        "Flows in the established table (never evicted).",
    ),
    (
        "redirector_conntrack_half_open_entries",
        "gauge",
        "Flows in the half-open table (handshake not complete).",
    ),
    (
        "redirector_conntrack_half_open_capacity",
        "gauge",
        "Size of the half-open table (LRU: evicts only other half-open flows when full).",
    ),
];

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The `/metrics` body for `snapshot`.
pub fn render(snapshot: &Snapshot, labels: &Labels) -> String {
    let iface = format!("iface=\"{}\"", escape_label(&labels.iface));
    let mut out = String::new();
    for (name, kind, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let mut sample = |labels: &str, value: u64| {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        };
        match name {
            "redirector_build_info" => {
                sample(&format!("version=\"{}\"", escape_label(&labels.version)), 1)
            }
            "redirector_conntrack_entries" => sample(&iface, snapshot.flows as u64),
            "redirector_conntrack_capacity" => sample(&iface, u64::from(labels.conntrack_capacity)),
            "redirector_conntrack_established_entries" => {
                sample(&iface, snapshot.established as u64)
            }
            "redirector_conntrack_half_open_entries" => sample(&iface, snapshot.half_open as u64),
            "redirector_conntrack_half_open_capacity" => sample(
                &iface,
                u64::from(redirector_common::maps::half_open_size(
                    labels.conntrack_capacity,
                )),
            ),
            rule_family if rule_family.starts_with("redirector_rule_") => {
                for r in &snapshot.rules {
                    let rule = format!(
                        "{iface},from_port=\"{}\",to_port=\"{}\"",
                        r.rule.from_port, r.rule.to_port
                    );
                    let c = &r.counters;
                    match rule_family {
                        "redirector_rule_enabled" => sample(&rule, u64::from(r.enabled)),
                        "redirector_rule_flows_new_total" => sample(&rule, c.flows_new),
                        "redirector_rule_packets_total" => {
                            sample(&format!("{rule},direction=\"in\""), c.packets_in);
                            sample(&format!("{rule},direction=\"out\""), c.packets_out);
                        }
                        _ => {
                            sample(&format!("{rule},direction=\"in\""), c.bytes_in);
                            sample(&format!("{rule},direction=\"out\""), c.bytes_out);
                        }
                    }
                }
            }
            family => {
                for counter in Counter::ALL {
                    let (series, key, value) = global_series(counter);
                    if series == family {
                        sample(&format!("{iface},{key}=\"{value}\""), snapshot.get(counter));
                    }
                }
                if family == "redirector_flow_events_total" {
                    sample(&format!("{iface},event=\"evicted\""), snapshot.evicted);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use redirector_common::maps::RuleStats;

    use super::*;
    use crate::{observe::stats::RuleSnapshot, rules::RedirectRule};

    fn snapshot() -> Snapshot {
        let mut counters = [0u64; Counter::COUNT as usize];
        for (i, c) in counters.iter_mut().enumerate() {
            *c = 100 + i as u64;
        }
        Snapshot {
            rules: vec![
                RuleSnapshot {
                    rule: RedirectRule {
                        from_port: 80,
                        to_port: 8080,
                    },
                    slot: 0,
                    enabled: true,
                    counters: RuleStats {
                        packets_in: 9,
                        bytes_in: 709,
                        packets_out: 7,
                        bytes_out: 633,
                        flows_new: 1,
                    },
                },
                RuleSnapshot {
                    rule: RedirectRule {
                        from_port: 443,
                        to_port: 8443,
                    },
                    slot: 1,
                    enabled: false,
                    counters: RuleStats::default(),
                },
            ],
            counters,
            flows: 3,
            established: 2,
            half_open: 1,
            evicted: 7,
        }
    }

    fn labels() -> Labels {
        Labels {
            iface: "veth-s".into(),
            conntrack_capacity: 65536,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn renders_rule_global_and_gauge_series() {
        let text = render(&snapshot(), &labels());
        for line in [
            "redirector_build_info{version=\"0.1.0\"} 1",
            "redirector_rule_enabled{iface=\"veth-s\",from_port=\"443\",to_port=\"8443\"} 0",
            "redirector_rule_flows_new_total{iface=\"veth-s\",from_port=\"80\",to_port=\"8080\"} 1",
            "redirector_rule_packets_total{iface=\"veth-s\",from_port=\"80\",to_port=\"8080\",direction=\"in\"} 9",
            "redirector_rule_packets_total{iface=\"veth-s\",from_port=\"80\",to_port=\"8080\",direction=\"out\"} 7",
            "redirector_rule_bytes_total{iface=\"veth-s\",from_port=\"80\",to_port=\"8080\",direction=\"in\"} 709",
            "redirector_rule_bytes_total{iface=\"veth-s\",from_port=\"80\",to_port=\"8080\",direction=\"out\"} 633",
            "redirector_packets_passed_total{iface=\"veth-s\",reason=\"not_ip\"} 100",
            "redirector_packets_passed_total{iface=\"veth-s\",reason=\"port_mismatch\"} 110",
            "redirector_flow_events_total{iface=\"veth-s\",event=\"created\"} 111",
            "redirector_flow_events_total{iface=\"veth-s\",event=\"closed_fin\"} 114",
            "redirector_flow_events_total{iface=\"veth-s\",event=\"evicted\"} 7",
            "redirector_rewrites_total{iface=\"veth-s\",result=\"in\"} 115",
            "redirector_rewrites_total{iface=\"veth-s\",result=\"failed\"} 117",
            "redirector_conntrack_entries{iface=\"veth-s\"} 3",
            "redirector_conntrack_capacity{iface=\"veth-s\"} 65536",
            "redirector_conntrack_established_entries{iface=\"veth-s\"} 2",
            "redirector_conntrack_half_open_entries{iface=\"veth-s\"} 1",
            "redirector_conntrack_half_open_capacity{iface=\"veth-s\"} 65536",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn every_global_counter_is_exported_once() {
        let text = render(&snapshot(), &labels());
        for counter in Counter::ALL {
            let value = format!(" {}", snapshot().get(counter));
            let n = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains("iface") && l.ends_with(&value))
                .filter(|l| !l.starts_with("redirector_rule_"))
                .count();
            assert_eq!(n, 1, "{} in\n{text}", counter.name());
        }
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(&snapshot(), &labels());
        let mut declared = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
                declared.push(name.to_string());
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last().map(String::as_str), Some(name), "{line}");
                assert!(line.rsplit(' ').next().unwrap().parse::<u64>().is_ok());
            }
        }
        assert_eq!(declared.len(), FAMILIES.len());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut l = labels();
        l.iface = "we\"ird".into();
        assert!(render(&snapshot(), &l).contains("iface=\"we\\\"ird\""));
    }
}
