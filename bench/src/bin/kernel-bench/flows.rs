//! Conntrack entries written from user space, keyed exactly as the programs key them:
//! the fixed-point probe flows, the half-open entries the promotion case consumes, the
//! bulk fill of the scaling and memory parts, and where an entry is found (which table).

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result};
use redirector::dataplane::Dataplane;
use redirector_common::{
    addr::v4_mapped,
    conntrack::{STATE_ESTABLISHED, STATE_SYN_RECV, STATE_SYN_SENT},
    maps::{FlowKey, FlowValue, FLOW_F_SOCKET_RECORDED},
};

/// First client address of the bulk fill; clients count up from here.
const FILL_CLIENT_BASE: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
/// Client ports per fill client address (ports 10000..60000).
const FILL_PORTS_PER_CLIENT: u32 = 50_000;
/// First client port of the bulk fill.
const FILL_PORT_BASE: u16 = 10_000;

/// An address as the maps store it: IPv4 as IPv4-mapped IPv6.
pub fn addr16(addr: &str) -> [u8; 16] {
    match addr
        .parse::<IpAddr>()
        .expect("benchmark addresses are literals")
    {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The conntrack key of a client→server connection from `client_port`.
pub fn key(client: [u8; 16], server: [u8; 16], client_port: u16) -> FlowKey {
    FlowKey {
        client_addr: client,
        server_addr: server,
        client_port_be: client_port.to_be(),
        lane: 0,
    }
}

/// An established flow redirected from `orig_port` to `target_port` by rule slot 0, its
/// server socket recorded (as every redirected flow's is after the server's first packet
/// since the handshake), so egress hits time the steady state.
fn established(orig_port: u16, target_port: u16) -> FlowValue {
    FlowValue {
        flags: FLOW_F_SOCKET_RECORDED,
        ..flow(orig_port, target_port, STATE_ESTABLISHED)
    }
}

/// A flow in `state` redirected from `orig_port` to `target_port` by rule slot 0.
fn flow(orig_port: u16, target_port: u16, state: u8) -> FlowValue {
    let now = monotonic_ns();
    FlowValue {
        orig_port,
        target_port,
        state,
        fin_flags: 0,
        flags: 0,
        rule_slot: 0,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
    }
}

/// Inserts the fixed-point flow: FROM and TO both 80, so a rewrite of its packets writes
/// back the bytes it read and a repeated test run sees the same frame every time.
pub fn insert_fixed_point(dp: &mut Dataplane, client: &str, server: &str, port: u16) -> Result<()> {
    let key = key(addr16(client), addr16(server), port);
    dp.insert_flow(key, established(80, 80))
        .context("inserting the fixed-point flow")
}

/// Inserts a half-open fixed-point flow (FROM and TO both 80) whose client has sent its
/// SYN: a SYN-ACK of it is rewritten from the half-open table, and leaves it half-open.
pub fn insert_half_open_fixed_point(
    dp: &mut Dataplane,
    client: &str,
    server: &str,
    port: u16,
) -> Result<()> {
    let key = key(addr16(client), addr16(server), port);
    dp.insert_flow(key, flow(80, 80, STATE_SYN_SENT))
        .context("inserting the half-open fixed-point flow")
}

/// Inserts one half-open 80→8080 entry per key whose SYN-ACK has been seen: the client's
/// next ACK completes the handshake and promotes it.
pub fn insert_syn_recv(dp: &mut Dataplane, keys: &[FlowKey]) -> Result<()> {
    let value = flow(80, 8080, STATE_SYN_RECV);
    for key in keys {
        dp.insert_flow(*key, value)
            .context("inserting a half-open flow to promote")?;
    }
    Ok(())
}

/// How many of `keys` each table holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    /// Keys found in `ESTABLISHED`.
    pub established: usize,
    /// Keys found in `HALF_OPEN`.
    pub half_open: usize,
}

/// Counts `keys` in each conntrack table (one batched snapshot of each).
pub fn locate(dp: &Dataplane, keys: &[FlowKey]) -> Result<Found> {
    let wanted: HashSet<FlowKey> = keys.iter().copied().collect();
    let count =
        |flows: Vec<(FlowKey, FlowValue)>| flows.iter().filter(|(k, _)| wanted.contains(k)).count();
    Ok(Found {
        established: count(dp.maps().established_flows()?),
        half_open: count(dp.maps().half_open_flows()?),
    })
}

/// Client address and port of the `i`-th bulk flow.
pub fn fill_client(i: u32) -> (Ipv4Addr, u16) {
    let addr = Ipv4Addr::from(u32::from(FILL_CLIENT_BASE) + i / FILL_PORTS_PER_CLIENT);
    let port = FILL_PORT_BASE + (i % FILL_PORTS_PER_CLIENT) as u16;
    (addr, port)
}

/// Inserts `count` established 80→8080 flows towards `server` (one syscall each).
pub fn fill(dp: &mut Dataplane, server: &str, count: u32) -> Result<()> {
    let server = addr16(server);
    let value = established(80, 8080);
    for i in 0..count {
        let (client, port) = fill_client(i);
        dp.insert_flow(key(v4_mapped(client.octets()), server, port), value)
            .with_context(|| format!("inserting bulk flow {i} of {count}"))?;
    }
    Ok(())
}

/// CLOCK_MONOTONIC, the clock of the programs' `bpf_ktime_get_coarse_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
