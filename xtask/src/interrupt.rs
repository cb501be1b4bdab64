//! Ctrl-C (and SIGTERM/SIGHUP) during `demo` and `bench`: remembered instead of killing xtask, so that
//! waits stop early and the RAII teardown still runs; a second Ctrl-C exits at once.

use std::process;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _, Result};

use crate::netns::Link;

/// Set by the signal handler, cleared by `take`.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a process ended by SIGINT, by shell convention.
const EXIT_INTERRUPTED: i32 = 130;

/// Installs the handler for the verb `verb` that builds `link`; without it (setup, build,
/// test) Ctrl-C keeps its default effect.
pub fn install(verb: &'static str, link: &'static Link) -> Result<()> {
    ctrlc::set_handler(move || {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!(
                "\nsecond Ctrl-C: exiting without teardown; the next `cargo xtask {verb}` \
                 removes the leftovers, or: ip netns del {}; ip netns del {}",
                link.client.netns, link.server.netns
            );
            process::exit(EXIT_INTERRUPTED);
        }
        eprintln!("\nCtrl-C: stopping and tearing down (press again to exit at once)");
    })
    .context("could not install the Ctrl-C handler")
}

/// Whether Ctrl-C was pressed since the last `take`.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Consumes a pending Ctrl-C (used where Ctrl-C is the expected way to go on).
pub fn take() -> bool {
    REQUESTED.swap(false, Ordering::SeqCst)
}

/// Fails if Ctrl-C was pressed, to leave the current verb through its guards.
pub fn check() -> Result<()> {
    if requested() {
        bail!("interrupted by Ctrl-C");
    }
    Ok(())
}
