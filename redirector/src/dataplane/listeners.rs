//! The listening sockets of the rules' TO ports in socket steering's `LISTENERS` map: found
//! in the kernel's socket table (one sock_diag dump of its listening hash), taken from the
//! process that owns each with `pidfd_getfd`, inserted. The kernel removes a socket from the
//! map as it closes; the next [`sync`] inserts its successor (a restarted server's socket).

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::maps::{Map, MapData, MapError, SockHash};
use redirector_common::maps::{ListenerKey, LISTENER_V4, LISTENER_V6};

use crate::kernel_truth::sock_diag::{self, Family, ListeningSocket, SockDiagError};

/// Keeping `LISTENERS` failed as a whole (one listener that cannot be taken is only
/// reported in [`Synced::untaken`]).
#[derive(Debug, thiserror::Error)]
pub enum ListenersError {
    /// The map is not a SOCKHASH of [`ListenerKey`], or an operation on it failed.
    #[error("socket steering's LISTENERS map: {0}")]
    Map(#[source] MapError),
    /// The socket table could not be read.
    #[error(transparent)]
    SockDiag(#[from] SockDiagError),
}

/// What a [`sync`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Listening sockets inserted now.
    pub inserted: usize,
    /// TO ports with no listening socket in the namespace: new connections steered to them
    /// are refused.
    pub without_listener: Vec<u16>,
    /// Listening sockets that could not be taken from their owner, with why.
    pub untaken: Vec<(ListenerKey, String)>,
}

/// Makes `LISTENERS` hold a listening socket of every port of `to_ports` that has one in
/// this namespace, for each address and family it takes connections on, and no socket of
/// another port.
pub fn sync(map: &mut Map, to_ports: &HashSet<u16>) -> Result<Synced, ListenersError> {
    let mut hash: SockHash<&mut MapData, ListenerKey> =
        SockHash::try_from(map).map_err(ListenersError::Map)?;
    let present: HashSet<ListenerKey> = hash.keys().filter_map(Result::ok).collect();
    for key in present.iter().filter(|key| !to_ports.contains(&key.port)) {
        // Gone meanwhile is as good as removed.
        let _ = hash.remove(key);
    }
    let listening = sock_diag::listening_sockets(to_ports)?;
    let mut synced = Synced {
        without_listener: to_ports
            .iter()
            .filter(|port| !listening.iter().any(|l| l.port == **port))
            .copied()
            .collect(),
        ..Synced::default()
    };
    synced.without_listener.sort_unstable();
    let wanted: Vec<(ListenerKey, ListeningSocket)> = keys_of(&listening)
        .into_iter()
        .filter(|(key, _)| !present.contains(key))
        .collect();
    if wanted.is_empty() {
        return Ok(synced);
    }
    let inodes: HashSet<u32> = wanted.iter().map(|(_, l)| l.inode).collect();
    let owners = owners(&inodes);
    for (key, listener) in wanted {
        let taken = owners
            .get(&listener.inode)
            .ok_or_else(|| "no process holds it (yet)".to_string())
            .and_then(|(pid, fd)| take_fd(*pid, *fd).map_err(|e| format!("pid {pid}: {e}")));
        match taken {
            Ok(fd) => match hash.insert(key, fd.as_raw_fd(), 0) {
                Ok(()) => synced.inserted += 1,
                Err(e) => synced.untaken.push((key, e.to_string())),
            },
            Err(why) => synced.untaken.push((key, why)),
        }
        // `fd` is closed here: the map holds its own reference, and a listener its server
        // closes must leave the map with it.
    }
    Ok(synced)
}

/// [`sync`] on the `LISTENERS` map pinned at `path`: a control command that adds a rule
/// puts its TO port's listeners in before the rule, so that no new connection to it is
/// refused while the loader's next sync is due.
pub fn sync_pinned(path: &Path, to_ports: &HashSet<u16>) -> Result<Synced, ListenersError> {
    let data = MapData::from_pin(path).map_err(ListenersError::Map)?;
    sync(&mut Map::SockHash(data), to_ports)
}

/// The keys of the `LISTENERS` map pinned at `path`: the listening sockets socket steering
/// hands connections to now (for `status`).
pub fn pinned_keys(path: &Path) -> Result<Vec<ListenerKey>, ListenersError> {
    let data = MapData::from_pin(path).map_err(ListenersError::Map)?;
    let map = Map::SockHash(data);
    let hash: SockHash<&MapData, ListenerKey> =
        SockHash::try_from(&map).map_err(ListenersError::Map)?;
    let mut keys: Vec<ListenerKey> = hash.keys().filter_map(Result::ok).collect();
    keys.sort_unstable_by_key(|k| (k.port, k.family, k.addr));
    Ok(keys)
}

/// Each key of `LISTENERS` that a listener of `listening` should fill, with the one that
/// fills it: by its address and family, and an IPv6 wildcard socket that takes IPv4 also
/// under the IPv4 wildcard key (where no IPv4 wildcard socket is).
pub fn keys_of(listening: &[ListeningSocket]) -> HashMap<ListenerKey, ListeningSocket> {
    let key = |addr: [u8; 16], port, family| ListenerKey {
        addr,
        port,
        family,
        _pad: 0,
    };
    let mut keys = HashMap::new();
    // IPv4 sockets first, so that they win their keys over dual-stack IPv6 sockets.
    let mut ordered: Vec<&ListeningSocket> = listening.iter().collect();
    ordered.sort_by_key(|l| l.family == Family::V6);
    for l in ordered {
        let mapped = l.addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        let own = match l.family {
            Family::V4 => LISTENER_V4,
            Family::V6 if mapped => LISTENER_V4,
            Family::V6 => LISTENER_V6,
        };
        keys.entry(key(l.addr, l.port, own)).or_insert(*l);
        if l.family == Family::V6 && l.addr == [0; 16] && !l.v6only {
            keys.entry(key(l.addr, l.port, LISTENER_V4)).or_insert(*l);
        }
    }
    keys
}

/// The process and descriptor holding each socket of `inodes`, from `/proc/*/fd`.
fn owners(inodes: &HashSet<u32>) -> HashMap<u32, (i32, i32)> {
    let mut found = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Some(inode) = socket_inode(&fd.path()) else {
                continue;
            };
            if inodes.contains(&inode) {
                let Some(number) = fd.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                found.entry(inode).or_insert((pid, number));
                if found.len() == inodes.len() {
                    return found;
                }
            }
        }
    }
    found
}

/// The inode of the socket a `/proc/PID/fd/N` link points to (`socket:[INODE]`).
fn socket_inode(link: &Path) -> Option<u32> {
    let target = fs::read_link(link).ok()?;
    let text = target.to_str()?;
    text.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A duplicate of descriptor `fd` of process `pid` (`pidfd_open` + `pidfd_getfd`; needs
/// the right to ptrace `pid`, which root with `CAP_SYS_PTRACE` has).
fn take_fd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: pidfd_getfd takes three integers and returns a new descriptor or -1.
    let taken = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if taken < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, a descriptor the kernel just returned to this process.
    Ok(unsafe { OwnedFd::from_raw_fd(taken as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(family: Family, addr: [u8; 16], v6only: bool, inode: u32) -> ListeningSocket {
        ListeningSocket {
            family,
            addr,
            port: 8080,
            inode,
            v6only,
        }
    }

    fn keys(listening: &[ListeningSocket]) -> Vec<(u8, [u8; 16], u32)> {
        let mut keys: Vec<_> = keys_of(listening)
            .into_iter()
            .map(|(k, l)| (k.family, k.addr, l.inode))
            .collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn an_ipv4_wildcard_socket_wins_the_ipv4_key_over_a_dual_stack_one() {
        let dual = listener(Family::V6, [0; 16], false, 1);
        let v4 = listener(Family::V4, [0; 16], false, 2);
        assert_eq!(
            keys(&[dual, v4]),
            [(LISTENER_V4, [0; 16], 2), (LISTENER_V6, [0; 16], 1)]
        );
        assert_eq!(
            keys(&[dual]),
            [(LISTENER_V4, [0; 16], 1), (LISTENER_V6, [0; 16], 1)]
        );
    }

    #[test]
    fn an_ipv6_only_socket_takes_no_ipv4_and_bound_addresses_keep_their_own_key() {
        let v6only = listener(Family::V6, [0; 16], true, 1);
        let mut lo4 = [0u8; 16];
        lo4[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        let bound = listener(Family::V4, lo4, false, 2);
        assert_eq!(
            keys(&[v6only, bound]),
            [(LISTENER_V4, lo4, 2), (LISTENER_V6, [0; 16], 1)]
        );
    }
}
