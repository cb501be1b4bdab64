//! Where a running instance keeps its state: every path is built here.
//!
//! ```text
//! /sys/fs/bpf/redirector/netns-<inode>/<iface>/   bpffs, in the loader's mount namespace
//!     RULES HALF_OPEN ESTABLISHED FLOW_COUNT        pinned maps, named after the map
//!     ALLOW CONFIG STATS RULE_STATS
//!     instance -> /run/redirector/netns-<inode>-<iface>.json   symlink to the instance file
//! /sys/fs/bpf/redirector/tmp/<inode>-<iface>-<pid>/  being created; renamed into place
//! /run/redirector/
//!     netns-<inode>-<iface>.lock                    flock held by the loader (one per iface)
//!     netns-<inode>-<iface>.json                    the instance file (InstanceInfo)
//!     netns-<inode>-<iface>.control.lock            serialises rule and allow-list edits
//!     netns-<inode>-<iface>.sniff                   sniff counters of `run --sniff-listen`
//! ```
//!
//! `<iface>` is the first `--iface` of the loader: one instance, one directory, whatever
//! the number of interfaces (the instance file lists them all). bpffs refuses names with
//! a dot, so in bpffs paths `.` in an interface name is written `%2e` (and `%` `%25`).
//!
//! `ip netns exec` gives every command a private mount namespace with a fresh /sys, so
//! a bpffs mounted or pinned into by one `ip netns exec` is invisible to the next. /run
//! is shared, so the instance file is found there, and the pins are reached through the
//! loader's own root: `/proc/<pid>/root/sys/fs/bpf/redirector/...`.
//!
//! A persisted instance (`run --persist`) must outlive its loader, so its pins must be on
//! a bpffs that outlives the loader's mount namespace: `run --persist` refuses to mount one
//! of its own (in a namespace, start it with `nsenter --net=/run/netns/NS`, which keeps the
//! host's mount namespace and its /sys/fs/bpf). It adds its links to the same directory:
//!
//! ```text
//! /sys/fs/bpf/redirector/netns-<inode>/<iface>/
//!     (the maps) instance                                    as above
//!     links/<iface>-ingress  links/<iface>-egress            pinned BPF links
//! ```
//!
//! Once its loader has exited, commands find those pins in their own /sys/fs/bpf, so they
//! too must run with `nsenter --net=` rather than `ip netns exec`.

use std::{
    ffi::CString,
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Mount point of the BPF filesystem.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Root of redirector's pins on bpffs.
pub const PIN_ROOT: &str = "/sys/fs/bpf/redirector";
/// Directory of lock and instance files (not remounted by `ip netns exec`, unlike /sys).
pub const RUN_DIR: &str = "/run/redirector";
/// Name of the symlink to the instance file inside a pin directory (no dot: bpffs
/// reserves dotted names).
pub const INSTANCE_LINK: &str = "instance";
/// Where pin directories are assembled before being renamed into place.
pub const PIN_TMP: &str = "/sys/fs/bpf/redirector/tmp";

/// Sub-directory of a persisted instance's pin directory that holds its pinned links.
pub const LINKS_DIR: &str = "links";

/// `statfs.f_type` of bpffs.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Inode of this process's network namespace: what keeps namespaces apart.
pub fn netns_inode() -> u64 {
    fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0)
}

fn base(netns: u64, iface: &str) -> String {
    format!("netns-{netns}-{iface}")
}

/// `iface` as a bpffs file name: bpffs rejects `.` in names.
fn bpffs_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

/// Pin directory of the instance keyed by `iface`, as seen by the loader.
pub fn pin_dir(netns: u64, iface: &str) -> PathBuf {
    Path::new(PIN_ROOT)
        .join(format!("netns-{netns}"))
        .join(bpffs_name(iface))
}

/// Temporary directory in which `pid` assembles the pins of `iface`.
pub fn pin_tmp_dir(netns: u64, iface: &str, pid: u32) -> PathBuf {
    Path::new(PIN_TMP).join(format!("{netns}-{}-{pid}", bpffs_name(iface)))
}

/// The same directory as seen from any process: through the loader's root.
pub fn pin_dir_of(pid: u32, netns: u64, iface: &str) -> PathBuf {
    let inside = pin_dir(netns, iface);
    Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(inside.strip_prefix("/").unwrap_or(&inside))
}

/// File name (in [`LINKS_DIR`]) of the pinned link of `iface` in `direction`.
pub fn link_pin_name(iface: &str, direction: &str) -> String {
    format!("{}-{direction}", bpffs_name(iface))
}

/// The loader's lock for `iface`.
pub fn lock_file(netns: u64, iface: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.lock", base(netns, iface)))
}

/// The instance file of the instance keyed by `iface`.
pub fn instance_file(netns: u64, iface: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.json", base(netns, iface)))
}

/// The lock serialising rule changes of the instance keyed by `iface`.
pub fn control_lock_file(netns: u64, iface: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.control.lock", base(netns, iface)))
}

/// The sniffing proxy's counters of the instance keyed by `iface`, published for `stats`
/// (not `.json`: instance files are found by that suffix).
pub fn sniff_stats_file(netns: u64, iface: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.sniff", base(netns, iface)))
}

/// Prefix of every file of this network namespace in [`RUN_DIR`].
pub fn run_prefix(netns: u64) -> String {
    format!("netns-{netns}-")
}

/// True if `path` is on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `st` is writable for the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as u64 == BPF_FS_MAGIC
}

/// Mounts bpffs at [`BPFFS`] unless it already is one (in this mount namespace).
pub fn ensure_bpffs() -> io::Result<()> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS)?;
    let target = CString::new(BPFFS).expect("no NUL in constant");
    let fstype = CString::new("bpf").expect("no NUL in constant");
    // SAFETY: all pointers are NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            pin_dir(42, "eth0"),
            PathBuf::from("/sys/fs/bpf/redirector/netns-42/eth0")
        );
        assert_eq!(
            pin_dir_of(7, 42, "eth0"),
            PathBuf::from("/proc/7/root/sys/fs/bpf/redirector/netns-42/eth0")
        );
        assert_eq!(
            pin_dir(42, "eth0.100"),
            PathBuf::from("/sys/fs/bpf/redirector/netns-42/eth0%2e100")
        );
        assert_eq!(link_pin_name("eth0.1", "ingress"), "eth0%2e1-ingress");
        assert_eq!(
            instance_file(42, "eth0"),
            PathBuf::from("/run/redirector/netns-42-eth0.json")
        );
        assert!(lock_file(42, "eth0")
            .to_str()
            .unwrap()
            .starts_with(&format!("{RUN_DIR}/{}", run_prefix(42))));
    }
}
