//! Kernel memory of the conntrack map, as the kernel accounts it: the `memlock` line of
//! `/proc/self/fdinfo/<map fd>` (since Linux 6.5 the map's actual usage, `map_mem_usage`:
//! preallocated elements, buckets and locks).

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result};
use redirector::dataplane::Dataplane;

use crate::report::MemoryRow;

/// Memory of the loaded FLOWS map.
pub fn flows(dp: &Dataplane) -> Result<MemoryRow> {
    let fd = dp.maps().flows_fd()?;
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let max_entries: u32 = field(&text, "max_entries").with_context(|| path.clone())?;
    let memlock_bytes: u64 = field(&text, "memlock").with_context(|| path.clone())?;
    Ok(MemoryRow {
        max_entries,
        memlock_bytes,
        bytes_per_flow: memlock_bytes as f64 / f64::from(max_entries),
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
