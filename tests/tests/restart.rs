//! Restarting, upgrading and crashing the loader of a `run --persist` instance: the next
//! `run --persist` adopts its pinned maps and links (`bpf_link_update`), so idle
//! WebSocket sessions opened before keep echoing, and what cannot be adopted is refused
//! with the old instance left redirecting. Persisted instances live in the host's bpffs:
//! loaders and control commands enter the namespaces with `nsenter --net=`.

use std::time::Duration;

use redirector_tests::{bins, fixtures::*};
use serde_json::Value;
use testkit::{
    cmd::must,
    netns::{Netns, Topology},
    process::Proc,
};

/// Sessions held across restarts, per port (:80 and :443).
const SESSIONS_PER_PORT: usize = 10;

/// Runs `redirector detach` in `ns` on drop, so a failing test leaves nothing pinned.
struct DetachOnDrop<'a>(&'a Netns);

impl Drop for DetachOnDrop<'_> {
    fn drop(&mut self) {
        let _ = ctl_via(Via::Nsenter, self.0, &["detach"]);
    }
}

/// Starts `redirector run --persist` on the server veth (host mount namespace).
fn start_persist(topo: &Topology, args: &[&str]) -> Proc {
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args(["run", "--iface", topo.server_if, "--persist"])
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

/// Opens the sessions: half through :80 (ws), half through :443 (wss).
fn open_sessions(topo: &Topology) -> Vec<Proc> {
    let mut sessions = Vec::new();
    for (scheme, port) in [("ws", 80), ("wss", 443)] {
        let url = topo.url(scheme, false, port);
        for _ in 0..SESSIONS_PER_PORT {
            sessions.push(open_session(topo, &url));
        }
    }
    sessions
}

/// Every session echoes `text`.
fn all_echo(sessions: &mut [Proc], text: &str) {
    for session in sessions {
        exchange(session, text);
    }
}

/// The `flows_new` counter of the rule on `port` in `redirector stats --json`.
fn flows_new(stats: &Value, port: u64) -> u64 {
    stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from_port"] == port)
        .unwrap_or_else(|| panic!("no rule for {port} in {stats}"))["flows_new"]
        .as_u64()
        .unwrap()
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
    all_echo(&mut sessions, "no loader");

    let second = start_persist(&topo, &[]);
    let adopted = adopted_flows(&ready_line(&second), first_pid);
    assert!(adopted >= 2 * SESSIONS_PER_PORT as u64, "{adopted}");
    all_echo(&mut sessions, "after adoption");
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
    all_echo(&mut sessions, "after the second loader");
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
        &["run", "--iface", iface, "--persist", "--mode", "xdp"],
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
        &["run", "--iface", iface, "--iface", "d0", "--persist"],
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
    older["format"] = 2.into();
    std::fs::write(&file, older.to_string()).unwrap();
    run_refused(
        &topo,
        &["run", "--iface", iface, "--persist"],
        "state format 2",
    );
    std::fs::write(&file, original).unwrap();

    // Nothing was touched: the session and new connections are still redirected.
    all_echo(&mut sessions, "after the refusals");
    assert_echo(&topo, &url);
    ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert_no_program_loaded();
}
