//! Reclaims conntrack entries of closed or idle flows, with kernel-like timeouts.

use std::time::Duration;

use redirector_common::{
    conntrack::{STATE_CLOSING, STATE_ESTABLISHED, STATE_FIN_WAIT, STATE_SYN_RECV, STATE_SYN_SENT},
    maps::FlowValue,
    reap::{ReapEntry, REAP_TABLE_ESTABLISHED, REAP_TABLE_HALF_OPEN},
    stats::Counter,
};

use crate::dataplane::{Dataplane, DataplaneError};

/// Idle time after which an entry is removed, per TCP state.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Handshake in progress (kernel: syn_sent 120 s; shorter here, SYN floods are cheap).
    pub handshake: Duration,
    /// Established and idle (kernel: 5 days).
    pub established: Duration,
    /// One side sent FIN (kernel: fin_wait 120 s).
    pub fin_wait: Duration,
    /// Both sides sent FIN (kernel: close/time_wait; the endpoints hold TIME_WAIT, we only
    /// need to outlive retransmitted FINs and final ACKs).
    pub closing: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(60),
            established: Duration::from_secs(5 * 24 * 3600),
            fin_wait: Duration::from_secs(120),
            closing: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// True if `flow`, last seen at `last_seen_ns`, is expired at `now_ns` (CLOCK_MONOTONIC).
    pub fn expired(&self, flow: &FlowValue, now_ns: u64) -> bool {
        let limit = match flow.state {
            STATE_SYN_SENT | STATE_SYN_RECV => self.handshake,
            STATE_ESTABLISHED => self.established,
            STATE_FIN_WAIT => self.fin_wait,
            STATE_CLOSING => self.closing,
            _ => Duration::ZERO,
        };
        now_ns.saturating_sub(flow.last_seen_ns) > limit.as_nanos() as u64
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Removes every expired entry and counts them (`flow_reaped`, so that evictions can be
/// told apart from removals); returns how many were removed.
pub fn reap(dp: &mut Dataplane, timeouts: &Timeouts) -> Result<usize, DataplaneError> {
    let expired = expired(dp, timeouts, monotonic_ns())?;
    remove_expired(dp, &expired)
}

/// The entries of both tables expired at `now_ns`, as seen now, each with its table.
pub fn expired(
    dp: &Dataplane,
    timeouts: &Timeouts,
    now_ns: u64,
) -> Result<Vec<ReapEntry>, DataplaneError> {
    let maps = dp.maps();
    let tables = [
        (REAP_TABLE_ESTABLISHED, maps.established_flows()?),
        (REAP_TABLE_HALF_OPEN, maps.half_open_flows()?),
    ];
    Ok(tables
        .into_iter()
        .flat_map(|(table, flows)| {
            flows
                .into_iter()
                .filter(|(_, flow)| timeouts.expired(flow, now_ns))
                .map(move |(key, flow)| ReapEntry {
                    created_ns: flow.created_ns,
                    last_seen_ns: flow.last_seen_ns,
                    key,
                    table,
                    state: flow.state,
                    _pad: [0; 7],
                })
        })
        .collect())
}

/// Removes the entries of `expired` that are still the flows seen then (the kernel checks
/// each in place: a flow opened since on a reused client port, or seen since, stays),
/// and counts them; returns how many were removed.
pub fn remove_expired(dp: &mut Dataplane, expired: &[ReapEntry]) -> Result<usize, DataplaneError> {
    let (removed, result) = dp.reap_flows(expired);
    // Counted even after an error: what was removed must not look evicted.
    dp.maps_mut()
        .add_to_user_counter(Counter::FlowReaped, removed as u64)?;
    result.map(|()| removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(state: u8, last_seen_ns: u64) -> FlowValue {
        FlowValue {
            orig_port: 80,
            target_port: 8080,
            state,
            fin_flags: 0,
            flags: 0,
            rule_slot: 0,
            _pad2: 0,
            created_ns: 0,
            last_seen_ns,
        }
    }

    #[test]
    fn closing_expires_fast_established_slowly() {
        let t = Timeouts::default();
        let s = 1_000_000_000u64;
        assert!(t.expired(&flow(STATE_CLOSING, 0), 11 * s));
        assert!(!t.expired(&flow(STATE_CLOSING, 0), 9 * s));
        assert!(!t.expired(&flow(STATE_ESTABLISHED, 0), 3600 * s));
        assert!(t.expired(&flow(STATE_SYN_SENT, 0), 61 * s));
    }
}
