//! Flow integrity against the real loader: only a connection itself ends its flow. Blind
//! spoofed RST, FIN and SYN (`tcp-spoof`) end no idle WebSocket session and no entry, also
//! when the sessions are DNATed on to a container; entries deleted behind the loader's
//! back come back from the kernel (the client's next packet, or the server's); an idle
//! connection outlives `--timeout-established` while its socket is open; real closes are
//! still removed within seconds.
//!
//! Sessions on :80 are plain sockets of this process (`redirector_tests::ws`, opened from
//! a thread in the client namespace, each from a port the test picks so that its 4-tuple
//! is known); sessions on :443 are ws-client processes over TLS. Every session is held
//! idle across every step, and a session that breaks is reported with its step and the
//! loader's counters, flows and both namespaces' sockets. The spoofed packets come from
//! the client namespace's own addresses and go only to the server namespace.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use redirector_tests::{
    bins,
    container::{start_container, Container},
    fixtures::*,
    ws::{self, in_netns},
};
use serde_json::Value;
use testkit::{
    cmd::must,
    netns::{Netns, Topology},
    process::Proc,
};

/// ws-client's `--timeout` for the held sessions: longer than any test.
const SESSION_LIMIT: Duration = Duration::from_secs(300);
/// Limit on one round of exchanges (every session's echo).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first client port the tests bind (below the ephemeral range, so nothing else picks
/// it); each session takes the next.
const FIRST_PORT: u16 = 21_000;

/// A held idle session and the 4-tuple its client sees.
struct Held {
    /// What it is and what was done to it, e.g. `rst-random v6 :80 #3`.
    label: String,
    /// The client's address and port.
    client: SocketAddr,
    /// The server's address and the FROM port (80 or 443).
    server: SocketAddr,
    conn: Conn,
    /// The step at which it failed, and how.
    broken: Option<String>,
}

/// A session's client: a socket of this process (:80) or a ws-client process (:443).
enum Conn {
    Raw(TcpStream),
    Client(Proc),
}

impl Held {
    /// Sends `text`; its echo is awaited by [`Held::await_echo`].
    fn send(&mut self, text: &str) -> Result<(), String> {
        match &mut self.conn {
            Conn::Raw(stream) => ws::send_text(stream, text),
            Conn::Client(session) => {
                writeln!(session.stdin(), "{text}").map_err(|e| format!("ws-client stdin: {e}"))
            }
        }
    }

    /// Waits until `deadline` for the echo of `text`.
    fn await_echo(&mut self, text: &str, deadline: Instant) -> Result<(), String> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        match &mut self.conn {
            Conn::Raw(stream) => {
                stream.set_read_timeout(Some(left)).unwrap();
                let echoed = ws::expect_text(stream, text);
                stream.set_read_timeout(Some(ws::IO_TIMEOUT)).unwrap();
                echoed
            }
            // The failure of one session must not hide the others': a result, not a panic.
            Conn::Client(session) => std::panic::catch_unwind(AssertUnwindSafe(|| {
                session.wait_line(&format!("echo: {text}"), left)
            }))
            .map(drop)
            .map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "ws-client failed".into())
            }),
        }
    }

    /// The plain socket of a :80 session.
    fn raw(&mut self) -> &mut TcpStream {
        match &mut self.conn {
            Conn::Raw(stream) => stream,
            Conn::Client(_) => panic!("{} is a ws-client session", self.label),
        }
    }
}

/// The client namespace's IPv6 address: the server's with host part 1 (see
/// `Topology::new`).
fn client_v6(topo: &Topology) -> String {
    topo.server_v6.replacen("::2", "::1", 1)
}

/// Opens held sessions, each from the next client port.
struct Opener<'a> {
    topo: &'a Topology,
    next_port: u16,
}

impl<'a> Opener<'a> {
    fn new(topo: &'a Topology) -> Self {
        Self {
            topo,
            next_port: FIRST_PORT,
        }
    }

    fn take_port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port - 1
    }

    fn addrs(&self, v6: bool, port: u16) -> (IpAddr, SocketAddr) {
        let (client, server) = if v6 {
            (client_v6(self.topo), self.topo.server_v6.clone())
        } else {
            (self.topo.client_v4.clone(), self.topo.server_v4.clone())
        };
        (
            client.parse().unwrap(),
            SocketAddr::new(server.parse().unwrap(), port),
        )
    }

    /// `count` sessions through :80 over IPv4 or IPv6, labelled `what v4 :80 #i`.
    fn raw(&mut self, what: &str, v6: bool, count: usize) -> Vec<Held> {
        let (client_ip, server) = self.addrs(v6, 80);
        let ports: Vec<u16> = (0..count).map(|_| self.take_port()).collect();
        let opened = {
            let ports = ports.clone();
            in_netns(self.topo.client.name(), move || {
                ports
                    .into_iter()
                    .map(|port| ws::open(server, Some(port)))
                    .collect::<Vec<_>>()
            })
        };
        let family = if v6 { "v6" } else { "v4" };
        opened
            .into_iter()
            .zip(ports)
            .enumerate()
            .map(|(i, (stream, port))| {
                let label = format!("{what} {family} :80 #{i}");
                let stream = stream.unwrap_or_else(|e| panic!("opening {label}: {e}"));
                Held {
                    label,
                    client: SocketAddr::new(client_ip, port),
                    server,
                    conn: Conn::Raw(stream),
                    broken: None,
                }
            })
            .collect()
    }

    /// One ws-client session through :443 (TLS), labelled `what v4 :443 #i`.
    fn wss(&mut self, what: &str, v6: bool, i: usize) -> Held {
        let (client_ip, server) = self.addrs(v6, 443);
        let port = self.take_port();
        let url = self.topo.url("wss", v6, 443);
        Held {
            label: format!("{what} {} :443 #{i}", if v6 { "v6" } else { "v4" }),
            client: SocketAddr::new(client_ip, port),
            server,
            conn: Conn::Client(open_session_from(self.topo, &url, port, SESSION_LIMIT)),
            broken: None,
        }
    }
}

/// What the server side looks like: the loader's counters and flows, and the sockets of
/// both namespaces (printed when a session breaks).
fn server_side(topo: &Topology) -> String {
    let show = |out: std::process::Output| {
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let stats = show(ctl(&topo.server, &["stats"]));
    let flows = show(ctl(&topo.server, &["flows"]));
    let server = show(topo.server.cmd("ss").arg("-tan").output().unwrap());
    let client = show(topo.client.cmd("ss").arg("-tan").output().unwrap());
    format!("{stats}\n{flows}\nserver sockets:\n{server}\nclient sockets:\n{client}")
}

/// Exchanges `text` on every session not yet broken: sends on all, then awaits every echo
/// within one [`EXCHANGE_TIMEOUT`] (a lost echo does not delay the others' checks). A
/// session that fails is marked broken at this step, and the server side is printed once.
fn echo_all(topo: &Topology, held: &mut [Held], text: &str) {
    let mut failed = Vec::new();
    let mut fail = |session: &mut Held, err: String| {
        failed.push(session.label.clone());
        session.broken = Some(format!("at `{text}`: {err}"));
    };
    let mut sent = Vec::new();
    for (i, session) in held.iter_mut().enumerate() {
        if session.broken.is_none() {
            match session.send(text) {
                Ok(()) => sent.push(i),
                Err(err) => fail(session, err),
            }
        }
    }
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    for i in sent {
        if let Err(err) = held[i].await_echo(text, deadline) {
            fail(&mut held[i], err);
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "{} sessions broke at `{text}`: {failed:?}; the server side:\n{}",
            failed.len(),
            server_side(topo)
        );
    }
}

/// Panics if any session broke, listing each with its step, and how many of each kind.
fn assert_none_broken(held: &[Held]) {
    let broken: Vec<&Held> = held.iter().filter(|s| s.broken.is_some()).collect();
    if broken.is_empty() {
        return;
    }
    let mut per_kind: Vec<(String, usize, usize)> = Vec::new();
    for session in held {
        let kind = session.label.split(" #").next().unwrap().to_string();
        let broke = usize::from(session.broken.is_some());
        match per_kind.iter_mut().find(|(k, _, _)| *k == kind) {
            Some(entry) => {
                entry.1 += broke;
                entry.2 += 1;
            }
            None => per_kind.push((kind, broke, 1)),
        }
    }
    let kinds: Vec<String> = per_kind
        .iter()
        .map(|(kind, broke, all)| format!("{kind}: {broke}/{all}"))
        .collect();
    let each: Vec<String> = broken
        .iter()
        .map(|s| format!("{} {}", s.label, s.broken.as_deref().unwrap()))
        .collect();
    panic!(
        "{} of {} sessions broken ({})\n{}",
        broken.len(),
        held.len(),
        kinds.join(", "),
        each.join("\n")
    );
}

/// `redirector stats --json`.
fn stats(topo: &Topology) -> Value {
    ctl_json(&topo.server, &["stats"])
}

/// A global counter of `stats --json`.
fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {stats}"))
}

/// The tracked flows by client address and port: their state.
fn tracked(topo: &Topology) -> HashMap<SocketAddr, String> {
    let flows = ctl_json(&topo.server, &["flows"]);
    flows
        .as_array()
        .unwrap_or_else(|| panic!("flows --json: {flows}"))
        .iter()
        .map(|f| {
            let client = f["client"].as_str().unwrap().parse().unwrap();
            (client, f["state"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The labels of the sessions not broken whose flow is not tracked (also printed: the
/// sessions' own failures may be asserted first).
fn untracked(topo: &Topology, held: &[Held]) -> Vec<String> {
    let flows = tracked(topo);
    let missing: Vec<String> = held
        .iter()
        .filter(|s| s.broken.is_none() && !flows.contains_key(&s.client))
        .map(|s| s.label.clone())
        .collect();
    if !missing.is_empty() {
        eprintln!("{} flows not tracked: {missing:?}", missing.len());
    }
    missing
}

/// Where the sessions' server side runs.
enum Backend {
    /// ws-echo in the server namespace, on the rules' TO ports (stopped on drop).
    Local { _echo: Proc },
    /// ws-echo in a container namespace behind the server's DNAT of the TO ports (the
    /// Docker shape): no socket of these connections is in the loader's namespace.
    Container(Container),
}

impl Backend {
    /// Starts ws-echo in the server namespace, or in a container behind it.
    fn start(topo: &Topology, container: bool) -> Self {
        if container {
            Backend::Container(start_container(topo, 1))
        } else {
            Backend::Local {
                _echo: start_echo(topo, &[]),
            }
        }
    }

    /// The namespace holding the server sockets.
    fn ns<'a>(&'a self, topo: &'a Topology) -> &'a Netns {
        match self {
            Backend::Local { .. } => &topo.server,
            Backend::Container(container) => &container.ns,
        }
    }

    /// Established server sockets of the sessions.
    fn connections(&self, topo: &Topology) -> usize {
        match self {
            Backend::Local { .. } => established(&topo.server, SERVER_PORTS),
            Backend::Container(container) => established(&container.ns, CONTAINER_PORTS),
        }
    }
}

/// `ss` filter of the server sockets: the rules' TO ports …
const SERVER_PORTS: &str = "( sport = :8080 or sport = :8443 )";
/// … or the container's ports they are DNATed to.
const CONTAINER_PORTS: &str = "( sport = :3000 or sport = :3443 )";

// ---------------------------------------------------------------------------------------
// Blind attacks

/// One attack kind of `tcp-spoof` and the packets it sends each connection: (RSTs, all).
const ATTACKS: [(&str, u64, u64); 4] = [
    ("rst-random", 20, 20),
    ("rst-in-window", 4, 4),
    ("fin-random", 0, 5),
    ("syn-random", 0, 1),
];
/// Attacked sessions per attack kind and family through :80 …
const RAW_PER_KIND: usize = 6;
/// … and through :443 (ws-client over TLS).
const WSS_PER_KIND: usize = 2;
/// Sessions per family held next to the attacked ones, never attacked.
const BYSTANDERS: usize = 4;
/// `--timeout-fin-wait` of the attack tests: a spoofed FIN must not shorten a flow's life
/// to this.
const FIN_WAIT_SECS: u64 = 2;
/// How long the attacked sessions idle after the attack: the fin-wait timeout, a reaper
/// tick (1 s) and a margin.
const AFTER_ATTACK_IDLE: Duration = Duration::from_secs(FIN_WAIT_SECS + 3);

/// Opens the attacked sessions (each attack kind, :80 and :443) and the bystanders, over
/// IPv4 and IPv6.
fn open_attacked(opener: &mut Opener<'_>) -> Vec<Held> {
    let mut held = Vec::new();
    for v6 in [false, true] {
        for (kind, _, _) in ATTACKS {
            held.extend(opener.raw(kind, v6, RAW_PER_KIND));
            for i in 0..WSS_PER_KIND {
                held.push(opener.wss(kind, v6, i));
            }
        }
        held.extend(opener.raw("bystander", v6, BYSTANDERS));
    }
    held
}

/// The attack kind in a session's label, if it was attacked.
fn attack_of(session: &Held) -> Option<&'static str> {
    let kind = session.label.split(' ').next().unwrap();
    ATTACKS.iter().map(|a| a.0).find(|a| *a == kind)
}

/// Runs `tcp-spoof` on every attacked session: it learns the in-window RSTs' sequence
/// numbers while each session exchanges one message, then sends. Returns its output.
fn attack(topo: &Topology, held: &mut [Held]) -> Vec<String> {
    let mut cmd = topo.client.cmd(bins::tcp_spoof());
    cmd.args(["--iface", topo.client_if, "--seconds", "120"]);
    for session in held.iter() {
        if let Some(kind) = attack_of(session) {
            cmd.arg("--target")
                .arg(format!("{kind},{},{}", session.client, session.server));
        }
    }
    let mut spoof = Proc::spawn("tcp-spoof", cmd, true);
    spoof.wait_line("sniffing on", Duration::from_secs(10));
    echo_all(topo, held, "seen by the attacker");
    writeln!(spoof.stdin(), "go").unwrap();
    let (status, lines) = spoof.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "tcp-spoof {status}: {lines:?}\n{}",
        spoof.stderr_text()
    );
    lines
}

/// Blind spoofed RST, FIN and SYN on idle sessions in `mode`, IPv4 and IPv6, served in the
/// server namespace or in a `container` behind its DNAT.
fn blind_attack_ends_no_session(mode: &str, container: bool) {
    let _serial = serial();
    let topo = Topology::new(&format!("int-{mode}{}", if container { "-k" } else { "" }));
    let backend = Backend::start(&topo, container);
    let loader = start_loader(
        &topo,
        &[
            "--mode",
            mode,
            "--timeout-fin-wait",
            &FIN_WAIT_SECS.to_string(),
        ],
    );
    let mut held = open_attacked(&mut Opener::new(&topo));
    let attacked: Vec<&'static str> = held.iter().filter_map(attack_of).collect();
    let before = stats(&topo);
    let tcp_before = backend.ns(&topo).tcp_ext();

    let lines = attack(&topo, &mut held);
    println!("{mode}: {lines:?}");
    for (kind, _, per_connection) in ATTACKS {
        let connections = attacked.iter().filter(|k| **k == kind).count() as u64;
        let line = format!(
            "sent {kind}: {} packets to {connections} connections",
            per_connection * connections
        );
        assert!(lines.contains(&line), "`{line}` not in {lines:?}");
    }
    echo_all(&topo, &mut held, "right after the attack");
    let after_attack = tracked(&topo);
    // The FINs reached the server's hook: their flows went to fin_wait.
    let fin_states: Vec<(String, Option<String>)> = held
        .iter()
        .filter(|s| attack_of(s) == Some("fin-random") && s.broken.is_none())
        .map(|s| (s.label.clone(), after_attack.get(&s.client).cloned()))
        .filter(|(_, state)| state.as_deref() != Some("fin_wait"))
        .collect();

    // Idle past the fin-wait timeout: the spoofed FINs must not have shortened anything.
    std::thread::sleep(AFTER_ATTACK_IDLE);
    let gone = untracked(&topo, &held);
    echo_all(&topo, &mut held, "after the fin-wait timeout");
    assert_none_broken(&held);
    assert!(
        gone.is_empty(),
        "flows gone {AFTER_ATTACK_IDLE:?} after the attack (--timeout-fin-wait \
         {FIN_WAIT_SECS}): {gone:?}"
    );
    assert!(
        fin_states.is_empty(),
        "flows of FIN-attacked sessions not in fin_wait (did the FINs arrive?): {fin_states:?}"
    );

    let after = stats(&topo);
    let tcp_after = backend.ns(&topo).tcp_ext();
    let delta = |name: &str| tcp_after[name].saturating_sub(tcp_before[name]);
    println!(
        "{mode}: TcpExt deltas where the sessions end: TCPChallengeACK={} TCPACKSkippedChallenge={} \
         TCPSYNChallenge={} TCPACKSkippedSeq={} PAWSEstab={}",
        delta("TCPChallengeACK"),
        delta("TCPACKSkippedChallenge"),
        delta("TCPSYNChallenge"),
        delta("TCPACKSkippedSeq"),
        delta("PAWSEstab"),
    );
    let rsts: u64 = ATTACKS
        .iter()
        .map(|(kind, rsts, _)| rsts * attacked.iter().filter(|k| *k == kind).count() as u64)
        .sum();
    let rst_seen = counter(&after, "flow_rst_seen") - counter(&before, "flow_rst_seen");
    if container {
        // netfilter finds the random FINs out of window (INVALID): they are not DNATed but
        // delivered to the server's own closed TO port, whose RSTs (at the FIN's random
        // acknowledgement number, which the client ignores) pass TC egress too.
        assert!(
            rst_seen >= rsts,
            "flow_rst_seen {rst_seen} < {rsts}: {after}"
        );
    } else {
        assert_eq!(
            rst_seen, rsts,
            "flow_rst_seen: every spoofed RST, and only those: {after}"
        );
    }
    for name in ["flow_healed_ingress", "flow_healed_egress", "flow_reaped"] {
        assert_eq!(
            counter(&after, name),
            counter(&before, name),
            "{name}: no flow was lost, so none was healed or reaped: {after}"
        );
    }
    assert_eq!(
        after["flows_established"],
        held.len() as u64,
        "every session's flow: {after}"
    );
    // The in-window RSTs and the SYNs reached the server's sockets: each is answered by a
    // challenge ACK or counted as one the per-socket rate limit skipped. Behind the DNAT,
    // netfilter conntrack may find an RST|ACK's random acknowledgement number out of
    // window (INVALID, not DNATed): only the plain RSTs are sure to arrive.
    let in_window_conns = attacked.iter().filter(|k| **k == "rst-in-window").count() as u64;
    let in_window = in_window_conns * if container { 2 } else { 4 };
    let syns = attacked.iter().filter(|k| **k == "syn-random").count() as u64;
    assert!(
        delta("TCPChallengeACK") + delta("TCPACKSkippedChallenge") >= in_window + syns,
        "challenge ACKs for {in_window} in-window RSTs and {syns} SYNs"
    );
    assert_eq!(backend.connections(&topo), held.len(), "server sockets");
    let backend_csum_errors = match &backend {
        Backend::Local { .. } => 0,
        Backend::Container(container) => container.ns.tcp_counter("InCsumErrors"),
    };
    assert_eq!(
        topo.csum_errors() + backend_csum_errors,
        0,
        "TCP checksum errors"
    );
    stop_loader(loader);
    drop(held);
}

/// Spoofed RST (random and in-window), FIN and SYN from the client's network, with TC
/// ingress: every idle session keeps echoing, also after the fin-wait timeout, and every
/// flow stays tracked (none lost, none healed).
#[test]
fn blind_spoofed_rst_fin_syn_end_no_session_tc() {
    blind_attack_ends_no_session("tc", false);
}

/// The same blind attack with native XDP ingress.
#[test]
fn blind_spoofed_rst_fin_syn_end_no_session_xdp() {
    blind_attack_ends_no_session("xdp", false);
}

/// The same blind attack on sessions DNATed on to a container (the Docker shape, TC
/// ingress): the kernel cannot heal these flows (their sockets are not in the loader's
/// namespace), so none may be lost; netfilter conntrack answers for them.
#[test]
fn blind_spoofed_rst_fin_syn_end_no_dnat_session_tc() {
    blind_attack_ends_no_session("tc", true);
}

/// The same blind attack with socket steering (IPv4 and IPv6, :80 and :443): no table
/// exists for a spoofed packet to end an entry of, the kernel alone judges each packet
/// (RFC 5961), and every idle session keeps echoing.
#[test]
fn blind_spoofed_rst_fin_syn_end_no_steered_session() {
    let _serial = serial();
    let topo = Topology::new("int-socket");
    let backend = Backend::start(&topo, false);
    let loader = start_loader(&topo, &["--mode", "socket"]);
    let mut held = open_attacked(&mut Opener::new(&topo));
    let attacked: Vec<&'static str> = held.iter().filter_map(attack_of).collect();
    let tcp_before = backend.ns(&topo).tcp_ext();
    let lines = attack(&topo, &mut held);
    println!("socket: {lines:?}");
    echo_all(&topo, &mut held, "right after the attack");
    std::thread::sleep(Duration::from_secs(2));
    echo_all(&topo, &mut held, "after a pause");
    assert_none_broken(&held);
    let tcp_after = backend.ns(&topo).tcp_ext();
    let delta = |name: &str| tcp_after[name].saturating_sub(tcp_before[name]);
    let in_window = attacked.iter().filter(|k| **k == "rst-in-window").count() as u64 * 4;
    let syns = attacked.iter().filter(|k| **k == "syn-random").count() as u64;
    assert!(
        delta("TCPChallengeACK") + delta("TCPACKSkippedChallenge") >= in_window + syns,
        "challenge ACKs for {in_window} in-window RSTs and {syns} SYNs"
    );
    let after = stats(&topo);
    assert_eq!(
        counter(&after, "steer_assigned"),
        held.len() as u64,
        "every session steered, and only by its own SYN: {after}"
    );
    assert_eq!(
        after["flows_established"], 0,
        "socket steering tracks nothing: {after}"
    );
    // A steered connection's server socket has the port the client dialled.
    assert_eq!(
        established(&topo.server, "( sport = :80 or sport = :443 )"),
        held.len(),
        "server sockets"
    );
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    stop_loader(loader);
    drop(held);
}

/// A client connected from one port to two of the server's FROM ports at once (the kernel
/// allows it: the 4-tuples differ), over IPv4 and IPv6: each flow keeps an entry of its
/// own, neither replaces the other, and both sessions echo, idle, and after the first
/// closes.
fn one_client_port_to_two_from_ports(mode: &str) {
    let _serial = serial();
    let topo = Topology::new(&format!("int-lane-{mode}"));
    let _echo = start_echo(&topo, &["0.0.0.0:9090", "[::]:9090"]);
    let loader = start_loader(
        &topo,
        &[
            "--mode",
            mode,
            "--redirect",
            "80:8080",
            "--redirect",
            "90:9090",
        ],
    );
    for (v6, client_port) in [(false, 24_000u16), (true, 24_001)] {
        let server: IpAddr = if v6 { &topo.server_v6 } else { &topo.server_v4 }
            .parse()
            .unwrap();
        let (mut first, mut second) = in_netns(topo.client.name(), move || {
            let open = |port| {
                ws::open(SocketAddr::new(server, port), Some(client_port))
                    .unwrap_or_else(|e| panic!("session to :{port} from :{client_port}: {e}"))
            };
            (open(80), open(90))
        });
        for text in ["both open", "the other one opened"] {
            ws::echo(&mut first, text).unwrap_or_else(|e| panic!("v6={v6} :80 at `{text}`: {e}"));
            ws::echo(&mut second, text).unwrap_or_else(|e| panic!("v6={v6} :90 at `{text}`: {e}"));
        }
        let flows = ctl_json(&topo.server, &["flows"]);
        let ours: Vec<u64> = flows
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                f["client"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!(":{client_port}"))
            })
            .map(|f| f["orig_port"].as_u64().unwrap())
            .collect();
        assert_eq!(ours.len(), 2, "one entry per flow: {flows:#}");
        assert!(ours.contains(&80) && ours.contains(&90), "{flows:#}");
        std::thread::sleep(Duration::from_secs(2));
        ws::echo(&mut first, "idle").unwrap_or_else(|e| panic!("v6={v6} :80 idle: {e}"));
        ws::close_by_client_fin(first).unwrap_or_else(|e| panic!("v6={v6} closing :80: {e}"));
        ws::echo(&mut second, "the first closed")
            .unwrap_or_else(|e| panic!("v6={v6} :90 after :80 closed: {e}"));
    }
    let after = stats(&topo);
    assert_eq!(counter(&after, "flow_replaced"), 0, "{after}");
    assert_eq!(counter(&after, "pass_port_mismatch"), 0, "{after}");
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    stop_loader(loader);
}

#[test]
fn one_client_port_to_two_from_ports_keeps_both_flows_tc() {
    one_client_port_to_two_from_ports("tc");
}

#[test]
fn one_client_port_to_two_from_ports_keeps_both_flows_xdp() {
    one_client_port_to_two_from_ports("xdp");
}

// ---------------------------------------------------------------------------------------
// Healing

/// Sessions per family through :80 whose client speaks first after the loss …
const CLIENT_FIRST_PER_FAMILY: usize = 25;
/// … and whose server does (a push).
const SERVER_FIRST_PER_FAMILY: usize = 25;
/// How long after its request ws-echo pushes: longer than the requests, the quiet period
/// and the flush take.
const PUSH_DELAY: Duration = Duration::from_secs(5);
/// Quiet time before the entries are deleted: the delayed ACKs of the last exchanges (at
/// most 200 ms) must be out, so that each flow's next packet is the one the test means.
const QUIET_BEFORE_FLUSH: Duration = Duration::from_millis(500);

/// Every entry deleted (`flush`) under idle sessions in `mode`: each comes back from its
/// connection's next packet, the client's or the server's.
fn deleted_entries_heal(mode: &str) {
    let _serial = serial();
    let topo = Topology::new(&format!("heal-{mode}"));
    let _echo = start_echo_with(&topo, &[], &["--push-requests"]);
    let loader = start_loader(&topo, &["--mode", mode]);
    let mut opener = Opener::new(&topo);
    let mut client_first = Vec::new();
    let mut server_first = Vec::new();
    for v6 in [false, true] {
        client_first.extend(opener.raw("client-first", v6, CLIENT_FIRST_PER_FAMILY));
        client_first.push(opener.wss("client-first", v6, 0));
        server_first.extend(opener.raw("server-first", v6, SERVER_FIRST_PER_FAMILY));
    }
    let sessions = client_first.len() + server_first.len();
    let before = stats(&topo);
    assert_eq!(before["flows_established"], sessions as u64, "{before}");

    // The servers' pushes, asked for now, come after the deletion.
    let requested = Instant::now();
    for (i, session) in server_first.iter_mut().enumerate() {
        let request = format!("push-after {} pushed {i}", PUSH_DELAY.as_millis());
        let label = session.label.clone();
        ws::echo(session.raw(), &request).unwrap_or_else(|e| panic!("{label}: {e}"));
    }
    std::thread::sleep(QUIET_BEFORE_FLUSH);
    let out = ctl_ok(&topo.server, &["flush"]);
    assert_eq!(out.trim(), format!("flushed {sessions} flows"));
    let flushed = stats(&topo);
    assert!(
        requested.elapsed() < PUSH_DELAY,
        "the flush ended {:?} after the first push request: raise PUSH_DELAY",
        requested.elapsed()
    );
    assert_eq!(flushed["flows_tracked"], 0, "{flushed}");

    // Every push is due by then: a lost one costs no more than the rest of that wait.
    let pushes_due = requested + PUSH_DELAY + ws::IO_TIMEOUT;
    for (i, session) in server_first.iter_mut().enumerate() {
        let stream = session.raw();
        let left = pushes_due.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(100))))
            .unwrap();
        let pushed = ws::expect_text(stream, &format!("pushed {i}"));
        stream.set_read_timeout(Some(ws::IO_TIMEOUT)).unwrap();
        if let Err(err) = pushed {
            session.broken = Some(format!("at the push after the flush: {err}"));
        }
    }
    if server_first.iter().any(|s| s.broken.is_some()) {
        eprintln!("pushes lost; the server side:\n{}", server_side(&topo));
    }
    echo_all(&topo, &mut client_first, "after the flush");
    let healed = stats(&topo);
    let mut held: Vec<Held> = client_first.into_iter().chain(server_first).collect();
    echo_all(&topo, &mut held, "after healing");
    assert_none_broken(&held);

    let count = |stats: &Value, name: &str| counter(stats, name) - counter(&before, name);
    let client_first = 2 * (CLIENT_FIRST_PER_FAMILY + 1) as u64;
    let server_first = 2 * SERVER_FIRST_PER_FAMILY as u64;
    assert_eq!(
        count(&healed, "flow_healed_ingress"),
        client_first,
        "one heal per client-first session: {healed}"
    );
    assert_eq!(
        count(&healed, "flow_healed_egress"),
        server_first,
        "one heal per server-first session: {healed}"
    );
    let after = stats(&topo);
    for name in [
        "flow_healed_ingress",
        "flow_healed_egress",
        "flow_heal_withdrawn",
    ] {
        assert_eq!(
            counter(&after, name),
            counter(&healed, name),
            "{name}: healed once: {after}"
        );
    }
    assert_eq!(count(&after, "flow_heal_withdrawn"), 0, "{after}");
    assert_eq!(after["flows_established"], sessions as u64, "{after}");
    let untracked = untracked(&topo, &held);
    assert!(untracked.is_empty(), "not healed: {untracked:?}");
    assert_eq!(
        established(&topo.server, SERVER_PORTS),
        sessions,
        "server sockets"
    );
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    stop_loader(loader);
}

/// Every entry flushed under 100 idle sessions (TC ingress): client-first sessions heal
/// at ingress (the kernel's socket table holds the connection on the TO port), server-first
/// ones at egress (their socket was recorded as redirected); every session works, each
/// flow healed exactly once, none withdrawn.
#[test]
fn flushed_entries_of_idle_sessions_heal_from_either_side_tc() {
    deleted_entries_heal("tc");
}

/// The same with native XDP ingress (the ingress heal looks the socket up from XDP).
#[test]
fn flushed_entries_of_idle_sessions_heal_from_either_side_xdp() {
    deleted_entries_heal("xdp");
}

/// Rule in the client namespace's OUTPUT chain that drops every segment to the server's
/// :80 but the SYN: the handshake's ACK and the request are held back (and retransmitted).
fn hold_back_rule(v6: bool, server: &str) -> (&'static str, [&str; 11]) {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let rule = [
        "OUTPUT", "-p", "tcp", "-d", server, "--dport", "80", "!", "--syn", "-j", "DROP",
    ];
    (tool, rule)
}

/// A handshake whose half-open entry is lost between the server's SYN-ACK and the client's
/// ACK, on a listener that answers every SYN with a cookie (`tcp_syncookies=2`, as a SYN
/// flood makes it do): the server's kernel keeps no request socket, so only the cookie in
/// the client's ACK says the handshake is real. The ACK heals the entry and the connection
/// works; without the heal it would reach :80 and be reset.
fn handshake_heals_from_its_syn_cookie(mode: &str, v6: bool) {
    let _serial = serial();
    let topo = Topology::new(&format!("cookie-{mode}"));
    topo.server
        .cmd("sysctl")
        .args(["-q", "-w", "net.ipv4.tcp_syncookies=2"])
        .status()
        .map(|s| assert!(s.success(), "sysctl tcp_syncookies"))
        .unwrap();
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", mode]);
    let server = if v6 {
        topo.server_v6.clone()
    } else {
        topo.server_v4.clone()
    };
    let addr = SocketAddr::new(server.parse::<IpAddr>().unwrap(), 80);
    let (tool, rule) = hold_back_rule(v6, &server);
    must(topo.client.cmd(tool).arg("-A").args(rule));
    let before = stats(&topo);

    // The client's connect() completes (its ACK is dropped) and its request waits for
    // retransmission while the entry goes.
    let client_ns = topo.client.name().to_owned();
    let opened = std::thread::spawn(move || in_netns(&client_ns, move || ws::open(addr, None)));
    // The client's socket is established once the SYN-ACK reached it; its ACK is dropped.
    let peer = if v6 {
        format!("[{server}]")
    } else {
        server.clone()
    };
    let filter = format!("( dport = :80 and dst {peer} )");
    wait_until("the client's handshake", EXCHANGE_TIMEOUT, || {
        established(&topo.client, &filter) == 1
    });
    assert_eq!(stats(&topo)["flows_half_open"], 1, "the half-open entry");
    assert_eq!(ctl_ok(&topo.server, &["flush"]).trim(), "flushed 1 flows");
    must(topo.client.cmd(tool).arg("-D").args(rule));

    let mut stream = opened
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{mode} IPv{}: {e}", if v6 { 6 } else { 4 }));
    ws::echo(&mut stream, "after the cookie heal").unwrap();
    let after = stats(&topo);
    let count = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(count("flow_healed_ingress"), 1, "{after}");
    assert_eq!(count("flow_heal_withdrawn"), 0, "{after}");
    assert_eq!(after["flows_established"], 1, "{after}");
    let syncookies_ok = topo.server.tcp_ext()["SyncookiesRecv"];
    assert!(syncookies_ok >= 1, "the server's kernel took no cookie");
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
    drop(stream);
    stop_loader(loader);
}

/// TC ingress, IPv4: the ACK's cookie heals the lost half-open entry.
#[test]
fn a_handshake_completed_by_a_syn_cookie_heals_tc_ipv4() {
    handshake_heals_from_its_syn_cookie("tc", false);
}

/// Native XDP, IPv6: the same.
#[test]
fn a_handshake_completed_by_a_syn_cookie_heals_xdp_ipv6() {
    handshake_heals_from_its_syn_cookie("xdp", true);
}

// ---------------------------------------------------------------------------------------
// Lifetimes

/// `--timeout-established` of the idle test.
const ESTABLISHED_SECS: u64 = 5;
/// How long its sessions idle: well past that timeout and a reaper tick.
const LONG_IDLE: Duration = Duration::from_secs(ESTABLISHED_SECS + 3);

/// An idle connection whose socket is open outlives `--timeout-established`: its entry is
/// still tracked (not reaped, not healed) after idling past it, and it echoes.
#[test]
fn an_idle_connection_outlives_the_established_timeout_while_its_socket_is_open() {
    let _serial = serial();
    let topo = Topology::new("int-idle");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(
        &topo,
        &["--timeout-established", &ESTABLISHED_SECS.to_string()],
    );
    let mut opener = Opener::new(&topo);
    let mut held = Vec::new();
    for v6 in [false, true] {
        held.extend(opener.raw("idle", v6, 2));
        held.push(opener.wss("idle", v6, 0));
    }
    let before = stats(&topo);

    std::thread::sleep(LONG_IDLE);
    let gone = untracked(&topo, &held);
    echo_all(&topo, &mut held, "after idling");
    assert_none_broken(&held);
    assert!(
        gone.is_empty(),
        "flows gone after {LONG_IDLE:?} idle with --timeout-established {ESTABLISHED_SECS}: \
         {gone:?}"
    );
    let after = stats(&topo);
    for name in ["flow_reaped", "flow_healed_ingress", "flow_healed_egress"] {
        assert_eq!(
            counter(&after, name),
            counter(&before, name),
            "{name}: {after}"
        );
    }
    stop_loader(loader);
}

/// `--timeout-closing` of the close test.
const CLOSING_SECS: u64 = 2;
/// Limit on the removal of a closed connection's flow.
const CLOSE_REMOVAL_LIMIT: Duration = Duration::from_secs(6);

/// Closes `session` the way its label says.
fn close_as_labelled(session: Held) -> Result<(), String> {
    let Conn::Raw(stream) = session.conn else {
        panic!("{}: not a :80 session", session.label)
    };
    match session.label.split(' ').next().unwrap() {
        "client-fin" => ws::close_by_client_fin(stream),
        "server-fin" => ws::close_by_server_fin(stream),
        "client-rst" => ws::close_by_client_rst(stream),
        other => panic!("no close `{other}`"),
    }
}

/// Real closes — the client's FIN first, the server's FIN first, an application's RST
/// (SO_LINGER 0) — have their flows removed within seconds, while idle sessions next to
/// them stay tracked and echo; served in the server namespace (the socket table answers)
/// or in a `container` behind its DNAT (netfilter conntrack answers).
fn real_closes_removed(container: bool) {
    let _serial = serial();
    let topo = Topology::new(if container {
        "int-close-k"
    } else {
        "int-close"
    });
    let _backend = Backend::start(&topo, container);
    let loader = start_loader(&topo, &["--timeout-closing", &CLOSING_SECS.to_string()]);
    let mut opener = Opener::new(&topo);
    let mut closing = Vec::new();
    let mut held = Vec::new();
    for v6 in [false, true] {
        for how in ["client-fin", "server-fin", "client-rst"] {
            closing.extend(opener.raw(how, v6, 1));
        }
        held.extend(opener.raw("bystander", v6, 2));
        held.push(opener.wss("bystander", v6, 0));
    }
    let closed: Vec<(String, SocketAddr)> = closing
        .iter()
        .map(|s| (s.label.clone(), s.client))
        .collect();
    let start = Instant::now();
    for session in closing {
        let label = session.label.clone();
        close_as_labelled(session).unwrap_or_else(|e| panic!("{label}: {e}"));
    }

    let mut removed_after: HashMap<String, Duration> = HashMap::new();
    loop {
        let flows = tracked(&topo);
        for (label, client) in &closed {
            if !flows.contains_key(client) {
                removed_after
                    .entry(label.clone())
                    .or_insert(start.elapsed());
            }
        }
        if removed_after.len() == closed.len() {
            break;
        }
        if start.elapsed() > CLOSE_REMOVAL_LIMIT {
            let left: Vec<String> = closed
                .iter()
                .filter(|(label, _)| !removed_after.contains_key(label))
                .map(|(label, client)| format!("{label} ({:?})", flows.get(client)))
                .collect();
            panic!(
                "flows of closed connections still tracked {CLOSE_REMOVAL_LIMIT:?} after the \
                 close: {left:?}\n{}",
                server_side(&topo)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("closed flows removed after: {removed_after:?}");

    let gone = untracked(&topo, &held);
    echo_all(&topo, &mut held, "after the closes");
    assert_none_broken(&held);
    assert!(gone.is_empty(), "idle flows gone: {gone:?}");
    stop_loader(loader);
}

/// Real closes of connections served in the loader's namespace: the socket table says
/// when each is over.
#[test]
fn real_closes_are_removed_within_seconds() {
    real_closes_removed(false);
}

/// Real closes of connections DNATed on to a container (the Docker shape): conntrack says
/// when each is over.
#[test]
fn real_closes_of_dnat_sessions_are_removed_within_seconds() {
    real_closes_removed(true);
}
