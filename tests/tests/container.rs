//! The Docker/Maestro shape: the host publishes its port 8080 (and 8443) with an nftables
//! DNAT to a container's 3000 (and 3443), netfilter conntrack on, and redirector sends the
//! clients of 80/443 there. The redirect happens before netfilter on the way in (the XDP or
//! TC ingress hook) and after it on the way out (TC egress sees the de-NATed reply from
//! 8080), so both must compose; the replies are forwarded traffic, which carries a full
//! checksum through TC egress (unlike locally generated replies).
//!
//! Three namespaces: client ─veth─ server (redirector, nftables DNAT, forwarding)
//! ─veth─ container (ws-echo on 3000/3443). Every veth end has tx offload off.

use redirector_tests::{bins, container::start_container, fixtures::*};
use testkit::{
    cmd::must,
    netns::{Netns, Topology},
};

/// Bytes of the full-duplex bulk transfer per family.
const BULK_BYTES: u64 = 16 << 20;
/// Concurrent WebSocket connections held by wsload per family.
const CONCURRENT: &str = "200";

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
