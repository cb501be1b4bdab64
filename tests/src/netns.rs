//! Network namespaces and a two-host topology (client ↔ server over one veth pair).

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Runs a command to completion and panics with its output if it fails.
pub fn must(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted (with every link inside) on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates `name`, replacing a leftover of the same name from a crashed run.
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        must(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns {
            name: name.to_string(),
        };
        must(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        ns
    }

    /// A command that runs `program` inside this namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// A command that runs `program` in this network namespace but the caller's mount
    /// namespace (`nsenter --net=`), so it sees the host's /sys/fs/bpf, unlike `cmd`.
    pub fn nsenter_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        cmd
    }

    /// A command that runs `program` inside this namespace as nobody, with no
    /// capabilities at all (for the "missing privileges" paths).
    pub fn cmd_unprivileged(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
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

    /// Reads a TCP MIB counter (e.g. `InCsumErrors`) from this namespace's /proc/net/snmp.
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
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Client and server namespaces joined by a veth pair, with IPv4 and IPv6 addresses
/// (private ranges, only inside these namespaces) and tx checksum offload off on both
/// ends so every packet carries a full checksum that the receiver verifies.
pub struct Topology {
    /// The client host.
    pub client: Netns,
    /// The server host (where the redirector runs).
    pub server: Netns,
    /// Server-side veth name (inside `server`).
    pub server_if: &'static str,
    /// Client-side veth name (inside `client`).
    pub client_if: &'static str,
    /// Server IPv4 address.
    pub server_v4: String,
    /// Server IPv6 address.
    pub server_v6: String,
    /// Client IPv4 address.
    pub client_v4: String,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Builds a fresh topology; `tag` (short) keeps names readable and unique per test.
    pub fn new(tag: &str) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let base = format!("rdrt-{tag}-{}-{id}", std::process::id());
        let client = Netns::new(&format!("{base}-c"));
        let server = Netns::new(&format!("{base}-s"));
        let (client_if, server_if) = ("veth-c", "veth-s");
        // Created inside the client namespace with the peer placed straight into the
        // server namespace: no name ever exists in the root namespace.
        must(Command::new("ip").args([
            "-n",
            &client.name,
            "link",
            "add",
            client_if,
            "type",
            "veth",
            "peer",
            "name",
            server_if,
            "netns",
            &server.name,
        ]));
        let subnet = 1 + (id % 250);
        let client_v4 = format!("10.77.{subnet}.1");
        let server_v4 = format!("10.77.{subnet}.2");
        let client_v6 = format!("fd00:77:{subnet}::1");
        let server_v6 = format!("fd00:77:{subnet}::2");
        for (ns, ifname, v4, v6) in [
            (&client, client_if, &client_v4, &client_v6),
            (&server, server_if, &server_v4, &server_v6),
        ] {
            must(
                ns.cmd("ip")
                    .args(["addr", "add", &format!("{v4}/24"), "dev", ifname]),
            );
            must(ns.cmd("ip").args([
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]));
            must(ns.cmd("ip").args(["link", "set", ifname, "up"]));
            must(ns.cmd("ethtool").args(["-K", ifname, "tx", "off"]));
        }
        Topology {
            client,
            server,
            server_if,
            client_if,
            server_v4,
            server_v6,
            client_v4,
        }
    }

    /// `ws://` or `wss://` URL of the server on `port`, IPv4 or IPv6.
    pub fn url(&self, scheme: &str, v6: bool, port: u16) -> String {
        if v6 {
            format!("{scheme}://[{}]:{port}/", self.server_v6)
        } else {
            format!("{scheme}://{}:{port}/", self.server_v4)
        }
    }

    /// Checksum errors seen by TCP in either namespace.
    pub fn csum_errors(&self) -> u64 {
        self.client.tcp_counter("InCsumErrors") + self.server.tcp_counter("InCsumErrors")
    }
}
