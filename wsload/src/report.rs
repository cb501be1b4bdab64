//! The result of a run: one JSON object (`--json`, schema in README.md) or a short human
//! summary.

use std::fmt;

use serde::Serialize;

use crate::plan::Mode;
use crate::run::Totals;
use crate::stats::Summary;

/// The `--json` output; field names and meanings are a stable interface (see README.md).
#[derive(Debug, Serialize)]
pub struct Report {
    pub urls: Vec<String>,
    /// "ping-pong", "rate" or "churn".
    pub mode: &'static str,
    pub connections: usize,
    /// Length of the measurement window (after the warm-up), in seconds.
    pub duration_s: f64,
    pub warmup_s: f64,
    pub message_size: usize,
    /// Messages per second per connection; 0 in ping-pong and churn modes.
    pub message_rate: f64,
    pub connects_ok: u64,
    pub connect_errors: u64,
    pub connects_per_s: f64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub messages_per_s: f64,
    /// Payload bytes echoed back per second (one direction).
    pub bytes_per_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_us: Summary,
    pub handshake_us: Summary,
}

/// The settings a report repeats.
pub struct Setup<'a> {
    pub urls: &'a [String],
    pub mode: Mode,
    pub connections: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub message_size: usize,
}

impl Report {
    pub fn new(setup: &Setup<'_>, totals: &Totals) -> Self {
        let counters = &totals.counters;
        let per_s = |count: u64| round2(count as f64 / setup.duration_s);
        let (mode, message_rate) = match setup.mode {
            Mode::PingPong => ("ping-pong", 0.0),
            Mode::Rate(rate) => ("rate", rate),
            Mode::Churn => ("churn", 0.0),
        };
        Self {
            urls: setup.urls.to_vec(),
            mode,
            connections: setup.connections,
            duration_s: setup.duration_s,
            warmup_s: setup.warmup_s,
            message_size: setup.message_size,
            message_rate,
            connects_ok: counters.connects_ok,
            connect_errors: counters.connect_errors,
            connects_per_s: per_s(counters.connects_ok),
            messages_sent: counters.messages_sent,
            messages_received: counters.messages_received,
            messages_per_s: per_s(counters.messages_received),
            bytes_per_s: round2(
                counters.messages_received as f64 * setup.message_size as f64 / setup.duration_s,
            ),
            errors: counters.errors,
            first_error: totals.first_error.clone(),
            latency_us: totals.latency.summary(),
            handshake_us: totals.handshake.summary(),
        }
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The human summary.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.mode {
            "rate" => format!(" at {}/s each", self.message_rate),
            _ => String::new(),
        };
        writeln!(
            f,
            "wsload {}: {} connections, {}{rate}, {}-byte messages, {} s measured after {} s warm-up",
            self.urls.join(" "),
            self.connections,
            self.mode,
            self.message_size,
            self.duration_s,
            self.warmup_s,
        )?;
        writeln!(
            f,
            "connects   {} ok ({:.1}/s), {} failed",
            self.connects_ok, self.connects_per_s, self.connect_errors
        )?;
        writeln!(
            f,
            "messages   {} sent, {} echoed ({:.1}/s, {}/s), {} errors",
            self.messages_sent,
            self.messages_received,
            self.messages_per_s,
            human_bytes(self.bytes_per_s),
            self.errors
        )?;
        write_summary(f, "latency", &self.latency_us)?;
        write_summary(f, "handshake", &self.handshake_us)?;
        if let Some(error) = &self.first_error {
            writeln!(f, "first error: {error}")?;
        }
        Ok(())
    }
}

fn write_summary(f: &mut fmt::Formatter<'_>, name: &str, summary: &Summary) -> fmt::Result {
    if summary.count == 0 {
        return writeln!(f, "{name:<10} no samples");
    }
    writeln!(
        f,
        "{name:<10} µs: p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.1} ({} samples)",
        summary.p50,
        summary.p90,
        summary.p99,
        summary.p999,
        summary.max,
        summary.mean,
        summary.count
    )
}

/// Bytes with a binary prefix: `512 B`, `1.5 KiB`, `12.0 MiB`.
fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{value:.0} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Counters, Hist};

    fn totals() -> Totals {
        let mut latency = Hist::new();
        for us in [100, 200, 300] {
            latency.record_us(us);
        }
        Totals {
            counters: Counters {
                connects_ok: 4,
                messages_sent: 300,
                messages_received: 300,
                ..Counters::default()
            },
            latency,
            handshake: Hist::new(),
            first_error: None,
        }
    }

    #[test]
    fn json_has_the_documented_fields_and_rates() {
        let urls = ["ws://127.0.0.1:8080/".to_owned()];
        let setup = Setup {
            urls: &urls,
            mode: Mode::PingPong,
            connections: 4,
            duration_s: 2.0,
            warmup_s: 0.0,
            message_size: 64,
        };
        let json = serde_json::to_value(Report::new(&setup, &totals())).unwrap();
        assert_eq!(json["mode"], "ping-pong");
        assert_eq!(json["messages_per_s"], 150.0);
        assert_eq!(json["bytes_per_s"], 9600.0);
        assert_eq!(json["connects_per_s"], 2.0);
        assert_eq!(json["first_error"], serde_json::Value::Null);
        assert_eq!(json["latency_us"]["count"], 3);
        assert_eq!(json["handshake_us"]["p99"], 0);
        // The schema is an interface: adding a field is fine, renaming one is not.
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
                "bytes_per_s",
                "connect_errors",
                "connections",
                "connects_ok",
                "connects_per_s",
                "duration_s",
                "errors",
                "first_error",
                "handshake_us",
                "latency_us",
                "message_rate",
                "message_size",
                "messages_per_s",
                "messages_received",
                "messages_sent",
                "mode",
                "urls",
                "warmup_s",
            ]
        );
        let mut summary_keys: Vec<&str> = json["latency_us"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        summary_keys.sort_unstable();
        assert_eq!(
            summary_keys,
            ["count", "max", "mean", "min", "p50", "p90", "p99", "p999"]
        );
    }

    #[test]
    fn bytes_are_shown_with_binary_prefixes() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }
}
