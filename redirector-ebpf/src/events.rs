//! Rare kernel events reported to the loader through aya-log (the `AYA_LOGS` ring), at
//! most one record per kind per second per CPU; the counters in `STATS` count every one.
//!
//! Never per packet: a SYN flood against a full table must not turn into a flood of log
//! records (each costs a ring reservation and ~100 bytes). A record that finds the ring
//! full (no loader draining it, e.g. `kernel-bench` or a `--persist` instance whose loader
//! exited) is dropped by `bpf_ringbuf_reserve` without blocking.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use aya_log_ebpf::warn;

use crate::maps::LOG_LAST_NS;

/// Minimum time between two records of one kind on one CPU.
const LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// Target of the records, so that `RUST_LOG=redirector=…` filters them with the rest.
const TARGET: &str = "redirector::kernel";

/// The kinds of reported events: indices of `LOG_LAST_NS`.
#[repr(u32)]
#[derive(Clone, Copy)]
pub enum Event {
    /// A SYN was not redirected because the established table was full.
    TableFull = 0,
    /// A handshake-completed flow could not be inserted into the established table.
    PromoteFailed = 1,
}

impl Event {
    /// Number of kinds (size of `LOG_LAST_NS`).
    pub const COUNT: u32 = 2;
}

/// True if a record of `event` may be written now (and notes the time): the last one on
/// this CPU is at least `LOG_INTERVAL_NS` old.
#[inline(always)]
fn due(event: Event) -> bool {
    let Some(last) = LOG_LAST_NS.get_ptr_mut(event as u32) else {
        return false;
    };
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a per-CPU array element, valid for the program run and only written by
    // this CPU (programs do not preempt each other on one CPU).
    let last = unsafe { &mut *last };
    // The first record after load is due at once: 0 is "never" (boot time is > 1 s).
    if *last != 0 && now.wrapping_sub(*last) < LOG_INTERVAL_NS {
        return false;
    }
    *last = now;
    true
}

/// A SYN to `from_port` passed untouched: `established` flows of `capacity`.
#[inline(always)]
pub fn table_full(from_port: u16, established: i64, capacity: u64) {
    if due(Event::TableFull) {
        warn!(
            &(),
            target: TARGET,
            "established table full ({}/{}), SYN to :{} not redirected; raise --conntrack-size",
            established,
            capacity,
            from_port
        );
    }
}

/// The promotion of a flow to `from_port` failed with `errno` (it stays half-open and
/// the next packet retries).
#[inline(always)]
pub fn promote_failed(from_port: u16, errno: i32) {
    if due(Event::PromoteFailed) {
        warn!(
            &(),
            target: TARGET,
            "promoting a flow to :{} to the established table failed (errno {}); it stays half-open and is retried",
            from_port,
            errno
        );
    }
}
