//! The Docker/Maestro shape: the host publishes its port 8080 (and 8443) with an nftables
//! DNAT to a container's 3000 (and 3443), netfilter conntrack on, and redirector sends the
//! clients of 80/443 there. The redirect happens before netfilter on the way in (the XDP or
//! TC ingress hook) and after it on the way out (TC egress sees the de-NATed reply from
//! 8080), so both must compose; the replies are forwarded traffic, which carries a full
//! checksum through TC egress (unlike locally generated replies).
//!
//! Three namespaces: client ─veth─ server (redirector, nftables DNAT, forwarding)
//! ─veth─ container (ws-echo on 3000/3443). Every veth end has tx offload off.

use std::time::Duration;

use redirector_tests::{bins, fixtures::*};
use testkit::{
    cmd::must,
    netns::{join, End, Netns, Topology},
    process::Proc,
};

/// Bytes of the full-duplex bulk transfer per family.
const BULK_BYTES: u64 = 16 << 20;
/// Concurrent WebSocket connections held by wsload per family.
const CONCURRENT: &str = "200";

/// The container namespace behind the server, with its echo server running.
struct Container {
    /// Its echo server (stopped by PID before the namespace goes).
    _echo: Proc,
    /// The container's network namespace.
    ns: Netns,
}

/// Builds the container namespace behind `topo.server`, routes and forwarding, the DNAT
/// rules (8080→3000, 8443→3443, IPv4 and IPv6) and ws-echo inside the container.
fn start_container(topo: &Topology, subnet: u8) -> Container {
    let ns = Netns::new(&format!("{}-k", topo.server.name()));
    let (host_v4, ctr_v4) = (format!("10.88.{subnet}.1"), format!("10.88.{subnet}.2"));
    let (host_v6, ctr_v6) = (
        format!("fd00:88:{subnet}::1"),
        format!("fd00:88:{subnet}::2"),
    );
    let host_end = End {
        veth: "veth-h",
        ipv4: &host_v4,
        ipv6: &host_v6,
    };
    let ctr_end = End {
        veth: "veth-k",
        ipv4: &ctr_v4,
        ipv6: &ctr_v6,
    };
    join(&topo.server, &host_end, &ns, &ctr_end).expect("server-container veth");
    ns.ip(&["route", "add", "default", "via", &host_v4])
        .expect("container IPv4 route");
    ns.ip(&["-6", "route", "add", "default", "via", &host_v6])
        .expect("container IPv6 route");
    for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        must(topo.server.cmd("sysctl").args(["-qw", key]));
    }
    let (sv4, sv6) = (&topo.server_v4, &topo.server_v6);
    let ruleset = format!(
        "table inet rdrtest_nat {{\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   ip daddr {sv4} tcp dport 8080 dnat ip to {ctr_v4}:3000\n\
         \x20   ip daddr {sv4} tcp dport 8443 dnat ip to {ctr_v4}:3443\n\
         \x20   ip6 daddr {sv6} tcp dport 8080 dnat ip6 to [{ctr_v6}]:3000\n\
         \x20   ip6 daddr {sv6} tcp dport 8443 dnat ip6 to [{ctr_v6}]:3443\n\
         \x20 }}\n\
         }}\n"
    );
    let rules_file = TempDir::new("container-nft");
    let path = rules_file.0.join("dnat.nft");
    std::fs::write(&path, ruleset).unwrap();
    must(topo.server.cmd("nft").arg("-f").arg(&path));

    let mut cmd = ns.cmd(bins::ws_echo());
    cmd.args(["--listen", "0.0.0.0:3000", "--listen", "[::]:3000"]);
    cmd.args(["--tls-listen", "0.0.0.0:3443", "--tls-listen", "[::]:3443"]);
    cmd.args(["--cert-name", sv4, "--cert-name", sv6]);
    let mut echo = Proc::spawn("ws-echo (container)", cmd, false);
    for _ in 0..4 {
        echo.wait_line("listening", Duration::from_secs(10));
    }
    Container { _echo: echo, ns }
}

/// `wsload` from the client namespace: CONCURRENT connections in a closed echo loop for
/// two seconds; returns its JSON summary.
fn concurrent_load(topo: &Topology, url: &str) -> serde_json::Value {
    let out = must(
        topo.client
            .cmd(bins::wsload())
            .args([
                url,
                "--connections",
                CONCURRENT,
                "--duration",
                "2",
                "--json",
            ])
            .args(["--connect-timeout", "10"]),
    );
    serde_json::from_slice(&out.stdout).expect("wsload --json output")
}

/// Number of the nf_conntrack entries of the server namespace (`conntrack -C` is not
/// always installed; /proc is).
fn conntrack_entries(server: &Netns) -> u64 {
    let out = must(
        server
            .cmd("cat")
            .arg("/proc/sys/net/netfilter/nf_conntrack_count"),
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn redirect_composes_with_a_dnat_to_a_container() {
    let _serial = serial();
    let topo = Topology::new("ctr");
    let container = start_container(&topo, 1);
    // Nothing listens on the server itself: 8080/8443 exist only through the DNAT.
    for mode in ["tc", "xdp"] {
        let loader = start_loader(&topo, &["--mode", mode]);
        for v6 in [false, true] {
            assert_echo(&topo, &topo.url("ws", v6, 80));
            assert_echo(&topo, &topo.url("wss", v6, 443));
            assert_echo(&topo, &topo.url("ws", v6, 8080)); // the published port itself

            let out = ws_client(
                &topo,
                &topo.url("ws", v6, 80),
                &["--bytes", &BULK_BYTES.to_string()],
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success()
                    && stdout.contains(&format!(
                        "bulk: sent {BULK_BYTES} bytes, received {BULK_BYTES} bytes, verified"
                    )),
                "{mode} v6={v6}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );

            // Every one of the connections connects and echoes (wsload exits 0 if any
            // one did, so its counts are what is judged).
            let load = concurrent_load(&topo, &topo.url("ws", v6, 80));
            let concurrent: u64 = CONCURRENT.parse().unwrap();
            assert_eq!(load["connects_ok"], concurrent, "{mode} v6={v6}: {load}");
            assert_eq!(load["connect_errors"], 0, "{mode} v6={v6}: {load}");
            assert_eq!(load["errors"], 0, "{mode} v6={v6}: {load}");
            assert!(
                load["messages_received"].as_u64().unwrap() >= concurrent,
                "{mode} v6={v6}: {load}"
            );
        }
        assert!(
            conntrack_entries(&topo.server) > 0,
            "netfilter conntrack must be tracking the DNATed flows"
        );
        let lines = stop_loader(loader);
        assert!(
            lines.iter().any(|l| l.starts_with("rule 80->8080:")),
            "{lines:?}"
        );
    }
    let csum_errors = topo.csum_errors() + container.ns.tcp_counter("InCsumErrors");
    assert_eq!(csum_errors, 0, "TCP checksum errors");
    // ws-echo stops (by PID) before its namespace is deleted.
    drop(container);
}
