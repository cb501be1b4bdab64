//! The conn-cpu load: WebSocket connections (handshake, one echo, close) opened at a fixed
//! rate well below saturation (`wsload --conn-churn --connect-rate`), with the machine's busy
//! CPU time over the run divided by the connections completed: CPU µs per connection.
//!
//! Throughput at saturation moves with whatever the hypervisor's other guests do (CPU
//! steal); at a fixed offered rate the work per connection is the same whatever the steal,
//! and busy time leaves stolen time out. The figure is machine-wide — client, server, the
//! configuration and the kernel's softirq work alike — because in-kernel redirection is
//! charged to no process of its own; so anything else running on the machine is in it too.
//! To show how much that was, the machine's busy time is also read for a moment just
//! before each run (`background_busy_pct`).
//!
//! A second figure leaves other work out: the CPU time of the processes of the run — the
//! load generator (reaped child), the servers, the configuration's processes, and the
//! kernel's `ksoftirqd` threads. This kernel accounts CPU time by ticks without separate
//! IRQ time accounting, so softirq work (netfilter, XDP on a veth, tc, the TCP stack) is
//! charged to the task it interrupted — on a veth almost always the sender, one of these —
//! or to ksoftirqd when deferred. Softirq that lands on an unrelated task is missed.

use std::thread;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::cpu::{ksoftirqd_pids, reaped_children_cpu_s, tree_cpu_s, BusyMeter};
use super::loads::{Measurement, Target};
use super::plan::Params;
use testkit::cmd::describe_output;

/// Concurrent connect/echo/close loops: enough to keep up with the rate.
const LOOPS: &str = "16";
/// Longest look at the machine's busy time before a run.
const BACKGROUND: Duration = Duration::from_secs(1);
/// Time beyond the load wsload gets to start, drain, close and report.
const OVERRUN: Duration = Duration::from_secs(30);

/// The figures of one conn-cpu run (in the result file's `runs[].measurement.conn_cpu`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnCpuFigures {
    /// Connections per second offered.
    pub offered_rate: u32,
    /// Connections completed (handshake done) and the rate that makes.
    pub connections: u64,
    pub achieved_rate: f64,
    /// Busy CPU seconds of the whole machine (all cores) over the run.
    pub busy_cpu_s: f64,
    /// Wall seconds the meter ran (wsload's start to its exit).
    pub wall_s: f64,
    /// busy_cpu_s / connections, in µs.
    pub cpu_us_per_conn: f64,
    /// CPU seconds of the run's own processes (load generator, servers, configuration,
    /// ksoftirqd), and per connection in µs.
    pub own_cpu_s: f64,
    pub own_cpu_us_per_conn: f64,
    /// CPU steal over the run, % of all CPU time.
    pub steal_pct: f64,
    /// The machine's busy time just before the run, % of all cores.
    pub background_busy_pct: f64,
}

/// Runs conn-cpu once against `target`; `pids` are the configuration's and the servers'
/// processes.
pub fn run(target: &Target, params: &Params, pids: &[u32]) -> Result<Measurement> {
    let url = format!("ws://{}:{}/", target.server_ip, target.ports.plain);
    let cmd = target
        .client
        .exec(target.wsload)
        .arg(&url)
        .args(["--conn-churn", "--json", "--connections", LOOPS])
        .args(["--connect-rate", &params.conn_cpu_rate.to_string()])
        .args([
            "--duration",
            &params.conn_cpu_time.as_secs_f64().to_string(),
        ])
        .args(["--message-size", &params.message_bytes.to_string()]);
    let shown = cmd.to_string();
    let timeout = params.conn_cpu_time + OVERRUN;
    let background = BusyMeter::start()?;
    thread::sleep((params.conn_cpu_time / 4).min(BACKGROUND));
    let background = background.stop()?;
    let cores = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let own_pids = [pids, &ksoftirqd_pids()?].concat();
    let own_before = tree_cpu_s(&own_pids)? + reaped_children_cpu_s()?;
    let meter = BusyMeter::start()?;
    let output = cmd.output_timeout(timeout)?;
    let span = meter.stop()?;
    let own_cpu_s = tree_cpu_s(&own_pids)? + reaped_children_cpu_s()? - own_before;
    if !output.success() {
        bail!(
            "`{shown}` failed ({}){}",
            output.describe_end(timeout),
            describe_output(&output.stdout, &output.stderr)
        );
    }
    let (connections, errors, duration_s) = parse_wsload_churn(&output.stdout)
        .with_context(|| format!("could not read the figures of `{shown}`"))?;
    if connections == 0 {
        bail!("`{shown}` completed no connection");
    }
    let figures = ConnCpuFigures {
        offered_rate: params.conn_cpu_rate,
        connections,
        achieved_rate: connections as f64 / duration_s,
        busy_cpu_s: span.busy_s,
        wall_s: span.wall_s,
        cpu_us_per_conn: span.busy_s * 1e6 / connections as f64,
        own_cpu_s,
        own_cpu_us_per_conn: own_cpu_s * 1e6 / connections as f64,
        steal_pct: span.steal_pct,
        background_busy_pct: background.busy_s / background.wall_s.max(1e-3) / cores * 100.0,
    };
    Ok(Measurement {
        value: figures.cpu_us_per_conn,
        errors,
        conn_cpu: Some(figures),
        ..Measurement::default()
    })
}

/// (connections completed, errors, window seconds) of wsload's churn `--json` object.
fn parse_wsload_churn(out: &str) -> Result<(u64, u64, f64)> {
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).context("wsload printed no valid JSON")?;
    let count = |key: &str| json[key].as_u64().with_context(|| format!("no `{key}`"));
    let duration = json["duration_s"]
        .as_f64()
        .filter(|d| *d > 0.0)
        .context("no `duration_s`")?;
    Ok((
        count("connects_ok")?,
        count("errors")? + count("connect_errors")?,
        duration,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_json_gives_connections_and_errors() {
        let out = r#"{"mode":"churn","connects_ok":3990,"connect_errors":1,"errors":2,
                      "duration_s":4.0,"connects_per_s":997.5}"#;
        assert_eq!(parse_wsload_churn(out).unwrap(), (3990, 3, 4.0));
        assert!(parse_wsload_churn(r#"{"connects_ok":1,"errors":0}"#).is_err());
        assert!(parse_wsload_churn("not json").is_err());
    }
}
