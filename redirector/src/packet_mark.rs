//! `--mark VALUE[/MASK]`: the packet mark set on redirected inbound packets, so that a host
//! firewall can accept exactly those (`meta mark & MASK == VALUE`) while INPUT sees their
//! new port (8080/8443) and direct connections to that port stay closed.

use std::{fmt, str::FromStr};

/// A mark value and the bits of `skb->mark` it owns (other bits are left as they were).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMark {
    /// Value written into the masked bits.
    pub value: u32,
    /// Bits of the mark that are ours.
    pub mask: u32,
}

/// `--mark` did not parse or makes no sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketMarkError {
    /// A part is not a decimal or `0x` hexadecimal 32-bit number.
    #[error("invalid --mark `{0}`: expected VALUE or VALUE/MASK, decimal or 0x-hex 32-bit numbers, e.g. 0x42/0xff")]
    Syntax(String),
    /// Zero would be indistinguishable from an unmarked packet.
    #[error("invalid --mark `{0}`: the value must not be 0 within its mask (an unmarked packet has mark 0)")]
    Zero(String),
    /// The value has bits outside the mask.
    #[error("invalid --mark `{0}`: the value has bits outside the mask")]
    OutsideMask(String),
}

fn number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl FromStr for PacketMark {
    type Err = PacketMarkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || PacketMarkError::Syntax(text.to_string());
        let (value, mask) = match text.split_once('/') {
            Some((value, mask)) => (
                number(value).ok_or_else(syntax)?,
                number(mask).ok_or_else(syntax)?,
            ),
            None => (number(text).ok_or_else(syntax)?, u32::MAX),
        };
        if value & !mask != 0 {
            return Err(PacketMarkError::OutsideMask(text.to_string()));
        }
        if value == 0 {
            return Err(PacketMarkError::Zero(text.to_string()));
        }
        Ok(PacketMark { value, mask })
    }
}

impl fmt::Display for PacketMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}/{:#x}", self.value, self.mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_value_and_mask_in_hex_or_decimal() {
        assert_eq!(
            "0x42/0xff".parse(),
            Ok(PacketMark {
                value: 0x42,
                mask: 0xff
            })
        );
        assert_eq!(
            "66".parse(),
            Ok(PacketMark {
                value: 66,
                mask: u32::MAX
            })
        );
        assert_eq!(
            "0x42/0xff".parse::<PacketMark>().unwrap().to_string(),
            "0x42/0xff"
        );
    }

    #[test]
    fn refuses_what_a_firewall_could_not_match() {
        assert!(matches!(
            "".parse::<PacketMark>(),
            Err(PacketMarkError::Syntax(_))
        ));
        assert!(matches!(
            "x/1".parse::<PacketMark>(),
            Err(PacketMarkError::Syntax(_))
        ));
        assert!(matches!(
            "0x1ff/0xff".parse::<PacketMark>(),
            Err(PacketMarkError::OutsideMask(_))
        ));
        assert!(matches!(
            "0/0xff".parse::<PacketMark>(),
            Err(PacketMarkError::Zero(_))
        ));
        assert!(matches!(
            "4294967296".parse::<PacketMark>(),
            Err(PacketMarkError::Syntax(_))
        ));
    }
}
