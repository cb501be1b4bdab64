//! Every map of the redirector, one purpose each, and the counter helpers over them.

use crate::events::Event;
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use redirector_common::{
    maps::{
        established_max_entries, half_open_size, Config, FlowKey, FlowValue, ListenerKey,
        LocalPeer, MarkConfig, RedirectedSocket, Rule, RuleStats, DEFAULT_CONNTRACK_SIZE,
        FLOW_COUNT_CELLS, LOCAL_PEERS_SIZE, MAX_ALLOW, MAX_LISTENERS, MAX_LOCAL_ADDRS, MAX_RULES,
    },
    stats::Counter,
};

/// Redirect rules keyed by FROM port (host order); written by user space only.
#[map]
pub static RULES: HashMap<u16, Rule> = HashMap::with_max_entries(MAX_RULES, 0);

/// Conntrack of flows whose handshake has not completed. LRU: a SYN flood evicts other
/// half-open entries, never an established one (those live in `ESTABLISHED`). Size set
/// at load from `--conntrack-size` (`half_open_size`).
#[map]
pub static HALF_OPEN: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(half_open_size(DEFAULT_CONNTRACK_SIZE), 0);

/// Conntrack of established flows: a plain hash that never evicts, entries allocated on
/// promotion (no preallocation, so memory follows use). `max_entries` is the capacity
/// plus the half-open size, so that a promotion never finds it full (see `flow::admit`).
#[map]
pub static ESTABLISHED: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(
    established_max_entries(DEFAULT_CONNTRACK_SIZE),
    BPF_F_NO_PREALLOC,
);

/// Server sockets that carry a redirected connection, by socket cookie: egress records a
/// tracked flow's socket once, heals a lost entry from it, and confirms entries healed from
/// a client's packet. Allocated on demand; the reaper deletes the cookies of sockets the
/// kernel no longer holds. Sized like `ESTABLISHED` at load.
#[map]
pub static REDIRECTED_SOCKETS: HashMap<u64, RedirectedSocket> = HashMap::with_max_entries(
    established_max_entries(DEFAULT_CONNTRACK_SIZE),
    BPF_F_NO_PREALLOC,
);

/// Cells whose combination counts established flows (`FLOW_COUNT_*`): the kernel adds
/// to its own cell atomically; user space writes the others, one writer each.
#[map]
pub static FLOW_COUNT: Array<u64> = Array::with_max_entries(FLOW_COUNT_CELLS, 0);

/// Established capacity (`--conntrack-size`); the loader sets it at load time
/// (read-only data, so the verifier sees a constant).
#[unsafe(no_mangle)]
static ESTABLISHED_CAPACITY: u64 = DEFAULT_CONNTRACK_SIZE as u64;

/// Source prefixes allowed to create flows (IPv4 as mapped IPv6); used when
/// `CONFIG_F_FILTER_SOURCES` is set.
#[map]
pub static ALLOW: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_ALLOW, 0);

/// The packet mark of `--mark` (TC ingress only), one element; set by each loader.
#[map]
pub static MARK: Array<MarkConfig> = Array::with_max_entries(1, 0);

/// Global configuration, one element.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Global counters, indexed by `Counter`; per CPU so increments need no atomics.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Per-rule counters, indexed by `Rule::slot`.
#[map]
pub static RULE_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Time (`bpf_ktime_get_coarse_ns`) of the last log record per `events::Event`, per CPU:
/// the rate limit of kernel log records. Not pinned: it starts over with each load.
#[map]
pub static LOG_LAST_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Event::COUNT, 0);

/// The established capacity the loader set.
#[inline(always)]
pub fn established_capacity() -> u64 {
    // SAFETY: a plain read of a static; volatile so that the compiler does not fold the
    // default in, which the loader replaces in the object's read-only data before loading.
    unsafe { core::ptr::read_volatile(&ESTABLISHED_CAPACITY) }
}

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

/// Addresses of the loader's network namespace (IPv4 as mapped IPv6): a connect to one of
/// them is local traffic. Filled and kept current by the loader; not pinned.
#[map]
pub static LOCAL_ADDRS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(MAX_LOCAL_ADDRS, 0);

/// Listening sockets of the rules' TO ports that socket steering hands new connections to
/// (`--mode socket`); the loader keeps it filled, the kernel removes a socket as it closes.
#[map]
pub static LISTENERS: SockHash<ListenerKey> = SockHash::with_max_entries(MAX_LISTENERS, 0);

/// Redirected local sockets by socket cookie → the ports of that redirect, for
/// `getpeername`. LRU: sockets leave no trace when they close, so the oldest go first.
#[map]
pub static LOCAL_PEERS: LruHashMap<u64, LocalPeer> =
    LruHashMap::with_max_entries(LOCAL_PEERS_SIZE, 0);

/// Cookie of the loader's network namespace (`SO_NETNS_COOKIE`), set at load time: local
/// redirection applies to sockets of that namespace only. 0 (never a real cookie) until set.
#[unsafe(no_mangle)]
static LOADER_NETNS_COOKIE: u64 = 0;

/// The loader's network-namespace cookie.
#[inline(always)]
pub fn loader_netns_cookie() -> u64 {
    // SAFETY: a plain read of a static; volatile for the same reason as
    // `established_capacity`: the loader sets it in the read-only data before loading.
    unsafe { core::ptr::read_volatile(&LOADER_NETNS_COOKIE) }
}
