//! Network namespaces and the two-host topology of the tests, the demo and the benchmark: a
//! client and a server namespace joined by one veth pair, each end with an IPv4 and an IPv6
//! address and tx checksum offload off, deleted again (by name) when the guards are dropped,
//! also on error or panic.
//!
//! ```text
//!  <client netns>                                    <server netns>
//!  <veth> 10.x.y.1/24 fd00:x:y::1/64   <== veth ==>  <veth> 10.x.y.2/24 fd00:x:y::2/64
//! ```
//!
//! The tests build one per test with unique names ([`Topology::new`], panics on failure);
//! xtask and the benchmark build theirs from fixed names ([`Topology::create`] with a
//! [`Link`], replacing what an earlier run left behind).

use std::ffi::OsStr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cmd::{self, must, Cmd};
use crate::error_chain;

const IPV4_PREFIX_LEN: u8 = 24;
const IPV6_PREFIX_LEN: u8 = 64;

/// Where `ip netns add` bind-mounts a namespace; `nsenter --net=` takes this path.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Why a namespace or the link between two could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An `ip` or `ethtool` command of the setup failed.
    #[error(transparent)]
    Cmd(#[from] cmd::Error),
    /// `ip link add ... type veth peer ...` failed.
    #[error("could not create the veth pair")]
    VethPair(#[source] cmd::Error),
    /// A namespace of that name, left by an earlier run, could not be deleted.
    #[error("could not delete the leftover namespace {0}")]
    LeftoverNetns(&'static str, #[source] cmd::Error),
    /// A veth end of that name, left by an earlier run, could not be deleted.
    #[error("could not delete the leftover link {0}")]
    LeftoverLink(&'static str, #[source] cmd::Error),
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// One end of a fixed link: its namespace, its veth end and its addresses.
pub struct Side {
    /// The namespace's name (under /run/netns).
    pub netns: &'static str,
    /// The name of this end of the veth pair, inside `netns`.
    pub veth: &'static str,
    /// This end's IPv4 address, without prefix length (a /24 is added).
    pub ipv4: &'static str,
    /// This end's IPv6 address, without prefix length (a /64 is added).
    pub ipv6: &'static str,
}

/// Both ends of one fixed topology (the demo's, the benchmark's).
pub struct Link {
    /// The client host's end.
    pub client: Side,
    /// The server host's end (where the redirector runs).
    pub server: Side,
}

/// A network namespace this process created; deleted by name on drop. Deleting a namespace
/// also removes its veth end (and with it the peer) once no process is left inside.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Whether dropping it says so (xtask's output does, the tests' does not).
    announce: bool,
}

impl Netns {
    /// Creates `name` for a test, replacing a leftover of the same name from a crashed run;
    /// panics if it cannot.
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        must(Command::new("ip").args(["netns", "add", name]));
        let ns = Self {
            name: name.to_owned(),
            announce: false,
        };
        must(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        ns
    }

    /// Creates `name`, which must not exist yet; dropping it reports the deletion.
    pub fn add(name: &str) -> Result<Self> {
        Cmd::new("ip").args(["netns", "add", name]).run_captured()?;
        let ns = Self {
            name: name.to_owned(),
            announce: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> <program>` as a [`Command`] (tests): the namespace's network,
    /// plus its own /sys, which hides the bpffs at /sys/fs/bpf (see `nsenter_cmd`).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `nsenter --net=/run/netns/<ns> -- <program>` as a [`Command`] (tests): the
    /// namespace's network, but the caller's mounts, so it sees the host's /sys/fs/bpf and
    /// pins are shared between invocations.
    pub fn nsenter_cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(self.nsenter_net()).arg("--").arg(program);
        cmd
    }

    /// A command that runs `program` inside this namespace as nobody, with no
    /// capabilities at all (for the "missing privileges" paths).
    pub fn cmd_unprivileged(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.cmd("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(program);
        cmd
    }

    /// `ip netns exec <ns> <program>` as a [`Cmd`] (xtask, bench); like `cmd`.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Cmd {
        Cmd::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
    }

    /// `nsenter --net=/run/netns/<ns> -- <program>` as a [`Cmd`] (xtask, bench); like
    /// `nsenter_cmd`: use it for anything that pins or reads pinned BPF objects.
    pub fn enter_net_only(&self, program: impl AsRef<OsStr>) -> Cmd {
        Cmd::new("nsenter")
            .arg(self.nsenter_net())
            .arg("--")
            .arg(program)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        Cmd::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .run_captured()?;
        Ok(())
    }

    /// The TcpExt counters (/proc/net/netstat, e.g. `SyncookiesSent`) of this namespace;
    /// panics if it cannot read them (tests).
    pub fn tcp_ext(&self) -> std::collections::HashMap<String, u64> {
        let out = must(self.cmd("cat").arg("/proc/net/netstat"));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .map(|(n, v)| (n.to_string(), v.parse().unwrap()))
            .collect()
    }

    /// Reads a TCP MIB counter (e.g. `InCsumErrors`) from this namespace's /proc/net/snmp;
    /// panics if it cannot (tests).
    pub fn tcp_counter(&self, name: &str) -> u64 {
        let out = must(self.cmd("cat").arg("/proc/net/snmp"));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (header, values) = (tcp.next().unwrap(), tcp.next().unwrap());
        let idx = header
            .split_whitespace()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no Tcp counter {name}"));
        values.split_whitespace().nth(idx).unwrap().parse().unwrap()
    }

    fn nsenter_net(&self) -> String {
        format!("--net={NETNS_RUN_DIR}/{}", self.name)
    }

    /// Address, link up and checksum offload off for one end of the link.
    fn configure(&self, end: &End<'_>) -> Result<()> {
        let ipv4 = format!("{}/{IPV4_PREFIX_LEN}", end.ipv4);
        let ipv6 = format!("{}/{IPV6_PREFIX_LEN}", end.ipv6);
        self.ip(&["addr", "add", &ipv4, "dev", end.veth])?;
        // nodad: usable at once, no wait for duplicate address detection.
        self.ip(&["addr", "add", &ipv6, "dev", end.veth, "nodad"])?;
        self.ip(&["link", "set", end.veth, "up"])?;
        // With tx checksum offload on, packets cross the veth CHECKSUM_PARTIAL and a wrong
        // checksum written by the redirector would go unnoticed; off, it drops the flow.
        self.exec("ethtool")
            .args(["-K", end.veth, "tx", "off"])
            .run_captured()?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let deleted = Cmd::new("ip")
            .args(["netns", "del", &self.name])
            .run_captured();
        if !self.announce {
            return;
        }
        match deleted {
            Ok(_) => println!("  deleted namespace {}", self.name),
            Err(err) => eprintln!(
                "  warning: could not delete namespace {}: {}",
                self.name,
                error_chain(&err)
            ),
        }
    }
}

/// One end of a veth link being built: its name and addresses (without prefix length;
/// /24 and /64 are added).
pub struct End<'a> {
    /// Name of the veth end inside its namespace.
    pub veth: &'a str,
    /// IPv4 address (private range, only inside the test's namespaces).
    pub ipv4: &'a str,
    /// IPv6 address (ULA, only inside the test's namespaces).
    pub ipv6: &'a str,
}

/// Client and server namespaces joined by a veth pair, with IPv4 and IPv6 addresses
/// (private ranges, only inside these namespaces) and tx checksum offload off on both
/// ends so every packet carries a full checksum that the receiver verifies. Dropping it
/// deletes both namespaces.
pub struct Topology {
    /// The client host.
    pub client: Netns,
    /// The server host (where the redirector runs).
    pub server: Netns,
    /// Client-side veth name (inside `client`).
    pub client_if: &'static str,
    /// Server-side veth name (inside `server`).
    pub server_if: &'static str,
    /// Client IPv4 address.
    pub client_v4: String,
    /// Client IPv6 address.
    pub client_v6: String,
    /// Server IPv4 address.
    pub server_v4: String,
    /// Server IPv6 address.
    pub server_v6: String,
}

/// Numbers the tests' topologies within this process.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Builds a fresh topology for a test, panicking on failure; `tag` (short) keeps names
    /// readable and unique per test.
    pub fn new(tag: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let base = format!("rdrt-{tag}-{}-{id}", std::process::id());
        let client = Netns::new(&format!("{base}-c"));
        let server = Netns::new(&format!("{base}-s"));
        let subnet = 1 + (id % 250);
        let (client_v4, server_v4) = (format!("10.77.{subnet}.1"), format!("10.77.{subnet}.2"));
        let (client_v6, server_v6) = (
            format!("fd00:77:{subnet}::1"),
            format!("fd00:77:{subnet}::2"),
        );
        let (client_if, server_if) = ("veth-c", "veth-s");
        let client_end = End {
            veth: client_if,
            ipv4: &client_v4,
            ipv6: &client_v6,
        };
        let server_end = End {
            veth: server_if,
            ipv4: &server_v4,
            ipv6: &server_v6,
        };
        join(&client, &client_end, &server, &server_end)
            .unwrap_or_else(|err| panic!("{base}: {}", error_chain(&err)));
        Self {
            client,
            server,
            client_if,
            server_if,
            client_v4,
            client_v6,
            server_v4,
            server_v6,
        }
    }

    /// Removes leftovers of an earlier run, then builds the topology of `link` from scratch
    /// and prints it (xtask, bench).
    pub fn create(link: &Link) -> Result<Self> {
        let (client_side, server_side) = (&link.client, &link.server);
        remove_leftovers(link)?;
        // Each guard exists before the next step, so a failure below still cleans up.
        let client = Netns::add(client_side.netns)?;
        let server = Netns::add(server_side.netns)?;
        let end = |side: &Side| End {
            veth: side.veth,
            ipv4: side.ipv4,
            ipv6: side.ipv6,
        };
        join(&client, &end(client_side), &server, &end(server_side))?;
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
        Ok(Self {
            client,
            server,
            client_if: client_side.veth,
            server_if: server_side.veth,
            client_v4: client_side.ipv4.to_owned(),
            client_v6: client_side.ipv6.to_owned(),
            server_v4: server_side.ipv4.to_owned(),
            server_v6: server_side.ipv6.to_owned(),
        })
    }

    /// `ws://` or `wss://` URL of the server on `port`, IPv4 or IPv6.
    pub fn url(&self, scheme: &str, v6: bool, port: u16) -> String {
        if v6 {
            format!("{scheme}://[{}]:{port}/", self.server_v6)
        } else {
            format!("{scheme}://{}:{port}/", self.server_v4)
        }
    }

    /// Deletes the veth pair (both ends go), as a driver reload or a runtime re-making
    /// the interface does; panics on failure (tests).
    pub fn delete_link(&self) {
        must(self.server.cmd("ip").args(["link", "del", self.server_if]));
    }

    /// Creates the veth pair again with the same names and addresses (tx checksum offload
    /// off on both ends, as [`Topology::new`] does); panics on failure (tests).
    pub fn restore_link(&self) {
        let client_end = End {
            veth: self.client_if,
            ipv4: &self.client_v4,
            ipv6: &self.client_v6,
        };
        let server_end = End {
            veth: self.server_if,
            ipv4: &self.server_v4,
            ipv6: &self.server_v6,
        };
        join(&self.client, &client_end, &self.server, &server_end)
            .unwrap_or_else(|err| panic!("re-creating the veth pair: {}", error_chain(&err)));
    }

    /// Checksum errors seen by TCP in either namespace.
    pub fn csum_errors(&self) -> u64 {
        self.client.tcp_counter("InCsumErrors") + self.server.tcp_counter("InCsumErrors")
    }
}

/// Creates the veth pair between `client` and `server` and configures both ends. It is
/// created inside the client namespace with the peer placed straight into the server
/// namespace: no name ever exists in the root namespace.
pub fn join(
    client: &Netns,
    client_end: &End<'_>,
    server: &Netns,
    server_end: &End<'_>,
) -> Result<()> {
    client
        .ip(&[
            "link",
            "add",
            client_end.veth,
            "type",
            "veth",
            "peer",
            "name",
            server_end.veth,
            "netns",
            &server.name,
        ])
        .map_err(|err| match err {
            Error::Cmd(err) => Error::VethPair(err),
            other => other,
        })?;
    client.configure(client_end)?;
    server.configure(server_end)
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
            .map_err(|err| Error::LeftoverNetns(name, err))?;
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
                .map_err(|err| Error::LeftoverLink(veth, err))?;
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
