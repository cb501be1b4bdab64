//! The two conntrack tables — `HALF_OPEN` (LRU, handshakes) and `ESTABLISHED` (never
//! evicts) — and the `FLOW_COUNT` cells through which user space tells the kernel's
//! admission check about the established entries it removed or inserted.

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use redirector_common::{
    conntrack::STATE_SYN_RECV,
    maps::{
        established_count, FlowKey, FlowValue, ESTABLISHED_MAP, FLOW_COUNT_CONTROL,
        FLOW_COUNT_KERNEL, FLOW_COUNT_MAP, FLOW_COUNT_REAPER, HALF_OPEN_MAP,
    },
};

use super::{err, is_enoent, Maps, MapsError};
use crate::dataplane::batch;

/// Who removes established entries: each has its own `FLOW_COUNT` cell, so that two
/// processes never read-modify-write the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remover {
    /// The loader's reaper (the only one of its instance).
    Reaper,
    /// Control commands (`flush`, under the control lock) and tooling.
    Control,
}

impl Remover {
    fn cell(self) -> u32 {
        match self {
            Remover::Reaper => FLOW_COUNT_REAPER,
            Remover::Control => FLOW_COUNT_CONTROL,
        }
    }
}

/// Kernel memory of the two conntrack tables, as the kernel accounts it (`memlock` in
/// `/proc/self/fdinfo`: since Linux 6.5 the actual usage — buckets, preallocated or
/// allocated entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableMemory {
    /// `ESTABLISHED`: buckets plus one allocation per entry.
    pub established_bytes: u64,
    /// `HALF_OPEN`: preallocated (LRU maps always are).
    pub half_open_bytes: u64,
}

/// A failed batch command on a conntrack table, in aya's error type like every other.
fn batch_error(name: &'static str) -> impl FnOnce(std::io::Error) -> MapsError {
    move |io_error| {
        err(name)(MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_batch",
            io_error,
        }))
    }
}

/// The descriptor of a hash-map-typed table, or the typed view's error.
fn hash_fd<'a>(map: &'a Map, name: &'static str) -> Result<BorrowedFd<'a>, MapsError> {
    match map {
        Map::LruHashMap(data) | Map::HashMap(data) => Ok(data.fd().as_fd()),
        // Not a hash map at all: let the typed view say what it is instead.
        other => Err(err(name)(
            HashMap::<&MapData, FlowKey, FlowValue>::try_from(other)
                .err()
                .unwrap_or(MapError::InvalidMapType { map_type: 0 }),
        )),
    }
}

/// A snapshot of one table's entries (entries may change while it is taken).
fn table_flows(map: &Map, name: &'static str) -> Result<Vec<(FlowKey, FlowValue)>, MapsError> {
    match batch::lookup_all(hash_fd(map, name)?) {
        Ok(flows) => Ok(flows),
        // A kernel without batch commands for this map: walk it key by key, skipping
        // entries deleted between key iteration and lookup (KeyNotFound).
        Err(e) if batch::is_unsupported(&e) => {
            let map: HashMap<&MapData, FlowKey, FlowValue> =
                HashMap::try_from(map).map_err(err(name))?;
            Ok(map.iter().filter_map(Result::ok).collect())
        }
        Err(e) => Err(batch_error(name)(e)),
    }
}

/// Removes `key` from one table; false if it was not there.
fn remove_one(map: &mut Map, name: &'static str, key: &FlowKey) -> Result<bool, MapsError> {
    let mut map: HashMap<&mut MapData, FlowKey, FlowValue> =
        HashMap::try_from(map).map_err(err(name))?;
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(e) if is_enoent(&e) => Ok(false),
        Err(e) => Err(err(name)(e)),
    }
}

/// Removes `keys` from one table in batches (key by key where batches are unsupported),
/// skipping those already gone; returns how many were removed, also on failure.
fn remove_many(
    map: &mut Map,
    name: &'static str,
    keys: &[FlowKey],
) -> (usize, Result<(), MapsError>) {
    let fd = match hash_fd(map, name) {
        Ok(fd) => fd,
        Err(e) => return (0, Err(e)),
    };
    match batch::delete_all(fd, keys) {
        (0, Err(e)) if batch::is_unsupported(&e) => {
            let mut removed = 0;
            for key in keys {
                match remove_one(map, name, key) {
                    Ok(true) => removed += 1,
                    Ok(false) => {}
                    Err(e) => return (removed, Err(e)),
                }
            }
            (removed, Ok(()))
        }
        (removed, result) => (removed, result.map_err(batch_error(name))),
    }
}

/// The `memlock` line of `/proc/self/fdinfo/<fd>`.
fn memlock_bytes(fd: BorrowedFd<'_>, name: &'static str) -> Result<u64, MapsError> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).map_err(|io_error| {
        err(name)(MapError::SyscallError(aya::sys::SyscallError {
            call: "read fdinfo",
            io_error,
        }))
    })?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == "memlock")
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0))
}

impl Maps {
    /// A snapshot of every tracked flow, established ones first (entries may change, or
    /// move from half-open to established, while it is taken).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, MapsError> {
        let mut flows = self.established_flows()?;
        flows.extend(self.half_open_flows()?);
        Ok(flows)
    }

    /// A snapshot of the established table.
    pub fn established_flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, MapsError> {
        table_flows(&self.established, ESTABLISHED_MAP)
    }

    /// A snapshot of the half-open table.
    pub fn half_open_flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, MapsError> {
        table_flows(&self.half_open, HALF_OPEN_MAP)
    }

    /// Removes the flow entries `keys` from both tables, skipping those already gone
    /// (closed meanwhile), and tells the kernel's admission count how many established
    /// ones `remover` removed. Returns how many were removed, also when it then fails
    /// (they are gone all the same).
    pub fn remove_flows(
        &mut self,
        keys: &[FlowKey],
        remover: Remover,
    ) -> (usize, Result<(), MapsError>) {
        let (established, result) = remove_many(&mut self.established, ESTABLISHED_MAP, keys);
        let counted = self.add_to_flow_count(remover, established as u64);
        let (half_open, half_result) = remove_many(&mut self.half_open, HALF_OPEN_MAP, keys);
        (
            established + half_open,
            result.and(counted).and(half_result),
        )
    }

    /// The established table's descriptor, for tooling that reads what the kernel reports
    /// about it in `/proc/self/fdinfo/<fd>` (`max_entries`, `memlock`: its memory use).
    pub fn flows_fd(&self) -> Result<BorrowedFd<'_>, MapsError> {
        hash_fd(&self.established, ESTABLISHED_MAP)
    }

    /// The half-open table's descriptor (see [`Maps::flows_fd`]).
    pub fn half_open_fd(&self) -> Result<BorrowedFd<'_>, MapsError> {
        hash_fd(&self.half_open, HALF_OPEN_MAP)
    }

    /// Kernel memory of both tables.
    pub fn table_memory(&self) -> Result<TableMemory, MapsError> {
        Ok(TableMemory {
            established_bytes: memlock_bytes(self.flows_fd()?, ESTABLISHED_MAP)?,
            half_open_bytes: memlock_bytes(self.half_open_fd()?, HALF_OPEN_MAP)?,
        })
    }

    /// Inserts a flow entry directly (tests and tooling): into the established table if
    /// its handshake is complete (counted for admission, as `Remover::Control`), else
    /// into the half-open one.
    pub fn insert_flow(&mut self, key: FlowKey, value: FlowValue) -> Result<(), MapsError> {
        if value.state <= STATE_SYN_RECV {
            let mut map: HashMap<&mut MapData, FlowKey, FlowValue> =
                HashMap::try_from(&mut self.half_open).map_err(err(HALF_OPEN_MAP))?;
            return map.insert(key, value, 0).map_err(err(HALF_OPEN_MAP));
        }
        let mut map: HashMap<&mut MapData, FlowKey, FlowValue> =
            HashMap::try_from(&mut self.established).map_err(err(ESTABLISHED_MAP))?;
        let new = map.get(&key, 0).is_err();
        map.insert(key, value, 0).map_err(err(ESTABLISHED_MAP))?;
        if new {
            // One more established entry: one fewer removed.
            self.add_to_flow_count(Remover::Control, u64::MAX)?;
        }
        Ok(())
    }

    /// Removes a flow entry from whichever table holds it; returns false if it was in
    /// neither (it may have just closed), which is not an error.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, MapsError> {
        let (removed, result) = self.remove_flows(std::slice::from_ref(key), Remover::Control);
        result.map(|()| removed > 0)
    }

    /// Established flows as the kernel's admission check counts them (may run ahead of
    /// the table by removals in flight).
    pub fn established_count(&self) -> Result<i64, MapsError> {
        let cells: Array<&MapData, u64> =
            Array::try_from(&self.flow_count).map_err(err(FLOW_COUNT_MAP))?;
        let cell = |index| cells.get(&index, 0).map_err(err(FLOW_COUNT_MAP));
        Ok(established_count(
            cell(FLOW_COUNT_KERNEL)?,
            cell(FLOW_COUNT_REAPER)?,
            cell(FLOW_COUNT_CONTROL)?,
        ))
    }

    /// Adds `n` (wrapping) to `remover`'s cell. Callers serialise per cell: the reaper is
    /// alone in its loader, control commands hold the control lock.
    fn add_to_flow_count(&mut self, remover: Remover, n: u64) -> Result<(), MapsError> {
        if n == 0 {
            return Ok(());
        }
        let mut cells: Array<&mut MapData, u64> =
            Array::try_from(&mut self.flow_count).map_err(err(FLOW_COUNT_MAP))?;
        let index = remover.cell();
        let value = cells.get(&index, 0).map_err(err(FLOW_COUNT_MAP))?;
        cells
            .set(index, value.wrapping_add(n), 0)
            .map_err(err(FLOW_COUNT_MAP))
    }
}
