//! The per-packet cases: each is first run once and checked to take the path it names
//! (output frame, checksums, the one counter it feeds, and the table its entry ends up
//! in), then timed next to the baseline of its hook.
//!
//! BPF_PROG_TEST_RUN with `repeat` runs the program again and again on the same buffer
//! without restoring it, so after a real rewrite (80→8080) the second run would see port
//! 8080 and take the port-mismatch path instead. The repeat-mode hit cases therefore time
//! a *fixed-point flow*: an entry whose FROM and TO port are both 80. Every run executes
//! exactly the instructions of a real hit (lookup, port check, state update, checksum
//! update, store, counters) and writes back the bytes it read; `pair_repeat` checks that
//! `rewrite_ingress`/`rewrite_egress` rose once per run. The real 80→8080 rewrite is
//! checked byte for byte first, and timed in single mode by the scaling part.
//!
//! Cases that change the tables are timed in single mode, one fresh entry per run: a SYN
//! creates its half-open entry (one new client port per run), and a handshake ACK
//! promotes a half-open entry that user space inserted for that run alone (state
//! SYN_RECV, as after the server's SYN-ACK). After each round the case checks where its
//! entries are (all half-open after SYNs; all established, none half-open, after ACKs)
//! and removes them.

use anyhow::{ensure, Context as _, Result};
use redirector::dataplane::Dataplane;
use redirector_common::{conntrack, maps::FlowKey, stats::Counter};
use redirector_tests::packets::{flags::*, verify_checksums, Frame};

use crate::{
    flows::{self, addr16, Found},
    measure::{self, Hook, Method, Paired, Probe, Prog, Settings},
    report::CaseRow,
};

/// Client port of the flow opened by a real handshake (the checked 80→8080 path).
const REAL_PORT: u16 = 40001;
/// Client port of the fixed-point flow timed in repeat mode.
const FIXED_PORT: u16 = 40002;
/// Client port of the half-open fixed-point flow (the SYN-ACK case).
const HALF_OPEN_FIXED_PORT: u16 = 40003;
/// First client port of a round of SYNs or handshake ACKs.
const FRESH_PORT_BASE: u16 = 10_000;
/// A port without a rule (and a client port without a flow).
const NO_RULE_PORT: u16 = 22;
const UNTRACKED_CLIENT_PORT: u16 = 50000;
/// Payload of the data segments: a WebSocket frame's worth.
const PAYLOAD: &[u8] = &[0x5a; 64];

/// One address family's endpoints.
struct Family {
    name: &'static str,
    client: &'static str,
    server: &'static str,
    /// IP protocol of the non-TCP case (UDP for IPv4, ICMPv6 for IPv6).
    non_tcp_proto: u8,
    /// A client address of its own for each round of SYNs, so every SYN is a new flow.
    syn_client: fn(usize) -> String,
    /// A client address of its own for each round of handshake ACKs.
    promote_client: fn(usize) -> String,
}

const FAMILIES: [Family; 2] = [
    Family {
        name: "v4",
        client: "10.1.0.1",
        server: "10.1.0.2",
        non_tcp_proto: 17,
        syn_client: |round| format!("10.2.{round}.1"),
        promote_client: |round| format!("10.3.{round}.1"),
    },
    Family {
        name: "v6",
        client: "fd00:1::1",
        server: "fd00:1::2",
        non_tcp_proto: 58,
        syn_client: |round| format!("fd00:2::{round:x}:1"),
        promote_client: |round| format!("fd00:3::{round:x}:1"),
    },
];

/// The code path a case times, named in its JSON row (`path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The empty program of the hook.
    Baseline,
    /// A SYN to a rule: admission check, new `HALF_OPEN` entry.
    HalfOpenInsert,
    /// The client's handshake-completing ACK: its `HALF_OPEN` entry moves to
    /// `ESTABLISHED`.
    Promote,
    /// A packet of an established flow: found in `ESTABLISHED` (the first lookup).
    EstablishedHit,
    /// A packet of a half-open flow: `ESTABLISHED` missed, found in `HALF_OPEN`.
    HalfOpenHit,
    /// TCP without a flow: both tables missed, passed untouched.
    Untracked,
    /// TCP without a flow to a rule's FROM port: both tables missed, and the kernel's
    /// socket table asked (FROM and TO) before it passed untouched.
    UntrackedRulePort,
    /// TCP without a flow to a rule's FROM port whose connection the kernel holds on the
    /// TO port: the entry re-created (`heal`).
    Heal,
    /// Not TCP: passed before any lookup.
    NotTcp,
}

impl Path {
    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Path::Baseline => "baseline",
            Path::HalfOpenInsert => "half_open_insert",
            Path::Promote => "promote",
            Path::EstablishedHit => "established_hit",
            Path::HalfOpenHit => "half_open_hit",
            Path::Untracked => "untracked",
            Path::UntrackedRulePort => "untracked_rule_port",
            Path::Heal => "heal",
            Path::NotTcp => "not_tcp",
        }
    }
}

/// A case timed in repeat mode: a frame that is a fixed point of the program.
struct RepeatCase {
    hook: Hook,
    case: &'static str,
    path: Path,
    input: Frame,
    counter: Counter,
}

/// Checks every case, then times it; returns one row per case.
pub fn run(dp: &mut Dataplane, settings: &Settings) -> Result<Vec<CaseRow>> {
    let mut rows = Vec::new();
    for fam in &FAMILIES {
        check_handshake(dp, fam).with_context(|| format!("checking the {} flow", fam.name))?;
        insert_fixed_points(dp, fam)?;
        rows.push(syn(dp, fam, settings)?);
        rows.push(promote(dp, fam, settings)?);
        for case in repeat_cases(fam) {
            let name = format!("{}_{}", case.case, fam.name);
            eprintln!("  {} {name}", case.hook.name());
            let prog = case.hook.program();
            check(dp, prog, &name, &case.input, None, case.counter)?;
            let bytes = case.input.build();
            let paired = measure::pair_repeat(dp, prog, &bytes, &bytes, case.counter, settings)
                .with_context(|| format!("timing {} {name}", case.hook.name()))?;
            rows.push(CaseRow::new(
                case.hook,
                &name,
                case.path,
                Method::Repeat,
                paired,
            ));
        }
        check_fixed_points(dp, fam)?;
    }
    rows.extend(crate::heal::run(dp, settings)?);
    Ok(rows)
}

/// The fixed-point flows of a family: an established one, and a half-open one whose
/// SYN-ACK the egress program rewrites from `HALF_OPEN`.
fn insert_fixed_points(dp: &mut Dataplane, fam: &Family) -> Result<()> {
    flows::insert_fixed_point(dp, fam.client, fam.server, FIXED_PORT)?;
    flows::insert_half_open_fixed_point(dp, fam.client, fam.server, HALF_OPEN_FIXED_PORT)?;
    check_fixed_points(dp, fam)
}

/// Each fixed-point flow is in the table its cases claim (before the timing, and after
/// it: a hit that promoted or removed its entry would have timed another path).
fn check_fixed_points(dp: &Dataplane, fam: &Family) -> Result<()> {
    let (c, s) = (addr16(fam.client), addr16(fam.server));
    for (port, want) in [
        (
            FIXED_PORT,
            Found {
                established: 1,
                half_open: 0,
            },
        ),
        (
            HALF_OPEN_FIXED_PORT,
            Found {
                established: 0,
                half_open: 1,
            },
        ),
    ] {
        let found = flows::locate(dp, &[flows::key(c, s, port)])?;
        ensure!(
            found == want,
            "{} fixed-point flow from port {port}: {found:?}, expected {want:?}",
            fam.name
        );
    }
    Ok(())
}

/// The repeat-mode cases of a family: frames that are fixed points of the program.
fn repeat_cases(fam: &Family) -> Vec<RepeatCase> {
    let data = |src, dst, sport, dport| {
        let mut frame = Frame::tcp(src, dst, sport, dport, ACK | PSH);
        frame.payload = PAYLOAD.to_vec();
        frame
    };
    let mut non_tcp = data(fam.client, fam.server, UNTRACKED_CLIENT_PORT, 80);
    non_tcp.proto = fam.non_tcp_proto;
    let (c, s) = (fam.client, fam.server);
    let case = |hook, case, path, input, counter| RepeatCase {
        hook,
        case,
        path,
        input,
        counter,
    };
    vec![
        case(
            Hook::Xdp,
            "hit",
            Path::EstablishedHit,
            data(c, s, FIXED_PORT, 80),
            Counter::RewriteIngress,
        ),
        case(
            Hook::Xdp,
            "miss",
            Path::Untracked,
            data(c, s, UNTRACKED_CLIENT_PORT, NO_RULE_PORT),
            Counter::PassUntracked,
        ),
        case(
            Hook::Xdp,
            "miss_rule_port",
            Path::UntrackedRulePort,
            data(c, s, UNTRACKED_CLIENT_PORT, 80),
            Counter::PassUntracked,
        ),
        case(
            Hook::Xdp,
            "non_tcp",
            Path::NotTcp,
            non_tcp,
            Counter::PassNotTcp,
        ),
        case(
            Hook::Tc,
            "hit",
            Path::EstablishedHit,
            data(s, c, 80, FIXED_PORT),
            Counter::RewriteEgress,
        ),
        // The first run moves the entry from SYN_SENT to SYN_RECV, every later one keeps
        // it there: a fixed point that stays half-open.
        case(
            Hook::Tc,
            "syn_ack",
            Path::HalfOpenHit,
            Frame::tcp(s, c, 80, HALF_OPEN_FIXED_PORT, SYN | ACK),
            Counter::RewriteEgress,
        ),
        case(
            Hook::Tc,
            "miss",
            Path::Untracked,
            data(s, c, NO_RULE_PORT, UNTRACKED_CLIENT_PORT),
            Counter::PassUntracked,
        ),
    ]
}

/// Runs `input` once through `prog`: verdict, output (`want`, or unchanged when `None`),
/// checksums of a rewritten frame, and exactly one increment of `counter`.
pub fn check(
    dp: &mut Dataplane,
    prog: Prog,
    name: &str,
    input: &Frame,
    want: Option<&Frame>,
    counter: Counter,
) -> Result<()> {
    let before = measure::counter(dp, counter)?;
    let bytes = input.build();
    let want_bytes = want.map_or_else(|| bytes.clone(), Frame::build);
    measure::run_checked(dp, prog, &bytes, &want_bytes).with_context(|| format!("case {name}"))?;
    if want.is_some() {
        // The output equals a frame built with full checksums; say so explicitly anyway.
        verify_checksums(&want_bytes).map_err(|e| anyhow::anyhow!("case {name}: {e}"))?;
    }
    measure::check_counted(dp, counter, before, 1).with_context(|| format!("case {name}"))
}

/// A real connection through both programs: SYN (creates the flow, 80→8080), SYN-ACK
/// (8080→80), data in (the hit path), data out (the egress hit path); the entry must end
/// up established.
fn check_handshake(dp: &mut Dataplane, fam: &Family) -> Result<()> {
    let (c, s, p) = (fam.client, fam.server, REAL_PORT);
    let syn = Frame::tcp(c, s, p, 80, SYN);
    check(
        dp,
        Prog::XdpIngress,
        "syn",
        &syn,
        Some(&syn.with_ports(p, 8080)),
        Counter::FlowCreated,
    )?;
    let syn_ack = Frame::tcp(s, c, 8080, p, SYN | ACK);
    let want = syn_ack.with_ports(80, p);
    check(
        dp,
        Prog::TcEgress,
        "syn-ack",
        &syn_ack,
        Some(&want),
        Counter::RewriteEgress,
    )?;
    let mut data = Frame::tcp(c, s, p, 80, ACK | PSH);
    data.payload = PAYLOAD.to_vec();
    let want = data.with_ports(p, 8080);
    check(
        dp,
        Prog::XdpIngress,
        "hit",
        &data,
        Some(&want),
        Counter::RewriteIngress,
    )?;
    let mut reply = Frame::tcp(s, c, 8080, p, ACK | PSH);
    reply.payload = PAYLOAD.to_vec();
    let want = reply.with_ports(80, p);
    check(
        dp,
        Prog::TcEgress,
        "egress hit",
        &reply,
        Some(&want),
        Counter::RewriteEgress,
    )?;
    let key = flows::key(addr16(c), addr16(s), p);
    let state = dp
        .flows()?
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.state);
    ensure!(
        state == Some(conntrack::STATE_ESTABLISHED),
        "after the handshake the flow is in state {state:?}, not established"
    );
    Ok(())
}

/// The keys of a round of fresh flows from `client`, one per single-mode call.
fn fresh_keys(client: &str, server: &str, settings: &Settings) -> Vec<FlowKey> {
    let (client, server) = (addr16(client), addr16(server));
    fresh_ports(settings)
        .map(|port| flows::key(client, server, port))
        .collect()
}

/// Client ports of a round of fresh flows.
fn fresh_ports(settings: &Settings) -> std::ops::Range<u16> {
    FRESH_PORT_BASE..FRESH_PORT_BASE + settings.single_calls as u16
}

/// Fails unless the keys of a round are where its case put them.
fn check_found(dp: &Dataplane, name: &str, keys: &[FlowKey], want: Found) -> Result<()> {
    let found = flows::locate(dp, keys)?;
    ensure!(
        found == want,
        "case {name}: after a round of {} runs the tables hold {found:?} of its flows, \
         expected {want:?}",
        keys.len()
    );
    Ok(())
}

/// SYNs to 80, one fresh client port per run (single mode): each creates its half-open
/// flow. The flows of a round are removed after it, so no round's SYNs have to evict (the
/// LRU would, once full) and the flows the other cases time stay in the tables.
fn syn(dp: &mut Dataplane, fam: &Family, settings: &Settings) -> Result<CaseRow> {
    let name = format!("syn_{}", fam.name);
    eprintln!("  xdp {name}");
    let (mut prog_ns, mut pass_ns) = (Vec::new(), Vec::new());
    for round in 0..settings.rounds {
        let client = (fam.syn_client)(round);
        let probes: Vec<Probe> = fresh_ports(settings)
            .map(|port| {
                let syn = Frame::tcp(&client, fam.server, port, 80, SYN);
                Probe {
                    input: syn.build(),
                    want: syn.with_ports(port, 8080).build(),
                }
            })
            .collect();
        let paired = measure::pair_single(dp, Prog::XdpIngress, &probes, Counter::FlowCreated)
            .with_context(|| format!("timing xdp {name}"))?;
        prog_ns.push(paired.prog_ns);
        pass_ns.push(paired.pass_ns);
        let keys = fresh_keys(&client, fam.server, settings);
        let want = Found {
            established: 0,
            half_open: keys.len(),
        };
        check_found(dp, &name, &keys, want)?;
        remove(dp, &keys)?;
    }
    Ok(CaseRow::new(
        Hook::Xdp,
        &name,
        Path::HalfOpenInsert,
        Method::Single,
        medians(&prog_ns, &pass_ns),
    ))
}

/// Handshake-completing ACKs (single mode), each promoting a half-open entry inserted
/// for it alone just before the round: every run must count one promotion, and after
/// the round all its flows must be established (and counted so for admission), none
/// half-open. They are removed after the round.
fn promote(dp: &mut Dataplane, fam: &Family, settings: &Settings) -> Result<CaseRow> {
    let name = format!("promote_{}", fam.name);
    eprintln!("  xdp {name}");
    let (mut prog_ns, mut pass_ns) = (Vec::new(), Vec::new());
    for round in 0..settings.rounds {
        let client = (fam.promote_client)(round);
        let keys = fresh_keys(&client, fam.server, settings);
        flows::insert_syn_recv(dp, &keys)?;
        check_found(
            dp,
            &name,
            &keys,
            Found {
                established: 0,
                half_open: keys.len(),
            },
        )?;
        let probes: Vec<Probe> = fresh_ports(settings)
            .map(|port| {
                let ack = Frame::tcp(&client, fam.server, port, 80, ACK);
                Probe {
                    input: ack.build(),
                    want: ack.with_ports(port, 8080).build(),
                }
            })
            .collect();
        let admitted = dp.maps().established_count()?;
        let paired = measure::pair_single(dp, Prog::XdpIngress, &probes, Counter::FlowPromoted)
            .with_context(|| format!("timing xdp {name}"))?;
        prog_ns.push(paired.prog_ns);
        pass_ns.push(paired.pass_ns);
        let promoted = dp.maps().established_count()? - admitted;
        ensure!(
            promoted == keys.len() as i64,
            "case {name}: the admission count rose by {promoted} over {} promotions",
            keys.len()
        );
        let want = Found {
            established: keys.len(),
            half_open: 0,
        };
        check_found(dp, &name, &keys, want)?;
        remove(dp, &keys)?;
    }
    Ok(CaseRow::new(
        Hook::Xdp,
        &name,
        Path::Promote,
        Method::Single,
        medians(&prog_ns, &pass_ns),
    ))
}

/// Removes a round's flows from whichever table holds them; all must have been there.
fn remove(dp: &mut Dataplane, keys: &[FlowKey]) -> Result<()> {
    let (removed, result) = dp.remove_flows(keys);
    result.context("removing a round's flows")?;
    ensure!(
        removed == keys.len(),
        "removed {removed} of a round's {} flows",
        keys.len()
    );
    Ok(())
}

/// The medians over rounds of a single-mode case and of its baseline.
pub fn medians(prog_ns: &[f64], pass_ns: &[f64]) -> Paired {
    Paired {
        prog_ns: measure::median(prog_ns),
        pass_ns: measure::median(pass_ns),
    }
}
