//! What the kernel knows about the connections behind the flow entries, asked in batches:
//! its TCP socket table ([`sock_diag`]) and netfilter's conntrack ([`conntrack`], for flows
//! forwarded on into another namespace), both read over netlink in the loader's network
//! namespace. The reaper ([`crate::reaper`]) follows these answers.

pub mod conntrack;
pub(crate) mod netlink;
pub mod sock_diag;

use std::net::IpAddr;

use redirector_common::maps::{FlowKey, FlowValue};

pub use netlink::NetlinkError;

/// A TCP connection as its server sees it: the server socket's local address and port,
/// the client's address and port. Addresses are 16 bytes, IPv4 as IPv4-mapped IPv6 (the
/// [`FlowKey`] encoding); ports are in host order.
///
/// The server socket of a redirected flow has local = (server addr, TO port) and remote =
/// (client addr, client port); netfilter tracks the same connection with the ORIGINAL
/// tuple client → server on the TO port (the redirect happens before netfilter sees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerTuple {
    /// The server's address (the socket's local address), FlowKey encoding.
    pub server_addr: [u8; 16],
    /// The server's port (the rule's TO port for a redirected flow), host order.
    pub server_port: u16,
    /// The client's address, FlowKey encoding.
    pub client_addr: [u8; 16],
    /// The client's port, host order.
    pub client_port: u16,
}

impl ServerTuple {
    /// The connection behind a flow entry: the server socket on the flow's TO port.
    pub fn of_flow(key: &FlowKey, flow: &FlowValue) -> Self {
        ServerTuple {
            server_addr: key.server_addr,
            server_port: flow.target_port,
            client_addr: key.client_addr,
            client_port: u16::from_be(key.client_port_be),
        }
    }

    /// True if both addresses are IPv4 (as mapped IPv6).
    pub fn is_v4(&self) -> bool {
        is_v4_mapped(&self.server_addr) && is_v4_mapped(&self.client_addr)
    }
}

/// `addr` in the FlowKey encoding: IPv4 as IPv4-mapped IPv6, network order.
pub fn encode_addr(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// IPv4 address bytes (network order) in the FlowKey encoding.
fn mapped_v4(octets: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12..].copy_from_slice(&octets);
    out
}

/// True for an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10..12] == [0xff, 0xff]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_names_its_server_socket() {
        let key = FlowKey {
            client_addr: encode_addr("10.0.0.2".parse().unwrap()),
            server_addr: encode_addr("10.0.0.1".parse().unwrap()),
            client_port_be: 40_000u16.to_be(),
            lane: 0,
        };
        let flow = FlowValue {
            orig_port: 80,
            target_port: 8080,
            state: 3,
            fin_flags: 0,
            flags: 0,
            rule_slot: 0,
            _pad2: 0,
            created_ns: 0,
            last_seen_ns: 0,
        };
        let tuple = ServerTuple::of_flow(&key, &flow);
        assert_eq!(tuple.server_port, 8080);
        assert_eq!(tuple.client_port, 40_000);
        assert_eq!(tuple.server_addr, mapped_v4([10, 0, 0, 1]));
        assert!(tuple.is_v4());
        let v6 = ServerTuple {
            server_addr: encode_addr("::1".parse().unwrap()),
            ..tuple
        };
        assert!(!v6.is_v4());
    }
}
