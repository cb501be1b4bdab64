//! PROXY protocol headers (HAProxy's spec, versions 1 and 2) sent to backends ahead of the
//! client's bytes, so they learn the client's address although the proxy connects to them.

use std::{net::SocketAddr, str::FromStr};

use crate::option_value::{InvalidValue, Keyword};

/// Signature that starts every version 2 header.
const V2_SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];
/// Version 2, command PROXY.
const V2_VERSION_PROXY: u8 = 0x21;
/// Address family and transport: TCP over IPv4.
const V2_TCP4: u8 = 0x11;
/// Address family and transport: TCP over IPv6.
const V2_TCP6: u8 = 0x21;

/// Which header to send (`--proxy-protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Human-readable `PROXY TCP4 ...\r\n`.
    V1,
    /// Binary, with a 16-byte header.
    V2,
}

impl Keyword for ProxyProtocol {
    const OPTION: &'static str = "proxy-protocol";
    const KEYWORDS: &'static [(&'static str, Self)] =
        &[("v1", ProxyProtocol::V1), ("v2", ProxyProtocol::V2)];
}

impl FromStr for ProxyProtocol {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_keyword(s)
    }
}

impl ProxyProtocol {
    /// The header for a connection from `client` that arrived at `local` (the proxy's
    /// address the client connected to). Mixed families (an IPv4 client on a dual-stack
    /// IPv6 socket) are sent as IPv6 with the IPv4 address mapped.
    pub fn header(self, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        let (client, local) = same_family(client, local);
        match self {
            ProxyProtocol::V1 => v1(client, local),
            ProxyProtocol::V2 => v2(client, local),
        }
    }
}

/// Both addresses as IPv4 if both are (or are mapped) IPv4, else both as IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |addr: SocketAddr| match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    };
    let (a, b) = (unmap(a), unmap(b));
    let to_v6 = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        SocketAddr::V6(_) => addr,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (to_v6(a), to_v6(b))
    }
}

fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        local.ip(),
        client.port(),
        local.port()
    )
    .into_bytes()
}

fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut addresses = Vec::with_capacity(36);
    let family = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            addresses.extend_from_slice(&c.ip().octets());
            addresses.extend_from_slice(&l.ip().octets());
            V2_TCP4
        }
        _ => {
            addresses.extend_from_slice(&ipv6_octets(client));
            addresses.extend_from_slice(&ipv6_octets(local));
            V2_TCP6
        }
    };
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&local.port().to_be_bytes());
    let mut header = V2_SIGNATURE.to_vec();
    header.push(V2_VERSION_PROXY);
    header.push(family);
    header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}

fn ipv6_octets(addr: SocketAddr) -> [u8; 16] {
    match addr {
        SocketAddr::V6(v6) => v6.ip().octets(),
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped().octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_ipv4() {
        let header = ProxyProtocol::V1.header(addr("192.0.2.1:56324"), addr("198.51.100.7:443"));
        assert_eq!(header, b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n");
    }

    #[test]
    fn v1_ipv6_and_mapped() {
        let header = ProxyProtocol::V1.header(addr("[2001:db8::1]:1000"), addr("[::1]:80"));
        assert_eq!(header, b"PROXY TCP6 2001:db8::1 ::1 1000 80\r\n");
        // An IPv4 client on a dual-stack socket is reported as IPv4.
        let header =
            ProxyProtocol::V1.header(addr("[::ffff:10.0.0.1]:5"), addr("[::ffff:10.0.0.2]:80"));
        assert_eq!(header, b"PROXY TCP4 10.0.0.1 10.0.0.2 5 80\r\n");
        // Mixed families become IPv6.
        let header = ProxyProtocol::V1.header(addr("10.0.0.1:5"), addr("[2001:db8::2]:80"));
        assert_eq!(header, b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 5 80\r\n");
    }

    #[test]
    fn v2_ipv4_bytes() {
        let header = ProxyProtocol::V2.header(addr("192.0.2.1:56324"), addr("198.51.100.7:443"));
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        expected.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
        expected.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]); // 56324, 443
        assert_eq!(header, expected);
    }

    #[test]
    fn v2_ipv6_bytes() {
        let header = ProxyProtocol::V2.header(addr("[2001:db8::1]:1000"), addr("[::1]:80"));
        assert_eq!(&header[..12], &V2_SIGNATURE);
        assert_eq!(&header[12..16], &[0x21, 0x21, 0x00, 0x24]);
        let mut client = [0u8; 16];
        client[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        client[15] = 1;
        assert_eq!(&header[16..32], &client);
        let mut local = [0u8; 16];
        local[15] = 1;
        assert_eq!(&header[32..48], &local);
        assert_eq!(&header[48..], &[0x03, 0xe8, 0x00, 0x50]);
        assert_eq!(header.len(), 16 + 36);
    }

    #[test]
    fn parse_versions() {
        assert_eq!("v1".parse::<ProxyProtocol>().unwrap(), ProxyProtocol::V1);
        assert_eq!("v2".parse::<ProxyProtocol>().unwrap(), ProxyProtocol::V2);
        assert!("v3".parse::<ProxyProtocol>().is_err());
    }
}
