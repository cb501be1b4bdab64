//! The machine-wide test lock: the namespace tests of every checkout, the kernel benchmark
//! and `cargo xtask bench` load redirector programs into the same kernel, and some tests
//! check that none is loaded any more after a loader exits. Whoever loads programs holds
//! this lock; that check needs it exclusively.

use std::fs::File;
use std::io;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file, the one place its path is defined.
pub const KERNEL_LOCK: &str = "/run/lock/redirector-tests.lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lock file could not be opened or created (e.g. /run/lock is not writable).
    #[error("could not open {path}")]
    Open {
        /// The lock file, [`KERNEL_LOCK`].
        path: &'static str,
        /// Why opening it failed.
        #[source]
        source: io::Error,
    },
    /// flock(2) on the opened lock file failed.
    #[error("could not lock {path}")]
    Lock {
        /// The lock file, [`KERNEL_LOCK`].
        path: &'static str,
        /// The errno of flock(2).
        #[source]
        source: Errno,
    },
}

/// A hold of the machine-wide lock (flock(2) on [`KERNEL_LOCK`]); released on drop, and by
/// the kernel when the process dies, so a crashed holder never blocks the next run.
#[derive(Debug)]
pub struct KernelLock {
    _file: Flock<File>,
}

impl KernelLock {
    /// Waits for the lock alone: nobody else loads programs while it is held.
    pub fn exclusive() -> Result<Self, Error> {
        Self::take(FlockArg::LockExclusive)
    }

    /// Waits for a shared hold: for loading programs briefly alongside other shared
    /// holders, but never while an exclusive holder checks that none is loaded.
    pub fn shared() -> Result<Self, Error> {
        Self::take(FlockArg::LockShared)
    }

    fn take(mode: FlockArg) -> Result<Self, Error> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(KERNEL_LOCK)
            .map_err(|source| Error::Open {
                path: KERNEL_LOCK,
                source,
            })?;
        let file = Flock::lock(file, mode).map_err(|(_, source)| Error::Lock {
            path: KERNEL_LOCK,
            source,
        })?;
        Ok(Self { _file: file })
    }
}
