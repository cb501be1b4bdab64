//! cgroup v2 directories created by a test or the demo, removed on drop: the only cgroups
//! the redirector's local-client programs (cgroup connect hooks) are attached to outside
//! production — never the machine's root cgroup.

use std::{
    ffi::OsStr,
    fs, io,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use crate::cmd::Cmd;

/// How long a removal waits for the processes that were in the cgroup to be gone.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A cgroup could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup v2 hierarchy is mounted in this mount namespace.
    #[error("no cgroup v2 hierarchy is mounted (no `cgroup2` line in /proc/self/mounts)")]
    NoCgroup2,
    /// A cgroup file or directory operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// The mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(io_err("reading", Path::new("/proc/self/mounts")))?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(target))
        })
        .ok_or(Error::NoCgroup2)
}

/// A child cgroup of the cgroup v2 root that this process created; dropping it moves any
/// process still inside back to the root and removes the directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    root: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup v2 root>/<name>`, replacing an empty leftover of the same name.
    pub fn create(name: &str) -> Result<Self> {
        let root = root()?;
        let path = root.join(name);
        if path.exists() {
            // A leftover of a crashed run: removed the same way as on drop.
            drop(Cgroup {
                path: path.clone(),
                root: root.clone(),
            });
        }
        fs::create_dir(&path).map_err(io_err("creating cgroup", &path))?;
        Ok(Cgroup { path, root })
    }

    /// [`Cgroup::create`] for tests: panics on failure.
    pub fn new(name: &str) -> Self {
        Self::create(name).unwrap_or_else(|e| panic!("{}", crate::error_chain(&e)))
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the process `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(io_err("writing", &procs))
    }

    /// `program` run inside this cgroup from its first instruction: a shell writes its own
    /// pid to `cgroup.procs`, then execs `program` (with the arguments added next).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.path.join("cgroup.procs"))
            .arg(program);
        cmd
    }

    /// [`Cgroup::command`] as a [`Cmd`] (xtask).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Cmd {
        Cmd::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.path.join("cgroup.procs"))
            .arg(program)
    }

    /// Moves every process still inside to the root and removes the directory, waiting a
    /// little for exiting processes to leave it.
    fn remove(&self) -> Result<()> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                // Gone meanwhile is as good as moved.
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(io_err("removing cgroup", &self.path)(e))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: {}", crate::error_chain(&e));
        }
    }
}

/// This process moved into a cgroup; dropping it moves the process back to the cgroup it
/// was in before.
#[derive(Debug)]
pub struct Entered {
    previous: PathBuf,
}

impl Cgroup {
    /// Moves this whole process into the cgroup (children it spawns from now on start
    /// there too) until the returned guard is dropped.
    pub fn enter(&self) -> Result<Entered> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(io_err("reading", Path::new("/proc/self/cgroup")))?;
        // The v2 line is `0::/path` (relative to the hierarchy's root).
        let relative = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .unwrap_or("/");
        let previous = self.root.join(relative.trim_start_matches('/'));
        self.add(std::process::id())?;
        Ok(Entered { previous })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let procs = self.previous.join("cgroup.procs");
        if let Err(e) = fs::write(&procs, std::process::id().to_string()) {
            eprintln!("warning: moving back to {}: {e}", procs.display());
        }
    }
}
