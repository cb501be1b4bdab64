//! The sniffing proxy in network namespaces: `redirector run --sniff-listen` with the
//! `--sniff-*` options of `redirector sniff` (they take effect; the proxy's counters reach
//! `redirector stats` and the `--metrics` endpoint while it runs), and IPv6 clients
//! grouped per /64 by `--max-conns-per-ip`.

use std::time::{Duration, Instant};

use redirector_tests::{bins, fixtures::*, privileges};
use testkit::{
    cmd::must,
    netns::{Netns, Topology},
    process::Proc,
};

/// Runs a Python snippet in the client namespace and returns its stdout (trimmed).
fn client_python(topo: &Topology, script: &str) -> String {
    let out = must(
        topo.client
            .cmd("timeout")
            .args(["30", "python3", "-c", script]),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Opens a connection to `addr:port` from the client namespace, sends nothing, and prints
/// how many seconds passed until the server closed it (at most 15).
fn seconds_until_closed(topo: &Topology, port: u16) -> f64 {
    let script = format!(
        "import socket,time\n\
         s=socket.create_connection(('{}',{port}),timeout=5)\n\
         s.settimeout(15)\n\
         t=time.time()\n\
         try:\n  s.recv(1)\n\
         except (ConnectionResetError, socket.timeout):\n  pass\n\
         print(time.time()-t)\n",
        topo.server_v4
    );
    client_python(topo, &script).parse().unwrap()
}

/// Value of `sniff counter NAME=` in the loader's final output.
fn sniff_counter(lines: &[String], name: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("sniff counter {name}=")))
        .unwrap_or_else(|| panic!("no sniff counter {name} in {lines:?}"))
        .parse()
        .unwrap()
}

/// `--sniff-header-timeout 1` under `run`: a silent client is cut after about a second,
/// where `redirector sniff`'s default would wait ten.
#[test]
fn run_applies_non_default_sniff_options() {
    let _serial = serial();
    let topo = Topology::new("runsopt");
    let _echo = start_echo(&topo, &[]);
    let mut args = SNIFF_RUN_ARGS.to_vec();
    args.extend_from_slice(&[
        "--sniff-header-timeout",
        "1",
        "--sniff-max-header-bytes",
        "512",
    ]);
    let loader = start_loader(&topo, &args);
    // No --sniff-max-conns: the limit derived from the loader's open-file limit, handed
    // to its child, shown at start and by `status`.
    let max_conns = default_sniff_max_conns(hard_nofile(loader.pid()));
    let shown = format!("redirector sniff limits: max-conns {max_conns}");
    assert!(loader.seen.contains(&shown), "{:?}", loader.seen);
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["sniff"]["max_conns"], max_conns, "{status:#}");
    let text = ctl_ok(&topo.server, &["status"]);
    assert!(
        text.contains(&format!("\nsniff: max-conns {max_conns}\n")),
        "{text}"
    );
    let waited = seconds_until_closed(&topo, 80);
    assert!((0.8..4.0).contains(&waited), "closed after {waited} s");
    // A head over the 512-byte limit is refused (the default allows 16 KiB): closed, with a
    // reset if its unread rest was still queued.
    let script = format!(
        "import socket\n\
         s=socket.create_connection(('{}',80),timeout=5)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nX-Pad: ' + b'a'*1000 + b'\\r\\n\\r\\n')\n\
         s.settimeout(5)\n\
         try:\n  print(len(s.recv(100)))\n\
         except ConnectionResetError:\n  print(0)\n",
        topo.server_v4
    );
    assert_eq!(client_python(&topo, &script), "0");
    assert_echo(&topo, &topo.url("ws", false, 80)); // ordinary upgrades still pass
    let lines = stop_loader(loader);
    assert_eq!(sniff_counter(&lines, "header_timeout"), 1, "{lines:?}");
    assert_eq!(sniff_counter(&lines, "too_large"), 1, "{lines:?}");
    assert_eq!(sniff_counter(&lines, "websocket"), 1, "{lines:?}");
}

/// The proxy configured by `[sniff]` of `--config` (read by the loader and by the proxy's
/// process, which re-reads the same arguments), a flag overriding one of its keys: the
/// flag's 1 s header timeout applies, not the file's 30 s, and the file's 512-byte head
/// limit applies.
#[test]
fn run_takes_the_sniff_proxy_from_the_config_file_and_flags_override_it() {
    let _serial = serial();
    let topo = Topology::new("runscfg");
    let _echo = start_echo(&topo, &[]);
    let dir = TempDir::new("sniff-config");
    let config = dir.0.join("redirector.toml");
    std::fs::write(
        &config,
        "redirects = [\"443:8443\"]\n\
         [sniff]\n\
         listen = \"0.0.0.0:80\"\n\
         websocket = \"127.0.0.1:8080\"\n\
         http = \"127.0.0.1:8000\"\n\
         header_timeout = 30\n\
         max_header_bytes = 512\n",
    )
    .unwrap();
    let loader = start_loader(
        &topo,
        &[
            "--config",
            config.to_str().unwrap(),
            "--sniff-header-timeout",
            "1",
        ],
    );
    let announced = loader
        .seen
        .iter()
        .any(|l| l == "redirector sniff ready: listening on 0.0.0.0:80");
    assert!(announced, "{:?}", loader.seen);
    let waited = seconds_until_closed(&topo, 80);
    assert!((0.8..4.0).contains(&waited), "closed after {waited} s");
    let script = format!(
        "import socket\n\
         s=socket.create_connection(('{}',80),timeout=5)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nX-Pad: ' + b'a'*1000 + b'\\r\\n\\r\\n')\n\
         s.settimeout(5)\n\
         try:\n  print(len(s.recv(100)))\n\
         except ConnectionResetError:\n  print(0)\n",
        topo.server_v4
    );
    assert_eq!(client_python(&topo, &script), "0");
    assert_echo(&topo, &topo.url("ws", false, 80));
    let lines = stop_loader(loader);
    assert_eq!(sniff_counter(&lines, "header_timeout"), 1, "{lines:?}");
    assert_eq!(sniff_counter(&lines, "too_large"), 1, "{lines:?}");
}

/// Polls `redirector stats --json` in the server namespace until `check` accepts it (the
/// loader republishes the sniff counters every second), for at most 5 s.
fn stats_until(topo: &Topology, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = ctl_json(&topo.server, &["stats"]);
        if check(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "stats never matched: {stats:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// While `run --sniff-listen` runs, its proxy's counters are in `redirector stats` (text and
/// JSON) and on `--metrics`, next to the kernel counters, and they follow the traffic.
#[test]
fn run_sniff_counters_reach_stats_and_metrics() {
    let _serial = serial();
    let topo = Topology::new("runsstat");
    let _echo = start_echo(&topo, &[]);
    let root = TempDir::new("runsstat");
    std::fs::write(root.0.join("index.html"), "hello\n").unwrap();
    let web = start_http_server(topo.server.cmd("python3"), 8000, &root.0);
    let loader = start_loader(
        &topo,
        &[
            "--redirect",
            "443:8443",
            "--metrics",
            "127.0.0.1:9464",
            "--sniff-listen",
            "0.0.0.0:80",
            "--sniff-websocket",
            "127.0.0.1:8080",
            "--sniff-http",
            "127.0.0.1:8000",
            "--sniff-max-conns",
            "123",
        ],
    );

    // Before any traffic: published, all zero; the limit given.
    let stats = stats_until(&topo, |s| s["sniff"]["accepted"] == 0);
    assert!(
        stats["rules"].is_array() && stats["counters"].is_object(),
        "{stats:#}"
    );
    assert_eq!(stats["sniff_limits"]["max_conns"], 123, "{stats:#}");
    assert!(
        loader
            .seen
            .iter()
            .any(|l| l == "redirector sniff limits: max-conns 123"),
        "{:?}",
        loader.seen
    );
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["sniff"]["max_conns"], 123, "{status:#}");
    let text = ctl_ok(&topo.server, &["status"]);
    assert!(text.ends_with("\nsniff: max-conns 123\n"), "{text}");

    for _ in 0..2 {
        assert_echo(&topo, &topo.url("ws", false, 80));
    }
    let url = format!("http://{}:80/index.html", topo.server_v4);
    for _ in 0..3 {
        let fetched =
            must(
                topo.client
                    .cmd("curl")
                    .args(["-sS", "--fail", "--max-time", "10", &url]),
            );
        assert_eq!(fetched.stdout, b"hello\n");
    }
    let stats = stats_until(&topo, |s| s["sniff"]["accepted"] == 5);
    let sniff = &stats["sniff"];
    assert_eq!(sniff["websocket"], 2, "{stats:#}");
    assert_eq!(sniff["http"], 3, "{stats:#}");
    assert_eq!(sniff["relay_error"], 0, "{stats:#}");
    assert!(
        sniff["bytes_backend_to_client"].as_u64().unwrap() > 3 * 6,
        "{stats:#}"
    );
    let text = ctl_ok(&topo.server, &["stats"]);
    assert!(text.contains("sniff counter websocket=2\n"), "{text}");
    assert!(text.ends_with("sniff limit max_conns=123\n"), "{text}");
    assert!(text.contains("rule 443->8443:"), "{text}");

    let scrape = must(topo.server.cmd("curl").args([
        "-sS",
        "--fail",
        "--max-time",
        "5",
        "http://127.0.0.1:9464/metrics",
    ]));
    let body = String::from_utf8(scrape.stdout).unwrap();
    assert_eq!(sample(&body, "redirector_sniff_accepted_total"), 5);
    assert_eq!(sample(&body, "redirector_sniff_max_connections"), 123);
    assert_eq!(
        sample(
            &body,
            "redirector_sniff_connections_total{route=\"websocket\"}"
        ),
        2
    );
    assert_eq!(
        sample(&body, "redirector_sniff_connections_total{route=\"http\"}"),
        3
    );
    assert_eq!(
        sample(
            &body,
            "redirector_sniff_closed_total{reason=\"header_timeout\"}"
        ),
        0
    );
    assert!(
        body.contains("redirector_rule_flows_new_total{"),
        "kernel series too"
    );

    let lines = stop_loader(loader);
    assert_eq!(sniff_counter(&lines, "accepted"), 5, "{lines:?}");
    // The published file goes with the loader.
    let leftover: Vec<_> = std::fs::read_dir("/run/redirector")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let netns_files: Vec<_> = leftover
        .iter()
        .filter(|n| n.to_string_lossy().ends_with(".sniff"))
        .collect();
    assert!(netns_files.is_empty(), "{netns_files:?}");
    drop(web);
}

/// `--max-conns-per-ip` counts IPv6 clients per /64: in a namespace of its own, with three
/// addresses on `lo`, a second connection from another address of the same /64 is closed
/// while one from another /64 is kept.
#[test]
fn per_ip_limit_groups_ipv6_clients_by_64() {
    let ns = Netns::new(&format!("rdrt-perip6-{}", std::process::id()));
    for addr in ["fd00:64:1::1/64", "fd00:64:1::2/64", "fd00:64:2::1/64"] {
        must(
            ns.cmd("ip")
                .args(["-6", "addr", "add", addr, "dev", "lo", "nodad"]),
        );
    }
    let mut cmd = ns.cmd(bins::redirector());
    cmd.args(["sniff", "--listen", "[::]:8081"])
        .args(["--websocket", "[::1]:9", "--http", "[::1]:9"])
        .args(["--max-conns-per-ip", "1", "--metrics", "127.0.0.1:9464"]);
    let mut proxy = Proc::spawn("redirector sniff", cmd, false);
    proxy.wait_line("redirector sniff ready", Duration::from_secs(10));
    // Connections that send nothing stay in the sniffing phase (10 s header timeout) and
    // hold their slot; each step waits until the proxy has accepted what came before.
    let script = "import socket,time,urllib.request\n\
         def conn(src):\n  s=socket.socket(socket.AF_INET6)\n  s.bind((src,0))\n  \
         s.connect(('fd00:64:1::1',8081))\n  return s\n\
         def closed(s):\n  s.settimeout(1.0)\n  try:\n    return s.recv(1)==b''\n  \
         except socket.timeout:\n    return False\n  except ConnectionResetError:\n    return True\n\
         web=urllib.request.build_opener(urllib.request.ProxyHandler({}))\n\
         def accepted(n):\n  for _ in range(200):\n    \
         body=web.open('http://127.0.0.1:9464/metrics',timeout=5).read().decode()\n    \
         if int(body.split('\\nredirector_sniff_accepted_total ')[1].split()[0])>=n:\n      \
         return\n    time.sleep(0.05)\n  \
         raise SystemExit('the proxy did not accept %d connections within 10 s' % n)\n\
         a=conn('fd00:64:1::1')\naccepted(1)\n\
         b=conn('fd00:64:1::2')\nc=conn('fd00:64:2::1')\naccepted(3)\n\
         print(closed(b), closed(c), closed(a))\n";
    let out = must(ns.cmd("timeout").args(["30", "python3", "-c", script]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True False False",
        "same /64 closed, other /64 and the first kept"
    );
    proxy.signal(libc::SIGTERM);
    let (status, lines) = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{lines:?}");
    assert_eq!(sniff_counter(&lines, "over_ip_limit"), 1, "{lines:?}");
    assert_eq!(sniff_counter(&lines, "accepted"), 3, "{lines:?}");
}

/// The loader's only child: its sniffing proxy's process.
fn proxy_child(loader: &Proc) -> u32 {
    let children = privileges::children_of(loader.pid());
    assert_eq!(children.len(), 1, "children of the loader: {children:?}");
    children[0]
}

/// Under `run --sniff-listen` the proxy is a child process that runs as an unprivileged
/// user with no capabilities (checked while a relayed WebSocket session is open), while
/// the loader keeps its capabilities; the child goes when the loader stops.
#[test]
fn run_sniff_proxy_is_an_unprivileged_child() {
    let _serial = serial();
    let topo = Topology::new("runspriv");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, SNIFF_RUN_ARGS);
    let child = proxy_child(&loader);
    let mut session = open_session(&topo, &topo.url("ws", false, 80));
    privileges::assert_unprivileged(child);
    exchange(&mut session, "relayed by the unprivileged child");
    privileges::assert_unprivileged(child);
    let held = privileges::of(loader.pid());
    assert_eq!(held.uids[1], 0, "the loader stays root: {held:?}");
    let eff = &held.caps.iter().find(|(n, _)| n == "CapEff").unwrap().1;
    assert_ne!(eff, "0000000000000000", "the loader keeps its capabilities");
    drop(session);
    let lines = stop_loader(loader);
    assert_eq!(sniff_counter(&lines, "websocket"), 1, "{lines:?}");
    // Reaped by the loader before it exited.
    assert!(
        !std::path::Path::new(&format!("/proc/{child}")).exists(),
        "proxy child {child} outlived the loader"
    );
}

/// If the proxy's process dies, the loader notices, stops (detaching) and exits with an
/// error, for its supervisor to restart it.
#[test]
fn run_stops_with_an_error_when_its_proxy_dies() {
    let _serial = serial();
    let topo = Topology::new("runsdie");
    let _echo = start_echo(&topo, &[]);
    let mut loader = start_loader(&topo, SNIFF_RUN_ARGS);
    let child = proxy_child(&loader);
    // SAFETY: kill(2) on the pid of the loader's child, which it has not reaped yet.
    assert_eq!(unsafe { libc::kill(child as i32, libc::SIGKILL) }, 0);
    let (status, lines) = loader.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("redirector stopped")),
        "{lines:?}"
    );
    let stderr = loader.stderr_text();
    assert!(
        stderr.contains("sniffing proxy's process exited unexpectedly"),
        "{stderr}"
    );
}

/// A `--sniff-user` that does not exist is refused before anything is attached.
#[test]
fn run_refuses_a_missing_sniff_user() {
    let _serial = serial();
    let topo = Topology::new("runsuser");
    let mut args = vec!["run", "--no-local", "--iface", topo.server_if];
    args.extend_from_slice(SNIFF_RUN_ARGS);
    args.extend_from_slice(&["--sniff-user", "no-such-user-redirector"]);
    let out = topo
        .server
        .cmd(redirector_tests::bins::redirector())
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
}
