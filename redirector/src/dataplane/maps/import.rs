//! Filling fresh maps from the tables of a previous state format (`run` migrating a
//! persisted instance): flow entries into the table their state belongs in, and the
//! global counters index by index.

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use redirector_common::{
    conntrack::STATE_SYN_RECV,
    maps::{FlowKey, FlowValue, ESTABLISHED_MAP, HALF_OPEN_MAP, STATS_MAP},
    stats::Counter,
};

use super::{err, is_enoent, Maps, MapsError};

/// What [`Maps::import_flow`] did with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    /// Inserted into the established table (and counted for admission).
    Established,
    /// Inserted into the half-open table.
    HalfOpen,
    /// Moved from the half-open table to the established one: its handshake completed
    /// under the old program after the first copy.
    Promoted,
    /// Already there (copied before, or created by the new program): left alone.
    Present,
}

impl Maps {
    /// Copies one flow entry of a previous format's single table: a completed handshake
    /// into the established table (counted like an insertion by tooling), one still in
    /// its handshake into the half-open table. An entry the new tables already hold is
    /// left alone — the new program's copy is newer — except a half-open one whose
    /// handshake the old table shows complete, which is promoted.
    pub fn import_flow(&mut self, key: FlowKey, value: FlowValue) -> Result<Imported, MapsError> {
        let established: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(&self.established).map_err(err(ESTABLISHED_MAP))?;
        if present(&established, &key, ESTABLISHED_MAP)? {
            return Ok(Imported::Present);
        }
        let half_open: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(&self.half_open).map_err(err(HALF_OPEN_MAP))?;
        let was_half_open = present(&half_open, &key, HALF_OPEN_MAP)?;
        if value.state <= STATE_SYN_RECV {
            if was_half_open {
                return Ok(Imported::Present);
            }
            self.insert_flow(key, value)?;
            return Ok(Imported::HalfOpen);
        }
        self.insert_flow(key, value)?;
        if was_half_open {
            let mut half_open: HashMap<&mut MapData, FlowKey, FlowValue> =
                HashMap::try_from(&mut self.half_open).map_err(err(HALF_OPEN_MAP))?;
            match half_open.remove(&key) {
                Err(e) if !is_enoent(&e) => return Err(err(HALF_OPEN_MAP)(e)),
                _ => {}
            }
            return Ok(Imported::Promoted);
        }
        Ok(Imported::Established)
    }

    /// Adds every per-CPU counter of `old` (a previous format's STATS array, whose
    /// indices are a prefix of [`Counter::ALL`]: counters were only ever appended) to
    /// this STATS. Returns how many counters were copied.
    pub fn import_counters(&mut self, old: &Map) -> Result<u32, MapsError> {
        let old: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(old).map_err(err(STATS_MAP))?;
        let mut new: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(&mut self.stats).map_err(err(STATS_MAP))?;
        let count = old.len().min(Counter::COUNT);
        for index in 0..count {
            let old_values = old.get(&index, 0).map_err(err(STATS_MAP))?;
            let new_values = new.get(&index, 0).map_err(err(STATS_MAP))?;
            let summed: Vec<u64> = old_values
                .iter()
                .zip(new_values.iter())
                .map(|(a, b)| a.wrapping_add(*b))
                .collect();
            let values = aya::maps::PerCpuValues::try_from(summed)
                .map_err(|io_error| err(STATS_MAP)(MapError::IoError(io_error)))?;
            new.set(index, values, 0).map_err(err(STATS_MAP))?;
        }
        Ok(count)
    }
}

fn present(
    map: &HashMap<&MapData, FlowKey, FlowValue>,
    key: &FlowKey,
    name: &'static str,
) -> Result<bool, MapsError> {
    match map.get(key, 0) {
        Ok(_) => Ok(true),
        Err(e) if is_enoent(&e) => Ok(false),
        Err(e) => Err(err(name)(e)),
    }
}
