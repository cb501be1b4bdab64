//! The sniffing proxy's counters in the Prometheus text format (0.0.4): a pure function,
//! served by `redirector sniff --metrics` alone and by `redirector run --metrics` after the
//! kernel series.

use std::fmt::Write as _;

use crate::counters::{Counter, Counters};

/// Metric family and optional (label, value) of one counter.
///
/// Exhaustive on purpose: a new counter does not compile until it is given a series.
pub fn series(counter: Counter) -> (&'static str, Option<(&'static str, &'static str)>) {
    const CONNECTIONS: &str = "redirector_sniff_connections_total";
    const CLOSED: &str = "redirector_sniff_closed_total";
    const RELAYS: &str = "redirector_sniff_relays_ended_total";
    const BYTES: &str = "redirector_sniff_bytes_total";
    match counter {
        Counter::Accepted => ("redirector_sniff_accepted_total", None),
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
        Counter::AcceptError => ("redirector_sniff_accept_errors_total", None),
    }
}

/// Every family, in output order, with its HELP text (all are counters).
const FAMILIES: [(&str, &str); 6] = [
    (
        "redirector_sniff_accepted_total",
        "Connections accepted by the sniffing proxy, including those closed over a limit.",
    ),
    (
        "redirector_sniff_connections_total",
        "Connections by the route decided from their first bytes (not_http: closed or relayed per --not-http).",
    ),
    (
        "redirector_sniff_closed_total",
        "Connections closed before reaching a backend, by reason.",
    ),
    (
        "redirector_sniff_relays_ended_total",
        "Relays that ended other than by both sides closing, by reason.",
    ),
    (
        "redirector_sniff_bytes_total",
        "Bytes of finished relays (the replayed request head included), by direction.",
    ),
    (
        "redirector_sniff_accept_errors_total",
        "Failed accept(2) calls of the listeners.",
    ),
];

/// The sniffing proxy's part of a `/metrics` body.
pub fn render(counters: &Counters) -> String {
    let mut out = String::new();
    for (family, help) in FAMILIES {
        let _ = writeln!(out, "# HELP {family} {help}");
        let _ = writeln!(out, "# TYPE {family} counter");
        for counter in Counter::ALL {
            match series(counter) {
                (name, None) if name == family => {
                    let _ = writeln!(out, "{family} {}", counters.get(counter));
                }
                (name, Some((key, value))) if name == family => {
                    let _ = writeln!(
                        out,
                        "{family}{{{key}=\"{value}\"}} {}",
                        counters.get(counter)
                    );
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Counters {
        let counters = Counters::default();
        for (i, counter) in Counter::ALL.iter().enumerate() {
            counters.add(*counter, 100 + i as u64);
        }
        counters
    }

    #[test]
    fn every_counter_is_one_sample_of_a_declared_family() {
        let c = counters();
        let text = render(&c);
        for counter in Counter::ALL {
            let value = format!(" {}", c.get(counter));
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.ends_with(&value))
                .collect();
            assert_eq!(lines.len(), 1, "{}: {lines:?}", counter.name());
            let (family, _) = series(counter);
            assert!(FAMILIES.iter().any(|(f, _)| *f == family), "{family}");
            assert!(lines[0].starts_with(family), "{}", lines[0]);
        }
    }

    #[test]
    fn renders_labelled_series() {
        let c = Counters::default();
        c.inc(Counter::Websocket);
        c.add(Counter::BytesBackendToClient, 42);
        let text = render(&c);
        for line in [
            "redirector_sniff_connections_total{route=\"websocket\"} 1",
            "redirector_sniff_connections_total{route=\"http\"} 0",
            "redirector_sniff_bytes_total{direction=\"backend_to_client\"} 42",
            "redirector_sniff_closed_total{reason=\"over_ip_limit\"} 0",
            "redirector_sniff_accepted_total 0",
            "# TYPE redirector_sniff_relays_ended_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(&counters());
        let mut declared: Vec<&str> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" && name.ends_with("_total"), "{line}");
                declared.push(name);
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last().copied(), Some(name), "{line}");
            }
        }
        assert_eq!(declared.len(), FAMILIES.len());
    }
}
