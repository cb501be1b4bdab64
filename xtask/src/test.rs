//! `cargo xtask test`: setup, lint (rustfmt, clippy on the host crates and on the eBPF crate
//! for its BPF target), build, the OCI image (`cargo xtask image`, a few seconds once the
//! binary is built), the Debian packages (`cargo xtask deb`, lintian included, and the same
//! build as a higher version for the upgrade test), then the whole test suite with the
//! built binaries' paths in REDIRECTOR_BIN, WS_ECHO_BIN, WS_CLIENT_BIN, WSLOAD_BIN,
//! KERNEL_BENCH_BIN, SYN_FLOOD_BIN, TCP_SPOOF_BIN and UNIT_SANDBOX_BIN, the image's name in REDIRECTOR_IMAGE,
//! the packages in
//! REDIRECTOR_DEB and REDIRECTOR_DEB_NEXT and the manifests' validator in
//! KUBERNETES_VALIDATE_BIN, then a bounded run of each fuzz target of redirector-sniff/fuzz,
//! then the benchmark's smoke run.

use anyhow::{Context as _, Result};

use redirector_bench::BenchArgs;
use testkit::cmd::{heading, Cmd};

use crate::build::{self, workspace_root, Binaries, Profile};
use crate::cli::TestArgs;
use crate::{deb, image, setup};

/// Built only for bpfel-unknown-none, by aya-build from redirector's build.rs. For the host it
/// neither links (`cargo test`) nor reliably checks (`cargo clippy --all-targets`: the test
/// harness's std clashes with its `#[panic_handler]`), which is also why it is not among the
/// workspace's default-members; `--workspace` alone would pull it in.
const EBPF_PACKAGE: &str = "redirector-ebpf";

/// The cargo-fuzz targets in redirector-sniff/fuzz (the sniffing proxy's detectors).
const FUZZ_TARGETS: &[&str] = &["detect", "sni"];
/// How long each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS_PER_TARGET: u32 = 20;

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

    heading("lint: clippy (eBPF, bpfel-unknown-none)");
    // The eBPF crate only builds with the nightly toolchain and core from source, as
    // aya-build builds it; warnings there fail the step like anywhere else.
    Cmd::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            EBPF_PACKAGE,
        ])
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--", "-D", "warnings"])
        .current_dir(workspace_root())
        .run()
        .context("test step `lint: cargo clippy (eBPF)` failed")?;

    let binaries = build::build_binaries(Profile::Release).context("test step `build` failed")?;
    let image = image::build_image(&binaries.redirector).context("test step `image` failed")?;
    let kubernetes_validate = setup::kubernetes_validate()?;
    let debs = deb::test_packages(&binaries.redirector).context("test step `deb` failed")?;

    heading("tests");
    let mut totals = TestTotals::default();
    let tests = Cmd::cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            EBPF_PACKAGE,
            // Every suite runs even after one fails: one run lists every failure.
            "--no-fail-fast",
        ])
        .args(&args.cargo_test_args)
        .env("REDIRECTOR_BIN", &binaries.redirector)
        .env("WS_ECHO_BIN", &binaries.ws_echo)
        .env("WS_CLIENT_BIN", &binaries.ws_client)
        .env("WSLOAD_BIN", &binaries.wsload)
        .env("KERNEL_BENCH_BIN", &binaries.kernel_bench)
        .env("SYN_FLOOD_BIN", &binaries.syn_flood)
        .env("TCP_SPOOF_BIN", &binaries.tcp_spoof)
        .env("UNIT_SANDBOX_BIN", &binaries.unit_sandbox)
        .env("REDIRECTOR_IMAGE", &image.name)
        .env("REDIRECTOR_DEB", &debs.0)
        .env("REDIRECTOR_DEB_NEXT", &debs.1)
        .env("KUBERNETES_VALIDATE_BIN", &kubernetes_validate)
        .current_dir(workspace_root())
        .run_tee(|line| totals.add(line));
    let result = tests
        .context("test step `cargo test` failed")
        .and_then(|()| fuzz())
        .and_then(|()| bench_smoke(&binaries));
    if result.is_ok() {
        heading("all test steps passed");
    }
    // Last, whatever happened: the summary line CI reads.
    totals.print();
    result
}

/// `cargo xtask bench --smoke`, so the benchmark harness never rots: every configuration
/// and load must produce a figure (the figures themselves are not judged). Its result files
/// go under target/, not bench/results/.
fn bench_smoke(binaries: &Binaries) -> Result<()> {
    heading("bench: smoke (harness check, figures not judged)");
    let args = BenchArgs {
        smoke: true,
        out: Some(workspace_root().join("target").join("bench-smoke")),
        ..BenchArgs::default()
    };
    redirector_bench::run_with(&binaries.for_bench(), &args)
        .context("test step `bench --smoke` failed")
}

/// Runs each fuzz target for a bounded time; a crash (a panic, a failed invariant) fails
/// the step, and libFuzzer leaves the input under redirector-sniff/fuzz/artifacts.
fn fuzz() -> Result<()> {
    let fuzz_dir = workspace_root().join("redirector-sniff").join("fuzz");
    for target in FUZZ_TARGETS {
        heading(format_args!("fuzz: {target} ({FUZZ_SECONDS_PER_TARGET} s)"));
        Cmd::cargo()
            .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg(target)
            .arg("--")
            .arg(format!("-max_total_time={FUZZ_SECONDS_PER_TARGET}"))
            .current_dir(workspace_root())
            .run()
            .with_context(|| {
                format!(
                    "test step `fuzz {target}` failed; the crashing input is in {}/artifacts/{target} \
                     (reproduce: cargo +nightly fuzz run --fuzz-dir {} {target} <that file>)",
                    fuzz_dir.display(),
                    fuzz_dir.display()
                )
            })?;
    }
    Ok(())
}

/// Tests counted over every `test result:` line of `cargo test`.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    /// Adds the counts of a libtest summary line such as
    /// `test result: ok. 10 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`.
    fn add(&mut self, line: &str) {
        let Some(summary) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in summary.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }

    /// The last line of the run, in the plain `N passed, N failed` form: doc-test sections
    /// that run nothing come last in cargo's output and must not read as "no tests ran".
    fn print(&self) {
        println!("tests: {} passed, {} failed", self.passed, self.failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_every_summary_line() {
        let mut totals = TestTotals::default();
        for line in [
            "test result: ok. 10 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "running 3 tests",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.53s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            totals.add(line);
        }
        assert_eq!(
            totals,
            TestTotals {
                passed: 12,
                failed: 1
            }
        );
    }
}
