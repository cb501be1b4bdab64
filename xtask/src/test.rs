//! `cargo xtask test`: setup, lint (rustfmt, clippy), build, then the whole test suite with the
//! built binaries' paths in REDIRECTOR_BIN, WS_ECHO_BIN and WS_CLIENT_BIN.

use anyhow::{Context as _, Result};

use crate::build::{self, workspace_root, Profile};
use crate::cli::TestArgs;
use crate::cmd::{heading, Cmd};
use crate::setup;

/// Built only for bpfel-unknown-none, by aya-build from redirector's build.rs. Clippy checks it
/// for the host like every member, but its test harness cannot link for the host
/// (`#![no_std]`, `#![no_main]`), which is also why it is not among the default-members.
const EBPF_PACKAGE: &str = "redirector-ebpf";

pub fn run(args: &TestArgs) -> Result<()> {
    setup::run().context("test step `setup` failed")?;

    heading("lint: rustfmt");
    Cmd::cargo()
        .args(["fmt", "--all", "--", "--check"])
        .current_dir(workspace_root())
        .run()
        .context("test step `lint: cargo fmt --check` failed; to fix: cargo fmt --all")?;

    heading("lint: clippy");
    Cmd::cargo()
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            EBPF_PACKAGE,
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"])
        .current_dir(workspace_root())
        .run()
        .context("test step `lint: cargo clippy` failed")?;

    let binaries = build::build_binaries(Profile::Release).context("test step `build` failed")?;

    heading("tests");
    Cmd::cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            EBPF_PACKAGE,
        ])
        .args(&args.cargo_test_args)
        .env("REDIRECTOR_BIN", &binaries.redirector)
        .env("WS_ECHO_BIN", &binaries.ws_echo)
        .env("WS_CLIENT_BIN", &binaries.ws_client)
        .current_dir(workspace_root())
        .run()
        .context("test step `cargo test` failed")?;

    heading("all test steps passed");
    Ok(())
}
