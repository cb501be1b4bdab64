//! One running loader per interface and network namespace, enforced with a lock file.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
};

/// Directory of lock files (not remounted by `ip netns exec`, unlike /sys).
const LOCK_DIR: &str = "/run/redirector";

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
    let netns = fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    let path = PathBuf::from(LOCK_DIR).join(format!("netns-{netns}-{iface}.lock"));
    let io = |source| InstanceError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(LOCK_DIR).map_err(io)?;
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
