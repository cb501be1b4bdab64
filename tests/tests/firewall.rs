//! A host firewall that accepts only 80/443 and the redirect's packet mark (`--mark`):
//! INPUT sees redirected packets with their new port (8080/8443), so without the mark
//! they would be dropped; with it, redirected connections work while direct connections
//! to 8080 stay closed.

use redirector_tests::fixtures::*;
use testkit::netns::Topology;

/// The mark the tests ask for, and the nftables expression that accepts it.
const MARK: &str = "0x42/0xff";

#[test]
fn marked_redirects_pass_an_input_policy_that_drops_8080() {
    let _serial = serial();
    let topo = Topology::new("fw");
    let _echo = start_echo(&topo, &[]);
    install_input_firewall(&topo.server, "rdrtest_fw");

    // Without --mark the firewall drops the redirected packets (their port is 8080 now):
    // this is what the mark is for, and it shows the policy really drops.
    let loader = start_loader(&topo, &["--mode", "tc"]);
    assert_refused(&topo, &topo.url("ws", false, 80));
    stop_loader(loader);

    let loader = start_loader(&topo, &["--mark", MARK]);
    let ready = ready_line(&loader);
    assert!(ready.contains("(tc)"), "--mark takes TC ingress: {ready}");
    assert!(ready.contains(" mark 0x42/0xff"), "{ready}");
    for v6 in [false, true] {
        assert_echo(&topo, &topo.url("ws", v6, 80));
        assert_echo(&topo, &topo.url("wss", v6, 443));
        // Direct connections to the servers' port carry no mark: dropped.
        assert_refused(&topo, &topo.url("ws", v6, 8080));
    }
    stop_loader(loader);
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}

#[test]
fn mark_with_an_xdp_mode_is_refused() {
    let _serial = serial();
    let topo = Topology::new("fwx");
    let out = must_fail(
        topo.server
            .cmd(redirector_tests::bins::redirector())
            .args([
                "run",
                "--no-local",
                "--iface",
                topo.server_if,
                "--mode",
                "xdp",
            ])
            .args(["--mark", MARK]),
    );
    assert!(
        out.contains("--mark 0x42/0xff needs the TC ingress hook"),
        "{out}"
    );
    assert_no_program_loaded();
}

/// Runs `cmd`, asserts it exits 1, returns its stderr.
fn must_fail(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("spawn");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
