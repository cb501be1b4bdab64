//! `unit-sandbox`: runs a program under the sandbox of a systemd unit, as far as this
//! machine allows without systemd as PID 1, for tests/tests/unit_sandbox.rs.
//!
//! Two stages, each exec'ing the next program:
//!
//! - `unit-sandbox mounts …  -- PROGRAM …`: as root, enters a test's network namespace,
//!   opens a private mount namespace with that namespace's /sys (keeping the host's bpffs
//!   and cgroup mounts), applies the unit's read-only, read-write, private and
//!   inaccessible paths, `LimitMEMLOCK=` and `UMask=`;
//! - `unit-sandbox seccomp … -- PROGRAM …`: installs the unit's seccomp filters (the
//!   system-call allow-list with its error number, native architecture only, the address
//!   families, W^X mappings, namespaces).
//!
//! Between the two the caller runs `setpriv` for the capability set and
//! `no_new_privs`, so that, as under systemd, the filter is installed last, right before
//! the service's own exec. After the filter, entering a namespace or mounting would be
//! denied, which is why the mount stage comes first and enters the network namespace
//! itself instead of running under `ip netns exec`.

mod mounts;
mod seccomp;

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Runs a program under a systemd unit's sandbox (test tool)")]
struct Args {
    #[command(subcommand)]
    stage: Stage,
}

#[derive(Subcommand)]
enum Stage {
    /// Network namespace, private mount namespace and the unit's mount protections.
    Mounts {
        #[command(flatten)]
        plan: mounts::Plan,
        /// The program to exec, and its arguments.
        #[arg(last = true, required = true)]
        program: Vec<OsString>,
    },
    /// The unit's seccomp filters.
    Seccomp {
        #[command(flatten)]
        plan: seccomp::Plan,
        /// The program to exec, and its arguments.
        #[arg(last = true, required = true)]
        program: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.stage {
        Stage::Mounts { plan, program } => mounts::apply(&plan).and_then(|()| exec(&program)),
        Stage::Seccomp { plan, program } => seccomp::apply(&plan).and_then(|()| exec(&program)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("unit-sandbox: error: {err:#}");
            ExitCode::from(125)
        }
    }
}

/// Replaces this process with `program` (returns only on failure).
fn exec(program: &[OsString]) -> Result<()> {
    let (name, args) = program.split_first().context("no program to run")?;
    let err = Command::new(name).args(args).exec();
    Err(err).with_context(|| format!("exec {}", name.to_string_lossy()))
}
