//! One running instance, as `redirector run` creates it and the other commands find it:
//! where its state lives ([`paths`]), the lock that makes it one loader per interface
//! ([`lock`]), its instance file ([`info`]), its pinned maps and links ([`pinned`]), and
//! what the control commands read ([`view`]) and change ([`control`]) — every change
//! through [`Instance::edit`] — and the pins of namespaces that are gone ([`stale`]).

pub mod adopt;
pub mod control;
pub mod info;
pub mod lock;
pub mod migrate;
pub mod paths;
pub mod pinned;
mod scan;
pub mod stale;
pub mod view;

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::dataplane::{
    maps::{Maps, MapsError},
    DataplaneError,
};
use info::{read_info, write_info, InstanceInfo, INSTANCE_FORMAT};
pub use scan::{find_info, persisted_on};

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
    /// A persisted instance of another state format on the interface `run` starts on.
    #[error("interface {iface} carries a persisted redirector of state format {found} (redirector {version}); this redirector {ours} uses format {expected} and migrates only format {from}, so it cannot take over its maps (the persisted redirector was left untouched and keeps redirecting): remove it with `redirector detach --iface {iface}` of redirector {version} (or `rm -r {}`), which drops its flows, then start this one", pin_dir.display(), ours = env!("CARGO_PKG_VERSION"), expected = INSTANCE_FORMAT, from = migrate::MIGRATES_FROM)]
    IncompatiblePersisted {
        /// The interface asked for.
        iface: String,
        /// Its pin directory.
        pin_dir: PathBuf,
        /// Its format (0: none).
        found: u64,
        /// The version that wrote it.
        version: String,
    },
    /// bpffs could not be mounted.
    #[error("mounting bpffs at {path}", path = paths::BPFFS)]
    Mount(#[source] io::Error),
    /// `--persist` needs a bpffs that outlives the loader.
    #[error("--persist needs the host's bpffs at {path}, which later commands see too, but this mount namespace has none (`ip netns exec` mounts a private /sys): start the loader with `nsenter --net=/run/netns/NS redirector run --persist …` (or mount -t bpf bpf {path} on the host)", path = paths::BPFFS)]
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
    /// Pins of this namespace's inode recorded with another namespace cookie.
    #[error("the persisted redirector on {iface} was pinned by a network namespace that no longer exists (cookie {recorded}; this namespace, which reuses its inode, has cookie {now}): its flows belong to that namespace and are not adopted; remove its pins with `redirector detach --stale`, then start again")]
    DeadNamespace {
        /// Its key interface.
        iface: String,
        /// The cookie its instance file recorded.
        recorded: u64,
        /// This namespace's.
        now: u64,
    },
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

/// A filesystem error on `path`.
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
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
        let netns = paths::netns_inode();
        let (info_path, info, loader_running) = scan::select(scan::live_instances(netns)?, iface)?;
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

    /// Changes the instance: takes the control lock (so changing commands run one at a
    /// time), re-reads the instance file (another command may have changed it since
    /// [`Instance::find`]), runs `change` on it and the maps, and rewrites the file
    /// (atomically) if `change` modified it. Nothing is written when `change` fails.
    pub fn edit<T, E: From<StateError>>(
        &mut self,
        change: impl FnOnce(&mut InstanceInfo, &mut Maps) -> Result<T, E>,
    ) -> Result<T, E> {
        let path = paths::control_lock_file(self.info.netns_inode, self.info.key_iface());
        let _lock = lock::lock_exclusive(&path).map_err(io_err(&path))?;
        self.info = read_info(&self.info_path)?;
        let before = self.info.clone();
        let result = change(&mut self.info, &mut self.maps)?;
        if self.info != before {
            write_info(&self.info)?;
        }
        Ok(result)
    }
}
