//! Internet checksum arithmetic (RFC 1071) and incremental update (RFC 1624).
//!
//! One's-complement sums are byte-order independent, so these functions take 16-bit
//! words exactly as they sit in packet memory (network order, read as native `u16`).

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Updates checksum field `check` after one 16-bit word changed from `old` to `new`.
///
/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`. Unlike eqn. 2 it never produces the
/// "negative zero" 0xFFFF for a header whose true checksum is 0x0000.
#[inline(always)]
pub const fn replace_u16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// One's-complement sum of `data` (odd trailing byte padded with zero), added to `initial`.
///
/// Words are taken big-endian, so the result is in host order; byte-swap it before
/// storing into a packet. Used by user space and tests; the eBPF side only updates
/// checksums incrementally.
pub fn sum_be(initial: u32, data: &[u8]) -> u32 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u16::from_be_bytes([pair[0], pair[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_be_bytes([*last, 0]) as u64;
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full checksum of `data` in host order, the way a sender computes it.
    fn full(data: &[u8]) -> u16 {
        !fold(sum_be(0, data))
    }

    #[test]
    fn incremental_matches_full_recompute() {
        // A TCP-like header with a checksum field at bytes 16..18, for many port values.
        let mut seg = [0u8; 40];
        for (i, b) in seg.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        for new_port in [0u16, 1, 80, 443, 8080, 8443, 0xfffe, 0xffff] {
            let mut s = seg;
            s[16] = 0;
            s[17] = 0;
            let c = full(&s);
            s[16..18].copy_from_slice(&c.to_be_bytes());
            let old_raw = u16::from_ne_bytes([s[2], s[3]]);
            let new_raw = u16::from_ne_bytes(new_port.to_be_bytes());
            let check_raw = u16::from_ne_bytes([s[16], s[17]]);
            s[2..4].copy_from_slice(&new_port.to_be_bytes());
            let updated = replace_u16(check_raw, old_raw, new_raw);
            s[16..18].copy_from_slice(&updated.to_ne_bytes());
            // A correct checksum makes the whole segment sum to 0xffff.
            assert_eq!(fold(sum_be(0, &s)), 0xffff, "port {new_port}");
        }
    }

    #[test]
    fn odd_length_is_zero_padded() {
        assert_eq!(sum_be(0, &[0x12]), 0x1200);
        assert_eq!(sum_be(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
