//! Running one load generator in the client namespace and reading its figures: wrk (HTTP
//! keep-alive and connection rate), wsload (WebSocket messages and connection rate) and
//! iperf3 (bulk).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::conn_cpu::ConnCpuFigures;
use super::idle::IdleFigures;
use super::plan::{Load, Params, Ports};
use testkit::cmd::{describe_output, Cmd};
use testkit::netns::Netns;

/// Time a load generator gets beyond its own duration to connect, finish and report.
const OVERRUN: Duration = Duration::from_secs(30);
/// wrk's own threads: one per core of this 2-core machine's class.
const WRK_THREADS: &str = "2";

/// The figures of one run of one load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measurement {
    /// The load's main figure, in `Load::unit`.
    pub value: f64,
    /// Median and tail latency in microseconds, for loads that report them.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    /// Failed requests, connections or messages as the generator counts them.
    pub errors: u64,
    /// idle-capacity's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleFigures>,
    /// conn-cpu's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_cpu: Option<ConnCpuFigures>,
}

/// Where the load generator sends its traffic.
pub struct Target<'a> {
    pub client: &'a Netns,
    pub server_ip: &'a str,
    pub ports: Ports,
    pub wsload: &'a Path,
}

/// Runs `load` once against `target` (the throughput loads; idle-capacity and conn-cpu have
/// modules of their own).
pub fn run(load: Load, target: &Target, params: &Params) -> Result<Measurement> {
    let seconds = params.load_time.as_secs().max(1).to_string();
    let host = target.server_ip;
    let plain_url = format!("http://{host}:{}/", target.ports.plain);
    let ws_url = format!("ws://{host}:{}/", target.ports.plain);
    let wss_url = format!("wss://{host}:{}/", target.ports.tls);
    let connections = params.connections.to_string();
    let churn = params.churn_connections.to_string();
    let message_bytes = params.message_bytes.to_string();
    let cmd = match load {
        Load::HttpKeepAlive => wrk(target.client, &seconds, &connections).arg(&plain_url),
        Load::HttpConnRate => wrk(target.client, &seconds, &churn)
            .args(["--header", "Connection: close"])
            .arg(&plain_url),
        Load::WsMessages | Load::WssMessages | Load::WsConnRate => {
            let url = if load == Load::WssMessages {
                &wss_url
            } else {
                &ws_url
            };
            let mut cmd = target
                .client
                .exec(target.wsload)
                .arg(url)
                .args(["--duration", &seconds, "--json"])
                .args(["--message-size", &message_bytes]);
            cmd = match load {
                Load::WsConnRate => cmd.args(["--connections", &churn, "--conn-churn"]),
                _ => cmd.args(["--connections", &connections]),
            };
            if load == Load::WssMessages {
                cmd = cmd.arg("--insecure");
            }
            cmd
        }
        Load::IdleCapacity | Load::ConnCpu => bail!("{load} is not run by loads::run"),
        Load::Bulk => target
            .client
            .exec("iperf3")
            .args(["--client", host, "--port"])
            .arg(target.ports.plain.to_string())
            .args(["--time", &seconds, "--json"]),
    };
    let shown = cmd.to_string();
    let output = cmd.output_timeout(params.load_time + OVERRUN)?;
    if !output.success() {
        bail!(
            "`{shown}` failed ({}){}",
            output.describe_end(params.load_time + OVERRUN),
            describe_output(&output.stdout, &output.stderr)
        );
    }
    let measurement = match load {
        Load::HttpKeepAlive | Load::HttpConnRate => parse_wrk(&output.stdout),
        Load::WsMessages | Load::WssMessages => parse_wsload(&output.stdout, false),
        Load::WsConnRate => parse_wsload(&output.stdout, true),
        Load::Bulk => parse_iperf3(&output.stdout),
        Load::IdleCapacity | Load::ConnCpu => Err(anyhow::anyhow!("{load}: not a throughput load")),
    };
    measurement.with_context(|| format!("could not read the figures of `{shown}`"))
}

fn wrk(client: &Netns, seconds: &str, connections: &str) -> Cmd {
    client
        .exec("wrk")
        .args(["--threads", WRK_THREADS, "--connections", connections])
        .args(["--duration", &format!("{seconds}s"), "--timeout", "5s"])
        .arg("--latency")
}

/// Reads `Requests/sec:`, the 50% and 99% lines of `--latency`, and the error lines.
fn parse_wrk(out: &str) -> Result<Measurement> {
    let mut m = Measurement::default();
    let mut rate = None;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rate = Some(v.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some(v) = line.strip_prefix("50%") {
            m.p50_us = Some(wrk_duration_us(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            m.p99_us = Some(wrk_duration_us(v.trim())?);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                if let Some(count) = part.split_whitespace().nth(1) {
                    m.errors += count.parse::<u64>().unwrap_or(0);
                }
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            m.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    m.value = rate.context("no `Requests/sec:` line")?;
    Ok(m)
}

/// wrk prints durations as `245.00us`, `1.20ms` or `2.00s`.
fn wrk_duration_us(text: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("unknown duration {text:?}");
    };
    Ok(number.trim().parse::<f64>().context("duration")? * scale)
}

/// Reads wsload's `--json` object: messages/s (or handshakes/s for churn), latencies, errors.
fn parse_wsload(out: &str, churn: bool) -> Result<Measurement> {
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).context("wsload printed no valid JSON")?;
    let number = |path: &[&str]| -> Option<f64> {
        path.iter()
            .try_fold(&json, |value, key| value.get(key))
            .and_then(serde_json::Value::as_f64)
    };
    let (rate_key, latency_key) = if churn {
        ("connects_per_s", "handshake_us")
    } else {
        ("messages_per_s", "latency_us")
    };
    let value = number(&[rate_key]).with_context(|| format!("no `{rate_key}`"))?;
    let errors = number(&["errors"]).unwrap_or(0.0) + number(&["connect_errors"]).unwrap_or(0.0);
    Ok(Measurement {
        value,
        p50_us: number(&[latency_key, "p50"]),
        p99_us: number(&[latency_key, "p99"]),
        p999_us: number(&[latency_key, "p999"]),
        errors: errors as u64,
        ..Measurement::default()
    })
}

/// Reads iperf3's `--json`: received bits/s (as Gbit/s) and retransmits as errors.
fn parse_iperf3(out: &str) -> Result<Measurement> {
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).context("iperf3 printed no valid JSON")?;
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {error}");
    }
    let end = &json["end"];
    let bits = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")?;
    Ok(Measurement {
        value: bits / 1e9,
        errors: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        ..Measurement::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://10.201.0.2:80/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   508.45us  300.12us  12.00ms   90.00%
    Req/Sec    31.50k     2.00k   35.00k    70.00%
  Latency Distribution
     50%  450.00us
     75%  600.00us
     90%  800.00us
     99%    1.50ms
  125000 requests in 2.00s, 140.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  62500.00
Transfer/sec:     70.00MB
";

    #[test]
    fn wrk_figures_are_read() {
        let m = parse_wrk(WRK).unwrap();
        assert_eq!(m.value, 62500.0);
        assert_eq!(m.p50_us, Some(450.0));
        assert_eq!(m.p99_us, Some(1500.0));
        assert_eq!(m.errors, 6);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn wrk_durations_convert_to_microseconds() {
        assert_eq!(wrk_duration_us("2.00s").unwrap(), 2e6);
        assert_eq!(wrk_duration_us("1.00m").unwrap(), 60e6);
        assert!(wrk_duration_us("3h").is_err());
    }

    #[test]
    fn wsload_and_iperf3_json_is_read() {
        let ws = r#"{"messages_per_s": 1000.5, "errors": 1, "connect_errors": 2,
                     "latency_us": {"p50": 10, "p99": 20, "p999": 30}}"#;
        let m = parse_wsload(ws, false).unwrap();
        assert_eq!((m.value, m.errors, m.p99_us), (1000.5, 3, Some(20.0)));
        assert!(parse_wsload(ws, true).is_err());
        let iperf = r#"{"end": {"sum_received": {"bits_per_second": 2.5e10},
                                "sum_sent": {"retransmits": 4}}}"#;
        let m = parse_iperf3(iperf).unwrap();
        assert_eq!((m.value, m.errors), (25.0, 4));
        assert!(parse_iperf3(r#"{"error": "unable to connect"}"#).is_err());
    }
}
