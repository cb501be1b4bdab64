//! Crafted Ethernet/IPv4/IPv6/TCP frames with correct checksums, and a checker that
//! recomputes them, for `BPF_PROG_TEST_RUN` cases.

use std::net::IpAddr;

/// Bytes of the Ethernet header [`Frame::build`] writes (destination, source, EtherType).
const ETHERNET_HEADER_LEN: usize = 14;

/// TCP flag bits.
pub mod flags {
    pub use redirector_common::conntrack::tcp_flags::*;
    /// PSH.
    pub const PSH: u8 = 0x08;
}

/// An IPv6 extension header to insert: (next-header code of this header, its bytes
/// without the leading next-header field, which the builder fills in).
#[derive(Clone, Debug)]
pub struct Ext {
    /// Protocol number identifying this header (0, 43, 44, 51, 60…).
    pub kind: u8,
    /// Header bytes after the first (the builder prepends next-header).
    pub rest: Vec<u8>,
}

impl Ext {
    /// Hop-by-hop options: 8 bytes, one PadN.
    pub fn hop_by_hop() -> Self {
        Ext {
            kind: 0,
            rest: vec![0, 1, 4, 0, 0, 0, 0],
        }
    }
    /// Destination options: 8 bytes, one PadN.
    pub fn dest_opts() -> Self {
        Ext {
            kind: 60,
            rest: vec![0, 1, 4, 0, 0, 0, 0],
        }
    }
    /// Routing header type 4 with no segments left: 8 bytes.
    pub fn routing() -> Self {
        Ext {
            kind: 43,
            rest: vec![0, 4, 0, 0, 0, 0, 0],
        }
    }
    /// Fragment header with the given offset (8-byte units) and more-fragments flag.
    pub fn fragment(offset: u16, more: bool) -> Self {
        let field = (offset << 3) | u16::from(more);
        let [a, b] = field.to_be_bytes();
        Ext {
            kind: 44,
            rest: vec![0, a, b, 0, 0, 0, 7],
        }
    }
    /// ESP (we cannot look past it): SPI + sequence, 8 bytes.
    pub fn esp() -> Self {
        Ext {
            kind: 50,
            rest: vec![0, 0, 1, 0, 0, 0, 1],
        }
    }
}

/// Description of one frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// VLAN tags, outermost first: (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    /// Source address (family picks IPv4 or IPv6).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 options (padded to a multiple of 4 by the caller).
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment: (offset in 8-byte units, more fragments).
    pub ipv4_frag: (u16, bool),
    /// IPv6 extension headers in order.
    pub ipv6_ext: Vec<Ext>,
    /// L4 protocol (6 = TCP).
    pub proto: u8,
    /// TCP source port.
    pub sport: u16,
    /// TCP destination port.
    pub dport: u16,
    /// TCP flags.
    pub flags: u8,
    /// TCP sequence number.
    pub seq: u32,
    /// TCP acknowledgement number.
    pub ack: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A TCP frame with no options, extensions or payload.
    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Self {
        Frame {
            vlans: vec![],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ipv4_options: vec![],
            ipv4_frag: (0, false),
            ipv6_ext: vec![],
            proto: 6,
            sport,
            dport,
            flags,
            seq: 0x0102_0304,
            ack: 0x0506_0708,
            payload: vec![],
        }
    }

    /// The same frame with these sequence and acknowledgement numbers.
    pub fn with_seq_ack(&self, seq: u32, ack: u32) -> Self {
        Frame {
            seq,
            ack,
            ..self.clone()
        }
    }

    /// The IP packet of [`Frame::build`], without the link-layer header (for a raw IP
    /// socket).
    pub fn build_ip(&self) -> Vec<u8> {
        assert!(self.vlans.is_empty(), "a raw IP packet has no VLAN tags");
        self.build().split_off(ETHERNET_HEADER_LEN)
    }

    /// Serialises the frame with correct IPv4 header and TCP checksums.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.l4();
        let mut out = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for (tpid, id) in &self.vlans {
            out.extend_from_slice(&tpid.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 5 + self.ipv4_options.len() / 4;
                let total = ihl * 4 + l4.len();
                let frag = (self.ipv4_frag.0 & 0x1fff) | if self.ipv4_frag.1 { 0x2000 } else { 0 };
                let mut ip = vec![0x40 | ihl as u8, 0];
                ip.extend_from_slice(&(total as u16).to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34]);
                ip.extend_from_slice(&frag.to_be_bytes());
                ip.extend_from_slice(&[64, self.proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ipv4_options);
                let c = !ones_sum(0, &ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                out.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                out.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ext = Vec::new();
                for (i, e) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).map_or(self.proto, |n| n.kind);
                    ext.push(next);
                    ext.extend_from_slice(&e.rest);
                }
                let first = self.ipv6_ext.first().map_or(self.proto, |e| e.kind);
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[first, 64]);
                out.extend_from_slice(&s.octets());
                out.extend_from_slice(&d.octets());
                out.extend_from_slice(&ext);
            }
            _ => panic!("mixed address families"),
        }
        out.extend_from_slice(&l4);
        out
    }

    /// The L4 segment: a 20-byte TCP header with checksum, or a bare UDP-ish blob.
    fn l4(&self) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.extend_from_slice(&[0x50, self.flags, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(&self.payload);
        if self.proto == 6 {
            let c = !ones_sum(pseudo_sum(self.src, self.dst, self.proto, tcp.len()), &tcp);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
        }
        tcp
    }

    /// The same frame with other ports (what a correct rewrite must produce).
    pub fn with_ports(&self, sport: u16, dport: u16) -> Self {
        Frame {
            sport,
            dport,
            ..self.clone()
        }
    }
}

/// RFC 1071 as the textbook writes it, kept apart from the product's checksum code
/// (`redirector_common::csum`) so that the frames the tests build and the checks they make
/// share nothing with what they check: 16-bit big-endian words (an odd last byte padded
/// with zero) added one at a time to `initial`, each carry out of bit 15 added back in.
pub fn ones_sum(initial: u16, data: &[u8]) -> u16 {
    let mut sum = u32::from(initial);
    for word in data.chunks(2) {
        let high = u32::from(word[0]) << 8;
        let low = word.get(1).map_or(0, |&b| u32::from(b));
        sum += high | low;
        if sum > 0xffff {
            sum = (sum & 0xffff) + 1;
        }
    }
    sum as u16
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u16 {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    ones_sum(0, &p)
}

/// Recomputes the IPv4 header checksum (if IPv4) and the TCP checksum of a frame built
/// by [`Frame::build`] (no VLAN tags beyond those in `vlans`, extension headers walked),
/// returning an error that names the bad one.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let mut off = 12;
    let mut ether = u16::from_be_bytes([frame[off], frame[off + 1]]);
    while ether == 0x8100 || ether == 0x88a8 {
        off += 4;
        ether = u16::from_be_bytes([frame[off], frame[off + 1]]);
    }
    off += 2;
    match ether {
        0x0800 => {
            let ihl = (frame[off] & 0x0f) as usize * 4;
            if ones_sum(0, &frame[off..off + ihl]) != 0xffff {
                return Err("bad IPv4 header checksum".into());
            }
            let total = u16::from_be_bytes([frame[off + 2], frame[off + 3]]) as usize;
            let src = IpAddr::from(<[u8; 4]>::try_from(&frame[off + 12..off + 16]).unwrap());
            let dst = IpAddr::from(<[u8; 4]>::try_from(&frame[off + 16..off + 20]).unwrap());
            let tcp = &frame[off + ihl..off + total];
            check_tcp(src, dst, tcp)
        }
        0x86dd => {
            let src = IpAddr::from(<[u8; 16]>::try_from(&frame[off + 8..off + 24]).unwrap());
            let dst = IpAddr::from(<[u8; 16]>::try_from(&frame[off + 24..off + 40]).unwrap());
            let mut next = frame[off + 6];
            let mut l4 = off + 40;
            while next != 6 {
                let len = if next == 44 {
                    8
                } else {
                    (frame[l4 + 1] as usize + 1) * 8
                };
                next = frame[l4];
                l4 += len;
            }
            check_tcp(src, dst, &frame[l4..])
        }
        other => Err(format!("not IP: ethertype {other:#x}")),
    }
}

fn check_tcp(src: IpAddr, dst: IpAddr, tcp: &[u8]) -> Result<(), String> {
    if ones_sum(pseudo_sum(src, dst, 6, tcp.len()), tcp) == 0xffff {
        Ok(())
    } else {
        Err("bad TCP checksum".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook sum agrees with the product's on known values (RFC 1071's worked
    /// example) and on many random buffers, odd lengths included; the product's
    /// incremental update (RFC 1624) agrees with a textbook recomputation after a port
    /// change.
    #[test]
    fn the_product_checksums_agree_with_the_textbook() {
        use redirector_common::csum::{fold, replace_u16, sum_be};
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let example = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_sum(0, &example), 0xddf2);
        assert_eq!(fold(sum_be(0, &example)), 0xddf2);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in 20..300 {
            let mut seg: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            seg[16] = 0;
            seg[17] = 0;
            assert_eq!(
                fold(sum_be(0, &seg)),
                ones_sum(0, &seg),
                "sum of {len} bytes"
            );
            let check = !ones_sum(0, &seg);
            seg[16..18].copy_from_slice(&check.to_be_bytes());
            let new_port = next() as u16;
            let old_raw = u16::from_ne_bytes([seg[2], seg[3]]);
            let check_raw = u16::from_ne_bytes([seg[16], seg[17]]);
            seg[2..4].copy_from_slice(&new_port.to_be_bytes());
            let updated = replace_u16(
                check_raw,
                old_raw,
                u16::from_ne_bytes(new_port.to_be_bytes()),
            );
            seg[16..18].copy_from_slice(&updated.to_ne_bytes());
            assert_eq!(ones_sum(0, &seg), 0xffff, "incremental update, {len} bytes");
        }
    }

    #[test]
    fn built_frames_verify() {
        let mut f = Frame::tcp("10.0.0.1", "10.0.0.2", 40000, 80, flags::SYN);
        f.ipv4_options = vec![1, 1, 1, 0];
        f.payload = b"hello".to_vec();
        verify_checksums(&f.build()).unwrap();
        let mut g = Frame::tcp("fd00::1", "fd00::2", 40000, 443, flags::ACK);
        g.ipv6_ext = vec![Ext::hop_by_hop(), Ext::routing(), Ext::fragment(0, false)];
        verify_checksums(&g.build()).unwrap();
        let ip = f.with_seq_ack(7, 9).build_ip();
        assert_eq!(ip[0] >> 4, 4);
        assert_eq!(ip[28..32], 7u32.to_be_bytes()); // after 24 bytes of IPv4 header, the ports
        let mut bad = f.build();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert!(verify_checksums(&bad).is_err());
    }
}
