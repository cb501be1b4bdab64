//! The pinned state of a running instance: created atomically by `redirector run`,
//! found and opened by the control commands (`status`, `enable`, …) of the same
//! network namespace. Paths come from [`crate::pin`].

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{
        maps::{Maps, MapsError},
        Dataplane, DataplaneError,
    },
    instance,
    pin,
};

/// Version of the instance file format, and with it of the pinned maps' layout: bumped
/// whenever a file or a map of an older loader would be misread (2: three counters
/// appended to STATS).
pub const INSTANCE_FORMAT: u32 = 2;

/// The instance file: what the loader was started with, plus the rule slots in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// [`INSTANCE_FORMAT`].
    pub format: u32,
    /// Version of the redirector that wrote it.
    pub version: String,
    /// Loader process id.
    pub pid: u32,
    /// Inode of its network namespace.
    pub netns_inode: u64,
    /// Requested `--mode`.
    pub mode: String,
    /// Interfaces, in `--iface` order; the first one keys the instance.
    pub interfaces: Vec<InterfaceInfo>,
    /// Size of the conntrack table.
    pub conntrack_size: u32,
    /// Current rules (the RULES map holds whether each is enabled).
    pub rules: Vec<RuleInfo>,
    /// Next never-used counter slot.
    pub next_slot: u32,
    /// Conntrack timeouts the loader's reaper applies (absent in files of older loaders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsInfo>,
    /// URL of the `--metrics` endpoint, if served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Started with `--persist`: links pinned next to the maps, on a bpffs that outlives
    /// the loader, and left attached when it exits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persist: bool,
}

/// The reaper's timeouts, in seconds, as recorded in the instance file and shown by
/// `redirector status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutsInfo {
    /// `--timeout-handshake`.
    pub handshake_secs: u64,
    /// `--timeout-established`.
    pub established_secs: u64,
    /// `--timeout-fin-wait`.
    pub fin_wait_secs: u64,
    /// `--timeout-closing`.
    pub closing_secs: u64,
}

impl From<&crate::reaper::Timeouts> for TimeoutsInfo {
    fn from(t: &crate::reaper::Timeouts) -> Self {
        TimeoutsInfo {
            handshake_secs: t.handshake.as_secs(),
            established_secs: t.established.as_secs(),
            fin_wait_secs: t.fin_wait.as_secs(),
            closing_secs: t.closing.as_secs(),
        }
    }
}

/// One interface of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    /// Interface name.
    pub name: String,
    /// Ingress hook in use: `xdp`, `xdp-generic` or `tc`.
    pub ingress_hook: String,
}

/// One rule of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// Port clients connect to.
    pub from_port: u16,
    /// Port the server listens on.
    pub to_port: u16,
    /// Index of its counters.
    pub slot: u32,
}

impl InstanceInfo {
    /// The interface that keys the instance's files.
    pub fn key_iface(&self) -> &str {
        self.interfaces.first().map_or("", |i| i.name.as_str())
    }

    /// The pin directory as this process can reach it: through the loader's root while
    /// it runs, else (a persisted instance) in this process's own /sys/fs/bpf.
    pub fn pin_dir_from_here(&self, loader_running: bool) -> PathBuf {
        if loader_running {
            pin::pin_dir_of(self.pid, self.netns_inode, self.key_iface())
        } else {
            pin::pin_dir(self.netns_inode, self.key_iface())
        }
    }
}

/// Creating, finding or opening the pinned state failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No live instance in this network namespace.
    #[error("no redirector running in this network namespace")]
    NotRunning,
    /// No live instance on that interface.
    #[error("no redirector running on {0} in this network namespace")]
    NotOnIface(String),
    /// Several instances and no `--iface` to choose.
    #[error("several redirectors run in this network namespace (on {}); choose one with --iface", .0.join(", "))]
    Ambiguous(Vec<String>),
    /// The instance is starting or stopping: its pins are not (or no longer) there.
    #[error("redirector (pid {pid}) is starting or stopping: cannot open its maps in {}", dir.display())]
    Unavailable {
        /// Its pid.
        pid: u32,
        /// Pin directory tried.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: MapsError,
    },
    /// An instance file (and pinned maps) of a redirector with another state format.
    #[error("{} was written by redirector {version} (state format {found}); this redirector {ours} reads format {expected}: use the binary of that version to stop or `detach` it (or remove the file if its loader is gone)", path.display(), ours = env!("CARGO_PKG_VERSION"), expected = INSTANCE_FORMAT)]
    Incompatible {
        /// The instance file.
        path: PathBuf,
        /// Its format (0: none).
        found: u64,
        /// The version that wrote it.
        version: String,
        /// The loader that wrote it (0: not recorded).
        pid: u32,
    },
    /// bpffs could not be mounted.
    #[error("mounting bpffs at {path}", path = pin::BPFFS)]
    Mount(#[source] io::Error),
    /// `--persist` needs a bpffs that outlives the loader.
    #[error("--persist needs the host's bpffs at {path}, which later commands see too, but this mount namespace has none (`ip netns exec` mounts a private /sys): start the loader with `nsenter --net=/run/netns/NS redirector run --persist …` (or mount -t bpf bpf {path} on the host)", path = pin::BPFFS)]
    NoPersistBpffs,
    /// A persisted instance whose pins this process cannot see.
    #[error("the persisted redirector on {0} (its loader exited) is pinned in the host's bpffs, which this mount namespace does not see (`ip netns exec` mounts a private /sys): run this command with `nsenter --net=/run/netns/NS redirector …`")]
    PersistedElsewhere(String),
    /// A link could not be pinned.
    #[error("pinning link {}", path.display())]
    PinLink {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: aya::pin::PinError,
    },
    /// `detach` while the loader of the instance still runs.
    #[error("redirector (pid {0}) is running on {1}: stop it (SIGTERM) first; with --persist it leaves its programs attached for `detach`")]
    StillRunning(u32, String),
    /// `detach` with no persisted instance.
    #[error("no persisted redirector in this network namespace (nothing to detach)")]
    NothingToDetach,
    /// Filesystem error.
    #[error("{}", path.display())]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The instance file is not valid JSON of the expected shape.
    #[error("instance file {}", path.display())]
    Json {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Pinning failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `info` to its instance file atomically (temporary file, then rename).
pub fn write_info(info: &InstanceInfo) -> Result<PathBuf, StateError> {
    let path = pin::instance_file(info.netns_inode, info.key_iface());
    fs::create_dir_all(pin::RUN_DIR).map_err(io_err(Path::new(pin::RUN_DIR)))?;
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let text = serde_json::to_string_pretty(info).map_err(|source| StateError::Json {
        path: path.clone(),
        source,
    })?;
    fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// Reads an instance file; one of another format (another redirector version) is
/// [`StateError::Incompatible`], checked before the rest is interpreted.
pub fn read_info(path: &Path) -> Result<InstanceInfo, StateError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let json_err = |source| StateError::Json {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(json_err)?;
    let found = value.get("format").and_then(serde_json::Value::as_u64);
    if found != Some(u64::from(INSTANCE_FORMAT)) {
        return Err(StateError::Incompatible {
            path: path.to_path_buf(),
            found: found.unwrap_or(0),
            version: value
                .get("version")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            pid: value
                .get("pid")
                .and_then(serde_json::Value::as_u64)
                .and_then(|pid| u32::try_from(pid).ok())
                .unwrap_or(0),
        });
    }
    serde_json::from_value(value).map_err(json_err)
}

/// The loader's pinned state; removed (maps and links unpinned, files deleted) on drop
/// unless [`PinnedInstance::keep`] was called.
#[derive(Debug)]
pub struct PinnedInstance {
    dir: PathBuf,
    info_path: PathBuf,
    keep: bool,
}

impl PinnedInstance {
    /// Pins the maps of `dp` and `links` (named as in [`pin::LINKS_DIR`]), and writes
    /// `info`, atomically: everything is pinned into a temporary directory next to the
    /// final one, which is then renamed into place. A persisted instance (`info.persist`)
    /// is pinned under [`pin::PERSIST_ROOT`].
    ///
    /// The caller must hold the instance lock of `info.key_iface()` (a leftover
    /// directory of a crashed loader is then safe to replace).
    pub fn create(
        dp: &Dataplane,
        info: &InstanceInfo,
        links: Vec<(String, aya::programs::links::FdLink)>,
    ) -> Result<Self, StateError> {
        if info.persist {
            // A bpffs mounted here would vanish with this mount namespace, and the links with it.
            if !pin::is_bpffs(Path::new(pin::BPFFS)) {
                return Err(StateError::NoPersistBpffs);
            }
        } else {
            pin::ensure_bpffs().map_err(StateError::Mount)?;
        }
        let dir = pin::pin_dir(info.netns_inode, info.key_iface());
        let tmp = pin::pin_tmp_dir(info.netns_inode, info.key_iface(), info.pid);
        for parent in [dir.parent(), tmp.parent()].into_iter().flatten() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        for stale in [&dir, &tmp] {
            match fs::remove_dir_all(stale) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(stale)(e)),
                _ => {}
            }
        }
        let info_path = write_info(info)?;
        let pinned = (|| {
            fs::create_dir(&tmp).map_err(io_err(&tmp))?;
            dp.pin_maps(&tmp)?;
            if !links.is_empty() {
                let links_dir = tmp.join(pin::LINKS_DIR);
                fs::create_dir(&links_dir).map_err(io_err(&links_dir))?;
                for (name, link) in links {
                    let path = links_dir.join(name);
                    // The pin holds the link; the returned handle only closes our fd.
                    link.pin(&path)
                        .map_err(|source| StateError::PinLink { path, source })?;
                }
            }
            let link = tmp.join(pin::INSTANCE_LINK);
            std::os::unix::fs::symlink(&info_path, &link).map_err(io_err(&link))?;
            fs::rename(&tmp, &dir).map_err(io_err(&dir))
        })();
        if let Err(e) = pinned {
            let _ = fs::remove_dir_all(&tmp);
            let _ = fs::remove_file(&info_path);
            return Err(e);
        }
        Ok(PinnedInstance {
            dir,
            info_path,
            keep: false,
        })
    }

    /// The pin directory (as seen by this process).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leaves everything pinned (`--persist`): `redirector detach` removes it.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

/// Removes a pin directory (unpinning its maps and links), the instance file and the
/// parents left empty.
fn remove_pinned(dir: &Path, info_path: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        log::warn!("removing {}: {e}", dir.display());
    }
    let _ = fs::remove_file(info_path);
    // Empty parents go too; a non-empty one (another instance) stays.
    if let Some(netns_dir) = dir.parent() {
        let _ = fs::remove_dir(netns_dir);
    }
    let _ = fs::remove_dir(pin::PIN_TMP);
    let _ = fs::remove_dir(pin::PIN_ROOT);
}

impl Drop for PinnedInstance {
    fn drop(&mut self) {
        if !self.keep {
            remove_pinned(&self.dir, &self.info_path);
        }
    }
}

/// The persisted instance of this network namespace that has `iface`, if any. For the
/// loader, after it took the lock of `iface`: an instance file of another pid on it can
/// then only be a leftover, persisted if its pins are still there.
pub fn persisted_on(iface: &str) -> Result<Option<InstanceInfo>, StateError> {
    let netns = pin::netns_inode();
    let (live, hidden) = scan_instances(netns)?;
    Ok(live
        .into_iter()
        .map(|(_, info, _)| info)
        // Its pins must be there, unless this process cannot see the host's bpffs at all.
        .filter(|info| {
            info.pid != std::process::id()
                && (info.pin_dir_from_here(false).exists() || !pin::is_bpffs(Path::new(pin::BPFFS)))
        })
        .chain(hidden)
        .find(|info| info.persist && info.interfaces.iter().any(|i| i.name == iface)))
}

/// `redirector detach`: removes the persisted instance of this network namespace (on
/// `iface`, if given) — its pinned links (which detaches the programs), maps and instance
/// file. Refused while its loader runs.
pub fn detach(iface: Option<&str>) -> Result<InstanceInfo, StateError> {
    let netns = pin::netns_inode();
    let (info_path, info, running) = select(live_instances(netns)?, iface)?;
    if running {
        return Err(StateError::StillRunning(
            info.pid,
            info.key_iface().to_string(),
        ));
    }
    if !info.persist {
        return Err(StateError::NothingToDetach);
    }
    remove_pinned(&info.pin_dir_from_here(false), &info_path);
    Ok(info)
}

/// The one instance among `live` (on `iface`, if given).
fn select(mut live: Vec<Found>, iface: Option<&str>) -> Result<Found, StateError> {
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

/// A running instance of this network namespace, opened through its pins.
pub struct Instance {
    /// Its instance file.
    pub info: InstanceInfo,
    /// Its maps.
    pub maps: Maps,
    /// Where the instance file is.
    pub info_path: PathBuf,
    /// Its loader runs (false: a persisted instance whose loader exited).
    pub loader_running: bool,
}

impl Instance {
    /// Finds the live instance of this network namespace (on `iface`, if given) and
    /// opens its maps.
    pub fn find(iface: Option<&str>) -> Result<Self, StateError> {
        let netns = pin::netns_inode();
        let (info_path, info, loader_running) = select(live_instances(netns)?, iface)?;
        let dir = info.pin_dir_from_here(loader_running);
        let maps = Maps::from_pins(&dir).map_err(|source| StateError::Unavailable {
            pid: info.pid,
            dir,
            source,
        })?;
        Ok(Instance {
            info,
            maps,
            info_path,
            loader_running,
        })
    }

    /// Rewrites the instance file (atomically) after `info` changed.
    pub fn save_info(&self) -> Result<(), StateError> {
        write_info(&self.info).map(|_| ())
    }

    /// Serialises rule changes with other control commands; held until dropped.
    pub fn lock_rules(&self) -> Result<instance::FileLock, StateError> {
        let path = pin::control_lock_file(self.info.netns_inode, self.info.key_iface());
        instance::lock_exclusive(&path).map_err(io_err(&path))
    }

    /// Re-reads the instance file (after taking [`Instance::lock_rules`]).
    pub fn reload_info(&mut self) -> Result<(), StateError> {
        self.info = read_info(&self.info_path)?;
        Ok(())
    }
}

/// Instance files of `netns` whose loader still holds its lock (`true`), or persisted
/// ones whose pins are still there (`false`). If there are none, a persisted instance whose
/// pins this process cannot see (no bpffs at /sys/fs/bpf) is an error naming the way to
/// reach it.
fn live_instances(netns: u64) -> Result<Vec<Found>, StateError> {
    let (live, mut hidden) = scan_instances(netns)?;
    match hidden.pop() {
        Some(info) if live.is_empty() => {
            Err(StateError::PersistedElsewhere(info.key_iface().to_string()))
        }
        _ => Ok(live),
    }
}

/// An instance file found: its path, contents, and whether its loader runs.
type Found = (PathBuf, InstanceInfo, bool);

/// Live instances (as in [`live_instances`]) and persisted ones this process cannot see.
fn scan_instances(netns: u64) -> Result<(Vec<Found>, Vec<InstanceInfo>), StateError> {
    let entries = match fs::read_dir(pin::RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(io_err(Path::new(pin::RUN_DIR))(e)),
    };
    let prefix = pin::run_prefix(netns);
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
                if writer_alive && instance::is_held(&pin::lock_file(netns, iface)) {
                    incompatible = Some(e);
                }
                continue;
            }
            Err(_) => continue,
        };
        if info.netns_inode != netns {
            continue;
        }
        let running = instance::is_held(&pin::lock_file(netns, info.key_iface()));
        if running || (info.persist && info.pin_dir_from_here(false).exists()) {
            live.push((path, info, running));
        } else if info.persist && !pin::is_bpffs(Path::new(pin::BPFFS)) {
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

    #[test]
    fn an_instance_file_of_another_format_is_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("rdr-state-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("netns-1-eth0.json");
        fs::write(&path, r#"{"format": 1, "version": "0.0.9", "pid": 1}"#).unwrap();
        let err = read_info(&path).unwrap_err();
        assert!(
            matches!(err, StateError::Incompatible { found: 1, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("redirector 0.0.9 (state format 1)"), "{text}");
        assert!(
            text.contains(&format!("reads format {INSTANCE_FORMAT}")),
            "{text}"
        );
        fs::write(&path, r#"{"version": "x"}"#).unwrap();
        assert!(matches!(
            read_info(&path),
            Err(StateError::Incompatible { found: 0, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn instance_file_round_trips() {
        let info = InstanceInfo {
            format: INSTANCE_FORMAT,
            version: "0.1.0".into(),
            pid: 42,
            netns_inode: 4026531840,
            mode: "auto".into(),
            interfaces: vec![
                InterfaceInfo {
                    name: "eth0".into(),
                    ingress_hook: "xdp".into(),
                },
                InterfaceInfo {
                    name: "eth1".into(),
                    ingress_hook: "tc".into(),
                },
            ],
            conntrack_size: 1024,
            rules: vec![RuleInfo {
                from_port: 80,
                to_port: 8080,
                slot: 0,
            }],
            next_slot: 1,
            timeouts: Some(TimeoutsInfo::from(&crate::reaper::Timeouts::default())),
            metrics: None,
            persist: false,
        };
        let text = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<InstanceInfo>(&text).unwrap(), info);
        assert_eq!(info.key_iface(), "eth0");
        assert!(text.contains("\"next_slot\":1"), "{text}");
        assert!(text.contains("\"closing_secs\":10"), "{text}");
        assert!(!text.contains("metrics"), "{text}");
        // Files of loaders that predate the optional fields still read.
        let old = text.replace(",\"timeouts\":{\"handshake_secs\":60,\"established_secs\":432000,\"fin_wait_secs\":120,\"closing_secs\":10}", "");
        assert_ne!(old, text);
        assert_eq!(
            serde_json::from_str::<InstanceInfo>(&old).unwrap().timeouts,
            None
        );
    }
}
