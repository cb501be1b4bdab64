//! Kernel memory of the conntrack tables, as the kernel accounts it: the `memlock` line
//! of `/proc/self/fdinfo/<map fd>` (since Linux 6.5 the map's actual usage,
//! `map_mem_usage`: buckets and locks, plus every element of a preallocated table or the
//! elements allocated so far of an on-demand one).
//!
//! `ESTABLISHED` allocates on demand (`BPF_F_NO_PREALLOC`), so its cost per flow is
//! measured, not divided out: memory of the empty table, then again after inserting
//! `entries` flows; the difference over `entries` is what one flow costs, and the empty
//! figure is the fixed cost of the capacity. `HALF_OPEN` (an LRU) is preallocated: its
//! memory does not change with use, and per entry is memory over `max_entries`.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use anyhow::{ensure, Context as _, Result};
use redirector::dataplane::Dataplane;
use redirector_common::maps::DEFAULT_CONNTRACK_SIZE;

use crate::{flows, report::MemoryRow};

/// Server address of the flows filled for the default table's measurement.
const SERVER: &str = "10.1.0.2";

/// What fdinfo says about one map.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// `max_entries`.
    pub max_entries: u32,
    /// `memlock`, bytes.
    pub memlock_bytes: u64,
}

/// The `ESTABLISHED` table's usage now.
pub fn established(dp: &Dataplane) -> Result<Usage> {
    usage(dp.maps().flows_fd()?)
}

/// An on-demand `ESTABLISHED` row: `empty` before and `full` after inserting `entries`.
pub fn on_demand_row(part: &'static str, empty: Usage, full: Usage, entries: u32) -> MemoryRow {
    MemoryRow {
        part,
        table: "established",
        allocation: "on_demand",
        max_entries: full.max_entries,
        empty_bytes: empty.memlock_bytes,
        entries,
        memlock_bytes: full.memlock_bytes,
        bytes_per_entry: full.memlock_bytes.saturating_sub(empty.memlock_bytes) as f64
            / f64::from(entries.max(1)),
    }
}

/// The tables of the default `--conntrack-size`, in a dataplane of their own: the empty
/// `ESTABLISHED` table (its fixed cost), the same after `entries` established flows (its
/// cost per flow), and the preallocated `HALF_OPEN` table.
pub fn default_tables(entries: u32) -> Result<Vec<MemoryRow>> {
    let mut dp = Dataplane::load(DEFAULT_CONNTRACK_SIZE).context("loading (are you root?)")?;
    let empty = established(&dp)?;
    let half_open = usage(dp.maps().half_open_fd()?)?;
    flows::fill(&mut dp, SERVER, entries)?;
    let full = established(&dp)?;
    let held = dp.maps().established_flows()?.len();
    ensure!(
        held == entries as usize,
        "the established table holds {held} flows after inserting {entries}"
    );
    eprintln!(
        "  default tables: established {} B empty, {} B with {entries} flows; half-open {} B",
        empty.memlock_bytes, full.memlock_bytes, half_open.memlock_bytes
    );
    Ok(vec![
        on_demand_row("default", empty, full, entries),
        MemoryRow {
            part: "default",
            table: "half_open",
            allocation: "preallocated",
            max_entries: half_open.max_entries,
            empty_bytes: half_open.memlock_bytes,
            entries: 0,
            memlock_bytes: half_open.memlock_bytes,
            bytes_per_entry: half_open.memlock_bytes as f64 / f64::from(half_open.max_entries),
        },
    ])
}

/// `max_entries` and `memlock` of the map behind `fd`.
fn usage(fd: BorrowedFd<'_>) -> Result<Usage> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(Usage {
        max_entries: field(&text, "max_entries").with_context(|| path.clone())?,
        memlock_bytes: field(&text, "memlock").with_context(|| path.clone())?,
    })
}

/// The value of the `name:\tvalue` line of an fdinfo file.
fn field<T: std::str::FromStr>(fdinfo: &str, name: &str) -> Result<T> {
    fdinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == name)
        .and_then(|(_, value)| value.trim().parse().ok())
        .with_context(|| format!("no numeric `{name}` line"))
}
