//! The benchmark's namespaces: the shared veth topology plus several client source addresses
//! (rotated between runs, so no run meets the TIME_WAIT sockets of the one before) and the
//! same socket tuning for every configuration.

use anyhow::{Context as _, Result};

use testkit::netns::{Link, Netns, Side, Topology};

/// The benchmark's namespaces (apart from the demo's, so both can be up at once).
///
/// ```text
///  rdr-bench-cli                                     rdr-bench-srv
///  rdrb-c 10.201.0.1/24 fd00:201::1/64  <== veth ==>  rdrb-s 10.201.0.2/24 fd00:201::2/64
/// ```
pub const BENCH: Link = Link {
    client: Side {
        netns: "rdr-bench-cli",
        veth: "rdrb-c",
        ipv4: "10.201.0.1",
        ipv6: "fd00:201::1",
    },
    server: Side {
        netns: "rdr-bench-srv",
        veth: "rdrb-s",
        ipv4: "10.201.0.2",
        ipv6: "fd00:201::2",
    },
};

/// Extra client addresses, 10.201.0.11 … : one per run, round robin. 64 runs take longer
/// than TIME_WAIT's 60 s, so no address is used again while its last run's connections
/// linger.
const CLIENT_ADDRESSES: u8 = 64;
const FIRST_EXTRA_HOST: u8 = 11;

/// Applied in both namespaces before any run. A wide port range and TIME_WAIT reuse keep
/// proxies (which open one backend connection per client connection) from running out of
/// ports during the connection-rate loads; the backlog bounds keep accept queues from
/// dropping SYNs under churn. Every configuration runs with the same settings.
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_local_port_range", "1024 65000"),
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.core.somaxconn", "4096"),
    ("net.ipv4.tcp_max_syn_backlog", "4096"),
];

/// The topology and the client addresses to rotate through.
pub struct Testbed {
    pub topology: Topology,
    client_addresses: Vec<String>,
    next_address: usize,
}

impl Testbed {
    pub fn create() -> Result<Self> {
        let topology = Topology::create(&BENCH)?;
        let client = &topology.client;
        let mut client_addresses = Vec::new();
        for host in FIRST_EXTRA_HOST..FIRST_EXTRA_HOST + CLIENT_ADDRESSES {
            let address = format!("10.201.0.{host}");
            client.ip(&[
                "addr",
                "add",
                &format!("{address}/32"),
                "dev",
                BENCH.client.veth,
            ])?;
            client_addresses.push(address);
        }
        for ns in [&topology.client, &topology.server] {
            for (key, value) in SYSCTLS {
                sysctl(ns, key, value)?;
            }
        }
        Ok(Self {
            topology,
            client_addresses,
            next_address: 0,
        })
    }

    /// Makes the next client address the source of new connections to the server (the route's
    /// preferred source); returns it.
    pub fn rotate_client_address(&mut self) -> Result<&str> {
        let address = &self.client_addresses[self.next_address % self.client_addresses.len()];
        self.next_address += 1;
        self.topology.client.ip(&[
            "route",
            "replace",
            "10.201.0.0/24",
            "dev",
            BENCH.client.veth,
            "src",
            address,
        ])?;
        Ok(address)
    }

    pub fn server_ip(&self) -> &'static str {
        BENCH.server.ipv4
    }

    pub fn server_if(&self) -> &'static str {
        BENCH.server.veth
    }
}

fn sysctl(ns: &Netns, key: &str, value: &str) -> Result<()> {
    ns.exec("sysctl")
        .args(["-q", "-w", &format!("{key}={value}")])
        .run_captured()
        .map(drop)
        .with_context(|| format!("could not set {key} in {}", ns.name()))
}
