//! Local clients: a process on the server host itself connecting to one of the host's own
//! addresses (127.0.0.1, ::1, its veth addresses) on a rule's FROM port never crosses the
//! interface hooks; the cgroup connect programs redirect it at connect time, and
//! getpeername still shows the FROM port. Real connects, no TestRun.
//!
//! Each test creates its own cgroup v2 directory (never the machine's root cgroup),
//! moves itself into it (so every client it spawns starts there) and removes it at the
//! end; loaders run through `nsenter --net=`, whose /sys still shows the cgroup mount.

use std::{
    fs::File,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use redirector_tests::{bins, fixtures::*, format2};
use serde_json::Value;
use testkit::{
    cgroup::Cgroup,
    netns::{Netns, Topology},
    process::Proc,
};

/// A test's own cgroup, named after the test and this process.
fn test_cgroup(tag: &str) -> Cgroup {
    Cgroup::new(&format!(
        "redirector-test-local-{tag}-{}",
        std::process::id()
    ))
}

/// Starts `redirector run` on the server veth with its cgroup programs on `cgroup`.
fn start_local_loader(topo: &Topology, cgroup: &Cgroup, args: &[&str]) -> Proc {
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args(["run", "--iface", topo.server_if, "--mode", "tc"])
        .arg("--local-cgroup")
        .arg(cgroup.path())
        .args(args);
    let mut loader = Proc::spawn("redirector (local)", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    loader
}

/// Connects from inside `ns` (this process's cgroup) to `addr`: the socket, or the error.
/// The socket stays in `ns` after the thread that made it is gone.
fn connect_in(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let netns = File::open(&path).unwrap();
                // SAFETY: setns on an open netns fd; it changes only this thread's network
                // namespace, a thread that ends right after this connect.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            })
            .join()
            .unwrap()
    })
}

/// The port `getpeername` reports for a connect from `ns` to `addr`, which must succeed.
fn peer_port(ns: &Netns, addr: &str) -> u16 {
    let addr: SocketAddr = addr.parse().unwrap();
    let stream = connect_in(ns, addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.peer_addr().unwrap().port()
}

/// A connect from `ns` to `addr` is refused (nothing listens where it goes).
fn assert_connect_refused(ns: &Netns, addr: &str) {
    let result = connect_in(ns, addr.parse().unwrap());
    let err = result
        .err()
        .unwrap_or_else(|| panic!("{addr} must be refused"));
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{addr}: {err}"
    );
}

/// ws-client run in `ns` (and this process's cgroup): `url` echoes a message.
fn assert_echo_in(ns: &Netns, url: &str) {
    let out = ns
        .cmd(bins::ws_client())
        .args(["--url", url, "--message", "hello local", "--timeout", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("echo: hello local"),
        "{url}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The URLs a local client of the server namespace uses for its own port 80.
fn local_urls(topo: &Topology) -> Vec<String> {
    vec![
        "ws://127.0.0.1:80/".to_string(),
        "ws://[::1]:80/".to_string(),
        topo.url("ws", false, 80),
        topo.url("ws", true, 80),
    ]
}

/// The socket addresses of [`local_urls`].
fn local_addrs(topo: &Topology) -> Vec<String> {
    vec![
        "127.0.0.1:80".to_string(),
        "[::1]:80".to_string(),
        format!("{}:80", topo.server_v4),
        format!("[{}]:80", topo.server_v6),
    ]
}

/// A global counter of `redirector stats --json` in the server namespace.
fn counter(topo: &Topology, name: &str) -> u64 {
    let stats: Value = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// The names of the programs `bpftool cgroup show` lists on `cgroup`.
fn cgroup_programs(cgroup: &Cgroup) -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup.path())
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let list: Value = serde_json::from_str(&text).unwrap();
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

const OUR_PROGRAMS: [&str; 4] = [
    "redirector_connect4",
    "redirector_connect6",
    "redirector_getpeername4",
    "redirector_getpeername6",
];

#[test]
fn local_clients_reach_the_target_and_see_the_from_port() {
    let _serial = serial();
    let topo = Topology::new("loc-a");
    let cgroup = test_cgroup("a");
    let _inside = cgroup.enter().unwrap();
    let _echo = start_echo(&topo, &[]);
    // Nothing listens on :80 in the server namespace.
    assert_connect_refused(&topo.server, "127.0.0.1:80");
    let loader = start_local_loader(&topo, &cgroup, &[]);
    assert_eq!(cgroup_programs(&cgroup), OUR_PROGRAMS);
    let status = ctl_json_via(Via::Nsenter, &topo.server, &["status"]);
    assert_eq!(
        status["local_cgroup"].as_str(),
        cgroup.path().to_str(),
        "{status}"
    );
    for url in local_urls(&topo) {
        assert_echo_in(&topo.server, &url);
    }
    for addr in local_addrs(&topo) {
        assert_eq!(peer_port(&topo.server, &addr), 80, "getpeername of {addr}");
    }
    // Eight redirected connects (four echoes, four getpeername checks), counted once each
    // and in the rule's flows_new.
    assert_eq!(counter(&topo, "local_redirected"), 8);
    let stats = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
    let rule80 = stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from_port"] == 80)
        .cloned()
        .unwrap();
    assert_eq!(rule80["flows_new"], 8, "{stats}");
    // Other ports are left alone.
    assert_connect_refused(&topo.server, "127.0.0.1:81");
    stop_loader(loader);
    assert!(cgroup_programs(&cgroup).is_empty());
    assert_connect_refused(&topo.server, "127.0.0.1:80");
    assert_no_program_loaded();
}

#[test]
fn other_namespaces_in_the_same_cgroup_are_untouched() {
    let _serial = serial();
    let topo = Topology::new("loc-b");
    let cgroup = test_cgroup("b");
    let _inside = cgroup.enter().unwrap();
    // The client namespace runs its own server on :80 and nothing on :8080.
    let mut own = topo.client.cmd(bins::ws_echo());
    own.args(["--listen", "0.0.0.0:80", "--listen", "[::]:80"]);
    let mut own = Proc::spawn("ws-echo :80 (client namespace)", own, false);
    for _ in 0..2 {
        own.wait_line("listening", Duration::from_secs(10));
    }
    let loader = start_local_loader(&topo, &cgroup, &[]);
    let client_urls = [
        "ws://127.0.0.1:80/".to_string(),
        "ws://[::1]:80/".to_string(),
        format!("ws://{}:80/", topo.client_v4),
    ];
    for url in &client_urls {
        assert_echo_in(&topo.client, url);
    }
    for addr in ["127.0.0.1:80", "[::1]:80"] {
        assert_eq!(peer_port(&topo.client, addr), 80);
    }
    assert_connect_refused(&topo.client, "127.0.0.1:8080");
    assert_eq!(counter(&topo, "local_redirected"), 0);
    stop_loader(loader);
}

#[test]
fn a_disabled_rule_or_a_refused_address_leaves_local_connects_alone() {
    let _serial = serial();
    let topo = Topology::new("loc-c");
    let cgroup = test_cgroup("c");
    let _inside = cgroup.enter().unwrap();
    let _echo = start_echo(&topo, &[]);
    // The veth's IPv4 prefix is allowed; loopback is not.
    let allowed = format!("{}/32", topo.server_v4);
    let loader = start_local_loader(&topo, &cgroup, &["--allow", &allowed]);
    assert_echo_in(&topo.server, &topo.url("ws", false, 80));
    assert_connect_refused(&topo.server, "127.0.0.1:80");
    assert_connect_refused(&topo.server, "[::1]:80");
    assert_eq!(counter(&topo, "local_pass_source_denied"), 2);
    assert_eq!(counter(&topo, "local_redirected"), 1);

    ctl_ok_via(Via::Nsenter, &topo.server, &["disable", "80"]);
    let server80 = format!("{}:80", topo.server_v4);
    assert_connect_refused(&topo.server, &server80);
    assert_eq!(counter(&topo, "local_pass_rule_disabled"), 1);
    ctl_ok_via(Via::Nsenter, &topo.server, &["enable", "80"]);
    assert_eq!(peer_port(&topo.server, &server80), 80);
    assert_eq!(counter(&topo, "local_redirected"), 2);

    // The allow list changes at runtime like the rules.
    ctl_ok_via(Via::Nsenter, &topo.server, &["allow", "127.0.0.0/8"]);
    assert_eq!(peer_port(&topo.server, "127.0.0.1:80"), 80);
    stop_loader(loader);
}

/// Local sessions across a persisted loader stopped by `signal` and adopted by the next.
fn local_sessions_survive(loader: Proc, topo: &Topology, cgroup: &Cgroup, signal: i32) -> Proc {
    let pid = loader.pid();
    let mut sessions: Vec<Proc> = ["ws://127.0.0.1:80/", "ws://[::1]:80/"]
        .iter()
        .map(|url| {
            let mut cmd = topo.server.cmd(bins::ws_client());
            cmd.args(["--url", url, "--interactive", "--timeout", "60"]);
            let mut session = Proc::spawn("ws-client (local session)", cmd, true);
            session.wait_line("connected", Duration::from_secs(10));
            exchange(&mut session, "before");
            session
        })
        .collect();
    let held = connect_in(&topo.server, "127.0.0.1:80".parse().unwrap()).unwrap();
    assert_eq!(held.peer_addr().unwrap().port(), 80);

    if signal == libc::SIGTERM {
        let lines = stop_loader(loader);
        assert!(
            lines.iter().any(|l| l.contains("programs left attached")),
            "{lines:?}"
        );
    } else {
        let mut loader = loader;
        loader.signal(signal);
        loader.wait_exit(Duration::from_secs(10));
    }
    // No loader: the pinned links keep the programs on the cgroup.
    assert_eq!(cgroup_programs(cgroup), OUR_PROGRAMS);
    for session in &mut sessions {
        exchange(session, "without a loader");
    }
    assert_eq!(peer_port(&topo.server, "[::1]:80"), 80);

    let next = start_local_loader(topo, cgroup, &["--persist"]);
    let ready = ready_line(&next);
    assert!(ready.contains(&format!("from pid {pid}")), "{ready}");
    // Adopted by link update: still one set of programs, not two.
    assert_eq!(cgroup_programs(cgroup), OUR_PROGRAMS);
    for session in &mut sessions {
        exchange(session, "after the adoption");
    }
    for addr in local_addrs(topo) {
        assert_eq!(peer_port(&topo.server, &addr), 80, "{addr}");
    }
    // A connection made before the restart still reports :80 (LOCAL_PEERS was reused).
    assert_eq!(held.peer_addr().unwrap().port(), 80);
    for session in sessions {
        close_session(session);
    }
    next
}

#[test]
fn local_connections_survive_restarts_and_detach_removes_the_hooks() {
    let _serial = serial();
    let topo = Topology::new("loc-d");
    let cgroup = test_cgroup("d");
    let _inside = cgroup.enter().unwrap();
    let _echo = start_echo(&topo, &[]);
    let first = start_local_loader(&topo, &cgroup, &["--persist"]);
    let _cleanup = DetachOnDrop(&topo.server);
    let second = local_sessions_survive(first, &topo, &cgroup, libc::SIGTERM);
    let third = local_sessions_survive(second, &topo, &cgroup, libc::SIGKILL);
    stop_loader(third);

    let out = ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert!(out.contains("redirector detached"), "{out}");
    assert!(cgroup_programs(&cgroup).is_empty());
    assert_connect_refused(&topo.server, "127.0.0.1:80");
    assert_no_program_loaded();
}

#[test]
fn adopting_without_local_links_attaches_them_and_no_local_removes_them() {
    let _serial = serial();
    let topo = Topology::new("loc-e");
    let cgroup = test_cgroup("e");
    let _inside = cgroup.enter().unwrap();
    let _echo = start_echo(&topo, &[]);
    // A persisted instance without cgroup links (as an older loader left it) …
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args([
        "run",
        "--no-local",
        "--iface",
        topo.server_if,
        "--mode",
        "tc",
        "--persist",
    ]);
    let mut first = Proc::spawn("redirector --no-local", cmd, false);
    first.wait_line("redirector ready", Duration::from_secs(30));
    let _cleanup = DetachOnDrop(&topo.server);
    let mut session = open_session(&topo, &topo.url("ws", false, 80));
    stop_loader(first);
    assert!(cgroup_programs(&cgroup).is_empty());
    // … adopted with local clients on: attached afresh and pinned.
    let second = start_local_loader(&topo, &cgroup, &["--persist"]);
    exchange(&mut session, "adopted");
    assert_eq!(peer_port(&topo.server, "127.0.0.1:80"), 80);
    stop_loader(second);
    assert_eq!(cgroup_programs(&cgroup), OUR_PROGRAMS);
    assert_eq!(peer_port(&topo.server, "127.0.0.1:80"), 80);
    // … and adopted with --no-local: removed, the interface path kept.
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args(["run", "--no-local", "--iface", topo.server_if, "--persist"]);
    let mut third = Proc::spawn("redirector --no-local (adopting)", cmd, false);
    third.wait_line("redirector ready", Duration::from_secs(30));
    assert!(cgroup_programs(&cgroup).is_empty());
    assert_connect_refused(&topo.server, "127.0.0.1:80");
    exchange(&mut session, "local off");
    close_session(session);
    stop_loader(third);
}

/// A persisted instance started with `--no-local` and stopped, with one open session.
fn persisted_without_local(topo: &Topology) -> Proc {
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args([
        "run",
        "--no-local",
        "--iface",
        topo.server_if,
        "--mode",
        "tc",
    ])
    .args(["--persist", "--conntrack-size", "4096"]);
    let mut loader = Proc::spawn("redirector --no-local --persist", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    let session = open_session(topo, &topo.url("ws", false, 80));
    stop_loader(loader);
    session
}

#[test]
fn an_upgrade_from_format_2_attaches_the_cgroup_programs() {
    let _serial = serial();
    let topo = Topology::new("loc-g");
    let cgroup = test_cgroup("g");
    let _inside = cgroup.enter().unwrap();
    let _echo = start_echo(&topo, &[]);
    let mut session = persisted_without_local(&topo);
    let _cleanup = DetachOnDrop(&topo.server);
    format2::downgrade(&topo.server, topo.server_if, &[]);
    let loader = start_local_loader(&topo, &cgroup, &["--persist", "--conntrack-size", "4096"]);
    let ready = ready_line(&loader);
    assert!(ready.contains("from state format 2"), "{ready}");
    exchange(&mut session, "migrated");
    assert_eq!(cgroup_programs(&cgroup), OUR_PROGRAMS);
    assert_eq!(peer_port(&topo.server, "127.0.0.1:80"), 80);
    // Pinned in the migrated directory: they outlive this loader.
    stop_loader(loader);
    assert_eq!(cgroup_programs(&cgroup), OUR_PROGRAMS);
    assert_eq!(peer_port(&topo.server, "[::1]:80"), 80);
    close_session(session);
    ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert!(cgroup_programs(&cgroup).is_empty());
}

#[test]
fn adopting_an_instance_older_than_local_clients_keeps_its_counters_readable() {
    let _serial = serial();
    let topo = Topology::new("loc-h");
    let cgroup = test_cgroup("h");
    let _inside = cgroup.enter().unwrap();
    let _echo = start_echo(&topo, &[]);
    let mut session = persisted_without_local(&topo);
    let _cleanup = DetachOnDrop(&topo.server);
    format2::predate_local_clients(&topo.server, topo.server_if);
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args([
        "run",
        "--iface",
        topo.server_if,
        "--persist",
        "--local-cgroup",
    ])
    .arg(cgroup.path());
    let mut loader = Proc::spawn("redirector (adopting a pre-local instance)", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    exchange(&mut session, "adopted");
    // LOCAL_PEERS was created and pinned: getpeername works, also after this loader.
    assert_eq!(peer_port(&topo.server, "127.0.0.1:80"), 80);
    let (dir, _) = format2::instance_paths(&topo.server, topo.server_if);
    let pinned = format2::pinned_names(&dir);
    assert!(pinned.contains(&"LOCAL_PEERS".to_string()), "{pinned:?}");
    // So was REDIRECTED_SOCKETS, which egress records redirected sockets in.
    assert!(
        pinned.contains(&"REDIRECTED_SOCKETS".to_string()),
        "{pinned:?}"
    );
    // The short STATS cannot count local connects; it is still read, as zeros.
    assert_eq!(counter(&topo, "local_redirected"), 0);
    assert!(counter(&topo, "flow_created") >= 1);
    loader.signal(libc::SIGTERM);
    let (status, lines) = loader.wait_exit(Duration::from_secs(10));
    let stderr = loader.stderr_text();
    assert!(status.success(), "{stderr}");
    assert!(
        lines.iter().any(|l| l == "counter local_redirected=0"),
        "{lines:?}"
    );
    let missing = redirector_common::stats::Counter::COUNT - format2::PRE_LOCAL_STATS_COUNT;
    assert!(
        stderr.contains(&format!(
            "the adopted STATS map predates the last {missing} counters"
        )),
        "{stderr}"
    );
    close_session(session);
}

#[test]
fn a_bad_local_cgroup_is_refused_clearly() {
    let _serial = serial();
    let topo = Topology::new("loc-f");
    for (args, needle) in [
        (
            vec!["--local-cgroup", "/tmp"],
            "--local-cgroup /tmp: not on a cgroup v2 filesystem",
        ),
        (
            vec!["--local-cgroup", "/nonexistent/cg"],
            "--local-cgroup /nonexistent/cg:",
        ),
        (
            vec!["--local-cgroup", "/tmp", "--no-local"],
            "cannot be used with '--no-local'",
        ),
    ] {
        let out = topo
            .server
            .nsenter_cmd(bins::redirector())
            .args(["run", "--iface", topo.server_if])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in {stderr}"
        );
    }
    assert_no_program_loaded();
}

/// Connects per measurement: below the kernel's default `somaxconn` (4096), the listen
/// backlog of [`listen_in`].
const CONNECTS: u32 = 4000;
/// Listen backlog of the measurement's server (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// A listener bound in `ns` (dual-stack for `[::]`).
fn listen_in(ns: &Netns, addr: &str) -> std::net::TcpListener {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let netns = File::open(&path).unwrap();
                // SAFETY: as in `connect_in`: only this short-lived thread changes namespace.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                let addr: SocketAddr = addr.parse().unwrap();
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )
                .unwrap();
                // The previous measurement's listener on this port is gone, its queued
                // connections reset.
                socket.set_reuse_address(true).unwrap();
                socket.bind(&addr.into()).unwrap();
                // Room for every connect of a measurement: nothing accepts them, and a
                // full queue would drop a SYN (a 1 s retransmission).
                socket.listen(LISTEN_BACKLOG).unwrap();
                socket.into()
            })
            .join()
            .unwrap()
    })
}

/// Connects per second from the server namespace to `addr` over loopback, each closed at
/// once with a RST (no TIME_WAIT), for at most [`CONNECTS`] connects or `RATE_TIME`;
/// every connect must succeed. The server is a listener on [::]:8080 made for this
/// measurement that never accepts: the kernel completes loopback handshakes by itself
/// and its queue has room for every connect, so no user-space server (or a busy
/// machine's scheduling of one) is part of the figure. Returns (connects made, per second).
fn connect_rate(ns: &Netns, addr: &str) -> (u32, f64) {
    let listener = listen_in(ns, "[::]:8080");
    const RATE_TIME: Duration = Duration::from_secs(3);
    let addr: SocketAddr = addr.parse().unwrap();
    let path = format!("/run/netns/{}", ns.name());
    let rate = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let netns = File::open(&path).unwrap();
                // SAFETY: as in `connect_in`: only this short-lived thread changes namespace.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                let start = std::time::Instant::now();
                let mut done = 0u32;
                while done < CONNECTS && start.elapsed() < RATE_TIME {
                    let stream = TcpStream::connect(addr)
                        .unwrap_or_else(|e| panic!("connect {addr} #{done}: {e}"));
                    // RST instead of FIN: no TIME_WAIT piling up on the client's ports.
                    socket2::SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    drop(stream);
                    done += 1;
                }
                (done, f64::from(done) / start.elapsed().as_secs_f64())
            })
            .join()
            .unwrap()
    });
    drop(listener);
    rate
}

/// [`RATE_ROUNDS`] measurements of [`connect_rate`]: (connects made in all, median rate).
fn median_rate(ns: &Netns, addr: &str) -> (u64, f64) {
    let rounds: Vec<(u32, f64)> = (0..RATE_ROUNDS).map(|_| connect_rate(ns, addr)).collect();
    let connects = rounds.iter().map(|&(n, _)| u64::from(n)).sum();
    let mut rates: Vec<f64> = rounds.into_iter().map(|(_, rate)| rate).collect();
    rates.sort_by(f64::total_cmp);
    (connects, rates[rates.len() / 2])
}

/// Measurements per figure (each at most [`CONNECTS`] connects or 3 s).
const RATE_ROUNDS: usize = 7;

/// The figures of docs/ARCHITECTURE.md ("Local clients"), printed (`-- --nocapture`):
/// loopback connects per second without the cgroup programs, with them for a port no rule
/// names (their cost on every other connect), and redirected. Not judged as figures; what
/// is judged is that every connect succeeded and that exactly the connects to :80 were
/// redirected (the programs' own counter), so each phase measured the path it names.
#[test]
fn local_connect_rate_with_and_without_the_cgroup_programs() {
    let _serial = serial();
    let topo = Topology::new("loc-rate");
    let cgroup = test_cgroup("rate");
    let _inside = cgroup.enter().unwrap();
    let (_, without) = median_rate(&topo.server, "127.0.0.1:8080");
    let loader = start_local_loader(&topo, &cgroup, &[]);
    let (_, other_port) = median_rate(&topo.server, "127.0.0.1:8080");
    assert_eq!(counter(&topo, "local_redirected"), 0, "no rule names 8080");
    let (connects, redirected) = median_rate(&topo.server, "127.0.0.1:80");
    assert_eq!(counter(&topo, "local_redirected"), connects);
    stop_loader(loader);
    println!(
        "loopback connects/s: no cgroup programs {without:.0}, programs attached (port 8080, \
         no rule) {other_port:.0}, redirected (:80 -> :8080) {redirected:.0}"
    );
}
