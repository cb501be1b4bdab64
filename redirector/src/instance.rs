//! One running loader per interface and network namespace, enforced with a lock file.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::PathBuf,
};

use crate::pin;

/// Could not take the instance lock.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
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
        source: std::io::Error,
    },
}

/// Held for the life of the loader; the kernel releases the lock when the process exits.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

/// Takes the lock for `iface` in the current network namespace.
pub fn lock(iface: &str) -> Result<InstanceLock, InstanceError> {
    let path = pin::lock_file(pin::netns_inode(), iface);
    let io = |source| InstanceError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(pin::RUN_DIR).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(InstanceError::AlreadyRunning {
            iface: iface.to_string(),
            pid: pid.trim().to_string(),
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(InstanceLock { _file: file })
}

/// True if a live loader holds the lock at `path` (probed without taking it for long:
/// a shared lock is tried and released at once).
pub fn is_held(path: &std::path::Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0
}

/// An exclusive lock on `path`, waited for and held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Takes an exclusive lock on `path` (created if missing), waiting for it.
pub fn lock_exclusive(path: &std::path::Path) -> std::io::Result<FileLock> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FileLock { _file: file })
}
