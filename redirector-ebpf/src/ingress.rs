//! Client→server direction: rewrite FROM→TO on XDP (or TC ingress in `tc` mode).

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, TC_ACT_UNSPEC},
    programs::{TcContext, XdpContext},
    EbpfContext,
};
use redirector_common::{conntrack::Direction, stats::Counter};

use crate::{
    flow,
    maps::{count, MARK},
    packet::{self, PacketBuf},
    parse::{parse_tc, parse_tcp, TcpPacket},
};

/// XDP entry: always `XDP_PASS`; the packet is rewritten in place when it belongs to a flow.
#[inline(always)]
pub fn xdp(ctx: &XdpContext) -> u32 {
    let result = parse_tcp(&ctx.bounds()).and_then(|pkt| apply(ctx, &pkt));
    if let Err(reason) = result {
        count(reason);
    }
    XDP_PASS
}

/// TC ingress entry: `TC_ACT_UNSPEC` hands the packet to the next program / the stack.
/// A rewritten packet also gets the `--mark` bits, if any.
#[inline(always)]
pub fn tc(ctx: &TcContext) -> i32 {
    let result = parse_tc(ctx).and_then(|pkt| apply(ctx, &pkt));
    match result {
        Ok(()) => set_mark(ctx),
        Err(reason) => count(reason),
    }
    TC_ACT_UNSPEC
}

/// Sets the `--mark` bits on a rewritten packet, leaving the mark's other bits alone.
/// (XDP runs before there is an skb, so there is no mark to set there; the loader
/// refuses `--mark` with an XDP hook.)
#[inline(always)]
fn set_mark(ctx: &TcContext) {
    let Some(mark) = MARK.get(0) else { return };
    if mark.enabled == 0 {
        return;
    }
    // SAFETY: `skb` is the context pointer the kernel passed to this TC program, valid for
    // the whole run; `mark` is a readable field of `__sk_buff` for TC programs.
    let old = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark((old & !mark.mask) | (mark.value & mark.mask));
}

/// Looks the packet up in conntrack and rewrites its destination port if it is tracked.
#[inline(always)]
fn apply<P: PacketBuf + EbpfContext>(ctx: &P, pkt: &TcpPacket) -> Result<(), Counter> {
    let rewrite = flow::ingress(ctx.as_ptr(), pkt)?;
    packet::apply(ctx, pkt, rewrite, Direction::ToServer)
}
