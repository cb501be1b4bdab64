//! The reaper's conditional removals: a batch of expired flows from the loader, each
//! removed only if still the flow the loader saw (`redirector_common::reap`).

use aya_ebpf::{bindings::xdp_action::XDP_PASS, programs::XdpContext};
use redirector_common::reap::{entry_offset, ReapEntry, REAP_BATCH};

use crate::flow;

/// Removes the request's flows that are still expired; writes how many into its `count`.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + entry_offset(0) > end {
        return XDP_PASS;
    }
    // SAFETY: the 8-byte header is inside the packet (checked above).
    let count = unsafe { core::ptr::read_unaligned(start as *const u32) } as usize;
    let mut removed: u32 = 0;
    for index in 0..REAP_BATCH {
        if index >= count {
            break;
        }
        let at = start + entry_offset(index);
        if at + core::mem::size_of::<ReapEntry>() > end {
            break;
        }
        // SAFETY: the entry's bytes are inside the packet (checked above); read unaligned
        // into a stack copy, which the map helpers take as key.
        let entry = unsafe { core::ptr::read_unaligned(at as *const ReapEntry) };
        if flow::reap(&entry) {
            removed += 1;
        }
    }
    // SAFETY: as for the read of `count`; the test run's packet is writable.
    unsafe { core::ptr::write_unaligned(start as *mut u32, removed) };
    XDP_PASS
}
