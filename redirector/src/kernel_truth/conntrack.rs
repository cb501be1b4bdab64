//! Netfilter conntrack's TCP entries for given connections (ctnetlink): whether it tracks
//! the ORIGINAL tuple client → server on the TO port, and in which state. This is the
//! kernel's record of a flow DNATed on into a container namespace, whose socket is not in
//! the loader's namespace.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use super::{
    mapped_v4,
    netlink::{self, attr, NetlinkError, NLM_F_DUMP},
    ServerTuple,
};

/// include/uapi/linux/netlink.h.
const NETLINK_NETFILTER: i32 = 12;
/// include/uapi/linux/netfilter/nfnetlink.h: conntrack's subsystem, in the message type's
/// high byte.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// include/uapi/linux/netfilter/nfnetlink_conntrack.h (`enum cntl_msg_types`).
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
/// `enum ctattr_type`.
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
/// `enum ctattr_tuple`.
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
/// `enum ctattr_ip`.
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
/// `enum ctattr_l4proto`.
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
/// `enum ctattr_protoinfo`, `enum ctattr_protoinfo_tcp`.
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// Up to this many connections are asked one exact GET each; more, and the table of each
/// family they use is dumped once instead.
const MAX_EXACT_LOOKUPS: usize = 16;
/// Present in every network namespace while `nf_conntrack` is loaded.
const CONNTRACK_PRESENT: [&str; 2] = [
    "/proc/sys/net/netfilter/nf_conntrack_count",
    "/proc/net/nf_conntrack",
];

/// Asking conntrack failed.
#[derive(Debug, thiserror::Error)]
#[error("reading netfilter conntrack (ctnetlink, {what})")]
pub struct ConntrackError {
    /// What was asked: `dump` or `lookup`.
    pub what: &'static str,
    /// Cause.
    #[source]
    pub source: NetlinkError,
}

/// A TCP conntrack entry's state, `enum tcp_conntrack`
/// (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// `TCP_CONNTRACK_NONE`.
    None,
    /// `TCP_CONNTRACK_SYN_SENT`.
    SynSent,
    /// `TCP_CONNTRACK_SYN_RECV`.
    SynRecv,
    /// `TCP_CONNTRACK_ESTABLISHED`.
    Established,
    /// `TCP_CONNTRACK_FIN_WAIT`.
    FinWait,
    /// `TCP_CONNTRACK_CLOSE_WAIT`.
    CloseWait,
    /// `TCP_CONNTRACK_LAST_ACK`.
    LastAck,
    /// `TCP_CONNTRACK_TIME_WAIT`: closed, lingering.
    TimeWait,
    /// `TCP_CONNTRACK_CLOSE` (after a RST, or a connection never completed).
    Close,
    /// `TCP_CONNTRACK_SYN_SENT2` (simultaneous open).
    SynSent2,
    /// A state this code does not know (taken as open).
    Other(u8),
}

impl CtState {
    /// The state of the kernel's number.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            0 => CtState::None,
            1 => CtState::SynSent,
            2 => CtState::SynRecv,
            3 => CtState::Established,
            4 => CtState::FinWait,
            5 => CtState::CloseWait,
            6 => CtState::LastAck,
            7 => CtState::TimeWait,
            8 => CtState::Close,
            9 => CtState::SynSent2,
            other => CtState::Other(other),
        }
    }

    /// The kernel's number of the state.
    pub fn raw(self) -> u8 {
        match self {
            CtState::None => 0,
            CtState::SynSent => 1,
            CtState::SynRecv => 2,
            CtState::Established => 3,
            CtState::FinWait => 4,
            CtState::CloseWait => 5,
            CtState::LastAck => 6,
            CtState::TimeWait => 7,
            CtState::Close => 8,
            CtState::SynSent2 => 9,
            CtState::Other(raw) => raw,
        }
    }

    /// True once the connection is over (`TIME_WAIT`, `CLOSE`).
    pub fn is_closed(self) -> bool {
        matches!(self, CtState::TimeWait | CtState::Close)
    }
}

/// What conntrack says about the connections asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conntrack {
    /// Netfilter conntrack is not loaded in this namespace: it tracks nothing, so no flow
    /// is forwarded through it.
    Absent,
    /// The connections asked that conntrack tracks, with their state (those it does not
    /// track are not here).
    Tracked(HashMap<ServerTuple, CtState>),
}

impl Conntrack {
    /// The state of `tuple`'s entry, if conntrack tracks it.
    pub fn state(&self, tuple: &ServerTuple) -> Option<CtState> {
        match self {
            Conntrack::Absent => None,
            Conntrack::Tracked(states) => states.get(tuple).copied(),
        }
    }
}

/// True while `nf_conntrack` is loaded (its files exist in every namespace then).
pub fn loaded() -> bool {
    CONNTRACK_PRESENT
        .iter()
        .any(|path| Path::new(path).exists())
}

/// Conntrack's TCP entries whose ORIGINAL tuple is one of `tuples` (client → server on
/// the server's port), in this thread's network namespace: an exact GET each for a few,
/// one dump per family used for more. If `nf_conntrack` is not loaded, [`Conntrack::Absent`]
/// without asking. An error is an error even when the cause is that ctnetlink cannot be
/// reached (module missing): conntrack may then still hold flows nobody can see.
pub fn tcp_states(tuples: &[ServerTuple]) -> Result<Conntrack, ConntrackError> {
    if !loaded() {
        return Ok(Conntrack::Absent);
    }
    let mut found = HashMap::new();
    if tuples.is_empty() {
        return Ok(Conntrack::Tracked(found));
    }
    let open_err = |source| ConntrackError {
        what: "socket",
        source,
    };
    let mut socket = netlink::Socket::open(NETLINK_NETFILTER).map_err(open_err)?;
    if tuples.len() <= MAX_EXACT_LOOKUPS {
        for tuple in tuples {
            if let Some(state) = get(&mut socket, tuple)? {
                found.insert(*tuple, state);
            }
        }
    } else {
        let wanted: HashSet<&ServerTuple> = tuples.iter().collect();
        for v4 in [true, false] {
            if tuples.iter().any(|t| t.is_v4() == v4) {
                dump(&mut socket, v4, &wanted, &mut found)?;
            }
        }
    }
    Ok(Conntrack::Tracked(found))
}

/// The state of the entry whose ORIGINAL tuple is `tuple`, if any (zone 0).
fn get(
    socket: &mut netlink::Socket,
    tuple: &ServerTuple,
) -> Result<Option<CtState>, ConntrackError> {
    let mut payload = nfgenmsg(tuple.is_v4());
    put_tuple(&mut payload, CTA_TUPLE_ORIG, tuple, false);
    let mut state = None;
    let result = socket.request(msg_type(IPCTNL_MSG_CT_GET), 0, &payload, |_, body| {
        if let Some((found, s)) = parse(body) {
            if found == *tuple {
                state = s;
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(state),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(source) => Err(ConntrackError {
            what: "lookup",
            source,
        }),
    }
}

/// Every TCP entry of one family, those of `wanted` kept into `found`.
fn dump(
    socket: &mut netlink::Socket,
    v4: bool,
    wanted: &HashSet<&ServerTuple>,
    found: &mut HashMap<ServerTuple, CtState>,
) -> Result<(), ConntrackError> {
    let payload = nfgenmsg(v4);
    socket
        .request(
            msg_type(IPCTNL_MSG_CT_GET),
            NLM_F_DUMP,
            &payload,
            |_, body| {
                if let Some((tuple, Some(state))) = parse(body) {
                    if wanted.contains(&tuple) {
                        // The same tuple in two zones: an open one wins.
                        let entry = found.entry(tuple).or_insert(state);
                        if entry.is_closed() {
                            *entry = state;
                        }
                    }
                }
                Ok(())
            },
        )
        .map_err(|source| ConntrackError {
            what: "dump",
            source,
        })
}

fn msg_type(msg: u16) -> u16 {
    NFNL_SUBSYS_CTNETLINK << 8 | msg
}

/// `struct nfgenmsg` for a family, version `NFNETLINK_V0`.
fn nfgenmsg(v4: bool) -> Vec<u8> {
    let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    vec![family as u8, 0, 0, 0]
}

/// Appends `tuple` as ctnetlink tuple attribute `kind`: client → server for the ORIGINAL
/// direction, or server → client with `reply`.
fn put_tuple(out: &mut Vec<u8>, kind: u16, tuple: &ServerTuple, reply: bool) {
    let (src, sport, dst, dport) = if reply {
        (
            tuple.server_addr,
            tuple.server_port,
            tuple.client_addr,
            tuple.client_port,
        )
    } else {
        (
            tuple.client_addr,
            tuple.client_port,
            tuple.server_addr,
            tuple.server_port,
        )
    };
    netlink::put_nested(out, kind, |out| {
        netlink::put_nested(out, CTA_TUPLE_IP, |out| {
            if tuple.is_v4() {
                netlink::put_attr(out, CTA_IP_V4_SRC, &src[12..]);
                netlink::put_attr(out, CTA_IP_V4_DST, &dst[12..]);
            } else {
                netlink::put_attr(out, CTA_IP_V6_SRC, &src);
                netlink::put_attr(out, CTA_IP_V6_DST, &dst);
            }
        });
        netlink::put_nested(out, CTA_TUPLE_PROTO, |out| {
            netlink::put_attr(out, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
            netlink::put_attr(out, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
            netlink::put_attr(out, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
        });
    });
}

/// The ORIGINAL tuple of one conntrack message (after its `nfgenmsg`) if it is TCP, as
/// the server sees it, with the TCP state if the entry carries one.
fn parse(message: &[u8]) -> Option<(ServerTuple, Option<CtState>)> {
    let attrs = message.get(4..)?;
    let orig = attr(attrs, CTA_TUPLE_ORIG)?;
    let ip = attr(orig, CTA_TUPLE_IP)?;
    let proto = attr(orig, CTA_TUPLE_PROTO)?;
    if attr(proto, CTA_PROTO_NUM)? != [libc::IPPROTO_TCP as u8] {
        return None;
    }
    let (src, dst) = match (attr(ip, CTA_IP_V4_SRC), attr(ip, CTA_IP_V4_DST)) {
        (Some(src), Some(dst)) => (
            mapped_v4(src.try_into().ok()?),
            mapped_v4(dst.try_into().ok()?),
        ),
        _ => (
            attr(ip, CTA_IP_V6_SRC)?.try_into().ok()?,
            attr(ip, CTA_IP_V6_DST)?.try_into().ok()?,
        ),
    };
    let port =
        |kind| -> Option<u16> { Some(u16::from_be_bytes(attr(proto, kind)?.try_into().ok()?)) };
    let tuple = ServerTuple {
        server_addr: dst,
        server_port: port(CTA_PROTO_DST_PORT)?,
        client_addr: src,
        client_port: port(CTA_PROTO_SRC_PORT)?,
    };
    let state = attr(attrs, CTA_PROTOINFO)
        .and_then(|info| attr(info, CTA_PROTOINFO_TCP))
        .and_then(|tcp| attr(tcp, CTA_PROTOINFO_TCP_STATE))
        .and_then(|state| state.first())
        .map(|raw| CtState::from_raw(*raw));
    Some((tuple, state))
}

/// Creates a TCP entry for `tuple` in `state` that expires in `timeout_secs` (what
/// `conntrack -I` does): tests and benchmarks make conntrack's answers with it.
pub fn create(
    tuple: &ServerTuple,
    state: CtState,
    timeout_secs: u32,
) -> Result<(), ConntrackError> {
    let err = |source| ConntrackError {
        what: "create",
        source,
    };
    let mut socket = netlink::Socket::open(NETLINK_NETFILTER).map_err(err)?;
    let mut payload = nfgenmsg(tuple.is_v4());
    put_tuple(&mut payload, CTA_TUPLE_ORIG, tuple, false);
    put_tuple(&mut payload, CTA_TUPLE_REPLY, tuple, true);
    netlink::put_attr(&mut payload, CTA_TIMEOUT, &timeout_secs.to_be_bytes());
    netlink::put_nested(&mut payload, CTA_PROTOINFO, |out| {
        netlink::put_nested(out, CTA_PROTOINFO_TCP, |out| {
            netlink::put_attr(out, CTA_PROTOINFO_TCP_STATE, &[state.raw()]);
        });
    });
    socket
        .request(
            msg_type(IPCTNL_MSG_CT_NEW),
            netlink::NLM_F_CREATE | netlink::NLM_F_EXCL | netlink::NLM_F_ACK,
            &payload,
            |_, _| Ok(()),
        )
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_truth::encode_addr;

    fn tuple(client: &str, client_port: u16, server: &str, server_port: u16) -> ServerTuple {
        ServerTuple {
            server_addr: encode_addr(server.parse().unwrap()),
            server_port,
            client_addr: encode_addr(client.parse().unwrap()),
            client_port,
        }
    }

    #[test]
    fn a_tuple_encodes_as_ctnetlink_parses_it() {
        for t in [
            tuple("10.0.0.2", 40_000, "10.0.0.1", 8080),
            tuple("fd00::2", 40_001, "fd00::1", 8443),
        ] {
            let mut message = nfgenmsg(t.is_v4());
            put_tuple(&mut message, CTA_TUPLE_ORIG, &t, false);
            put_tuple(&mut message, CTA_TUPLE_REPLY, &t, true);
            netlink::put_nested(&mut message, CTA_PROTOINFO, |out| {
                netlink::put_nested(out, CTA_PROTOINFO_TCP, |out| {
                    netlink::put_attr(out, CTA_PROTOINFO_TCP_STATE, &[7]);
                });
            });
            assert_eq!(parse(&message), Some((t, Some(CtState::TimeWait))));
        }
    }

    #[test]
    fn closed_states_are_time_wait_and_close_only() {
        for raw in 0..=12u8 {
            let state = CtState::from_raw(raw);
            assert_eq!(state.raw(), raw);
            assert_eq!(state.is_closed(), raw == 7 || raw == 8, "{state:?}");
        }
    }

    /// Runs `test` on a thread of its own in a new, empty network namespace (the
    /// thread's alone; it is freed when the thread ends). Returns false, and skips, where
    /// namespaces cannot be made.
    fn in_new_netns(test: impl FnOnce() + Send + 'static) -> bool {
        std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                );
                return false;
            }
            test();
            true
        })
        .join()
        .unwrap()
    }

    /// Entries created through ctnetlink are found with their states, by exact lookups
    /// and by dumps alike; connections it does not track are absent.
    #[test]
    fn finds_entries_by_lookup_and_by_dump() {
        if !loaded() {
            assert_eq!(
                tcp_states(&[tuple("10.0.0.2", 1, "10.0.0.1", 2)]).unwrap(),
                Conntrack::Absent
            );
            eprintln!("skipped: nf_conntrack not loaded");
            return;
        }
        in_new_netns(|| {
            let live = tuple("10.9.0.2", 40_000, "10.9.0.1", 8080);
            let closed = tuple("10.9.0.3", 40_001, "10.9.0.1", 8080);
            let live6 = tuple("fd09::2", 40_002, "fd09::1", 8443);
            let untracked = tuple("10.9.0.4", 40_003, "10.9.0.1", 8080);
            create(&live, CtState::Established, 60).unwrap();
            create(&closed, CtState::TimeWait, 60).unwrap();
            create(&live6, CtState::FinWait, 60).unwrap();
            let asked = [live, closed, live6, untracked];
            let few = tcp_states(&asked).unwrap();
            // Enough others (untracked) to take the dump path.
            let many: Vec<ServerTuple> = (0..MAX_EXACT_LOOKUPS as u16 + 1)
                .map(|i| tuple("10.9.1.1", 50_000 + i, "10.9.0.1", 8080))
                .chain(asked)
                .collect();
            let dumped = tcp_states(&many).unwrap();
            for answer in [few, dumped] {
                assert_eq!(answer.state(&live), Some(CtState::Established));
                assert_eq!(answer.state(&closed), Some(CtState::TimeWait));
                assert_eq!(answer.state(&live6), Some(CtState::FinWait));
                assert_eq!(answer.state(&untracked), None);
                let Conntrack::Tracked(states) = answer else {
                    panic!("conntrack is loaded")
                };
                assert_eq!(states.len(), 3);
            }
        });
    }
}
