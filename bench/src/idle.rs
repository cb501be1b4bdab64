//! The idle-capacity load: `wsload --idle` holds N WebSocket connections open through the
//! configuration, each sending one small message every few seconds (echo checked), and the
//! harness reads the configuration's resident memory and the kernel's TCP socket memory
//! before, while they are held, and some seconds after they have closed.
//!
//! N is capped by the open-file limit: a proxy holds two descriptors per connection (client
//! and backend side) and cannot raise its hard limit, so N = min(requested,
//! (hard − [`FD_RESERVE`]) / 2) for every configuration alike. The client (one descriptor per
//! connection) and ws-echo then fit under the same limit in one process each.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::Child;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nix::sys::resource::{getrlimit, Resource};
use serde::Serialize;

use super::loads::{Measurement, Target};
use super::memory::{tcp_socket_memory_bytes, tree_rss_kib, unreclaimable_slab_bytes};
use super::plan::Params;
use testkit::interrupt;

/// Descriptors a proxy keeps for itself (listeners, logs, pipes, its runtime) below the hard
/// limit before two per connection.
pub const FD_RESERVE: u64 = 200;
/// Time after the `wsload idle:` line before the held connections are measured, so that
/// the messages and allocations of the last ones to open have settled (at most half the
/// hold).
const HELD_SETTLE: Duration = Duration::from_secs(1);
/// Time beyond its own bounds wsload gets to report.
const OVERRUN: Duration = Duration::from_secs(30);
/// Limit of each connection's handshakes: generous, so that a proxy that is slow to accept
/// under a busy machine is measured slower, not with connections missing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bytes of each trickle message (a small chat or keep-alive message).
const MESSAGE_BYTES: &str = "64";

/// How many connections idle-capacity asks for and measures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdleSize {
    /// The mode's figure.
    pub requested: u32,
    /// What the open-file limit allows: the N every configuration is measured with.
    pub measured: u32,
    /// The hard RLIMIT_NOFILE every process of the benchmark inherits.
    pub nofile_hard: u64,
}

impl IdleSize {
    /// `requested` capped by the hard open-file limit `nofile_hard`.
    pub fn new(requested: u32, nofile_hard: u64) -> Self {
        let allowed = nofile_hard.saturating_sub(FD_RESERVE) / 2;
        Self {
            requested,
            measured: u32::try_from(allowed.min(u64::from(requested))).unwrap_or(requested),
            nofile_hard,
        }
    }

    /// The size for this mode under this process's hard limit (which the proxies inherit).
    pub fn for_params(params: &Params) -> Result<Self> {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
        Ok(Self::new(params.idle_connections, hard))
    }

    /// Whether the limit cut the requested number.
    pub fn capped(&self) -> bool {
        self.measured < self.requested
    }
}

/// The figures of one idle-capacity run (in the result file's `runs[].measurement.idle`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleFigures {
    pub connections_requested: u32,
    /// N asked of wsload (after the open-file cap).
    pub connections_measured: u32,
    pub nofile_hard: u64,
    /// Connections that opened and echoed.
    pub connections_open: u64,
    /// Seconds until the last connection's WebSocket handshake, and its first echo.
    pub open_s: f64,
    pub ready_s: f64,
    /// VmRSS of the configuration's processes (with children), KiB: before the load, while
    /// the connections were held, and `idle_settle` after the last closed; `None` when the
    /// configuration runs no process.
    pub rss_before_kib: Option<u64>,
    pub rss_held_kib: Option<u64>,
    pub rss_after_close_kib: Option<u64>,
    /// (held − before) / connections_open, KiB per connection.
    pub rss_kib_per_conn: Option<f64>,
    /// after close − before, KiB (memory the proxy kept).
    pub rss_after_close_delta_kib: Option<f64>,
    /// Change of the kernel's TCP socket memory (machine-wide) while held, KiB, and per
    /// connection.
    pub sock_mem_delta_kib: f64,
    pub sock_mem_kib_per_conn: f64,
    /// Change of the kernel's unreclaimable slab (machine-wide) while held, KiB, and per
    /// connection: the socket structures, their files and epoll entries.
    pub slab_delta_kib: f64,
    pub slab_kib_per_conn: f64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Wrong, missing or late echoes and connections closed under the client.
    pub echo_errors: u64,
    pub connect_errors: u64,
    pub first_error: Option<String>,
}

/// Runs idle-capacity once against `target`; `pids` are the configuration's processes.
pub fn run(target: &Target, params: &Params, size: &IdleSize, pids: &[u32]) -> Result<Measurement> {
    let rate = params.idle_connect_rate.max(1);
    let open_timeout = Duration::from_secs(u64::from(size.measured / rate) + 30);
    let rss =
        || -> Result<Option<u64>> { (!pids.is_empty()).then(|| tree_rss_kib(pids)).transpose() };
    let rss_before = rss().context("reading the configuration's memory before the load")?;
    let sock_before = tcp_socket_memory_bytes()?;
    let slab_before = unreclaimable_slab_bytes()?;
    let url = format!("ws://{}:{}/", target.server_ip, target.ports.plain);
    let cmd = target
        .client
        .exec(target.wsload)
        .arg(&url)
        .args(["--idle", "--json", "--message-size", MESSAGE_BYTES])
        .args(["--connections", &size.measured.to_string()])
        .args(["--connect-rate", &rate.to_string()])
        .args(["--connect-timeout", &secs(CONNECT_TIMEOUT)])
        .args(["--idle-interval", &secs(params.idle_interval)])
        .args(["--duration", &secs(params.idle_hold)])
        .args(["--open-timeout", &secs(open_timeout)]);
    let shown = cmd.to_string();
    let mut generator = Generator::start(cmd.spawn_piped()?);
    let ready = generator
        .line_starting("wsload idle:", open_timeout + OVERRUN)
        .with_context(|| format!("`{shown}` never said its connections were open"))?;
    println!("  {ready}");
    thread::sleep(held_settle(params));
    let rss_held = rss().context("reading the configuration's memory with the connections held")?;
    let sock_held = tcp_socket_memory_bytes()?;
    let slab_held = unreclaimable_slab_bytes()?;
    let report = generator
        .line_starting("{", params.idle_hold + OVERRUN)
        .with_context(|| format!("`{shown}` printed no report"))?;
    generator
        .finish(OVERRUN)
        .with_context(|| format!("`{shown}`"))?;
    thread::sleep(params.idle_settle);
    let rss_after = rss().context("reading the configuration's memory after the load")?;

    let mut figures = parse_wsload_idle(&report)
        .with_context(|| format!("could not read the figures of `{shown}`"))?;
    figures.connections_requested = size.requested;
    figures.connections_measured = size.measured;
    figures.nofile_hard = size.nofile_hard;
    figures.rss_before_kib = rss_before;
    figures.rss_held_kib = rss_held;
    figures.rss_after_close_kib = rss_after;
    let open = figures.connections_open.max(1) as f64;
    if let (Some(before), Some(held), Some(after)) = (rss_before, rss_held, rss_after) {
        figures.rss_kib_per_conn = Some((held as f64 - before as f64) / open);
        figures.rss_after_close_delta_kib = Some(after as f64 - before as f64);
    }
    figures.sock_mem_delta_kib = (sock_held as f64 - sock_before as f64) / 1024.0;
    figures.sock_mem_kib_per_conn = figures.sock_mem_delta_kib / open;
    figures.slab_delta_kib = (slab_held as f64 - slab_before as f64) / 1024.0;
    figures.slab_kib_per_conn = figures.slab_delta_kib / open;
    Ok(Measurement {
        value: figures.connections_open as f64,
        errors: figures.echo_errors + figures.connect_errors,
        idle: Some(figures),
        ..Measurement::default()
    })
}

/// How long after all connections are open the held readings are taken.
pub fn held_settle(params: &Params) -> Duration {
    HELD_SETTLE.min(params.idle_hold / 2)
}

fn secs(duration: Duration) -> String {
    format!("{}", duration.as_secs_f64())
}

/// Reads `wsload --idle --json`'s object into the figures it carries.
fn parse_wsload_idle(out: &str) -> Result<IdleFigures> {
    let json: serde_json::Value =
        serde_json::from_str(out.trim()).context("wsload printed no valid JSON")?;
    if json["mode"] != "idle" {
        bail!("not an idle report: mode {}", json["mode"]);
    }
    let count = |key: &str| json[key].as_u64().with_context(|| format!("no `{key}`"));
    let seconds = |key: &str| json[key].as_f64().with_context(|| format!("no `{key}`"));
    Ok(IdleFigures {
        connections_open: count("connections_open")?,
        open_s: seconds("open_s")?,
        ready_s: seconds("ready_s")?,
        messages_sent: count("messages_sent")?,
        messages_received: count("messages_received")?,
        echo_errors: count("errors")?,
        connect_errors: count("connect_errors")?,
        first_error: json["first_error"].as_str().map(str::to_owned),
        ..IdleFigures::default()
    })
}

/// The running wsload: its stdout lines as they come, stderr collected; killed by PID on
/// drop if it has not been reaped.
struct Generator {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
    reaped: bool,
}

impl Generator {
    fn start(mut child: Child) -> Self {
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        });
        Self {
            child,
            lines,
            stderr,
            reaped: false,
        }
    }

    /// The first stdout line starting with `prefix`, within `timeout`.
    fn line_starting(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no line `{prefix}…` within {} s", timeout.as_secs());
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    self.reaped = true;
                    bail!(
                        "exited ({}) before printing `{prefix}…`: {}",
                        status.map_or("?".into(), |s| s.to_string()),
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// Waits for the exit (at most `timeout`); fails unless it exited with status 0.
    fn finish(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                if !status.success() {
                    bail!("failed ({status}): {}", self.stderr_text());
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("did not exit within {} s of its report", timeout.as_secs());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if !self.reaped {
            // Not yet reaped, so the PID is still ours to kill.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_caps_the_connections() {
        let size = IdleSize::new(10_000, 20_000);
        assert_eq!(size.measured, 9_900);
        assert!(size.capped());
        let size = IdleSize::new(300, 20_000);
        assert_eq!(size.measured, 300);
        assert!(!size.capped());
        assert_eq!(IdleSize::new(50_000, 100).measured, 0);
    }

    #[test]
    fn wsload_idle_json_is_read() {
        let out = r#"{"urls":["ws://10.201.0.2:80/"],"mode":"idle","connections":300,
            "connections_open":298,"peak_open":298,"open_s":0.151,"ready_s":0.2,
            "message_interval_s":1.0,"hold_s":2.0,"message_size":64,"connect_errors":2,
            "messages_sent":900,"messages_received":899,"errors":1,"first_error":"refused",
            "latency_us":{"count":899},"handshake_us":{"count":298}}"#;
        let figures = parse_wsload_idle(out).unwrap();
        assert_eq!(figures.connections_open, 298);
        assert_eq!((figures.echo_errors, figures.connect_errors), (1, 2));
        assert_eq!(figures.open_s, 0.151);
        assert_eq!(figures.first_error.as_deref(), Some("refused"));
        assert!(parse_wsload_idle(r#"{"mode":"churn"}"#).is_err());
        assert!(parse_wsload_idle(r#"{"mode":"idle"}"#).is_err());
        assert!(parse_wsload_idle("wsload idle: 3 of 3").is_err());
    }
}
