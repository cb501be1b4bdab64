//! Namespace integration: the real loader, real eBPF programs, real WebSocket servers and
//! clients over a veth pair with full checksums (tx offload off on both ends).

use std::{
    io::Write,
    process::Output,
    sync::Mutex,
    time::{Duration, Instant},
};

use redirector_tests::{
    bins,
    netns::{must, Topology},
    process::Proc,
};

/// Tests that start loaders run one at a time, so "no redirector program is loaded any
/// more" after a loader exits is a meaningful check.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts ws-echo in the server namespace on 8080 (ws) and 8443 (wss), v4 and v6, plus
/// any `extra` plain listeners.
fn start_echo(topo: &Topology, extra: &[&str]) -> Proc {
    let mut cmd = topo.server.cmd(bins::ws_echo());
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

/// Starts `redirector run` on the server veth with `args`; waits until it is attached.
fn start_loader(topo: &Topology, args: &[&str]) -> Proc {
    let mut cmd = topo.server.cmd(bins::redirector());
    cmd.args(["run", "--iface", topo.server_if]).args(args);
    let mut loader = Proc::spawn("redirector", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    loader
}

/// Stops the loader with SIGTERM; returns its final stdout (the counters).
fn stop_loader(mut loader: Proc) -> Vec<String> {
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

/// Value of `key=` on the `rule FROM->TO:` line of the loader's final counters.
fn rule_stat(lines: &[String], rule: &str, key: &str) -> u64 {
    let line = lines
        .iter()
        .find(|l| l.starts_with(&format!("rule {rule}:")))
        .unwrap_or_else(|| panic!("no rule {rule} in {lines:?}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

/// Value of a global counter in the loader's final output.
fn counter(lines: &[String], name: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("counter {name}=")))
        .unwrap_or_else(|| panic!("no counter {name} in {lines:?}"))
        .parse()
        .unwrap()
}

/// Runs ws-client in the client namespace.
fn ws_client(topo: &Topology, url: &str, args: &[&str]) -> Output {
    let mut cmd = topo.client.cmd(bins::ws_client());
    cmd.args(["--url", url, "--insecure", "--timeout", "120"])
        .args(args);
    cmd.output().expect("spawn ws-client")
}

fn assert_echo(topo: &Topology, url: &str) {
    let out = ws_client(topo, url, &["--message", "hello server"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("echo: hello server"),
        "{url}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_refused(topo: &Topology, url: &str) {
    let out = ws_client(topo, url, &["--message", "x", "--connect-timeout", "3"]);
    assert!(!out.status.success(), "{url} must not be reachable");
}

/// Waits until no program named redirector_* is loaded (program release is deferred).
fn assert_nothing_attached(topo: &Topology) {
    let link = must(
        topo.server
            .cmd("ip")
            .args(["-d", "link", "show", "dev", topo.server_if]),
    );
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("prog/xdp"), "XDP still attached:\n{link}");
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

#[test]
fn websocket_echo_through_80_and_443_in_every_mode() {
    let _serial = serial();
    let topo = Topology::new("echo");
    let _echo = start_echo(&topo, &[]);
    for mode in ["xdp", "xdp-generic", "tc"] {
        let loader = start_loader(&topo, &["--mode", mode]);
        assert!(
            loader.seen.iter().any(|l| l.contains(&format!("({mode})"))),
            "{:?}",
            loader.seen
        );
        for v6 in [false, true] {
            assert_echo(&topo, &topo.url("ws", v6, 80));
            assert_echo(&topo, &topo.url("wss", v6, 443));
            assert_echo(&topo, &topo.url("ws", v6, 8080)); // direct still works
            assert_refused(&topo, &topo.url("ws", v6, 81)); // nothing else redirected
        }
        let lines = stop_loader(loader);
        assert_eq!(
            rule_stat(&lines, "80->8080", "flows_new"),
            2,
            "{mode}: {lines:?}"
        );
        assert_eq!(
            rule_stat(&lines, "443->8443", "flows_new"),
            2,
            "{mode}: {lines:?}"
        );
        assert!(rule_stat(&lines, "80->8080", "packets_out") > 0, "{mode}");
        assert_eq!(counter(&lines, "rewrite_failed"), 0);
        assert_nothing_attached(&topo);
        assert_refused(&topo, &topo.url("ws", false, 80));
    }
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}

#[test]
fn large_transfer_is_byte_exact_both_ways() {
    let _serial = serial();
    let topo = Topology::new("bulk");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &[]);
    let size = (64u64 << 20).to_string();
    for (url, scheme) in [
        (topo.url("ws", false, 80), "ws"),
        (topo.url("wss", true, 443), "wss"),
    ] {
        let out = ws_client(&topo, &url, &["--bytes", &size]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && stdout.contains(&format!(
                    "sent {size} bytes, received {size} bytes, verified"
                )),
            "{scheme}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lines = stop_loader(loader);
    assert!(
        rule_stat(&lines, "80->8080", "bytes_in") > 64 << 20,
        "{lines:?}"
    );
    assert!(
        rule_stat(&lines, "443->8443", "bytes_out") > 64 << 20,
        "{lines:?}"
    );
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}

#[test]
fn connection_opened_before_the_loader_is_not_hijacked() {
    let _serial = serial();
    let topo = Topology::new("pre");
    // A server really listening on 80 as well: the old connection talks to it.
    let _echo = start_echo(&topo, &["0.0.0.0:80"]);
    let mut cmd = topo.client.cmd(bins::ws_client());
    cmd.args([
        "--url",
        &topo.url("ws", false, 80),
        "--interactive",
        "--timeout",
        "60",
    ]);
    let mut old = Proc::spawn("ws-client (old)", cmd, true);
    old.wait_line("connected", Duration::from_secs(10));
    writeln!(old.stdin(), "before").unwrap();
    old.wait_line("echo: before", Duration::from_secs(10));

    let loader = start_loader(&topo, &[]);
    assert_echo(&topo, &topo.url("ws", false, 80)); // a new connection is redirected
    writeln!(old.stdin(), "during").unwrap();
    old.wait_line("echo: during", Duration::from_secs(10));
    // The old connection is still on the server's port 80, the new one went to 8080.
    let ss = must(
        topo.server
            .cmd("ss")
            .args(["-Htn", "state", "established", "( sport = :80 )"]),
    );
    assert!(
        !String::from_utf8_lossy(&ss.stdout).trim().is_empty(),
        "old connection gone"
    );
    old.close_stdin();
    let (status, _) = old.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "old client: {}", old.stderr_text());

    let lines = stop_loader(loader);
    assert_eq!(rule_stat(&lines, "80->8080", "flows_new"), 1, "{lines:?}");
    assert!(
        counter(&lines, "pass_untracked") > 0,
        "old flow's packets pass untracked"
    );
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}

#[test]
fn allow_list_limits_which_sources_are_redirected() {
    let _serial = serial();
    let topo = Topology::new("allow");
    let _echo = start_echo(&topo, &[]);
    // IPv4 client allowed; the IPv6 client's prefix is not.
    let allow = format!("{}/32", topo.client_v4);
    let loader = start_loader(&topo, &["--allow", &allow, "--allow", "2001:db8::/32"]);
    assert_echo(&topo, &topo.url("ws", false, 80));
    assert_refused(&topo, &topo.url("ws", true, 80));
    let lines = stop_loader(loader);
    assert!(counter(&lines, "pass_source_denied") >= 1, "{lines:?}");
    assert_eq!(rule_stat(&lines, "80->8080", "flows_new"), 1);
}

/// One process, two paths: `redirector run --sniff-listen` moves 443 to 8443 in the kernel
/// and tells WebSocket from plain HTTP on port 80 in user space.
#[test]
fn run_with_sniff_serves_kernel_and_sniffed_paths_together() {
    let _serial = serial();
    let topo = Topology::new("runsniff");
    let _echo = start_echo(&topo, &[]);
    let root = std::env::temp_dir().join(format!("rdrt-runsniff-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let file: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
        .collect();
    std::fs::write(root.join("known.bin"), &file).unwrap();
    let mut web_cmd = topo.server.cmd("python3");
    web_cmd
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "8000"])
        .arg("--directory")
        .arg(&root);
    let mut web = Proc::spawn("python3 http.server", web_cmd, false);
    web.wait_line("Serving HTTP", Duration::from_secs(10));

    let loader = start_loader(
        &topo,
        &[
            "--redirect",
            "443:8443",
            "--sniff-listen",
            "0.0.0.0:80",
            "--sniff-websocket",
            "127.0.0.1:8080",
            "--sniff-http",
            "127.0.0.1:8000",
        ],
    );
    assert!(
        loader
            .seen
            .iter()
            .any(|l| l == "redirector sniff ready: listening on 0.0.0.0:80"),
        "{:?}",
        loader.seen
    );
    assert_echo(&topo, &topo.url("ws", false, 80)); // sniffed: WebSocket
    let url = format!("http://{}:80/known.bin", topo.server_v4);
    let fetched = must(
        topo.client
            .cmd("curl")
            .args(["-sS", "--fail", "--max-time", "10", &url]),
    );
    assert!(
        fetched.stdout == file,
        "{url}: {} bytes",
        fetched.stdout.len()
    ); // sniffed: HTTP
    assert_echo(&topo, &topo.url("wss", false, 443)); // kernel redirect

    let lines = stop_loader(loader);
    drop(web);
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(rule_stat(&lines, "443->8443", "flows_new"), 1, "{lines:?}");
    let sniff_counter = |name: &str| -> u64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("sniff counter {name}=")))
            .unwrap_or_else(|| panic!("no sniff counter {name} in {lines:?}"))
            .parse()
            .unwrap()
    };
    assert!(
        lines.iter().any(|l| l == "redirector sniff stopped"),
        "{lines:?}"
    );
    assert_eq!(sniff_counter("websocket"), 1, "{lines:?}");
    assert_eq!(sniff_counter("http"), 1, "{lines:?}");
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}
