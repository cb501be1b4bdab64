//! Restarting, upgrading and crashing the loader of a `run --persist` instance: the next
//! `run --persist` adopts its pinned maps and links (`bpf_link_update`), so idle
//! WebSocket sessions opened before keep echoing, and what cannot be adopted is refused
//! with the old instance left redirecting. Persisted instances live in the host's bpffs:
//! loaders and control commands enter the namespaces with `nsenter --net=`.

use std::time::{Duration, Instant};

use redirector::{
    dataplane::{maps::Maps, Dataplane},
    reaper::{self, Timeouts},
};
use redirector_common::{
    addr::v4_mapped,
    conntrack::{FIN_CLIENT, FIN_SERVER, STATE_CLOSING, STATE_ESTABLISHED, STATE_SYN_SENT},
    maps::{FlowKey, FlowValue},
};
use redirector_tests::{bins, fixtures::*, format2, releases};
use serde_json::Value;
use testkit::{
    cmd::must,
    netns::{Netns, Topology},
    process::Proc,
};

/// Sessions held across restarts, per port (:80 and :443).
const SESSIONS_PER_PORT: usize = 10;
/// How long each session's client lives at most (ws-client's `--timeout`).
const SESSION_LIMIT: Duration = Duration::from_secs(60);

/// Starts `redirector run --persist` on the server veth (host mount namespace).
fn start_persist(topo: &Topology, args: &[&str]) -> Proc {
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args(["run", "--no-local", "--iface", topo.server_if, "--persist"])
        .args(rewrite_unless_mode(args))
        .args(args);
    let mut loader = Proc::spawn("redirector --persist", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    loader
}

/// Runs `redirector run ARGS` in the server namespace; it must be refused (exit 1) with
/// `needle` in its error.
fn run_refused(topo: &Topology, args: &[&str], needle: &str) {
    let out = must_fail(topo.server.nsenter_cmd(bins::redirector()).args(args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: `{needle}` not in {stderr}"
    );
}

fn must_fail(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().expect("spawn redirector");
    assert!(!out.status.success(), "{cmd:?} must fail");
    out
}

/// Client ports of the sessions: each session from its own, so that a client tuple is
/// never that of two flows at once (to :80 and :443), which releases before the lanes of
/// `FlowKey` did not keep apart.
const FIRST_CLIENT_PORT: u16 = 23_000;

/// Opens the sessions: half through :80 (ws), half through :443 (wss).
fn open_sessions(topo: &Topology) -> Vec<Proc> {
    let mut sessions = Vec::new();
    let mut port = FIRST_CLIENT_PORT;
    for (scheme, server_port) in [("ws", 80), ("wss", 443)] {
        let url = topo.url(scheme, false, server_port);
        for _ in 0..SESSIONS_PER_PORT {
            sessions.push(open_session_from(topo, &url, port, SESSION_LIMIT));
            port += 1;
        }
    }
    sessions
}

/// Exchanges `text` on every session. If one fails, the server side's counters, flows and
/// sockets are printed before the test fails: they tell where the lost packet went.
fn all_echo(topo: &Topology, sessions: &mut [Proc], text: &str) {
    for (index, session) in sessions.iter_mut().enumerate() {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exchange(session, text)));
        if let Err(panic) = result {
            let show = |out: std::process::Output| {
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr)
            };
            let stats = show(ctl_via(Via::Nsenter, &topo.server, &["stats"]));
            let flows = show(ctl_via(Via::Nsenter, &topo.server, &["flows"]));
            let sockets = show(topo.server.cmd("ss").arg("-tan").output().unwrap());
            eprintln!(
                "session {index} failed at `{text}`; the server side:\n{stats}\n{flows}\n{sockets}"
            );
            std::panic::resume_unwind(panic);
        }
    }
}

/// The number in `… adopted N established flows from pid P`.
fn adopted_flows(ready: &str, pid: u32) -> u64 {
    let suffix = format!(" established flows from pid {pid}");
    let head = ready
        .strip_suffix(&suffix)
        .unwrap_or_else(|| panic!("not adopted from {pid}: {ready}"));
    let count = head.rsplit(' ').next().unwrap();
    assert!(head.ends_with(&format!("adopted {count}")), "{ready}");
    count.parse().unwrap()
}

/// A persisted loader stopped by `signal`; the next one adopts its instance with every
/// open session, and the counters continue.
fn restart_keeps_every_flow(tag: &str, signal: i32) {
    let _serial = serial();
    let topo = Topology::new(tag);
    let _echo = start_echo(&topo, &[]);
    let mut first = start_persist(&topo, &[]);
    let _cleanup = DetachOnDrop(&topo.server);
    let first_pid = first.pid();
    let mut sessions = open_sessions(&topo);
    let before = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
    assert_eq!(flows_new(&before, 80), SESSIONS_PER_PORT as u64, "{before}");

    if signal == libc::SIGTERM {
        stop_loader(first);
    } else {
        first.signal(signal);
        let (status, _) = first.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "killed: {status}");
    }
    all_echo(&topo, &mut sessions, "no loader");

    let second = start_persist(&topo, &[]);
    let adopted = adopted_flows(&ready_line(&second), first_pid);
    assert!(adopted >= 2 * SESSIONS_PER_PORT as u64, "{adopted}");
    all_echo(&topo, &mut sessions, "after adoption");
    assert_echo(&topo, &topo.url("ws", false, 80));
    let status = ctl_json_via(Via::Nsenter, &topo.server, &["status"]);
    assert_eq!(status["pid"], second.pid(), "{status}");
    assert_eq!(status["persist"], true, "{status}");
    let flows = ctl_json_via(Via::Nsenter, &topo.server, &["flows", "--port", "443"]);
    assert_eq!(
        flows.as_array().unwrap().len(),
        SESSIONS_PER_PORT,
        "{flows}"
    );
    let after = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
    assert_eq!(flows_new(&after, 80), flows_new(&before, 80) + 1, "{after}");
    assert_eq!(flows_new(&after, 443), flows_new(&before, 443), "{after}");

    stop_loader(second);
    all_echo(&topo, &mut sessions, "after the second loader");
    let out = ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert!(out.contains("redirector detached"), "{out}");
    assert_no_program_loaded();
}

#[test]
fn a_restarted_persisted_loader_adopts_every_open_flow() {
    restart_keeps_every_flow("rs-term", libc::SIGTERM);
}

#[test]
fn a_crashed_persisted_loader_is_adopted_with_every_open_flow() {
    restart_keeps_every_flow("rs-kill", libc::SIGKILL);
}

#[test]
fn adoption_refused_for_another_mode_interfaces_or_format_leaves_it_redirecting() {
    let _serial = serial();
    let topo = Topology::new("rs-refuse");
    let _echo = start_echo(&topo, &[]);
    let loader = start_persist(&topo, &[]);
    let _cleanup = DetachOnDrop(&topo.server);
    let url = topo.url("ws", false, 80);
    let mut sessions = vec![open_session(&topo, &url)];
    stop_loader(loader);
    let iface = topo.server_if;

    // On a veth `auto` chose tc ingress; XDP cannot replace it without a gap.
    run_refused(
        &topo,
        &[
            "run",
            "--no-local",
            "--iface",
            iface,
            "--persist",
            "--mode",
            "xdp",
        ],
        "uses ingress hook tc",
    );
    must(
        topo.server
            .cmd("ip")
            .args(["link", "add", "d0", "type", "veth", "peer", "name", "d1"]),
    );
    must(topo.server.cmd("ip").args(["link", "set", "d0", "up"]));
    run_refused(
        &topo,
        &[
            "run",
            "--no-local",
            "--iface",
            iface,
            "--iface",
            "d0",
            "--persist",
        ],
        "give the same --iface list",
    );
    // State pinned by another format is never reused.
    let netns = must(
        topo.server
            .cmd("stat")
            .args(["-L", "-c", "%i", "/proc/self/ns/net"]),
    );
    let netns = String::from_utf8_lossy(&netns.stdout).trim().to_string();
    let file = format!("/run/redirector/netns-{netns}-{iface}.json");
    let original = std::fs::read_to_string(&file).unwrap();
    let mut older: Value = serde_json::from_str(&original).unwrap();
    older["format"] = 4.into();
    std::fs::write(&file, older.to_string()).unwrap();
    run_refused(
        &topo,
        &["run", "--no-local", "--iface", iface, "--persist"],
        "state format 4",
    );
    std::fs::write(&file, original).unwrap();

    // Nothing was touched: the session and new connections are still redirected.
    all_echo(&topo, &mut sessions, "after the refusals");
    assert_echo(&topo, &url);
    ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert_no_program_loaded();
}

/// Removes a persisted instance on drop: `detach`, else (a format-2 instance, which this
/// version's `detach` does not read) its pin directory and instance file.
struct RemoveOnDrop<'a> {
    ns: &'a Netns,
    iface: &'a str,
}

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if ctl_via(Via::Nsenter, self.ns, &["detach"]).status.success() {
            return;
        }
        let (dir, info) = format2::instance_paths(self.ns, self.iface);
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(info);
    }
}

/// A flow of a client that does not exist (10.99.0.N:4000+N → the server's :80), in
/// `state`, seen now.
fn made_up_flow(n: u8, state: u8) -> (FlowKey, FlowValue) {
    let mut client_addr = [0u8; 16];
    client_addr[10..12].copy_from_slice(&[0xff, 0xff]);
    client_addr[12..].copy_from_slice(&[10, 99, 0, n]);
    let mut server_addr = client_addr;
    server_addr[12..].copy_from_slice(&[10, 99, 1, 1]);
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0);
    let now_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    let key = FlowKey {
        client_addr,
        server_addr,
        client_port_be: (4000 + u16::from(n)).to_be(),
        lane: 0,
    };
    let value = FlowValue {
        orig_port: 80,
        target_port: 8080,
        state,
        fin_flags: 0,
        flags: 0,
        rule_slot: 0,
        _pad2: 0,
        created_ns: now_ns,
        last_seen_ns: now_ns,
    };
    (key, value)
}

/// A persisted loader whose state was made format 2 (see `format2`), with the open
/// sessions, their flows and a made-up established and handshake flow in its FLOWS.
struct Format2Instance {
    topo: Topology,
    sessions: Vec<Proc>,
    established: (FlowKey, FlowValue),
    handshake: (FlowKey, FlowValue),
    flows: usize,
    stats_before: Value,
    echo: Proc,
}

const MIGRATION_SIZE: &str = "4096";

fn format2_instance(tag: &str) -> Format2Instance {
    let topo = Topology::new(tag);
    let echo = start_echo(&topo, &[]);
    let loader = start_persist(&topo, &["--conntrack-size", MIGRATION_SIZE]);
    let sessions = open_sessions(&topo);
    let stats_before = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
    stop_loader(loader);
    let established = made_up_flow(1, STATE_ESTABLISHED);
    let handshake = made_up_flow(2, STATE_SYN_SENT);
    let flows = format2::downgrade(&topo.server, topo.server_if, &[established, handshake]);
    assert!(flows >= 2 * SESSIONS_PER_PORT + 2, "{flows}");
    Format2Instance {
        topo,
        sessions,
        established,
        handshake,
        flows,
        stats_before,
        echo,
    }
}

#[test]
fn an_upgrade_from_format_2_migrates_every_flow_into_the_right_table() {
    let _serial = serial();
    let mut old = format2_instance("rs-mig");
    let topo = &old.topo;
    let _cleanup = RemoveOnDrop {
        ns: &topo.server,
        iface: topo.server_if,
    };
    let (dir, info_path) = format2::instance_paths(&topo.server, topo.server_if);
    let names = format2::pinned_names(&dir);
    assert!(names.contains(&"FLOWS".to_string()), "{names:?}");
    assert!(!names.contains(&"ESTABLISHED".to_string()), "{names:?}");
    all_echo(topo, &mut old.sessions, "format 2 before the upgrade");

    let loader = start_persist(topo, &["--conntrack-size", MIGRATION_SIZE]);
    let ready = ready_line(&loader);
    assert!(ready.contains("from state format 2"), "{ready}");
    all_echo(topo, &mut old.sessions, "after the migration");
    assert_echo(topo, &topo.url("ws", false, 80));

    // The pin directory is format 3's, the instance file too.
    let names = format2::pinned_names(&dir);
    for name in [
        "ALLOW",
        "CONFIG",
        "ESTABLISHED",
        "FLOW_COUNT",
        "HALF_OPEN",
        "RULES",
        "RULE_STATS",
        "STATS",
        "instance",
        "links",
    ] {
        assert!(names.contains(&name.to_string()), "{name}: {names:?}");
    }
    assert!(!names.contains(&"FLOWS".to_string()), "{names:?}");
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    assert_eq!(info["format"], 3, "{info}");
    assert_eq!(info["pid"], loader.pid(), "{info}");

    // Each flow in the table of its state, and the admission count matching.
    let maps = Maps::from_pins(&dir).unwrap();
    let established = maps.established_flows().unwrap();
    let half_open = maps.half_open_flows().unwrap();
    let has = |table: &[(FlowKey, FlowValue)], key: &FlowKey| table.iter().any(|(k, _)| k == key);
    assert!(has(&established, &old.established.0), "{established:?}");
    assert!(!has(&half_open, &old.established.0));
    assert!(has(&half_open, &old.handshake.0), "{half_open:?}");
    assert!(!has(&established, &old.handshake.0));
    assert!(
        established.len() + half_open.len() >= old.flows,
        "{} + {} < {}",
        established.len(),
        half_open.len(),
        old.flows
    );
    assert_eq!(
        maps.established_count().unwrap(),
        established.len() as i64,
        "FLOW_COUNT"
    );
    // The rule counters (RULE_STATS, kept) and the global ones (STATS, copied) continue.
    let after = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
    assert_eq!(
        flows_new(&after, 443),
        flows_new(&old.stats_before, 443),
        "{after}"
    );
    assert!(
        flows_new(&after, 80) > flows_new(&old.stats_before, 80),
        "{after}"
    );
    drop(maps);

    stop_loader(loader);
    all_echo(topo, &mut old.sessions, "after the migrated loader stopped");
    ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert!(!dir.exists());
    drop(old.echo);
    assert_no_program_loaded();
}

#[test]
fn a_refused_migration_leaves_the_old_instance_redirecting() {
    let _serial = serial();
    let mut old = format2_instance("rs-migno");
    let topo = &old.topo;
    let _cleanup = RemoveOnDrop {
        ns: &topo.server,
        iface: topo.server_if,
    };
    let iface = topo.server_if;
    let (dir, info_path) = format2::instance_paths(&topo.server, iface);
    let names = format2::pinned_names(&dir);
    let original = std::fs::read_to_string(&info_path).unwrap();

    // A format this version does not know.
    let mut unknown: Value = serde_json::from_str(&original).unwrap();
    unknown["format"] = 4.into();
    std::fs::write(&info_path, unknown.to_string()).unwrap();
    run_refused(
        topo,
        &["run", "--no-local", "--iface", iface, "--persist"],
        "state format 4",
    );
    std::fs::write(&info_path, &original).unwrap();
    // Format 2, but a migration that fails before the link update: too small a table.
    run_refused(
        topo,
        &[
            "run",
            "--no-local",
            "--iface",
            iface,
            "--persist",
            "--conntrack-size",
            "4",
        ],
        "nothing was changed, it keeps redirecting",
    );

    assert_eq!(format2::pinned_names(&dir), names);
    assert_eq!(std::fs::read_to_string(&info_path).unwrap(), original);
    all_echo(topo, &mut old.sessions, "after the refusals");
    assert_echo(topo, &topo.url("ws", false, 80));
    assert_eq!(
        ctl_via(Via::Nsenter, &topo.server, &["detach"])
            .status
            .code(),
        Some(1),
        "this version does not detach a format-2 instance"
    );

    // It can still be migrated afterwards.
    let loader = start_persist(topo, &["--conntrack-size", MIGRATION_SIZE]);
    all_echo(topo, &mut old.sessions, "after the migration");
    stop_loader(loader);
    ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    drop(old.echo);
    assert_no_program_loaded();
}

/// Loader restarts in [`ten_restarts_under_traffic_lose_no_echo_and_no_connection`].
const RESTARTS: usize = 10;
/// Length of its traffic, seconds: the restarts take a few seconds (a loader loads and
/// verifies its programs at each start); what is left waits for the traffic to end.
const TRAFFIC_SECS: u64 = 40;

/// Starts `wsload ARGS --json` from the client namespace to :80 for [`TRAFFIC_SECS`].
fn start_wsload(topo: &Topology, label: &str, args: &[&str]) -> Proc {
    let mut cmd = topo.client.cmd(bins::wsload());
    cmd.arg(topo.url("ws", false, 80)).args(args).args([
        "--duration",
        &TRAFFIC_SECS.to_string(),
        "--json",
    ]);
    Proc::spawn(label, cmd, false)
}

/// Waits for `wsload` to end and returns its JSON report.
fn wsload_report(mut wsload: Proc) -> Value {
    let (status, lines) = wsload.wait_exit(Duration::from_secs(TRAFFIC_SECS + 30));
    assert!(
        status.success(),
        "{}: {}",
        wsload.label(),
        wsload.stderr_text()
    );
    let line = lines
        .iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{}: no JSON report in {lines:?}", wsload.label()));
    serde_json::from_str(line).unwrap()
}

#[test]
fn ten_restarts_under_traffic_lose_no_echo_and_no_connection() {
    let _serial = serial();
    let topo = Topology::new("rs-ten");
    let _echo = start_echo(&topo, &[]);
    let mut loader = start_persist(&topo, &[]);
    let _cleanup = DetachOnDrop(&topo.server);
    // Long-lived sessions echoing twice a second each, and a loop of short connections
    // (connect, handshake, one echo, close) at 20 per second.
    let started = Instant::now();
    let held = start_wsload(
        &topo,
        "wsload sessions",
        &["--connections", "20", "--message-rate", "2"],
    );
    // The restarts begin once every session is open and the loop has made a connection.
    wait_until("all 20 sessions connected", Duration::from_secs(10), || {
        established(&topo.client, "( dport = :80 )") >= 20
    });
    let churn = start_wsload(
        &topo,
        "wsload churn",
        &["--conn-churn", "--connections", "2", "--connect-rate", "20"],
    );
    wait_until(
        "the first short connection",
        Duration::from_secs(10),
        || {
            let stats = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
            flows_new(&stats, 80) > 20
        },
    );
    for restart in 0..RESTARTS {
        let pid = loader.pid();
        if restart % 2 == 0 {
            stop_loader(loader);
        } else {
            loader.signal(libc::SIGKILL);
            let (status, _) = loader.wait_exit(Duration::from_secs(10));
            assert!(!status.success(), "killed: {status}");
        }
        // A moment with no loader at all: the pinned programs carry the traffic.
        std::thread::sleep(Duration::from_millis(300));
        loader = start_persist(&topo, &[]);
        adopted_flows(&ready_line(&loader), pid);
    }
    // The traffic must have covered every restart, or the test proved nothing.
    assert!(
        started.elapsed() < Duration::from_secs(TRAFFIC_SECS - 1),
        "the restarts outlasted the traffic ({:?})",
        started.elapsed()
    );
    let held = wsload_report(held);
    let churn = wsload_report(churn);
    // The kernel's counters say where a lost packet went (untracked, port mismatch, RST).
    let stats = ctl_ok_via(Via::Nsenter, &topo.server, &["stats"]);
    eprintln!("sessions: {held}\nchurn: {churn}\n{stats}");
    for (name, report) in [("sessions", &held), ("churn", &churn)] {
        assert_eq!(report["errors"], 0, "{name}: {report}");
        assert_eq!(report["connect_errors"], 0, "{name}: {report}");
        assert_eq!(
            report["messages_received"], report["messages_sent"],
            "{name}: {report}"
        );
    }
    assert_eq!(held["connects_ok"], 20, "{held}");
    assert!(held["messages_received"].as_u64().unwrap() > 0, "{held}");
    assert!(churn["connects_ok"].as_u64().unwrap() > 0, "{churn}");

    stop_loader(loader);
    let out = ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert!(out.contains("redirector detached"), "{out}");
    assert_no_program_loaded();
}

/// The client port that [`a_reap_planned_before_a_client_port_was_reused_leaves_the_new_flow`]
/// reuses (outside the ephemeral range, so nothing else picks it).
const REUSED_PORT: u16 = 20_080;

/// A flow from `port` of the topology's client to its server's :80, closed (FIN both ways)
/// just now: what [`reap_closed_now`] removes, and the loader's own reaper only in 10 s.
fn closed_flow(topo: &Topology, port: u16) -> (FlowKey, FlowValue) {
    let now = reaper::monotonic_ns();
    let addr = |text: &str| v4_mapped(text.parse::<std::net::Ipv4Addr>().unwrap().octets());
    let key = FlowKey {
        client_addr: addr(&topo.client_v4),
        server_addr: addr(&topo.server_v4),
        client_port_be: port.to_be(),
        lane: 0,
    };
    let value = FlowValue {
        orig_port: 80,
        target_port: 8080,
        state: STATE_CLOSING,
        fin_flags: FIN_CLIENT | FIN_SERVER,
        flags: 0,
        rule_slot: 0,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    (key, value)
}

/// The reaper's plan a second from now with no grace for closed flows: every closed flow
/// (and nothing live) is expired.
fn reap_closed_now(dp: &Dataplane) -> Vec<redirector_common::reap::ReapEntry> {
    let timeouts = Timeouts {
        closing: Duration::ZERO,
        ..Timeouts::default()
    };
    reaper::expired(dp, &timeouts, reaper::monotonic_ns() + 1_000_000_000).unwrap()
}

/// The reaper's race with port reuse, made deterministic: the reaper finds a closed flow
/// expired, then, before its removal runs, the client opens a new connection from the
/// same port (the kernel replaces the closed entry with the new flow). The removal must
/// leave the new flow, which keeps echoing; an entry still expired is removed. (A
/// removal by key, as the reaper did before, reset that connection at its next message.)
#[test]
fn a_reap_planned_before_a_client_port_was_reused_leaves_the_new_flow() {
    let _serial = serial();
    let topo = Topology::new("rs-reap");
    let _cleanup = DetachOnDrop(&topo.server);
    let _echo = start_echo(&topo, &[]);
    let loader = start_persist(&topo, &[]);
    let (dir, info_path) = format2::instance_paths(&topo.server, topo.server_if);
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    let size = u32::try_from(info["conntrack_size"].as_u64().unwrap()).unwrap();
    // This test's own copy of the programs on the instance's maps: it plays the reaper.
    let mut dp = Dataplane::load_pinned(size, &dir).unwrap();

    let (key, closed) = closed_flow(&topo, REUSED_PORT);
    dp.insert_flow(key, closed).unwrap();
    let plan = reap_closed_now(&dp);
    assert!(plan.iter().any(|entry| entry.key == key), "{plan:?}");

    // The port is reused before the removal runs.
    let url = topo.url("ws", false, 80);
    let mut cmd = topo.client.cmd(bins::ws_client());
    cmd.args(["--url", &url, "--interactive", "--timeout", "60"])
        .args(["--local-port", &REUSED_PORT.to_string()]);
    let mut session = Proc::spawn("ws-client (reused port)", cmd, true);
    session.wait_line("connected", Duration::from_secs(10));
    exchange(&mut session, "before the reap");
    let live = dp.maps().established_flows().unwrap();
    let (_, flow) = live
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no flow from port {REUSED_PORT}: {live:?}"));
    assert_ne!(flow.created_ns, closed.created_ns, "{flow:?}");

    let removed = reaper::remove_expired(&mut dp, &plan).unwrap();
    assert_eq!(removed, 0, "the new flow was removed");
    for text in ["after the reap", "still here"] {
        exchange(&mut session, text);
    }

    // A flow still as the reaper saw it is removed; the live one stays.
    let (stale, value) = closed_flow(&topo, REUSED_PORT + 1);
    dp.insert_flow(stale, value).unwrap();
    let plan = reap_closed_now(&dp);
    assert_eq!(
        plan.iter().map(|entry| entry.key).collect::<Vec<_>>(),
        vec![stale],
        "{plan:?}"
    );
    assert_eq!(reaper::remove_expired(&mut dp, &plan).unwrap(), 1);
    let left = dp.maps().flows().unwrap();
    assert!(left.iter().all(|(k, _)| *k != stale), "{left:?}");
    assert!(left.iter().any(|(k, _)| *k == key), "{left:?}");
    exchange(&mut session, "after the second reap");
    close_session(session);

    drop(dp);
    stop_loader(loader);
    ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert_no_program_loaded();
}

/// An upgrade from the real previous release of `format` (built from its own commit,
/// `redirector_tests::releases`): that binary runs `run --persist` with idle ws and wss
/// sessions and stops; today's loader adopts (format 3) or migrates (format 2) its state.
/// Every session keeps echoing, with no loader, after the upgrade and after a `flush`
/// (the entries heal under today's programs), and the rule counters continue.
fn upgrade_from_the_real_release(format: u32, tag: &str) {
    let release = releases::release(format);
    let old_binary = releases::binary(&release);
    let _serial = serial();
    let topo = Topology::new(tag);
    let _echo = start_echo(&topo, &[]);
    let mut cmd = topo.server.nsenter_cmd(&old_binary);
    cmd.args([
        "run",
        "--iface",
        topo.server_if,
        "--persist",
        "--mode",
        "tc",
    ])
    .args(release.run_args);
    let mut old = Proc::spawn(&format!("redirector {}", release.commit), cmd, false);
    old.wait_line("redirector ready", Duration::from_secs(30));
    // Declared after `old`, so it runs first: a failed upgrade leaves an instance of the
    // old format, which only the old binary detaches.
    let _cleanup = DetachWithRelease {
        ns: &topo.server,
        binary: &old_binary,
    };
    let old_pid = old.pid();
    let mut sessions = open_sessions(&topo);
    all_echo(&topo, &mut sessions, "under the previous release");
    stop_loader(old);
    all_echo(&topo, &mut sessions, "no loader");

    let loader = start_persist(&topo, &["--mode", "tc"]);
    let ready = ready_line(&loader);
    if format == 3 {
        let adopted = adopted_flows(&ready, old_pid);
        assert!(adopted >= 2 * SESSIONS_PER_PORT as u64, "{ready}");
    } else {
        assert!(
            ready.contains(&format!("from state format {format}")),
            "{ready}"
        );
    }
    all_echo(&topo, &mut sessions, "after the upgrade");
    assert_echo(&topo, &topo.url("ws", false, 80));
    let stats = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
    assert!(
        flows_new(&stats, 80) > SESSIONS_PER_PORT as u64,
        "rule counters continue: {stats}"
    );
    assert_eq!(flows_new(&stats, 443), SESSIONS_PER_PORT as u64, "{stats}");
    // Today's programs on the old state: forgotten entries of live connections heal.
    let flushed = ctl_ok_via(Via::Nsenter, &topo.server, &["flush"]);
    assert!(flushed.starts_with("flushed "), "{flushed}");
    all_echo(&topo, &mut sessions, "after a flush");

    stop_loader(loader);
    all_echo(&topo, &mut sessions, "after the upgraded loader stopped");
    for session in sessions {
        close_session(session);
    }
    let out = ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert!(out.contains("redirector detached"), "{out}");
    assert_no_program_loaded();
}

/// Detaches what a test left in `ns`: with today's binary (after killing a running loader),
/// then with the release's, for an instance of its format that today's refuses.
struct DetachWithRelease<'a> {
    ns: &'a Netns,
    binary: &'a std::path::Path,
}

impl Drop for DetachWithRelease<'_> {
    fn drop(&mut self) {
        drop(DetachOnDrop(self.ns));
        let _ = self.ns.nsenter_cmd(self.binary).arg("detach").output();
    }
}

#[test]
fn an_upgrade_from_the_real_format_2_release_keeps_every_connection() {
    upgrade_from_the_real_release(2, "rs-rel2");
}

#[test]
fn an_upgrade_from_the_real_previous_format_3_release_keeps_every_connection() {
    upgrade_from_the_real_release(3, "rs-rel3");
}
