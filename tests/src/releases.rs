//! The real previous releases, built from their own git commits, for the upgrade tests: an
//! upgrade is proved by running the binary users ran, not a fixture made from today's
//! types and constants.
//!
//! [`RELEASES`] names, per state format, the last release that pinned it. [`binary`]
//! builds a release once (`git worktree add` of its commit, `cargo build --release -p
//! redirector --bin redirector` with a target directory shared by all releases) and keeps
//! the binary in `~/.cache/redirector/releases/<commit>/redirector`, so later runs on the
//! same machine start at once; a fresh machine builds each release once (a few minutes),
//! which `cargo xtask test` does before the tests, where its progress shows.

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
};

/// One previous release.
#[derive(Clone, Copy, Debug)]
pub struct Release {
    /// The state format it pinned (the instance file's `format`).
    pub format: u32,
    /// Its commit (full hash).
    pub commit: &'static str,
    /// What it was, for messages.
    pub what: &'static str,
    /// `run` arguments it needs beyond `--iface IFACE --persist` to run in a test (e.g.
    /// keeping its cgroup programs off the machine's root cgroup).
    pub run_args: &'static [&'static str],
}

/// Per state format, the last release that pinned it (hash → format): what an upgrade
/// starts from.
pub const RELEASES: &[Release] = &[
    Release {
        format: 2,
        commit: "05814981989b27ef586cd6e58302103ef5d4303a",
        what: "the last release of state format 2 (one LRU FLOWS table, 21 counters)",
        run_args: &[],
    },
    Release {
        format: 3,
        commit: "4ef26055829646c3f56e17dc721cb57b6e01140e",
        what: "the last release of state format 3 before the kernel judged flows (a RST \
               removed an entry; no REDIRECTED_SOCKETS; local clients on by default)",
        run_args: &["--no-local"],
    },
];

/// The release of state format `format` in [`RELEASES`].
pub fn release(format: u32) -> Release {
    *RELEASES
        .iter()
        .find(|r| r.format == format)
        .unwrap_or_else(|| panic!("no release of state format {format} in RELEASES"))
}

/// Where built releases are kept.
fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/redirector/releases")
}

/// The workspace whose git history holds the releases.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The `redirector` binary of `release`, built now if no earlier run left it; panics with
/// the failing step (a checkout without the commit, a build error) otherwise.
pub fn binary(release: &Release) -> PathBuf {
    let cache = cache_dir();
    fs::create_dir_all(&cache).unwrap();
    let out = cache.join(release.commit).join("redirector");
    // One builder at a time (tests run in parallel, and xtask may be building too).
    let lock = File::create(cache.join(".lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "locking {}", cache.display());
    if out.exists() {
        return out;
    }
    let source = cache.join(format!("src-{}", release.commit));
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?} failed");
    };
    if source.exists() {
        let _ = fs::remove_dir_all(&source);
        git(&["worktree", "prune"]);
    }
    let has_commit = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["cat-file", "-e", &format!("{}^{{commit}}", release.commit)])
        .status()
        .unwrap()
        .success();
    assert!(
        has_commit,
        "commit {} ({}) is not in this checkout's history: the upgrade tests need a clone \
         with history (not --depth 1)",
        release.commit, release.what
    );
    git(&[
        "worktree",
        "add",
        "--detach",
        source.to_str().unwrap(),
        release.commit,
    ]);
    eprintln!(
        "building {} ({}) once, into {}",
        release.commit,
        release.what,
        out.display()
    );
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "redirector",
            "--bin",
        ])
        .arg("redirector")
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", cache.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(status.success(), "building {} failed", release.commit);
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    fs::copy(cache.join("target/release/redirector"), &out).unwrap();
    git(&["worktree", "remove", "--force", source.to_str().unwrap()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds every release of [`RELEASES`] (or finds it built): run first under `cargo
    /// test`, before the upgrade tests that start these binaries, and fails if one does
    /// not build or does not run.
    #[test]
    fn every_previous_release_builds_and_runs() {
        for release in RELEASES {
            let binary = binary(release);
            let out = Command::new(&binary).arg("--version").output().unwrap();
            assert!(out.status.success(), "{}: {out:?}", release.commit);
        }
    }
}
