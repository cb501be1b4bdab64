//! Pinned state of network namespaces that no longer exist: a namespace deleted while a
//! persisted instance (or a killed loader's pins) was in it leaves its maps and severed
//! links in bpffs, and a later namespace may get the same inode. Found by `doctor`,
//! removed by `redirector detach --stale`, never adopted by `run` (the instance file's
//! namespace cookie, never reused, tells a namespace from a later one with its inode).

use std::{
    collections::HashMap,
    fs,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use super::{info::read_info, io_err, lock, paths, StateError};
use crate::dataplane::local;

/// The pin directory of an instance whose network namespace is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StalePins {
    /// Its pin directory.
    pub dir: PathBuf,
    /// The inode of the namespace it belonged to.
    pub netns_inode: u64,
    /// Its key interface (as in its instance file, else decoded from the directory).
    pub key_iface: String,
    /// Why it is stale.
    pub why: String,
}

/// Network namespaces alive on the host: inode → a path that opens it (a process's
/// `ns/net`, a bind mount, a descriptor some process holds).
fn live_namespaces() -> HashMap<u64, PathBuf> {
    let mut live = HashMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = fs::metadata(&path) {
            live.entry(meta.ino()).or_insert(path);
        }
    };
    if let Ok(procs) = fs::read_dir("/proc") {
        for proc in procs.flatten() {
            let pid = proc.path();
            if !proc
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            add(pid.join("ns/net"));
            if let Ok(fds) = fs::read_dir(pid.join("fd")) {
                for fd in fds.flatten() {
                    let is_netns = fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("net:["));
                    if is_netns {
                        add(fd.path());
                    }
                }
            }
        }
    }
    // Bind mounts (`ip netns add`, container runtimes): `… net:[INODE] /run/netns/NS …`.
    if let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.get(3).is_some_and(|root| root.starts_with("net:[")) {
                if let Some(point) = fields.get(4) {
                    add(PathBuf::from(point.replace("\\040", " ")));
                }
            }
        }
    }
    live
}

/// The cookie of the namespace at `path` (entered by a thread of its own), if it can be
/// read.
fn cookie_of(path: &Path) -> Option<u64> {
    let file = fs::File::open(path).ok()?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace descriptor; it changes only this thread,
        // which ends right after.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        local::netns_cookie().ok()
    })
    .join()
    .ok()?
}

/// Every pin directory under [`paths::PIN_ROOT`] whose namespace is gone: no live
/// namespace has its inode, or the one that has it has another cookie than its instance
/// file recorded. An instance whose loader holds its lock is never stale.
pub fn find() -> Result<Vec<StalePins>, StateError> {
    let root = Path::new(paths::PIN_ROOT);
    let netns_dirs = match fs::read_dir(root) {
        Ok(dirs) => dirs,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(root)(e)),
    };
    let live = live_namespaces();
    let mut stale = Vec::new();
    for netns_dir in netns_dirs.flatten() {
        let name = netns_dir.file_name().to_string_lossy().into_owned();
        let Some(inode) = name
            .strip_prefix("netns-")
            .and_then(|ino| ino.parse::<u64>().ok())
        else {
            continue;
        };
        let Ok(instances) = fs::read_dir(netns_dir.path()) else {
            continue;
        };
        for dir in instances.flatten() {
            let dir = dir.path();
            let info = read_info(&dir.join(paths::INSTANCE_LINK)).ok();
            let key_iface = info.as_ref().map_or_else(
                || decode(&dir.file_name().unwrap_or_default().to_string_lossy()),
                |i| i.key_iface().to_string(),
            );
            if lock::is_held(&paths::lock_file(inode, &key_iface)) {
                continue;
            }
            let recorded = info.as_ref().and_then(|i| i.netns_cookie);
            let why = match (live.get(&inode), recorded) {
                (None, _) => format!("network namespace {inode} no longer exists"),
                (Some(path), Some(recorded)) => match cookie_of(path) {
                    Some(now) if now != recorded => format!(
                        "network namespace {inode} was deleted; a later one reuses its inode \
                         (cookie {now}, the instance's was {recorded})"
                    ),
                    _ => continue,
                },
                (Some(_), None) => continue,
            };
            stale.push(StalePins {
                dir,
                netns_inode: inode,
                key_iface,
                why,
            });
        }
    }
    stale.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(stale)
}

/// `iface` as written in a bpffs name, decoded ([`paths::pin_dir`] encodes `.` and `%`).
fn decode(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

/// Removes `stale`: its pins (maps, severed links), its instance, lock and counters files,
/// and its namespace directory once empty.
pub fn remove(stale: &StalePins) -> Result<(), StateError> {
    fs::remove_dir_all(&stale.dir).map_err(io_err(&stale.dir))?;
    let (inode, key) = (stale.netns_inode, stale.key_iface.as_str());
    for file in [
        paths::instance_file(inode, key),
        paths::lock_file(inode, key),
        paths::control_lock_file(inode, key),
        paths::sniff_stats_file(inode, key),
    ] {
        let _ = fs::remove_file(file);
    }
    if let Some(parent) = stale.dir.parent() {
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// Refuses to adopt the pins of a namespace that is gone: an instance file of this
/// namespace's inode with another namespace's cookie belongs to a deleted namespace whose
/// inode this one reuses.
pub fn check_same_namespace(recorded: Option<u64>, key_iface: &str) -> Result<(), StateError> {
    let (Some(recorded), Ok(now)) = (recorded, local::netns_cookie()) else {
        return Ok(());
    };
    if recorded == now {
        return Ok(());
    }
    Err(StateError::DeadNamespace {
        iface: key_iface.to_string(),
        recorded,
        now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpffs_names_decode() {
        assert_eq!(decode("eth0%2e100"), "eth0.100");
        assert_eq!(decode("a%25b"), "a%b");
    }

    #[test]
    fn this_namespace_is_alive() {
        let live = live_namespaces();
        let me = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert!(live.contains_key(&me));
    }
}
