//! `syn-flood`: a bounded spoofed-SYN generator for the flood test.
//!
//! Sends TCP SYNs to `--dst`:`--dport` from random addresses of `--src-prefix` and random
//! ports, as fast as one raw socket (`IPPROTO_RAW`, the IP header written here) can, with
//! correct IP and TCP checksums. It stops by itself after `--count` SYNs or `--seconds`,
//! whichever comes first, and earlier when `--until-stdin-closes` is given and its stdin
//! reaches end of input; it then prints `sent N SYNs in S s`.
//!
//! Both addresses must be private (10/8, 172.16/12, 192.168/16, fc00::/7): the tool is
//! meant for the test's own namespaces, whose server routes the spoofed prefix back into
//! the client namespace, where nothing answers.

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use redirector_common::csum::{fold, sum_be};
use redirector_tests::raw::{is_private, RawSocket, Rng};

/// TCP SYN flag.
const TCP_SYN: u8 = 0x02;
/// TCP header with one option, MSS (4 bytes), like a real client's SYN.
const TCP_LEN: usize = 24;
/// IPv4 header without options.
const IPV4_LEN: usize = 20;
/// IPv6 fixed header.
const IPV6_LEN: usize = 40;
/// MSS the SYNs announce.
const MSS: u16 = 1460;
/// How often the clock and the stop flag are looked at, in SYNs.
const CHECK_EVERY: u64 = 256;

/// Sends spoofed TCP SYNs from random addresses of a private prefix, bounded in count
/// and time.
///
/// Example: syn-flood --dst 10.77.1.2 --dport 80 --src-prefix 10.99.0.0/16 --count 100000 --seconds 20
#[derive(Debug, Parser)]
struct Args {
    /// Destination address (IPv4 or IPv6, private).
    #[arg(long)]
    dst: IpAddr,
    /// Destination TCP port.
    #[arg(long)]
    dport: u16,
    /// Source prefix ADDR/LEN (same family as --dst, private) the SYNs are sent from.
    #[arg(long, value_name = "ADDR/LEN")]
    src_prefix: String,
    /// Stop after this many SYNs.
    #[arg(long)]
    count: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: f64,
    /// Also stop when stdin reaches end of input (the caller's stop signal).
    #[arg(long)]
    until_stdin_closes: bool,
}

/// A source prefix: base address (host bits cleared) and length.
struct Prefix {
    base: IpAddr,
    len: u8,
}

impl Prefix {
    fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not ADDR/LEN"))?;
        let base: IpAddr = addr.parse().map_err(|e| format!("`{addr}`: {e}"))?;
        let len: u8 = len.parse().map_err(|e| format!("`{len}`: {e}"))?;
        let bits = if base.is_ipv4() { 32 } else { 128 };
        if len > bits {
            return Err(format!("prefix length {len} > {bits}"));
        }
        Ok(Self { base, len })
    }

    /// A random address of the prefix, from the random bits `r`.
    fn pick(&self, r: u128) -> IpAddr {
        match self.base {
            IpAddr::V4(base) => {
                let host = if self.len == 32 {
                    0
                } else {
                    u32::MAX >> self.len
                };
                let net = u32::from(base) & !host;
                IpAddr::V4(Ipv4Addr::from(net | (r as u32 & host)))
            }
            IpAddr::V6(base) => {
                let host = if self.len == 128 {
                    0
                } else {
                    u128::MAX >> self.len
                };
                let net = u128::from(base) & !host;
                IpAddr::V6(Ipv6Addr::from(net | (r & host)))
            }
        }
    }
}

/// Sum of the TCP pseudo-header (RFC 793 / RFC 8200 §8.1).
fn pseudo_sum(src: IpAddr, dst: IpAddr, tcp_len: usize) -> u32 {
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_be(sum_be(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_be(sum_be(0, &s.octets()), &d.octets()),
        _ => unreachable!("families checked in main"),
    };
    sum = sum_be(sum, &(tcp_len as u32).to_be_bytes());
    sum_be(sum, &[0, 0, 0, libc::IPPROTO_TCP as u8])
}

/// Writes one SYN (IP header + TCP header with MSS) into `buf`; returns its length.
fn build_syn(buf: &mut [u8], src: IpAddr, dst: IpAddr, sport: u16, dport: u16, seq: u32) -> usize {
    let ip_len = if src.is_ipv4() { IPV4_LEN } else { IPV6_LEN };
    let total = ip_len + TCP_LEN;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = &mut buf[..IPV4_LEN];
            ip.fill(0);
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = libc::IPPROTO_TCP as u8;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let check = !fold(sum_be(0, ip));
            ip[10..12].copy_from_slice(&check.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = &mut buf[..IPV6_LEN];
            ip.fill(0);
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
            ip[6] = libc::IPPROTO_TCP as u8;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
        }
        _ => unreachable!("families checked in main"),
    }
    let tcp = &mut buf[ip_len..total];
    tcp.fill(0);
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = ((TCP_LEN / 4) as u8) << 4;
    tcp[13] = TCP_SYN;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20] = 2; // MSS option: kind 2, length 4
    tcp[21] = 4;
    tcp[22..24].copy_from_slice(&MSS.to_be_bytes());
    let check = !fold(sum_be(pseudo_sum(src, dst, TCP_LEN), tcp));
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    total
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
    let prefix = Prefix::parse(&args.src_prefix)?;
    if prefix.base.is_ipv4() != args.dst.is_ipv4() {
        return Err("--dst and --src-prefix must be of the same family".into());
    }
    for addr in [args.dst, prefix.base] {
        if !is_private(addr) {
            return Err(format!("{addr} is not a private address"));
        }
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".into());
    }
    let limit = Duration::from_secs_f64(args.seconds);
    let socket = RawSocket::open(args.dst).map_err(|e| format!("raw socket: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    if args.until_stdin_closes {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            stop.store(true, Ordering::Relaxed);
        });
    }
    println!(
        "flooding {}:{} from {} (at most {} SYNs, {} s)",
        args.dst, args.dport, args.src_prefix, args.count, args.seconds
    );
    let mut rng = Rng::seeded();
    let mut buf = [0u8; IPV6_LEN + TCP_LEN];
    let (mut sent, mut refused) = (0u64, 0u64);
    let start = Instant::now();
    while sent < args.count {
        if (sent + refused) % CHECK_EVERY == 0
            && (start.elapsed() >= limit || stop.load(Ordering::Relaxed))
        {
            break;
        }
        let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let src = prefix.pick(r);
        let sport = 1024 + (r >> 64) as u16 % (u16::MAX - 1024);
        let len = build_syn(&mut buf, src, args.dst, sport, args.dport, (r >> 96) as u32);
        match socket.send(&buf[..len]) {
            Ok(()) => sent += 1,
            // A full device queue: the kernel refused this one; go on (bounded by time).
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => refused += 1,
            Err(e) => return Err(format!("sendto: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} SYNs in {secs:.2} s ({:.0}/s), {refused} refused by the kernel",
        sent as f64 / secs.max(1e-9)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let mut buf = [0u8; IPV6_LEN + TCP_LEN];
        for (src, dst) in [
            ("10.99.1.2", "10.77.1.2"),
            ("fd00:99::1234", "fd00:77:1::2"),
        ] {
            let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let len = build_syn(&mut buf, src, dst, 40000, 80, 0xdead_beef);
            let ip_len = len - TCP_LEN;
            if src.is_ipv4() {
                assert_eq!(fold(sum_be(0, &buf[..ip_len])), 0xffff);
            }
            let tcp = &buf[ip_len..len];
            assert_eq!(fold(sum_be(pseudo_sum(src, dst, TCP_LEN), tcp)), 0xffff);
        }
    }

    #[test]
    fn picks_stay_in_the_prefix() {
        let prefix = Prefix::parse("10.99.0.0/16").unwrap();
        for r in [0, u128::MAX, 0x1234_5678_9abc] {
            let IpAddr::V4(a) = prefix.pick(r) else {
                panic!()
            };
            assert_eq!(a.octets()[..2], [10, 99]);
        }
    }
}
