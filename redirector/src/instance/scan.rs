//! Finding the instances of this network namespace: their instance files in
//! [`paths::RUN_DIR`], whether their loader still holds its lock, whether their pins exist.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    info::{read_info, InstanceInfo},
    io_err, lock, paths, StateError,
};

/// The persisted instance of this network namespace that has `iface`, if any. For the
/// loader, after it took the lock of `iface`: an instance file of another pid on it can
/// then only be a leftover, persisted if its pins are still there.
pub fn persisted_on(iface: &str) -> Result<Option<InstanceInfo>, StateError> {
    let netns = paths::netns_inode();
    let (live, hidden) = scan_instances(netns)?;
    Ok(live
        .into_iter()
        .map(|(_, info, _)| info)
        // Its pins must be there, unless this process cannot see the host's bpffs at all.
        .filter(|info| {
            info.pid != std::process::id()
                && (info.pin_dir_from_here(false).exists()
                    || !paths::is_bpffs(Path::new(paths::BPFFS)))
        })
        .chain(hidden)
        .find(|info| info.persist && info.interfaces.iter().any(|i| i.name == iface)))
}

/// The one instance among `live` (on `iface`, if given).
pub(super) fn select(mut live: Vec<Found>, iface: Option<&str>) -> Result<Found, StateError> {
    if let Some(iface) = iface {
        live.retain(|(_, info, _)| info.interfaces.iter().any(|i| i.name == iface));
        if live.is_empty() {
            return Err(StateError::NotOnIface(iface.to_string()));
        }
    }
    match live.len() {
        0 => Err(StateError::NotRunning),
        1 => Ok(live.remove(0)),
        _ => Err(StateError::Ambiguous(
            live.iter()
                .map(|(_, i, _)| format!("{} (pid {})", i.key_iface(), i.pid))
                .collect(),
        )),
    }
}

/// Instance files of `netns` whose loader still holds its lock (`true`), or persisted
/// ones whose pins are still there (`false`). If there are none, a persisted instance whose
/// pins this process cannot see (no bpffs at /sys/fs/bpf) is an error naming the way to
/// reach it.
pub(super) fn live_instances(netns: u64) -> Result<Vec<Found>, StateError> {
    let (live, mut hidden) = scan_instances(netns)?;
    match hidden.pop() {
        Some(info) if live.is_empty() => {
            Err(StateError::PersistedElsewhere(info.key_iface().to_string()))
        }
        _ => Ok(live),
    }
}

/// An instance file found: its path, contents, and whether its loader runs.
pub(super) type Found = (PathBuf, InstanceInfo, bool);

/// Live instances (as in [`live_instances`]) and persisted ones this process cannot see.
fn scan_instances(netns: u64) -> Result<(Vec<Found>, Vec<InstanceInfo>), StateError> {
    let entries = match fs::read_dir(paths::RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(io_err(Path::new(paths::RUN_DIR))(e)),
    };
    let prefix = paths::run_prefix(netns);
    let mut live = Vec::new();
    let mut hidden = Vec::new();
    let mut incompatible = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.ends_with(".json")) {
            continue;
        }
        let path = entry.path();
        // A file that vanished or is half-written belongs to a stopping/starting loader.
        let info = match read_info(&path) {
            Ok(info) => info,
            // Another version's file matters only while its loader runs: files of loaders
            // that died (SIGKILL leaves them) are stale, and namespace inodes are reused.
            // Its writer must still hold the interface's lock and be another process (a
            // starting loader of this version holds the lock itself).
            Err(e @ StateError::Incompatible { pid, .. }) => {
                let iface = name
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".json"))
                    .unwrap_or_default();
                let writer_alive = pid != 0
                    && pid != std::process::id()
                    && Path::new(&format!("/proc/{pid}")).exists();
                if writer_alive && lock::is_held(&paths::lock_file(netns, iface)) {
                    incompatible = Some(e);
                }
                continue;
            }
            Err(_) => continue,
        };
        if info.netns_inode != netns {
            continue;
        }
        let running = lock::is_held(&paths::lock_file(netns, info.key_iface()));
        if running || (info.persist && info.pin_dir_from_here(false).exists()) {
            live.push((path, info, running));
        } else if info.persist && !paths::is_bpffs(Path::new(paths::BPFFS)) {
            hidden.push(info);
        }
    }
    live.sort_by(|a, b| a.1.key_iface().cmp(b.1.key_iface()));
    // Another version's instance is reported when nothing of ours is there, rather than
    // "not running".
    match incompatible {
        Some(e) if live.is_empty() && hidden.is_empty() => Err(e),
        _ => Ok((live, hidden)),
    }
}
