//! The per-packet cases: each is first run once and checked to take the path it names
//! (output frame, checksums, the one counter it feeds), then timed next to the baseline
//! of its hook.
//!
//! BPF_PROG_TEST_RUN with `repeat` runs the program again and again on the same buffer
//! without restoring it, so after a real rewrite (80→8080) the second run would see port
//! 8080 and take the port-mismatch path instead. The repeat-mode hit cases therefore time
//! a *fixed-point flow*: an entry whose FROM and TO port are both 80. Every run executes
//! exactly the instructions of a real hit (lookup, port check, state update, checksum
//! update, store, counters) and writes back the bytes it read; `pair_repeat` checks that
//! `rewrite_ingress`/`rewrite_egress` rose once per run. The real 80→8080 rewrite is
//! checked byte for byte first, and timed in single mode by the scaling part. A SYN
//! creates its flow once, so SYNs are timed in single mode, one fresh flow per run.

use anyhow::{ensure, Context as _, Result};
use redirector::dataplane::Dataplane;
use redirector_common::{conntrack, stats::Counter};
use redirector_tests::packets::{flags::*, verify_checksums, Frame};

use crate::{
    flows::{self, addr16},
    measure::{self, Hook, Method, Paired, Probe, Prog, Settings},
    report::CaseRow,
};

/// Client port of the flow opened by a real handshake (the checked 80→8080 path).
const REAL_PORT: u16 = 40001;
/// Client port of the fixed-point flow timed in repeat mode.
const FIXED_PORT: u16 = 40002;
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
}

const FAMILIES: [Family; 2] = [
    Family {
        name: "v4",
        client: "10.1.0.1",
        server: "10.1.0.2",
        non_tcp_proto: 17,
        syn_client: |round| format!("10.2.{round}.1"),
    },
    Family {
        name: "v6",
        client: "fd00:1::1",
        server: "fd00:1::2",
        non_tcp_proto: 58,
        syn_client: |round| format!("fd00:2::{round:x}:1"),
    },
];

/// Checks every case, then times it; returns one row per case.
pub fn run(dp: &mut Dataplane, settings: &Settings) -> Result<Vec<CaseRow>> {
    let mut rows = Vec::new();
    for fam in &FAMILIES {
        check_handshake(dp, fam).with_context(|| format!("checking the {} flow", fam.name))?;
        flows::insert_fixed_point(dp, fam.client, fam.server, FIXED_PORT)?;
        rows.push(syn(dp, fam, settings)?);
        for (hook, case, input, counter) in repeat_cases(fam) {
            let name = format!("{case}_{}", fam.name);
            eprintln!("  {} {name}", hook.name());
            let prog = hook.program();
            check(dp, prog, &name, &input, None, counter)?;
            let bytes = input.build();
            let paired = measure::pair_repeat(dp, prog, &bytes, &bytes, counter, settings)
                .with_context(|| format!("timing {} {name}", hook.name()))?;
            rows.push(CaseRow::new(hook, &name, Method::Repeat, paired));
        }
    }
    Ok(rows)
}

/// The repeat-mode cases of a family: frames that are fixed points of the program.
fn repeat_cases(fam: &Family) -> Vec<(Hook, &'static str, Frame, Counter)> {
    let data = |src, dst, sport, dport| {
        let mut frame = Frame::tcp(src, dst, sport, dport, ACK | PSH);
        frame.payload = PAYLOAD.to_vec();
        frame
    };
    let mut non_tcp = data(fam.client, fam.server, UNTRACKED_CLIENT_PORT, 80);
    non_tcp.proto = fam.non_tcp_proto;
    let (c, s) = (fam.client, fam.server);
    vec![
        (
            Hook::Xdp,
            "hit",
            data(c, s, FIXED_PORT, 80),
            Counter::RewriteIngress,
        ),
        (
            Hook::Xdp,
            "miss",
            data(c, s, UNTRACKED_CLIENT_PORT, NO_RULE_PORT),
            Counter::PassUntracked,
        ),
        (Hook::Xdp, "non_tcp", non_tcp, Counter::PassNotTcp),
        (
            Hook::Tc,
            "hit",
            data(s, c, 80, FIXED_PORT),
            Counter::RewriteEgress,
        ),
        (
            Hook::Tc,
            "miss",
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

/// SYNs to 80, one fresh client per run (single mode): each creates its flow. The flows
/// of a round are removed after it, so no round's SYNs have to evict (the LRU would,
/// after `conntrack size` SYNs) and the flows the other cases time stay in the table.
fn syn(dp: &mut Dataplane, fam: &Family, settings: &Settings) -> Result<CaseRow> {
    let name = format!("syn_{}", fam.name);
    eprintln!("  xdp {name}");
    let (mut prog_ns, mut pass_ns) = (Vec::new(), Vec::new());
    for round in 0..settings.rounds {
        let client = (fam.syn_client)(round);
        let ports = 10_000..10_000 + settings.single_calls as u16;
        let probes: Vec<Probe> = ports
            .clone()
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
        for port in ports {
            dp.remove_flow(&flows::key(addr16(&client), addr16(fam.server), port))?;
        }
    }
    let paired = Paired {
        prog_ns: measure::median(&prog_ns),
        pass_ns: measure::median(&pass_ns),
    };
    Ok(CaseRow::new(Hook::Xdp, &name, Method::Single, paired))
}
