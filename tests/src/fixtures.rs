//! Shared steps of the namespace integration tests: the echo server, the loader, the
//! WebSocket client, and the checks that nothing of a stopped loader remains.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    process::Output,
    sync::atomic::{AtomicU32, Ordering},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use testkit::{
    cmd::must,
    error_chain,
    lock::KernelLock,
    netns::{Netns, Topology},
    process::Proc,
};

use crate::bins;

/// Tests that start loaders run one at a time within a test binary, so "no redirector
/// program is loaded any more" after a loader exits is a meaningful check.
static SERIAL: Mutex<()> = Mutex::new(());

/// Held while a test may load redirector programs; released on drop.
pub struct SerialGuard {
    _thread: Option<MutexGuard<'static, ()>>,
    _kernel: KernelLock,
}

/// Takes the one-loader-at-a-time lock, within this process and across processes (the
/// machine-wide [`KernelLock`]: test processes of other checkouts and the benchmark load
/// redirector programs into the same kernel). A panicking test does not poison it for
/// others.
pub fn serial() -> SerialGuard {
    let thread = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    SerialGuard {
        _thread: Some(thread),
        _kernel: KernelLock::exclusive().unwrap_or_else(|e| panic!("{}", error_chain(&e))),
    }
}

/// A shared hold of the machine-wide lock, for tests that load programs briefly and may run
/// in parallel with each other (TestRun), but not while another process checks that no
/// program is loaded.
pub fn shared_kernel_lock() -> SerialGuard {
    SerialGuard {
        _thread: None,
        _kernel: KernelLock::shared().unwrap_or_else(|e| panic!("{}", error_chain(&e))),
    }
}

/// Starts ws-echo in the server namespace on 8080 (ws) and 8443 (wss), IPv4 and IPv6,
/// plus any `extra` plain listeners; returns once every listener is bound.
pub fn start_echo(topo: &Topology, extra: &[&str]) -> Proc {
    start_echo_with(topo, extra, &[])
}

/// [`start_echo`] with more ws-echo `options` (`--push-requests`).
pub fn start_echo_with(topo: &Topology, extra: &[&str], options: &[&str]) -> Proc {
    let mut cmd = topo.server.cmd(bins::ws_echo());
    cmd.args(options);
    cmd.args(["--listen", "0.0.0.0:8080", "--listen", "[::]:8080"]);
    cmd.args(["--tls-listen", "0.0.0.0:8443", "--tls-listen", "[::]:8443"]);
    cmd.args([
        "--cert-name",
        &topo.server_v4,
        "--cert-name",
        &topo.server_v6,
    ]);
    for addr in extra {
        cmd.args(["--listen", addr]);
    }
    let mut echo = Proc::spawn("ws-echo", cmd, false);
    for _ in 0..4 + extra.len() {
        echo.wait_line("listening", Duration::from_secs(10));
    }
    echo
}

/// Starts `redirector run` on the server veth with `args`; returns once it is attached.
/// Without a `--mode` in `args`, the packet rewrite at TC ingress (`--mode tc`): `auto`
/// would take socket steering, the server being in the loader's namespace.
pub fn start_loader(topo: &Topology, args: &[&str]) -> Proc {
    let mut cmd = topo.server.cmd(bins::redirector());
    cmd.args(["run", "--no-local", "--iface", topo.server_if])
        .args(rewrite_unless_mode(args))
        .args(args);
    let mut loader = Proc::spawn("redirector", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    loader
}

/// `--mode tc` unless `args` name a mode: the suites of the packet rewrite run their
/// loaders with it, since `auto` takes socket steering where the server is in the loader's
/// namespace, as it is in [`Topology`].
pub fn rewrite_unless_mode(args: &[&str]) -> &'static [&'static str] {
    if args
        .iter()
        .any(|a| *a == "--mode" || a.starts_with("--mode="))
    {
        &[]
    } else {
        &["--mode", "tc"]
    }
}

/// The loader's `redirector ready …` line.
pub fn ready_line(loader: &Proc) -> String {
    loader
        .seen
        .iter()
        .find(|l| l.starts_with("redirector ready"))
        .cloned()
        .expect("loader started with start_loader")
}

/// Stops the loader with SIGTERM; asserts a clean exit and returns its final stdout.
pub fn stop_loader(mut loader: Proc) -> Vec<String> {
    loader.signal(libc::SIGTERM);
    let (status, lines) = loader.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "loader exit {status}: {}",
        loader.stderr_text()
    );
    assert!(
        lines.iter().any(|l| l.starts_with("redirector stopped")),
        "{lines:?}"
    );
    lines
}

/// Runs ws-client in the client namespace (self-signed certificates accepted).
pub fn ws_client(topo: &Topology, url: &str, args: &[&str]) -> Output {
    let mut cmd = topo.client.cmd(bins::ws_client());
    cmd.args(["--url", url, "--insecure", "--timeout", "120"])
        .args(args);
    cmd.output().expect("spawn ws-client")
}

/// Asserts that a message sent to `url` comes back.
pub fn assert_echo(topo: &Topology, url: &str) {
    let out = ws_client(topo, url, &["--message", "hello server"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("echo: hello server"),
        "{url}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that `bytes` sent to `url` (ws-client `--bytes`) come back byte-exact.
pub fn assert_bulk(topo: &Topology, url: &str, bytes: u64) {
    let size = bytes.to_string();
    let out = ws_client(topo, url, &["--bytes", &size]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(&format!(
                "sent {size} bytes, received {size} bytes, verified"
            )),
        "{url}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `flows_new` counter of the rule on `port` in `redirector stats --json` (with socket
/// steering: the connections steered).
pub fn flows_new(stats: &serde_json::Value, port: u64) -> u64 {
    stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from_port"] == port)
        .unwrap_or_else(|| panic!("no rule for {port} in {stats}"))["flows_new"]
        .as_u64()
        .unwrap()
}

/// Asserts that no WebSocket session can be opened to `url`.
pub fn assert_refused(topo: &Topology, url: &str) {
    let out = ws_client(topo, url, &["--message", "x", "--connect-timeout", "3"]);
    assert!(!out.status.success(), "{url} must not be reachable");
}

/// An open interactive WebSocket session that has exchanged one message.
pub fn open_session(topo: &Topology, url: &str) -> Proc {
    open_session_with(topo, url, &["--timeout", "60"])
}

/// An open interactive WebSocket session from local port `port` that lives at most
/// `limit` (ws-client's `--timeout`) and has exchanged one message.
pub fn open_session_from(topo: &Topology, url: &str, port: u16, limit: Duration) -> Proc {
    let (port, limit) = (port.to_string(), limit.as_secs().to_string());
    open_session_with(topo, url, &["--local-port", &port, "--timeout", &limit])
}

/// [`open_session`] with ws-client `options` (`--timeout` among them).
fn open_session_with(topo: &Topology, url: &str, options: &[&str]) -> Proc {
    let mut cmd = topo.client.cmd(bins::ws_client());
    cmd.args(["--url", url, "--insecure", "--interactive"])
        .args(options);
    let mut session = Proc::spawn("ws-client (session)", cmd, true);
    session.wait_line("connected", Duration::from_secs(10));
    exchange(&mut session, "first");
    session
}

/// Sends `text` on an open session and waits for its echo.
pub fn exchange(session: &mut Proc, text: &str) {
    writeln!(session.stdin(), "{text}").unwrap();
    session.wait_line(&format!("echo: {text}"), Duration::from_secs(10));
}

/// Ends a session cleanly (stdin EOF → close frame) and asserts it exited successfully.
pub fn close_session(mut session: Proc) {
    session.close_stdin();
    let (status, _) = session.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "session: {}", session.stderr_text());
}

/// Waits until no program named redirector_* is loaded (program release is deferred).
pub fn assert_no_program_loaded() {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter_map(|p| p.name_as_str().map(str::to_string))
            .filter(|n| n.starts_with("redirector_"))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "programs still loaded: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `done` (every 50 ms) until it holds; panics, naming what was awaited, after
/// `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number of established TCP connections in `ns` that match the `ss` filter `filter`
/// (`( dport = :80 )`).
pub fn established(ns: &Netns, filter: &str) -> usize {
    let out = must(ns.cmd("ss").args(["-Htn", "state", "established", filter]));
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// How a control command enters the test's network namespace.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    /// `ip netns exec` (a private /sys: the loader's pins are reached via /proc/PID/root).
    IpNetnsExec,
    /// `nsenter --net=` (the host's mounts: the only way to a persisted instance).
    Nsenter,
}

/// Runs `redirector ARGS` in `ns` entered `via` (a control command).
pub fn ctl_via(via: Via, ns: &Netns, args: &[&str]) -> Output {
    let mut cmd = match via {
        Via::IpNetnsExec => ns.cmd(bins::redirector()),
        Via::Nsenter => ns.nsenter_cmd(bins::redirector()),
    };
    cmd.args(args).output().unwrap()
}

/// Runs a control command that must succeed; returns its stdout.
pub fn ctl_ok_via(via: Via, ns: &Netns, args: &[&str]) -> String {
    let out = ctl_via(via, ns, args);
    assert!(
        out.status.success(),
        "redirector {args:?} ({via:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a control command with `--json` and parses its output.
pub fn ctl_json_via(via: Via, ns: &Netns, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let text = ctl_ok_via(via, ns, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// Removes the persisted instance of a test's namespace on drop, so that a failing test
/// leaves nothing attached or pinned. A loader of that instance that still runs (the test
/// failed while it served) would refuse the detach: it is killed first, by the pid its
/// instance reports.
pub struct DetachOnDrop<'a>(pub &'a Netns);

impl Drop for DetachOnDrop<'_> {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = ctl_via(Via::Nsenter, self.0, &["status", "--json"]);
            let running = serde_json::from_slice::<serde_json::Value>(&status.stdout)
                .ok()
                .filter(|status| status["loader_running"] == true)
                .and_then(|status| status["pid"].as_u64());
            match running {
                Some(pid) if Instant::now() < deadline => {
                    // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => break,
            }
        }
        let _ = ctl_via(Via::Nsenter, self.0, &["detach"]);
    }
}

/// [`ctl_via`] with `ip netns exec`, the way users run control commands.
pub fn ctl(ns: &Netns, args: &[&str]) -> Output {
    ctl_via(Via::IpNetnsExec, ns, args)
}

/// [`ctl_ok_via`] with `ip netns exec`.
pub fn ctl_ok(ns: &Netns, args: &[&str]) -> String {
    ctl_ok_via(Via::IpNetnsExec, ns, args)
}

/// [`ctl_json_via`] with `ip netns exec`.
pub fn ctl_json(ns: &Netns, args: &[&str]) -> serde_json::Value {
    ctl_json_via(Via::IpNetnsExec, ns, args)
}

/// The value of the sample `series` (name and labels, exactly) in a Prometheus text body.
pub fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in\n{body}"))
        .parse()
        .unwrap()
}

/// A temporary directory unique to this process and call, removed on drop (also when the
/// test panics).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh directory whose name contains `tag`.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rdrt-{tag}-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `python3 -m http.server` on 127.0.0.1:`port` serving `root`; `python3` is the
/// command to run it with (plain, or inside a namespace). Returns once it serves.
pub fn start_http_server(mut python3: Command, port: u16, root: &Path) -> Proc {
    python3
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(root);
    let mut web = Proc::spawn("python3 http.server", python3, false);
    web.wait_line("Serving HTTP", Duration::from_secs(10));
    web
}

/// The hard open-file limit of process `pid`, from /proc/PID/limits.
pub fn hard_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    // `Max open files  SOFT  HARD  files`
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

/// The sniffing proxy's default `--max-conns` under a hard open-file limit of `hard`, as
/// docs/SNIFF.md states it (written out here, not taken from the library): 2.5
/// descriptors a connection after a reserve of 64, between 1 and 1,000,000.
pub fn default_sniff_max_conns(hard: u64) -> u64 {
    (hard.saturating_sub(64) * 2 / 5).clamp(1, 1_000_000)
}

/// Installs, in `ns`, the input policy the firewall tests use: an nftables table `table`
/// whose input chain drops by policy and accepts loopback, ICMP (neighbour discovery),
/// TCP to 80/443 and packets whose mark has 0x42 in its low byte — never 8080/8443.
pub fn install_input_firewall(ns: &Netns, table: &str) {
    let ruleset = format!(
        "table inet {table} {{\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter; policy drop;\n\
         \x20   iif lo accept\n\
         \x20   meta l4proto {{ icmp, ipv6-icmp }} accept\n\
         \x20   tcp dport {{ 80, 443 }} accept\n\
         \x20   meta mark & 0xff == 0x42 accept\n\
         \x20 }}\n\
         }}\n"
    );
    let dir = TempDir::new(&format!("{table}-nft"));
    let path = dir.0.join("input.nft");
    std::fs::write(&path, ruleset).unwrap();
    must(ns.cmd("nft").arg("-f").arg(&path));
}

/// `redirector run`'s arguments of a sniffing proxy on :80 in front of ws-echo on 8080 and
/// an HTTP server on 8000 (443 stays a kernel redirect to 8443).
pub const SNIFF_RUN_ARGS: &[&str] = &[
    "--redirect",
    "443:8443",
    "--sniff-listen",
    "0.0.0.0:80",
    "--sniff-websocket",
    "127.0.0.1:8080",
    "--sniff-http",
    "127.0.0.1:8000",
];
