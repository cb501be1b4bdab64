//! Test support: the real `ws-echo` server as a child process, and `wsload` runs with a time
//! limit. Everything listens on loopback addresses only.

use std::io::{BufRead as _, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `wsload` run that takes longer than this is killed and fails the test.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long ws-echo may take to print its `listening` lines.
const START_LIMIT: Duration = Duration::from_secs(10);

/// The ws-echo binary: `$WS_ECHO_BIN` (set by `cargo xtask test`), else the one cargo built
/// with this test (ws-echo is a binary of this package).
fn ws_echo_bin() -> PathBuf {
    match std::env::var_os("WS_ECHO_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_ws-echo")),
    }
}

/// A running ws-echo; killed when dropped.
pub struct EchoServer {
    child: Child,
    /// `(scheme, ADDR:PORT)` of each listener, in the order ws-echo announced them.
    pub listeners: Vec<(String, String)>,
}

impl EchoServer {
    /// Starts ws-echo with `args` (e.g. `--listen 127.0.0.1:0`) and waits for one `listening`
    /// line per listener.
    pub fn start(args: &[&str]) -> Self {
        let expected = args
            .iter()
            .filter(|arg| matches!(**arg, "--listen" | "--tls-listen"))
            .count();
        let mut child = Command::new(ws_echo_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting ws-echo");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            child,
            listeners: Vec::new(),
        };
        let deadline = Instant::now() + START_LIMIT;
        while server.listeners.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines_rx
                .recv_timeout(left)
                .expect("ws-echo did not announce its listeners in time");
            let mut words = line.split_whitespace();
            if let (Some("listening"), Some(scheme), Some(addr)) =
                (words.next(), words.next(), words.next())
            {
                server.listeners.push((scheme.to_owned(), addr.to_owned()));
            }
        }
        server
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is echoed any more.
    pub fn freeze(&self) {
        let status = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -STOP failed");
    }

    /// URL of the `index`-th listener, e.g. `ws://127.0.0.1:41283/`.
    pub fn url(&self, index: usize) -> String {
        let (scheme, addr) = &self.listeners[index];
        format!("{scheme}://{addr}/")
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs wsload with `args`, killing it if it outlives [`RUN_LIMIT`].
pub fn wsload(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsload"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wsload");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for wsload") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsload {args:?} did not end within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Reads a pipe to its end on a thread of its own (so a full pipe never blocks the child).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs wsload `--json` with `args`, expects success and returns the parsed report.
pub fn wsload_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = wsload(&all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "wsload {all:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("not JSON ({err}): {stdout}"))
}

/// A field of a report as u64.
pub fn int(report: &serde_json::Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not an integer in {report}"))
}

/// Checks a latency summary: present, with ordered percentiles.
pub fn assert_ordered_summary(report: &serde_json::Value, field: &str) {
    let summary = &report[field];
    let value = |name: &str| {
        summary[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}.{name} missing in {report}"))
    };
    assert!(value("count") > 0, "{field} has no samples: {report}");
    let ordered = [
        value("min"),
        value("p50"),
        value("p90"),
        value("p99"),
        value("p999"),
        value("max"),
    ];
    assert!(
        ordered.windows(2).all(|pair| pair[0] <= pair[1]),
        "{field} percentiles not ordered: {report}"
    );
    let mean = summary["mean"].as_f64().expect("mean");
    assert!(
        mean >= value("min") as f64 && mean <= value("max") as f64,
        "{field} mean out of range: {report}"
    );
}
