//! Local clients: cgroup `connect4`/`connect6` rewrite the destination port FROM→TO of a
//! TCP connect from the loader's network namespace to one of its own addresses (such
//! traffic never crosses the interfaces' XDP/TC hooks); `getpeername4`/`getpeername6`
//! give the application back the FROM port it asked for.
//!
//! Every program returns 1 ("go on"): a cgroup sock_addr program that returns 0 makes
//! the syscall fail with EPERM, which redirector never wants.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
    EbpfContext,
};
use redirector_common::{maps::LocalPeer, stats::Counter};

use crate::maps::{
    count, loader_netns_cookie, source_allowed, with_rule_stats, LOCAL_ADDRS, LOCAL_PEERS, RULES,
};

/// The verdict that lets the syscall proceed (the only one getpeername accepts).
pub const PROCEED: i32 = 1;

/// `SOCK_STREAM`: only TCP connects are redirected (the kernel runs these hooks for UDP
/// `connect` too).
const SOCK_STREAM: u32 = 1;

/// `connect4`: the destination of an IPv4 connect, as a mapped IPv6 address.
#[inline(always)]
pub fn connect4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context pointer the kernel passed to this program, valid for
    // the whole run; `type_`, `user_ip4` and `user_port` are readable 4-byte fields of
    // `bpf_sock_addr` for connect4.
    let (sock_type, ip4, port_field) = unsafe { ((*sa).type_, (*sa).user_ip4, (*sa).user_port) };
    if sock_type != SOCK_STREAM {
        return PROCEED;
    }
    // `user_ip4` holds the address in network order: its bytes in memory are the address.
    let [a, b, c, d] = ip4.to_ne_bytes();
    let addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d];
    if let Some(to_port) = redirect_to(ctx, &addr, port_field) {
        // SAFETY: as above; `user_port` is writable (4-byte store) in connect4.
        unsafe { (*sa).user_port = port_field_of(to_port) };
    }
    PROCEED
}

/// `connect6`: the same for IPv6 (and IPv4-mapped) destinations.
#[inline(always)]
pub fn connect6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in `connect4`; `user_ip6` words are readable with 4-byte loads in connect6.
    let (sock_type, ip6, port_field) = unsafe {
        let ip = &(*sa).user_ip6;
        ((*sa).type_, [ip[0], ip[1], ip[2], ip[3]], (*sa).user_port)
    };
    if sock_type != SOCK_STREAM {
        return PROCEED;
    }
    let mut addr = [0u8; 16];
    for (i, word) in ip6.iter().enumerate() {
        // Each word holds four address bytes in network order, as in `connect4`.
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    if let Some(to_port) = redirect_to(ctx, &addr, port_field) {
        // SAFETY: as in `connect4`; `user_port` is writable in connect6.
        unsafe { (*sa).user_port = port_field_of(to_port) };
    }
    PROCEED
}

/// `getpeername4`/`getpeername6`: a socket whose connect was redirected reports the port
/// the application connected to, not the one the kernel connected it to.
#[inline(always)]
pub fn getpeername(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in `connect4`: `type_` and `user_port` are readable in getpeername.
    let (sock_type, port_field) = unsafe { ((*sa).type_, (*sa).user_port) };
    if sock_type != SOCK_STREAM {
        return PROCEED;
    }
    // SAFETY: the helper only reads the socket behind the context the kernel passed.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: an LRU hash lookup; the value is copied out at once, before any other
    // map operation could recycle the element.
    let Some(peer) = (unsafe { LOCAL_PEERS.get(cookie) }).copied() else {
        return PROCEED;
    };
    if port_of(port_field) == peer.target_port {
        // SAFETY: as above; `user_port` is writable in getpeername.
        unsafe { (*sa).user_port = port_field_of(peer.orig_port) };
    }
    PROCEED
}

/// The TO port for a connect to `addr` on the port in `port_field`, if this connect is
/// to be redirected: a rule on that port, a socket of the loader's namespace, a local
/// destination, the rule enabled, the address allowed. Records the socket for
/// getpeername and counts the decision once the connect is known to be local.
#[inline(always)]
fn redirect_to(ctx: &SockAddrContext, addr: &[u8; 16], port_field: u32) -> Option<u16> {
    let from_port = port_of(port_field);
    // SAFETY: a hash lookup; `Rule` is plain data, copied out at once.
    let rule = unsafe { RULES.get(from_port) }.copied()?;
    // SAFETY: the helper only reads the socket's namespace through the context.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != loader_netns_cookie() {
        return None;
    }
    if !is_loopback(addr) && LOCAL_ADDRS.get_ptr(addr).is_none() {
        return None;
    }
    if rule.enabled == 0 {
        count(Counter::LocalPassRuleDisabled);
        return None;
    }
    // The kernel picks a local destination as the source address of the connection, so
    // the destination is what the allow list is checked against.
    if !source_allowed(addr) {
        count(Counter::LocalPassSourceDenied);
        return None;
    }
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let peer = LocalPeer {
        orig_port: from_port,
        target_port: rule.to_port,
    };
    // A full LRU evicts an old entry; a failed insert only costs getpeername its answer.
    let _ = LOCAL_PEERS.insert(cookie, peer, 0);
    count(Counter::LocalRedirected);
    with_rule_stats(rule.slot, |stats| stats.flows_new += 1);
    Some(rule.to_port)
}

/// 127.0.0.0/8 (as mapped IPv6) or ::1: always this namespace's own.
#[inline(always)]
fn is_loopback(addr: &[u8; 16]) -> bool {
    let mapped_v4 = addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
    (mapped_v4 && addr[12] == 127) || (addr[..15] == [0; 15] && addr[15] == 1)
}

/// The port in `user_port`: network order, in the low 16 bits (the field's first two
/// bytes in memory).
#[inline(always)]
fn port_of(port_field: u32) -> u16 {
    u16::from_be(port_field as u16)
}

/// `port` (host order) as `user_port` holds it.
#[inline(always)]
fn port_field_of(port: u16) -> u32 {
    u32::from(port.to_be())
}
