//! Server→client direction: rewrite the reply's source port TO→FROM on TC egress.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use redirector_common::stats::Counter;

use crate::{
    flow,
    maps::{count, with_rule_stats},
    packet::{parse_tc, PacketBuf},
    parse::TCP_SPORT_OFF,
};

/// TC egress entry: `TC_ACT_UNSPEC` hands the packet on unchanged or rewritten.
#[inline(always)]
pub fn tc(ctx: &TcContext) -> i32 {
    if let Err(reason) = apply(ctx) {
        count(reason);
    }
    TC_ACT_UNSPEC
}

/// Rewrites the source port of a reply that belongs to a tracked flow.
#[inline(always)]
fn apply(ctx: &TcContext) -> Result<(), Counter> {
    let pkt = parse_tc(ctx)?;
    let rewrite = flow::egress(&pkt)?;
    ctx.rewrite_port(
        pkt.l4_off,
        TCP_SPORT_OFF,
        rewrite.old_port_be,
        rewrite.new_port_be,
    )?;
    count(Counter::RewriteEgress);
    let bytes = pkt.l3_len as u64;
    with_rule_stats(rewrite.rule_slot, |s| {
        s.packets_out += 1;
        s.bytes_out += bytes;
    });
    Ok(())
}
