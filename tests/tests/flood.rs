//! Spoofed SYN flood against the real loader: idle WebSocket sessions held through :80,
//! then a flood of spoofed SYNs many times the half-open table's size while new
//! connections are opened. Every idle session must survive and still echo, every new
//! connection must succeed, the half-open table must really have overflowed, and it
//! must drain by itself afterwards, as the kernel gives up each handshake.
//!
//! The spoofed sources come from [`SPOOF_V4`] / [`SPOOF_V6`], private prefixes the server
//! namespace routes back to the client namespace, where a blackhole route drops the
//! SYN-ACKs: no traffic leaves the test's namespaces.
//!
//! The sessions are plain sockets of this process (a minimal WebSocket client, opened from a
//! thread that entered the client namespace) rather than one ws-client process each.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use redirector_tests::{
    bins,
    fixtures::*,
    ws::{self, in_netns},
};
use serde_json::Value;
use testkit::{netns::Topology, process::Proc};

/// `--conntrack-size` of the tc case: the half-open table holds min(this, 65 536)
/// entries, the established table this many. Small, so that the flood is many times its
/// size within a second: a half-open entry lives about 20 ms at this box's flood rate.
const SMALL_TABLE: u64 = 4096;
/// `--conntrack-size` of the XDP case: the default half-open size. With XDP on the
/// server end, veth hands packets over through a ring the flood overflows, so a client's
/// handshake ACK can be lost; its retransmission (TCP's minimum RTO is 200 ms) finds the
/// half-open entry, or heals from the request socket or the SYN cookie where the flood
/// evicted it (docs/ARCHITECTURE.md).
const DEFAULT_TABLE: u64 = 65_536;
/// The flood must have reached the server at least this many times the half-open size
/// before the new connections are opened.
const FLOOD_FACTOR: u64 = 10;
/// Upper bound on the flood's SYNs (it is also stopped once the test is done with it).
const FLOOD_MAX_SYNS: u64 = 20_000_000;
/// Upper bound on the flood's duration.
const FLOOD_MAX_SECS: u64 = 120;
/// Limit on the wait for the flood to reach [`FLOOD_FACTOR`] times the table (generous:
/// a 2-core VM with CPU steal may flood slowly).
const FLOOD_REACH_LIMIT: Duration = Duration::from_secs(90);
/// Idle sessions held across the flood.
const IDLE_SESSIONS: usize = 200;
/// New connections opened during the flood: this many workers …
const NEW_WORKERS: usize = 4;
/// … each opening this many, one after the other …
const NEW_PER_WORKER: usize = 20;
/// … this long apart, so that they spread over seconds of flood, not milliseconds.
const NEW_PACE: Duration = Duration::from_millis(100);
/// Share of the new connections that must succeed, in percent: all of them. A handshake
/// whose half-open entry the flood evicted completes from its request socket or, once the
/// listener answers with SYN cookies, from the cookie in its ACK.
const NEW_SUCCESS_PERCENT: usize = 100;
/// `--timeout-handshake`: the idle limit of a half-open entry the kernel cannot be asked about.
const HANDSHAKE_TIMEOUT_SECS: u64 = 3;
/// Spoofed IPv4 sources.
const SPOOF_V4: &str = "10.99.0.0/16";
/// Spoofed IPv6 sources.
const SPOOF_V6: &str = "fd00:99::/64";

/// Packets the client's veth dropped on transmit: with an XDP program on the server end,
/// veth hands packets over through a ring of its own, which a flood overflows.
fn tx_dropped(topo: &Topology) -> u64 {
    let out = topo
        .client
        .cmd("ip")
        .args(["-j", "-s", "link", "show", "dev", topo.client_if])
        .output()
        .unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["stats64"]["tx"]["dropped"].as_u64().unwrap_or(0)
}

/// How long the server's kernel keeps a request socket whose SYN-ACKs go unanswered: the
/// initial one-second timeout, doubled at each of `net.ipv4.tcp_synack_retries`
/// retransmissions (63 s at the default of 5).
fn request_socket_lifetime(topo: &Topology) -> Duration {
    let out = topo
        .server
        .cmd("sysctl")
        .args(["-n", "net.ipv4.tcp_synack_retries"])
        .output()
        .unwrap();
    let retries: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("tcp_synack_retries: {e}: {out:?}"));
    Duration::from_secs((1u64 << (retries.min(10) + 1)) - 1)
}

/// Request sockets (handshakes in progress) in the server namespace.
fn request_sockets(topo: &Topology) -> usize {
    let out = topo
        .server
        .cmd("ss")
        .args(["-Htn", "state", "syn-recv"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// `redirector stats --json` in the server namespace.
fn stats(topo: &Topology) -> Value {
    ctl_json(&topo.server, &["stats"])
}

/// A counter of `stats --json`.
fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {stats}"))
}

/// Polls `stats --json` until `done` holds; panics with the last stats after `limit`.
fn wait_stats(topo: &Topology, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let stats = stats(topo);
        if done(&stats) {
            println!("{what}: after {:.1?}", start.elapsed());
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: {stats}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Routes SYN-ACKs to the spoofed sources `spoof` back to the client namespace (at
/// `client_ip`), which drops them.
fn route_spoofed(topo: &Topology, spoof: &str, client_ip: &str) {
    topo.server
        .ip(&["route", "add", spoof, "via", client_ip])
        .unwrap();
    topo.client
        .ip(&["route", "add", "blackhole", spoof])
        .unwrap();
}

/// Starts the flood of spoofed SYNs from `spoof` to `server_ip`:80, from the client
/// namespace, bounded in count and time; stopped early by closing its stdin.
fn start_flood(topo: &Topology, server_ip: &str, spoof: &str) -> Proc {
    let mut flood_cmd = topo.client.cmd(bins::syn_flood());
    flood_cmd.args([
        "--dst",
        server_ip,
        "--dport",
        "80",
        "--src-prefix",
        spoof,
        "--count",
        &FLOOD_MAX_SYNS.to_string(),
        "--seconds",
        &FLOOD_MAX_SECS.to_string(),
        "--until-stdin-closes",
    ]);
    let mut flood = Proc::spawn("syn-flood", flood_cmd, true);
    flood.wait_line("flooding", Duration::from_secs(10));
    flood
}

/// The [`IDLE_SESSIONS`] idle sessions to `addr` held across the flood, from the client
/// namespace (`client_ns`).
fn open_idle(client_ns: &str, addr: SocketAddr) -> Vec<std::net::TcpStream> {
    in_netns(client_ns, move || {
        (0..IDLE_SESSIONS)
            .map(|i| ws::open(addr, None).unwrap_or_else(|e| panic!("idle session {i}: {e}")))
            .collect()
    })
}

/// Exchanges a message on every idle session; returns the error of each that fails.
fn broken_after_flood(sessions: &mut [std::net::TcpStream]) -> Vec<String> {
    sessions
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| ws::echo(s, &format!("after the flood {i}")).err())
        .collect()
}

/// Opens the new WebSocket connections to `addr` from the client namespace (`client_ns`)
/// while the flood goes on: each with whether it opened and how long it took.
fn open_during_flood(client_ns: &str, addr: SocketAddr) -> Vec<(Result<(), String>, Duration)> {
    in_netns(client_ns, move || {
        let workers: Vec<_> = (0..NEW_WORKERS)
            .map(|_| {
                std::thread::spawn(move || {
                    (0..NEW_PER_WORKER)
                        .map(|_| {
                            std::thread::sleep(NEW_PACE);
                            let start = Instant::now();
                            let result = ws::open(addr, None).map(drop);
                            (result, start.elapsed())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Threads inherit the namespace of the thread that spawns them.
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    })
}

/// The whole scenario in loader mode `mode` over IPv4 or IPv6, with `--conntrack-size
/// table_size` (at most 65 536, so that it is also the half-open size).
fn flood_keeps_every_established_flow(mode: &str, v6: bool, table_size: u64) {
    let _serial = serial();
    let topo = Topology::new(if v6 { "flood6" } else { "flood4" });
    let (server_ip, spoof) = if v6 {
        (topo.server_v6.clone(), SPOOF_V6)
    } else {
        (topo.server_v4.clone(), SPOOF_V4)
    };
    // The client's IPv6 address is the server's with host part 1 (see `Topology::new`).
    let client_ip = if v6 {
        topo.server_v6.replacen("::2", "::1", 1)
    } else {
        topo.client_v4.clone()
    };
    route_spoofed(&topo, spoof, &client_ip);
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(
        &topo,
        &[
            "--mode",
            mode,
            "--conntrack-size",
            &table_size.to_string(),
            "--timeout-handshake",
            &HANDSHAKE_TIMEOUT_SECS.to_string(),
        ],
    );
    let addr = SocketAddr::new(server_ip.parse::<IpAddr>().unwrap(), 80);
    let client_ns = topo.client.name().to_owned();

    // Idle sessions through :80, held across the flood.
    let mut sessions = open_idle(&client_ns, addr);
    let before = stats(&topo);
    assert_eq!(
        before["flows_established"], IDLE_SESSIONS as u64,
        "{before}"
    );

    let mut flood = start_flood(&topo, &server_ip, spoof);
    let created_before = counter(&before, "flow_created");
    let overflowed = created_before + FLOOD_FACTOR * table_size;
    wait_stats(
        &topo,
        "flood reached 10x the half-open table",
        FLOOD_REACH_LIMIT,
        |s| counter(s, "flow_created") >= overflowed,
    );

    // New connections while the flood goes on.
    let started = Instant::now();
    let results = open_during_flood(&client_ns, addr);
    let new_elapsed = started.elapsed();
    let flood_running = flood.ensure_running().is_ok();
    let during = stats(&topo);
    flood.close_stdin();
    let (status, lines) = flood.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "syn-flood: {}", flood.stderr_text());
    let sent_line = lines
        .iter()
        .find(|l| l.starts_with("sent "))
        .cloned()
        .unwrap_or_default();
    println!("{mode} {}: {sent_line}", if v6 { "IPv6" } else { "IPv4" });

    let ok = results.iter().filter(|(r, _)| r.is_ok()).count();
    let slow = results
        .iter()
        .filter(|(r, t)| r.is_ok() && *t > Duration::from_secs(1))
        .count();
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|(r, _)| r.as_ref().err())
        .collect();
    println!(
        "new connections during the flood: {ok}/{} ok ({slow} took > 1 s) in {new_elapsed:.1?}, \
         failures: {failures:?}",
        results.len()
    );
    println!(
        "packets the client's veth could not hand to the server (ring full): {}",
        tx_dropped(&topo)
    );
    println!(
        "stats during the flood: created={} evicted={} half_open={} established={} \
         table_full={}",
        counter(&during, "flow_created"),
        during["flows_evicted"],
        during["flows_half_open"],
        during["flows_established"],
        counter(&during, "pass_table_full"),
    );
    assert!(
        flood_running,
        "the flood ended before the new connections did ({new_elapsed:?}): raise FLOOD_MAX_SECS"
    );
    assert!(
        ok * 100 >= results.len() * NEW_SUCCESS_PERCENT,
        "only {ok}/{} new connections during the flood: {failures:?}",
        results.len()
    );

    // Every idle session survived and still echoes.
    let broken = broken_after_flood(&mut sessions);
    assert!(
        broken.is_empty(),
        "{} of {IDLE_SESSIONS} idle sessions broken: {broken:?}",
        broken.len()
    );

    let after = stats(&topo);
    assert!(
        after["flows_evicted"].as_u64().unwrap() > 0,
        "the flood did not overflow the half-open table: {after}"
    );
    assert!(
        after["flows_established"].as_u64().unwrap() >= IDLE_SESSIONS as u64,
        "{after}"
    );
    assert_eq!(counter(&after, "pass_table_full"), 0, "{after}");

    // The reaper empties the half-open table once the flood is over: an entry whose
    // handshake the kernel no longer holds goes within the grace, one whose request socket
    // still retransmits its SYN-ACK (into the blackhole) when the kernel gives it up.
    let drain_limit =
        request_socket_lifetime(&topo) + Duration::from_secs(HANDSHAKE_TIMEOUT_SECS + 15);
    println!(
        "after the flood: {} half-open entries, {} request sockets in the server namespace",
        stats(&topo)["flows_half_open"],
        request_sockets(&topo)
    );
    wait_stats(&topo, "half-open table drained", drain_limit, |s| {
        s["flows_half_open"] == 0
    });
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    drop(sessions);
    stop_loader(loader);
}

#[test]
fn spoofed_syn_flood_tc_ipv4_keeps_every_idle_session() {
    flood_keeps_every_established_flow("tc", false, SMALL_TABLE);
}

#[test]
fn spoofed_syn_flood_xdp_ipv6_keeps_every_idle_session() {
    flood_keeps_every_established_flow("xdp", true, DEFAULT_TABLE);
}

/// SYNs the flood must have sent through socket steering before the new connections: far
/// more than the listener's SYN queue holds, so that the kernel answers with SYN cookies.
const STEERED_FLOOD_SYNS: u64 = 200_000;

/// The spoofed SYN flood with socket steering (IPv4): no table exists to fill, the kernel's
/// listener meets the flood with SYN cookies, every idle session survives and every new
/// connection succeeds.
#[test]
fn spoofed_syn_flood_with_socket_steering_keeps_every_idle_session() {
    let _serial = serial();
    let topo = Topology::new("flood-sk");
    let (server_ip, client_ip) = (topo.server_v4.clone(), topo.client_v4.clone());
    route_spoofed(&topo, SPOOF_V4, &client_ip);
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", "socket"]);
    let addr = SocketAddr::new(server_ip.parse::<IpAddr>().unwrap(), 80);
    let client_ns = topo.client.name().to_owned();
    let mut sessions = open_idle(&client_ns, addr);
    let before = stats(&topo);
    let cookies_before = topo.server.tcp_ext()["SyncookiesSent"];

    let mut flood = start_flood(&topo, &server_ip, SPOOF_V4);
    let steered_before = counter(&before, "steer_assigned");
    wait_stats(
        &topo,
        "the flood went through socket steering",
        FLOOD_REACH_LIMIT,
        |s| counter(s, "steer_assigned") >= steered_before + STEERED_FLOOD_SYNS,
    );
    let results = open_during_flood(&client_ns, addr);
    let flood_running = flood.ensure_running().is_ok();
    flood.close_stdin();
    let (status, lines) = flood.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "syn-flood: {}", flood.stderr_text());
    println!(
        "socket steering: {}",
        lines
            .iter()
            .find(|l| l.starts_with("sent "))
            .cloned()
            .unwrap_or_default()
    );
    assert!(
        flood_running,
        "the flood ended before the new connections did"
    );
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|(r, _)| r.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} new connections failed during the flood: {failures:?}",
        failures.len(),
        results.len()
    );
    let broken = broken_after_flood(&mut sessions);
    assert!(broken.is_empty(), "idle sessions broken: {broken:?}");
    let cookies = topo.server.tcp_ext()["SyncookiesSent"] - cookies_before;
    println!("SYN cookies sent by the server's listener: {cookies}");
    assert!(
        cookies > 0,
        "the flood never made the listener send SYN cookies"
    );
    let after = stats(&topo);
    assert_eq!(
        after["flows_established"], 0,
        "socket steering tracks nothing: {after}"
    );
    assert_eq!(counter(&after, "steer_no_listener"), 0, "{after}");
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    drop(sessions);
    stop_loader(loader);
}
