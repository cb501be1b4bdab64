//! Header parsing: Ethernet (+ up to two VLAN tags), IPv4 (any IHL), IPv6 (common
//! extension headers, bounded), TCP. The only module that dereferences packet pointers.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};
use redirector_common::{addr::v4_mapped, stats::Counter};

use crate::packet::PacketBuf as _;

/// Ethertypes in network byte order, as they sit in the frame.
const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();

/// IP protocol / IPv6 next-header numbers.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;

/// Most VLAN tags walked (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;
/// Most IPv6 extension headers walked before giving up (fail open).
const MAX_IPV6_EXT: usize = 4;

/// Offset of the checksum field inside the TCP header.
pub const TCP_CHECK_OFF: usize = 16;
/// Offset of the source port inside the TCP header.
pub const TCP_SPORT_OFF: usize = 0;
/// Offset of the destination port inside the TCP header.
pub const TCP_DPORT_OFF: usize = 2;
/// Offset of the flags byte inside the TCP header.
const TCP_FLAGS_OFF: usize = 13;
/// Offset of the sequence number in the TCP header.
const TCP_SEQ_OFF: usize = 4;
/// Offset of the acknowledgment number in the TCP header.
const TCP_ACK_OFF: usize = 8;

/// The linear packet bytes a program may touch: `[start, end)`.
#[derive(Clone, Copy)]
pub struct Bounds {
    pub start: usize,
    pub end: usize,
}

impl Bounds {
    /// Returns a pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
    ///
    /// The single bounds check every packet access goes through; the verifier sees the
    /// comparison against `data_end` right before each use.
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Result<*mut T, Counter> {
        if self.start + offset + size_of::<T>() > self.end {
            return Err(Counter::PassTruncated);
        }
        Ok((self.start + offset) as *mut T)
    }

    /// Reads a `T` at `offset` (unaligned: packet headers have no alignment guarantee).
    #[inline(always)]
    pub fn read<T: Copy>(&self, offset: usize) -> Result<T, Counter> {
        let ptr = self.ptr_at::<T>(offset)?;
        // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `ptr` are inside the
        // packet; `read_unaligned` needs no alignment; T is plain old data.
        Ok(unsafe { ptr.read_unaligned() })
    }
}

/// What the programs need from a TCP packet.
pub struct TcpPacket {
    /// Source address, IPv4 as mapped IPv6.
    pub src_addr: [u8; 16],
    /// Destination address, same encoding.
    pub dst_addr: [u8; 16],
    /// Offset of the TCP header from the start of the frame.
    pub l4_off: usize,
    /// Source port, network order.
    pub src_port_be: u16,
    /// Destination port, network order.
    pub dst_port_be: u16,
    /// TCP flags byte.
    pub flags: u8,
    /// Sequence number, the header's bytes as read (network order).
    pub seq_be: u32,
    /// Acknowledgment number, the header's bytes as read (network order).
    pub ack_be: u32,
    /// IP datagram length (header + payload), for byte counters.
    pub l3_len: u32,
}

/// Where the L3 header starts and which one it is.
struct L3 {
    off: usize,
    ether_type_be: u16,
}

/// Parses a frame down to its TCP header, or says why it will be passed untouched.
#[inline(always)]
pub fn parse_tcp(pkt: &Bounds) -> Result<TcpPacket, Counter> {
    let l3 = parse_l2(pkt)?;
    if l3.ether_type_be == ETH_P_IPV4_BE {
        parse_ipv4(pkt, l3.off)
    } else if l3.ether_type_be == ETH_P_IPV6_BE {
        parse_ipv6(pkt, l3.off)
    } else {
        Err(Counter::PassNotIp)
    }
}

/// Parses a TC packet, pulling headers into the linear area once if they are not there.
#[inline(always)]
pub fn parse_tc(ctx: &TcContext) -> Result<TcpPacket, Counter> {
    match parse_tcp(&ctx.bounds()) {
        Err(Counter::PassTruncated) => {
            let linear = ctx.data_end() - ctx.data();
            let total = ctx.len() as usize;
            if total <= linear {
                return Err(Counter::PassTruncated);
            }
            // Enough for Ethernet + 2 VLAN tags + IPv6 with extension headers + TCP.
            let want = if total < PULL_LEN { total } else { PULL_LEN };
            ctx.pull_data(want as u32)
                .map_err(|_| Counter::PassTruncated)?;
            parse_tcp(&ctx.bounds())
        }
        other => other,
    }
}

/// Bytes pulled into the linear area when headers are split across fragments.
const PULL_LEN: usize = 256;

/// Skips the Ethernet header and up to `MAX_VLAN_TAGS` VLAN tags.
#[inline(always)]
fn parse_l2(pkt: &Bounds) -> Result<L3, Counter> {
    let eth: EthHdr = pkt.read(0)?;
    let mut off = EthHdr::LEN;
    let mut ether_type_be = eth.ether_type;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type_be != ETH_P_8021Q_BE && ether_type_be != ETH_P_8021AD_BE {
            return Ok(L3 { off, ether_type_be });
        }
        let vlan: VlanHdr = pkt.read(off)?;
        ether_type_be = vlan.ether_type;
        off += VlanHdr::LEN;
    }
    if ether_type_be == ETH_P_8021Q_BE || ether_type_be == ETH_P_8021AD_BE {
        return Err(Counter::PassVlanDepth);
    }
    Ok(L3 { off, ether_type_be })
}

/// Parses IPv4 with any header length; non-first fragments pass (they carry no ports).
#[inline(always)]
fn parse_ipv4(pkt: &Bounds, off: usize) -> Result<TcpPacket, Counter> {
    let ip: Ipv4Hdr = pkt.read(off)?;
    let ihl_bytes = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl_bytes < Ipv4Hdr::LEN {
        return Err(Counter::PassBadIpHeader);
    }
    let frag_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
    if frag_offset != 0 {
        return Err(Counter::PassFragment);
    }
    if ip.proto != IPPROTO_TCP {
        return Err(Counter::PassNotTcp);
    }
    let l3_len = u16::from_be_bytes(ip.tot_len) as u32;
    parse_tcp_header(
        pkt,
        off + ihl_bytes,
        v4_mapped(ip.src_addr),
        v4_mapped(ip.dst_addr),
        l3_len,
    )
}

/// Parses IPv6, walking at most `MAX_IPV6_EXT` extension headers.
#[inline(always)]
fn parse_ipv6(pkt: &Bounds, off: usize) -> Result<TcpPacket, Counter> {
    let ip: Ipv6Hdr = pkt.read(off)?;
    if ip.vcf[0] >> 4 != 6 {
        return Err(Counter::PassBadIpHeader);
    }
    let l3_len = u16::from_be_bytes(ip.payload_len) as u32 + Ipv6Hdr::LEN as u32;
    let mut next_hdr = ip.next_hdr;
    let mut l4_off = off + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT {
        match next_hdr {
            IPPROTO_TCP => break,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                // Generic TLV-style header: next header, length in 8-octet units minus one.
                let ext: [u8; 2] = pkt.read(l4_off)?;
                next_hdr = ext[0];
                l4_off += (ext[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                // Fixed 8 bytes; only the first fragment (offset 0) carries the TCP header.
                let frag: [u8; 4] = pkt.read(l4_off)?;
                if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
                    return Err(Counter::PassFragment);
                }
                next_hdr = frag[0];
                l4_off += 8;
            }
            IPPROTO_AH => {
                // Authentication header: length in 4-octet units minus two.
                let ext: [u8; 2] = pkt.read(l4_off)?;
                next_hdr = ext[0];
                l4_off += (ext[1] as usize + 2) * 4;
            }
            IPPROTO_ESP => return Err(Counter::PassIpv6ExtUnsupported),
            _ => return Err(Counter::PassNotTcp),
        }
    }
    if next_hdr != IPPROTO_TCP {
        return Err(if is_ipv6_ext(next_hdr) {
            Counter::PassIpv6ExtUnsupported
        } else {
            Counter::PassNotTcp
        });
    }
    parse_tcp_header(pkt, l4_off, ip.src_addr, ip.dst_addr, l3_len)
}

/// True for next-header values that are IPv6 extension headers rather than payloads.
#[inline(always)]
fn is_ipv6_ext(next_hdr: u8) -> bool {
    matches!(
        next_hdr,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_ESP
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
    )
}

/// Reads ports and flags of the TCP header at `l4_off`.
#[inline(always)]
fn parse_tcp_header(
    pkt: &Bounds,
    l4_off: usize,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    l3_len: u32,
) -> Result<TcpPacket, Counter> {
    // One read of the whole fixed header: it proves the checksum field we may rewrite is
    // there, and a second, narrower access would get its bounds check folded away by LLVM
    // into one the verifier cannot see.
    let tcp: [u8; TcpHdr::LEN] = pkt.read(l4_off)?;
    Ok(TcpPacket {
        src_addr,
        dst_addr,
        l4_off,
        src_port_be: u16::from_ne_bytes([tcp[TCP_SPORT_OFF], tcp[TCP_SPORT_OFF + 1]]),
        dst_port_be: u16::from_ne_bytes([tcp[TCP_DPORT_OFF], tcp[TCP_DPORT_OFF + 1]]),
        flags: tcp[TCP_FLAGS_OFF],
        seq_be: u32::from_ne_bytes([
            tcp[TCP_SEQ_OFF],
            tcp[TCP_SEQ_OFF + 1],
            tcp[TCP_SEQ_OFF + 2],
            tcp[TCP_SEQ_OFF + 3],
        ]),
        ack_be: u32::from_ne_bytes([
            tcp[TCP_ACK_OFF],
            tcp[TCP_ACK_OFF + 1],
            tcp[TCP_ACK_OFF + 2],
            tcp[TCP_ACK_OFF + 3],
        ]),
        l3_len,
    })
}
