//! Step 4 of `run`: unpin (or, with `--persist`, leave pinned), detach, and report the
//! final counters.

use std::{fmt, sync::Arc};

use redirector::observe::stats::Snapshot;
use redirector_sniff::counters::Counters;

use super::start::Loaded;

/// What `run` prints when it stops.
pub struct Report {
    ifaces: Vec<String>,
    /// The instance steered sockets: its program was on the network namespace.
    steering: bool,
    persist: bool,
    snapshot: Snapshot,
    sniff_counters: Option<Arc<Counters>>,
    sniff_died: bool,
}

impl Loaded {
    /// Takes the instance down: the proxy's counters file goes, the pins go unless
    /// persisted, then the programs are detached (the persisted ones stay, held by their
    /// pinned links) and the interface locks released.
    pub fn stop(self) -> anyhow::Result<Report> {
        // The proxy stops with the process, persisted or not: its counters file goes.
        drop(self.sniff_publisher);
        if self.persist {
            // The pinned links keep the programs attached, the pinned maps their state.
            self.pinned.keep();
        } else {
            // Unpin first, so control commands stop finding a stopping instance (also an
            // adopted one: this loader's stop without --persist removes it for good).
            self.pinned.remove();
        }
        // Rules may have changed at runtime: the snapshot reads them from the RULES map.
        let snapshot = Snapshot::read(self.dp.maps())?;
        drop(self.dp); // Detaches every program it still owns and closes the maps.
        drop(self.locks);
        Ok(Report {
            steering: self.steering.is_some(),
            ifaces: self.ifaces,
            persist: self.persist,
            snapshot,
            sniff_counters: self.sniff_counters,
            sniff_died: self.sniff_died,
        })
    }
}

impl Report {
    /// The sniffing proxy's process exited while the loader served (the loader then
    /// stopped, and exits with an error).
    pub fn sniff_died(&self) -> bool {
        self.sniff_died
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ifaces = if self.steering {
            "the network namespace (socket steering)".to_string()
        } else {
            self.ifaces.join(", ")
        };
        if self.persist {
            writeln!(
                f,
                "redirector stopped: programs left attached to {ifaces} (--persist; `redirector detach` removes them)"
            )?;
        } else {
            writeln!(f, "redirector stopped: programs detached from {ifaces}")?;
        }
        write!(f, "{}", self.snapshot)?;
        if let Some(counters) = &self.sniff_counters {
            writeln!(f, "redirector sniff stopped")?;
            write!(f, "{counters}")?;
        }
        Ok(())
    }
}
