//! The result of an `--idle` run: one JSON object (`--json`, schema in README.md) or a
//! short human summary.

use std::fmt;

use serde::Serialize;

use crate::idle::{IdleSettings, IdleTotals};
use crate::stats::Summary;

/// The `--idle --json` output; field names and meanings are a stable interface (README.md).
#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub urls: Vec<String>,
    /// Always "idle".
    pub mode: &'static str,
    /// `--connections`: connections requested.
    pub connections: usize,
    /// Connections that opened and had their first echo back before the opening deadline.
    pub connections_open: usize,
    /// Most connections open at the same time.
    pub peak_open: usize,
    /// Seconds from the start to the last WebSocket handshake.
    pub open_s: f64,
    /// Seconds from the start to the last first echo (every open connection ready).
    pub ready_s: f64,
    /// `--idle-interval`, seconds.
    pub message_interval_s: f64,
    /// `--duration`: how long the connections were held once open, seconds.
    pub hold_s: f64,
    pub message_size: usize,
    pub connect_errors: u64,
    pub messages_sent: u64,
    /// Verified echoes.
    pub messages_received: u64,
    /// Errors on open connections: wrong, missing or late echoes, closes by the server.
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_us: Summary,
    pub handshake_us: Summary,
}

impl IdleReport {
    pub fn new(urls: &[String], settings: &IdleSettings, totals: &IdleTotals) -> Self {
        let counters = &totals.counters;
        let round3 = |value: f64| (value * 1000.0).round() / 1000.0;
        Self {
            urls: urls.to_vec(),
            mode: "idle",
            connections: settings.connections,
            connections_open: totals.ready,
            peak_open: totals.peak_open,
            open_s: round3(totals.open_s),
            ready_s: round3(totals.ready_s),
            message_interval_s: settings.interval.as_secs_f64(),
            hold_s: settings.hold.as_secs_f64(),
            message_size: settings.message_size,
            connect_errors: counters.connect_errors,
            messages_sent: counters.messages_sent,
            messages_received: counters.messages_received,
            errors: counters.errors,
            first_error: totals.first_error.clone(),
            latency_us: totals.latency.summary(),
            handshake_us: totals.handshake.summary(),
        }
    }
}

/// The human summary.
impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wsload {}: idle, {} of {} connections open (peak {}), all open after {:.3} s, \
             echoing after {:.3} s",
            self.urls.join(" "),
            self.connections_open,
            self.connections,
            self.peak_open,
            self.open_s,
            self.ready_s
        )?;
        writeln!(
            f,
            "held {} s, one {}-byte message per {} s each: {} sent, {} echoed, {} errors, \
             {} failed connects",
            self.hold_s,
            self.message_size,
            self.message_interval_s,
            self.messages_sent,
            self.messages_received,
            self.errors,
            self.connect_errors
        )?;
        writeln!(
            f,
            "latency p50 {} p99 {} µs; handshake p50 {} p99 {} µs",
            self.latency_us.p50, self.latency_us.p99, self.handshake_us.p50, self.handshake_us.p99
        )?;
        if let Some(error) = &self.first_error {
            writeln!(f, "first error: {error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{Counters, Hist};

    #[test]
    fn json_has_the_documented_fields() {
        let settings = IdleSettings {
            connections: 10,
            interval: Duration::from_secs(7),
            hold: Duration::from_secs(20),
            open_timeout: Duration::from_secs(60),
            connect_rate: 100.0,
            message_size: 32,
        };
        let totals = IdleTotals {
            counters: Counters {
                connects_ok: 9,
                connect_errors: 1,
                messages_sent: 27,
                messages_received: 27,
                ..Counters::default()
            },
            ready: 9,
            open_s: 0.12345,
            ready_s: 0.2,
            peak_open: 9,
            latency: Hist::new(),
            handshake: Hist::new(),
            first_error: Some("refused".into()),
        };
        let urls = ["ws://127.0.0.1:8080/".to_owned()];
        let json = serde_json::to_value(IdleReport::new(&urls, &settings, &totals)).unwrap();
        assert_eq!(json["mode"], "idle");
        assert_eq!(json["connections"], 10);
        assert_eq!(json["connections_open"], 9);
        assert_eq!(json["open_s"], 0.123);
        assert_eq!(json["message_interval_s"], 7.0);
        assert_eq!(json["hold_s"], 20.0);
        assert_eq!(json["connect_errors"], 1);
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "connect_errors",
                "connections",
                "connections_open",
                "errors",
                "first_error",
                "handshake_us",
                "hold_s",
                "latency_us",
                "message_interval_s",
                "message_size",
                "messages_received",
                "messages_sent",
                "mode",
                "open_s",
                "peak_open",
                "ready_s",
                "urls",
            ]
        );
    }
}
