//! The Docker/Maestro shape of the namespace tests: a container namespace behind the
//! server, whose ws-echo the server publishes on 8080 (and 8443) with an nftables DNAT to
//! the container's 3000 (and 3443), netfilter conntrack on and forwarding.
//!
//! ```text
//!  client ─veth─ server (redirector, nftables DNAT, forwarding) ─veth─ container (ws-echo)
//! ```

use std::time::Duration;

use testkit::{
    cmd::must,
    netns::{join, End, Netns, Topology},
    process::Proc,
};

use crate::{bins, fixtures::TempDir};

/// The container namespace behind the server, with its echo server running.
pub struct Container {
    /// Its echo server (stopped by PID before the namespace goes).
    _echo: Proc,
    /// The container's network namespace.
    pub ns: Netns,
}

/// Builds the container namespace behind `topo.server`, routes and forwarding, the DNAT
/// rules (8080→3000, 8443→3443, IPv4 and IPv6) and ws-echo inside the container.
pub fn start_container(topo: &Topology, subnet: u8) -> Container {
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
