//! Runtime control of a running loader from another process of the same network
//! namespace (`ip netns exec NS redirector status|stats|flows|enable|disable|add|remove|
//! flush`), with the real loader, real eBPF programs and real WebSocket traffic.

use std::{io::Write, path::Path, time::Duration};

use redirector_tests::{bins, fixtures::*};
use serde_json::Value;
use testkit::{
    cmd::must,
    netns::{Netns, Topology},
    process::Proc,
};

/// Asserts a control command fails with `needle` in its error.
fn ctl_fails(ns: &Netns, args: &[&str], needle: &str) {
    let out = ctl(ns, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: `{needle}` not in {stderr}"
    );
}

/// The entry of `rules` (status or stats JSON) for FROM port `port`.
fn rule(json: &Value, port: u64) -> &Value {
    json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from_port"] == port)
        .unwrap_or_else(|| panic!("no rule {port} in {json}"))
}

fn has_rule(json: &Value, port: u64) -> bool {
    json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["from_port"] == port)
}

#[test]
fn commands_fail_clearly_when_nothing_runs() {
    let ns = Netns::new(&format!("rdrt-ctl-none-{}", std::process::id()));
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["stats"],
        &["flows"],
        &["enable", "443"],
        &["disable", "443"],
        &["add", "81:8081"],
        &["remove", "80"],
        &["flush"],
        &["allow", "10.0.0.0/8"],
        &["disallow", "10.0.0.0/8"],
    ] {
        ctl_fails(&ns, args, "no redirector running in this network namespace");
    }
    let out = ns
        .cmd_unprivileged(bins::redirector())
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("insufficient privileges"));
}

#[test]
fn disable_stops_new_connections_but_keeps_open_ones() {
    let _serial = serial();
    let topo = Topology::new("ctl-dis");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &[]);
    let wss = topo.url("wss", false, 443);

    let mut open = open_session(&topo, &wss);
    ctl_ok(&topo.server, &["disable", "443"]);
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(rule(&status, 443)["enabled"], false, "{status}");
    assert_eq!(rule(&status, 80)["enabled"], true, "{status}");

    // Nothing listens on 443: a new connection that is not redirected fails...
    assert_refused(&topo, &wss);
    // ...while the open one keeps being rewritten through its conntrack entry.
    exchange(&mut open, "while disabled");
    assert_echo(&topo, &topo.url("ws", false, 80)); // other rules unaffected

    ctl_ok(&topo.server, &["enable", "443"]);
    assert_echo(&topo, &wss);
    exchange(&mut open, "after enable");
    close_session(open);

    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(rule(&stats, 443)["flows_new"], 2, "{stats}");
    assert!(
        stats["counters"]["pass_rule_disabled"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    ctl_fails(&topo.server, &["disable", "1234"], "no rule for port 1234");

    stop_loader(loader);
    ctl_fails(
        &topo.server,
        &["status"],
        "no redirector running in this network namespace",
    );
    assert_no_program_loaded();
}

#[test]
fn allow_and_disallow_edit_the_source_filter_of_new_flows_only() {
    let _serial = serial();
    let topo = Topology::new("ctl-allow");
    let _echo = start_echo(&topo, &[]);
    // Only a documentation prefix is allowed: the client's SYN to 80 is not redirected
    // and nothing listens on 80.
    let loader = start_loader(&topo, &["--allow", "192.0.2.0/24"]);
    let url = topo.url("ws", false, 80);
    let client = format!("{}/32", topo.client_v4);
    assert_refused(&topo, &url);
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["sources"]["filtered"], true, "{status}");
    assert_eq!(
        status["sources"]["allow"],
        serde_json::json!(["192.0.2.0/24"])
    );

    let out = ctl_ok(&topo.server, &["allow", &client]);
    assert!(out.contains("new connections are redirected"), "{out}");
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(
        status["sources"]["allow"],
        serde_json::json!([client.as_str(), "192.0.2.0/24"]),
        "{status}"
    );
    assert!(ctl_ok(&topo.server, &["status"]).contains(&format!("sources: {client} 192.0.2.0/24")));
    assert_echo(&topo, &url);
    let mut open = open_session(&topo, &url);
    ctl_fails(
        &topo.server,
        &["allow", &client],
        "already in the allow list",
    );

    ctl_ok(&topo.server, &["disallow", &client]);
    assert_refused(&topo, &url);
    exchange(&mut open, "after disallow"); // its flow is tracked: the filter is for SYNs
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(
        status["sources"]["allow"],
        serde_json::json!(["192.0.2.0/24"])
    );
    ctl_fails(
        &topo.server,
        &["disallow", &client],
        "is not in the allow list",
    );
    // A covering prefix is not the listed one: only exact prefixes are removed.
    ctl_fails(
        &topo.server,
        &["disallow", "192.0.0.0/16"],
        "is not in the allow list",
    );
    ctl_fails(
        &topo.server,
        &["allow", "10.0.0.0/33"],
        "invalid --allow prefix",
    );

    // The last prefix gone, no source is allowed (not every source).
    let out = ctl_ok(&topo.server, &["disallow", "192.0.2.0/24"]);
    assert!(out.contains("the allow list is empty"), "{out}");
    assert_refused(&topo, &url);
    exchange(&mut open, "with an empty allow list");
    close_session(open);
    let stats = ctl_json(&topo.server, &["stats"]);
    assert!(
        stats["counters"]["pass_source_denied"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    assert_eq!(rule(&stats, 80)["flows_new"], 2, "{stats}");
    stop_loader(loader);
}

#[test]
fn allow_turns_the_source_filter_on() {
    let _serial = serial();
    let topo = Topology::new("ctl-allow-on");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--mode", "tc"]);
    let url = topo.url("ws", false, 80);
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["sources"]["filtered"], false, "{status}");
    assert!(ctl_ok(&topo.server, &["status"]).contains("sources: all"));
    assert_echo(&topo, &url);
    ctl_fails(
        &topo.server,
        &["disallow", "10.0.0.0/8"],
        "is not in the allow list",
    );

    let out = ctl_ok(&topo.server, &["allow", "192.0.2.0/24"]);
    assert!(out.contains("source filter turned on"), "{out}");
    assert_refused(&topo, &url);
    ctl_ok(&topo.server, &["allow", "0.0.0.0/0"]);
    assert_echo(&topo, &url);
    stop_loader(loader);
}

#[test]
fn status_stats_and_flows_describe_live_traffic_and_flushed_flows_heal() {
    let _serial = serial();
    let topo = Topology::new("ctl-obs");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(
        &topo,
        &["--mode", "xdp-generic", "--conntrack-size", "1024"],
    );

    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["mode"], "xdp-generic", "{status}");
    assert_eq!(status["interfaces"][0]["name"], topo.server_if, "{status}");
    assert_eq!(status["interfaces"][0]["ingress_hook"], "xdp-generic");
    assert_eq!(status["conntrack"]["size"], 1024);
    assert_eq!(status["conntrack"]["tracked"], 0);
    assert_eq!(rule(&status, 80)["to_port"], 8080);
    assert_eq!(rule(&status, 443)["to_port"], 8443);

    let mut open = open_session(&topo, &topo.url("ws", false, 80));
    let flows = ctl_json(&topo.server, &["flows"]);
    let flows = flows.as_array().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let flow = &flows[0];
    assert!(
        flow["client"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", topo.client_v4)),
        "{flow}"
    );
    assert_eq!(flow["server_addr"], topo.server_v4.as_str());
    assert_eq!(flow["orig_port"], 80);
    assert_eq!(flow["target_port"], 8080);
    assert_eq!(flow["state"], "established");
    assert!(flow["age_secs"].as_u64().unwrap() < 60);
    let none = ctl_json(&topo.server, &["flows", "--port", "443"]);
    assert_eq!(none.as_array().unwrap().len(), 0, "{none}");

    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["conntrack"]["tracked"], 1, "{status}");
    let stats = ctl_json(&topo.server, &["stats"]);
    let r80 = rule(&stats, 80);
    assert_eq!(r80["flows_new"], 1, "{stats}");
    assert!(r80["packets_in"].as_u64().unwrap() > 0, "{stats}");
    assert!(r80["bytes_out"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(rule(&stats, 443)["flows_new"], 0);
    assert!(stats["counters"]["flow_created"].as_u64().unwrap() >= 1);
    assert_eq!(stats["counters"]["rewrite_failed"], 0);
    assert_eq!(stats["flows_tracked"], 1);
    let text = ctl_ok(&topo.server, &["stats"]);
    assert!(text.contains("rule 80->8080: flows_new=1"), "{text}");

    // Nothing to flush on 443; the 80 flow is forgotten, and the connection, which the
    // kernel still holds, gets it back at its next packet (a heal, not a reset).
    assert!(ctl_ok(&topo.server, &["flush", "--port", "443"]).contains("flushed 0 flows"));
    assert!(ctl_ok(&topo.server, &["flush", "--port", "80"]).contains("flushed 1 flows"));
    let flows = ctl_json(&topo.server, &["flows"]);
    assert_eq!(flows.as_array().unwrap().len(), 0, "{flows}");
    exchange(&mut open, "after flush");
    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(stats["counters"]["flow_healed_ingress"], 1, "{stats}");
    assert_eq!(stats["flows_tracked"], 1, "{stats}");
    close_session(open);
    assert_echo(&topo, &topo.url("ws", false, 80)); // new flows are tracked as before
    stop_loader(loader);
}

#[test]
fn rules_are_added_and_removed_at_runtime() {
    let _serial = serial();
    let topo = Topology::new("ctl-rules");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &[]);
    let url = topo.url("ws", false, 9000);
    assert_refused(&topo, &url);

    let out = ctl_ok(&topo.server, &["add", "9000:8080"]);
    assert!(out.contains("rule 9000->8080 added (slot 2)"), "{out}");
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(rule(&status, 9000)["to_port"], 8080);
    assert_eq!(rule(&status, 9000)["enabled"], true);
    assert_echo(&topo, &url);
    ctl_fails(&topo.server, &["add", "9000:8443"], "already has a rule");
    ctl_fails(&topo.server, &["add", "9001:9001"], "same port");

    let mut open = open_session(&topo, &url);
    ctl_ok(&topo.server, &["remove", "9000"]);
    let status = ctl_json(&topo.server, &["status"]);
    assert!(!has_rule(&status, 9000), "{status}");
    assert_refused(&topo, &url);
    exchange(&mut open, "after remove"); // its flow is still tracked
    close_session(open);
    ctl_fails(&topo.server, &["remove", "9000"], "no rule for port 9000");

    // The removed rule's slot still counts its surviving flows: it is not handed out.
    let out = ctl_ok(&topo.server, &["add", "9001:8080"]);
    assert!(out.contains("(slot 3)"), "{out}");
    assert_echo(&topo, &topo.url("ws", false, 9001));
    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(rule(&stats, 9001)["flows_new"], 1, "{stats}");
    stop_loader(loader);
}

#[test]
fn instance_file_and_pins_exist_only_while_running_and_other_versions_are_refused() {
    let _serial = serial();
    let topo = Topology::new("ctl-pins");
    let loader = start_loader(&topo, &["--mode", "tc"]);
    let status = ctl_json(&topo.server, &["status"]);
    let pid = status["pid"].as_u64().unwrap();
    // What the loader sees in its own mount namespace, through /proc/PID/root.
    let netns = must(
        topo.server
            .cmd("stat")
            .args(["-L", "-c", "%i", "/proc/self/ns/net"]),
    );
    let netns = String::from_utf8_lossy(&netns.stdout).trim().to_string();
    let dir = format!(
        "/proc/{pid}/root/sys/fs/bpf/redirector/netns-{netns}/{}",
        topo.server_if
    );
    for pin in [
        "RULES",
        "HALF_OPEN",
        "ESTABLISHED",
        "FLOW_COUNT",
        "ALLOW",
        "CONFIG",
        "STATS",
        "RULE_STATS",
        "instance",
    ] {
        assert!(Path::new(&dir).join(pin).exists(), "{dir}/{pin} missing");
    }
    let file = format!("/run/redirector/netns-{netns}-{}.json", topo.server_if);
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(info["pid"], pid);
    assert_eq!(info["mode"], "tc");
    assert_eq!(info["rules"][1]["from_port"], 443);
    assert_eq!(info["rules"][1]["slot"], 1);

    // State written by another redirector version is refused clearly, not misread.
    let original = std::fs::read_to_string(&file).unwrap();
    let mut older = info.clone();
    older["format"] = 1.into();
    older["version"] = "0.0.1".into();
    std::fs::write(&file, older.to_string()).unwrap();
    ctl_fails(
        &topo.server,
        &["status"],
        "written by redirector 0.0.1 (state format 1)",
    );
    ctl_fails(
        &topo.server,
        &["disable", "443"],
        "use the binary of that version",
    );
    std::fs::write(&file, original).unwrap();
    ctl_ok(&topo.server, &["status"]);

    stop_loader(loader);
    assert!(!Path::new(&file).exists(), "{file} left behind");
    assert_no_program_loaded();

    // A file of another version whose loader is gone (SIGKILL leaves it; namespace inodes
    // are reused) is stale: it neither blocks a new loader nor reads as a running one.
    std::fs::write(&file, older.to_string()).unwrap();
    ctl_fails(
        &topo.server,
        &["status"],
        "no redirector running in this network namespace",
    );
    let loader = start_loader(&topo, &["--mode", "tc"]);
    ctl_ok(&topo.server, &["status"]);
    stop_loader(loader);
    assert!(!Path::new(&file).exists(), "{file} left behind");
    assert_no_program_loaded();
}

#[test]
fn several_loaders_in_one_namespace_are_told_apart_by_iface() {
    let _serial = serial();
    let ns = Netns::new(&format!("rdrt-ctl-two-{}", std::process::id()));
    for (a, b) in [("v0", "v1"), ("v2", "v3")] {
        must(
            ns.cmd("ip")
                .args(["link", "add", a, "type", "veth", "peer", "name", b]),
        );
        must(ns.cmd("ip").args(["link", "set", a, "up"]));
    }
    let spawn = |iface: &str, rule: &str| {
        let mut cmd = ns.cmd(bins::redirector());
        cmd.args([
            "run",
            "--no-local",
            "--iface",
            iface,
            "--mode",
            "tc",
            "--redirect",
            rule,
        ]);
        let mut loader = Proc::spawn(iface, cmd, false);
        loader.wait_line("redirector ready", Duration::from_secs(30));
        loader
    };
    let first = spawn("v0", "80:8080");
    let second = spawn("v2", "81:8081");
    ctl_fails(&ns, &["status"], "choose one with --iface");
    ctl_fails(&ns, &["disable", "80"], "choose one with --iface");
    let v0 = ctl_json(&ns, &["status", "--iface", "v0"]);
    assert!(has_rule(&v0, 80) && !has_rule(&v0, 81), "{v0}");
    let v2 = ctl_json(&ns, &["status", "--iface", "v2"]);
    assert!(has_rule(&v2, 81) && !has_rule(&v2, 80), "{v2}");
    ctl_fails(
        &ns,
        &["disable", "81", "--iface", "v0"],
        "no rule for port 81",
    );
    ctl_ok(&ns, &["disable", "81", "--iface", "v2"]);
    let v2 = ctl_json(&ns, &["status", "--iface", "v2"]);
    assert_eq!(rule(&v2, 81)["enabled"], false, "{v2}");
    ctl_fails(
        &ns,
        &["status", "--iface", "v1"],
        "no redirector running on v1 in this network namespace",
    );
    stop_loader(second);
    // One left: no --iface needed any more.
    let only = ctl_json(&ns, &["status"]);
    assert_eq!(only["interfaces"][0]["name"], "v0", "{only}");
    stop_loader(first);
    assert_no_program_loaded();
}

/// Runs `redirector ARGS` with `nsenter --net=` into `ns` (host mount namespace).
fn nsenter_ctl(ns: &Netns, args: &[&str]) -> std::process::Output {
    ctl_via(Via::Nsenter, ns, args)
}

fn nsenter_ok(ns: &Netns, args: &[&str]) -> String {
    ctl_ok_via(Via::Nsenter, ns, args)
}

fn nsenter_json(ns: &Netns, args: &[&str]) -> Value {
    ctl_json_via(Via::Nsenter, ns, args)
}

#[test]
fn persist_needs_a_bpffs_that_outlives_the_loader() {
    let _serial = serial();
    let topo = Topology::new("ctl-persist-no");
    // `ip netns exec` gives the loader a private /sys: its bpffs would die with it.
    let out = ctl(
        &topo.server,
        &["run", "--no-local", "--iface", topo.server_if, "--persist"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nsenter --net=/run/netns/NS"), "{stderr}");
    assert_no_program_loaded();
}

#[test]
fn persist_keeps_the_programs_attached_without_a_loader_until_detach() {
    let _serial = serial();
    let topo = Topology::new("ctl-persist");
    let _echo = start_echo(&topo, &[]);
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    cmd.args(["run", "--no-local", "--iface", topo.server_if, "--persist"])
        .args(rewrite_unless_mode(&[]));
    let mut loader = Proc::spawn("redirector --persist", cmd, false);
    let _cleanup = DetachOnDrop(&topo.server);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    let url = topo.url("ws", false, 80);
    // While the loader runs, `ip netns exec` reaches the pins through its root as usual.
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["persist"], true, "{status}");
    assert_eq!(status["loader_running"], true, "{status}");
    ctl_fails(&topo.server, &["detach"], "stop it (SIGTERM) first");
    let mut open = open_session(&topo, &url);

    let lines = stop_loader(loader);
    assert!(
        lines.iter().any(|l| l.contains("programs left attached")),
        "{lines:?}"
    );
    // No loader: the pinned links keep redirecting, new and open connections alike.
    exchange(&mut open, "after the loader exited");
    assert_echo(&topo, &url);
    // Its pins are in the host's bpffs, which `ip netns exec` does not see: say how.
    ctl_fails(&topo.server, &["status"], "nsenter --net=");
    let status = nsenter_json(&topo.server, &["status"]);
    assert_eq!(status["loader_running"], false, "{status}");
    assert_eq!(status["persist"], true, "{status}");
    assert!(nsenter_ok(&topo.server, &["status"]).contains("loader (pid"));
    // Control commands work on the pins alone.
    nsenter_ok(&topo.server, &["disable", "80"]);
    assert_refused(&topo, &url);
    exchange(&mut open, "while disabled");
    nsenter_ok(&topo.server, &["enable", "80"]);
    assert_echo(&topo, &url);
    let stats = nsenter_json(&topo.server, &["stats"]);
    assert_eq!(rule(&stats, 80)["flows_new"], 3, "{stats}");
    // No reaper: the two closed flows stay tracked (LRU eviction or flush removes them).
    let flows = nsenter_json(&topo.server, &["flows", "--port", "80"]);
    assert_eq!(flows.as_array().unwrap().len(), 3, "{flows}");

    // A new loader adopts it (tests/tests/restart.rs), but not in another mode.
    let mut cmd = topo.server.nsenter_cmd(bins::redirector());
    let out = cmd
        .args([
            "run",
            "--no-local",
            "--iface",
            topo.server_if,
            "--mode",
            "xdp",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redirector detach --iface veth-s"),
        "{stderr}"
    );
    // When `ip netns exec` cannot see its pins, it says how to reach them; another
    // interface is not blocked.
    let out = ctl(
        &topo.server,
        &["run", "--no-local", "--iface", topo.server_if],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nsenter --net="), "{stderr}");
    must(
        topo.server
            .cmd("ip")
            .args(["link", "add", "d0", "type", "veth", "peer", "name", "d1"]),
    );
    must(topo.server.cmd("ip").args(["link", "set", "d0", "up"]));
    let mut cmd = topo.server.cmd(bins::redirector());
    cmd.args(["run", "--no-local", "--iface", "d0", "--mode", "tc"]);
    let mut other = Proc::spawn("redirector d0", cmd, false);
    other.wait_line("redirector ready", Duration::from_secs(30));
    stop_loader(other);

    let out = nsenter_ok(&topo.server, &["detach"]);
    assert!(out.contains("redirector detached from veth-s"), "{out}");
    assert_no_program_loaded();
    assert_refused(&topo, &url);
    let _ = writeln!(open.stdin(), "after detach");
    let (status, _) = open.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "not rewritten any more");
    for ctl in [ctl, nsenter_ctl] {
        let out = ctl(&topo.server, &["status"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no redirector running in this network namespace"),
            "{stderr}"
        );
    }
    let out = nsenter_ctl(&topo.server, &["detach"]);
    assert!(!out.status.success(), "nothing left to detach");
}
