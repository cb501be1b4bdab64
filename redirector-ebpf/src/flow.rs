//! Conntrack decisions: which tracked flow a packet belongs to, and the entry's update.
//!
//! A flow lives in one of two tables. A SYN to an enabled rule creates it in `HALF_OPEN`
//! (an LRU, so a SYN flood only evicts other half-open flows) if the established table
//! has room; the client's handshake-completing ACK promotes it to `ESTABLISHED` (a plain
//! hash that never evicts). Lookups try `ESTABLISHED` first: that is where nearly every
//! packet's flow is. Two flows of one client tuple to different FROM ports are kept apart
//! by the second one's lane (`FlowKey::lane`, its TO port), looked up only when the plain
//! key holds another port's flow.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use redirector_common::{
    conntrack::{self, tcp_flags, Direction, Transition},
    maps::{
        established_count, FlowKey, FlowValue, Rule, FLOW_COUNT_CONTROL, FLOW_COUNT_KERNEL,
        FLOW_COUNT_REAPER, FLOW_F_SOCKET_RECORDED, FLOW_F_UNVERIFIED,
    },
    reap::{ReapEntry, REAP_TABLE_ESTABLISHED, REAP_TABLE_HALF_OPEN},
    stats::Counter,
};

use crate::{
    events, heal,
    maps::{
        count, established_capacity, source_allowed, ESTABLISHED, FLOW_COUNT, HALF_OPEN, RULES,
    },
    parse::TcpPacket,
    sockets,
};

/// Only refresh `last_seen_ns` this often, to keep the entry's cache line mostly read-only.
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// `-EEXIST`: `BPF_NOEXIST` insert of a key that is there.
const EEXIST: i32 = 17;

/// A rewrite to perform: the port's new value and the rule whose counters it feeds.
pub struct Rewrite {
    /// Original port value, network order.
    pub old_port_be: u16,
    /// New port value, network order.
    pub new_port_be: u16,
    /// `RuleStats` slot.
    pub rule_slot: u32,
}

/// Which conntrack table an entry was found in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    HalfOpen,
    Established,
}

/// The `(orig_port, target_port)` of a looked-up entry.
#[inline(always)]
fn ports(entry: *mut FlowValue) -> (u16, u16) {
    // SAFETY: `entry` comes from a successful lookup: a pointer to the map value, valid
    // for this program run (RCU); only read.
    let flow = unsafe { &*entry };
    (flow.orig_port, flow.target_port)
}

/// A packet of a tracked client tuple that belongs to none of its flows passed for the
/// reason `PassPortMismatch` names, not as an untracked one.
#[inline(always)]
fn mismatched(reason: Counter) -> Counter {
    if reason == Counter::PassUntracked {
        Counter::PassPortMismatch
    } else {
        reason
    }
}

/// The TO port of the rule on `from_port`, if there is one.
#[inline(always)]
fn rule_to_port(from_port: u16) -> Option<u16> {
    // SAFETY: the key lives on the stack for the lookup; `Rule` is plain data, copied out.
    unsafe { RULES.get(from_port) }.map(|rule| rule.to_port)
}

/// Finds the entry of `key`, established first.
///
/// A promotion on another CPU inserts into `ESTABLISHED` before it removes from
/// `HALF_OPEN`, so a flow missed in both tables was promoted between the two lookups (the
/// client's ACK and its first data, or the server's reply, handled on two CPUs at once):
/// it is in `ESTABLISHED` by then, and a second look there finds it. Without it that
/// packet passed untracked to the FROM port and the new connection was reset. Only
/// packets of no flow pay for the third lookup.
#[inline(always)]
fn lookup(key: &FlowKey) -> Option<(*mut FlowValue, Table)> {
    if let Some(entry) = ESTABLISHED.get_ptr_mut(key) {
        return Some((entry, Table::Established));
    }
    if let Some(entry) = HALF_OPEN.get_ptr_mut(key) {
        return Some((entry, Table::HalfOpen));
    }
    ESTABLISHED
        .get_ptr_mut(key)
        .map(|entry| (entry, Table::Established))
}

/// Client→server: a SYN to an enabled rule creates an entry; other packets need one, or
/// get it back if the kernel holds their connection on the rule's TO port (`heal`).
/// `ctx` is the program's context pointer, for the kernel's socket lookups.
#[inline(always)]
pub fn ingress(ctx: *mut c_void, pkt: &TcpPacket) -> Result<Rewrite, Counter> {
    let mut key = FlowKey {
        client_addr: pkt.src_addr,
        server_addr: pkt.dst_addr,
        client_port_be: pkt.src_port_be,
        lane: 0,
    };
    let dst_port = u16::from_be(pkt.dst_port_be);
    if conntrack::is_initial_syn(pkt.flags) {
        // SAFETY: the key lives on the stack for the lookup; the map is only read here.
        if let Some(rule) = unsafe { RULES.get(dst_port) } {
            return new_flow(ctx, &mut key, pkt, dst_port, *rule);
        }
    }
    let found = lookup(&key);
    let (entry, table) = match found {
        Some((entry, table)) if ports(entry).0 == dst_port => (entry, table),
        // No flow on the plain key, or another port's: this flow may be in its lane (the
        // key is changed in place: the verifier bounds the stack).
        _ => match rule_to_port(dst_port) {
            Some(to_port) => {
                key.lane = to_port;
                match lookup(&key) {
                    Some((entry, table)) if ports(entry).0 == dst_port => (entry, table),
                    Some(_) => return Err(Counter::PassPortMismatch),
                    None if found.is_some() => {
                        return heal::ingress(ctx, &key, pkt, dst_port).map_err(mismatched)
                    }
                    None => {
                        key.lane = 0;
                        return heal::ingress(ctx, &key, pkt, dst_port);
                    }
                }
            }
            None if found.is_some() => return Err(Counter::PassPortMismatch),
            None => return heal::ingress(ctx, &key, pkt, dst_port),
        },
    };
    // SAFETY: a successful lookup returns a pointer to the map value, valid for this
    // program run (RCU); concurrent writers on other CPUs only race on plain integers.
    let flow = unsafe { &mut *entry };
    let rewrite = Rewrite {
        old_port_be: pkt.dst_port_be,
        new_port_be: flow.target_port.to_be(),
        rule_slot: flow.rule_slot,
    };
    track(&key, flow, table, Direction::ToServer, pkt.flags);
    Ok(rewrite)
}

/// Server→client: only packets of a tracked flow, from its target port, are rewritten; a
/// packet of no flow from a socket recorded as redirected gets its entry back (`heal`).
#[inline(always)]
pub fn egress(ctx: &TcContext, pkt: &TcpPacket) -> Result<Rewrite, Counter> {
    let mut key = FlowKey {
        client_addr: pkt.dst_addr,
        server_addr: pkt.src_addr,
        client_port_be: pkt.dst_port_be,
        lane: 0,
    };
    let src_port = u16::from_be(pkt.src_port_be);
    let found = lookup(&key);
    let (entry, table) = match found {
        Some((entry, table)) if ports(entry).1 == src_port => (entry, table),
        // No flow on the plain key, or another port's: this flow may be in its lane.
        _ => {
            key.lane = src_port;
            match lookup(&key) {
                Some(found_in_lane) => found_in_lane,
                None if found.is_some() => return heal::egress(ctx, &key, pkt).map_err(mismatched),
                None => {
                    key.lane = 0;
                    return heal::egress(ctx, &key, pkt);
                }
            }
        }
    };
    // SAFETY: as in `ingress`.
    let flow = unsafe { &mut *entry };
    // Only until the flow's socket is recorded (once per flow) or a heal confirmed.
    if flow.flags & (FLOW_F_UNVERIFIED | FLOW_F_SOCKET_RECORDED) != FLOW_F_SOCKET_RECORDED
        && !heal::confirm(ctx, &key, flow, table)
    {
        return Err(Counter::PassUntracked);
    }
    let rewrite = Rewrite {
        old_port_be: pkt.src_port_be,
        new_port_be: flow.orig_port.to_be(),
        rule_slot: flow.rule_slot,
    };
    track(&key, flow, table, Direction::ToClient, pkt.flags);
    Ok(rewrite)
}

/// Handles a SYN to a rule's FROM port: keep a live entry (a retransmitted SYN, or a SYN
/// on a connection the kernel still holds) or create one.
#[inline(always)]
fn new_flow(
    ctx: *mut c_void,
    key: &mut FlowKey,
    pkt: &TcpPacket,
    dst_port: u16,
    rule: Rule,
) -> Result<Rewrite, Counter> {
    // The plain key holds another port's flow of this client tuple, and its connection is
    // still there: that flow is never replaced, this one goes in its lane.
    if let Some((entry, _)) = lookup(key) {
        // SAFETY: as in `ingress`; read only.
        let entry = unsafe { &*entry };
        if entry.orig_port != dst_port && rule.enabled != 0 && holds_connection(ctx, pkt, entry) {
            key.lane = rule.to_port;
        }
    }
    let key = &*key;
    let existing = lookup(key);
    if let Some((entry, _)) = existing {
        // SAFETY: as in `ingress`; read only.
        let entry = unsafe { &*entry };
        // A closing entry is replaced only if its connection is gone: a SYN on a live
        // one (blind, or a peer's mistake) gets the endpoint's challenge ACK and must
        // not take the flow from it.
        let keep = entry.orig_port == dst_port && holds_connection(ctx, pkt, entry);
        if keep && conntrack::is_reusable(entry.state) {
            count(Counter::FlowSynOnLive);
        }
        if keep {
            return Ok(Rewrite {
                old_port_be: pkt.dst_port_be,
                new_port_be: entry.target_port.to_be(),
                rule_slot: entry.rule_slot,
            });
        }
    }
    if rule.enabled == 0 {
        return Err(Counter::PassRuleDisabled);
    }
    if !source_allowed(&pkt.src_addr) {
        return Err(Counter::PassSourceDenied);
    }
    if let Some((_, table)) = existing {
        // Port reuse after close (of this port's flow, or another port's): the new flow
        // replaces the old entry. One created, one gone, none evicted (user space derives evictions
        // from these counts); an established entry frees its place for the admission below.
        if remove(key, table) {
            count(Counter::FlowReplaced);
        }
    }
    if let Err(established) = admit() {
        events::table_full(dst_port, established, established_capacity());
        return Err(Counter::PassTableFull);
    }
    let now = now_ns();
    let value = FlowValue {
        orig_port: dst_port,
        target_port: rule.to_port,
        state: conntrack::STATE_SYN_SENT,
        fin_flags: 0,
        flags: 0,
        rule_slot: rule.slot,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    HALF_OPEN
        .insert(key, value, 0)
        .map_err(|_| Counter::FlowInsertFailed)?;
    count(Counter::FlowCreated);
    crate::maps::with_rule_stats(rule.slot, |s| s.flows_new += 1);
    Ok(Rewrite {
        old_port_be: pkt.dst_port_be,
        new_port_be: rule.to_port.to_be(),
        rule_slot: rule.slot,
    })
}

/// The entry's flow still has a connection: it is not closing, or the kernel still holds
/// its socket on the TO port (for the client tuple of `pkt`).
#[inline(always)]
fn holds_connection(ctx: *mut c_void, pkt: &TcpPacket, entry: &FlowValue) -> bool {
    !conntrack::is_reusable(entry.state)
        || sockets::state_of(ctx, pkt, entry.target_port.to_be())
            .is_some_and(sockets::is_connection)
}

/// Ok if the established table has room for one more flow, else the established count: a
/// flow is only admitted if it can be promoted. Flows admitted but not yet promoted are
/// bounded by the half-open table, which is exactly the established table's headroom
/// over its capacity.
#[inline(always)]
pub(crate) fn admit() -> Result<(), i64> {
    let cell = |index| FLOW_COUNT.get(index).copied().unwrap_or(0);
    let established = established_count(
        cell(FLOW_COUNT_KERNEL),
        cell(FLOW_COUNT_REAPER),
        cell(FLOW_COUNT_CONTROL),
    );
    if established < established_capacity() as i64 {
        Ok(())
    } else {
        Err(established)
    }
}

/// Adds `delta` (wrapping: `u64::MAX` is minus one) to the kernel's established count.
#[inline(always)]
pub(crate) fn add_established(delta: u64) {
    if let Some(cell) = FLOW_COUNT.get_ptr_mut(FLOW_COUNT_KERNEL) {
        // SAFETY: `cell` points at an array element, valid and 8-byte aligned for the
        // program run. The add is atomic (one BPF_ATOMIC instruction, result unused), so
        // promotions on other CPUs are never lost; relaxed order: it is only a count.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                cell, delta,
            )
        };
    }
}

/// Removes the entry of `key` from `table`; true if this call removed it (another CPU or
/// the reaper may have been first, and counted it itself).
#[inline(always)]
pub(crate) fn remove(key: &FlowKey, table: Table) -> bool {
    match table {
        Table::HalfOpen => HALF_OPEN.remove(key).is_ok(),
        Table::Established => {
            let removed = ESTABLISHED.remove(key).is_ok();
            if removed {
                add_established(u64::MAX);
            }
            removed
        }
    }
}

/// Removes the flow of a reaper's `entry` from its table if the entry there is still the
/// one the reaper judged expired (same creation, last packet and state); true if removed.
/// A flow created on the same tuple since (port reuse) or seen since is left alone.
#[inline(always)]
pub fn reap(entry: &ReapEntry) -> bool {
    let (found, table) = match entry.table {
        REAP_TABLE_ESTABLISHED => (ESTABLISHED.get_ptr(entry.key), Table::Established),
        REAP_TABLE_HALF_OPEN => (HALF_OPEN.get_ptr(entry.key), Table::HalfOpen),
        _ => return false,
    };
    let Some(flow) = found else {
        return false;
    };
    // SAFETY: as in `ingress`; read only.
    let flow = unsafe { &*flow };
    if flow.created_ns != entry.created_ns
        || flow.last_seen_ns != entry.last_seen_ns
        || flow.state != entry.state
    {
        return false;
    }
    remove(&entry.key, table)
}

/// Moves a flow whose handshake completed from `HALF_OPEN` to `ESTABLISHED`. Counted
/// before the insert so that the count never lags the table (admission errs low).
#[inline(always)]
fn promote(key: &FlowKey, flow: &FlowValue) {
    add_established(1);
    match ESTABLISHED.insert(key, flow, u64::from(BPF_NOEXIST)) {
        Ok(()) => count(Counter::FlowPromoted),
        // Another CPU promoted it first (and counted it): only the half-open copy is left.
        Err(e) if e == -EEXIST => add_established(u64::MAX),
        Err(errno) => {
            // Out of memory: it stays half-open and the next packet tries again.
            add_established(u64::MAX);
            count(Counter::FlowPromoteFailed);
            events::promote_failed(flow.orig_port, -errno);
            return;
        }
    }
    let _ = HALF_OPEN.remove(key);
}

/// Advances the flow's TCP state. A RST changes nothing here: it is passed to the endpoint,
/// which accepts it only at the exact sequence it expects (RFC 5961), and the entry goes
/// when the kernel no longer holds the connection (the reaper asks it).
#[inline(always)]
fn track(key: &FlowKey, flow: &mut FlowValue, table: Table, dir: Direction, flags: u8) {
    let now = now_ns();
    if flags & tcp_flags::RST != 0 {
        count(Counter::FlowRstSeen);
    }
    if now.wrapping_sub(flow.last_seen_ns) >= LAST_SEEN_GRANULARITY_NS {
        flow.last_seen_ns = now;
    }
    match conntrack::next(flow.state, flow.fin_flags, dir, flags) {
        Transition::Keep => {}
        Transition::Update { state, fin_flags } => {
            if state == conntrack::STATE_CLOSING && flow.state != conntrack::STATE_CLOSING {
                count(Counter::FlowClosedFin);
            }
            flow.state = state;
            flow.fin_flags = fin_flags;
            flow.last_seen_ns = now;
        }
    }
    // Also retried on later packets if a promotion failed.
    if table == Table::HalfOpen && flow.state == conntrack::STATE_ESTABLISHED {
        promote(key, flow);
    }
}

/// Monotonic time, coarse (jiffies resolution is plenty for timeouts, and cheaper).
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}
