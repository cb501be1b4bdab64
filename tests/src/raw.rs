//! What the packet-crafting tools (`syn-flood`, `tcp-spoof`) share: a raw IP socket that
//! sends whole packets, the private-address check that keeps them inside the tests'
//! namespaces, and a fast random number generator.

use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

/// Whether `addr` is in a private range (RFC 1918, RFC 4193): the only addresses the tools
/// send to or from.
pub fn is_private(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_private(),
        IpAddr::V6(a) => a.segments()[0] & 0xfe00 == 0xfc00,
    }
}

/// xorshift64*: fast, good enough for addresses, ports and sequence numbers (not for
/// anything secret).
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and the process id.
    pub fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
}

/// A raw socket that sends whole IP packets (header included) to one destination.
pub struct RawSocket {
    fd: OwnedFd,
    dst: libc::sockaddr_storage,
    dst_len: libc::socklen_t,
}

impl RawSocket {
    /// Opens a raw socket of `dst`'s family addressed to `dst`.
    pub fn open(dst: IpAddr) -> io::Result<Self> {
        let family = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // IPPROTO_RAW implies IP_HDRINCL (IPv4) and IPV6_HDRINCL (IPv6).
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let dst_len = match dst {
            IpAddr::V4(d) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_addr.s_addr = u32::from_ne_bytes(d.octets());
                size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(d) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_addr.s6_addr = d.octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        Ok(Self {
            fd,
            dst: storage,
            dst_len: dst_len as libc::socklen_t,
        })
    }

    /// Sends one IP packet (its header included).
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer and the address are valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&self.dst as *const libc::sockaddr_storage).cast(),
                self.dst_len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_addresses_are_private() {
        assert!(!is_private("8.8.8.8".parse().unwrap()));
        assert!(!is_private("2001:db8::1".parse().unwrap()));
        assert!(is_private("10.77.1.1".parse().unwrap()));
        assert!(is_private("fd00:99::1".parse().unwrap()));
    }
}
