//! Namespace integration: the real loader, real eBPF programs, real WebSocket servers and
//! clients over a veth pair with full checksums (tx offload off on both ends).

use redirector_tests::fixtures::*;
use testkit::{cmd::must, netns::Topology};

/// Value of `key=` on the `rule FROM->TO:` line of the loader's final counters.
fn rule_stat(lines: &[String], rule: &str, key: &str) -> u64 {
    let line = lines
        .iter()
        .find(|l| l.starts_with(&format!("rule {rule}:")))
        .unwrap_or_else(|| panic!("no rule {rule} in {lines:?}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

/// Value of a global counter in the loader's final output.
fn counter(lines: &[String], name: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("counter {name}=")))
        .unwrap_or_else(|| panic!("no counter {name} in {lines:?}"))
        .parse()
        .unwrap()
}

/// Waits until no program named redirector_* is loaded (program release is deferred).
fn assert_nothing_attached(topo: &Topology) {
    let link = must(
        topo.server
            .cmd("ip")
            .args(["-d", "link", "show", "dev", topo.server_if]),
    );
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(!link.contains("prog/xdp"), "XDP still attached:\n{link}");
    assert_no_program_loaded();
}

#[test]
fn websocket_echo_through_80_and_443_in_every_mode() {
    let _serial = serial();
    let topo = Topology::new("echo");
    let _echo = start_echo(&topo, &[]);
    for mode in ["xdp", "xdp-generic", "tc"] {
        let loader = start_loader(&topo, &["--mode", mode]);
        assert!(
            loader.seen.iter().any(|l| l.contains(&format!("({mode})"))),
            "{:?}",
            loader.seen
        );
        for v6 in [false, true] {
            assert_echo(&topo, &topo.url("ws", v6, 80));
            assert_echo(&topo, &topo.url("wss", v6, 443));
            assert_echo(&topo, &topo.url("ws", v6, 8080)); // direct still works
            assert_refused(&topo, &topo.url("ws", v6, 81)); // nothing else redirected
        }
        let lines = stop_loader(loader);
        assert_eq!(
            rule_stat(&lines, "80->8080", "flows_new"),
            2,
            "{mode}: {lines:?}"
        );
        assert_eq!(
            rule_stat(&lines, "443->8443", "flows_new"),
            2,
            "{mode}: {lines:?}"
        );
        assert!(rule_stat(&lines, "80->8080", "packets_out") > 0, "{mode}");
        assert_eq!(counter(&lines, "rewrite_failed"), 0);
        assert_nothing_attached(&topo);
        assert_refused(&topo, &topo.url("ws", false, 80));
    }
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}

#[test]
fn large_transfer_is_byte_exact_both_ways() {
    let _serial = serial();
    let topo = Topology::new("bulk");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &[]);
    for url in [topo.url("ws", false, 80), topo.url("wss", true, 443)] {
        assert_bulk(&topo, &url, 64 << 20);
    }
    let lines = stop_loader(loader);
    assert!(
        rule_stat(&lines, "80->8080", "bytes_in") > 64 << 20,
        "{lines:?}"
    );
    assert!(
        rule_stat(&lines, "443->8443", "bytes_out") > 64 << 20,
        "{lines:?}"
    );
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}

#[test]
fn connection_opened_before_the_loader_is_not_hijacked() {
    let _serial = serial();
    let topo = Topology::new("pre");
    // A server really listening on 80 as well: the old connection talks to it.
    let _echo = start_echo(&topo, &["0.0.0.0:80"]);
    let mut old = open_session(&topo, &topo.url("ws", false, 80));

    let loader = start_loader(&topo, &[]);
    assert_echo(&topo, &topo.url("ws", false, 80)); // a new connection is redirected
    exchange(&mut old, "during");
    // The old connection is still on the server's port 80, the new one went to 8080.
    let ss = must(
        topo.server
            .cmd("ss")
            .args(["-Htn", "state", "established", "( sport = :80 )"]),
    );
    assert!(
        !String::from_utf8_lossy(&ss.stdout).trim().is_empty(),
        "old connection gone"
    );
    close_session(old);

    let lines = stop_loader(loader);
    assert_eq!(rule_stat(&lines, "80->8080", "flows_new"), 1, "{lines:?}");
    assert!(
        counter(&lines, "pass_untracked") > 0,
        "old flow's packets pass untracked"
    );
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}

#[test]
fn allow_list_limits_which_sources_are_redirected() {
    let _serial = serial();
    let topo = Topology::new("allow");
    let _echo = start_echo(&topo, &[]);
    // IPv4 client allowed; the IPv6 client's prefix is not.
    let allow = format!("{}/32", topo.client_v4);
    let loader = start_loader(&topo, &["--allow", &allow, "--allow", "2001:db8::/32"]);
    assert_echo(&topo, &topo.url("ws", false, 80));
    assert_refused(&topo, &topo.url("ws", true, 80));
    let lines = stop_loader(loader);
    assert!(counter(&lines, "pass_source_denied") >= 1, "{lines:?}");
    assert_eq!(rule_stat(&lines, "80->8080", "flows_new"), 1);
}

/// One process, two paths: `redirector run --sniff-listen` moves 443 to 8443 in the kernel
/// and tells WebSocket from plain HTTP on port 80 in user space.
#[test]
fn run_with_sniff_serves_kernel_and_sniffed_paths_together() {
    let _serial = serial();
    let topo = Topology::new("runsniff");
    let _echo = start_echo(&topo, &[]);
    let root = TempDir::new("runsniff");
    let file: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
        .collect();
    std::fs::write(root.0.join("known.bin"), &file).unwrap();
    let web = start_http_server(topo.server.cmd("python3"), 8000, &root.0);

    let loader = start_loader(&topo, SNIFF_RUN_ARGS);
    assert!(
        loader
            .seen
            .iter()
            .any(|l| l == "redirector sniff ready: listening on 0.0.0.0:80"),
        "{:?}",
        loader.seen
    );
    assert_echo(&topo, &topo.url("ws", false, 80)); // sniffed: WebSocket
    let url = format!("http://{}:80/known.bin", topo.server_v4);
    let fetched = must(
        topo.client
            .cmd("curl")
            .args(["-sS", "--fail", "--max-time", "10", &url]),
    );
    assert!(
        fetched.stdout == file,
        "{url}: {} bytes",
        fetched.stdout.len()
    ); // sniffed: HTTP
    assert_echo(&topo, &topo.url("wss", false, 443)); // kernel redirect

    let lines = stop_loader(loader);
    drop(web);
    assert_eq!(rule_stat(&lines, "443->8443", "flows_new"), 1, "{lines:?}");
    let sniff_counter = |name: &str| -> u64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("sniff counter {name}=")))
            .unwrap_or_else(|| panic!("no sniff counter {name} in {lines:?}"))
            .parse()
            .unwrap()
    };
    assert!(
        lines.iter().any(|l| l == "redirector sniff stopped"),
        "{lines:?}"
    );
    assert_eq!(sniff_counter("websocket"), 1, "{lines:?}");
    assert_eq!(sniff_counter("http"), 1, "{lines:?}");
    assert_eq!(topo.csum_errors(), 0, "TCP checksum errors");
}
