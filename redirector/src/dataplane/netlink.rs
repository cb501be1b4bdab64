//! rtnetlink events of the loader's network namespace: interfaces appearing, changing
//! (a rename) and going away (`RTM_NEWLINK`, `RTM_DELLINK` of `RTNLGRP_LINK`), and
//! addresses added or removed (`RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`), read from a
//! non-blocking socket on the tokio runtime.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use tokio::io::unix::AsyncFd;

use crate::kernel_truth::netlink::{attr, messages, open_fd, read_u32, set_socket_option};

/// `RTMGRP_LINK`: link events (include/uapi/linux/rtnetlink.h).
const RTMGRP_LINK: u32 = 0x1;
/// `RTMGRP_IPV4_IFADDR`.
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
/// `RTMGRP_IPV6_IFADDR`.
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// Message types.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
/// `struct ifinfomsg` size; its `ifi_index` is at offset 4.
const IFINFOMSG_LEN: usize = 16;
/// `IFLA_IFNAME`: the interface's name, NUL-terminated.
const IFLA_IFNAME: u16 = 3;
/// The socket's receive buffer: a burst of events (a bond of many slaves rebuilt) must not
/// overflow it; if it does anyway, [`Event::Overrun`] asks for a full look.
const RCVBUF: libc::c_int = 1 << 20;

/// Reading rtnetlink events failed.
#[derive(Debug, thiserror::Error)]
pub enum RtnetlinkError {
    /// The socket could not be opened, subscribed or registered with the runtime.
    #[error("subscribing to rtnetlink events: {0}")]
    Subscribe(#[source] io::Error),
    /// Receiving failed for another reason than an overrun.
    #[error("receiving rtnetlink events: {0}")]
    Receive(#[source] io::Error),
}

/// One thing the kernel reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An interface exists (new, renamed, moved in, or any change of its state).
    NewLink {
        /// Its index.
        index: u32,
        /// Its name now.
        name: String,
    },
    /// An interface went away (deleted, or moved to another namespace).
    DelLink {
        /// Its index.
        index: u32,
        /// Its name.
        name: String,
    },
    /// An address was added or removed.
    Addresses,
    /// Events were lost (the receive buffer overflowed): look at everything again.
    Overrun,
}

/// A rtnetlink socket subscribed to link (and, if asked, address) events.
pub struct Events {
    fd: AsyncFd<OwnedFd>,
    buffer: Vec<u8>,
}

impl Events {
    /// Subscribes to link events, and address events if `addresses`. Must be called on the
    /// tokio runtime (the socket is registered with its reactor).
    pub fn subscribe(addresses: bool) -> Result<Self, RtnetlinkError> {
        let fd =
            open_fd(libc::NETLINK_ROUTE, libc::SOCK_NONBLOCK).map_err(RtnetlinkError::Subscribe)?;
        set_socket_option(&fd, libc::SO_RCVBUF, &RCVBUF).map_err(RtnetlinkError::Subscribe)?;
        let mut groups = RTMGRP_LINK;
        if addresses {
            groups |= RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        }
        // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: `addr` is a valid sockaddr_nl of the length passed, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(RtnetlinkError::Subscribe(io::Error::last_os_error()));
        }
        // SAFETY: an `OwnedFd` is an open descriptor that stays open, and the same one,
        // for as long as the `AsyncFd` owns it.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| RtnetlinkError::Subscribe(io::Error::other(e.to_string())))?;
        Ok(Events {
            fd,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// Waits for the next batch of events and returns every one already queued.
    pub async fn next(&mut self) -> Result<Vec<Event>, RtnetlinkError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(RtnetlinkError::Receive)?;
            let mut events = Vec::new();
            loop {
                // SAFETY: `buffer` is writable for its whole length.
                let got = unsafe {
                    libc::recv(
                        self.fd.get_ref().as_raw_fd(),
                        self.buffer.as_mut_ptr().cast(),
                        self.buffer.len(),
                        0,
                    )
                };
                if got < 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => {
                            guard.clear_ready();
                            break;
                        }
                        Some(libc::EINTR) => continue,
                        Some(libc::ENOBUFS) => {
                            events.push(Event::Overrun);
                            continue;
                        }
                        _ => return Err(RtnetlinkError::Receive(e)),
                    }
                }
                events.extend(parse(&self.buffer[..got as usize]));
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// The events of one datagram.
pub fn parse(datagram: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    for (header, body) in messages(datagram) {
        let Ok(header) = header else {
            events.push(Event::Overrun);
            break;
        };
        match header.kind {
            RTM_NEWLINK | RTM_DELLINK => {
                let Some((index, name)) = link(body) else {
                    continue;
                };
                events.push(if header.kind == RTM_NEWLINK {
                    Event::NewLink { index, name }
                } else {
                    Event::DelLink { index, name }
                });
            }
            RTM_NEWADDR | RTM_DELADDR if events.last() != Some(&Event::Addresses) => {
                events.push(Event::Addresses);
            }
            _ => {}
        }
    }
    events
}

/// The index and name of the interface a link message describes.
fn link(body: &[u8]) -> Option<(u32, String)> {
    let index = read_u32(body, 4)?;
    let name = attr(body.get(IFINFOMSG_LEN..)?, IFLA_IFNAME)?;
    let name = name.split(|b| *b == 0).next()?;
    Some((index, String::from_utf8_lossy(name).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_truth::netlink::put_attr;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn link_body(index: u32, name: &str) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut name = name.as_bytes().to_vec();
        name.push(0);
        put_attr(&mut body, IFLA_IFNAME, &name);
        body
    }

    #[test]
    fn link_and_address_messages_parse_into_events() {
        let mut datagram = message(RTM_NEWLINK, &link_body(7, "bars0"));
        datagram.extend(message(RTM_DELLINK, &link_body(7, "bars0")));
        datagram.extend(message(RTM_NEWADDR, &[0; 8]));
        datagram.extend(message(RTM_DELADDR, &[0; 8]));
        datagram.extend(message(99, &[0; 4]));
        assert_eq!(
            parse(&datagram),
            [
                Event::NewLink {
                    index: 7,
                    name: "bars0".into()
                },
                Event::DelLink {
                    index: 7,
                    name: "bars0".into()
                },
                Event::Addresses,
            ]
        );
    }

    #[test]
    fn a_truncated_link_message_is_skipped() {
        assert_eq!(parse(&message(RTM_NEWLINK, &[0; 8])), []);
    }
}
