//! Dropping privileges before parsing client bytes: the sniffing proxy binds its
//! listeners as root, then becomes an unprivileged user with no capabilities and
//! `no_new_privs` set (docs/SNIFF.md, "Privileges").
//!
//! Capabilities and `no_new_privs` are per thread on Linux: [`drop_privileges`] must run
//! while the process has a single thread (before any async runtime starts), so every
//! thread created afterwards inherits the reduced credentials.

use std::io;

use nix::unistd::{Gid, Group, Uid, User};

/// Default `--user` of the sniffing proxy (its group defaults to this user's primary group,
/// `nogroup` on Debian).
pub const DEFAULT_USER: &str = "nobody";

/// Dropping privileges failed (or was refused before anything was bound).
#[derive(Debug, thiserror::Error)]
pub enum PrivDropError {
    /// `--user` names no user in the user database.
    #[error("user {0:?} does not exist (create it, e.g. `useradd --system --no-create-home --shell /usr/sbin/nologin {0}`, or pass --user)")]
    NoSuchUser(String),
    /// `--group` names no group in the group database.
    #[error(
        "group {0:?} does not exist (create it, e.g. `groupadd --system {0}`, or pass --group)"
    )]
    NoSuchGroup(String),
    /// The user or group is root: dropping to it would drop nothing.
    #[error(
        "refusing to run the proxy as {0} (uid or gid 0); pick an unprivileged --user/--group"
    )]
    Root(String),
    /// Reading the user or group database failed.
    #[error("looking up {name:?}: {source}")]
    Lookup {
        /// The user or group name.
        name: String,
        /// Why.
        source: nix::Error,
    },
    /// A system call of the drop failed.
    #[error("{step}: {source}")]
    Syscall {
        /// What was being done.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// After the drop, the process still holds something it should not.
    #[error("privileges still held after dropping them: {0}")]
    StillPrivileged(String),
}

/// The unprivileged user and group the proxy runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User name, as given.
    pub user: String,
    /// Its uid.
    pub uid: Uid,
    /// The group's gid (the user's primary group unless `--group` was given).
    pub gid: Gid,
}

impl Identity {
    /// Looks `user` (and `group`, else the user's primary group) up; refuses names that
    /// do not exist and uid/gid 0.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Self, PrivDropError> {
        let entry = User::from_name(user)
            .map_err(|source| PrivDropError::Lookup {
                name: user.to_string(),
                source,
            })?
            .ok_or_else(|| PrivDropError::NoSuchUser(user.to_string()))?;
        let gid = match group {
            Some(name) => {
                Group::from_name(name)
                    .map_err(|source| PrivDropError::Lookup {
                        name: name.to_string(),
                        source,
                    })?
                    .ok_or_else(|| PrivDropError::NoSuchGroup(name.to_string()))?
                    .gid
            }
            None => entry.gid,
        };
        if entry.uid.is_root() || gid.as_raw() == 0 {
            return Err(PrivDropError::Root(format!(
                "user {user}, group {}",
                group.unwrap_or("(primary)")
            )));
        }
        Ok(Identity {
            user: user.to_string(),
            uid: entry.uid,
            gid,
        })
    }
}

/// What [`drop_privileges`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Started as root: now the unprivileged user, no capabilities, `no_new_privs`.
    ToUser,
    /// Not started as root: the user is kept (changing it needs root); capabilities are
    /// cleared and `no_new_privs` set all the same.
    CapabilitiesOnly,
}

/// Becomes `identity` (if running as root), clears every capability set (effective,
/// permitted, inheritable, ambient and, when allowed, the bounding set) and sets
/// `no_new_privs`; then checks the result. Call while the process has one thread.
pub fn drop_privileges(identity: &Identity) -> Result<Dropped, PrivDropError> {
    let as_root = Uid::effective().is_root();
    // The bounding set first: dropping from it needs CAP_SETPCAP, gone after setuid.
    clear_bounding_set(as_root)?;
    clear_ambient()?;
    let dropped = if as_root {
        let gid = identity.gid;
        nix::unistd::setgroups(&[gid]).map_err(syscall("setgroups"))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(syscall("setresgid"))?;
        // Without PR_SET_KEEPCAPS (off by default) leaving uid 0 clears the permitted,
        // effective and ambient sets; the inheritable set is cleared below.
        let uid = identity.uid;
        nix::unistd::setresuid(uid, uid, uid).map_err(syscall("setresuid"))?;
        Dropped::ToUser
    } else {
        Dropped::CapabilitiesOnly
    };
    clear_capability_sets()?;
    nix::sys::prctl::set_no_new_privs().map_err(syscall("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    verify(identity, dropped)?;
    Ok(dropped)
}

/// Maps a nix error to [`PrivDropError::Syscall`].
fn syscall(step: &'static str) -> impl Fn(nix::Error) -> PrivDropError {
    move |errno| PrivDropError::Syscall {
        step,
        source: io::Error::from(errno),
    }
}

/// Drops every capability from the bounding set (all of them as root; without
/// CAP_SETPCAP, non-root processes cannot and keep it, harmlessly: with empty permitted
/// sets and `no_new_privs` nothing can be regained).
fn clear_bounding_set(as_root: bool) -> Result<(), PrivDropError> {
    for cap in 0..=last_cap() {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EPERM) && !as_root {
                return Ok(());
            }
            return Err(PrivDropError::Syscall {
                step: "prctl(PR_CAPBSET_DROP)",
                source: err,
            });
        }
    }
    Ok(())
}

/// Highest capability number of the running kernel.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Clears the ambient set (always allowed).
fn clear_ambient() -> Result<(), PrivDropError> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers; the unused arguments must be 0.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(PrivDropError::Syscall {
            step: "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `struct __user_cap_header_struct` of `<linux/capability.h>`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct` of `<linux/capability.h>`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two [`CapData`].
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Empties the effective, permitted and inheritable sets of this thread.
fn clear_capability_sets() -> Result<(), PrivDropError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and, for version 3, two data structs, both valid
    // for the duration of the call and laid out as the kernel's (repr(C), u32 fields).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(PrivDropError::Syscall {
            step: "capset",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// This thread's capability sets, as two [`CapData`].
fn capability_sets() -> Result<[CapData; 2], PrivDropError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data structs (version 3) into `data`, which has room for
    // exactly two and outlives the call; the header is valid and writable.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(PrivDropError::Syscall {
            step: "capget",
            source: io::Error::last_os_error(),
        });
    }
    Ok(data)
}

/// Checks that the drop took: no capability in any set, the right ids, `no_new_privs`.
fn verify(identity: &Identity, dropped: Dropped) -> Result<(), PrivDropError> {
    let sets = capability_sets()?;
    if sets
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        return Err(PrivDropError::StillPrivileged("capabilities".into()));
    }
    if dropped == Dropped::ToUser {
        let ids = nix::unistd::getresuid().map_err(syscall("getresuid"))?;
        let gids = nix::unistd::getresgid().map_err(syscall("getresgid"))?;
        if [ids.real, ids.effective, ids.saved] != [identity.uid; 3]
            || [gids.real, gids.effective, gids.saved] != [identity.gid; 3]
        {
            return Err(PrivDropError::StillPrivileged("uid or gid".into()));
        }
        // Going back to root must fail now.
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(PrivDropError::StillPrivileged("setuid(0) succeeded".into()));
        }
    }
    if !nix::sys::prctl::get_no_new_privs().map_err(syscall("prctl(PR_GET_NO_NEW_PRIVS)"))? {
        return Err(PrivDropError::StillPrivileged("no_new_privs unset".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_user_is_refused() {
        let err = Identity::resolve("no-such-user-redirector", None).unwrap_err();
        assert!(matches!(err, PrivDropError::NoSuchUser(_)), "{err}");
    }

    #[test]
    fn root_is_refused() {
        let err = Identity::resolve("root", None).unwrap_err();
        assert!(matches!(err, PrivDropError::Root(_)), "{err}");
    }
}
