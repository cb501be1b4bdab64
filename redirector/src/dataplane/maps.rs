//! Typed access to the redirector's maps, whether owned by a loaded object or opened
//! from their pins by another process (`redirector status`, `enable`, …).

use std::path::Path;

use aya::maps::{
    lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
};
use redirector_common::{
    maps::{
        Config, Rule, RuleStats, ALLOW_MAP, CONFIG_F_FILTER_SOURCES, CONFIG_MAP, ESTABLISHED_MAP,
        FLOW_COUNT_MAP, HALF_OPEN_MAP, RULES_MAP, RULE_STATS_MAP, STATS_MAP,
    },
    stats::Counter,
};

use crate::{
    rules::{RedirectRule, RuleSlots},
    source_filter::SourcePrefix,
};

mod flows;
mod import;
pub use flows::{Remover, TableMemory};
pub use import::Imported;

/// Every map that `redirector run` pins, by name (the pin file is named after the map).
pub const PINNED_MAPS: [&str; 8] = [
    RULES_MAP,
    HALF_OPEN_MAP,
    ESTABLISHED_MAP,
    FLOW_COUNT_MAP,
    ALLOW_MAP,
    CONFIG_MAP,
    STATS_MAP,
    RULE_STATS_MAP,
];

/// The maps whose layout state format 2 (the previous release) shares with today's:
/// a migration from it reuses them, with their rules, allow list and rule counters.
/// (Its FLOWS table is copied into the two flow tables; its STATS, three counters
/// shorter, is copied index by index.)
pub const KEPT_ON_MIGRATION: [&str; 4] = [RULES_MAP, ALLOW_MAP, CONFIG_MAP, RULE_STATS_MAP];

/// A map operation failed.
#[derive(Debug, thiserror::Error)]
#[error("eBPF map `{name}`")]
pub struct MapsError {
    /// Map name.
    pub name: &'static str,
    /// Cause.
    #[source]
    pub source: MapError,
}

/// Summed (over CPUs) counters of one rule.
pub type RuleCounters = RuleStats;

fn err(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError { name, source }
}

fn missing(name: &'static str) -> MapsError {
    MapsError {
        name,
        source: MapError::InvalidName {
            name: name.to_string(),
        },
    }
}

fn is_enoent(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
        || matches!(e, MapError::KeyNotFound)
}

/// The eight maps of one redirector instance.
pub struct Maps {
    rules: Map,
    half_open: Map,
    established: Map,
    flow_count: Map,
    allow: Map,
    config: Map,
    stats: Map,
    rule_stats: Map,
}

impl Maps {
    /// Takes the maps out of a loaded object (its programs keep their own references).
    pub fn take_from(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        let mut take = |name| ebpf.take_map(name).ok_or_else(|| missing(name));
        Ok(Maps {
            rules: take(RULES_MAP)?,
            half_open: take(HALF_OPEN_MAP)?,
            established: take(ESTABLISHED_MAP)?,
            flow_count: take(FLOW_COUNT_MAP)?,
            allow: take(ALLOW_MAP)?,
            config: take(CONFIG_MAP)?,
            stats: take(STATS_MAP)?,
            rule_stats: take(RULE_STATS_MAP)?,
        })
    }

    /// Opens the maps pinned in `dir` (one file per map, named after it).
    pub fn from_pins(dir: &Path) -> Result<Self, MapsError> {
        let open = |name: &'static str| {
            MapData::from_pin(dir.join(name))
                .and_then(Map::from_map_data)
                .map_err(err(name))
        };
        Ok(Maps {
            rules: open(RULES_MAP)?,
            half_open: open(HALF_OPEN_MAP)?,
            established: open(ESTABLISHED_MAP)?,
            flow_count: open(FLOW_COUNT_MAP)?,
            allow: open(ALLOW_MAP)?,
            config: open(CONFIG_MAP)?,
            stats: open(STATS_MAP)?,
            rule_stats: open(RULE_STATS_MAP)?,
        })
    }

    /// Pins every map into `dir` (which must exist on a bpffs).
    pub fn pin(&self, dir: &Path) -> Result<(), MapsError> {
        for (name, map) in [
            (RULES_MAP, &self.rules),
            (HALF_OPEN_MAP, &self.half_open),
            (ESTABLISHED_MAP, &self.established),
            (FLOW_COUNT_MAP, &self.flow_count),
            (ALLOW_MAP, &self.allow),
            (CONFIG_MAP, &self.config),
            (STATS_MAP, &self.stats),
            (RULE_STATS_MAP, &self.rule_stats),
        ] {
            map.pin(dir.join(name)).map_err(|e| {
                err(name)(MapError::PinError {
                    name: Some(name.to_string()),
                    error: e,
                })
            })?;
        }
        Ok(())
    }

    fn rules_map(&mut self) -> Result<HashMap<&mut MapData, u16, Rule>, MapsError> {
        HashMap::try_from(&mut self.rules).map_err(err(RULES_MAP))
    }

    /// Installs the first rules of an instance (enabled), with the slots
    /// [`RuleSlots::assign`] gives them.
    pub fn set_rules(&mut self, rules: &[RedirectRule]) -> Result<(), MapsError> {
        for (rule, slot) in RuleSlots::default().assign(rules) {
            self.insert_rule(rule, slot)?;
        }
        Ok(())
    }

    /// Inserts (or replaces) the enabled rule `rule` with counters in `slot`.
    pub fn insert_rule(&mut self, rule: RedirectRule, slot: u32) -> Result<(), MapsError> {
        let value = Rule {
            to_port: rule.to_port,
            _pad: 0,
            enabled: 1,
            slot,
        };
        self.rules_map()?
            .insert(rule.from_port, value, 0)
            .map_err(err(RULES_MAP))
    }

    /// Removes the rule on `from_port`; returns false if there was none.
    pub fn remove_rule(&mut self, from_port: u16) -> Result<bool, MapsError> {
        match self.rules_map()?.remove(&from_port) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(err(RULES_MAP)(e)),
        }
    }

    /// Every rule: FROM port and value, ordered by counter slot.
    pub fn rules(&self) -> Result<Vec<(u16, Rule)>, MapsError> {
        let map: HashMap<&MapData, u16, Rule> =
            HashMap::try_from(&self.rules).map_err(err(RULES_MAP))?;
        let mut rules: Vec<(u16, Rule)> = map.iter().filter_map(Result::ok).collect();
        rules.sort_by_key(|(_, rule)| rule.slot);
        Ok(rules)
    }

    /// Enables or disables new-flow redirection for the rule on `from_port`; returns false
    /// if there is no such rule.
    pub fn set_rule_enabled(&mut self, from_port: u16, enabled: bool) -> Result<bool, MapsError> {
        let mut map = self.rules_map()?;
        let mut rule = match map.get(&from_port, 0) {
            Ok(rule) => rule,
            Err(e) if is_enoent(&e) => return Ok(false),
            Err(e) => return Err(err(RULES_MAP)(e)),
        };
        rule.enabled = u32::from(enabled);
        map.insert(from_port, rule, 0).map_err(err(RULES_MAP))?;
        Ok(true)
    }

    /// Restricts flow creation to sources in `prefixes`; an empty list allows every source.
    pub fn set_allowed_sources(&mut self, prefixes: &[SourcePrefix]) -> Result<(), MapsError> {
        {
            let mut trie = self.allow_trie()?;
            for prefix in prefixes {
                let (len, addr) = prefix.lpm_key();
                trie.insert(&Key::new(len, addr), 1, 0)
                    .map_err(err(ALLOW_MAP))?;
            }
        }
        self.set_filtering(!prefixes.is_empty())
    }

    fn allow_trie(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 16], u32>, MapsError> {
        LpmTrie::try_from(&mut self.allow).map_err(err(ALLOW_MAP))
    }

    fn set_filtering(&mut self, on: bool) -> Result<(), MapsError> {
        let mut config: Array<&mut MapData, Config> =
            Array::try_from(&mut self.config).map_err(err(CONFIG_MAP))?;
        let flags = if on { CONFIG_F_FILTER_SOURCES } else { 0 };
        config.set(0, Config { flags }, 0).map_err(err(CONFIG_MAP))
    }

    /// True if only sources in the allow list may create flows (else every source may).
    pub fn filtering_sources(&self) -> Result<bool, MapsError> {
        let config: Array<&MapData, Config> =
            Array::try_from(&self.config).map_err(err(CONFIG_MAP))?;
        let value = config.get(&0, 0).map_err(err(CONFIG_MAP))?;
        Ok(value.flags & CONFIG_F_FILTER_SOURCES != 0)
    }

    /// The allow list, sorted (IPv4 first, then by address and length).
    pub fn allowed_sources(&self) -> Result<Vec<SourcePrefix>, MapsError> {
        let trie: LpmTrie<&MapData, [u8; 16], u32> =
            LpmTrie::try_from(&self.allow).map_err(err(ALLOW_MAP))?;
        let mut prefixes: Vec<SourcePrefix> = trie
            .keys()
            .filter_map(Result::ok)
            .filter_map(|key| SourcePrefix::from_lpm_key(key.prefix_len(), key.data()))
            .collect();
        prefixes.sort_by_key(|p| p.lpm_key().1);
        Ok(prefixes)
    }

    /// Adds `prefix` to the allow list and turns source filtering on (if it was off, only
    /// `prefix` is allowed from now on); returns false if it was listed already.
    pub fn allow_source(&mut self, prefix: SourcePrefix) -> Result<bool, MapsError> {
        // An LPM lookup matches covering prefixes too: compare exact keys instead.
        let listed = self.allowed_sources()?.contains(&prefix);
        if !listed {
            let (len, addr) = prefix.lpm_key();
            self.allow_trie()?
                .insert(&Key::new(len, addr), 1, 0)
                .map_err(err(ALLOW_MAP))?;
        }
        self.set_filtering(true)?;
        Ok(!listed)
    }

    /// Removes `prefix` (exactly as listed) from the allow list; returns false if it was not
    /// listed. Filtering stays on: removing the last prefix allows no source at all.
    pub fn disallow_source(&mut self, prefix: SourcePrefix) -> Result<bool, MapsError> {
        let (len, addr) = prefix.lpm_key();
        match self.allow_trie()?.remove(&Key::new(len, addr)) {
            Ok(()) => Ok(true),
            Err(e) if is_enoent(&e) => Ok(false),
            Err(e) => Err(err(ALLOW_MAP)(e)),
        }
    }

    /// Global counters summed over CPUs, indexed like `Counter::ALL`.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], MapsError> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(&self.stats).map_err(err(STATS_MAP))?;
        let mut out = [0u64; Counter::COUNT as usize];
        // A STATS pinned by an older loader (adopted) is shorter: its missing counters,
        // which that map cannot count, read as zero.
        let len = self.stats_len()? as usize;
        for (i, slot) in out.iter_mut().enumerate().take(len) {
            let per_cpu = map.get(&(i as u32), 0).map_err(err(STATS_MAP))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Number of counters the STATS map holds: [`Counter::COUNT`], or fewer in a map pinned
    /// by an older loader (counters are only ever appended).
    pub fn stats_len(&self) -> Result<u32, MapsError> {
        // The kernel's size, not the object's: a map reused through its pin keeps the
        // object file's definition in aya, whatever size the pinned map has.
        let data = match &self.stats {
            Map::PerCpuArray(data) => data,
            _ => return Err(err(STATS_MAP)(MapError::InvalidMapType { map_type: 0 })),
        };
        let info = data.info().map_err(err(STATS_MAP))?;
        Ok(info.max_entries())
    }

    /// Counters of the rule in `slot`, summed over CPUs.
    pub fn rule_counters(&self, slot: u32) -> Result<RuleCounters, MapsError> {
        let map: PerCpuArray<&MapData, RuleStats> =
            PerCpuArray::try_from(&self.rule_stats).map_err(err(RULE_STATS_MAP))?;
        let per_cpu = map.get(&slot, 0).map_err(err(RULE_STATS_MAP))?;
        Ok(per_cpu.iter().fold(RuleStats::default(), |mut sum, s| {
            sum.packets_in += s.packets_in;
            sum.bytes_in += s.bytes_in;
            sum.packets_out += s.packets_out;
            sum.bytes_out += s.bytes_out;
            sum.flows_new += s.flows_new;
            sum
        }))
    }

    /// Zeroes the counters of `slot` (before a new rule reuses it).
    pub fn reset_rule_counters(&mut self, slot: u32) -> Result<(), MapsError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, io_error)| {
            err(RULE_STATS_MAP)(MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error,
            }))
        })?;
        let zero =
            PerCpuValues::try_from(vec![RuleStats::default(); cpus]).map_err(|io_error| {
                err(RULE_STATS_MAP)(MapError::SyscallError(aya::sys::SyscallError {
                    call: "per-cpu values",
                    io_error,
                }))
            })?;
        let mut map: PerCpuArray<&mut MapData, RuleStats> =
            PerCpuArray::try_from(&mut self.rule_stats).map_err(err(RULE_STATS_MAP))?;
        map.set(slot, zero, 0).map_err(err(RULE_STATS_MAP))
    }

    /// Adds `n` to a counter that only user space writes (`Counter::is_user_written`), on
    /// CPU 0's slot. Callers serialise: the loader's reaper is the only writer of
    /// `FlowReaped` and `FlowReapedGone`, `flush` holds the control lock for `FlowFlushed`.
    pub fn add_to_user_counter(&mut self, counter: Counter, n: u64) -> Result<(), MapsError> {
        debug_assert!(counter.is_user_written(), "{}", counter.name());
        if n == 0 {
            return Ok(());
        }
        let mut map: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(&mut self.stats).map_err(err(STATS_MAP))?;
        let index = counter as u32;
        let mut values: Vec<u64> = map.get(&index, 0).map_err(err(STATS_MAP))?.to_vec();
        values[0] += n;
        let values = PerCpuValues::try_from(values).map_err(|io_error| {
            err(STATS_MAP)(MapError::SyscallError(aya::sys::SyscallError {
                call: "per-cpu values",
                io_error,
            }))
        })?;
        map.set(index, values, 0).map_err(err(STATS_MAP))
    }
}
