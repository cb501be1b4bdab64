//! The kernel's SYN cookies as a packet sees them: is this ACK the answer to a SYN-ACK
//! the server's kernel sent with a cookie (no request socket kept)?
//!
//! The check runs the kernel's own cookie code (`bpf_tcp_raw_check_syncookie_ipv4/6`,
//! Linux 6.0) on copies of the packet's addresses and sequence numbers, with the
//! destination port the server's socket uses: the rule's TO port. A blind sender cannot
//! pass it: the cookie is the SYN-ACK's sequence number, keyed by a secret of the kernel.

use aya_ebpf::helpers::generated::{
    bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
};
use redirector_common::addr::as_v4;

use crate::parse::TcpPacket;

/// Bytes of `struct iphdr` without options: the helper reads exactly this many.
const IPV4_HDR_LEN: usize = 20;
/// Bytes of `struct ipv6hdr`.
const IPV6_HDR_LEN: usize = 40;
/// Bytes of `struct tcphdr` without options.
const TCP_HDR_LEN: usize = 20;

/// True if `pkt` (an ACK of no tracked flow) carries a valid SYN cookie of the server's
/// kernel for its tuple with destination port `server_port_be`.
#[inline(always)]
pub fn valid(pkt: &TcpPacket, server_port_be: u16) -> bool {
    let mut tcp = [0u8; TCP_HDR_LEN];
    tcp[0..2].copy_from_slice(&pkt.src_port_be.to_ne_bytes());
    tcp[2..4].copy_from_slice(&server_port_be.to_ne_bytes());
    tcp[4..8].copy_from_slice(&pkt.seq_be.to_ne_bytes());
    tcp[8..12].copy_from_slice(&pkt.ack_be.to_ne_bytes());
    let ret = match (as_v4(&pkt.src_addr), as_v4(&pkt.dst_addr)) {
        (Some(src), Some(dst)) => {
            let mut ip = [0u8; IPV4_HDR_LEN];
            ip[12..16].copy_from_slice(&src);
            ip[16..20].copy_from_slice(&dst);
            // SAFETY: both pointers are initialised stack buffers of the sizes of the
            // kernel's `struct iphdr` and `struct tcphdr`, which the helper reads and never
            // writes or keeps.
            unsafe {
                bpf_tcp_raw_check_syncookie_ipv4(ip.as_mut_ptr().cast(), tcp.as_mut_ptr().cast())
            }
        }
        _ => {
            let mut ip = [0u8; IPV6_HDR_LEN];
            ip[8..24].copy_from_slice(&pkt.src_addr);
            ip[24..40].copy_from_slice(&pkt.dst_addr);
            // SAFETY: as above, with the size of `struct ipv6hdr`.
            unsafe {
                bpf_tcp_raw_check_syncookie_ipv6(ip.as_mut_ptr().cast(), tcp.as_mut_ptr().cast())
            }
        }
    };
    ret == 0
}
