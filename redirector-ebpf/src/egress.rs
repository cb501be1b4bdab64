//! Server→client direction: rewrite the reply's source port TO→FROM on TC egress.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, programs::TcContext};
use redirector_common::{conntrack::Direction, stats::Counter};

use crate::{flow, maps::count, packet, parse::parse_tc};

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
    let rewrite = flow::egress(ctx, &pkt)?;
    packet::apply(ctx, &pkt, rewrite, Direction::ToClient)
}
