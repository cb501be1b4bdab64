//! The loader's series (format-agnostic): a [`Snapshot`] as a `prometheus-client`
//! [`Collector`], so the whole `/metrics` body is unit-tested without a kernel; the HTTP
//! endpoint picks the format (OpenMetrics or Prometheus text 0.0.4, see [`super::exposition`]).
//!
//! Every series carries `iface`, the interface that names the instance (its first
//! `--iface`): counters are per instance, not per interface. Counter families are named
//! without `_total` (the encoders append it), so the samples keep their names in both
//! formats; `redirector_build` is an info metric (`redirector_build_info`, a gauge in 0.0.4).

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info, MetricType},
    registry::Registry,
};
use redirector_common::stats::Counter;

use super::stats::Snapshot;
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

/// Metric family (without `_total`) and label (key, value) of one global counter.
///
/// Exhaustive on purpose: a new counter does not compile until it is given a series.
pub fn global_series(counter: Counter) -> (&'static str, &'static str, &'static str) {
    const PASSED: &str = "redirector_packets_passed";
    const EVENTS: &str = "redirector_flow_events";
    const REWRITES: &str = "redirector_rewrites";
    const LOCAL: &str = "redirector_local_connects";
    const STEERED: &str = "redirector_socket_steering";
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
        Counter::LocalRedirected => (LOCAL, "result", "redirected"),
        Counter::LocalPassRuleDisabled => (LOCAL, "result", "rule_disabled"),
        Counter::LocalPassSourceDenied => (LOCAL, "result", "source_denied"),
        Counter::FlowRstSeen => (EVENTS, "event", "rst_seen"),
        Counter::FlowHealedIngress => (EVENTS, "event", "healed_ingress"),
        Counter::FlowHealedEgress => (EVENTS, "event", "healed_egress"),
        Counter::FlowHealWithdrawn => (EVENTS, "event", "heal_withdrawn"),
        Counter::FlowSynOnLive => (EVENTS, "event", "syn_on_live"),
        Counter::FlowReapedGone => (EVENTS, "event", "reaped_gone"),
        Counter::SteerAssigned => (STEERED, "result", "steered"),
        Counter::SteerPassRuleDisabled => (STEERED, "result", "rule_disabled"),
        Counter::SteerPassSourceDenied => (STEERED, "result", "source_denied"),
        Counter::SteerNoListener => (STEERED, "result", "no_listener"),
        Counter::SteerAssignFailed => (STEERED, "result", "assign_failed"),
    }
}

/// Every family, in output order: name (counters without `_total`), type, HELP text.
const FAMILIES: [(&str, MetricType, &str); 15] = [
    (
        "redirector_build",
        MetricType::Info,
        "Version of the running loader (always 1).",
    ),
    (
        "redirector_rule_enabled",
        MetricType::Gauge,
        "1 if new connections to the rule's FROM port are redirected, else 0.",
    ),
    (
        "redirector_rule_flows_new",
        MetricType::Counter,
        "Flows created by the rule.",
    ),
    (
        "redirector_rule_packets",
        MetricType::Counter,
        "Packets rewritten for the rule: in = client to server, out = server to client.",
    ),
    (
        "redirector_rule_bytes",
        MetricType::Counter,
        "Bytes (L3 length) of the packets rewritten for the rule.",
    ),
    (
        "redirector_packets_passed",
        MetricType::Counter,
        "Packets passed untouched, by reason.",
    ),
    (
        "redirector_flow_events",
        MetricType::Counter,
        "Conntrack flow events.",
    ),
    (
        "redirector_rewrites",
        MetricType::Counter,
        "Port rewrites: in (FROM to TO), out (TO to FROM), failed (helper error, packet passed).",
    ),
    (
        "redirector_local_connects",
        MetricType::Counter,
        "Local TCP connects (loader's namespace, to its own address) to a rule's FROM port: redirected at connect time, or left alone because the rule is disabled or the address is not allowed.",
    ),
    (
        "redirector_socket_steering",
        MetricType::Counter,
        "New connections to a rule's FROM port at socket lookup (--mode socket): steered to a listener of the TO port, or not: the rule is disabled, the source is not allowed, no listener (refused), or the kernel refused the listener found.",
    ),
    (
        "redirector_conntrack_entries",
        MetricType::Gauge,
        "Flows tracked in the conntrack table.",
    ),
    (
        "redirector_conntrack_capacity",
        MetricType::Gauge,
        "Established flows held at most (--conntrack-size; never evicted: when full, new connections pass unredirected).",
    ),
    (
        "redirector_conntrack_established_entries",
        MetricType::Gauge,
        "Flows in the established table (never evicted).",
    ),
    (
        "redirector_conntrack_half_open_entries",
        MetricType::Gauge,
        "Flows in the half-open table (handshake not complete).",
    ),
    (
        "redirector_conntrack_half_open_capacity",
        MetricType::Gauge,
        "Size of the half-open table (LRU: evicts only other half-open flows when full).",
    ),
];

/// The loader's series of one scrape: the counters read, and the instance's labels.
#[derive(Debug)]
pub struct LoaderCollector {
    snapshot: Snapshot,
    labels: Labels,
}

/// Registers the loader's series of `snapshot` into `registry`.
pub fn register(registry: &mut Registry, snapshot: Snapshot, labels: Labels) {
    registry.register_collector(Box::new(LoaderCollector { snapshot, labels }));
}

/// One sample of a counter or gauge family (a `u64` either way).
fn sample(
    metric: &mut prometheus_client::encoding::MetricEncoder,
    kind: MetricType,
    labels: &impl EncodeLabelSet,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let encoder = metric.encode_family(labels)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(encoder),
        _ => ConstGauge::new(value).encode(encoder),
    }
}

impl Collector for LoaderCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = &self.snapshot;
        let capacity = self.labels.conntrack_capacity;
        let iface = [("iface", self.labels.iface.as_str())];
        for (name, kind, help) in FAMILIES {
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            let metric = &mut metric;
            match name {
                "redirector_build" => {
                    let version = [("version", self.labels.version.as_str())];
                    Info::new(version).encode(metric.encode_family(&NO_LABELS)?)?
                }
                "redirector_conntrack_entries" => {
                    sample(metric, kind, &iface, snapshot.flows as u64)?
                }
                "redirector_conntrack_capacity" => {
                    sample(metric, kind, &iface, u64::from(capacity))?
                }
                "redirector_conntrack_established_entries" => {
                    sample(metric, kind, &iface, snapshot.established as u64)?
                }
                "redirector_conntrack_half_open_entries" => {
                    sample(metric, kind, &iface, snapshot.half_open as u64)?
                }
                "redirector_conntrack_half_open_capacity" => sample(
                    metric,
                    kind,
                    &iface,
                    u64::from(redirector_common::maps::half_open_size(capacity)),
                )?,
                rule_family if rule_family.starts_with("redirector_rule_") => {
                    for r in &snapshot.rules {
                        let (from, to) = (r.rule.from_port.to_string(), r.rule.to_port.to_string());
                        let rule = [
                            iface[0],
                            ("from_port", from.as_str()),
                            ("to_port", to.as_str()),
                        ];
                        let c = &r.counters;
                        let per_direction = |(i, o): (u64, u64)| -> [([(&str, &str); 4], u64); 2] {
                            [
                                ([rule[0], rule[1], rule[2], ("direction", "in")], i),
                                ([rule[0], rule[1], rule[2], ("direction", "out")], o),
                            ]
                        };
                        match rule_family {
                            "redirector_rule_enabled" => {
                                sample(metric, kind, &rule, u64::from(r.enabled))?
                            }
                            "redirector_rule_flows_new" => {
                                sample(metric, kind, &rule, c.flows_new)?
                            }
                            "redirector_rule_packets" => {
                                for (labels, value) in per_direction((c.packets_in, c.packets_out))
                                {
                                    sample(metric, kind, &labels, value)?;
                                }
                            }
                            _ => {
                                for (labels, value) in per_direction((c.bytes_in, c.bytes_out)) {
                                    sample(metric, kind, &labels, value)?;
                                }
                            }
                        }
                    }
                }
                family => {
                    for counter in Counter::ALL {
                        let (series, key, value) = global_series(counter);
                        if series == family {
                            let labels = [iface[0], (key, value)];
                            sample(metric, kind, &labels, snapshot.get(counter))?;
                        }
                    }
                    if family == "redirector_flow_events" {
                        let labels = [iface[0], ("event", "evicted")];
                        sample(metric, kind, &labels, snapshot.evicted)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The label set of a sample without labels.
const NO_LABELS: [(&str, &str); 0] = [];

#[cfg(test)]
mod tests {
    use redirector_common::maps::RuleStats;

    use prometheus_client::encoding::prometheus_text;

    use super::*;
    use crate::{observe::stats::RuleSnapshot, rules::RedirectRule};

    /// The Prometheus text (0.0.4) of the loader's series.
    fn render(snapshot: &Snapshot, labels: &Labels) -> String {
        let mut registry = Registry::default();
        register(&mut registry, snapshot.clone(), labels.clone());
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

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
            "# TYPE redirector_build_info gauge",
            "# HELP redirector_packets_passed_total Packets passed untouched, by reason.",
            "# TYPE redirector_packets_passed_total counter",
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
        let mut l = labels();
        l.iface = "we\"ird".into();
        assert!(render(&snapshot(), &l).contains("iface=\"we\\\"ird\""));
    }
}
