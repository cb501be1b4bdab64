//! Ctrl-C (and SIGTERM/SIGHUP) during `cargo xtask demo` and `bench`: remembered instead of
//! killing the process, so that waits stop early and the RAII teardown still runs; a second
//! Ctrl-C exits at once.

use std::process;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the signal handler, cleared by `take`.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a process ended by SIGINT, by shell convention.
const EXIT_INTERRUPTED: i32 = 130;

/// The handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("could not install the Ctrl-C handler")]
pub struct InstallError(#[source] ctrlc::Error);

/// Ctrl-C was pressed: the current verb leaves through its guards.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by Ctrl-C")]
pub struct Interrupted;

/// Installs the handler for the xtask verb `verb`, which creates the network namespaces
/// `netns` (named in the hint of a second Ctrl-C); without it (setup, build, test) Ctrl-C
/// keeps its default effect.
pub fn install(verb: &'static str, netns: [&'static str; 2]) -> Result<(), InstallError> {
    ctrlc::set_handler(move || {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!(
                "\nsecond Ctrl-C: exiting without teardown; the next `cargo xtask {verb}` \
                 removes the leftovers, or: ip netns del {}; ip netns del {}",
                netns[0], netns[1]
            );
            process::exit(EXIT_INTERRUPTED);
        }
        eprintln!("\nCtrl-C: stopping and tearing down (press again to exit at once)");
    })
    .map_err(InstallError)
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
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        return Err(Interrupted);
    }
    Ok(())
}
