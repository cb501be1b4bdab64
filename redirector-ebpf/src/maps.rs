//! Every map of the redirector, one purpose each, and the counter helpers over them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use redirector_common::{
    maps::{
        Config, FlowKey, FlowValue, Rule, RuleStats, DEFAULT_CONNTRACK_SIZE, MAX_ALLOW, MAX_RULES,
    },
    stats::Counter,
};

/// Redirect rules keyed by FROM port (host order); written by user space only.
#[map]
pub static RULES: HashMap<u16, Rule> = HashMap::with_max_entries(MAX_RULES, 0);

/// Conntrack: one entry per redirected flow; size set by `--conntrack-size` at load.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_CONNTRACK_SIZE, 0);

/// Source prefixes allowed to create flows (IPv4 as mapped IPv6); used when
/// `CONFIG_F_FILTER_SOURCES` is set.
#[map]
pub static ALLOW: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_ALLOW, 0);

/// Global configuration, one element.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Global counters, indexed by `Counter`; per CPU so increments need no atomics.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Per-rule counters, indexed by `Rule::slot`.
#[map]
pub static RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Adds one to a global counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup, so it points
        // at this CPU's u64 for the whole program run; nothing else on this CPU writes it.
        unsafe { *slot += 1 };
    }
}

/// Applies `update` to the counters of the rule in `slot`.
#[inline(always)]
pub fn with_rule_stats(slot: u32, update: impl FnOnce(&mut RuleStats)) {
    if let Some(stats) = RULE_STATS.get_ptr_mut(slot) {
        // SAFETY: as in `count`: a valid per-CPU element, exclusively ours on this CPU.
        update(unsafe { &mut *stats });
    }
}

/// True if flows from `src_addr` may be redirected (no filter, or the filter matches).
#[inline(always)]
pub fn source_allowed(src_addr: &[u8; 16]) -> bool {
    let filtering = CONFIG
        .get(0)
        .is_some_and(|c| c.flags & redirector_common::maps::CONFIG_F_FILTER_SOURCES != 0);
    if !filtering {
        return true;
    }
    ALLOW
        .get(aya_ebpf::maps::lpm_trie::Key::new(128, *src_addr))
        .is_some()
}
