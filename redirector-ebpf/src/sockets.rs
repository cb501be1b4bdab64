//! The kernel's socket table as a packet sees it: is a connection with this tuple alive on
//! a port, and which socket sent this packet. The kernel is the judge of when a
//! connection ends; these are the only places that ask it.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    helpers::generated::{
        bpf_get_socket_cookie, bpf_sk_fullsock, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    programs::TcContext,
};
use redirector_common::addr::as_v4;

use crate::parse::TcpPacket;

/// `TCP_ESTABLISHED` (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u32 = 1;
/// `TCP_LAST_ACK`, the last state of a connection (`TCP_TIME_WAIT` = 6, `TCP_CLOSE` = 7:
/// the connection is over, or a kernel control socket that sends RSTs; `TCP_LISTEN` = 10).
const TCP_LAST_ACK: u32 = 9;
/// `TCP_LISTEN`: a lookup that finds no connection returns the port's listener, if any.
pub const TCP_LISTEN: u32 = 10;
/// `TCP_CLOSING`: both sides closed at once, still a connection.
const TCP_CLOSING: u32 = 11;
/// `TCP_NEW_SYN_RECV`: a request socket, the handshake not yet complete.
pub const TCP_NEW_SYN_RECV: u32 = 12;
/// `TCP_FIN_WAIT2`, the last of the states from `TCP_ESTABLISHED` on that are connections.
const TCP_FIN_WAIT2: u32 = 5;
/// `TCP_CLOSE_WAIT`.
const TCP_CLOSE_WAIT: u32 = 8;

/// Bytes of the IPv4 part of `struct bpf_sock_tuple` (the helper's `tuple_size`).
const TUPLE_V4_SIZE: u32 = 12;
/// Bytes of the IPv6 part of `struct bpf_sock_tuple`.
const TUPLE_V6_SIZE: u32 = 36;

/// True for the TCP states of a connection the kernel still holds open (or is
/// establishing): not TIME_WAIT or CLOSE (over), not a listener, not a socket of no TCP
/// state at all.
#[inline(always)]
pub const fn is_connection(state: u32) -> bool {
    matches!(
        state,
        TCP_ESTABLISHED
            ..=TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING | TCP_NEW_SYN_RECV
    )
}

/// The TCP state of the socket in the packet's network namespace that holds the
/// connection of `pkt`'s tuple (client → server) if its destination port were
/// `server_port_be`, or `None` if there is no such socket. A listener on that port is
/// reported as `TCP_LISTEN` (the lookup falls back to it): callers check the state.
///
/// `ctx` is the program's context pointer (XDP or TC), which the helper needs to find
/// the namespace.
#[inline(always)]
pub fn state_of(ctx: *mut core::ffi::c_void, pkt: &TcpPacket, server_port_be: u16) -> Option<u32> {
    // SAFETY: an all-zero `bpf_sock_tuple` (a union of two structs of integers) is valid.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = match (as_v4(&pkt.src_addr), as_v4(&pkt.dst_addr)) {
        (Some(src), Some(dst)) => {
            // SAFETY: writing plain integers into the union's IPv4 view.
            let v4 = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
            v4.saddr = u32::from_ne_bytes(src);
            v4.daddr = u32::from_ne_bytes(dst);
            v4.sport = pkt.src_port_be;
            v4.dport = server_port_be;
            TUPLE_V4_SIZE
        }
        _ => {
            // SAFETY: writing plain integers into the union's IPv6 view.
            let v6 = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
            v6.saddr = words(&pkt.src_addr);
            v6.daddr = words(&pkt.dst_addr);
            v6.sport = pkt.src_port_be;
            v6.dport = server_port_be;
            TUPLE_V6_SIZE
        }
    };
    // SAFETY: `ctx` is the context pointer the kernel passed to this program; `tuple` is
    // a stack value of at least `size` bytes; the netns argument is the helper's
    // documented "this packet's namespace" and no flags are defined.
    let sk = unsafe { bpf_skc_lookup_tcp(ctx, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null result is a referenced `sock_common`, whose `state` the
    // verifier lets every program read; it is released right after.
    let state = unsafe { (*sk).state };
    // SAFETY: `sk` was acquired by the lookup above and is released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    Some(state)
}

/// True if a socket owns the connection of `pkt`'s tuple on `server_port_be` (not merely
/// a listener of that port).
#[inline(always)]
pub fn owns(ctx: *mut core::ffi::c_void, pkt: &TcpPacket, server_port_be: u16) -> bool {
    state_of(ctx, pkt, server_port_be).is_some_and(|state| state != TCP_LISTEN)
}

/// The full socket that sent this TC packet, as its cookie and TCP state; `None` for a
/// forwarded packet (no socket) or one sent from a request or time-wait socket.
#[inline(always)]
pub fn own_socket(ctx: &TcContext) -> Option<(u64, u32)> {
    // SAFETY: `skb` is the context pointer the kernel passed to this TC program; `sk` is
    // a readable field (the verifier types it as a nullable `sock_common`).
    let sk: *mut bpf_sock = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the packet's non-null socket; the helper returns it as a full
    // socket or null, and needs no release (nothing was acquired).
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // SAFETY: a non-null full socket's `state` is readable.
    let state = unsafe { (*full).state };
    // SAFETY: the TC context pointer; the helper reads the cookie of `skb->sk`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    Some((cookie, state))
}

/// A 16-byte address as the four 32-bit words of `bpf_sock_tuple`, byte order kept.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
