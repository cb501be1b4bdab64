//! dist/redirector.service: its `systemd-analyze security` exposure stays at most 3.5, and
//! the loader attaches and redirects a real WebSocket connection with no more
//! capabilities than the unit's `CapabilityBoundingSet=` (applied with `setpriv` in a
//! test namespace), its sniffing proxy's child dropping to `nobody` from there.

use std::process::Command;

use redirector_tests::{bins, fixtures::*, unit::Unit};
use testkit::{netns::Topology, process::Proc};

/// Highest exposure accepted (systemd rates 0 to 10, lower is better).
const MAX_EXPOSURE: f64 = 3.5;

#[test]
fn the_unit_is_rated_at_most_3_5_by_systemd_analyze() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(Unit::path())
        .output()
        .expect("running systemd-analyze (installed by `cargo xtask setup`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for redirector.service:"))
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    assert!(score <= MAX_EXPOSURE, "{line}\n{stdout}");
}

/// The loader started as root with the unit's bounding set (so its effective set is
/// exactly that set, as under systemd) and `no_new_privs`, with bpffs already mounted
/// (systemd mounts it at boot; the unit does not let the loader mount): it attaches, a
/// WebSocket connection to port 443 reaches the server on 8443, and its sniffing proxy
/// on port 80 (which drops to `nobody` in a child) relays one to 8080.
#[test]
fn the_loader_redirects_with_only_the_units_capabilities() {
    let _serial = serial();
    let topo = Topology::new("unitcaps");
    let _echo = start_echo(&topo, &[]);
    let unit = Unit::shipped();
    let mut cmd = topo.server.cmd("sh");
    cmd.args([
        "-c",
        "mount -t bpf bpf /sys/fs/bpf && exec \"$@\"",
        "sh",
        "setpriv",
    ])
    .args(unit.setpriv_args())
    .arg(bins::redirector())
    .args(["run", "--no-local", "--iface", topo.server_if])
    .args(["--redirect", "443:8443", "--sniff-listen", "0.0.0.0:80"])
    .args([
        "--sniff-websocket",
        "127.0.0.1:8080",
        "--sniff-http",
        "127.0.0.1:8000",
    ]);
    let mut loader = Proc::spawn("redirector (unit capabilities)", cmd, false);
    loader.wait_line("redirector ready", std::time::Duration::from_secs(30));
    let expected = unit.bounding_mask();
    let status = std::fs::read_to_string(format!("/proc/{}/status", loader.pid())).unwrap();
    for field in ["CapEff", "CapBnd"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap()
            .trim();
        assert_eq!(value, format!("{expected:016x}"), "{field}: {status}");
    }
    for v6 in [false, true] {
        assert_echo(&topo, &topo.url("wss", v6, 443));
    }
    // The proxy listens on 0.0.0.0:80 (IPv4 only).
    assert_echo(&topo, &topo.url("ws", false, 80));
    let lines = stop_loader(loader);
    assert!(
        lines.iter().any(|l| l == "sniff counter websocket=1"),
        "{lines:?}"
    );
}

/// `systemctl restart` after a NIC reset: the unit's loader (its capabilities, `--persist`)
/// stopped, the server's interface deleted and re-created, the loader started again. It
/// adopts the severed instance (no crash loop) and the connection held across keeps
/// echoing.
#[test]
fn a_restart_after_the_interface_was_recreated_adopts_every_connection() {
    let _serial = serial();
    let topo = Topology::new("unitflap");
    let _detach = DetachOnDrop(&topo.server);
    let _echo = start_echo(&topo, &[]);
    let unit = Unit::shipped();
    let start = || {
        let mut cmd = topo.server.nsenter_cmd("setpriv");
        cmd.args(unit.setpriv_args()).arg(bins::redirector()).args([
            "run",
            "--no-local",
            "--iface",
            topo.server_if,
            "--persist",
        ]);
        let mut loader = Proc::spawn("redirector (unit, persisted)", cmd, false);
        loader.wait_line("redirector ready", std::time::Duration::from_secs(30));
        loader
    };
    let first = start();
    let mut session = open_session(&topo, &topo.url("ws", false, 80));
    // Idle: nothing of the opening left in flight while no program is attached.
    std::thread::sleep(std::time::Duration::from_secs(1));
    stop_loader(first);
    topo.delete_link();
    topo.restore_link();
    let second = start();
    let ready = ready_line(&second);
    assert!(ready.contains("adopted 1 established flows"), "{ready}");
    exchange(&mut session, "after the flap");
    assert_echo(&topo, &topo.url("ws", false, 80));
    close_session(session);
    stop_loader(second);
}
