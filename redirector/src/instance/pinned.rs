//! The loader's pinned state: created atomically by `redirector run`, removed when it
//! stops (or, persisted, by `redirector detach`).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::{
    info::{write_info, InstanceInfo},
    io_err, paths, scan, StateError,
};
use crate::dataplane::Dataplane;

/// The loader's pinned state; removed (maps and links unpinned, files deleted) on drop
/// unless [`PinnedInstance::keep`] was called.
#[derive(Debug)]
pub struct PinnedInstance {
    dir: PathBuf,
    info_path: PathBuf,
    keep: bool,
}

impl PinnedInstance {
    /// Pins the maps of `dp` and `links` (named as in [`paths::LINKS_DIR`]), and writes
    /// `info`, atomically: everything is pinned into a temporary directory next to the
    /// final one, which is then renamed into place. A persisted instance (`info.persist`)
    /// is pinned under [`paths::PERSIST_ROOT`].
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
            if !paths::is_bpffs(Path::new(paths::BPFFS)) {
                return Err(StateError::NoPersistBpffs);
            }
        } else {
            paths::ensure_bpffs().map_err(StateError::Mount)?;
        }
        let dir = paths::pin_dir(info.netns_inode, info.key_iface());
        let tmp = paths::pin_tmp_dir(info.netns_inode, info.key_iface(), info.pid);
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
                let links_dir = tmp.join(paths::LINKS_DIR);
                fs::create_dir(&links_dir).map_err(io_err(&links_dir))?;
                for (name, link) in links {
                    let path = links_dir.join(name);
                    // The pin holds the link; the returned handle only closes our fd.
                    link.pin(&path)
                        .map_err(|source| StateError::PinLink { path, source })?;
                }
            }
            let link = tmp.join(paths::INSTANCE_LINK);
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

    /// Takes over the pinned state of the persisted instance whose maps and links `info`
    /// (its new instance file) now uses: rewrites the instance file only. The pin directory
    /// stays where it is (removing it would unpin the maps and links); unlike a created
    /// instance, it is kept on drop: only [`PinnedInstance::remove`] (an explicit stop
    /// without `--persist`) unpins it, so an error or crash mid-adoption loses nothing.
    pub fn adopt(info: &InstanceInfo) -> Result<Self, StateError> {
        let dir = paths::pin_dir(info.netns_inode, info.key_iface());
        let info_path = write_info(info)?;
        Ok(PinnedInstance {
            dir,
            info_path,
            keep: true,
        })
    }

    /// Unpins everything (maps and links) and removes the instance file.
    pub fn remove(mut self) {
        self.keep = false;
    }

    /// The pin directory (as seen by this process).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The instance file.
    pub fn info_path(&self) -> &Path {
        &self.info_path
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
    let _ = fs::remove_dir(paths::PIN_TMP);
    let _ = fs::remove_dir(paths::PIN_ROOT);
}

impl Drop for PinnedInstance {
    fn drop(&mut self) {
        if !self.keep {
            remove_pinned(&self.dir, &self.info_path);
        }
    }
}

/// `redirector detach`: removes the persisted instance of this network namespace (on
/// `iface`, if given) — its pinned links (which detaches the programs), maps and instance
/// file. Refused while its loader runs.
pub fn detach(iface: Option<&str>) -> Result<InstanceInfo, StateError> {
    let netns = paths::netns_inode();
    let (info_path, info, running) = scan::select(scan::live_instances(netns)?, iface)?;
    if running {
        return Err(StateError::StillRunning(
            info.pid,
            info.key_iface().to_string(),
        ));
    }
    if !info.left_attached() {
        return Err(StateError::NothingToDetach);
    }
    remove_pinned(&info.pin_dir_from_here(false), &info_path);
    Ok(info)
}
