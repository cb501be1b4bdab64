//! Local clients: the cgroup sock_addr programs that redirect connects from the loader's
//! own network namespace to its own addresses (traffic that never crosses an interface's
//! XDP/TC hook) — checking the cgroup, attaching, taking the links for `--persist`,
//! swapping the program on adopted links, and the namespace facts the programs compare
//! against (its cookie, its addresses).

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    net::IpAddr,
    os::{
        fd::{AsFd, AsRawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::programs::{
    cgroup_sock_addr::CgroupSockAddrLinkId,
    links::{CgroupAttachMode, FdLink, LinkError, LinkType, PinnedLink},
    CgroupSockAddr, ProgramError,
};
use redirector_common::maps::{PROG_CONNECT4, PROG_CONNECT6, PROG_GETPEERNAME4, PROG_GETPEERNAME6};

use super::{bpf_link, Dataplane, DataplaneError};

/// The four programs, with the name of their pinned link (in `links/`, next to the
/// interfaces' `<iface>-ingress`/`-egress`, which these names cannot collide with).
pub const PROGRAMS: [(&str, &str); 4] = [
    (PROG_CONNECT4, "local-connect4"),
    (PROG_CONNECT6, "local-connect6"),
    (PROG_GETPEERNAME4, "local-getpeername4"),
    (PROG_GETPEERNAME6, "local-getpeername6"),
];

/// Local redirection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The `--local-cgroup` path is missing or not a directory of a cgroup v2 filesystem.
    #[error("--local-cgroup {}: {reason} (give a cgroup v2 directory such as /sys/fs/cgroup, or --no-local)", path.display())]
    NotCgroup2 {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Opening the cgroup directory failed.
    #[error("opening cgroup {}", path.display())]
    Open {
        /// The cgroup.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Attaching a program to the cgroup failed.
    #[error("attaching {program} to cgroup {}: {source}", path.display())]
    Attach {
        /// Program name.
        program: &'static str,
        /// The cgroup.
        path: PathBuf,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// A link could not be taken over for pinning (`--persist`).
    #[error("taking over the {program} link for --persist: {source}")]
    TakeLink {
        /// Program name.
        program: &'static str,
        /// Cause.
        #[source]
        source: LinkError,
    },
    /// A pinned link of the adopted instance is not a cgroup link.
    #[error("the pinned link {} is not a cgroup link", path.display())]
    NotCgroupLink {
        /// Pin path.
        path: PathBuf,
    },
    /// Opening or reading a pinned link failed.
    #[error("opening the pinned link {}: {source}", path.display())]
    OpenLink {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// `BPF_LINK_UPDATE` on an adopted link failed.
    #[error("replacing the program on the pinned link {}: {source}", path.display())]
    Update {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading the namespace's cookie or addresses failed.
    #[error("{what}: {source}")]
    Namespace {
        /// What was read.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Program lookup failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// The mount point of the cgroup v2 hierarchy in this mount namespace (the first
/// `cgroup2` line of /proc/self/mounts): the cgroup `run` attaches to unless told
/// otherwise, so that every process of the host (in the loader's network namespace) is
/// covered. `None` where none is mounted — e.g. under `ip netns exec`, which mounts a
/// fresh /sys.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        // /proc/mounts escapes spaces and the like as octal; a cgroup mount has none.
        (fstype == "cgroup2" && !target.contains('\\')).then(|| PathBuf::from(target))
    })
}

/// `statfs.f_type` of cgroup v2 (the type of the field differs between libc targets).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Checks that `path` is a directory of a cgroup v2 filesystem.
pub fn check_cgroup(path: &Path) -> Result<(), LocalError> {
    let not = |reason: String| LocalError::NotCgroup2 {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| not(e.to_string()))?;
    if !meta.is_dir() {
        return Err(not("not a directory".into()));
    }
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| not(e.to_string()))?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated path and `stat` room for one `statfs`, which
    // the call fills on success.
    if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return Err(not(io::Error::last_os_error().to_string()));
    }
    // SAFETY: statfs returned 0, so it filled `stat`.
    let f_type = unsafe { stat.assume_init() }.f_type;
    if f_type as u64 != CGROUP2_SUPER_MAGIC {
        return Err(not(format!(
            "not on a cgroup v2 filesystem (f_type {f_type:#x})"
        )));
    }
    Ok(())
}

/// The cookie of this process's network namespace (`SO_NETNS_COOKIE`), what
/// `bpf_get_netns_cookie` returns for sockets of this namespace.
pub fn netns_cookie() -> Result<u64, LocalError> {
    let err = |source| LocalError::Namespace {
        what: "reading the network namespace cookie (SO_NETNS_COOKIE, Linux >= 5.14)",
        source,
    };
    // Unbound: a namespace whose loopback is down has no address to bind to.
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and `cookie`/`len` describe a writable u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(cookie)
}

/// Every address of this namespace's interfaces (`getifaddrs`), as the 16-byte keys of
/// `LOCAL_ADDRS` (IPv4 as mapped IPv6).
pub fn namespace_addrs() -> Result<HashSet<[u8; 16]>, LocalError> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Err(LocalError::Namespace {
            what: "listing the namespace's addresses (getifaddrs)",
            source: io::Error::last_os_error(),
        });
    }
    let mut addrs = HashSet::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freed.
        let entry = unsafe { &*cur };
        if let Some(ip) = sockaddr_ip(entry.ifa_addr) {
            addrs.insert(key(ip));
        }
        cur = entry.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once; no reference into it survives.
    unsafe { libc::freeifaddrs(list) };
    Ok(addrs)
}

/// The IP address in `sa`, if it is an IPv4 or IPv6 socket address.
fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: a non-null sockaddr from getifaddrs; its family says which type it is.
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            // SAFETY: AF_INET: the storage is a sockaddr_in.
            let sin = unsafe { &*sa.cast::<libc::sockaddr_in>() };
            Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: AF_INET6: the storage is a sockaddr_in6.
            let sin6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

/// `ip` as a `LOCAL_ADDRS` key: IPv4 as mapped IPv6, network order.
pub fn key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The programs attached to one cgroup by [`attach`], owned by the `Dataplane` until
/// [`LocalAttached::take_links`].
#[derive(Debug)]
pub struct LocalAttached {
    links: Vec<(&'static str, &'static str, CgroupSockAddrLinkId)>,
}

/// Attaches the four programs to the cgroup at `path` (BPF links, which coexist with
/// other programs on the cgroup, e.g. systemd's).
pub fn attach(dp: &mut Dataplane, path: &Path) -> Result<LocalAttached, LocalError> {
    let cgroup = std::fs::File::open(path).map_err(|source| LocalError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut links = Vec::new();
    for (program, pin_name) in PROGRAMS {
        let id = dp
            .cgroup_program(program)?
            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(|source| LocalError::Attach {
                program,
                path: path.to_path_buf(),
                source,
            })?;
        links.push((program, pin_name, id));
    }
    Ok(LocalAttached { links })
}

impl LocalAttached {
    /// Takes the links out of the programs' ownership, so that dropping the `Dataplane`
    /// no longer detaches them (`--persist` pins them): (pin name, link) pairs.
    pub fn take_links(self, dp: &mut Dataplane) -> Result<Vec<(String, FdLink)>, LocalError> {
        let mut taken = Vec::new();
        for (program, pin_name, id) in self.links {
            let link = dp
                .cgroup_program(program)?
                .take_link(id)
                .map_err(|source| LocalError::Attach {
                    program,
                    path: PathBuf::new(),
                    source,
                })?;
            let link = FdLink::try_from(link)
                .map_err(|source| LocalError::TakeLink { program, source })?;
            taken.push((pin_name.to_string(), link));
        }
        Ok(taken)
    }
}

/// True if `links_dir` holds the pinned links of all four programs.
pub fn pinned_in(links_dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .all(|(_, pin_name)| links_dir.join(pin_name).exists())
}

/// Adopts the four links pinned in `links_dir`: replaces (`BPF_LINK_UPDATE`) each one's
/// program by the matching program of `dp`, so the cgroup is never without one. The
/// links stay pinned (on the cgroup they were attached to).
pub fn adopt(dp: &mut Dataplane, links_dir: &Path) -> Result<(), LocalError> {
    for (program, pin_name) in PROGRAMS {
        let path = links_dir.join(pin_name);
        let open_err = |e: LinkError| LocalError::OpenLink {
            path: path.clone(),
            source: io::Error::other(e),
        };
        let link = FdLink::from(PinnedLink::from_pin(&path).map_err(open_err)?);
        if link.info().map_err(open_err)?.link_type().ok() != Some(LinkType::Cgroup) {
            return Err(LocalError::NotCgroupLink { path });
        }
        let link_fd = bpf_link::obj_get(&path).map_err(|source| LocalError::OpenLink {
            path: path.clone(),
            source,
        })?;
        let prog = dp.cgroup_program(program)?;
        let prog_fd = prog.fd().map_err(|source| LocalError::Attach {
            program,
            path: path.clone(),
            source,
        })?;
        bpf_link::update(link_fd.as_fd(), prog_fd.as_fd())
            .map_err(|source| LocalError::Update { path, source })?;
    }
    Ok(())
}

impl Dataplane {
    /// One of the four cgroup programs ([`PROGRAMS`]).
    pub fn cgroup_program(
        &mut self,
        name: &'static str,
    ) -> Result<&mut CgroupSockAddr, DataplaneError> {
        self.program(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_ipv4_into_ipv6() {
        assert_eq!(
            key("127.0.0.1".parse().unwrap()),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
        assert_eq!(key("::1".parse().unwrap())[15], 1);
    }

    #[test]
    fn namespace_addrs_include_loopback() {
        let addrs = namespace_addrs().unwrap();
        assert!(
            addrs.contains(&key("127.0.0.1".parse().unwrap())),
            "{addrs:?}"
        );
    }

    #[test]
    fn the_cgroup2_root_is_a_cgroup2_directory() {
        if let Some(root) = cgroup2_root() {
            check_cgroup(&root).unwrap();
        }
    }

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let e = check_cgroup(Path::new("/tmp")).unwrap_err().to_string();
        assert!(e.contains("not on a cgroup v2 filesystem"), "{e}");
        let e = check_cgroup(Path::new("/nonexistent/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--local-cgroup /nonexistent/x"), "{e}");
    }
}
