//! Source prefixes (`--allow CIDR`) and their encoding as LPM-trie keys.

use std::{fmt, str::FromStr};

use ipnet::IpNet;
use redirector_common::addr::{as_v4, v4_mapped, V4_MAPPED_PREFIX_BITS};

/// An allowed source prefix, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePrefix(IpNet);

/// A prefix that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --allow prefix `{0}`: expected an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or 2001:db8::/32")]
pub struct SourcePrefixError(String);

impl FromStr for SourcePrefix {
    type Err = SourcePrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            // A bare address means just that host.
            Err(_) => text
                .parse::<std::net::IpAddr>()
                .map(IpNet::from)
                .map_err(|_| SourcePrefixError(text.to_string()))?,
        };
        Ok(SourcePrefix(net.trunc()))
    }
}

impl SourcePrefix {
    /// The LPM key: prefix length and 16-byte address (IPv4 as mapped IPv6).
    pub fn lpm_key(&self) -> (u32, [u8; 16]) {
        match self.0 {
            IpNet::V4(v4) => (
                V4_MAPPED_PREFIX_BITS + u32::from(v4.prefix_len()),
                v4_mapped(v4.addr().octets()),
            ),
            IpNet::V6(v6) => (u32::from(v6.prefix_len()), v6.addr().octets()),
        }
    }

    /// The prefix an LPM key stands for (the inverse of [`SourcePrefix::lpm_key`]); `None`
    /// for a length over 128.
    pub fn from_lpm_key(len: u32, addr: [u8; 16]) -> Option<Self> {
        let len = u8::try_from(len).ok()?;
        let net = match as_v4(&addr) {
            Some(v4) if u32::from(len) >= V4_MAPPED_PREFIX_BITS => {
                IpNet::V4(ipnet::Ipv4Net::new(v4.into(), len - V4_MAPPED_PREFIX_BITS as u8).ok()?)
            }
            _ => IpNet::V6(ipnet::Ipv6Net::new(addr.into(), len).ok()?),
        };
        Some(SourcePrefix(net.trunc()))
    }
}

impl fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_prefix_maps_into_v6_space() {
        let p: SourcePrefix = "10.1.2.3/8".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8");
        let (len, addr) = p.lpm_key();
        assert_eq!(len, 104);
        assert_eq!(&addr[10..], &[0xff, 0xff, 10, 0, 0, 0]);
    }

    #[test]
    fn v6_and_bare_addresses() {
        let (len, _) = "2001:db8::/32".parse::<SourcePrefix>().unwrap().lpm_key();
        assert_eq!(len, 32);
        let (len, _) = "192.0.2.7".parse::<SourcePrefix>().unwrap().lpm_key();
        assert_eq!(len, 128);
        assert!("10.0.0.0/33".parse::<SourcePrefix>().is_err());
        assert!("nonsense".parse::<SourcePrefix>().is_err());
    }

    #[test]
    fn lpm_keys_round_trip() {
        for text in [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0",
        ] {
            let p: SourcePrefix = text.parse().unwrap();
            let (len, addr) = p.lpm_key();
            assert_eq!(SourcePrefix::from_lpm_key(len, addr), Some(p), "{text}");
        }
        assert_eq!(SourcePrefix::from_lpm_key(129, [0; 16]), None);
    }
}
