//! redirector kernel side: entry points only. Each returns the verdict its handler computed.
//!
//! The programs never drop: everything they do not understand passes untouched and is
//! counted (fail open). XDP ingress (or TC ingress in `tc` mode) rewrites the destination
//! port of tracked flows FROM→TO; TC egress rewrites the source port of replies TO→FROM.
//! Socket lookup (`--mode socket`) rewrites nothing: it hands a new connection to the TO
//! port's listener, and refuses it, as the closed TO port would, when there is none.
#![no_std]
#![no_main]
// aya-ebpf's #[xdp] and #[classifier] emit each exported entry symbol without the doc
// comment written on it; a binary has nothing else `missing_docs` would check.
#![allow(missing_docs)]
// `core::intrinsics::atomic_xadd`: the only atomic add on bpfel (no `AtomicU64::fetch_add`
// there); it compiles to one BPF_ATOMIC add, which the verifier accepts on map values.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod egress;
mod events;
mod flow;
mod heal;
mod ingress;
mod local;
mod maps;
mod packet;
mod parse;
mod reap;
mod sockets;
mod steer;
mod syncookie;

use aya_ebpf::{
    bindings::{xdp_action::XDP_PASS, TC_ACT_UNSPEC},
    macros::{cgroup_sock_addr, classifier, sk_lookup, xdp},
    programs::{SkLookupContext, SockAddrContext, TcContext, XdpContext},
};

/// XDP ingress: the fast path for client→server packets.
#[xdp]
pub fn redirector_xdp_ingress(ctx: XdpContext) -> u32 {
    ingress::xdp(&ctx)
}

/// TC ingress: the same logic as XDP, for `--mode tc`.
#[classifier]
pub fn redirector_tc_ingress(ctx: TcContext) -> i32 {
    ingress::tc(&ctx)
}

/// TC egress: rewrites server→client replies of tracked flows.
#[classifier]
pub fn redirector_tc_egress(ctx: TcContext) -> i32 {
    egress::tc(&ctx)
}

/// cgroup connect4: local IPv4 clients of the loader's namespace connecting to one of its
/// addresses on a rule's FROM port are connected to the TO port instead.
#[cgroup_sock_addr(connect4)]
pub fn redirector_connect4(ctx: SockAddrContext) -> i32 {
    local::connect4(&ctx)
}

/// cgroup connect6: the same for IPv6 (and IPv4-mapped) destinations.
#[cgroup_sock_addr(connect6)]
pub fn redirector_connect6(ctx: SockAddrContext) -> i32 {
    local::connect6(&ctx)
}

/// cgroup getpeername4: a redirected local IPv4 socket reports the FROM port.
#[cgroup_sock_addr(getpeername4)]
pub fn redirector_getpeername4(ctx: SockAddrContext) -> i32 {
    local::getpeername(&ctx)
}

/// cgroup getpeername6: the same for IPv6 sockets.
#[cgroup_sock_addr(getpeername6)]
pub fn redirector_getpeername6(ctx: SockAddrContext) -> i32 {
    local::getpeername(&ctx)
}

/// Socket lookup (`--mode socket`): a new connection to an enabled rule's FROM port is
/// handed to a listening socket of its TO port.
#[sk_lookup]
pub fn redirector_sk_lookup(ctx: SkLookupContext) -> u32 {
    steer::lookup(&ctx)
}

/// The reaper's removals, never attached: the loader runs it with `BPF_PROG_TEST_RUN` on
/// a batch of expired flows, each removed only if still the flow the loader saw, so that
/// a connection opened on a reused client port meanwhile keeps its entry.
#[xdp]
pub fn redirector_reap(ctx: XdpContext) -> u32 {
    reap::run(&ctx)
}

/// Benchmark baseline, never attached: an XDP program that only returns the verdict the
/// real one always returns, so `kernel-bench` can measure the cost of running any program
/// at all on this hook next to the cost of the real one.
#[xdp]
pub fn redirector_pass_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Benchmark baseline, never attached: the TC counterpart of `redirector_pass_xdp`,
/// returning what the real TC programs return.
#[classifier]
pub fn redirector_pass_tc(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible licence, required for the helpers used here.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
