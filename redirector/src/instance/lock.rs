//! One running loader per interface and network namespace, enforced with a lock file, and
//! the control lock that serialises changing commands. Every lock is a `flock(2)` held
//! through nix's [`Flock`], released when dropped or when the process exits.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, Write},
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::paths;

/// Could not take the instance lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another loader holds the interface.
    #[error(
        "interface {iface} is already handled by a running redirector (pid {pid}); stop it first"
    )]
    AlreadyRunning {
        /// Interface name.
        iface: String,
        /// Its pid, as it recorded it.
        pid: String,
    },
    /// Filesystem error on the lock file.
    #[error("instance lock {path}: {source}")]
    Io {
        /// Lock file path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A `flock(2)` on an open file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: Flock<File>,
}

/// Locks `file` as `how` says; on failure hands the file back with the cause.
fn flock(file: File, how: FlockArg) -> Result<Flock<File>, (File, io::Error)> {
    Flock::lock(file, how).map_err(|(file, errno)| (file, io::Error::from(errno)))
}

/// Takes the loader's lock for `iface` in the current network namespace (and writes our
/// pid into it, for the error of the next loader that tries); held for the life of the
/// loader.
pub fn lock(iface: &str) -> Result<FileLock, LockError> {
    let path = paths::lock_file(paths::netns_inode(), iface);
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(paths::RUN_DIR).map_err(io)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let mut file = match flock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::AlreadyRunning {
                iface: iface.to_string(),
                pid: pid.trim().to_string(),
            });
        }
    };
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(FileLock { _file: file })
}

/// True if a live loader holds the lock at `path` (probed without taking it for long:
/// a shared lock is tried and released at once).
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    flock(file, FlockArg::LockSharedNonblock).is_err()
}

/// Takes an exclusive lock on `path` (created if missing), waiting for it.
pub fn lock_exclusive(path: &Path) -> io::Result<FileLock> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let file = flock(file, FlockArg::LockExclusive).map_err(|(_, e)| e)?;
    Ok(FileLock { _file: file })
}
