//! The TCP sockets of the loader's network namespace on a set of local ports, each with its
//! state and cookie: one `NETLINK_SOCK_DIAG` dump per address family (what `ss -tan` reads),
//! filtered in the kernel by a port bytecode.

use std::{
    collections::{HashMap, HashSet},
    fmt,
};

use super::{
    mapped_v4,
    netlink::{self, NetlinkError, NLM_F_DUMP},
    ServerTuple,
};

/// include/uapi/linux/netlink.h.
const NETLINK_SOCK_DIAG: i32 = 4;
/// include/uapi/linux/sock_diag.h: the request and reply type of `inet_diag_req_v2`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// include/uapi/linux/inet_diag.h: `INET_DIAG_REQ_BYTECODE`, the filter attribute.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// `inet_diag_bc_op` codes.
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
/// `idiag_states`: every state, `TCP_NEW_SYN_RECV` and `TCP_TIME_WAIT` included.
const ALL_STATES: u32 = u32::MAX;
/// `idiag_states`: `TCP_LISTEN` only (the kernel then walks its listening hash only).
const LISTEN_ONLY: u32 = 1 << 10;
/// `INET_DIAG_SKV6ONLY`: an IPv6 socket's `IPV6_V6ONLY` (u8), sent for every IPv6 socket.
const INET_DIAG_SKV6ONLY: u16 = 11;
/// `INET_DIAG_INFO`: the socket's `struct tcp_info`, sent when `idiag_ext` asks for it.
const INET_DIAG_INFO: u16 = 2;
/// `struct tcp_info` offsets of `tcpi_last_data_sent` and `tcpi_last_data_recv` (ms ago).
const TCPI_LAST_DATA_SENT: usize = 44;
const TCPI_LAST_DATA_RECV: usize = 52;
/// Ports the kernel filter names at most (12 bytes each in a `u16`-long attribute); past
/// this the dump is unfiltered and the ports are picked out here.
const MAX_FILTER_PORTS: usize = 1024;
/// `struct inet_diag_msg` size, and the offsets of its fields used here.
const INET_DIAG_MSG_LEN: usize = 72;

/// An address family dumped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `AF_INET`.
    V4,
    /// `AF_INET6` (IPv4 clients of dual-stack sockets included, as mapped addresses).
    V6,
}

impl Family {
    fn raw(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Dumping the socket table failed.
#[derive(Debug, thiserror::Error)]
#[error("listing the {family} TCP sockets (sock_diag)")]
pub struct SockDiagError {
    /// The family whose dump failed.
    pub family: Family,
    /// Cause.
    #[source]
    pub source: NetlinkError,
}

/// A TCP socket's state, include/net/tcp_states.h.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// `TCP_ESTABLISHED`.
    Established,
    /// `TCP_SYN_SENT`.
    SynSent,
    /// `TCP_SYN_RECV` (a full socket in the handshake: Fast Open).
    SynRecv,
    /// `TCP_FIN_WAIT1`.
    FinWait1,
    /// `TCP_FIN_WAIT2`.
    FinWait2,
    /// `TCP_TIME_WAIT`: closed, lingering for retransmissions.
    TimeWait,
    /// `TCP_CLOSE`.
    Close,
    /// `TCP_CLOSE_WAIT`.
    CloseWait,
    /// `TCP_LAST_ACK`.
    LastAck,
    /// `TCP_LISTEN`.
    Listen,
    /// `TCP_CLOSING`.
    Closing,
    /// `TCP_NEW_SYN_RECV`: a request socket, the handshake in progress.
    NewSynRecv,
    /// A state this code does not know (taken as open).
    Other(u8),
}

impl TcpState {
    /// The state of the kernel's number.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            12 => TcpState::NewSynRecv,
            other => TcpState::Other(other),
        }
    }

    /// True once the connection is over (`TIME_WAIT`, `CLOSE`): nothing but
    /// retransmissions will cross it.
    pub fn is_closed(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::Close)
    }
}

/// What the socket table says about one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// Its TCP state.
    pub state: TcpState,
    /// Its cookie (`SO_COOKIE`, `bpf_get_socket_cookie`; a TIME_WAIT socket keeps the
    /// cookie of the socket it replaced).
    pub cookie: u64,
}

/// The sockets found, by tuple (a listener's client is `::`/`0.0.0.0` port 0).
pub type SocketTable = HashMap<ServerTuple, SocketInfo>;

/// A listening TCP socket of this network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListeningSocket {
    /// Its family.
    pub family: Family,
    /// The address it is bound to (IPv4 as IPv4-mapped IPv6; all zero for `0.0.0.0`, as
    /// for `::`).
    pub addr: [u8; 16],
    /// Its port.
    pub port: u16,
    /// Its inode (`socket:[INODE]` in `/proc/PID/fd`).
    pub inode: u32,
    /// An IPv6 socket with `IPV6_V6ONLY` (takes no IPv4 connections).
    pub v6only: bool,
}

/// A connection of this network namespace, as the socket table has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Its tuple (the server side is the local one).
    pub tuple: ServerTuple,
    /// Its TCP state.
    pub state: TcpState,
    /// Milliseconds since data last went either way (`tcp_info`), if the kernel said.
    pub idle_ms: Option<u32>,
}

/// Every TCP connection (not a listener) of this thread's network namespace whose local
/// port is one of `local_ports`, with how long it has been idle.
pub fn connections(local_ports: &HashSet<u16>) -> Result<Vec<Connection>, SockDiagError> {
    let mut found = Vec::new();
    each_family(
        local_ports,
        ALL_STATES & !LISTEN_ONLY,
        1 << (INET_DIAG_INFO - 1),
        |body| {
            let (tuple, info) =
                parse(body).ok_or(NetlinkError::Malformed("short inet_diag_msg"))?;
            if local_ports.contains(&tuple.server_port) && info.state != TcpState::Listen {
                let tcp_info = netlink::attr(&body[INET_DIAG_MSG_LEN..], INET_DIAG_INFO);
                let idle_ms = tcp_info.and_then(|i| {
                    let sent = netlink::read_u32(i, TCPI_LAST_DATA_SENT)?;
                    let recv = netlink::read_u32(i, TCPI_LAST_DATA_RECV)?;
                    Some(sent.min(recv))
                });
                found.push(Connection {
                    tuple,
                    state: info.state,
                    idle_ms,
                });
            }
            Ok(())
        },
    )?;
    Ok(found)
}

/// Every listening TCP socket of this thread's network namespace on one of `ports`: one
/// dump per family of the kernel's listening hash only, filtered in the kernel.
pub fn listening_sockets(ports: &HashSet<u16>) -> Result<Vec<ListeningSocket>, SockDiagError> {
    let mut found = Vec::new();
    each_family(ports, LISTEN_ONLY, 0, |body| {
        if let Some(listener) = parse_listener(body) {
            if ports.contains(&listener.port) {
                found.push(listener);
            }
        }
        Ok(())
    })?;
    Ok(found)
}

/// Every TCP socket of this thread's network namespace whose local port is one of
/// `local_ports`, in every state: one dump per family, filtered in the kernel.
pub fn tcp_sockets(local_ports: &HashSet<u16>) -> Result<SocketTable, SockDiagError> {
    let mut table = SocketTable::new();
    each_family(local_ports, ALL_STATES, 0, |body| {
        let (tuple, info) = parse(body).ok_or(NetlinkError::Malformed("short inet_diag_msg"))?;
        // The kernel filter is the fast path; this is the rule (an unfiltered dump, or a
        // kernel that ignored the filter).
        if local_ports.contains(&tuple.server_port) {
            table.insert(tuple, info);
        }
        Ok(())
    })?;
    Ok(table)
}

/// Dumps the TCP sockets in `states` on `local_ports` of each family, with the extensions
/// of `ext` (`idiag_ext`), handing each `inet_diag_msg` (with its attributes) to `each`.
fn each_family(
    local_ports: &HashSet<u16>,
    states: u32,
    ext: u8,
    mut each: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<(), SockDiagError> {
    if local_ports.is_empty() {
        return Ok(());
    }
    let mut ports: Vec<u16> = local_ports.iter().copied().collect();
    ports.sort_unstable();
    let open_err = |source| SockDiagError {
        family: Family::V4,
        source,
    };
    let mut socket = netlink::Socket::open(NETLINK_SOCK_DIAG).map_err(open_err)?;
    for family in [Family::V4, Family::V6] {
        match dump(&mut socket, family, (&ports, states, ext), &mut each) {
            Ok(()) => {}
            // A kernel without IPv6 has no IPv6 sockets.
            Err(e)
                if family == Family::V6
                    && matches!(
                        e.errno(),
                        Some(libc::ENOENT | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
                    ) => {}
            Err(source) => return Err(SockDiagError { family, source }),
        }
    }
    Ok(())
}

/// One family's dump, each message to `each`.
fn dump(
    socket: &mut netlink::Socket,
    family: Family,
    (ports, states, ext): (&[u16], u32, u8),
    each: &mut impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    let request = request(family, ports, states, ext);
    socket.request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, &request, |kind, body| {
        if kind != SOCK_DIAG_BY_FAMILY {
            return Ok(());
        }
        each(body)
    })
}

/// `inet_diag_req_v2` for the TCP sockets in `states` of `family`, with the extensions of
/// `ext` and the bytecode of `ports`.
fn request(family: Family, ports: &[u16], states: u32, ext: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(56 + 4 + ports.len() * 12);
    out.push(family.raw());
    out.push(libc::IPPROTO_TCP as u8);
    out.push(ext); // idiag_ext: 0 when the base message (state, cookie) is enough
    out.push(0); // pad
    out.extend_from_slice(&states.to_ne_bytes());
    out.extend_from_slice(&[0; 48]); // inet_diag_sockid: any
    if ports.len() <= MAX_FILTER_PORTS {
        netlink::put_attr(&mut out, INET_DIAG_REQ_BYTECODE, &port_filter(ports));
    }
    out
}

/// `inet_diag` bytecode accepting a socket whose local port is one of `ports` (at least
/// one): `S_EQ p1 | JMP | S_EQ p2 | JMP | … | S_EQ pn`, the shape `ss` gives `sport = :a
/// or sport = :b`. The kernel runs it as jumps: a match jumps (`yes`) to the JMP after it,
/// which jumps to the end (accept); a miss jumps (`no`) over the JMP to the next test, and
/// from the last one past the end (reject). Each port rides in the `no` field of the op
/// after its test. The kernel's audit follows the `yes` chain, which visits every op.
fn port_filter(ports: &[u16]) -> Vec<u8> {
    let total = ports.len() * 12 - 4;
    let mut out = Vec::with_capacity(total);
    let op = |out: &mut Vec<u8>, code: u8, yes: u8, no: u16| {
        out.push(code);
        out.push(yes);
        out.extend_from_slice(&no.to_ne_bytes());
    };
    for (i, port) in ports.iter().enumerate() {
        op(&mut out, INET_DIAG_BC_S_EQ, 8, 12);
        op(&mut out, 0, 0, *port);
        if i + 1 < ports.len() {
            let to_end = total - out.len();
            op(&mut out, INET_DIAG_BC_JMP, 4, to_end as u16);
        }
    }
    out
}

/// A listening socket's `inet_diag_msg`.
fn parse_listener(msg: &[u8]) -> Option<ListeningSocket> {
    let (tuple, info) = parse(msg)?;
    if info.state != TcpState::Listen {
        return None;
    }
    let family = if i32::from(msg[0]) == libc::AF_INET {
        Family::V4
    } else {
        Family::V6
    };
    let v6only = family == Family::V6
        && netlink::attr(&msg[INET_DIAG_MSG_LEN..], INET_DIAG_SKV6ONLY)
            .is_some_and(|value| value.first() == Some(&1));
    let any_v4 = mapped_v4([0; 4]);
    Some(ListeningSocket {
        family,
        addr: if tuple.server_addr == any_v4 {
            [0; 16]
        } else {
            tuple.server_addr
        },
        port: tuple.server_port,
        inode: netlink::read_u32(msg, 68)?,
        v6only,
    })
}

/// The tuple and state of one `inet_diag_msg`.
fn parse(msg: &[u8]) -> Option<(ServerTuple, SocketInfo)> {
    if msg.len() < INET_DIAG_MSG_LEN {
        return None;
    }
    let family = msg[0];
    let port = |offset: usize| u16::from_be_bytes([msg[offset], msg[offset + 1]]);
    let addr = |offset: usize| -> [u8; 16] {
        if i32::from(family) == libc::AF_INET {
            mapped_v4(msg[offset..offset + 4].try_into().unwrap())
        } else {
            msg[offset..offset + 16].try_into().unwrap()
        }
    };
    let tuple = ServerTuple {
        server_port: port(4),
        client_port: port(6),
        server_addr: addr(8),
        client_addr: addr(24),
    };
    // `idiag_cookie[2]`: the low half first, each in host order.
    let low = u64::from(netlink::read_u32(msg, 44)?);
    let high = u64::from(netlink::read_u32(msg, 48)?);
    let info = SocketInfo {
        state: TcpState::from_raw(msg[1]),
        cookie: high << 32 | low,
    };
    Some((tuple, info))
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
        os::fd::{AsFd, AsRawFd},
        time::{Duration, Instant},
    };

    use super::*;
    use crate::kernel_truth::encode_addr;

    /// The kernel's `inet_diag_bc_run`, for checking the bytecode on the host.
    fn run(bc: &[u8], sport: u16) -> bool {
        let mut at = 0i64;
        let mut len = bc.len() as i64;
        while len > 0 {
            let op = &bc[at as usize..];
            let (code, yes, no) = (op[0], op[1], u16::from_ne_bytes([op[2], op[3]]));
            let matched = match code {
                INET_DIAG_BC_JMP => false,
                INET_DIAG_BC_S_EQ => sport == u16::from_ne_bytes([op[6], op[7]]),
                _ => panic!("op {code}"),
            };
            let step = if matched {
                i64::from(yes)
            } else {
                i64::from(no)
            };
            at += step;
            len -= step;
        }
        len == 0
    }

    /// The kernel's `inet_diag_bc_audit` and `valid_cc` for the ops used here.
    fn audit(bc: &[u8]) -> bool {
        let on_yes_chain = |target_len: i64| {
            let (mut at, mut len) = (0usize, bc.len() as i64);
            while len >= 0 {
                if target_len > len {
                    return false;
                }
                if target_len == len {
                    return true;
                }
                let yes = i64::from(bc[at + 1]);
                at += yes as usize;
                len -= yes;
            }
            false
        };
        let (mut at, mut len) = (0usize, bc.len() as i64);
        while len > 0 {
            let op = &bc[at..];
            let (code, yes, no) = (
                op[0],
                i64::from(op[1]),
                i64::from(u16::from_ne_bytes([op[2], op[3]])),
            );
            let min_len = if code == INET_DIAG_BC_S_EQ { 8 } else { 4 };
            if len < min_len {
                return false;
            }
            if no < min_len || no > len + 4 || no & 3 != 0 {
                return false;
            }
            if no < len && !on_yes_chain(len - no) {
                return false;
            }
            if yes < min_len || yes > len + 4 || yes & 3 != 0 {
                return false;
            }
            at += yes as usize;
            len -= yes;
        }
        len == 0
    }

    #[test]
    fn the_port_filter_passes_the_kernel_audit_and_accepts_only_its_ports() {
        for ports in [vec![8080], vec![8080, 8443], vec![1, 8080, 8443, 65535]] {
            let bc = port_filter(&ports);
            assert!(audit(&bc), "{ports:?}");
            for port in [0, 1, 80, 443, 8080, 8443, 9000, 65535] {
                assert_eq!(run(&bc, port), ports.contains(&port), "{ports:?} {port}");
            }
        }
    }

    #[test]
    fn states_closed_are_time_wait_and_close_only() {
        assert!(TcpState::from_raw(6).is_closed());
        assert!(TcpState::from_raw(7).is_closed());
        for raw in [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 99] {
            assert!(!TcpState::from_raw(raw).is_closed(), "{raw}");
        }
        assert_eq!(TcpState::from_raw(12), TcpState::NewSynRecv);
        assert_eq!(TcpState::from_raw(99), TcpState::Other(99));
    }

    fn cookie(socket: impl AsFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: a valid socket fd, and `cookie`/`len` describe a writable u64.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        cookie
    }

    /// SO_LINGER with a zero timeout: closing sends a RST and frees the socket at once.
    fn abort_on_close(socket: impl AsFd) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket fd, and `linger` is a readable struct of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }

    fn tuple(server: SocketAddr, client: SocketAddr) -> ServerTuple {
        ServerTuple {
            server_addr: encode_addr(server.ip()),
            server_port: server.port(),
            client_addr: encode_addr(client.ip()),
            client_port: client.port(),
        }
    }

    /// Dumps the sockets on `port` until `done` holds (state changes after a close are
    /// asynchronous), at most 5 s.
    fn wait_for(port: u16, done: impl Fn(&SocketTable) -> bool) -> SocketTable {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let table = tcp_sockets(&HashSet::from([port])).unwrap();
            if done(&table) || Instant::now() > deadline {
                return table;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A listener and an accepted connection on `ip`: both are found on the listener's
    /// port with their states and cookies; the client's own socket (another local port)
    /// is not; after an orderly close the server side is in TIME_WAIT with the same
    /// cookie, after an abortive one it is gone.
    fn finds_listener_connection_and_close(ip: IpAddr) {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let listening = tuple(
            listener.local_addr().unwrap(),
            SocketAddr::new(
                if ip.is_ipv4() {
                    "0.0.0.0".parse().unwrap()
                } else {
                    "::".parse().unwrap()
                },
                0,
            ),
        );
        let client = TcpStream::connect((ip, port)).unwrap();
        let (server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let connection = tuple(server.local_addr().unwrap(), peer);

        let table = tcp_sockets(&HashSet::from([port])).unwrap();
        assert_eq!(table.len(), 2, "{table:?}");
        assert_eq!(
            table[&listening],
            SocketInfo {
                state: TcpState::Listen,
                cookie: cookie(&listener)
            }
        );
        assert_eq!(
            table[&connection],
            SocketInfo {
                state: TcpState::Established,
                cookie: cookie(&server)
            }
        );
        let client_side = tuple(client.local_addr().unwrap(), server.local_addr().unwrap());
        assert!(!table.contains_key(&client_side));

        // Orderly close, server first: the server socket ends in TIME_WAIT.
        let server_cookie = cookie(&server);
        server.shutdown(Shutdown::Both).unwrap();
        drop(server);
        drop(client);
        let table = wait_for(port, |t| {
            t.get(&connection).map(|s| s.state) == Some(TcpState::TimeWait)
        });
        assert_eq!(
            table.get(&connection),
            Some(&SocketInfo {
                state: TcpState::TimeWait,
                cookie: server_cookie
            }),
            "{table:?}"
        );

        // Abortive close (RST): no socket is left.
        let mut client = TcpStream::connect((ip, port)).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let connection = tuple(server.local_addr().unwrap(), peer);
        client.write_all(b"x").unwrap();
        assert!(tcp_sockets(&HashSet::from([port]))
            .unwrap()
            .contains_key(&connection));
        abort_on_close(&server);
        drop(server);
        let table = wait_for(port, |t| !t.contains_key(&connection));
        assert!(!table.contains_key(&connection), "{table:?}");
    }

    #[test]
    fn finds_ipv4_sockets_with_states_and_cookies() {
        finds_listener_connection_and_close("127.0.0.1".parse().unwrap());
    }

    #[test]
    fn finds_ipv6_sockets_with_states_and_cookies() {
        if TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipped: no IPv6 loopback");
            return;
        }
        finds_listener_connection_and_close("::1".parse().unwrap());
    }

    #[test]
    fn other_ports_and_an_empty_set_find_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let other_port = other.local_addr().unwrap().port();
        let table = tcp_sockets(&HashSet::from([other_port])).unwrap();
        assert!(
            table.keys().all(|t| t.server_port == other_port),
            "{table:?}"
        );
        assert!(table.keys().all(|t| t.server_port != port));
        assert!(tcp_sockets(&HashSet::new()).unwrap().is_empty());
    }
}
