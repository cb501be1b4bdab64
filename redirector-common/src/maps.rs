//! Map names, sizes and the `#[repr(C)]` keys and values stored in them.
//!
//! Byte order is part of each field's name where it is not host order. Padding is
//! explicit so that the kernel's hash of a key never sees uninitialised bytes.

/// Map of rules: key `u16` FROM port (host order) → [`Rule`].
pub const RULES_MAP: &str = "RULES";
/// LRU hash of half-open flows (SYN seen, handshake not complete): [`FlowKey`] →
/// [`FlowValue`]. Under pressure it evicts only other half-open entries, like a SYN queue.
pub const HALF_OPEN_MAP: &str = "HALF_OPEN";
/// Plain (never evicting) hash of established flows: [`FlowKey`] → [`FlowValue`].
pub const ESTABLISHED_MAP: &str = "ESTABLISHED";
/// Array of `u64` cells whose combination is the number of established flows, read by
/// the kernel at every SYN to admit a flow only if it can be promoted later. Indexed by
/// `FLOW_COUNT_*`; each cell has exactly one kind of writer.
pub const FLOW_COUNT_MAP: &str = "FLOW_COUNT";
/// Name of the read-only global holding the established capacity (`--conntrack-size`),
/// set by the loader at load time.
pub const ESTABLISHED_CAPACITY_GLOBAL: &str = "ESTABLISHED_CAPACITY";
/// LPM trie of allowed source prefixes: `Key<[u8; 16]>` → `u32` (unused, 1).
pub const ALLOW_MAP: &str = "ALLOW";
/// One-element array holding the [`MarkConfig`] of `--mark`; not pinned: each loader sets it
/// from its own flags (also when it adopts a persisted instance).
pub const MARK_MAP: &str = "MARK";
/// One-element array holding the [`Config`].
pub const CONFIG_MAP: &str = "CONFIG";
/// Per-CPU array of global counters, indexed by [`crate::stats::Counter`].
pub const STATS_MAP: &str = "STATS";
/// Per-CPU array of [`RuleStats`], indexed by [`Rule::slot`].
pub const RULE_STATS_MAP: &str = "RULE_STATS";

/// Hash of the server sockets that carry a redirected connection: socket cookie →
/// [`RedirectedSocket`]. TC egress records a tracked flow's socket at its first packet
/// after the handshake; a server packet of no tracked flow whose socket is here gets its
/// entry back (healed), and an entry healed from a client's packet is confirmed by it.
/// Allocated on demand; the reaper deletes the cookies of sockets the kernel no longer
/// holds. Pinned, so an adopting loader keeps what earlier loaders recorded.
pub const REDIRECTED_SOCKETS_MAP: &str = "REDIRECTED_SOCKETS";
/// SOCKHASH of the listening sockets that socket steering hands new connections to, by
/// [`ListenerKey`] (`--mode socket`).
pub const LISTENERS_MAP: &str = "LISTENERS";
/// Listening sockets [`LISTENERS_MAP`] holds at most.
pub const MAX_LISTENERS: u32 = 1024;

/// Hash of the addresses of the loader's network namespace (IPv4 as mapped IPv6, network
/// order) → `u32` (unused, 1): a connect to one of them (or to loopback) on a rule's FROM
/// port is local traffic, redirected at connect time. Not pinned: each loader fills it at
/// start and keeps it current.
pub const LOCAL_ADDRS_MAP: &str = "LOCAL_ADDRS";
/// LRU hash of the sockets whose connect was redirected: socket cookie → [`LocalPeer`],
/// so that `getpeername` still reports the FROM port. Pinned: an adopting loader reuses
/// it, so connections made before a restart keep their answer.
pub const LOCAL_PEERS_MAP: &str = "LOCAL_PEERS";
/// Name of the read-only global holding the loader's network-namespace cookie
/// (`SO_NETNS_COOKIE`): the connect programs leave sockets of any other namespace alone.
pub const LOADER_NETNS_COOKIE_GLOBAL: &str = "LOADER_NETNS_COOKIE";

/// Name of the XDP ingress program in the object file.
pub const PROG_XDP_INGRESS: &str = "redirector_xdp_ingress";
/// Name of the TC ingress program (used in `tc` mode instead of XDP).
pub const PROG_TC_INGRESS: &str = "redirector_tc_ingress";
/// Name of the TC egress program that rewrites replies.
pub const PROG_TC_EGRESS: &str = "redirector_tc_egress";
/// Name of the cgroup `connect4` program that redirects local IPv4 connects.
pub const PROG_CONNECT4: &str = "redirector_connect4";
/// Name of the cgroup `connect6` program that redirects local IPv6 connects.
pub const PROG_CONNECT6: &str = "redirector_connect6";
/// Name of the cgroup `getpeername4` program that reports the FROM port of a redirected
/// IPv4 connect.
pub const PROG_GETPEERNAME4: &str = "redirector_getpeername4";
/// Name of the cgroup `getpeername6` program, the IPv6 counterpart.
pub const PROG_GETPEERNAME6: &str = "redirector_getpeername6";
/// Name of the `sk_lookup` program of socket steering (`--mode socket`): hands a new
/// connection to a rule's FROM port to a listening socket of its TO port.
pub const PROG_SK_LOOKUP: &str = "redirector_sk_lookup";
/// Benchmark baseline: an XDP program that returns `XDP_PASS` and does nothing else.
/// Loaded only on request (`Dataplane::load_baselines`), never attached.
pub const PROG_PASS_XDP: &str = "redirector_pass_xdp";
/// Benchmark baseline: a TC program that returns `TC_ACT_UNSPEC` and does nothing else.
pub const PROG_PASS_TC: &str = "redirector_pass_tc";

/// Maximum number of rules (size of [`RULES_MAP`] and [`RULE_STATS_MAP`]).
pub const MAX_RULES: u32 = 64;
/// Maximum number of allowed source prefixes.
pub const MAX_ALLOW: u32 = 1024;
/// Size of [`LOCAL_ADDRS_MAP`]: addresses of the namespace's interfaces tracked at most.
pub const MAX_LOCAL_ADDRS: u32 = 1024;
/// Size of [`LOCAL_PEERS_MAP`]: redirected local sockets remembered for `getpeername`
/// (LRU: the oldest, most likely closed, go first; a cookie is never reused).
pub const LOCAL_PEERS_SIZE: u32 = 65_536;
/// Default established capacity (`--conntrack-size`): sized for WebSocket hosts holding
/// hundreds of thousands of idle connections. The table allocates entries on demand
/// (`BPF_F_NO_PREALLOC`), so an idle host pays only for its hash buckets.
pub const DEFAULT_CONNTRACK_SIZE: u32 = 1_048_576;
/// Largest half-open table: the SYN-queue-like LRU never needs more than a few seconds
/// of SYN flood to turn over slower than any real handshake's round trip.
pub const MAX_HALF_OPEN_SIZE: u32 = 65_536;

/// Size of the half-open table for an established capacity of `capacity`: the same, up
/// to [`MAX_HALF_OPEN_SIZE`].
pub const fn half_open_size(capacity: u32) -> u32 {
    if capacity < MAX_HALF_OPEN_SIZE {
        capacity
    } else {
        MAX_HALF_OPEN_SIZE
    }
}

/// `max_entries` of the established table for an established capacity of `capacity`:
/// every admitted flow not yet promoted lives in the half-open table, so this headroom
/// means a promotion never fails for lack of room.
pub const fn established_max_entries(capacity: u32) -> u32 {
    capacity.saturating_add(half_open_size(capacity))
}

/// [`FLOW_COUNT_MAP`] cell: promotions minus established entries the kernel removed
/// (RST, port reuse); changed only by the kernel, with atomic adds.
pub const FLOW_COUNT_KERNEL: u32 = 0;
/// [`FLOW_COUNT_MAP`] cell: established entries removed by key in user-space batches
/// (tooling and benchmarks now; the reapers of earlier versions). Today's reaper removes
/// in the kernel (`reap`), counted in [`FLOW_COUNT_KERNEL`].
pub const FLOW_COUNT_REAPER: u32 = 1;
/// [`FLOW_COUNT_MAP`] cell: established entries removed (minus inserted) by control
/// commands (`flush`) and tooling, serialised by the control lock.
pub const FLOW_COUNT_CONTROL: u32 = 2;
/// Number of [`FLOW_COUNT_MAP`] cells.
pub const FLOW_COUNT_CELLS: u32 = 3;

/// Established flows from the [`FLOW_COUNT_MAP`] cells, in wrapping arithmetic (each cell
/// is a running total that may pass the others); negative while removals race their
/// count, which only ever errs towards admitting less.
#[inline(always)]
pub const fn established_count(kernel: u64, reaper: u64, control: u64) -> i64 {
    kernel.wrapping_sub(reaper).wrapping_sub(control) as i64
}

/// A redirect rule, the value of [`RULES_MAP`] keyed by the FROM port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Port new flows are redirected to, host byte order.
    pub to_port: u16,
    /// Explicit padding, always zero.
    pub _pad: u16,
    /// 1 if new flows are redirected, 0 if the rule is disabled (existing flows keep
    /// being rewritten through their conntrack entry either way).
    pub enabled: u32,
    /// Index of this rule's counters in [`RULE_STATS_MAP`].
    pub slot: u32,
}

/// Key of a tracked flow, from the client's point of view.
///
/// The server port is deliberately not part of the key: ingress sees the FROM port
/// and egress the TO port, and both must find the same entry with one lookup. The
/// value records both ports and each side checks its port against it. A client may
/// connect from one port to two of the server's ports at once (the 4-tuples differ): the
/// first flow of such a client tuple has `lane` 0, a flow to another FROM port while that
/// one lives has its TO port as `lane`, and each side looks there when the plain key
/// holds another port's flow, so that neither flow ever replaces the other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address (IPv4 as IPv4-mapped IPv6), network order.
    pub client_addr: [u8; 16],
    /// Server address the client connected to, same encoding.
    pub server_addr: [u8; 16],
    /// Client TCP port, network byte order.
    pub client_port_be: u16,
    /// 0, or the flow's TO port (host order) when the plain key holds another port's
    /// flow of the same client tuple. Written as padding (zero) by older loaders.
    pub lane: u16,
}

/// State of a tracked flow, the value of [`HALF_OPEN_MAP`] and [`ESTABLISHED_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    /// Port the client connected to (the rule's FROM), host order.
    pub orig_port: u16,
    /// Port the server listens on (the rule's TO), host order.
    pub target_port: u16,
    /// TCP state, one of `conntrack::STATE_*`.
    pub state: u8,
    /// FIN bits seen, `conntrack::FIN_*`.
    pub fin_flags: u8,
    /// Bit set of `FLOW_F_*` (0 in entries written by loaders before these bits existed,
    /// which reads as verified and not yet recorded).
    pub flags: u16,
    /// Index of the creating rule's counters in [`RULE_STATS_MAP`].
    pub rule_slot: u32,
    /// Explicit padding, always zero.
    pub _pad2: u32,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE: CLOCK_MONOTONIC at tick
    /// resolution) when the flow was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last packet seen in either direction.
    pub last_seen_ns: u64,
}

/// [`FlowValue::flags`]: the entry was re-created (healed) from a client's packet because
/// the kernel's socket table holds a live connection on the rule's TO port with its tuple.
/// Until the server's first packet shows that socket in [`REDIRECTED_SOCKETS_MAP`], the
/// entry is provisional: a socket that is not there carries a direct connection to the TO
/// port, and the entry is withdrawn instead of rewriting its replies.
pub const FLOW_F_UNVERIFIED: u16 = 1;
/// [`FlowValue::flags`]: the server socket of this flow is recorded in
/// [`REDIRECTED_SOCKETS_MAP`], so egress does not look it up again.
pub const FLOW_F_SOCKET_RECORDED: u16 = 2;

/// What a redirected connection's server socket was redirected from, the value of
/// [`REDIRECTED_SOCKETS_MAP`] keyed by the socket's cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectedSocket {
    /// Port the client connected to (the rule's FROM), host order.
    pub orig_port: u16,
    /// Port the server socket is bound to (the rule's TO), host order.
    pub target_port: u16,
    /// Index of the rule's counters in [`RULE_STATS_MAP`].
    pub rule_slot: u32,
}

/// Global configuration, the single element of [`CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Bit set of `CONFIG_F_*`.
    pub flags: u32,
}

/// The packet mark of `--mark`, the single element of [`MARK_MAP`]: TC ingress sets
/// `mark = (mark & !mask) | value` on every packet it rewrites when `enabled` is 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkConfig {
    /// Value written into the masked bits.
    pub value: u32,
    /// Bits of `skb->mark` that are ours.
    pub mask: u32,
    /// 1 if packets are marked, 0 if not (no `--mark`).
    pub enabled: u32,
}

/// What a redirected local connect replaced, the value of [`LOCAL_PEERS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalPeer {
    /// Port the application connected to (the rule's FROM), host order.
    pub orig_port: u16,
    /// Port the socket was connected to instead (the rule's TO), host order.
    pub target_port: u16,
}

/// Only sources matching [`ALLOW_MAP`] may create flows.
pub const CONFIG_F_FILTER_SOURCES: u32 = 1;

/// Per-rule counters, one per CPU, in [`RULE_STATS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Client→server packets rewritten FROM→TO.
    pub packets_in: u64,
    /// Bytes (L3 length) of those packets.
    pub bytes_in: u64,
    /// Server→client packets rewritten TO→FROM.
    pub packets_out: u64,
    /// Bytes (L3 length) of those packets.
    pub bytes_out: u64,
    /// Flows created by this rule.
    pub flows_new: u64,
}

const _: () = assert!(core::mem::size_of::<Rule>() == 12);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 36);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 4);
const _: () = assert!(core::mem::size_of::<MarkConfig>() == 12);
const _: () = assert!(core::mem::size_of::<RuleStats>() == 40);
const _: () = assert!(core::mem::size_of::<LocalPeer>() == 4);
const _: () = assert!(core::mem::size_of::<RedirectedSocket>() == 8);
const _: () = assert!(established_max_entries(DEFAULT_CONNTRACK_SIZE) == 1_114_112);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_open_follows_small_capacities_and_stops_at_its_maximum() {
        assert_eq!(half_open_size(64), 64);
        assert_eq!(established_max_entries(64), 128);
        assert_eq!(half_open_size(DEFAULT_CONNTRACK_SIZE), MAX_HALF_OPEN_SIZE);
        assert_eq!(established_max_entries(u32::MAX), u32::MAX);
    }

    #[test]
    fn established_count_survives_wrapping_cells() {
        assert_eq!(established_count(10, 3, 2), 5);
        // The control cell went "negative": tooling inserted 5 entries and removed 2.
        assert_eq!(established_count(10, 3, 2u64.wrapping_sub(5)), 10);
        // A removal counted before the kernel's promotion count caught up.
        assert_eq!(established_count(1, 2, 0), -1);
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte arrays,
    // with every padding byte an explicit field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::Rule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MarkConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalPeer {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RedirectedSocket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenerKey {}
}

/// Key of [`LISTENERS_MAP`]: a listening socket of a rule's TO port, by the address it is
/// bound to (all zero for the wildcard address) and the family the connections it takes
/// come in on. An IPv6 wildcard socket that also takes IPv4 is stored under both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    /// Bound address (IPv4 as IPv4-mapped IPv6), network order; zero for the wildcard.
    pub addr: [u8; 16],
    /// The TO port, host order.
    pub port: u16,
    /// [`LISTENER_V4`] or [`LISTENER_V6`]: the family of the connections it takes.
    pub family: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
}

/// [`ListenerKey::family`] of IPv4 connections.
pub const LISTENER_V4: u8 = 4;
/// [`ListenerKey::family`] of IPv6 connections.
pub const LISTENER_V6: u8 = 6;
