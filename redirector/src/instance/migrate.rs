//! Migrating a persisted instance of the previous state format ([`MIGRATES_FROM`]): its
//! one LRU flow table, `FLOWS`, becomes today's HALF_OPEN + ESTABLISHED (+ FLOW_COUNT),
//! its shorter STATS is copied counter by counter, and the rest is reused as is
//! ([`crate::dataplane::maps::KEPT_ON_MIGRATION`]).
//!
//! Here: opening and checking the old tables ([`OldTables`]), copying the flows
//! ([`copy_flows`]), assembling the new pin directory next to the old one ([`assemble`])
//! and swapping the two atomically ([`swap`]). The order of the steps, and the window
//! between the copy and the link update, are `cli/run/start.rs`'s (see
//! docs/ARCHITECTURE.md, "Migration from format 2").

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData, MapError, MapType},
    programs::links::{FdLink, PinnedLink},
};
use redirector_common::{
    maps::{FlowKey, FlowValue, STATS_MAP},
    stats::Counter,
};

use super::paths;
use crate::dataplane::{
    maps::{Imported, Maps, MapsError},
    Dataplane, DataplaneError,
};

/// The state format `run` migrates from (the previous release's).
pub const MIGRATES_FROM: u32 = 2;
/// Format 2's single flow table: an LRU hash [`FlowKey`] → [`FlowValue`] (the same key
/// and value layout as today's two tables).
pub const OLD_FLOWS_MAP: &str = "FLOWS";
/// Number of global counters in format 2's STATS (today's first ones, same order).
pub const OLD_STATS_COUNT: u32 = 21;

/// Migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A pinned map of the old instance is missing or cannot be opened.
    #[error("opening the persisted map {}", path.display())]
    Open {
        /// Its pin.
        path: PathBuf,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// A pinned map of the old instance does not have format 2's layout.
    #[error("the persisted map {} is not format 2's ({found}; expected {expected})", path.display())]
    Layout {
        /// Its pin.
        path: PathBuf,
        /// What it is.
        found: String,
        /// What format 2 pinned there.
        expected: &'static str,
    },
    /// More established flows than the new table admits.
    #[error("{flows} established flows to migrate, more than --conntrack-size {capacity}: start with a larger --conntrack-size")]
    TooMany {
        /// Established flows found.
        flows: u64,
        /// The new table's capacity.
        capacity: u32,
    },
    /// A map operation failed.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// Pinning the new maps failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// A pinned link could not be opened or pinned again.
    #[error("pinning the link {} again at {}", from.display(), to.display())]
    Link {
        /// The old pin.
        from: PathBuf,
        /// The new one.
        to: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation failed.
    #[error("{}", path.display())]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The tables of a format-2 instance that do not carry over as they are.
pub struct OldTables {
    flows: Map,
    stats: Map,
}

impl OldTables {
    /// Opens FLOWS and STATS pinned in `dir`, checking that they have format 2's layout.
    pub fn open(dir: &Path) -> Result<Self, MigrateError> {
        let flow_size = |size: usize| u32::try_from(size).unwrap_or(u32::MAX);
        let flows = open_checked(
            &dir.join(OLD_FLOWS_MAP),
            "an LRU hash of 36-byte keys and 32-byte values",
            |t, key, value| {
                t == MapType::LruHash
                    && key == flow_size(size_of::<FlowKey>())
                    && value == flow_size(size_of::<FlowValue>())
            },
        )?;
        let stats = open_checked(
            &dir.join(STATS_MAP),
            "a per-CPU array of u64 counters",
            |t, key, value| t == MapType::PerCpuArray && key == 4 && value == 8,
        )?;
        Ok(OldTables { flows, stats })
    }

    /// The old STATS, for [`Maps::import_counters`].
    pub fn stats(&self) -> &Map {
        &self.stats
    }

    /// A snapshot of the old flow table (entries may change while it is taken).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, MigrateError> {
        let map: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(&self.flows).map_err(|source| MigrateError::Open {
                path: PathBuf::from(OLD_FLOWS_MAP),
                source,
            })?;
        let mut flows = Vec::new();
        for entry in map.iter() {
            match entry {
                Ok(flow) => flows.push(flow),
                // Removed (closed, evicted) between its key and its value: gone.
                Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(MigrateError::Open {
                        path: PathBuf::from(OLD_FLOWS_MAP),
                        source,
                    })
                }
            }
        }
        Ok(flows)
    }
}

/// Opens the map pinned at `path` and checks its type and sizes with `fits`.
fn open_checked(
    path: &Path,
    expected: &'static str,
    fits: impl Fn(MapType, u32, u32) -> bool,
) -> Result<Map, MigrateError> {
    let open_err = |source| MigrateError::Open {
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(open_err)?;
    let info = data.info().map_err(open_err)?;
    let kind = info.map_type().map_err(open_err)?;
    if !fits(kind, info.key_size(), info.value_size()) {
        return Err(MigrateError::Layout {
            path: path.to_path_buf(),
            found: format!(
                "{kind:?}, key {} bytes, value {} bytes",
                info.key_size(),
                info.value_size()
            ),
            expected,
        });
    }
    if kind == MapType::PerCpuArray && info.max_entries() > Counter::COUNT {
        return Err(MigrateError::Layout {
            path: path.to_path_buf(),
            found: format!("{} counters", info.max_entries()),
            expected: "at most today's number of counters",
        });
    }
    Map::from_map_data(data).map_err(open_err)
}

/// What a copy of the old flow table did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Entries inserted into the established table.
    pub established: u64,
    /// Entries inserted into the half-open table.
    pub half_open: u64,
    /// Half-open entries moved to the established table.
    pub promoted: u64,
    /// Entries the new tables already held.
    pub present: u64,
}

/// Copies every entry of the old flow table into `maps` ([`Maps::import_flow`]): run
/// once before the link update, and again right after it for the entries the old
/// program created or completed meanwhile.
pub fn copy_flows(old: &OldTables, maps: &mut Maps) -> Result<Copied, MigrateError> {
    let mut copied = Copied::default();
    for (key, value) in old.flows()? {
        match maps.import_flow(key, value)? {
            Imported::Established => copied.established += 1,
            Imported::HalfOpen => copied.half_open += 1,
            Imported::Promoted => copied.promoted += 1,
            Imported::Present => copied.present += 1,
        }
    }
    Ok(copied)
}

/// Assembles in `tmp` the pin directory the migrated instance will have: every map of
/// `dp` (the kept ones pinned a second time), each link of `links` (names in
/// [`paths::LINKS_DIR`]) pinned again from `old_dir`, and the instance symlink to
/// `info_path`. The old directory is not touched.
pub fn assemble(
    dp: &Dataplane,
    old_dir: &Path,
    tmp: &Path,
    info_path: &Path,
    links: &[String],
) -> Result<(), MigrateError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrateError::Io { path, source }
    };
    if let Some(parent) = tmp.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    match fs::remove_dir_all(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(tmp)(e)),
        _ => {}
    }
    fs::create_dir(tmp).map_err(io_err(tmp))?;
    dp.pin_maps(tmp)?;
    let new_links = tmp.join(paths::LINKS_DIR);
    fs::create_dir(&new_links).map_err(io_err(&new_links))?;
    for name in links {
        let from = old_dir.join(paths::LINKS_DIR).join(name);
        let to = new_links.join(name);
        let link_err = |source| MigrateError::Link {
            from: from.clone(),
            to: to.clone(),
            source,
        };
        let link =
            PinnedLink::from_pin(&from).map_err(|e| link_err(io::Error::other(e.to_string())))?;
        // The new pin holds the link too; dropping the handle only closes our fd.
        FdLink::from(link)
            .pin(&to)
            .map_err(|e| link_err(io::Error::other(e.to_string())))?;
    }
    let link = tmp.join(paths::INSTANCE_LINK);
    std::os::unix::fs::symlink(info_path, &link).map_err(io_err(&link))?;
    Ok(())
}

/// Exchanges `tmp` and `dir` atomically (`renameat2(RENAME_EXCHANGE)`, which bpffs
/// supports): every reader sees either the whole old directory or the whole new one.
/// Then removes the old one, now at `tmp` — unpinning FLOWS and the old STATS (the
/// kept maps and the links stay pinned in the new directory).
pub fn swap(tmp: &Path, dir: &Path) -> Result<(), MigrateError> {
    let c_path = |path: &Path| {
        CString::new(path.as_os_str().as_bytes()).map_err(|e| MigrateError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })
    };
    let (from, to) = (c_path(tmp)?, c_path(dir)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(MigrateError::Io {
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    fs::remove_dir_all(tmp).map_err(|source| MigrateError::Io {
        path: tmp.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_2_counters_are_the_first_of_todays() {
        // Format 3 appended its counters after format 2's 21: an index-by-index copy
        // keeps every counter's meaning.
        let names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names[OLD_STATS_COUNT as usize - 1], "flow_flushed");
        assert_eq!(names[OLD_STATS_COUNT as usize], "pass_table_full");
    }
}
