//! The raw netlink both questions share: a socket of one netlink protocol, one request
//! sent, and its reply read to the end (multi-part messages, `NLMSG_DONE`, `NLMSG_ERROR`),
//! plus the attribute walking and writing of their payloads.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// `struct nlmsghdr` size.
pub const NLMSG_HDRLEN: usize = 16;
/// `nlmsg_flags`: a request (include/uapi/linux/netlink.h).
pub const NLM_F_REQUEST: u16 = 0x1;
/// `nlmsg_flags`: ask for an acknowledgement (an `NLMSG_ERROR` of 0 on success).
pub const NLM_F_ACK: u16 = 0x4;
/// `nlmsg_flags`: create (with `NLM_F_EXCL`: only if it does not exist).
pub const NLM_F_CREATE: u16 = 0x400;
/// `nlmsg_flags`: fail if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// `nlmsg_flags`: dump every object (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
/// Attribute type bits that are flags, not the type (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `NLA_F_NESTED`: the attribute holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;

/// Receive buffer: the kernel fills each dump message up to what the reader's buffer
/// holds (at most 32 KiB), so twice that never truncates.
const RECV_BUFFER: usize = 64 * 1024;
/// A dump that stalls this long is given up (the reaper falls back to its timeouts).
const RECV_TIMEOUT: Duration = Duration::from_secs(2);

/// A netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened (the protocol is not in this kernel).
    #[error("opening the netlink socket: {0}")]
    Open(#[source] io::Error),
    /// The request could not be sent.
    #[error("sending the request: {0}")]
    Send(#[source] io::Error),
    /// Reading the reply failed (or timed out).
    #[error("receiving the reply: {0}")]
    Receive(#[source] io::Error),
    /// The kernel answered with an error (`NLMSG_ERROR`, or a dump ended by one).
    #[error("the kernel refused the request: {0}")]
    Kernel(#[source] io::Error),
    /// The reply does not parse.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// The errno behind the failure, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Open(e)
            | NetlinkError::Send(e)
            | NetlinkError::Receive(e)
            | NetlinkError::Kernel(e) => e.raw_os_error(),
            NetlinkError::Malformed(_) => None,
        }
    }
}

/// A netlink socket of one protocol, in the calling thread's network namespace.
pub struct Socket {
    fd: OwnedFd,
    buffer: Vec<u8>,
    seq: u32,
}

impl Socket {
    /// Opens a socket of `protocol` (`NETLINK_SOCK_DIAG`, `NETLINK_NETFILTER`, …).
    pub fn open(protocol: i32) -> Result<Self, NetlinkError> {
        let fd = open_fd(protocol, 0).map_err(NetlinkError::Open)?;
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        set_socket_option(&fd, libc::SO_RCVTIMEO, &timeout).map_err(NetlinkError::Open)?;
        Ok(Socket {
            fd,
            buffer: vec![0; RECV_BUFFER],
            seq: 0,
        })
    }

    /// Sends one request of `kind` with `flags` (`NLM_F_REQUEST` added) and `payload`,
    /// then hands `each` the type and payload of every message of the reply, until its
    /// end: `NLMSG_DONE` for a dump, `NLMSG_ERROR` (0 = acknowledged) or a single message
    /// otherwise.
    pub fn request(
        &mut self,
        kind: u16,
        flags: u16,
        payload: &[u8],
        mut each: impl FnMut(u16, &[u8]) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let message = message(kind, flags | NLM_F_REQUEST, self.seq, payload);
        // SAFETY: `message` is a readable buffer of the length passed; an unconnected
        // netlink socket sends to the kernel.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(NetlinkError::Send(io::Error::last_os_error()));
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        loop {
            // SAFETY: `buffer` is writable for its whole length. MSG_TRUNC makes the call
            // return the datagram's real length, so truncation is seen below.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    libc::MSG_TRUNC,
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Receive(e));
            }
            let got = got as usize;
            if got > self.buffer.len() {
                return Err(NetlinkError::Malformed("a message larger than the buffer"));
            }
            let mut ended = false;
            for (header, body) in messages(&self.buffer[..got]) {
                let header = header?;
                if header.seq != self.seq {
                    // A late answer to an earlier request that gave up: not ours.
                    continue;
                }
                match header.kind {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => {
                        let code = read_i32(body, 0)
                            .ok_or(NetlinkError::Malformed("short NLMSG_ERROR"))?;
                        if code != 0 {
                            return Err(NetlinkError::Kernel(io::Error::from_raw_os_error(-code)));
                        }
                        ended = true;
                    }
                    NLMSG_DONE => {
                        // A dump that failed part-way says so in its DONE message.
                        match read_i32(body, 0) {
                            Some(code) if code < 0 => {
                                return Err(NetlinkError::Kernel(io::Error::from_raw_os_error(
                                    -code,
                                )))
                            }
                            _ => ended = true,
                        }
                    }
                    NLMSG_OVERRUN => return Err(NetlinkError::Malformed("NLMSG_OVERRUN")),
                    kind => {
                        each(kind, body)?;
                        // Outside a dump one message is the whole answer, whatever its
                        // flags (ctnetlink marks even a single reply NLM_F_MULTI), unless
                        // an acknowledgement was asked for: that ends it instead.
                        if !dump && flags & NLM_F_ACK == 0 {
                            ended = true;
                        }
                    }
                }
            }
            if ended {
                return Ok(());
            }
        }
    }
}

/// The fields of a `nlmsghdr` that matter here.
pub(crate) struct Header {
    /// `nlmsg_type`.
    pub(crate) kind: u16,
    seq: u32,
}

/// A raw netlink socket of `protocol`, close-on-exec, with the extra socket-type `flags`
/// (`SOCK_NONBLOCK`, or 0).
pub(crate) fn open_fd(protocol: i32, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the `SOL_SOCKET` option `name` of `fd` to `value`.
pub(crate) fn set_socket_option<T>(fd: &OwnedFd, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: a valid socket, and `value` is a readable `T` of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `nlmsghdr` + `payload`, the length filled in.
fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + payload.len());
    out.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    out.extend_from_slice(payload);
    out
}

/// Each message of one datagram: its header (or why it does not parse) and its payload.
pub(crate) fn messages(
    mut data: &[u8],
) -> impl Iterator<Item = (Result<Header, NetlinkError>, &[u8])> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let malformed = |why| Some((Err(NetlinkError::Malformed(why)), &[][..]));
        let Some(len) = read_u32(data, 0).map(|len| len as usize) else {
            data = &[];
            return malformed("short netlink header");
        };
        if len < NLMSG_HDRLEN || len > data.len() {
            data = &[];
            return malformed("netlink message length out of bounds");
        }
        let header = Header {
            kind: read_u16(data, 4)?,
            seq: read_u32(data, 8)?,
        };
        let body = &data[NLMSG_HDRLEN..len];
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((Ok(header), body))
    })
}

/// `(type, value)` of each attribute of `data` (flag bits of the type cleared); stops at
/// the first that does not fit.
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(read_u16(data, 0)?);
        let kind = read_u16(data, 2)? & NLA_TYPE_MASK;
        let value = data.get(4..len)?;
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// The value of the first attribute of `kind` in `data`.
pub fn attr(data: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(data).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// Appends attribute `kind` holding `value` to `out`, padded to 4 bytes.
pub fn put_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends nested attribute `kind` holding the attributes `fill` writes.
pub fn put_nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
}

/// The native-endian `u16` at `offset`.
pub fn read_u16(data: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        data.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

/// The native-endian `u32` at `offset`.
pub fn read_u32(data: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        data.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn read_i32(data: &[u8], offset: usize) -> Option<i32> {
    read_u32(data, offset).map(|v| v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_a_datagram_and_stop_at_a_bad_length() {
        let mut datagram = message(20, 0, 7, &[1, 2, 3]);
        datagram.resize(datagram.len().next_multiple_of(4), 0);
        datagram.extend(message(NLMSG_DONE, 0, 7, &0i32.to_ne_bytes()));
        let parsed: Vec<_> = messages(&datagram)
            .map(|(h, body)| (h.unwrap().kind, body.to_vec()))
            .collect();
        assert_eq!(parsed, [(20, vec![1, 2, 3]), (NLMSG_DONE, vec![0; 4])]);

        let mut bad = message(20, 0, 1, &[]);
        bad[0] = 200; // longer than the datagram
        let parsed: Vec<_> = messages(&bad).collect();
        assert_eq!(parsed.len(), 1);
        assert!(parsed[0].0.is_err());
    }

    #[test]
    fn nested_attributes_round_trip() {
        let mut out = Vec::new();
        put_nested(&mut out, 1, |inner| {
            put_attr(inner, 2, &[9]);
            put_attr(inner, 3, &5u16.to_be_bytes());
        });
        put_attr(&mut out, 4, b"abcde");
        let outer: Vec<_> = attrs(&out).collect();
        assert_eq!(outer.len(), 2);
        assert_eq!(outer[1], (4, &b"abcde"[..]));
        let inner = attr(&out, 1).unwrap();
        assert_eq!(attr(inner, 2), Some(&[9][..]));
        assert_eq!(attr(inner, 3), Some(&[0, 5][..]));
        assert_eq!(attr(inner, 7), None);
    }
}
