//! Global counters: why packets were passed untouched (fail-open reasons) and flow events.

/// Index into the per-CPU [`crate::maps::STATS_MAP`] array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Ethertype neither IPv4 nor IPv6 (ARP, LLDP, …). Normal traffic.
    PassNotIp = 0,
    /// IP packet that is not TCP (UDP, ICMP, …). Normal traffic.
    PassNotTcp,
    /// Headers cut short before the TCP ports and flags (fail open).
    PassTruncated,
    /// Malformed IP header: bad version or IHL (fail open).
    PassBadIpHeader,
    /// IPv4 or IPv6 fragment that is not the first one (no TCP header; fail open).
    PassFragment,
    /// IPv6 extension header we do not walk (ESP, unknown, or too many; fail open).
    PassIpv6ExtUnsupported,
    /// More VLAN tags than we walk (fail open).
    PassVlanDepth,
    /// TCP packet that belongs to no tracked flow and creates none. Normal traffic.
    PassUntracked,
    /// SYN to a rule's FROM port while the rule is disabled.
    PassRuleDisabled,
    /// SYN to a rule's FROM port from a source outside the allow list.
    PassSourceDenied,
    /// Packet of a tracked client tuple but to/from a port other than the entry's.
    PassPortMismatch,
    /// A flow entry was created by a SYN.
    FlowCreated,
    /// Creating a flow entry failed (table full or map error); the SYN passed untouched.
    FlowInsertFailed,
    /// A flow entry was removed because of a RST (loaders before the kernel judged
    /// removals; kept so that adopted counters still add up). Never counted now: see
    /// [`Counter::FlowRstSeen`].
    FlowClosedRst,
    /// A flow saw FIN in both directions (entry kept until reaped).
    FlowClosedFin,
    /// A client→server packet was rewritten FROM→TO.
    RewriteIngress,
    /// A server→client packet was rewritten TO→FROM.
    RewriteEgress,
    /// A kernel checksum/store helper failed; the packet passed unmodified.
    RewriteFailed,
    /// A SYN replaced the entry of the same client tuple (port reuse of a closing flow).
    FlowReplaced,
    /// The loader's reaper removed an expired entry (written by user space only).
    FlowReaped,
    /// `redirector flush` removed an entry (written by user space only).
    FlowFlushed,
    /// A SYN to an enabled rule was not redirected because the established table is full
    /// (`--conntrack-size`): it passed untouched, so no accepted connection pays for it.
    PassTableFull,
    /// The client's handshake-completing ACK moved a flow from the half-open table to
    /// the established one.
    FlowPromoted,
    /// Moving a flow to the established table failed (kernel out of memory); it stays
    /// half-open (evictable) and the promotion is retried on its next packet.
    FlowPromoteFailed,
    /// A local connect (from the loader's network namespace to one of its own addresses)
    /// to an enabled rule's FROM port was redirected at connect time (cgroup hook).
    LocalRedirected,
    /// A local connect to a rule's FROM port while the rule is disabled: left alone.
    LocalPassRuleDisabled,
    /// A local connect to a rule's FROM port at an address outside the allow list (for
    /// local traffic the destination is also the source): left alone.
    LocalPassSourceDenied,
    /// A RST of a tracked flow was rewritten and passed to its endpoint, which judges it
    /// (RFC 5961); the entry stays until the kernel no longer holds the connection.
    FlowRstSeen,
    /// A client's packet of no tracked flow to a rule's FROM port belonged to a live
    /// connection on the rule's TO port (the kernel's socket table, no socket owning the
    /// tuple on FROM), or was a handshake ACK carrying a valid SYN cookie of the kernel for
    /// the tuple on TO: its entry was re-created and the packet rewritten.
    FlowHealedIngress,
    /// A server's packet of no tracked flow came from a socket recorded as carrying a
    /// redirected connection: its entry was re-created and the packet rewritten.
    FlowHealedEgress,
    /// An entry healed from a client's packet was removed at the server's first packet:
    /// that socket carries no redirected connection (a direct connection to the TO port
    /// with the same tuple), so its replies pass untouched.
    FlowHealWithdrawn,
    /// A SYN on the tuple of a closing flow whose connection the kernel still holds: the
    /// entry was kept (the endpoint answers such a SYN with a challenge ACK).
    FlowSynOnLive,
    /// The reaper removed an entry because the kernel no longer holds its connection
    /// (written by user space only; also counted in [`Counter::FlowReaped`]).
    FlowReapedGone,
    /// Socket steering: a new connection to an enabled rule's FROM port was handed to a
    /// listening socket of its TO port at socket lookup (`--mode socket`).
    SteerAssigned,
    /// Socket steering: a new connection to a rule's FROM port while the rule is disabled:
    /// left to the kernel's own lookup.
    SteerPassRuleDisabled,
    /// Socket steering: a new connection to a rule's FROM port from a source outside the
    /// allow list: left to the kernel's own lookup.
    SteerPassSourceDenied,
    /// Socket steering: no listening socket of the TO port is known for a new connection to
    /// an enabled rule's FROM port: the connection is refused, as it would be at a closed
    /// TO port.
    SteerNoListener,
    /// Socket steering: the kernel refused the listening socket found (`bpf_sk_assign`,
    /// e.g. an IPv6-only socket for an IPv4 connection): left to the kernel's own lookup.
    SteerAssignFailed,
}

impl Counter {
    /// Number of counters (size of the stats array).
    pub const COUNT: u32 = 38;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::PassNotIp,
        Counter::PassNotTcp,
        Counter::PassTruncated,
        Counter::PassBadIpHeader,
        Counter::PassFragment,
        Counter::PassIpv6ExtUnsupported,
        Counter::PassVlanDepth,
        Counter::PassUntracked,
        Counter::PassRuleDisabled,
        Counter::PassSourceDenied,
        Counter::PassPortMismatch,
        Counter::FlowCreated,
        Counter::FlowInsertFailed,
        Counter::FlowClosedRst,
        Counter::FlowClosedFin,
        Counter::RewriteIngress,
        Counter::RewriteEgress,
        Counter::RewriteFailed,
        Counter::FlowReplaced,
        Counter::FlowReaped,
        Counter::FlowFlushed,
        Counter::PassTableFull,
        Counter::FlowPromoted,
        Counter::FlowPromoteFailed,
        Counter::LocalRedirected,
        Counter::LocalPassRuleDisabled,
        Counter::LocalPassSourceDenied,
        Counter::FlowRstSeen,
        Counter::FlowHealedIngress,
        Counter::FlowHealedEgress,
        Counter::FlowHealWithdrawn,
        Counter::FlowSynOnLive,
        Counter::FlowReapedGone,
        Counter::SteerAssigned,
        Counter::SteerPassRuleDisabled,
        Counter::SteerPassSourceDenied,
        Counter::SteerNoListener,
        Counter::SteerAssignFailed,
    ];

    /// Stable snake_case name used in output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassNotTcp => "pass_not_tcp",
            Counter::PassTruncated => "pass_truncated",
            Counter::PassBadIpHeader => "pass_bad_ip_header",
            Counter::PassFragment => "pass_fragment",
            Counter::PassIpv6ExtUnsupported => "pass_ipv6_ext_unsupported",
            Counter::PassVlanDepth => "pass_vlan_depth",
            Counter::PassUntracked => "pass_untracked",
            Counter::PassRuleDisabled => "pass_rule_disabled",
            Counter::PassSourceDenied => "pass_source_denied",
            Counter::PassPortMismatch => "pass_port_mismatch",
            Counter::FlowCreated => "flow_created",
            Counter::FlowInsertFailed => "flow_insert_failed",
            Counter::FlowClosedRst => "flow_closed_rst",
            Counter::FlowClosedFin => "flow_closed_fin",
            Counter::RewriteIngress => "rewrite_ingress",
            Counter::RewriteEgress => "rewrite_egress",
            Counter::RewriteFailed => "rewrite_failed",
            Counter::FlowReplaced => "flow_replaced",
            Counter::FlowReaped => "flow_reaped",
            Counter::FlowFlushed => "flow_flushed",
            Counter::PassTableFull => "pass_table_full",
            Counter::FlowPromoted => "flow_promoted",
            Counter::FlowPromoteFailed => "flow_promote_failed",
            Counter::LocalRedirected => "local_redirected",
            Counter::LocalPassRuleDisabled => "local_pass_rule_disabled",
            Counter::LocalPassSourceDenied => "local_pass_source_denied",
            Counter::FlowRstSeen => "flow_rst_seen",
            Counter::FlowHealedIngress => "flow_healed_ingress",
            Counter::FlowHealedEgress => "flow_healed_egress",
            Counter::FlowHealWithdrawn => "flow_heal_withdrawn",
            Counter::FlowSynOnLive => "flow_syn_on_live",
            Counter::FlowReapedGone => "flow_reaped_gone",
            Counter::SteerAssigned => "steer_assigned",
            Counter::SteerPassRuleDisabled => "steer_pass_rule_disabled",
            Counter::SteerPassSourceDenied => "steer_pass_source_denied",
            Counter::SteerNoListener => "steer_no_listener",
            Counter::SteerAssignFailed => "steer_assign_failed",
        }
    }

    /// True for counters that only user space writes (the kernel never touches them, so
    /// user space may add to them without losing a kernel increment).
    pub const fn is_user_written(self) -> bool {
        matches!(
            self,
            Counter::FlowReaped | Counter::FlowFlushed | Counter::FlowReapedGone
        )
    }

    /// True for reasons where the program did not understand the packet and failed open.
    pub const fn is_fail_open(self) -> bool {
        matches!(
            self,
            Counter::PassTruncated
                | Counter::PassBadIpHeader
                | Counter::PassFragment
                | Counter::PassIpv6ExtUnsupported
                | Counter::PassVlanDepth
                | Counter::RewriteFailed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
    }
}
