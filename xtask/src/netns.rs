//! The demo's and the benchmark's topology: two network namespaces joined by one veth pair,
//! deleted again (by name) when the guard is dropped, also on error or panic.
//!
//! ```text
//!  rdr-demo-cli                                      rdr-demo-srv
//!  rdrd-c 10.200.0.1/24 fd00:200::1/64  <== veth ==>  rdrd-s 10.200.0.2/24 fd00:200::2/64
//!  rdr-bench-cli                                     rdr-bench-srv
//!  rdrb-c 10.201.0.1/24 fd00:201::1/64  <== veth ==>  rdrb-s 10.201.0.2/24 fd00:201::2/64
//! ```

use std::ffi::OsStr;

use anyhow::{Context as _, Result};

use crate::cmd::Cmd;

/// One end of the demo link: its namespace, its veth end and its addresses.
pub struct Side {
    pub netns: &'static str,
    pub veth: &'static str,
    pub ipv4: &'static str,
    pub ipv6: &'static str,
}

/// Both ends of one topology.
pub struct Link {
    pub client: Side,
    pub server: Side,
}

/// The demo's namespaces.
pub const DEMO: Link = Link {
    client: Side {
        netns: "rdr-demo-cli",
        veth: "rdrd-c",
        ipv4: "10.200.0.1",
        ipv6: "fd00:200::1",
    },
    server: Side {
        netns: "rdr-demo-srv",
        veth: "rdrd-s",
        ipv4: "10.200.0.2",
        ipv6: "fd00:200::2",
    },
};

/// The benchmark's namespaces (apart from the demo's, so both can be up at once).
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

const IPV4_PREFIX_LEN: u8 = 24;
const IPV6_PREFIX_LEN: u8 = 64;

/// Where `ip netns add` bind-mounts a namespace; `nsenter --net=` takes this path.
const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace this process created; deleted by name on drop. Deleting a namespace
/// also removes its veth end (and with it the peer) once no process is left inside.
pub struct NetNs {
    name: &'static str,
}

impl NetNs {
    fn add(name: &'static str) -> Result<Self> {
        Cmd::new("ip").args(["netns", "add", name]).run_captured()?;
        Ok(Self { name })
    }

    /// `ip netns exec <ns> <program>`: the namespace's network, plus its own /sys.
    ///
    /// That private /sys hides the bpffs at /sys/fs/bpf: use `enter_net_only` for anything
    /// that pins or reads pinned BPF objects.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Cmd {
        Cmd::new("ip")
            .args(["netns", "exec", self.name])
            .arg(program)
    }

    /// `nsenter --net=/run/netns/<ns> -- <program>`: the namespace's network, but the host's
    /// mounts, so /sys/fs/bpf is the host's bpffs and pins are shared between invocations.
    pub fn enter_net_only(&self, program: impl AsRef<OsStr>) -> Cmd {
        Cmd::new("nsenter")
            .arg(format!("--net={NETNS_RUN_DIR}/{}", self.name))
            .arg("--")
            .arg(program)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        Cmd::new("ip")
            .args(["-n", self.name])
            .args(args)
            .run_captured()
            .map(drop)
    }

    /// Addresses, links up and checksum offload off for one end of the link.
    fn configure(&self, side: &Side) -> Result<()> {
        let ipv4 = format!("{}/{IPV4_PREFIX_LEN}", side.ipv4);
        let ipv6 = format!("{}/{IPV6_PREFIX_LEN}", side.ipv6);
        self.ip(&["link", "set", "lo", "up"])?;
        self.ip(&["addr", "add", &ipv4, "dev", side.veth])?;
        // nodad: usable at once, no wait for duplicate address detection.
        self.ip(&["addr", "add", &ipv6, "dev", side.veth, "nodad"])?;
        self.ip(&["link", "set", side.veth, "up"])?;
        // With tx checksum offload on, packets cross the veth CHECKSUM_PARTIAL and a wrong
        // checksum written by the redirector would go unnoticed; off, it drops the flow.
        self.exec("ethtool")
            .args(["-K", side.veth, "tx", "off"])
            .run_captured()
            .map(drop)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        match Cmd::new("ip")
            .args(["netns", "del", self.name])
            .run_captured()
        {
            Ok(_) => println!("  deleted namespace {}", self.name),
            Err(err) => eprintln!(
                "  warning: could not delete namespace {}: {err:#}",
                self.name
            ),
        }
    }
}

/// Both namespaces, linked and addressed; dropping it deletes them.
pub struct Topology {
    pub client: NetNs,
    pub server: NetNs,
}

impl Topology {
    /// Removes leftovers of an earlier run, then builds the topology of `link` from scratch.
    pub fn create(link: &'static Link) -> Result<Self> {
        let (client_side, server_side) = (&link.client, &link.server);
        remove_leftovers(link)?;
        // Each guard exists before the next step, so a failure below still cleans up.
        let client = NetNs::add(client_side.netns)?;
        let server = NetNs::add(server_side.netns)?;
        let topology = Self { client, server };
        Cmd::new("ip")
            .args(["link", "add", client_side.veth, "netns", client_side.netns])
            .args([
                "type",
                "veth",
                "peer",
                "name",
                server_side.veth,
                "netns",
                server_side.netns,
            ])
            .run_captured()
            .context("could not create the veth pair")?;
        topology.client.configure(client_side)?;
        topology.server.configure(server_side)?;
        println!(
            "  {} [{} {}/{IPV4_PREFIX_LEN} {}/{IPV6_PREFIX_LEN}] <== veth ==> \
             [{} {}/{IPV4_PREFIX_LEN} {}/{IPV6_PREFIX_LEN}] {}",
            client_side.netns,
            client_side.veth,
            client_side.ipv4,
            client_side.ipv6,
            server_side.veth,
            server_side.ipv4,
            server_side.ipv6,
            server_side.netns
        );
        Ok(topology)
    }
}

/// Deletes our namespaces and veth ends (by name only) left behind by an earlier run.
fn remove_leftovers(link: &Link) -> Result<()> {
    let listed = Cmd::new("ip").args(["netns", "list"]).run_captured()?;
    for name in [link.client.netns, link.server.netns] {
        if !netns_listed(&listed, name) {
            continue;
        }
        let pids = Cmd::new("ip")
            .args(["netns", "pids", name])
            .run_captured()
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            eprintln!(
                "  warning: processes from an earlier run still live in {name} (pids {}); \
                 they are left alone, kill them if they get in the way",
                pids.join(" ")
            );
        }
        Cmd::new("ip")
            .args(["netns", "del", name])
            .run_captured()
            .with_context(|| format!("could not delete the leftover namespace {name}"))?;
        println!("  deleted leftover namespace {name}");
    }
    for veth in [link.client.veth, link.server.veth] {
        let exists = Cmd::new("ip")
            .args(["link", "show", "dev", veth])
            .output()?
            .status
            .success();
        if exists {
            Cmd::new("ip")
                .args(["link", "del", "dev", veth])
                .run_captured()
                .with_context(|| format!("could not delete the leftover link {veth}"))?;
            println!("  deleted leftover link {veth}");
        }
    }
    Ok(())
}

/// Whether `ip netns list` output names `name` (lines look like `name (id: 3)` or `name`).
fn netns_listed(listing: &str, name: &str) -> bool {
    listing
        .lines()
        .any(|line| line.split_whitespace().next() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_listing_matches_whole_names_only() {
        let listing = "rdr-demo-srv (id: 1)\nrdr-demo-cli-old\nother\n";
        assert!(netns_listed(listing, "rdr-demo-srv"));
        assert!(!netns_listed(listing, "rdr-demo-cli"));
        assert!(!netns_listed("", "rdr-demo-cli"));
    }
}
