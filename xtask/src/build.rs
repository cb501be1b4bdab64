//! `cargo xtask build`: setup, then build the loader, the test helpers (`ws-echo`,
//! `ws-client`, `syn-flood`, `tcp-spoof`, `unit-sandbox`) and the benchmark tools (`wsload`, `kernel-bench`,
//! `sniff-bench`), and find where cargo put them.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _, Result};

use crate::setup;
use testkit::cmd::{heading, Cmd};

/// Packages whose binaries the demo and the tests run.
const PACKAGES: [&str; 4] = [
    "redirector",
    "redirector-tests",
    "wsload",
    "redirector-bench",
];

/// Which cargo profile to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    /// The directory under the target directory that cargo uses for it.
    fn dir_name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Debug => "debug",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// Absolute paths of the built binaries.
pub struct Binaries {
    pub redirector: PathBuf,
    pub ws_echo: PathBuf,
    pub ws_client: PathBuf,
    pub wsload: PathBuf,
    pub kernel_bench: PathBuf,
    pub sniff_bench: PathBuf,
    pub syn_flood: PathBuf,
    pub tcp_spoof: PathBuf,
    pub unit_sandbox: PathBuf,
}

impl Binaries {
    /// The ones the benchmark runs.
    pub fn for_bench(&self) -> redirector_bench::Binaries {
        redirector_bench::Binaries {
            redirector: self.redirector.clone(),
            ws_echo: self.ws_echo.clone(),
            wsload: self.wsload.clone(),
            kernel_bench: self.kernel_bench.clone(),
            sniff_bench: self.sniff_bench.clone(),
        }
    }
}

/// `cargo xtask build`: setup, then `build_binaries`.
pub fn run(profile: Profile) -> Result<Binaries> {
    setup::run()?;
    build_binaries(profile)
}

/// Builds the binaries (without setup) and checks that each one is there.
pub fn build_binaries(profile: Profile) -> Result<Binaries> {
    heading(format!("build ({profile})"));
    let mut build = Cmd::cargo().arg("build");
    if profile == Profile::Release {
        build = build.arg("--release");
    }
    for package in PACKAGES {
        build = build.args(["-p", package]);
    }
    build
        .arg("--bins")
        .current_dir(workspace_root())
        .run()
        .context("build failed")?;
    let bin_dir = target_dir()?.join(profile.dir_name());
    let binaries = Binaries {
        redirector: bin_dir.join("redirector"),
        ws_echo: bin_dir.join("ws-echo"),
        ws_client: bin_dir.join("ws-client"),
        wsload: bin_dir.join("wsload"),
        kernel_bench: bin_dir.join("kernel-bench"),
        sniff_bench: bin_dir.join("sniff-bench"),
        syn_flood: bin_dir.join("syn-flood"),
        tcp_spoof: bin_dir.join("tcp-spoof"),
        unit_sandbox: bin_dir.join("unit-sandbox"),
    };
    for path in [
        &binaries.redirector,
        &binaries.ws_echo,
        &binaries.ws_client,
        &binaries.wsload,
        &binaries.kernel_bench,
        &binaries.sniff_bench,
        &binaries.syn_flood,
        &binaries.tcp_spoof,
        &binaries.unit_sandbox,
    ] {
        ensure!(
            path.is_file(),
            "cargo build succeeded but {} is missing: do the packages {} still define it?",
            path.display(),
            PACKAGES.join(", ")
        );
        println!("  built {}", path.display());
    }
    Ok(binaries)
}

/// The workspace root: xtask's own manifest directory is one level below it.
pub fn workspace_root() -> &'static Path {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir)
}

/// The target directory cargo uses, as `cargo metadata` reports it (honours CARGO_TARGET_DIR
/// and `build.target-dir`).
fn target_dir() -> Result<PathBuf> {
    let metadata = Cmd::cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .run_captured()?;
    target_dir_from_metadata(&metadata)
}

fn target_dir_from_metadata(metadata: &str) -> Result<PathBuf> {
    let metadata: serde_json::Value =
        serde_json::from_str(metadata).context("`cargo metadata` printed no valid JSON")?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` output has no target_directory")?;
    Ok(PathBuf::from(target_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_directory_is_read_from_metadata() {
        let metadata = r#"{"packages":[],"target_directory":"/work/main/target","version":1}"#;
        assert_eq!(
            target_dir_from_metadata(metadata).unwrap(),
            PathBuf::from("/work/main/target")
        );
        assert!(target_dir_from_metadata(r#"{"version":1}"#).is_err());
        assert!(target_dir_from_metadata("not json").is_err());
    }
}
