//! Reclaims flow entries whose connection has ended, as the kernel judges it (its socket
//! table, netfilter conntrack); the idle timeouts apply only where the kernel has no answer.
//!
//! Each pass (every second) reads both flow tables and asks the kernel about every entry's
//! connection ([`crate::kernel_truth`]): one socket-table dump per address family over the
//! TO ports in use, and conntrack only for the entries that dump does not hold. The answer
//! ([`KernelAnswer`]) and the entry's idle time decide ([`decide`]); the removal runs in
//! the kernel ([`Dataplane::reap_flows`]), which leaves an entry seen or replaced since.
//! Then the cookies of `REDIRECTED_SOCKETS` whose socket the dump no longer holds are
//! forgotten.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use redirector_common::{
    conntrack::{STATE_CLOSING, STATE_ESTABLISHED, STATE_FIN_WAIT, STATE_SYN_RECV, STATE_SYN_SENT},
    maps::{FlowKey, FlowValue, RedirectedSocket},
    reap::{ReapEntry, REAP_TABLE_ESTABLISHED, REAP_TABLE_HALF_OPEN},
    stats::Counter,
};

use crate::{
    dataplane::{local, Dataplane, DataplaneError},
    kernel_truth::{
        conntrack::{self, Conntrack},
        sock_diag::{self, SocketTable},
        ServerTuple,
    },
};

/// How long an entry whose connection neither the socket table nor conntrack knows
/// (while its server address is this namespace's) stays: a handshake whose socket is not
/// visible yet, or a dump that raced it, is not lost.
pub const GONE_GRACE: Duration = Duration::from_secs(3);

/// The share of one core the reaper's passes may take: after a pass that took `d`, the
/// next waits at least `d × (1 / MAX_DUTY − 1)`. A pass judges every tracked flow (≈ 0.7 µs
/// each on a 2-vCPU VM: 8 ms at 1 k flows, 55 ms at 100 k, 0.69 s at 1 M, `kernel-bench`),
/// so up to about 70 k flows it runs every second and beyond that less often — about every
/// 14 s at 1 M flows — rather than taking most of a core to answer sooner.
pub const MAX_DUTY: f64 = 0.05;

/// The longest wait between two passes, whatever a pass costs.
pub const MAX_PASS_INTERVAL: Duration = Duration::from_secs(60);

/// When the next reaper pass is due ([`MAX_DUTY`]).
#[derive(Debug, Default)]
pub struct Pace {
    /// Not before this instant; `None` before the first pass.
    next: Option<Instant>,
}

impl Pace {
    /// Runs [`reap`] if a pass is due at `now`; returns how many entries it removed (0 when
    /// none was due).
    pub fn reap(
        &mut self,
        dp: &mut Dataplane,
        timeouts: &Timeouts,
        now: Instant,
    ) -> Result<usize, DataplaneError> {
        if !self.due(now) {
            return Ok(0);
        }
        let result = reap(dp, timeouts);
        self.ran(now, now.elapsed());
        result
    }

    /// True if a pass may start at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// Records a pass that started at `started` and took `took`.
    pub fn ran(&mut self, started: Instant, took: Duration) {
        let rest = took.mul_f64(1.0 / MAX_DUTY - 1.0).min(MAX_PASS_INTERVAL);
        self.next = Some(started + took + rest);
    }
}

/// Idle times after which an entry is removed when the kernel judges its connection
/// closed ([`Timeouts::closing`]) or has no answer about it (all of them, by state).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// No answer, handshake in progress (kernel: syn_sent 120 s; shorter here, SYN floods
    /// are cheap).
    pub handshake: Duration,
    /// No answer, established or with a FIN one way (kernel: 5 days). A single FIN, which a
    /// blind sender can forge, does not shorten it.
    pub established: Duration,
    /// No longer used: a FIN one way leaves the established timeout in force. Kept so that
    /// configurations and instance files that set it stay valid.
    pub fin_wait: Duration,
    /// The connection closed (its socket or conntrack entry in TIME_WAIT/CLOSE), or, with
    /// no answer, FIN seen both ways: the endpoints hold TIME_WAIT, the entry only needs to
    /// outlive retransmitted FINs and final ACKs.
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
    /// How long an entry in `state` may idle when the kernel has no answer about it.
    pub fn idle_limit(&self, state: u8) -> Duration {
        match state {
            STATE_SYN_SENT | STATE_SYN_RECV => self.handshake,
            STATE_ESTABLISHED | STATE_FIN_WAIT => self.established,
            STATE_CLOSING => self.closing,
            _ => Duration::ZERO,
        }
    }

    /// True if `flow` has idled past its state's limit at `now_ns` (CLOCK_MONOTONIC): the
    /// rule where the kernel has no answer.
    pub fn expired(&self, flow: &FlowValue, now_ns: u64) -> bool {
        idle(flow, now_ns) >= self.idle_limit(flow.state)
    }
}

/// What the kernel says about the connection behind an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelAnswer {
    /// A socket, or a conntrack entry, holds it in a state before TIME_WAIT.
    Alive,
    /// Its socket or conntrack entry is in TIME_WAIT or CLOSE.
    Closed,
    /// Neither knows it, and its server address is one of this namespace's: its socket
    /// would have to be here.
    Gone,
    /// The kernel cannot say: a flow routed on to another host without conntrack, or the
    /// kernel could not be asked.
    NoAnswer,
}

/// Why an entry is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Its connection closed, and the entry idled for the closing timeout.
    Closed,
    /// The kernel no longer holds its connection, past [`GONE_GRACE`].
    Gone,
    /// No answer from the kernel, and the entry idled past its state's timeout.
    Idle,
}

/// Whether to remove `flow` at `now_ns` given the kernel's `answer`, and why: an alive
/// connection never; a closed one after the closing timeout; a gone one after
/// [`GONE_GRACE`]; without an answer, after its state's timeout ([`Timeouts::idle_limit`]).
pub fn decide(
    flow: &FlowValue,
    answer: KernelAnswer,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Option<Reason> {
    let idle = idle(flow, now_ns);
    match answer {
        KernelAnswer::Alive => None,
        KernelAnswer::Closed => (idle >= timeouts.closing).then_some(Reason::Closed),
        KernelAnswer::Gone => (idle >= GONE_GRACE).then_some(Reason::Gone),
        KernelAnswer::NoAnswer => timeouts.expired(flow, now_ns).then_some(Reason::Idle),
    }
}

fn idle(flow: &FlowValue, now_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(flow.last_seen_ns))
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

/// One pass, the loader's tick: asks the kernel about every entry, removes those whose
/// connection ended (counted in `flow_reaped`, the gone ones in `flow_reaped_gone` too),
/// then forgets the recorded sockets the kernel no longer holds. Returns how many entries
/// were removed.
///
/// If the socket table cannot be read, this pass applies the timeouts alone (warned once
/// until it can be read again): an entry is never removed as gone because the kernel could
/// not be asked.
pub fn reap(dp: &mut Dataplane, timeouts: &Timeouts) -> Result<usize, DataplaneError> {
    // Read before the dump: a socket recorded after it started is not judged by it.
    let recorded = dp.redirected_sockets()?;
    let flows = snapshot(dp)?;
    if flows.is_empty() && recorded.is_empty() {
        // Nothing to judge: the dump would cost the walk of the whole socket hash.
        return Ok(0);
    }
    let kernel = KernelView::ask(&flows, &server_ports(&flows, &recorded));
    let now_ns = monotonic_ns();
    let (mut gone, mut other) = (Vec::new(), Vec::new());
    for (table, key, flow) in &flows {
        let answer = kernel.answer(&ServerTuple::of_flow(key, flow));
        match decide(flow, answer, now_ns, timeouts) {
            Some(Reason::Gone) => gone.push(reap_entry(*table, key, flow)),
            Some(Reason::Closed | Reason::Idle) => other.push(reap_entry(*table, key, flow)),
            None => {}
        }
    }
    let removed_gone = remove_gone(dp, &gone);
    let removed_other = remove_expired(dp, &other);
    let forgotten = match &kernel.sockets {
        Some(sockets) => forget_closed_sockets(dp, &recorded, sockets),
        None => Ok(0),
    };
    let (gone, other) = (removed_gone?, removed_other?);
    if gone > 0 {
        log::debug!("reaped {gone} flows whose connection the kernel no longer holds");
    }
    if forgotten? > 0 {
        log::debug!("forgot the sockets of closed redirected connections");
    }
    Ok(gone + other)
}

/// The entries of both tables expired at `now_ns` by the timeouts alone, as if the kernel
/// had no answer about any (a plan for tests and tooling, which run outside the loader's
/// namespace), each as seen now with its table.
pub fn expired(
    dp: &Dataplane,
    timeouts: &Timeouts,
    now_ns: u64,
) -> Result<Vec<ReapEntry>, DataplaneError> {
    Ok(snapshot(dp)?
        .into_iter()
        .filter(|(_, _, flow)| timeouts.expired(flow, now_ns))
        .map(|(table, key, flow)| reap_entry(table, &key, &flow))
        .collect())
}

/// Removes the entries of `expired` that are still the flows seen then (the kernel checks
/// each in place: a flow opened since on a reused client port, or seen since, stays),
/// and counts them in `flow_reaped`; returns how many were removed.
pub fn remove_expired(dp: &mut Dataplane, expired: &[ReapEntry]) -> Result<usize, DataplaneError> {
    let (removed, result) = dp.reap_flows(expired);
    // Counted even after an error: what was removed must not look evicted.
    dp.maps_mut()
        .add_to_user_counter(Counter::FlowReaped, removed as u64)?;
    result.map(|()| removed)
}

/// [`remove_expired`] for entries whose connection is gone, also counted in
/// `flow_reaped_gone` (where the STATS map has it: one pinned by an older loader is
/// shorter).
fn remove_gone(dp: &mut Dataplane, gone: &[ReapEntry]) -> Result<usize, DataplaneError> {
    if gone.is_empty() {
        return Ok(0);
    }
    let (removed, result) = dp.reap_flows(gone);
    let maps = dp.maps_mut();
    maps.add_to_user_counter(Counter::FlowReaped, removed as u64)?;
    if (Counter::FlowReapedGone as u32) < maps.stats_len()? {
        maps.add_to_user_counter(Counter::FlowReapedGone, removed as u64)?;
    }
    result.map(|()| removed)
}

/// Forgets the recorded sockets (read before the dump) that the dump does not hold.
fn forget_closed_sockets(
    dp: &mut Dataplane,
    recorded: &[(u64, RedirectedSocket)],
    sockets: &SocketTable,
) -> Result<usize, DataplaneError> {
    let alive: HashSet<u64> = sockets.values().map(|s| s.cookie).collect();
    let closed: Vec<u64> = recorded
        .iter()
        .map(|(cookie, _)| *cookie)
        .filter(|cookie| !alive.contains(cookie))
        .collect();
    if closed.is_empty() {
        return Ok(0);
    }
    dp.forget_redirected_sockets(&closed)
}

/// Every entry of both tables, with its table.
fn snapshot(dp: &Dataplane) -> Result<Vec<(u32, FlowKey, FlowValue)>, DataplaneError> {
    let maps = dp.maps();
    let tables = [
        (REAP_TABLE_ESTABLISHED, maps.established_flows()?),
        (REAP_TABLE_HALF_OPEN, maps.half_open_flows()?),
    ];
    Ok(tables
        .into_iter()
        .flat_map(|(table, flows)| flows.into_iter().map(move |(k, v)| (table, k, v)))
        .collect())
}

fn reap_entry(table: u32, key: &FlowKey, flow: &FlowValue) -> ReapEntry {
    ReapEntry {
        created_ns: flow.created_ns,
        last_seen_ns: flow.last_seen_ns,
        key: *key,
        table,
        state: flow.state,
        _pad: [0; 7],
    }
}

/// The ports the server sockets of `flows` and `recorded` are bound to (their TO ports,
/// whether or not a rule still names them).
fn server_ports(
    flows: &[(u32, FlowKey, FlowValue)],
    recorded: &[(u64, RedirectedSocket)],
) -> HashSet<u16> {
    flows
        .iter()
        .map(|(_, _, flow)| flow.target_port)
        .chain(recorded.iter().map(|(_, socket)| socket.target_port))
        .collect()
}

/// Warns when a question to the kernel starts failing, and once more when it answers
/// again; silent in between (the loader asks every second).
struct Failing(AtomicBool);

impl Failing {
    const fn new() -> Self {
        Failing(AtomicBool::new(false))
    }

    fn failed(&self, what: &str, error: &dyn std::error::Error) {
        if !self.0.swap(true, Ordering::Relaxed) {
            log::warn!("{what}: {}; applying the timeouts instead", chain(error));
        }
    }

    fn answered(&self, what: &str) {
        if self.0.swap(false, Ordering::Relaxed) {
            log::info!("{what}: answers again");
        }
    }
}

/// `error` and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

static SOCK_DIAG_FAILING: Failing = Failing::new();
static CONNTRACK_FAILING: Failing = Failing::new();
static LOCAL_ADDRS_FAILING: Failing = Failing::new();

/// What the kernel said in one pass; `None` where it could not be asked.
struct KernelView {
    /// The server sockets on the TO ports in use.
    sockets: Option<SocketTable>,
    /// Conntrack, asked about the entries the socket table does not hold.
    conntrack: Option<Conntrack>,
    /// The namespace's addresses, read only if some entry is known to neither.
    local_addrs: Option<HashSet<[u8; 16]>>,
}

impl KernelView {
    /// Asks the kernel about the connections of `flows`, whose server sockets are bound to
    /// one of `ports`.
    fn ask(flows: &[(u32, FlowKey, FlowValue)], ports: &HashSet<u16>) -> Self {
        let mut view = KernelView {
            sockets: None,
            conntrack: None,
            local_addrs: None,
        };
        const SOCKETS: &str = "asking the kernel's socket table about tracked flows";
        match sock_diag::tcp_sockets(ports) {
            Ok(sockets) => {
                SOCK_DIAG_FAILING.answered(SOCKETS);
                view.sockets = Some(sockets);
            }
            Err(e) => {
                SOCK_DIAG_FAILING.failed(SOCKETS, &e);
                return view;
            }
        }
        let sockets = view.sockets.as_ref().expect("just set");
        let unknown: Vec<ServerTuple> = flows
            .iter()
            .map(|(_, key, flow)| ServerTuple::of_flow(key, flow))
            .filter(|tuple| !sockets.contains_key(tuple))
            .collect();
        if unknown.is_empty() {
            return view;
        }
        const CONNTRACK: &str = "asking netfilter conntrack about tracked flows";
        match conntrack::tcp_states(&unknown) {
            Ok(answer) => {
                CONNTRACK_FAILING.answered(CONNTRACK);
                view.conntrack = Some(answer);
            }
            Err(e) => CONNTRACK_FAILING.failed(CONNTRACK, &e),
        }
        let conntrack = view.conntrack.as_ref();
        if unknown
            .iter()
            .any(|tuple| conntrack.is_some_and(|c| c.state(tuple).is_none()))
        {
            const ADDRS: &str = "listing the namespace's addresses for the reaper";
            match local::namespace_addrs() {
                Ok(addrs) => {
                    LOCAL_ADDRS_FAILING.answered(ADDRS);
                    view.local_addrs = Some(addrs);
                }
                Err(e) => LOCAL_ADDRS_FAILING.failed(ADDRS, &e),
            }
        }
        view
    }

    /// The kernel's answer about `tuple`.
    fn answer(&self, tuple: &ServerTuple) -> KernelAnswer {
        let Some(sockets) = &self.sockets else {
            return KernelAnswer::NoAnswer;
        };
        if let Some(socket) = sockets.get(tuple) {
            return if socket.state.is_closed() {
                KernelAnswer::Closed
            } else {
                KernelAnswer::Alive
            };
        }
        // Conntrack not asked (or failed) about a connection the socket table lacks: it
        // may be a forwarded flow that conntrack holds.
        let Some(conntrack) = &self.conntrack else {
            return KernelAnswer::NoAnswer;
        };
        if let Some(state) = conntrack.state(tuple) {
            return if state.is_closed() {
                KernelAnswer::Closed
            } else {
                KernelAnswer::Alive
            };
        }
        match &self.local_addrs {
            Some(addrs) if addrs.contains(&tuple.server_addr) => KernelAnswer::Gone,
            _ => KernelAnswer::NoAnswer,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::kernel_truth::{
        conntrack::CtState,
        encode_addr,
        sock_diag::{SocketInfo, TcpState},
    };

    const S: u64 = 1_000_000_000;

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
    fn no_answer_applies_the_timeouts_by_state() {
        let t = Timeouts::default();
        assert!(t.expired(&flow(STATE_CLOSING, 0), 11 * S));
        assert!(!t.expired(&flow(STATE_CLOSING, 0), 9 * S));
        assert!(!t.expired(&flow(STATE_ESTABLISHED, 0), 3600 * S));
        assert!(t.expired(&flow(STATE_SYN_SENT, 0), 61 * S));
        assert!(!t.expired(&flow(STATE_SYN_RECV, 0), 59 * S));
    }

    #[test]
    fn a_single_fin_does_not_shorten_the_timeout() {
        let t = Timeouts::default();
        assert_eq!(t.idle_limit(STATE_FIN_WAIT), t.established);
        // Past what fin_wait used to allow, well within established.
        let fin_wait = flow(STATE_FIN_WAIT, 0);
        assert_eq!(
            decide(&fin_wait, KernelAnswer::NoAnswer, 3600 * S, &t),
            None
        );
        assert_eq!(
            decide(
                &fin_wait,
                KernelAnswer::NoAnswer,
                t.established.as_secs() * S,
                &t
            ),
            Some(Reason::Idle)
        );
    }

    #[test]
    fn an_alive_connection_is_never_removed() {
        let t = Timeouts::default();
        for state in [
            STATE_SYN_SENT,
            STATE_SYN_RECV,
            STATE_ESTABLISHED,
            STATE_FIN_WAIT,
            STATE_CLOSING,
            0,
        ] {
            assert_eq!(
                decide(&flow(state, 0), KernelAnswer::Alive, u64::MAX, &t),
                None,
                "{state}"
            );
        }
    }

    #[test]
    fn a_closed_connection_goes_after_the_closing_timeout_whatever_the_state() {
        let t = Timeouts::default();
        let established = flow(STATE_ESTABLISHED, 100 * S);
        assert_eq!(
            decide(&established, KernelAnswer::Closed, 109 * S, &t),
            None
        );
        assert_eq!(
            decide(&established, KernelAnswer::Closed, 110 * S, &t),
            Some(Reason::Closed)
        );
    }

    #[test]
    fn a_gone_connection_goes_after_the_grace() {
        let t = Timeouts::default();
        let syn_sent = flow(STATE_SYN_SENT, 100 * S);
        // A handshake whose socket is not visible yet.
        assert_eq!(decide(&syn_sent, KernelAnswer::Gone, 102 * S, &t), None);
        assert_eq!(
            decide(&syn_sent, KernelAnswer::Gone, 103 * S, &t),
            Some(Reason::Gone)
        );
        // A clock behind the entry's last packet (read before it) is no idle time.
        assert_eq!(decide(&syn_sent, KernelAnswer::Gone, 50 * S, &t), None);
    }

    fn tuple(client_port: u16, server: &str) -> ServerTuple {
        ServerTuple {
            server_addr: encode_addr(server.parse().unwrap()),
            server_port: 8080,
            client_addr: encode_addr("10.0.0.9".parse().unwrap()),
            client_port,
        }
    }

    fn sockets(entries: &[(ServerTuple, TcpState)]) -> SocketTable {
        entries
            .iter()
            .map(|(t, state)| {
                (
                    *t,
                    SocketInfo {
                        state: *state,
                        cookie: 1,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_socket_table_then_conntrack_then_the_namespace_decide() {
        let open = tuple(1, "10.0.0.1");
        let time_wait = tuple(2, "10.0.0.1");
        let forwarded = tuple(3, "10.0.0.1");
        let forwarded_closed = tuple(4, "10.0.0.1");
        let gone = tuple(5, "10.0.0.1");
        let routed_on = tuple(6, "192.0.2.1");
        let view = KernelView {
            sockets: Some(sockets(&[
                (open, TcpState::NewSynRecv),
                (time_wait, TcpState::TimeWait),
            ])),
            conntrack: Some(Conntrack::Tracked(HashMap::from([
                (forwarded, CtState::Established),
                (forwarded_closed, CtState::Close),
            ]))),
            local_addrs: Some(HashSet::from([encode_addr("10.0.0.1".parse().unwrap())])),
        };
        assert_eq!(view.answer(&open), KernelAnswer::Alive);
        assert_eq!(view.answer(&time_wait), KernelAnswer::Closed);
        assert_eq!(view.answer(&forwarded), KernelAnswer::Alive);
        assert_eq!(view.answer(&forwarded_closed), KernelAnswer::Closed);
        assert_eq!(view.answer(&gone), KernelAnswer::Gone);
        assert_eq!(view.answer(&routed_on), KernelAnswer::NoAnswer);

        // Without conntrack in the namespace, only the socket table knows.
        let absent = KernelView {
            conntrack: Some(Conntrack::Absent),
            ..view
        };
        assert_eq!(absent.answer(&forwarded), KernelAnswer::Gone);
        assert_eq!(absent.answer(&routed_on), KernelAnswer::NoAnswer);
    }

    #[test]
    fn what_the_kernel_could_not_say_is_never_gone() {
        let open = tuple(1, "10.0.0.1");
        let unknown = tuple(2, "10.0.0.1");
        let local = Some(HashSet::from([encode_addr("10.0.0.1".parse().unwrap())]));
        // The socket table could not be read: no answer for any entry.
        let no_sockets = KernelView {
            sockets: None,
            conntrack: None,
            local_addrs: local.clone(),
        };
        assert_eq!(no_sockets.answer(&open), KernelAnswer::NoAnswer);
        // Conntrack failed: a connection missing from the socket table may be its.
        let no_conntrack = KernelView {
            sockets: Some(sockets(&[(open, TcpState::Established)])),
            conntrack: None,
            local_addrs: local,
        };
        assert_eq!(no_conntrack.answer(&open), KernelAnswer::Alive);
        assert_eq!(no_conntrack.answer(&unknown), KernelAnswer::NoAnswer);
        // The namespace's addresses could not be read.
        let no_addrs = KernelView {
            sockets: Some(SocketTable::new()),
            conntrack: Some(Conntrack::Absent),
            local_addrs: None,
        };
        assert_eq!(no_addrs.answer(&unknown), KernelAnswer::NoAnswer);
    }

    #[test]
    fn the_dump_covers_the_ports_of_flows_and_recorded_sockets() {
        let key = FlowKey {
            client_addr: [0; 16],
            server_addr: [0; 16],
            client_port_be: 0,
            lane: 0,
        };
        let flows = [(REAP_TABLE_ESTABLISHED, key, flow(STATE_ESTABLISHED, 0))];
        let recorded = [(
            7,
            RedirectedSocket {
                orig_port: 443,
                target_port: 8443,
                rule_slot: 1,
            },
        )];
        assert_eq!(server_ports(&flows, &recorded), HashSet::from([8080, 8443]));
    }

    #[test]
    fn a_gone_flow_is_removed_only_after_the_grace() {
        // The whole rule for one entry: the kernel's answer, then the decision.
        let t = Timeouts::default();
        let gone = tuple(5, "10.0.0.1");
        let view = KernelView {
            sockets: Some(SocketTable::new()),
            conntrack: Some(Conntrack::Absent),
            local_addrs: Some(HashSet::from([gone.server_addr])),
        };
        let entry = flow(STATE_ESTABLISHED, 10 * S);
        let answer = view.answer(&gone);
        assert_eq!(decide(&entry, answer, 12 * S, &t), None);
        assert_eq!(decide(&entry, answer, 13 * S, &t), Some(Reason::Gone));
    }

    #[test]
    fn a_cheap_pass_runs_every_tick_and_a_dear_one_waits_for_its_share() {
        let start = Instant::now();
        let mut pace = Pace::default();
        assert!(pace.due(start), "the first pass is due at once");
        // 7 ms (1 k flows): due again within the one-second tick.
        pace.ran(start, Duration::from_millis(7));
        assert!(pace.due(start + Duration::from_secs(1)));
        // 0.7 s (1 M flows): 5 % of a core means 14 s from its start.
        pace.ran(start, Duration::from_millis(700));
        assert!(!pace.due(start + Duration::from_millis(13_900)));
        assert!(pace.due(start + Duration::from_millis(14_000)));
        // A pathological pass never defers the next by more than the cap.
        pace.ran(start, Duration::from_secs(10));
        assert!(pace.due(start + Duration::from_secs(10) + MAX_PASS_INTERVAL));
    }
}
