//! Whether an interface's driver has native XDP, without attaching anything: the
//! `xdp-features` attribute of the `netdev` generic-netlink family (kernel 6.3+; what
//! `ynl --family netdev --do dev-get` prints). `NETDEV_XDP_ACT_BASIC` is set by drivers
//! that run XDP programs themselves; without it, `--mode xdp` fails and `auto` falls back
//! to generic XDP.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// The generic-netlink controller's family id (`GENL_ID_CTRL`).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// include/uapi/linux/netdev.h.
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_XDP_ACT_BASIC: u64 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
/// `nlmsghdr` and `genlmsghdr` sizes.
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// `Some(true)` if the driver of `ifindex` has native XDP, `Some(false)` if it has none,
/// `None` if the kernel cannot say (no `netdev` family, before 6.3).
pub fn native_xdp(ifindex: u32) -> Option<bool> {
    let sock = socket().ok()?;
    let family = family_id(&sock, "netdev")?;
    let reply = request(
        &sock,
        family,
        NETDEV_CMD_DEV_GET,
        &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
    )
    .ok()?;
    let features = attrs(&reply)
        .find(|(kind, _)| *kind == NETDEV_A_DEV_XDP_FEATURES)?
        .1;
    let features = u64::from_ne_bytes(features.get(..8)?.try_into().ok()?);
    Some(features & NETDEV_XDP_ACT_BASIC != 0)
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_GENERIC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The id of generic-netlink family `name`.
fn family_id(sock: &OwnedFd, name: &str) -> Option<u16> {
    let mut name = name.as_bytes().to_vec();
    name.push(0);
    let reply = request(
        sock,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &[(CTRL_ATTR_FAMILY_NAME, &name)],
    )
    .ok()?;
    let id = attrs(&reply)
        .find(|(kind, _)| *kind == CTRL_ATTR_FAMILY_ID)?
        .1;
    Some(u16::from_ne_bytes(id.get(..2)?.try_into().ok()?))
}

/// Sends one request and returns the attributes of its reply (after the genl header).
fn request(
    sock: &OwnedFd,
    family: u16,
    cmd: u8,
    attributes: &[(u16, &[u8])],
) -> io::Result<Vec<u8>> {
    let message = encode(family, cmd, attributes);
    // SAFETY: `message` is a readable buffer of the length passed; an unconnected netlink
    // socket sends to the kernel.
    let sent = unsafe { libc::send(sock.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `buf` is writable for its whole length.
    let got = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(got as usize);
    decode(&buf)
}

/// `nlmsghdr` + `genlmsghdr` + attributes, each padded to 4 bytes.
fn encode(family: u16, cmd: u8, attributes: &[(u16, &[u8])]) -> Vec<u8> {
    let mut message = vec![0u8; NLMSG_HDRLEN];
    message.extend_from_slice(&[cmd, 1, 0, 0]); // cmd, version, reserved
    for (kind, value) in attributes {
        let len = 4 + value.len();
        message.extend_from_slice(&(len as u16).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(value);
        message.resize(message.len().next_multiple_of(4), 0);
    }
    let total = message.len() as u32;
    message[0..4].copy_from_slice(&total.to_ne_bytes());
    message[4..6].copy_from_slice(&family.to_ne_bytes());
    message[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
    message
}

/// The attributes of a reply, or the error it carries.
fn decode(reply: &[u8]) -> io::Result<Vec<u8>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short netlink reply");
    let kind = u16::from_ne_bytes(reply.get(4..6).ok_or_else(short)?.try_into().unwrap());
    if kind == NLMSG_ERROR {
        let code = i32::from_ne_bytes(reply.get(16..20).ok_or_else(short)?.try_into().unwrap());
        return Err(io::Error::from_raw_os_error(-code));
    }
    let len = u32::from_ne_bytes(reply.get(0..4).ok_or_else(short)?.try_into().unwrap()) as usize;
    Ok(reply
        .get(NLMSG_HDRLEN + GENL_HDRLEN..len.min(reply.len()))
        .ok_or_else(short)?
        .to_vec())
}

/// `(type, value)` of each attribute (flag bits of the type cleared).
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(data.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & 0x3fff;
        let value = data.get(4..len)?;
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_padded_and_replies_parsed() {
        let message = encode(
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")],
        );
        // 16 + 4 + (4 + 7 → 12)
        assert_eq!(message.len(), 32);
        assert_eq!(u32::from_ne_bytes(message[0..4].try_into().unwrap()), 32);
        let found: Vec<(u16, &[u8])> = attrs(&message[20..]).collect();
        assert_eq!(found, [(CTRL_ATTR_FAMILY_NAME, &b"netdev\0"[..])]);
        let reply = decode(&message).unwrap();
        assert_eq!(reply.len(), 12);
    }

    #[test]
    fn loopback_has_no_native_xdp() {
        // `lo` runs no XDP driver code; kernels before 6.3 cannot say.
        assert_ne!(native_xdp(1), Some(true));
    }
}
