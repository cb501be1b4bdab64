//! The sniffing proxy's counters as a `prometheus-client` [`Collector`]: read live at each
//! scrape, registered by `redirector sniff --metrics` alone and by `redirector run --metrics`
//! after the kernel series. The caller picks the format (OpenMetrics or Prometheus text).
//!
//! Family names are given without the `_total` that the encoders append to counters, so the
//! samples keep their names (`redirector_sniff_accepted_total`) in both formats. After the
//! counters comes one gauge, [`MAX_CONNECTIONS`]: the `--max-conns` in use, which without
//! the flag is derived from the open-file limit (`crate::fd_limit`), so a dashboard can put
//! the open connections against it.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::counters::{Counter, Counters};

/// Metric family (without `_total`) and optional (label, value) of one counter.
///
/// Exhaustive on purpose: a new counter does not compile until it is given a series.
pub fn series(counter: Counter) -> (&'static str, Option<(&'static str, &'static str)>) {
    const CONNECTIONS: &str = "redirector_sniff_connections";
    const CLOSED: &str = "redirector_sniff_closed";
    const RELAYS: &str = "redirector_sniff_relays_ended";
    const BYTES: &str = "redirector_sniff_bytes";
    match counter {
        Counter::Accepted => ("redirector_sniff_accepted", None),
        Counter::Websocket => (CONNECTIONS, Some(("route", "websocket"))),
        Counter::Http => (CONNECTIONS, Some(("route", "http"))),
        Counter::NotHttp => (CONNECTIONS, Some(("route", "not_http"))),
        Counter::TlsWebsocket => (CONNECTIONS, Some(("route", "tls_websocket"))),
        Counter::TlsHttp => (CONNECTIONS, Some(("route", "tls_http"))),
        Counter::OverLimit => (CLOSED, Some(("reason", "over_limit"))),
        Counter::OverIpLimit => (CLOSED, Some(("reason", "over_ip_limit"))),
        Counter::TooLarge => (CLOSED, Some(("reason", "too_large"))),
        Counter::HeaderTimeout => (CLOSED, Some(("reason", "header_timeout"))),
        Counter::ClientClosedEarly => (CLOSED, Some(("reason", "client_closed_early"))),
        Counter::NotTls => (CLOSED, Some(("reason", "not_tls"))),
        Counter::BackendConnectFailed => (CLOSED, Some(("reason", "backend_connect_failed"))),
        Counter::IdleTimeout => (RELAYS, Some(("reason", "idle_timeout"))),
        Counter::RelayError => (RELAYS, Some(("reason", "error"))),
        Counter::BytesClientToBackend => (BYTES, Some(("direction", "client_to_backend"))),
        Counter::BytesBackendToClient => (BYTES, Some(("direction", "backend_to_client"))),
        Counter::AcceptError => ("redirector_sniff_accept_errors", None),
        Counter::RelaySplice => ("redirector_sniff_relay_rounds", Some(("way", "splice"))),
        Counter::RelayCopy => ("redirector_sniff_relay_rounds", Some(("way", "copy"))),
    }
}

/// Every family (all counters), in output order, with its HELP text.
const FAMILIES: [(&str, &str); 7] = [
    (
        "redirector_sniff_accepted",
        "Connections accepted by the sniffing proxy, including those closed over a limit.",
    ),
    (
        "redirector_sniff_connections",
        "Connections by the route decided from their first bytes (not_http: closed or relayed per --not-http).",
    ),
    (
        "redirector_sniff_closed",
        "Connections closed before reaching a backend, by reason.",
    ),
    (
        "redirector_sniff_relays_ended",
        "Relays that ended other than by both sides closing, by reason.",
    ),
    (
        "redirector_sniff_bytes",
        "Bytes of finished relays (the replayed request head included), by direction.",
    ),
    (
        "redirector_sniff_accept_errors",
        "Failed accept(2) calls of the listeners.",
    ),
    (
        "redirector_sniff_relay_rounds",
        "Relay rounds that moved bytes, by the way they moved (splice: through a pipe, never in user space; copy: through a buffer).",
    ),
];

/// The gauge of the connection limit in use (a gauge, not `_total`: it is a setting, not
/// a count; Prometheus' own `process_max_fds` is named the same way).
pub const MAX_CONNECTIONS: &str = "redirector_sniff_max_connections";

/// HELP text of [`MAX_CONNECTIONS`].
const MAX_CONNECTIONS_HELP: &str = "Connections the sniffing proxy holds open at once \
(--max-conns, by default derived from the open-file limit); further ones are closed on accept.";

/// Encodes the live [`Counters`] at each scrape, then the connection limit.
#[derive(Debug)]
pub struct SniffCollector {
    counters: Arc<Counters>,
    max_conns: u64,
}

impl SniffCollector {
    /// A collector of `counters`, under a limit of `max_conns` connections.
    pub fn new(counters: Arc<Counters>, max_conns: u64) -> Self {
        Self {
            counters,
            max_conns,
        }
    }
}

impl Collector for SniffCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (family, help) in FAMILIES {
            let mut metric = encoder.encode_descriptor(family, help, None, MetricType::Counter)?;
            for counter in Counter::ALL {
                let value = ConstCounter::new(self.counters.get(counter));
                match series(counter) {
                    (name, None) if name == family => {
                        value.encode(metric.encode_family(&NO_LABELS)?)?
                    }
                    (name, Some(label)) if name == family => {
                        value.encode(metric.encode_family(&[label])?)?
                    }
                    _ => {}
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            MAX_CONNECTIONS,
            MAX_CONNECTIONS_HELP,
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.max_conns as i64).encode(metric.encode_family(&NO_LABELS)?)?;
        Ok(())
    }
}

/// The label set of the families without labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// Registers the proxy's counters (read at each scrape) and its limit of `max_conns`
/// connections into `registry`.
pub fn register(registry: &mut Registry, counters: Arc<Counters>, max_conns: u64) {
    registry.register_collector(Box::new(SniffCollector::new(counters, max_conns)));
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::{prometheus_text, text};

    use super::*;

    fn counters() -> Arc<Counters> {
        let counters = Counters::default();
        for (i, counter) in Counter::ALL.iter().enumerate() {
            counters.add(*counter, 100 + i as u64);
        }
        Arc::new(counters)
    }

    /// The Prometheus text (0.0.4) of `counters`.
    fn render(counters: Arc<Counters>) -> String {
        let mut registry = Registry::default();
        register(&mut registry, counters, 123);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn every_counter_is_one_sample_of_a_declared_family() {
        let c = counters();
        let text = render(Arc::clone(&c));
        for counter in Counter::ALL {
            let value = format!(" {}", c.get(counter));
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.ends_with(&value))
                .collect();
            assert_eq!(lines.len(), 1, "{}: {lines:?}", counter.name());
            let (family, _) = series(counter);
            assert!(FAMILIES.iter().any(|(f, _)| *f == family), "{family}");
            assert!(
                lines[0].starts_with(&format!("{family}_total")),
                "{}",
                lines[0]
            );
        }
    }

    #[test]
    fn renders_labelled_series() {
        let c = Arc::new(Counters::default());
        c.inc(Counter::Websocket);
        c.add(Counter::BytesBackendToClient, 42);
        let text = render(c);
        for line in [
            "redirector_sniff_connections_total{route=\"websocket\"} 1",
            "redirector_sniff_connections_total{route=\"http\"} 0",
            "redirector_sniff_bytes_total{direction=\"backend_to_client\"} 42",
            "redirector_sniff_closed_total{reason=\"over_ip_limit\"} 0",
            "redirector_sniff_accepted_total 0",
            "# TYPE redirector_sniff_relays_ended_total counter",
            "# HELP redirector_sniff_accept_errors_total Failed accept(2) calls of the listeners.",
            "# TYPE redirector_sniff_max_connections gauge",
            "redirector_sniff_max_connections 123",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(counters());
        let mut declared: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                match name {
                    MAX_CONNECTIONS => assert_eq!(kind, "gauge", "{line}"),
                    _ => assert!(kind == "counter" && name.ends_with("_total"), "{line}"),
                }
                declared.push(name);
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last().copied(), Some(name), "{line}");
            }
        }
        assert_eq!(
            declared.len(),
            FAMILIES.len() + 1,
            "the counters and the limit"
        );
        assert_eq!(declared.last(), Some(&MAX_CONNECTIONS));
    }

    #[test]
    fn openmetrics_names_families_without_total() {
        let mut registry = Registry::default();
        register(&mut registry, counters(), 7);
        let mut out = String::new();
        text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("# TYPE redirector_sniff_accepted counter\n"),
            "{out}"
        );
        assert!(
            out.contains("\nredirector_sniff_accepted_total 100\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE redirector_sniff_max_connections gauge\nredirector_sniff_max_connections 7\n"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
