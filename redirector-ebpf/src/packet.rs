//! Port rewrite with a correct TCP checksum, for each hook's kind of packet buffer.
//!
//! XDP sees the frame as the NIC delivered it, with a full checksum, and updates it
//! incrementally (RFC 1624). TC works on skbs that may be CHECKSUM_PARTIAL (locally
//! generated replies): there the kernel helper `bpf_l4_csum_replace` knows whether the
//! field holds a full checksum or only the pseudo-header seed, and does the right thing.

use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::tcp::TcpHdr;
use redirector_common::{conntrack::Direction, csum, stats::Counter};

use crate::{
    flow::Rewrite,
    maps::{count, with_rule_stats},
    parse::{Bounds, TcpPacket, TCP_CHECK_OFF, TCP_DPORT_OFF, TCP_SPORT_OFF},
};

/// A hook's packet buffer: where its bytes are and how to rewrite a TCP port.
pub trait PacketBuf {
    /// The linear bytes directly accessible to the program.
    fn bounds(&self) -> Bounds;

    /// Replaces the 16-bit TCP port at `l4_off + port_off` (`old_be` → `new_be`, both
    /// network order) and fixes the TCP checksum. The port is not in the pseudo header,
    /// so the IP checksum never changes.
    fn rewrite_port(
        &self,
        l4_off: usize,
        port_off: usize,
        old_be: u16,
        new_be: u16,
    ) -> Result<(), Counter>;
}

impl PacketBuf for XdpContext {
    #[inline(always)]
    fn bounds(&self) -> Bounds {
        Bounds {
            start: self.data(),
            end: self.data_end(),
        }
    }

    #[inline(always)]
    fn rewrite_port(
        &self,
        l4_off: usize,
        port_off: usize,
        old_be: u16,
        new_be: u16,
    ) -> Result<(), Counter> {
        // One pointer to the whole fixed TCP header, one bounds check (see parse.rs).
        let tcp = self.bounds().ptr_at::<[u8; TcpHdr::LEN]>(l4_off)?;
        // SAFETY: `ptr_at` checked the whole header against data_end just above; byte
        // arrays need no alignment; `port_off` is 0 or 2 and the checksum at 16..18, all
        // inside the 20-byte header.
        let tcp = unsafe { &mut *tcp };
        let old_check = u16::from_ne_bytes([tcp[TCP_CHECK_OFF], tcp[TCP_CHECK_OFF + 1]]);
        let new_check = csum::replace_u16(old_check, old_be, new_be);
        tcp[port_off..port_off + 2].copy_from_slice(&new_be.to_ne_bytes());
        tcp[TCP_CHECK_OFF..TCP_CHECK_OFF + 2].copy_from_slice(&new_check.to_ne_bytes());
        Ok(())
    }
}

impl PacketBuf for TcContext {
    #[inline(always)]
    fn bounds(&self) -> Bounds {
        Bounds {
            start: self.data(),
            end: self.data_end(),
        }
    }

    #[inline(always)]
    fn rewrite_port(
        &self,
        l4_off: usize,
        port_off: usize,
        old_be: u16,
        new_be: u16,
    ) -> Result<(), Counter> {
        // Checksum first: if it fails the packet is still untouched and consistent.
        // Size 2 in the flags, no BPF_F_PSEUDO_HDR: a port is not in the pseudo header.
        self.l4_csum_replace(l4_off + TCP_CHECK_OFF, old_be as u64, new_be as u64, 2)
            .map_err(|_| Counter::RewriteFailed)?;
        self.store(l4_off + port_off, &new_be, 0)
            .map_err(|_| Counter::RewriteFailed)
    }
}

/// Rewrites the port `rewrite` names (destination towards the server, source towards the
/// client) and accounts for it in the global and per-rule counters.
#[inline(always)]
pub fn apply<P: PacketBuf>(
    ctx: &P,
    pkt: &TcpPacket,
    rewrite: Rewrite,
    dir: Direction,
) -> Result<(), Counter> {
    let port_off = match dir {
        Direction::ToServer => TCP_DPORT_OFF,
        Direction::ToClient => TCP_SPORT_OFF,
    };
    ctx.rewrite_port(
        pkt.l4_off,
        port_off,
        rewrite.old_port_be,
        rewrite.new_port_be,
    )?;
    let bytes = pkt.l3_len as u64;
    match dir {
        Direction::ToServer => {
            count(Counter::RewriteIngress);
            with_rule_stats(rewrite.rule_slot, |s| {
                s.packets_in += 1;
                s.bytes_in += bytes;
            });
        }
        Direction::ToClient => {
            count(Counter::RewriteEgress);
            with_rule_stats(rewrite.rule_slot, |s| {
                s.packets_out += 1;
                s.bytes_out += bytes;
            });
        }
    }
    Ok(())
}
