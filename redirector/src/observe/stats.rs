//! A point-in-time view of the counters, its text rendering and its JSON form.

use std::{collections::BTreeMap, fmt};

use redirector_common::stats::Counter;
use serde::Serialize;

use crate::{
    dataplane::maps::{Maps, MapsError, RuleCounters},
    rules::RedirectRule,
};

/// Counters of every rule and every global counter.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Per rule, in counter-slot order.
    pub rules: Vec<RuleSnapshot>,
    /// Global counters, indexed like `Counter::ALL`.
    pub counters: [u64; Counter::COUNT as usize],
    /// Tracked flows right now (both tables).
    pub flows: usize,
    /// Of which established (never evicted).
    pub established: usize,
    /// Of which half-open (handshake not complete).
    pub half_open: usize,
    /// Half-open flows the LRU table evicted to make room (derived, see [`evicted`]).
    pub evicted: u64,
}

/// Entries the half-open (LRU) table evicted, derived from counts because BPF does not see
/// evictions: every entry ever created is still tracked (half-open or, once promoted,
/// established — which never evicts), or was removed explicitly (replaced by a new SYN of
/// its tuple, reaped, flushed, a heal withdrawn; a RST under loaders before the kernel
/// judged removals), or was evicted. Healed entries are created too.
///
/// `counters` must be read before `tracked`: a flow created in between is then in
/// `tracked` but not in `flow_created`, which errs low, never high. A flow removed in
/// between errs high by one until the next read. Saturates at 0.
pub fn evicted(counters: &[u64; Counter::COUNT as usize], tracked: usize) -> u64 {
    let get = |c: Counter| counters[c as usize];
    (get(Counter::FlowCreated) + get(Counter::FlowHealedIngress) + get(Counter::FlowHealedEgress))
        .saturating_sub(get(Counter::FlowReplaced))
        .saturating_sub(get(Counter::FlowHealWithdrawn))
        .saturating_sub(get(Counter::FlowClosedRst))
        .saturating_sub(get(Counter::FlowReaped))
        .saturating_sub(get(Counter::FlowFlushed))
        .saturating_sub(tracked as u64)
}

/// One rule in a [`Snapshot`].
#[derive(Clone, Copy, Debug)]
pub struct RuleSnapshot {
    /// FROM and TO ports.
    pub rule: RedirectRule,
    /// Index of its counters.
    pub slot: u32,
    /// New flows are redirected.
    pub enabled: bool,
    /// Its counters, summed over CPUs.
    pub counters: RuleCounters,
}

impl Snapshot {
    /// Reads the rules (from the RULES map), their counters and the global counters.
    pub fn read(maps: &Maps) -> Result<Self, MapsError> {
        let rules = maps
            .rules()?
            .into_iter()
            .map(|(from_port, rule)| {
                Ok(RuleSnapshot {
                    rule: RedirectRule {
                        from_port,
                        to_port: rule.to_port,
                    },
                    slot: rule.slot,
                    enabled: rule.enabled != 0,
                    counters: maps.rule_counters(rule.slot)?,
                })
            })
            .collect::<Result<_, MapsError>>()?;
        let counters = maps.counters()?;
        let established = maps.established_flows()?.len();
        let half_open = maps.half_open_flows()?.len();
        let flows = established + half_open;
        Ok(Snapshot {
            rules,
            counters,
            flows,
            established,
            half_open,
            evicted: evicted(&counters, flows),
        })
    }

    /// Value of one global counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize]
    }

    /// The stable JSON form (see docs/CONTROL.md).
    pub fn to_json(&self) -> StatsJson {
        StatsJson {
            rules: self
                .rules
                .iter()
                .map(|r| RuleStatsJson {
                    from_port: r.rule.from_port,
                    to_port: r.rule.to_port,
                    slot: r.slot,
                    enabled: r.enabled,
                    flows_new: r.counters.flows_new,
                    packets_in: r.counters.packets_in,
                    bytes_in: r.counters.bytes_in,
                    packets_out: r.counters.packets_out,
                    bytes_out: r.counters.bytes_out,
                })
                .collect(),
            counters: Counter::ALL
                .iter()
                .map(|c| (c.name(), self.get(*c)))
                .collect(),
            flows_tracked: self.flows,
            flows_established: self.established,
            flows_half_open: self.half_open,
            flows_evicted: self.evicted,
        }
    }
}

/// `redirector stats --json`.
#[derive(Debug, Serialize)]
pub struct StatsJson {
    /// Per rule, in slot order.
    pub rules: Vec<RuleStatsJson>,
    /// Every global counter by its stable name (`Counter::name`).
    pub counters: BTreeMap<&'static str, u64>,
    /// Entries in the two conntrack tables.
    pub flows_tracked: usize,
    /// Of which in the established table.
    pub flows_established: usize,
    /// Of which in the half-open table.
    pub flows_half_open: usize,
    /// Half-open entries the LRU table evicted to make room ([`evicted`]).
    pub flows_evicted: u64,
}

/// One rule's counters in [`StatsJson`].
#[derive(Debug, Serialize)]
pub struct RuleStatsJson {
    /// Port clients connect to.
    pub from_port: u16,
    /// Port the server listens on.
    pub to_port: u16,
    /// Counter slot.
    pub slot: u32,
    /// New flows are redirected.
    pub enabled: bool,
    /// Flows created by this rule.
    pub flows_new: u64,
    /// Client→server packets rewritten.
    pub packets_in: u64,
    /// Bytes (L3) of those.
    pub bytes_in: u64,
    /// Server→client packets rewritten.
    pub packets_out: u64,
    /// Bytes (L3) of those.
    pub bytes_out: u64,
}

impl fmt::Display for Snapshot {
    /// One `rule` line per rule, one `counter` line per global counter, one `flows` line:
    /// `key=value` pairs, stable for scripts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            let c = &r.counters;
            writeln!(
                f,
                "rule {}: flows_new={} packets_in={} bytes_in={} packets_out={} bytes_out={}",
                r.rule, c.flows_new, c.packets_in, c.bytes_in, c.packets_out, c.bytes_out
            )?;
        }
        for counter in Counter::ALL {
            writeln!(f, "counter {}={}", counter.name(), self.get(counter))?;
        }
        writeln!(f, "flows tracked={}", self.flows)?;
        writeln!(
            f,
            "flows established={} half_open={}",
            self.established, self.half_open
        )?;
        writeln!(f, "flows evicted={}", self.evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_no_explicit_removal_explains() {
        let mut counters = [0u64; Counter::COUNT as usize];
        counters[Counter::FlowCreated as usize] = 100;
        counters[Counter::FlowReplaced as usize] = 5;
        counters[Counter::FlowClosedRst as usize] = 10;
        counters[Counter::FlowReaped as usize] = 20;
        counters[Counter::FlowFlushed as usize] = 1;
        assert_eq!(evicted(&counters, 16), 48);
        assert_eq!(evicted(&counters, 64), 0);
        // A read racing creations never goes below zero.
        assert_eq!(evicted(&counters, 1000), 0);
    }
}
