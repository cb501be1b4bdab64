//! Conntrack decisions: which tracked flow a packet belongs to, and the entry's update.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use redirector_common::{
    conntrack::{self, Direction, Transition},
    maps::{FlowKey, FlowValue, Rule},
    stats::Counter,
};

use crate::{
    maps::{count, source_allowed, FLOWS, RULES},
    parse::TcpPacket,
};

/// Only refresh `last_seen_ns` this often, to keep the entry's cache line mostly read-only.
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// A rewrite to perform: the port's new value and the rule whose counters it feeds.
pub struct Rewrite {
    /// Original port value, network order.
    pub old_port_be: u16,
    /// New port value, network order.
    pub new_port_be: u16,
    /// `RuleStats` slot.
    pub rule_slot: u32,
}

/// Client→server: a SYN to an enabled rule creates an entry; other packets need one.
#[inline(always)]
pub fn ingress(pkt: &TcpPacket) -> Result<Rewrite, Counter> {
    let key = FlowKey {
        client_addr: pkt.src_addr,
        server_addr: pkt.dst_addr,
        client_port_be: pkt.src_port_be,
        _pad: 0,
    };
    let dst_port = u16::from_be(pkt.dst_port_be);
    if conntrack::is_initial_syn(pkt.flags) {
        // SAFETY: the key lives on the stack for the lookup; the map is only read here.
        if let Some(rule) = unsafe { RULES.get(dst_port) } {
            return new_flow(&key, pkt, dst_port, *rule);
        }
    }
    let entry = FLOWS.get_ptr_mut(key).ok_or(Counter::PassUntracked)?;
    // SAFETY: a successful lookup returns a pointer to the map value, valid for this
    // program run (RCU); concurrent writers on other CPUs only race on plain integers.
    let flow = unsafe { &mut *entry };
    if flow.orig_port != dst_port {
        return Err(Counter::PassPortMismatch);
    }
    track(&key, flow, Direction::ToServer, pkt.flags);
    Ok(Rewrite {
        old_port_be: pkt.dst_port_be,
        new_port_be: flow.target_port.to_be(),
        rule_slot: flow.rule_slot,
    })
}

/// Server→client: only packets of a tracked flow, from its target port, are rewritten.
#[inline(always)]
pub fn egress(pkt: &TcpPacket) -> Result<Rewrite, Counter> {
    let key = FlowKey {
        client_addr: pkt.dst_addr,
        server_addr: pkt.src_addr,
        client_port_be: pkt.dst_port_be,
        _pad: 0,
    };
    let entry = FLOWS.get_ptr_mut(key).ok_or(Counter::PassUntracked)?;
    // SAFETY: as in `ingress`.
    let flow = unsafe { &mut *entry };
    if flow.target_port != u16::from_be(pkt.src_port_be) {
        return Err(Counter::PassPortMismatch);
    }
    track(&key, flow, Direction::ToClient, pkt.flags);
    Ok(Rewrite {
        old_port_be: pkt.src_port_be,
        new_port_be: flow.orig_port.to_be(),
        rule_slot: flow.rule_slot,
    })
}

/// Handles a SYN to a rule's FROM port: reuse a live entry (retransmitted SYN) or create one.
#[inline(always)]
fn new_flow(key: &FlowKey, pkt: &TcpPacket, dst_port: u16, rule: Rule) -> Result<Rewrite, Counter> {
    let existing = FLOWS.get_ptr(key);
    if let Some(existing) = existing {
        // SAFETY: as in `ingress`; read only.
        let existing = unsafe { &*existing };
        if existing.orig_port == dst_port && !conntrack::is_reusable(existing.state) {
            return Ok(Rewrite {
                old_port_be: pkt.dst_port_be,
                new_port_be: existing.target_port.to_be(),
                rule_slot: existing.rule_slot,
            });
        }
    }
    if rule.enabled == 0 {
        return Err(Counter::PassRuleDisabled);
    }
    if !source_allowed(&pkt.src_addr) {
        return Err(Counter::PassSourceDenied);
    }
    let now = now_ns();
    let value = FlowValue {
        orig_port: dst_port,
        target_port: rule.to_port,
        state: conntrack::STATE_SYN_SENT,
        fin_flags: 0,
        _pad: 0,
        rule_slot: rule.slot,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    FLOWS
        .insert(key, value, 0)
        .map_err(|_| Counter::FlowInsertFailed)?;
    count(Counter::FlowCreated);
    if existing.is_some() {
        // The insert overwrote that entry: one created, one gone, none evicted (user space
        // derives evictions from these counts).
        count(Counter::FlowReplaced);
    }
    crate::maps::with_rule_stats(rule.slot, |s| s.flows_new += 1);
    Ok(Rewrite {
        old_port_be: pkt.dst_port_be,
        new_port_be: rule.to_port.to_be(),
        rule_slot: rule.slot,
    })
}

/// Advances the flow's TCP state; a RST removes the entry (this packet is still rewritten).
#[inline(always)]
fn track(key: &FlowKey, flow: &mut FlowValue, dir: Direction, flags: u8) {
    let now = now_ns();
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
        Transition::Delete => {
            // Counted only if this removal succeeded: another CPU (or the reaper) may have
            // removed it first and counted it itself; evictions are derived from these counts.
            if FLOWS.remove(key).is_ok() {
                count(Counter::FlowClosedRst);
            }
        }
    }
}

/// Monotonic time, coarse (jiffies resolution is plenty for timeouts, and cheaper).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}
