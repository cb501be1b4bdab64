//! The redirect follows its interfaces: the server's veth pair deleted and re-created with
//! the same names and addresses (what a driver reload or a container runtime does) while
//! idle WebSocket sessions are held — with the loader running, with a persisted loader
//! stopped during the flap and started again, for 30 s, renamed away and back — and the
//! pins of a namespace deleted without `detach`. Every session must keep echoing, a new
//! connection must succeed within a second of the re-creation, and `status --json` must
//! say what the kernel has at each step.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use redirector_tests::{
    bins,
    fixtures::*,
    ws::{self, in_netns},
};
use serde_json::Value;
use testkit::{
    cmd::must,
    netns::{Netns, Topology},
    process::Proc,
};

/// Idle sessions held across each flap.
const SESSIONS: usize = 50;
/// A new connection must succeed this soon after the pair is re-created.
const NEW_CONNECTION_WITHIN: Duration = Duration::from_secs(1);

/// How long one attempt of [`new_connection_time`] waits for its TCP handshake.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);

/// `redirector run` on the server veth with `args`, logging at info (the re-attach line);
/// `persist`: `--persist` in the host's mount namespace.
fn start(topo: &Topology, persist: bool, args: &[&str]) -> Proc {
    let mut cmd = if persist {
        topo.server.nsenter_cmd(bins::redirector())
    } else {
        topo.server.cmd(bins::redirector())
    };
    cmd.env("RUST_LOG", "info")
        .args(["run", "--no-local", "--iface", topo.server_if])
        .args(rewrite_unless_mode(args))
        .args(args);
    if persist {
        cmd.arg("--persist");
    }
    let mut loader = Proc::spawn("redirector", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    loader
}

fn server_addr(topo: &Topology, v6: bool, port: u16) -> SocketAddr {
    let ip: IpAddr = if v6 { &topo.server_v6 } else { &topo.server_v4 }
        .parse()
        .unwrap();
    SocketAddr::new(ip, port)
}

/// How long the sessions are left alone before a flap: long enough for every delayed
/// ACK and retransmission of their opening to be over, so they are idle. (A segment in
/// flight when the interface goes away is retransmitted after it comes back; if no program
/// is attached by then — no loader runs, or the device was renamed away — it passes
/// unrewritten and the other end resets the connection, as it would without redirector.)
const SETTLE: Duration = Duration::from_secs(1);

/// Opens [`SESSIONS`] idle sessions to :80 from the client namespace, and lets them
/// [`SETTLE`].
fn open_sessions(topo: &Topology, addr: SocketAddr) -> Vec<TcpStream> {
    let ns = topo.client.name().to_string();
    in_netns(&ns, move || {
        let sessions = (0..SESSIONS)
            .map(|i| ws::open(addr, None).unwrap_or_else(|e| panic!("session {i}: {e}")))
            .collect();
        std::thread::sleep(SETTLE);
        sessions
    })
}

/// Every session echoes `text`.
fn all_echo(sessions: &mut [TcpStream], text: &str) {
    for (i, session) in sessions.iter_mut().enumerate() {
        ws::echo(session, text).unwrap_or_else(|e| panic!("session {i} after {text}: {e}"));
    }
}

/// How long after `since` a new session through :80 (`addr`) succeeds; fails unless that
/// is within [`NEW_CONNECTION_WITHIN`] of the link carrying traffic again — what a direct
/// session to the TO port measures (IPv6 takes about a second on a re-created veth, with
/// or without redirector).
fn new_connection_time(topo: &Topology, addr: SocketAddr, since: Instant) -> Duration {
    let direct = SocketAddr::new(addr.ip(), 8080);
    let link_up = first_session(topo, direct, since, Duration::from_secs(5));
    let took = first_session(topo, addr, since, link_up + NEW_CONNECTION_WITHIN);
    eprintln!(
        "  link carries traffic after {} ms, a session through :{} after {} ms",
        link_up.as_millis(),
        addr.port(),
        took.as_millis()
    );
    took
}

/// Opens new sessions to `addr` until one succeeds; returns how long after `since` that
/// was. Fails if none succeeds within `within` of `since`.
fn first_session(topo: &Topology, addr: SocketAddr, since: Instant, within: Duration) -> Duration {
    let ns = topo.client.name().to_string();
    in_netns(&ns, move || loop {
        // Each attempt gives up quickly: a SYN lost while the new link comes up would
        // otherwise wait for TCP's one-second SYN retransmission.
        match ws::open_within(addr, ATTEMPT_TIMEOUT) {
            Ok(stream) => {
                drop(stream);
                let took = since.elapsed();
                assert!(took <= within, "first new session to {addr} after {took:?}");
                return took;
            }
            Err(e) if since.elapsed() > within => {
                panic!("no new session to {addr} within {within:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    })
}

/// The `link` field `status --json` gives the server veth (entered `via`).
fn link_state(topo: &Topology, via: Via) -> Value {
    let status = ctl_json_via(via, &topo.server, &["status"]);
    status["interfaces"][0]["link"].clone()
}

/// Waits until `status --json` says `want` for the server veth.
fn wait_link(topo: &Topology, via: Via, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = link_state(topo, via);
        if state == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status says link {state}, not {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the loader's `re-attached to IFACE in N ms` line; returns N.
fn reattach_millis(loader: &Proc, log: &mut String) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        log.push_str(&loader.stderr_text());
        log.push('\n');
        if let Some(line) = log.lines().rev().find(|l| l.contains("re-attached to")) {
            let millis = line
                .split(" in ")
                .last()
                .and_then(|rest| rest.strip_suffix(" ms"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no time in {line}"));
            log.clear();
            return millis;
        }
        assert!(Instant::now() < deadline, "no re-attach line in\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The finding of doctor's `interfaces` check (entered `via`).
fn doctor_interfaces(topo: &Topology, via: Via) -> Value {
    let out = ctl_via(via, &topo.server, &["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "interfaces")
        .cloned()
        .unwrap_or_else(|| panic!("no interfaces check in {report:#}"))
}

/// The `redirector_interface_attached` gauge of the loader's `--metrics`.
fn gauge(topo: &Topology, url: &str) -> u64 {
    let out = must(topo.server.cmd("curl").args(["-s", url]));
    let body = String::from_utf8_lossy(&out.stdout);
    sample(
        &body,
        &format!(
            "redirector_interface_attached{{iface=\"{}\"}}",
            topo.server_if
        ),
    )
}

/// The flap with the loader running: status missing meanwhile, re-attached at once, every
/// session echoes, a new connection within a second, no checksum error.
fn flap_keeps_every_session(tag: &str, mode: &str, v6: bool) {
    let _serial = serial();
    let topo = Topology::new(tag);
    let _echo = start_echo(&topo, &[]);
    let loader = start(&topo, false, &["--mode", mode, "--metrics", "127.0.0.1:0"]);
    let ready = ready_line(&loader);
    let url = ready
        .split(" metrics ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("metrics URL on the ready line")
        .to_string();
    let addr = server_addr(&topo, v6, 80);
    let mut sessions = open_sessions(&topo, addr);
    assert_eq!(link_state(&topo, Via::IpNetnsExec), "attached");
    assert_eq!(gauge(&topo, &url), 1);

    let mut log = String::new();
    for round in 0..2 {
        topo.delete_link();
        wait_link(&topo, Via::IpNetnsExec, "missing");
        assert_eq!(gauge(&topo, &url), 0);
        topo.restore_link();
        let recreated = Instant::now();
        let took = new_connection_time(&topo, addr, recreated);
        let millis = reattach_millis(&loader, &mut log);
        eprintln!(
            "{tag} round {round}: re-attached in {millis} ms, new connection after {} ms",
            took.as_millis()
        );
        all_echo(&mut sessions, &format!("after flap {round}"));
        assert_eq!(link_state(&topo, Via::IpNetnsExec), "attached");
        assert_eq!(gauge(&topo, &url), 1);
    }
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    drop(sessions);
    stop_loader(loader);
}

#[test]
fn a_flap_tc_ipv4_keeps_every_idle_session() {
    flap_keeps_every_session("ifl-tc4", "tc", false);
}

#[test]
fn a_flap_tc_ipv6_keeps_every_idle_session() {
    flap_keeps_every_session("ifl-tc6", "tc", true);
}

#[test]
fn a_flap_xdp_ipv4_keeps_every_idle_session() {
    flap_keeps_every_session("ifl-xdp4", "xdp", false);
}

#[test]
fn a_flap_xdp_ipv6_keeps_every_idle_session() {
    flap_keeps_every_session("ifl-xdp6", "xdp", true);
}

/// A persisted loader stopped, the pair re-created while none runs (status: severed), the
/// loader started again: it adopts the severed instance, attaches afresh, and every session
/// echoes.
fn persisted_flap_is_adopted(tag: &str, mode: &str, v6: bool) {
    let _serial = serial();
    let topo = Topology::new(tag);
    let _detach = DetachOnDrop(&topo.server);
    let _echo = start_echo(&topo, &[]);
    let loader = start(&topo, true, &["--mode", mode]);
    let addr = server_addr(&topo, v6, 80);
    let mut sessions = open_sessions(&topo, addr);
    stop_loader(loader);
    assert_eq!(link_state(&topo, Via::Nsenter), "attached");

    topo.delete_link();
    assert_eq!(link_state(&topo, Via::Nsenter), "missing");
    topo.restore_link();
    let status = ctl_json_via(Via::Nsenter, &topo.server, &["status"]);
    assert_eq!(status["loader_running"], false, "{status}");
    assert_eq!(status["interfaces"][0]["link"], "severed", "{status}");
    let finding = doctor_interfaces(&topo, Via::Nsenter);
    assert_eq!(finding["status"], "fail", "{finding}");
    assert!(
        finding["fix"]
            .as_str()
            .unwrap()
            .contains("start the loader"),
        "{finding}"
    );

    let restarted = Instant::now();
    let loader = start(&topo, true, &["--mode", mode]);
    let ready = ready_line(&loader);
    assert!(ready.contains("adopted"), "{ready}");
    eprintln!(
        "{tag}: adopted the severed instance {} ms after the start",
        restarted.elapsed().as_millis()
    );
    assert_eq!(link_state(&topo, Via::Nsenter), "attached");
    all_echo(&mut sessions, "after the restart");
    new_connection_time(&topo, addr, Instant::now());
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    drop(sessions);
    stop_loader(loader);
}

#[test]
fn a_persisted_tc_instance_severed_while_stopped_is_adopted_with_every_session() {
    persisted_flap_is_adopted("ifl-ptc", "tc", false);
}

#[test]
fn a_persisted_xdp_instance_severed_while_stopped_is_adopted_with_every_session() {
    persisted_flap_is_adopted("ifl-pxdp", "xdp", true);
}

#[test]
fn a_persisted_instance_whose_interface_is_still_missing_waits_for_it() {
    let _serial = serial();
    let topo = Topology::new("ifl-wait");
    let _detach = DetachOnDrop(&topo.server);
    let _echo = start_echo(&topo, &[]);
    let loader = start(&topo, true, &[]);
    let addr = server_addr(&topo, false, 80);
    let mut sessions = open_sessions(&topo, addr);
    stop_loader(loader);
    topo.delete_link();
    // Started while the interface is missing: it says so and waits (no crash loop).
    let mut loader = start(&topo, true, &[]);
    let mut log = String::new();
    std::thread::sleep(Duration::from_millis(500));
    loader.ensure_running().expect("the loader waits");
    log.push_str(&loader.stderr_text());
    assert!(log.contains("is missing"), "{log}");
    assert_eq!(link_state(&topo, Via::Nsenter), "missing");
    topo.restore_link();
    let took = new_connection_time(&topo, addr, Instant::now());
    let millis = reattach_millis(&loader, &mut log);
    eprintln!(
        "waiting loader: re-attached in {millis} ms, new connection after {} ms",
        took.as_millis()
    );
    all_echo(&mut sessions, "after the wait");
    assert_eq!(link_state(&topo, Via::Nsenter), "attached");
    drop(sessions);
    stop_loader(loader);
}

#[test]
fn an_interface_gone_for_30_s_comes_back_with_every_session() {
    let _serial = serial();
    let topo = Topology::new("ifl-30s");
    let _echo = start_echo(&topo, &[]);
    let mut loader = start(&topo, false, &[]);
    let addr = server_addr(&topo, false, 80);
    let mut sessions = open_sessions(&topo, addr);
    topo.delete_link();
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(30) {
        loader.ensure_running().expect("the loader stays up");
        assert_eq!(link_state(&topo, Via::IpNetnsExec), "missing");
        std::thread::sleep(Duration::from_secs(5));
    }
    let mut log = loader.stderr_text();
    assert!(log.contains("went away"), "{log}");
    let finding = doctor_interfaces(&topo, Via::IpNetnsExec);
    assert_eq!(finding["status"], "warn", "{finding}");
    assert!(
        finding["message"].as_str().unwrap().contains("is missing"),
        "{finding}"
    );
    topo.restore_link();
    new_connection_time(&topo, addr, Instant::now());
    reattach_millis(&loader, &mut log);
    all_echo(&mut sessions, "after 30 s");
    assert_eq!(link_state(&topo, Via::IpNetnsExec), "attached");
    assert_eq!(doctor_interfaces(&topo, Via::IpNetnsExec)["status"], "ok");
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    drop(sessions);
    stop_loader(loader);
}

#[test]
fn a_rename_away_detaches_and_the_name_coming_back_attaches() {
    let _serial = serial();
    let topo = Topology::new("ifl-ren");
    let _echo = start_echo(&topo, &[]);
    let loader = start(&topo, false, &[]);
    let addr = server_addr(&topo, false, 80);
    let mut sessions = open_sessions(&topo, addr);
    let rename = |from: &str, to: &str| {
        must(
            topo.server
                .cmd("ip")
                .args(["link", "set", "dev", from, "name", to]),
        );
    };
    rename(topo.server_if, "ifl-away");
    // The redirect follows the name: the renamed device carries none.
    wait_link(&topo, Via::IpNetnsExec, "missing");
    let url = topo.url("ws", false, 80);
    assert_refused(&topo, &url);
    rename("ifl-away", topo.server_if);
    wait_link(&topo, Via::IpNetnsExec, "attached");
    assert_echo(&topo, &url);
    all_echo(&mut sessions, "after the rename");
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    drop(sessions);
    stop_loader(loader);
}

#[test]
fn pins_of_a_deleted_namespace_are_found_and_removed_without_touching_a_live_instance() {
    let _serial = serial();
    let topo = Topology::new("ifl-live");
    let _detach = DetachOnDrop(&topo.server);
    let _echo = start_echo(&topo, &[]);
    let live = start(&topo, true, &[]);
    let addr = server_addr(&topo, false, 80);
    let mut sessions = open_sessions(&topo, addr);

    // A persisted instance in a namespace then deleted without `detach`.
    let orphan = Netns::new(&format!("ifl-orphan-{}", std::process::id()));
    must(orphan.cmd("ip").args([
        "link", "add", "ifl-d0", "type", "veth", "peer", "name", "ifl-d1",
    ]));
    must(orphan.cmd("ip").args(["link", "set", "ifl-d0", "up"]));
    let inode = {
        let mut cmd = orphan.nsenter_cmd(bins::redirector());
        cmd.args([
            "run",
            "--no-local",
            "--iface",
            "ifl-d0",
            "--persist",
            "--mode",
            "tc",
        ]);
        let loader = Proc::spawn("redirector (orphan)", cmd, false);
        let mut loader = loader;
        loader.wait_line("redirector ready", Duration::from_secs(30));
        let status = ctl_json_via(Via::Nsenter, &orphan, &["status"]);
        let pid = status["pid"].as_u64().unwrap();
        let inode = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        stop_loader(loader);
        inode
    };
    drop(orphan);
    let pins = format!("/sys/fs/bpf/redirector/netns-{inode}");
    // The namespace goes once its last reference does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let doctor = loop {
        let out = ctl_via(Via::Nsenter, &topo.server, &["doctor", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let stale = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "stale")
            .cloned()
            .unwrap();
        if stale["status"] == "warn" || Instant::now() > deadline {
            break stale;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(doctor["status"], "warn", "{doctor}");
    assert!(
        doctor["message"].as_str().unwrap().contains(&pins),
        "{doctor}"
    );
    assert!(
        doctor["fix"].as_str().unwrap().contains("detach --stale"),
        "{doctor}"
    );

    let out = ctl_ok_via(Via::Nsenter, &topo.server, &["detach", "--stale"]);
    assert!(out.contains(&pins), "{out}");
    assert!(!std::path::Path::new(&pins).exists(), "{pins} still there");
    // The live instance is untouched.
    assert_eq!(link_state(&topo, Via::Nsenter), "attached");
    all_echo(&mut sessions, "after detach --stale");
    drop(sessions);
    stop_loader(live);
}
