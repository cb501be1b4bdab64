//! The TCP sockets of this network namespace, from `/proc/net/tcp` and `/proc/net/tcp6`
//! (what `ss -t` reads too): the listeners of the listener check, the connection count of
//! the capacity check.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::DoctorError;

/// `st` of a listening socket (`TCP_LISTEN` in include/net/tcp_states.h).
pub const TCP_LISTEN: u8 = 0x0a;

/// One line of `/proc/net/tcp*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    /// Local address.
    pub local_addr: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// TCP state (`st`).
    pub state: u8,
}

impl TcpSocket {
    /// True for a listening socket.
    pub fn is_listener(&self) -> bool {
        self.state == TCP_LISTEN
    }
}

/// Every TCP socket of this network namespace, IPv4 and IPv6.
pub fn tcp_sockets() -> Result<Vec<TcpSocket>, DoctorError> {
    let mut sockets = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(path) {
            Ok(table) => sockets.extend(parse(&table)),
            // No tcp6 when IPv6 is off.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(DoctorError::ProcNet { path, source }),
        }
    }
    Ok(sockets)
}

/// The sockets of one table; lines that do not parse (the header) are skipped.
fn parse(table: &str) -> Vec<TcpSocket> {
    table
        .lines()
        .filter_map(|line| {
            // `sl local_address rem_address st …`, addresses as `HEXADDR:HEXPORT`.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = fields.get(1)?.split_once(':')?;
            Some(TcpSocket {
                local_addr: parse_addr(addr)?,
                local_port: u16::from_str_radix(port, 16).ok()?,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
            })
        })
        .collect()
}

/// The kernel prints an address as its 32-bit words in host byte order, each `%08X`.
fn parse_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let text = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(text, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listeners_and_connections_of_both_tables() {
        // Captured on a little-endian host: 127.0.0.1:8080 listening, 10.77.1.2:8080
        // connected, [::]:8443 listening, [::1]:8080 connected.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
           1: 02014D0A:1F90 01014D0A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n";
        let v6 = "  sl  local_address                         remote_address                        st\n\
           0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 0\n\
           1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C350 01 0\n";
        let mut sockets = parse(v4);
        sockets.extend(parse(v6));
        assert_eq!(sockets.len(), 4);
        if cfg!(target_endian = "little") {
            assert_eq!(sockets[0].local_addr, IpAddr::from([127, 0, 0, 1]));
            assert_eq!(sockets[1].local_addr, IpAddr::from([10, 77, 1, 2]));
            assert_eq!(sockets[3].local_addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
        assert_eq!(sockets[0].local_port, 8080);
        assert!(sockets[0].is_listener() && !sockets[1].is_listener());
        assert_eq!(sockets[2].local_port, 8443);
        assert_eq!(sockets[2].local_addr, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
}
