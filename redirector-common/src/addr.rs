//! Address encoding used in map keys: every address is 16 bytes, IPv4 as IPv4-mapped IPv6.

/// Prefix of an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Number of prefix bits an IPv4 prefix length gains once mapped into IPv6.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Encodes IPv4 octets (network order, as on the wire) as an IPv4-mapped IPv6 address.
#[inline(always)]
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Returns the IPv4 octets if `addr` is an IPv4-mapped IPv6 address.
#[inline(always)]
pub fn as_v4(addr: &[u8; 16]) -> Option<[u8; 4]> {
    if addr[..12] == V4_MAPPED_PREFIX {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trip() {
        let mapped = v4_mapped([10, 1, 2, 3]);
        assert_eq!(as_v4(&mapped), Some([10, 1, 2, 3]));
        assert_eq!(as_v4(&[0u8; 16]), None);
    }
}
