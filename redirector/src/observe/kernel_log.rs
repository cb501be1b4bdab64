//! The kernel side's log records (aya-log's `AYA_LOGS` ring: rare events such as a SYN
//! refused because the established table is full, at most one per kind per second per
//! CPU) drained into the `log` crate, at the level the kernel chose (warn).
//!
//! Only `run` drains: other users of [`Dataplane::load`] (benchmarks, tests) leave the
//! ring alone, and once it is full the kernel drops new records without blocking.

use std::os::fd::{AsRawFd, RawFd};

use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};

use crate::dataplane::Dataplane;

/// The kernel's log ring, flushed one last time when dropped (at the runtime's shutdown)
/// so that records written just before a stop are not lost.
struct Ring(EbpfLogger<&'static dyn log::Log>);

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Takes the kernel's log ring from `dp` and drains it on `runtime` until the runtime
/// shuts down. Logging is never worth failing for: any error is a warning, and the
/// dataplane runs on without its kernel log.
pub fn spawn(dp: &mut Dataplane, runtime: &tokio::runtime::Handle) {
    let logger = match dp.kernel_logger() {
        Ok(logger) => logger,
        Err(e) => {
            log::warn!("kernel log records unavailable: {e}");
            return;
        }
    };
    let _runtime = runtime.enter();
    // SAFETY: the fd is the ring map's, owned by the `MapData` inside the logger, which
    // the `AsyncFd` owns: it stays open, and `as_raw_fd` returns it, until it is dropped.
    match unsafe { AsyncFd::register_with_interest(Ring(logger), Interest::READABLE) } {
        Ok(ring) => {
            runtime.spawn(drain(ring));
        }
        Err(e) => log::warn!("kernel log records unavailable: {e}"),
    }
}

/// Logs every record as the ring becomes readable.
async fn drain(mut ring: AsyncFd<Ring>) {
    loop {
        let mut ready = match ring.readable_mut().await {
            Ok(ready) => ready,
            Err(e) => {
                log::warn!("reading the kernel's log records: {e}; no more are shown");
                return;
            }
        };
        // Cleared before reading, not after: the kernel wakes the reader only when a
        // record lands in a ring it had emptied, so a wakeup cleared after the last read
        // would leave the next records unread until yet another wakeup that never comes.
        ready.clear_ready();
        ready.get_inner_mut().0.flush();
    }
}
