//! `cargo xtask bench`: build, then the benchmark harness of the redirector-bench crate
//! (bench/), which does the rest.

use anyhow::Result;
use redirector_bench::{BenchArgs, BENCH};
use testkit::interrupt;

use crate::build::{self, Profile};

/// Installs the Ctrl-C handler (teardown of the benchmark's namespaces), builds, then runs it.
pub fn run(args: &BenchArgs) -> Result<()> {
    interrupt::install("bench", [BENCH.client.netns, BENCH.server.netns])?;
    let binaries = build::run(Profile::Release)?;
    redirector_bench::run_with(&binaries.for_bench(), args)
}
