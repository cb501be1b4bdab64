//! The two conntrack tables as operators see them: fill, admissions refused, memory
//! (`status`), and the loader's warnings when the established table fills up.

use std::time::{Duration, Instant};

use redirector_common::{maps::half_open_size, stats::Counter};
use serde::Serialize;

use crate::dataplane::maps::{Maps, MapsError};

/// Fill levels (percent of `--conntrack-size`) at which the loader warns.
pub const WARN_LEVELS: [u64; 2] = [80, 95];
/// A level is left only this many points below it, so a table hovering at 80 % does not
/// warn every second.
const HYSTERESIS: u64 = 5;
/// At most one "table full" warning per this interval.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Fill and memory of the two tables, part of `status --json`'s `conntrack`.
#[derive(Debug, Serialize)]
pub struct TablesJson {
    /// Flows in the established table (never evicted).
    pub established: usize,
    /// Flows in the half-open table (handshake not complete).
    pub half_open: usize,
    /// Size of the half-open table (an LRU of handshakes).
    pub half_open_size: u32,
    /// Flows promoted from half-open to established since start.
    pub promoted: u64,
    /// New connections not redirected because the established table was full.
    pub refused_full: u64,
    /// Kernel memory of the established table (buckets + one allocation per entry).
    pub established_memory_bytes: u64,
    /// Kernel memory of the half-open table (preallocated).
    pub half_open_memory_bytes: u64,
}

impl TablesJson {
    /// Reads the tables of `maps`, whose established capacity is `capacity`.
    pub fn read(
        maps: &Maps,
        capacity: u32,
        counters: &[u64; Counter::COUNT as usize],
    ) -> Result<Self, MapsError> {
        let memory = maps.table_memory()?;
        Ok(TablesJson {
            established: maps.established_flows()?.len(),
            half_open: maps.half_open_flows()?.len(),
            half_open_size: half_open_size(capacity),
            promoted: counters[Counter::FlowPromoted as usize],
            refused_full: counters[Counter::PassTableFull as usize],
            established_memory_bytes: memory.established_bytes,
            half_open_memory_bytes: memory.half_open_bytes,
        })
    }
}

/// The warning level (0 or one of [`WARN_LEVELS`]) for `count` established flows out of
/// `capacity`, coming from level `previous`.
pub fn fill_level(count: u64, capacity: u32, previous: u64) -> u64 {
    let percent = count.saturating_mul(100) / u64::from(capacity.max(1));
    let mut level = 0;
    for threshold in WARN_LEVELS {
        // A level reached before is kept until the fill drops HYSTERESIS points below it.
        let floor = if threshold <= previous {
            threshold.saturating_sub(HYSTERESIS)
        } else {
            threshold
        };
        if percent >= floor {
            level = threshold;
        }
    }
    level
}

/// Watches the established table's fill from the loader, logging warnings at 80 % and
/// 95 % and (rate-limited) when new connections were refused because it was full.
#[derive(Debug)]
pub struct FillWatch {
    capacity: u32,
    level: u64,
    refused_warned: u64,
    last_full_warning: Option<Instant>,
}

impl FillWatch {
    /// A watch for an established capacity of `capacity` (`--conntrack-size`).
    pub fn new(capacity: u32) -> Self {
        FillWatch {
            capacity,
            level: 0,
            refused_warned: 0,
            last_full_warning: None,
        }
    }

    /// Reads the count and the refusals, and logs what changed.
    pub fn check(&mut self, maps: &Maps) -> Result<(), MapsError> {
        let count = maps.established_count()?.max(0) as u64;
        let level = fill_level(count, self.capacity, self.level);
        if level > self.level {
            log::warn!(
                "established flow table {level}% full ({count} of {} flows); new connections \
                 will not be redirected once it is full: raise --conntrack-size",
                self.capacity
            );
        } else if level < self.level {
            log::info!(
                "established flow table below {}% again ({count} of {} flows)",
                self.level,
                self.capacity
            );
        }
        self.level = level;
        let refused = maps.counters()?[Counter::PassTableFull as usize];
        let due = self
            .last_full_warning
            .is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL);
        if refused > self.refused_warned && due {
            log::warn!(
                "established flow table full: {} new connections not redirected (passed \
                 untouched, counter pass_table_full); raise --conntrack-size (now {})",
                refused - self.refused_warned,
                self.capacity
            );
            self.refused_warned = refused;
            self.last_full_warning = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_rise_at_80_and_95_and_fall_with_hysteresis() {
        assert_eq!(fill_level(79, 100, 0), 0);
        assert_eq!(fill_level(80, 100, 0), 80);
        assert_eq!(fill_level(96, 100, 0), 95);
        // Hovering just under a level keeps it; well under leaves it.
        assert_eq!(fill_level(77, 100, 80), 80);
        assert_eq!(fill_level(74, 100, 80), 0);
        assert_eq!(fill_level(92, 100, 95), 95);
        assert_eq!(fill_level(89, 100, 95), 80);
        assert_eq!(fill_level(5, 0, 0), 95, "a zero capacity is full");
    }
}
