//! Finding the instances of this network namespace: their instance files in
//! [`paths::RUN_DIR`], whether their loader still holds its lock, whether their pins exist.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    info::{read_info, InstanceInfo, INSTANCE_FORMAT},
    io_err, lock,
    migrate::MIGRATES_FROM,
    paths, StateError,
};

/// The persisted instance of this network namespace that has `iface`, if any. For the
/// loader, after it took the lock of `iface`: an instance file of another pid on it can
/// then only be a leftover, persisted if its pins are still there.
///
/// A persisted instance of the previous state format ([`MIGRATES_FROM`]) is returned as
/// found (its `format` says so: `run` migrates it); one of any other format whose pins
/// are still there is [`StateError::IncompatiblePersisted`]: its maps must not be reused,
/// nor its pins replaced.
pub fn persisted_on(iface: &str) -> Result<Option<InstanceInfo>, StateError> {
    let netns = paths::netns_inode();
    match other_format_persisted_on(netns, iface)? {
        Some(OtherPersisted::Migratable(info)) => return Ok(Some(info)),
        Some(OtherPersisted::Refused(e)) => return Err(e),
        None => {}
    }
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
        .find(|info| info.left_attached() && info.interfaces.iter().any(|i| i.name == iface)))
}

/// The instance of this network namespace (on `iface`, if given) as its instance file
/// describes it, and whether its loader runs; `None` when there is none (or none this
/// process can see). For `doctor`, which reads no maps and must work without an instance.
pub fn find_info(iface: Option<&str>) -> Result<Option<(InstanceInfo, bool)>, StateError> {
    let live = match live_instances(paths::netns_inode()) {
        Ok(live) => live,
        Err(StateError::PersistedElsewhere(_) | StateError::Incompatible { .. }) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    match select(live, iface) {
        Ok((_, info, running)) => Ok(Some((info, running))),
        Err(StateError::NotRunning | StateError::NotOnIface(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A persisted instance of another format than ours.
enum OtherPersisted {
    /// Of [`MIGRATES_FROM`]: its instance file.
    Migratable(InstanceInfo),
    /// Of a format `run` cannot take over: the error that refuses it.
    Refused(StateError),
}

/// The persisted instance of another format on `iface` whose pins this process sees, if
/// any.
fn other_format_persisted_on(
    netns: u64,
    iface: &str,
) -> Result<Option<OtherPersisted>, StateError> {
    let entries = match fs::read_dir(paths::RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(Path::new(paths::RUN_DIR))(e)),
    };
    let prefix = paths::run_prefix(netns);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.ends_with(".json")) {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if let Some(other) = OtherFormat::of(&value, iface) {
            let pin_dir = paths::pin_dir(netns, &other.key_iface);
            if !pin_dir.exists() {
                continue;
            }
            if other.found == u64::from(MIGRATES_FROM) {
                let info = serde_json::from_value(value).map_err(|source| StateError::Json {
                    path: entry.path(),
                    source,
                })?;
                return Ok(Some(OtherPersisted::Migratable(info)));
            }
            return Ok(Some(OtherPersisted::Refused(
                StateError::IncompatiblePersisted {
                    iface: iface.to_string(),
                    pin_dir,
                    found: other.found,
                    version: other.version,
                },
            )));
        }
    }
    Ok(None)
}

/// What an instance file of another format says about a persisted instance.
#[derive(Debug, PartialEq, Eq)]
struct OtherFormat {
    found: u64,
    version: String,
    key_iface: String,
}

impl OtherFormat {
    /// `value` (an instance file) if it is of another format than ours and describes a
    /// persisted instance on `iface`. Read loosely: older formats share these fields.
    fn of(value: &serde_json::Value, iface: &str) -> Option<OtherFormat> {
        let found = value.get("format").and_then(serde_json::Value::as_u64);
        if found == Some(u64::from(INSTANCE_FORMAT)) || value.get("persist")? != true {
            return None;
        }
        let names: Vec<&str> = value
            .get("interfaces")?
            .as_array()?
            .iter()
            .filter_map(|i| i.get("name")?.as_str())
            .collect();
        if !names.contains(&iface) {
            return None;
        }
        Some(OtherFormat {
            found: found.unwrap_or(0),
            version: value
                .get("version")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            key_iface: names[0].to_string(),
        })
    }
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
        if running || (info.left_attached() && info.pin_dir_from_here(false).exists()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(format: u32, persist: bool) -> serde_json::Value {
        serde_json::json!({
            "format": format,
            "version": "0.1.0",
            "pid": 7,
            "persist": persist,
            "interfaces": [
                {"name": "eth0", "ingress_hook": "xdp"},
                {"name": "eth1", "ingress_hook": "tc"},
            ],
        })
    }

    #[test]
    fn a_persisted_instance_of_another_format_is_not_adoptable() {
        let other = OtherFormat::of(&file(2, true), "eth1").expect("format 2 is another");
        assert_eq!(
            other,
            OtherFormat {
                found: 2,
                version: "0.1.0".into(),
                key_iface: "eth0".into(),
            }
        );
        let err = StateError::IncompatiblePersisted {
            iface: "eth1".into(),
            pin_dir: paths::pin_dir(1, "eth0"),
            found: other.found,
            version: other.version,
        };
        let text = err.to_string();
        assert!(text.contains("state format 2"), "{text}");
        assert!(
            text.contains(&format!("uses format {INSTANCE_FORMAT}")),
            "{text}"
        );
        assert!(text.contains("redirector detach --iface eth1"), "{text}");
        assert!(text.contains("drops its flows"), "{text}");
    }

    #[test]
    fn ours_unpersisted_or_elsewhere_is_not_another_format() {
        assert_eq!(OtherFormat::of(&file(INSTANCE_FORMAT, true), "eth0"), None);
        assert_eq!(OtherFormat::of(&file(2, false), "eth0"), None);
        assert_eq!(OtherFormat::of(&file(2, true), "eth9"), None);
        let mut no_format = file(2, true);
        no_format.as_object_mut().unwrap().remove("format");
        assert_eq!(OtherFormat::of(&no_format, "eth0").unwrap().found, 0);
    }
}
