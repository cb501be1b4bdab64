//! A point-in-time view of the counters, and its text rendering.

use std::fmt;

use redirector_common::stats::Counter;

use crate::{
    dataplane::{Dataplane, DataplaneError, RuleCounters},
    rules::RedirectRule,
};

/// Counters of every rule and every global counter.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Per rule, in rule order.
    pub rules: Vec<(RedirectRule, RuleCounters)>,
    /// Global counters, indexed like `Counter::ALL`.
    pub counters: [u64; Counter::COUNT as usize],
    /// Tracked flows right now.
    pub flows: usize,
}

impl Snapshot {
    /// Reads the counters of `dp`, whose rules are `rules` (slot = index).
    pub fn read(dp: &Dataplane, rules: &[RedirectRule]) -> Result<Self, DataplaneError> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(slot, rule)| Ok((*rule, dp.rule_counters(slot as u32)?)))
            .collect::<Result<_, DataplaneError>>()?;
        Ok(Snapshot {
            rules,
            counters: dp.counters()?,
            flows: dp.flows()?.len(),
        })
    }

    /// Value of one global counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize]
    }
}

impl fmt::Display for Snapshot {
    /// One `rule` line per rule, one `counter` line per global counter, one `flows` line:
    /// `key=value` pairs, stable for scripts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (rule, c) in &self.rules {
            writeln!(
                f,
                "rule {rule}: flows_new={} packets_in={} bytes_in={} packets_out={} bytes_out={}",
                c.flows_new, c.packets_in, c.bytes_in, c.packets_out, c.bytes_out
            )?;
        }
        for counter in Counter::ALL {
            writeln!(f, "counter {}={}", counter.name(), self.get(counter))?;
        }
        writeln!(f, "flows tracked={}", self.flows)
    }
}
