//! Packet-level tests: crafted frames through the loaded programs with BPF_PROG_TEST_RUN.
//!
//! Each case is input frame → expected output frame → expected verdict → expected counter.
//! The expected output is built from scratch with full checksums, so a byte-exact match
//! also proves the programs' incremental checksum updates; every rewritten frame is
//! additionally re-verified by recomputation.

use aya::programs::{TestRun, TestRunOptions};
use redirector::{dataplane::Dataplane, rules::RedirectRule, source_filter::SourcePrefix};
use redirector_common::{
    addr::v4_mapped,
    conntrack::{STATE_ESTABLISHED, STATE_SYN_SENT},
    maps::{FlowKey, FlowValue, FLOW_F_UNVERIFIED},
    reap::{ReapEntry, REAP_TABLE_ESTABLISHED, REAP_TABLE_HALF_OPEN},
    stats::Counter,
};
use redirector_tests::fixtures::{shared_kernel_lock, SerialGuard};
use redirector_tests::packets::{flags::*, verify_checksums, Ext, Frame};

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1): hand the packet to the next program / the stack.
const TC_NEXT: u32 = u32::MAX;

const CLIENT4: &str = "10.1.0.1";
const SERVER4: &str = "10.1.0.2";
const CLIENT6: &str = "fd00:1::1";
const SERVER6: &str = "fd00:1::2";

fn rules() -> Vec<RedirectRule> {
    ["80:8080", "443:8443"]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect()
}

/// The loaded programs with the test rules, and the shared hold of the machine-wide test
/// lock that must outlive them (dropped after the dataplane: fields drop in order).
struct Loaded {
    dp: Dataplane,
    _lock: SerialGuard,
}

impl std::ops::Deref for Loaded {
    type Target = Dataplane;
    fn deref(&self) -> &Dataplane {
        &self.dp
    }
}

impl std::ops::DerefMut for Loaded {
    fn deref_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }
}

fn dataplane() -> Loaded {
    dataplane_of(1024)
}

/// The loaded programs with room for `capacity` established flows.
fn dataplane_of(capacity: u32) -> Loaded {
    let lock = shared_kernel_lock();
    let mut dp = Dataplane::load(capacity).expect("load (are you root?)");
    dp.set_rules(&rules()).unwrap();
    Loaded { dp, _lock: lock }
}

#[derive(Clone, Copy, Debug)]
enum Prog {
    Xdp,
    TcIngress,
    TcEgress,
}

/// Runs one frame through `prog`; returns (verdict, output bytes).
fn run(dp: &mut Dataplane, prog: Prog, input: &[u8]) -> (u32, Vec<u8>) {
    try_run(dp, prog, input)
        .unwrap_or_else(|e| panic!("test_run {prog:?} len {}: {e:?}", input.len()))
}

/// Like `run`, but returns the kernel's refusal instead of panicking.
fn try_run(
    dp: &mut Dataplane,
    prog: Prog,
    input: &[u8],
) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ..Default::default()
    };
    let result = match prog {
        Prog::Xdp => dp.xdp_ingress().unwrap().test_run(opts),
        Prog::TcIngress => dp.tc_ingress().unwrap().test_run(opts),
        Prog::TcEgress => dp.tc_egress().unwrap().test_run(opts),
    }?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

fn verdict(prog: Prog) -> u32 {
    match prog {
        Prog::Xdp => XDP_PASS,
        _ => TC_NEXT,
    }
}

/// Runs `input` and asserts output == `expected` (None: unchanged), the verdict, and
/// that `counter` went up by exactly one.
fn case(
    dp: &mut Dataplane,
    name: &str,
    prog: Prog,
    input: &Frame,
    expected: Option<&Frame>,
    counter: Counter,
) {
    let before = dp.counters().unwrap()[counter as usize];
    let bytes = input.build();
    let (ret, out) = run(dp, prog, &bytes);
    assert_eq!(ret, verdict(prog), "{name}: verdict");
    let want = expected.map_or(bytes.clone(), Frame::build);
    assert_eq!(out, want, "{name}: output frame");
    if expected.is_some() {
        verify_checksums(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let after = dp.counters().unwrap()[counter as usize];
    assert_eq!(after, before + 1, "{name}: counter {}", counter.name());
}

#[test]
fn ipv4_flow_lifecycle_through_xdp_and_tc_egress() {
    let mut dp = dataplane();
    let syn = Frame::tcp(CLIENT4, SERVER4, 40001, 80, SYN);
    case(
        &mut dp,
        "syn creates flow",
        Prog::Xdp,
        &syn,
        Some(&syn.with_ports(40001, 8080)),
        Counter::FlowCreated,
    );
    assert_eq!(dp.flows().unwrap().len(), 1);
    let syn_ack = Frame::tcp(SERVER4, CLIENT4, 8080, 40001, SYN | ACK);
    case(
        &mut dp,
        "syn-ack rewritten",
        Prog::TcEgress,
        &syn_ack,
        Some(&syn_ack.with_ports(80, 40001)),
        Counter::RewriteEgress,
    );
    let mut data = Frame::tcp(CLIENT4, SERVER4, 40001, 80, ACK | PSH);
    data.payload = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n".to_vec();
    case(
        &mut dp,
        "mid-flow with entry",
        Prog::Xdp,
        &data,
        Some(&data.with_ports(40001, 8080)),
        Counter::RewriteIngress,
    );
    let mut reply = Frame::tcp(SERVER4, CLIENT4, 8080, 40001, ACK | PSH);
    reply.payload = vec![0xab; 333]; // odd length: exercises checksum padding
    case(
        &mut dp,
        "reply rewritten",
        Prog::TcEgress,
        &reply,
        Some(&reply.with_ports(80, 40001)),
        Counter::RewriteEgress,
    );
    let other_port = Frame::tcp(SERVER4, CLIENT4, 9999, 40001, ACK);
    case(
        &mut dp,
        "reply from other port",
        Prog::TcEgress,
        &other_port,
        None,
        Counter::PassPortMismatch,
    );
    let rst = Frame::tcp(CLIENT4, SERVER4, 40001, 80, RST);
    case(
        &mut dp,
        "rst rewritten",
        Prog::Xdp,
        &rst,
        Some(&rst.with_ports(40001, 8080)),
        Counter::FlowRstSeen,
    );
    assert_eq!(
        dp.flows().unwrap().len(),
        1,
        "a RST is the endpoint's to judge: the entry stays"
    );
    case(
        &mut dp,
        "after rst still rewritten",
        Prog::Xdp,
        &data,
        Some(&data.with_ports(40001, 8080)),
        Counter::RewriteIngress,
    );
    assert_eq!(reap_all(&mut dp), 1);
    case(
        &mut dp,
        "after removal untracked (no socket holds the tuple)",
        Prog::Xdp,
        &data,
        None,
        Counter::PassUntracked,
    );
}

/// Removes every tracked flow through the reaper's in-kernel removal (what the reaper
/// does once the kernel no longer holds a connection); returns how many it removed.
fn reap_all(dp: &mut Dataplane) -> usize {
    let maps = dp.maps();
    let tables = [
        (REAP_TABLE_ESTABLISHED, maps.established_flows().unwrap()),
        (REAP_TABLE_HALF_OPEN, maps.half_open_flows().unwrap()),
    ];
    let entries: Vec<ReapEntry> = tables
        .into_iter()
        .flat_map(|(table, flows)| {
            flows.into_iter().map(move |(key, flow)| ReapEntry {
                created_ns: flow.created_ns,
                last_seen_ns: flow.last_seen_ns,
                key,
                table,
                state: flow.state,
                _pad: [0; 7],
            })
        })
        .collect();
    redirector::reaper::remove_expired(dp, &entries).unwrap()
}

#[test]
fn ipv4_and_ipv6_header_variants_are_rewritten() {
    let mut dp = dataplane();
    let mut opts = Frame::tcp(CLIENT4, SERVER4, 40010, 80, SYN);
    opts.ipv4_options = vec![7, 7, 4, 0, 0, 0, 0, 1, 1, 1, 1, 0]; // record route + NOPs, IHL 8
    case(
        &mut dp,
        "ipv4 options",
        Prog::Xdp,
        &opts,
        Some(&opts.with_ports(40010, 8080)),
        Counter::FlowCreated,
    );

    let mut first_frag = Frame::tcp(CLIENT4, SERVER4, 40011, 80, SYN);
    first_frag.ipv4_frag = (0, true);
    case(
        &mut dp,
        "ipv4 first fragment",
        Prog::Xdp,
        &first_frag,
        Some(&first_frag.with_ports(40011, 8080)),
        Counter::FlowCreated,
    );

    let v6 = Frame::tcp(CLIENT6, SERVER6, 40012, 443, SYN);
    case(
        &mut dp,
        "ipv6",
        Prog::Xdp,
        &v6,
        Some(&v6.with_ports(40012, 8443)),
        Counter::FlowCreated,
    );

    let mut v6_ext = Frame::tcp(CLIENT6, SERVER6, 40013, 80, SYN);
    v6_ext.ipv6_ext = vec![
        Ext::hop_by_hop(),
        Ext::dest_opts(),
        Ext::routing(),
        Ext::fragment(0, true),
    ];
    case(
        &mut dp,
        "ipv6 four extension headers",
        Prog::Xdp,
        &v6_ext,
        Some(&v6_ext.with_ports(40013, 8080)),
        Counter::FlowCreated,
    );

    let mut vlan = Frame::tcp(CLIENT4, SERVER4, 40014, 80, SYN);
    vlan.vlans = vec![(0x8100, 42)];
    case(
        &mut dp,
        "802.1Q",
        Prog::Xdp,
        &vlan,
        Some(&vlan.with_ports(40014, 8080)),
        Counter::FlowCreated,
    );

    let mut qinq = Frame::tcp(CLIENT6, SERVER6, 40015, 80, SYN);
    qinq.vlans = vec![(0x88a8, 100), (0x8100, 42)];
    case(
        &mut dp,
        "802.1ad + 802.1Q",
        Prog::Xdp,
        &qinq,
        Some(&qinq.with_ports(40015, 8080)),
        Counter::FlowCreated,
    );

    let tc = Frame::tcp(CLIENT4, SERVER4, 40016, 80, SYN);
    case(
        &mut dp,
        "tc ingress",
        Prog::TcIngress,
        &tc,
        Some(&tc.with_ports(40016, 8080)),
        Counter::FlowCreated,
    );
    let mut tc_reply = Frame::tcp(SERVER6, CLIENT6, 8080, 40013, ACK);
    tc_reply.ipv6_ext = vec![Ext::dest_opts()];
    case(
        &mut dp,
        "tc egress ipv6 ext",
        Prog::TcEgress,
        &tc_reply,
        Some(&tc_reply.with_ports(80, 40013)),
        Counter::RewriteEgress,
    );
}

#[test]
fn what_is_not_understood_passes_untouched_and_is_counted() {
    let mut dp = dataplane();
    let mut udp = Frame::tcp(CLIENT4, SERVER4, 40020, 80, SYN);
    udp.proto = 17;
    case(&mut dp, "udp", Prog::Xdp, &udp, None, Counter::PassNotTcp);

    let mut frag = Frame::tcp(CLIENT4, SERVER4, 40021, 80, SYN);
    frag.ipv4_frag = (185, false);
    case(
        &mut dp,
        "ipv4 non-first fragment",
        Prog::Xdp,
        &frag,
        None,
        Counter::PassFragment,
    );

    let mut frag6 = Frame::tcp(CLIENT6, SERVER6, 40022, 80, SYN);
    frag6.ipv6_ext = vec![Ext::fragment(185, false)];
    case(
        &mut dp,
        "ipv6 non-first fragment",
        Prog::Xdp,
        &frag6,
        None,
        Counter::PassFragment,
    );

    let mut esp = Frame::tcp(CLIENT6, SERVER6, 40023, 80, SYN);
    esp.ipv6_ext = vec![Ext::esp()];
    case(
        &mut dp,
        "ipv6 esp",
        Prog::Xdp,
        &esp,
        None,
        Counter::PassIpv6ExtUnsupported,
    );

    let mut deep = Frame::tcp(CLIENT6, SERVER6, 40024, 80, SYN);
    deep.ipv6_ext = vec![
        Ext::hop_by_hop(),
        Ext::dest_opts(),
        Ext::routing(),
        Ext::dest_opts(),
        Ext::dest_opts(),
    ];
    case(
        &mut dp,
        "ipv6 five extension headers",
        Prog::Xdp,
        &deep,
        None,
        Counter::PassIpv6ExtUnsupported,
    );

    let mut triple = Frame::tcp(CLIENT4, SERVER4, 40025, 80, SYN);
    triple.vlans = vec![(0x88a8, 1), (0x8100, 2), (0x8100, 3)];
    case(
        &mut dp,
        "three vlan tags",
        Prog::Xdp,
        &triple,
        None,
        Counter::PassVlanDepth,
    );

    let other = Frame::tcp(CLIENT4, SERVER4, 40026, 22, SYN);
    case(
        &mut dp,
        "syn to unredirected port",
        Prog::Xdp,
        &other,
        None,
        Counter::PassUntracked,
    );

    let midflow = Frame::tcp(CLIENT4, SERVER4, 40027, 80, ACK);
    case(
        &mut dp,
        "mid-flow without entry",
        Prog::Xdp,
        &midflow,
        None,
        Counter::PassUntracked,
    );

    let syn_ack_in = Frame::tcp(CLIENT4, SERVER4, 40028, 80, SYN | ACK);
    case(
        &mut dp,
        "syn-ack does not create flows",
        Prog::Xdp,
        &syn_ack_in,
        None,
        Counter::PassUntracked,
    );

    // Non-IP ethertype (ARP): bytes after the header are irrelevant.
    let mut arp = Frame::tcp(CLIENT4, SERVER4, 1, 80, SYN).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let before = dp.counters().unwrap()[Counter::PassNotIp as usize];
    let (ret, out) = run(&mut dp, Prog::Xdp, &arp);
    assert_eq!((ret, &out), (XDP_PASS, &arp));
    assert_eq!(
        dp.counters().unwrap()[Counter::PassNotIp as usize],
        before + 1
    );

    // IPv4 with IHL 4 (invalid).
    let mut bad_ihl = Frame::tcp(CLIENT4, SERVER4, 40029, 80, SYN).build();
    bad_ihl[14] = 0x44;
    let before = dp.counters().unwrap()[Counter::PassBadIpHeader as usize];
    let (ret, out) = run(&mut dp, Prog::Xdp, &bad_ihl);
    assert_eq!((ret, &out), (XDP_PASS, &bad_ihl));
    assert_eq!(
        dp.counters().unwrap()[Counter::PassBadIpHeader as usize],
        before + 1
    );
    assert!(
        dp.flows().unwrap().is_empty(),
        "nothing above may create a flow"
    );
}

/// Every frame type (VLAN-tagged IPv4 with options, plain IPv4, IPv6 with extension
/// headers), cut at every length, in both directions and on every hook: passed untouched
/// and counted as truncated. The kernel's skb test run refuses (before the program runs)
/// only an untagged frame whose fixed IP header is cut; nothing else may be skipped.
#[test]
fn truncated_at_every_header_boundary_passes_untouched() {
    let mut dp = dataplane();
    let mut v4 = Frame::tcp(CLIENT4, SERVER4, 40030, 80, SYN);
    v4.vlans = vec![(0x8100, 5)];
    v4.ipv4_options = vec![1, 1, 1, 0];
    let plain = Frame::tcp(CLIENT4, SERVER4, 40032, 443, SYN);
    let mut v6 = Frame::tcp(CLIENT6, SERVER6, 40031, 80, SYN);
    v6.ipv6_ext = vec![Ext::hop_by_hop(), Ext::fragment(0, false)];
    for syn in [v4, plain, v6] {
        // The SYN-ACK of the same flow, with the same layers.
        let mut syn_ack = syn.clone();
        (syn_ack.src, syn_ack.dst) = (syn.dst, syn.src);
        syn_ack.sport = if syn.dport == 80 { 8080 } else { 8443 };
        syn_ack.dport = syn.sport;
        syn_ack.flags = SYN | ACK;
        // Untagged frames: the skb test run wants the fixed IP header whole.
        let skb_floor = if syn.vlans.is_empty() {
            14 + if syn.src.is_ipv4() { 20 } else { 40 }
        } else {
            0
        };
        for (frame, progs) in [
            (&syn, &[Prog::Xdp, Prog::TcIngress][..]),
            (&syn_ack, &[Prog::TcEgress][..]),
        ] {
            let full = frame.build();
            // Shorter than an Ethernet header is refused by the kernel's test-run itself.
            for len in 14..full.len() {
                let cut = &full[..len];
                for &prog in progs {
                    let before = dp.counters().unwrap()[Counter::PassTruncated as usize];
                    let (ret, out) = match try_run(&mut dp, prog, cut) {
                        Ok(result) => result,
                        Err(_) if !matches!(prog, Prog::Xdp) && len < skb_floor => continue,
                        Err(e) => panic!("len {len} {prog:?}: {e:?}"),
                    };
                    assert_eq!(ret, verdict(prog), "len {len} {prog:?}");
                    assert_eq!(out, cut, "len {len} {prog:?}: modified");
                    assert_eq!(
                        dp.counters().unwrap()[Counter::PassTruncated as usize],
                        before + 1,
                        "len {len} {prog:?}: truncation not counted"
                    );
                }
            }
            // The full frame is not truncated: the SYN creates the flow, its SYN-ACK is
            // rewritten from it.
            let (_, out) = run(&mut dp, progs[0], &full);
            assert_ne!(out, full, "full frame must be rewritten ({:?})", progs[0]);
        }
    }
}

#[test]
fn disabled_rule_and_source_filter_create_no_flows() {
    let mut dp = dataplane();
    dp.set_allowed_sources(&[
        "10.1.0.0/24".parse::<SourcePrefix>().unwrap(),
        "fd00:1::/64".parse().unwrap(),
    ])
    .unwrap();
    dp.set_rule_enabled(443, false).unwrap();
    let disabled = Frame::tcp(CLIENT4, SERVER4, 40040, 443, SYN);
    case(
        &mut dp,
        "disabled rule",
        Prog::Xdp,
        &disabled,
        None,
        Counter::PassRuleDisabled,
    );
    let outside = Frame::tcp("10.9.0.1", SERVER4, 40041, 80, SYN);
    case(
        &mut dp,
        "source outside allow list",
        Prog::Xdp,
        &outside,
        None,
        Counter::PassSourceDenied,
    );
    let outside6 = Frame::tcp("fd00:9::1", SERVER6, 40042, 80, SYN);
    case(
        &mut dp,
        "ipv6 source outside allow list",
        Prog::Xdp,
        &outside6,
        None,
        Counter::PassSourceDenied,
    );
    assert!(dp.flows().unwrap().is_empty());
    let inside = Frame::tcp(CLIENT4, SERVER4, 40043, 80, SYN);
    case(
        &mut dp,
        "source inside allow list",
        Prog::Xdp,
        &inside,
        Some(&inside.with_ports(40043, 8080)),
        Counter::FlowCreated,
    );
    // A flow created while enabled survives disabling its rule.
    let syn = Frame::tcp(CLIENT4, SERVER4, 40044, 80, SYN);
    case(
        &mut dp,
        "syn before disable",
        Prog::Xdp,
        &syn,
        Some(&syn.with_ports(40044, 8080)),
        Counter::FlowCreated,
    );
    dp.set_rule_enabled(80, false).unwrap();
    let data = Frame::tcp(CLIENT4, SERVER4, 40044, 80, ACK);
    case(
        &mut dp,
        "established flow after disable",
        Prog::Xdp,
        &data,
        Some(&data.with_ports(40044, 8080)),
        Counter::RewriteIngress,
    );
    // A retransmitted SYN still belongs to its flow (it is not a new one).
    case(
        &mut dp,
        "retransmitted syn after disable",
        Prog::Xdp,
        &syn,
        Some(&syn.with_ports(40044, 8080)),
        Counter::RewriteIngress,
    );
    let new_syn = Frame::tcp(CLIENT4, SERVER4, 40045, 80, SYN);
    case(
        &mut dp,
        "new flow after disable",
        Prog::Xdp,
        &new_syn,
        None,
        Counter::PassRuleDisabled,
    );
}

#[test]
fn port_reuse_after_close_replaces_the_entry() {
    let mut dp = dataplane();
    let syn = Frame::tcp(CLIENT4, SERVER4, 40050, 80, SYN);
    case(
        &mut dp,
        "first syn",
        Prog::Xdp,
        &syn,
        Some(&syn.with_ports(40050, 8080)),
        Counter::FlowCreated,
    );
    case(
        &mut dp,
        "retransmitted syn",
        Prog::Xdp,
        &syn,
        Some(&syn.with_ports(40050, 8080)),
        Counter::RewriteIngress,
    );
    let fin_in = Frame::tcp(CLIENT4, SERVER4, 40050, 80, FIN | ACK);
    case(
        &mut dp,
        "client fin",
        Prog::Xdp,
        &fin_in,
        Some(&fin_in.with_ports(40050, 8080)),
        Counter::RewriteIngress,
    );
    let fin_out = Frame::tcp(SERVER4, CLIENT4, 8080, 40050, FIN | ACK);
    case(
        &mut dp,
        "server fin",
        Prog::TcEgress,
        &fin_out,
        Some(&fin_out.with_ports(80, 40050)),
        Counter::FlowClosedFin,
    );
    // Same client port, now to 443: the closing entry is replaced by a new flow.
    let reuse = Frame::tcp(CLIENT4, SERVER4, 40050, 443, SYN);
    case(
        &mut dp,
        "reuse",
        Prog::Xdp,
        &reuse,
        Some(&reuse.with_ports(40050, 8443)),
        Counter::FlowCreated,
    );
    let flows = dp.flows().unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!((flows[0].1.orig_port, flows[0].1.target_port), (443, 8443));
    // Two created, one replaced, one tracked: nothing was evicted.
    let counters = dp.counters().unwrap();
    assert_eq!(counters[Counter::FlowCreated as usize], 2);
    assert_eq!(counters[Counter::FlowReplaced as usize], 1);
    assert_eq!(
        redirector::observe::stats::evicted(&counters, flows.len()),
        0
    );
}

/// The loader reads and prunes the conntrack table in batches (one syscall per thousands of
/// entries, not two per entry): each entry comes back exactly once with its value, and a
/// batch removal skips keys that are already gone instead of stopping at them.
#[test]
fn conntrack_batches_see_every_entry_once_and_skip_missing_keys() {
    const FLOWS: u32 = 10_000;
    let lock = shared_kernel_lock();
    // Room to spare: an LRU map may evict a little before it is full.
    let mut dp = Loaded {
        dp: Dataplane::load(32_768).expect("load (are you root?)"),
        _lock: lock,
    };
    let key = |i: u32| FlowKey {
        client_addr: v4_mapped([10, 3, (i >> 8) as u8, i as u8]),
        server_addr: v4_mapped([10, 3, 255, 1]),
        client_port_be: (20_000 + (i % 1000) as u16).to_be(),
        lane: 0,
    };
    let value = |i: u32| FlowValue {
        orig_port: 80,
        target_port: 8080,
        state: STATE_ESTABLISHED,
        fin_flags: 0,
        flags: 0,
        rule_slot: 0,
        _pad2: 0,
        created_ns: u64::from(i),
        last_seen_ns: u64::from(i) * 7,
    };
    for i in 0..FLOWS {
        dp.insert_flow(key(i), value(i)).unwrap();
    }
    // The batch command itself must work here, not only the key-by-key fallback.
    let fd = dp.maps().flows_fd().unwrap();
    let batched: Vec<(FlowKey, FlowValue)> = redirector::dataplane::batch::lookup_all(fd).unwrap();
    assert_eq!(batched.len(), FLOWS as usize);
    let mut seen: Vec<u64> = dp
        .flows()
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let i = v.created_ns as u32;
            assert_eq!((k, v.last_seen_ns), (key(i), u64::from(i) * 7), "entry {i}");
            v.created_ns
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..u64::from(FLOWS)).collect::<Vec<_>>());

    // Every even entry, with absent keys in front, in the middle and at the end.
    let mut doomed = vec![key(FLOWS + 1)];
    doomed.extend((0..FLOWS).step_by(2).map(key));
    doomed.insert(doomed.len() / 2, key(FLOWS + 2));
    doomed.push(key(FLOWS + 3));
    let (removed, result) = dp.remove_flows(&doomed);
    result.unwrap();
    assert_eq!(removed, FLOWS as usize / 2);
    let mut left: Vec<u64> = dp
        .flows()
        .unwrap()
        .iter()
        .map(|(_, v)| v.created_ns)
        .collect();
    left.sort_unstable();
    assert_eq!(left, (1..u64::from(FLOWS)).step_by(2).collect::<Vec<_>>());
}

/// (established, half-open) entries.
fn tables(dp: &Dataplane) -> (usize, usize) {
    let maps = dp.maps();
    (
        maps.established_flows().unwrap().len(),
        maps.half_open_flows().unwrap().len(),
    )
}

/// Runs the three-way handshake of client port `port` to :80; asserts each step.
fn handshake(dp: &mut Dataplane, port: u16) {
    let syn = Frame::tcp(CLIENT4, SERVER4, port, 80, SYN);
    let name = format!("syn {port}");
    case(
        dp,
        &name,
        Prog::Xdp,
        &syn,
        Some(&syn.with_ports(port, 8080)),
        Counter::FlowCreated,
    );
    let syn_ack = Frame::tcp(SERVER4, CLIENT4, 8080, port, SYN | ACK);
    let name = format!("syn-ack {port}");
    let out = syn_ack.with_ports(80, port);
    case(
        dp,
        &name,
        Prog::TcEgress,
        &syn_ack,
        Some(&out),
        Counter::RewriteEgress,
    );
    let ack = Frame::tcp(CLIENT4, SERVER4, port, 80, ACK);
    let name = format!("ack {port}");
    case(
        dp,
        &name,
        Prog::Xdp,
        &ack,
        Some(&ack.with_ports(port, 8080)),
        Counter::FlowPromoted,
    );
}

/// Data of client port `port`, both ways, rewritten through its entry.
fn assert_data_rewritten(dp: &mut Dataplane, port: u16) {
    let mut data = Frame::tcp(CLIENT4, SERVER4, port, 80, ACK | PSH);
    data.payload = b"ping".to_vec();
    let name = format!("data in {port}");
    let out = data.with_ports(port, 8080);
    case(
        dp,
        &name,
        Prog::TcIngress,
        &data,
        Some(&out),
        Counter::RewriteIngress,
    );
    let mut reply = Frame::tcp(SERVER4, CLIENT4, 8080, port, ACK | PSH);
    reply.payload = vec![0x5a; 77];
    let name = format!("data out {port}");
    let out = reply.with_ports(80, port);
    case(
        dp,
        &name,
        Prog::TcEgress,
        &reply,
        Some(&out),
        Counter::RewriteEgress,
    );
}

/// A SYN creates a half-open entry; the SYN-ACK is rewritten from it; the client's
/// handshake-completing ACK promotes it to the established table; a RST is rewritten and
/// changes nothing; the reaper's removal gives the place back.
#[test]
fn handshake_promotes_from_half_open_to_established_and_rst_changes_nothing() {
    let mut dp = dataplane();
    let syn = Frame::tcp(CLIENT4, SERVER4, 41000, 80, SYN);
    case(
        &mut dp,
        "syn",
        Prog::Xdp,
        &syn,
        Some(&syn.with_ports(41000, 8080)),
        Counter::FlowCreated,
    );
    assert_eq!(tables(&dp), (0, 1), "a SYN is half-open, not established");
    assert_eq!(dp.maps().established_count().unwrap(), 0);
    let syn_ack = Frame::tcp(SERVER4, CLIENT4, 8080, 41000, SYN | ACK);
    let out = syn_ack.with_ports(80, 41000);
    case(
        &mut dp,
        "syn-ack from half-open",
        Prog::TcEgress,
        &syn_ack,
        Some(&out),
        Counter::RewriteEgress,
    );
    assert_eq!(tables(&dp), (0, 1), "the SYN-ACK does not promote");
    let ack = Frame::tcp(CLIENT4, SERVER4, 41000, 80, ACK);
    case(
        &mut dp,
        "ack promotes",
        Prog::Xdp,
        &ack,
        Some(&ack.with_ports(41000, 8080)),
        Counter::FlowPromoted,
    );
    assert_eq!(
        tables(&dp),
        (1, 0),
        "promoted: established, gone from half-open"
    );
    assert_eq!(dp.maps().established_count().unwrap(), 1);
    assert_data_rewritten(&mut dp, 41000);
    let rst = Frame::tcp(SERVER4, CLIENT4, 8080, 41000, RST | ACK);
    let out = rst.with_ports(80, 41000);
    case(
        &mut dp,
        "rst",
        Prog::TcEgress,
        &rst,
        Some(&out),
        Counter::FlowRstSeen,
    );
    assert_eq!(tables(&dp), (1, 0), "a RST removes nothing");
    assert_eq!(reap_all(&mut dp), 1);
    assert_eq!(tables(&dp), (0, 0));
    assert_eq!(
        dp.maps().established_count().unwrap(),
        0,
        "the removal gave its place back"
    );
    let counters = dp.counters().unwrap();
    assert_eq!(redirector::observe::stats::evicted(&counters, 0), 0);
}

/// A RST during the handshake leaves the half-open entry; FIN both ways on an
/// established flow keeps it (closing) until reaped.
#[test]
fn rst_in_handshake_and_fin_on_established() {
    let mut dp = dataplane();
    let syn = Frame::tcp(CLIENT4, SERVER4, 41100, 80, SYN);
    case(
        &mut dp,
        "syn",
        Prog::Xdp,
        &syn,
        Some(&syn.with_ports(41100, 8080)),
        Counter::FlowCreated,
    );
    let rst = Frame::tcp(SERVER4, CLIENT4, 8080, 41100, RST | ACK);
    let out = rst.with_ports(80, 41100);
    case(
        &mut dp,
        "rst half-open",
        Prog::TcEgress,
        &rst,
        Some(&out),
        Counter::FlowRstSeen,
    );
    assert_eq!(tables(&dp), (0, 1), "a RST removes nothing");
    assert_eq!(reap_all(&mut dp), 1);
    handshake(&mut dp, 41101);
    let fin_in = Frame::tcp(CLIENT4, SERVER4, 41101, 80, FIN | ACK);
    let out = fin_in.with_ports(41101, 8080);
    case(
        &mut dp,
        "client fin",
        Prog::Xdp,
        &fin_in,
        Some(&out),
        Counter::RewriteIngress,
    );
    let fin_out = Frame::tcp(SERVER4, CLIENT4, 8080, 41101, FIN | ACK);
    let out = fin_out.with_ports(80, 41101);
    case(
        &mut dp,
        "server fin",
        Prog::TcEgress,
        &fin_out,
        Some(&out),
        Counter::FlowClosedFin,
    );
    let flows = dp.maps().established_flows().unwrap();
    assert_eq!(flows.len(), 1, "closing, still established until reaped");
    assert_eq!(
        flows[0].1.state,
        redirector_common::conntrack::STATE_CLOSING
    );
    // Port reuse of the closing tuple replaces it and gives its place back.
    let reuse = Frame::tcp(CLIENT4, SERVER4, 41101, 443, SYN);
    let out = reuse.with_ports(41101, 8443);
    case(
        &mut dp,
        "reuse",
        Prog::Xdp,
        &reuse,
        Some(&out),
        Counter::FlowReplaced,
    );
    assert_eq!(tables(&dp), (0, 1));
    assert_eq!(dp.maps().established_count().unwrap(), 0);
}

/// With the established table full, a new SYN passes untouched and is counted; once an
/// established flow closes, new ones are admitted again.
#[test]
fn full_established_table_lets_new_syns_pass_untouched() {
    let mut dp = dataplane_of(2);
    handshake(&mut dp, 42001);
    handshake(&mut dp, 42002);
    assert_eq!(tables(&dp), (2, 0));
    let syn = Frame::tcp(CLIENT4, SERVER4, 42003, 80, SYN);
    case(
        &mut dp,
        "syn when full",
        Prog::Xdp,
        &syn,
        None,
        Counter::PassTableFull,
    );
    case(
        &mut dp,
        "syn when full (tc)",
        Prog::TcIngress,
        &syn,
        None,
        Counter::PassTableFull,
    );
    assert_eq!(tables(&dp), (2, 0), "nothing admitted");
    // The accepted connections never paid for it.
    assert_data_rewritten(&mut dp, 42001);
    assert_data_rewritten(&mut dp, 42002);
    let rst = Frame::tcp(CLIENT4, SERVER4, 42001, 80, RST);
    let out = rst.with_ports(42001, 8080);
    case(
        &mut dp,
        "a rst frees no place",
        Prog::Xdp,
        &rst,
        Some(&out),
        Counter::FlowRstSeen,
    );
    case(
        &mut dp,
        "still full",
        Prog::Xdp,
        &syn,
        None,
        Counter::PassTableFull,
    );
    // The reaper's removal (the kernel no longer holds the connection) frees one.
    assert_eq!(reap_all(&mut dp), 2);
    handshake(&mut dp, 42003);
    assert_eq!(tables(&dp), (1, 0));
}

/// Far more SYNs than the half-open table holds: half-open entries evict each other,
/// never an established one, and the evictions are counted.
#[test]
fn half_open_flood_never_evicts_an_established_flow() {
    const CAPACITY: u32 = 8;
    let mut dp = dataplane_of(CAPACITY);
    handshake(&mut dp, 43001);
    handshake(&mut dp, 43002);
    for port in 0..20 * CAPACITY as u16 {
        let syn = Frame::tcp(CLIENT4, SERVER4, 50_000 + port, 80, SYN);
        let (ret, out) = run(&mut dp, Prog::Xdp, &syn.build());
        assert_eq!(ret, XDP_PASS);
        assert_eq!(
            out,
            syn.with_ports(50_000 + port, 8080).build(),
            "flood syn {port}"
        );
    }
    let (established, half_open) = tables(&dp);
    assert_eq!(established, 2, "no established flow evicted");
    assert!(half_open <= CAPACITY as usize, "{half_open}");
    assert_data_rewritten(&mut dp, 43001);
    assert_data_rewritten(&mut dp, 43002);
    let counters = dp.counters().unwrap();
    let evicted = redirector::observe::stats::evicted(&counters, established + half_open);
    assert_eq!(
        counters[Counter::FlowCreated as usize],
        2 + 20 * u64::from(CAPACITY)
    );
    assert!(evicted >= u64::from(19 * CAPACITY), "{evicted}");
    // The most recent handshakes still complete.
    let last = 50_000 + 20 * CAPACITY as u16 - 1;
    let syn_ack = Frame::tcp(SERVER4, CLIENT4, 8080, last, SYN | ACK);
    let out = syn_ack.with_ports(80, last);
    case(
        &mut dp,
        "late syn-ack",
        Prog::TcEgress,
        &syn_ack,
        Some(&out),
        Counter::RewriteEgress,
    );
    let ack = Frame::tcp(CLIENT4, SERVER4, last, 80, ACK);
    let out = ack.with_ports(last, 8080);
    case(
        &mut dp,
        "late ack",
        Prog::Xdp,
        &ack,
        Some(&out),
        Counter::FlowPromoted,
    );
    assert_eq!(tables(&dp).0, 3);
}

/// Runs `f` on a thread that entered a fresh network namespace `name` (lo up): the
/// programs' socket lookups see that namespace's sockets (a test run's packet arrives on
/// the loopback device of the running thread's namespace).
fn in_fresh_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = testkit::netns::Netns::new(name);
    let path = format!("/run/netns/{}", ns.name());
    let result = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join();
    drop(ns);
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A connected pair on `addr`: the client stream and the server's accepted stream. With
/// `client_port`, the client binds that port first (SO_REUSEADDR, so that two pairs may
/// share it towards different server ports).
fn connected_pair(
    listener: &std::net::TcpListener,
    client_port: Option<u16>,
) -> (std::net::TcpStream, std::net::TcpStream) {
    use socket2::{Domain, Socket, Type};
    let server = listener.local_addr().unwrap();
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    if let Some(port) = client_port {
        let mut local = server;
        local.set_port(port);
        socket.bind(&local.into()).unwrap();
    }
    socket.connect(&server.into()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    (socket.into(), accepted)
}

fn listen(addr: &str) -> std::net::TcpListener {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(16).unwrap();
    socket.into()
}

/// A client's packet of no flow to a FROM port whose tuple is a live connection on the TO
/// port (the kernel's socket table) gets its entry back and is rewritten, IPv4 and IPv6,
/// XDP and TC; the healed entry is provisional until the server's socket confirms it.
/// Without a live socket, or with a socket owning the tuple on FROM, nothing is healed.
#[test]
fn a_lost_entry_heals_from_a_live_socket_and_nothing_else() {
    let _lock = shared_kernel_lock();
    in_fresh_netns("rdr-pkt-heal", || {
        let mut dp = Dataplane::load(1024).expect("load (are you root?)");
        dp.set_rules(&rules()).unwrap();
        for (loopback, prog) in [("127.0.0.1", Prog::Xdp), ("::1", Prog::TcIngress)] {
            let wrap = |a: &str| {
                if a.contains(':') {
                    format!("[{a}]")
                } else {
                    a.into()
                }
            };
            let to = listen(&format!("{}:8080", wrap(loopback)));
            let (client, _server) = connected_pair(&to, None);
            let port = client.local_addr().unwrap().port();
            let mut data = Frame::tcp(loopback, loopback, port, 80, ACK | PSH);
            data.payload = b"hello".to_vec();
            let name = format!("{loopback} {prog:?} heal");
            case(
                &mut dp,
                &name,
                prog,
                &data,
                Some(&data.with_ports(port, 8080)),
                Counter::FlowHealedIngress,
            );
            let flows = dp.maps().established_flows().unwrap();
            let healed = flows
                .iter()
                .find(|(k, _)| u16::from_be(k.client_port_be) == port)
                .unwrap_or_else(|| panic!("{name}: no entry"))
                .1;
            assert_eq!((healed.orig_port, healed.target_port), (80, 8080));
            assert_eq!(healed.state, STATE_ESTABLISHED);
            assert_eq!(healed.flags, FLOW_F_UNVERIFIED, "{name}: provisional");
            // The next packet finds the entry: rewritten without another heal.
            case(
                &mut dp,
                &format!("{name}: next packet"),
                prog,
                &data,
                Some(&data.with_ports(port, 8080)),
                Counter::RewriteIngress,
            );
            assert_eq!(
                dp.counters().unwrap()[Counter::FlowHealedIngress as usize],
                if loopback == "::1" { 2 } else { 1 }
            );

            // A tuple no socket holds: untracked, no entry.
            let stray = Frame::tcp(loopback, loopback, port.wrapping_add(1), 80, ACK);
            case(
                &mut dp,
                &format!("{name}: no socket"),
                prog,
                &stray,
                None,
                Counter::PassUntracked,
            );

            // A tuple a socket owns on FROM (a listener on :80 and a direct connection)
            // is left alone, although a connection with it also lives on TO.
            let from = listen(&format!("{}:80", wrap(loopback)));
            let (direct, _direct_server) = connected_pair(&from, None);
            let direct_port = direct.local_addr().unwrap().port();
            let (_twin, _twin_server) = connected_pair(&to, Some(direct_port));
            let owned = Frame::tcp(loopback, loopback, direct_port, 80, ACK);
            case(
                &mut dp,
                &format!("{name}: owned on FROM"),
                prog,
                &owned,
                None,
                Counter::PassUntracked,
            );
            // A SYN of no flow to a rule creates one (it is never a heal).
            let count_before = dp.counters().unwrap()[Counter::FlowHealedIngress as usize];
            let syn = Frame::tcp(loopback, loopback, port.wrapping_add(2), 80, SYN);
            case(
                &mut dp,
                &format!("{name}: syn"),
                prog,
                &syn,
                Some(&syn.with_ports(port.wrapping_add(2), 8080)),
                Counter::FlowCreated,
            );
            assert_eq!(
                dp.counters().unwrap()[Counter::FlowHealedIngress as usize],
                count_before
            );
        }
        // Two heals, no evictions: heals are created entries.
        let counters = dp.counters().unwrap();
        let tracked = dp.flows().unwrap().len();
        assert_eq!(redirector::observe::stats::evicted(&counters, tracked), 0);
    });
}

/// A SYN on the tuple of a closing entry whose connection the kernel still holds keeps
/// the entry (the endpoint answers with a challenge ACK); without a live connection the
/// SYN replaces it (port reuse).
#[test]
fn a_syn_on_a_live_closing_flow_keeps_it() {
    let _lock = shared_kernel_lock();
    in_fresh_netns("rdr-pkt-syn", || {
        let mut dp = Dataplane::load(1024).expect("load (are you root?)");
        dp.set_rules(&rules()).unwrap();
        let to = listen("127.0.0.1:8080");
        let (client, _server) = connected_pair(&to, None);
        let port = client.local_addr().unwrap().port();
        let key = |port: u16| FlowKey {
            client_addr: v4_mapped([127, 0, 0, 1]),
            server_addr: v4_mapped([127, 0, 0, 1]),
            client_port_be: port.to_be(),
            lane: 0,
        };
        let closing = FlowValue {
            orig_port: 80,
            target_port: 8080,
            state: redirector_common::conntrack::STATE_FIN_WAIT,
            fin_flags: redirector_common::conntrack::FIN_CLIENT,
            flags: 0,
            rule_slot: 0,
            _pad2: 0,
            created_ns: 7,
            last_seen_ns: 7,
        };
        let gone_port = port.wrapping_add(1);
        dp.insert_flow(key(port), closing).unwrap();
        dp.insert_flow(key(gone_port), closing).unwrap();
        let syn = Frame::tcp("127.0.0.1", "127.0.0.1", port, 80, SYN);
        case(
            &mut dp,
            "syn on live",
            Prog::Xdp,
            &syn,
            Some(&syn.with_ports(port, 8080)),
            Counter::FlowSynOnLive,
        );
        let kept = dp.flows().unwrap();
        let kept = kept.iter().find(|(k, _)| *k == key(port)).unwrap().1;
        assert_eq!(kept, closing, "the live flow's entry is untouched");
        let syn = Frame::tcp("127.0.0.1", "127.0.0.1", gone_port, 80, SYN);
        case(
            &mut dp,
            "syn on gone",
            Prog::TcIngress,
            &syn,
            Some(&syn.with_ports(gone_port, 8080)),
            Counter::FlowReplaced,
        );
        let replaced = dp.flows().unwrap();
        let replaced = replaced
            .iter()
            .find(|(k, _)| *k == key(gone_port))
            .unwrap()
            .1;
        assert_eq!(replaced.state, STATE_SYN_SENT);
    });
}
