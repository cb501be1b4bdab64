//! Socket steering (`--mode socket`): the real loader's `sk_lookup` program on the server
//! namespace hands new connections to a FROM port to the TO port's listener. WebSocket
//! traffic from the client namespace and from the server's own processes, toggles with
//! held sessions, loader restarts (SIGKILL, `--persist`, `detach`) with idle sessions held,
//! a restarted server, a SO_REUSEPORT group, a TO port with no listener, and what `auto`
//! picks.

use std::{
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use redirector_tests::{
    bins,
    container::start_container,
    fixtures::*,
    ws::{self, in_netns},
};
use serde_json::Value;
use socket2::{Domain, Socket, Type};
use testkit::{netns::Topology, process::Proc};

/// Idle sessions held across a loader's SIGKILL.
const KILLED_SESSIONS: usize = 200;
/// Idle sessions held across `--persist` restarts and `detach`.
const PERSIST_SESSIONS: usize = 50;
/// A restarted server's new listener must be steered to within this.
const FOLLOW_LIMIT: Duration = Duration::from_secs(1);

/// `count` idle WebSocket sessions from the client namespace to the server's `port`.
fn open_sessions(topo: &Topology, v6: bool, port: u16, count: usize) -> Vec<TcpStream> {
    let ip = if v6 { &topo.server_v6 } else { &topo.server_v4 };
    let addr = SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port);
    in_netns(topo.client.name(), move || {
        (0..count)
            .map(|i| ws::open(addr, None).unwrap_or_else(|e| panic!("session {i} to {addr}: {e}")))
            .collect()
    })
}

/// Every session echoes `text`; panics naming the ones that do not.
fn all_echo(sessions: &mut [TcpStream], text: &str) {
    let broken: Vec<String> = sessions
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| ws::echo(s, text).err().map(|e| format!("#{i}: {e}")))
        .collect();
    assert!(
        broken.is_empty(),
        "{} of {} sessions broken at `{text}`: {broken:?}",
        broken.len(),
        sessions.len()
    );
}

/// `redirector stats --json` through `via`.
fn stats_via(topo: &Topology, via: Via) -> Value {
    ctl_json_via(via, &topo.server, &["stats"])
}

/// A counter of `stats --json`.
fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {stats}"))
}

/// Whether a plain TCP connect from the client namespace to the server's `port` succeeds
/// (a refused one is answered at once by the server's RST).
fn connects(topo: &Topology, port: u16) -> bool {
    let addr = SocketAddr::new(topo.server_v4.parse().unwrap(), port);
    in_netns(topo.client.name(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()
    })
}

/// Starts `redirector run --mode socket --persist` in the host's mount namespace.
fn start_persisted(topo: &Topology) -> Proc {
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args(["run", "--no-local", "--iface", topo.server_if])
        .args(["--mode", "socket", "--persist"]);
    let mut loader = Proc::spawn("redirector --mode socket --persist", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    loader
}

#[test]
fn steers_ws_and_wss_over_ipv4_and_ipv6_with_no_flow_state() {
    let _serial = serial();
    let topo = Topology::new("sk-basic");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", "socket"]);
    let ready = ready_line(&loader);
    assert!(ready.contains("(socket)"), "{ready}");
    assert!(
        ready.contains("steering sockets (no flow table)"),
        "{ready}"
    );
    for v6 in [false, true] {
        assert_echo(&topo, &topo.url("ws", v6, 80));
        assert_echo(&topo, &topo.url("wss", v6, 443));
    }
    for url in [topo.url("ws", false, 80), topo.url("wss", true, 443)] {
        assert_bulk(&topo, &url, 16 << 20);
    }
    // A held session: `flows` lists it from the socket table, with its FROM port.
    let session = open_session(&topo, &topo.url("ws", false, 80));
    let flows = ctl_json(&topo.server, &["flows"]);
    let listed = flows.as_array().unwrap();
    assert!(
        listed.iter().any(|f| f["state"] == "established"
            && f["orig_port"] == 80
            && f["target_port"] == 8080),
        "{flows:#}"
    );
    let sockets = must_ss(&topo, "( sport = :80 )");
    assert!(
        sockets.contains(":80 "),
        "the server's socket has local port 80:\n{sockets}"
    );
    close_session(session);

    let stats = ctl_json(&topo.server, &["stats"]);
    // 4 echoes, 2 bulk transfers, the held session.
    assert_eq!(counter(&stats, "steer_assigned"), 7, "{stats}");
    assert_eq!(flows_new(&stats, 80) + flows_new(&stats, 443), 7, "{stats}");
    for untouched in [
        "rewrite_ingress",
        "rewrite_egress",
        "flow_created",
        "steer_no_listener",
    ] {
        assert_eq!(counter(&stats, untouched), 0, "{untouched}: {stats}");
    }
    assert_eq!(stats["flows_established"], 0, "{stats}");
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["mode"], "socket", "{status}");
    let listeners: Vec<&str> = status["steering"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["addr"].as_str().unwrap())
        .collect();
    for addr in ["0.0.0.0:8080", "[::]:8080", "0.0.0.0:8443", "[::]:8443"] {
        assert!(listeners.contains(&addr), "{addr} not in {listeners:?}");
    }
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    let lines = stop_loader(loader);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("detached from the network namespace (socket steering)")),
        "{lines:?}"
    );
    assert_no_program_loaded();
}

/// `ss -Htn state established FILTER` in the server namespace.
fn must_ss(topo: &Topology, filter: &str) -> String {
    let out =
        testkit::cmd::must(
            topo.server
                .cmd("ss")
                .args(["-Htn", "state", "established", filter]),
        );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn local_clients_on_loopback_and_the_host_address_are_steered() {
    let _serial = serial();
    let topo = Topology::new("sk-local");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", "socket"]);
    let urls = [
        "ws://127.0.0.1:80/".to_string(),
        "ws://[::1]:80/".to_string(),
        format!("ws://{}:80/", topo.server_v4),
        format!("wss://[{}]:443/", topo.server_v6),
    ];
    for url in &urls {
        let mut cmd = topo.server.cmd(bins::ws_client());
        cmd.args([
            "--url",
            url,
            "--insecure",
            "--timeout",
            "20",
            "--message",
            "local",
        ]);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("echo: local"),
            "{url}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(
        counter(&stats, "steer_assigned"),
        urls.len() as u64,
        "{stats}"
    );
    assert_eq!(
        counter(&stats, "local_redirected"),
        0,
        "no cgroup program: {stats}"
    );
    stop_loader(loader);
}

#[test]
fn toggles_apply_to_new_connections_and_held_sessions_keep_echoing() {
    let _serial = serial();
    let topo = Topology::new("sk-toggle");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", "socket"]);
    let mut held = open_sessions(&topo, false, 80, 10);
    held.extend(open_sessions(&topo, true, 80, 10));
    let url = topo.url("ws", false, 80);

    ctl_ok(&topo.server, &["disable", "80"]);
    assert_refused(&topo, &url); // nothing listens on 80 itself
    all_echo(&mut held, "disabled");
    let stats = ctl_json(&topo.server, &["stats"]);
    assert!(counter(&stats, "steer_pass_rule_disabled") >= 1, "{stats}");
    ctl_ok(&topo.server, &["enable", "80"]);
    assert_echo(&topo, &url);

    // A filter that allows only the client: steered; the filter left empty: not.
    let client = format!("{}/32", topo.client_v4);
    ctl_ok(&topo.server, &["allow", &client]);
    assert_echo(&topo, &url);
    ctl_ok(&topo.server, &["disallow", &client]);
    assert_refused(&topo, &url);
    all_echo(&mut held, "source not allowed");
    let stats = ctl_json(&topo.server, &["stats"]);
    assert!(counter(&stats, "steer_pass_source_denied") >= 1, "{stats}");
    ctl_ok(&topo.server, &["allow", &client]);
    assert_echo(&topo, &url);

    ctl_ok(&topo.server, &["remove", "80"]);
    assert_refused(&topo, &url);
    all_echo(&mut held, "rule removed");
    ctl_ok(&topo.server, &["add", "80:8080"]);
    assert_echo(&topo, &url);
    all_echo(&mut held, "rule added back");
    stop_loader(loader);
    all_echo(&mut held, "loader stopped");
}

#[test]
fn sigkill_of_a_loader_without_persist_leaves_200_idle_sessions_working() {
    let _serial = serial();
    let topo = Topology::new("sk-kill");
    let _echo = start_echo(&topo, &[]);
    let mut loader = start_loader(&topo, &["--mode", "socket"]);
    let mut held = open_sessions(&topo, false, 80, KILLED_SESSIONS / 2);
    held.extend(open_sessions(&topo, true, 80, KILLED_SESSIONS / 2));
    all_echo(&mut held, "before");
    loader.signal(libc::SIGKILL);
    let (status, _) = loader.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "killed: {status}");
    assert_no_program_loaded();
    all_echo(&mut held, "after the SIGKILL");
    // Without the program, :80 is what it is without redirector: closed.
    assert!(!connects(&topo, 80), "nothing steers after the SIGKILL");
    std::thread::sleep(Duration::from_secs(2));
    all_echo(&mut held, "idle after the SIGKILL");
}

#[test]
fn persisted_steering_survives_its_loader_is_adopted_and_detach_keeps_sessions() {
    let _serial = serial();
    let topo = Topology::new("sk-persist");
    let _echo = start_echo(&topo, &[]);
    let _cleanup = DetachOnDrop(&topo.server);
    let mut first = start_persisted(&topo);
    let mut held = open_sessions(&topo, false, 80, PERSIST_SESSIONS);
    let url = topo.url("ws", false, 80);

    first.signal(libc::SIGTERM);
    let (status, _) = first.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", first.stderr_text());
    all_echo(&mut held, "no loader");
    assert_echo(&topo, &url); // the pinned link still steers
    held.extend(open_sessions(&topo, true, 80, PERSIST_SESSIONS));

    let mut second = start_persisted(&topo);
    let ready = ready_line(&second);
    assert!(
        ready.contains("adopted socket steering from pid"),
        "{ready}"
    );
    all_echo(&mut held, "adopted");
    assert_echo(&topo, &url);
    second.signal(libc::SIGKILL);
    second.wait_exit(Duration::from_secs(10));
    all_echo(&mut held, "persisted loader killed");
    assert_echo(&topo, &url);

    ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    all_echo(&mut held, "detached");
    assert!(!connects(&topo, 80), "nothing steers after detach");
    assert_no_program_loaded();
    std::thread::sleep(Duration::from_secs(2));
    all_echo(&mut held, "idle after detach");
}

#[test]
fn a_restarted_server_is_steered_to_within_a_second() {
    let _serial = serial();
    let topo = Topology::new("sk-follow");
    let echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", "socket"]);
    assert_echo(&topo, &topo.url("ws", false, 80));
    drop(echo);
    assert!(!connects(&topo, 80), "no listener: refused");
    let _echo = start_echo(&topo, &[]);
    let started = Instant::now();
    let addr = SocketAddr::new(topo.server_v4.parse().unwrap(), 80);
    let followed = in_netns(topo.client.name(), move || {
        while started.elapsed() < FOLLOW_LIMIT * 3 {
            if ws::open_within(addr, Duration::from_millis(200)).is_ok() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    });
    println!("the restarted server's listener was steered to after {followed:?}");
    let followed = followed.expect("the new listener was never steered to");
    assert!(followed <= FOLLOW_LIMIT, "after {followed:?}");
    let stats = ctl_json(&topo.server, &["stats"]);
    assert!(counter(&stats, "steer_no_listener") >= 1, "{stats}");
    stop_loader(loader);
}

#[test]
fn both_listeners_of_a_reuseport_group_receive_connections() {
    let _serial = serial();
    let topo = Topology::new("sk-reuse");
    let accepted: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let listeners: Vec<TcpListener> = in_netns(topo.server.name(), || {
        (0..2)
            .map(|_| {
                let socket = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
                socket.set_only_v6(false).unwrap();
                socket.set_reuse_port(true).unwrap();
                socket
                    .bind(&"[::]:9090".parse::<SocketAddr>().unwrap().into())
                    .unwrap();
                socket.listen(128).unwrap();
                socket.set_nonblocking(true).unwrap();
                socket.into()
            })
            .collect()
    });
    let acceptors: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            accepted[i].fetch_add(1, Ordering::Relaxed);
                            conns.push(conn);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();
    let loader = start_loader(&topo, &["--mode", "socket", "--redirect", "90:9090"]);
    const CONNECTIONS: usize = 40;
    let addr = SocketAddr::new(topo.server_v4.parse().unwrap(), 90);
    let opened: Vec<TcpStream> = in_netns(topo.client.name(), move || {
        (0..CONNECTIONS)
            .map(|i| {
                TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"))
            })
            .collect()
    });
    wait_until("every connection accepted", Duration::from_secs(5), || {
        accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum::<usize>()
            == CONNECTIONS
    });
    let counts: Vec<usize> = accepted.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    println!("connections per listener of the group: {counts:?}");
    assert!(
        counts.iter().all(|c| *c > 0),
        "one listener got none: {counts:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for acceptor in acceptors {
        acceptor.join().unwrap();
    }
    drop(opened);
    stop_loader(loader);
}

#[test]
fn a_to_port_without_listener_refuses_counts_and_doctor_says_so() {
    let _serial = serial();
    let topo = Topology::new("sk-none");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(
        &topo,
        &[
            "--mode",
            "socket",
            "--redirect",
            "80:8080",
            "--redirect",
            "81:9999",
        ],
    );
    assert_echo(&topo, &topo.url("ws", false, 80));
    assert!(
        !connects(&topo, 81),
        "refused, as the closed TO port would be"
    );
    let stats = stats_via(&topo, Via::IpNetnsExec);
    assert_eq!(counter(&stats, "steer_no_listener"), 1, "{stats}");
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(
        status["steering"]["ports_without_listener"],
        serde_json::json!([9999]),
        "{status}"
    );
    let out = ctl(&topo.server, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nothing listens on 9999"), "{text}");
    assert!(
        text.contains("socket steering: the sk_lookup program is on the network namespace"),
        "{text}"
    );
    stop_loader(loader);
}

#[test]
fn auto_takes_socket_steering_for_a_listener_in_the_loaders_namespace() {
    let _serial = serial();
    let topo = Topology::new("sk-auto");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", "auto"]);
    let ready = ready_line(&loader);
    assert!(
        ready.contains("(socket) [auto: socket: 8080, 8443 listen in this namespace and no NAT rule applies to them]"),
        "{ready}"
    );
    assert_echo(&topo, &topo.url("ws", true, 80));
    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(counter(&stats, "steer_assigned"), 1, "{stats}");
    stop_loader(loader);
}

#[test]
fn auto_keeps_the_rewrite_for_a_port_published_to_a_container() {
    let _serial = serial();
    let topo = Topology::new("sk-ctr");
    let _container = start_container(&topo, 3);
    // Nothing listens on the server itself: the TO ports exist only through the DNAT.
    let loader = start_loader(&topo, &["--mode", "auto"]);
    let ready = ready_line(&loader);
    assert!(
        ready.contains("(tc) [auto: rewrite: nothing listens on 8080, 8443 in this namespace"),
        "{ready}"
    );
    assert_echo(&topo, &topo.url("ws", false, 80));
    stop_loader(loader);
    // A listener on the published ports too (what docker-proxy is): the NAT rule decides.
    let _proxy = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", "auto"]);
    let ready = ready_line(&loader);
    assert!(
        ready.contains("(tc) [auto: rewrite: a NAT rule redirects 8080, 8443"),
        "{ready}"
    );
    assert_echo(&topo, &topo.url("wss", true, 443));
    let stats = ctl_json(&topo.server, &["stats"]);
    assert!(counter(&stats, "rewrite_ingress") > 0, "{stats}");
    assert_eq!(counter(&stats, "steer_assigned"), 0, "{stats}");
    stop_loader(loader);
}
