//! Lost entries come back from the kernel's truth: a packet of no tracked flow that
//! belongs to a live redirected connection gets its entry re-created and is rewritten.
//!
//! - Client → server: the kernel's socket table holds the tuple on the rule's TO port, and
//!   no socket owns it on the FROM port. Such an entry is provisional (`FLOW_F_UNVERIFIED`)
//!   until the server's first packet shows its socket in `REDIRECTED_SOCKETS`: a direct
//!   connection to the TO port with the same tuple is never taken over by a spoofed packet
//!   to the FROM port.
//!   A client's handshake ACK heals at once from its request socket, or, where the
//!   listener answered with a SYN cookie and kept no request socket, from that cookie.
//! - Server → client: the packet's socket is recorded in `REDIRECTED_SOCKETS`.
//!
//! A disabled rule still heals what it admitted; allow lists are not consulted (the
//! connection was accepted). Heals count against the established capacity.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use redirector_common::{
    conntrack::{self, tcp_flags},
    maps::{FlowKey, FlowValue, RedirectedSocket, FLOW_F_SOCKET_RECORDED, FLOW_F_UNVERIFIED},
    stats::Counter,
};

use crate::{
    flow::{self, Rewrite, Table},
    maps::{count, ESTABLISHED, REDIRECTED_SOCKETS, RULES},
    parse::TcpPacket,
    sockets::{self, TCP_ESTABLISHED, TCP_LISTEN, TCP_NEW_SYN_RECV},
    syncookie,
};

/// A client's packet of no flow to `dst_port`: re-creates its entry if the kernel holds
/// its connection on the rule's TO port.
#[inline(always)]
pub fn ingress(
    ctx: *mut c_void,
    key: &FlowKey,
    pkt: &TcpPacket,
    dst_port: u16,
) -> Result<Rewrite, Counter> {
    // SAFETY: the key lives on the stack for the lookup; the map is only read here.
    let Some(rule) = (unsafe { RULES.get(dst_port) }).copied() else {
        return Err(Counter::PassUntracked);
    };
    // A SYN here belongs to no live connection (it would have found its entry first).
    if pkt.flags & tcp_flags::SYN != 0 || sockets::owns(ctx, pkt, pkt.dst_port_be) {
        return Err(Counter::PassUntracked);
    }
    let to_port_be = rule.to_port.to_be();
    let Some(state) = sockets::state_of(ctx, pkt, to_port_be) else {
        return Err(Counter::PassUntracked);
    };
    let flags = if state == TCP_NEW_SYN_RECV {
        // A request socket completes its handshake with this very packet (its half-open
        // entry was evicted): no server socket exists yet to confirm it by, nor a direct
        // connection of the tuple to take over.
        0
    } else if state == TCP_LISTEN {
        // No socket holds the tuple: under a SYN flood the listener answered the SYN with a
        // cookie and kept nothing; the client's ACK carrying that cookie completes the
        // handshake, as it would have with its half-open entry.
        let ack = pkt.flags & (tcp_flags::ACK | tcp_flags::RST) == tcp_flags::ACK;
        if !ack || !syncookie::valid(pkt, to_port_be) {
            return Err(Counter::PassUntracked);
        }
        0
    } else if sockets::is_connection(state) {
        FLOW_F_UNVERIFIED
    } else {
        return Err(Counter::PassUntracked);
    };
    if insert(key, dst_port, rule.to_port, rule.slot, flags)? {
        count(Counter::FlowHealedIngress);
    }
    Ok(Rewrite {
        old_port_be: pkt.dst_port_be,
        new_port_be: rule.to_port.to_be(),
        rule_slot: rule.slot,
    })
}

/// A server's packet of no flow: re-creates its entry if its socket is recorded as
/// carrying a redirected connection from this port.
#[inline(always)]
pub fn egress(ctx: &TcContext, key: &FlowKey, pkt: &TcpPacket) -> Result<Rewrite, Counter> {
    let Some((cookie, _)) = sockets::own_socket(ctx) else {
        return Err(Counter::PassUntracked);
    };
    // SAFETY: the key lives on the stack for the lookup; the value is copied out.
    let Some(socket) = (unsafe { REDIRECTED_SOCKETS.get(cookie) }).copied() else {
        return Err(Counter::PassUntracked);
    };
    if socket.target_port != u16::from_be(pkt.src_port_be) {
        return Err(Counter::PassPortMismatch);
    }
    if insert(
        key,
        socket.orig_port,
        socket.target_port,
        socket.rule_slot,
        FLOW_F_SOCKET_RECORDED,
    )? {
        count(Counter::FlowHealedEgress);
    }
    Ok(Rewrite {
        old_port_be: pkt.src_port_be,
        new_port_be: socket.orig_port.to_be(),
        rule_slot: socket.rule_slot,
    })
}

/// A server packet of a flow whose socket is not yet recorded, or whose entry was healed
/// from a client's packet: records the socket, or confirms the heal by it. False if the
/// entry was withdrawn (its socket carries a direct connection) and the packet must pass
/// untouched. Packets without a full socket in a connection state (forwarded, request and
/// time-wait sockets, the kernel's RST sender) leave the entry as it is.
#[inline(always)]
pub fn confirm(ctx: &TcContext, key: &FlowKey, flow: &mut FlowValue, table: Table) -> bool {
    let Some((cookie, state)) = sockets::own_socket(ctx) else {
        return true;
    };
    if !sockets::is_connection(state) {
        return true;
    }
    if flow.flags & FLOW_F_UNVERIFIED != 0 {
        // SAFETY: the key lives on the stack for the lookup; the map is only read here.
        if unsafe { REDIRECTED_SOCKETS.get(cookie) }.is_some() {
            flow.flags = FLOW_F_SOCKET_RECORDED;
            return true;
        }
        if flow::remove(key, table) {
            count(Counter::FlowHealWithdrawn);
        }
        return false;
    }
    if state == TCP_ESTABLISHED && flow.state == conntrack::STATE_ESTABLISHED {
        let socket = RedirectedSocket {
            orig_port: flow.orig_port,
            target_port: flow.target_port,
            rule_slot: flow.rule_slot,
        };
        // Full (or out of memory): tried again at the next packet; the flow works anyway.
        if REDIRECTED_SOCKETS.insert(cookie, socket, 0).is_ok() {
            flow.flags |= FLOW_F_SOCKET_RECORDED;
        }
    }
    true
}

/// Inserts a healed established entry, admitted against the capacity like a new flow; true
/// if this call inserted it. The packet is rewritten either way.
#[inline(always)]
fn insert(
    key: &FlowKey,
    orig_port: u16,
    target_port: u16,
    rule_slot: u32,
    flags: u16,
) -> Result<bool, Counter> {
    if flow::admit().is_err() {
        return Err(Counter::PassTableFull);
    }
    let now = flow::now_ns();
    let value = FlowValue {
        orig_port,
        target_port,
        state: conntrack::STATE_ESTABLISHED,
        fin_flags: 0,
        flags,
        rule_slot,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    // Counted before the insert, as a promotion is, so the count never lags the table.
    flow::add_established(1);
    let inserted = ESTABLISHED
        .insert(key, value, u64::from(BPF_NOEXIST))
        .is_ok();
    if !inserted {
        // Another CPU healed it first (and counted it), or out of memory: the next
        // packet finds or heals the entry.
        flow::add_established(u64::MAX);
    }
    Ok(inserted)
}
