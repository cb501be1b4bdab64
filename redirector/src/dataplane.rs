//! The loaded eBPF object: programs verified by the kernel and typed access to its maps.

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray},
    programs::{ProgramError, SchedClassifier, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use redirector_common::{
    maps::{
        Config, FlowKey, FlowValue, Rule, RuleStats, ALLOW_MAP, CONFIG_F_FILTER_SOURCES,
        CONFIG_MAP, FLOWS_MAP, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_INGRESS, RULES_MAP,
        RULE_STATS_MAP, STATS_MAP,
    },
    stats::Counter,
};

use crate::{rules::RedirectRule, source_filter::SourcePrefix};

/// The eBPF object built from `redirector-ebpf`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirector"));

/// Loading or configuring the dataplane failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The object could not be loaded (maps created, BTF, relocations).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] EbpfError),
    /// A program is missing from the object or was rejected by the verifier.
    #[error("eBPF program `{name}` failed to load: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause (the verifier log is inside for verifier errors).
        #[source]
        source: ProgramError,
    },
    /// A map is missing or an operation on it failed.
    #[error("eBPF map `{name}`: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// `--conntrack-size` of zero.
    #[error("--conntrack-size must be at least 1")]
    ZeroConntrackSize,
}

/// Summed (over CPUs) counters of one rule.
pub type RuleCounters = RuleStats;

/// The programs and maps of one loaded redirector.
pub struct Dataplane {
    ebpf: Ebpf,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}

impl Dataplane {
    /// Loads the object with a conntrack table of `conntrack_size` entries and loads
    /// (verifies) all three programs. Nothing is attached yet.
    pub fn load(conntrack_size: u32) -> Result<Self, DataplaneError> {
        if conntrack_size == 0 {
            return Err(DataplaneError::ZeroConntrackSize);
        }
        let ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, conntrack_size)
            .load(OBJECT)?;
        let mut dp = Dataplane { ebpf };
        dp.xdp_ingress()?
            .load()
            .map_err(prog_err(PROG_XDP_INGRESS))?;
        dp.tc_ingress()?.load().map_err(prog_err(PROG_TC_INGRESS))?;
        dp.tc_egress()?.load().map_err(prog_err(PROG_TC_EGRESS))?;
        Ok(dp)
    }

    /// The XDP ingress program.
    pub fn xdp_ingress(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.program(PROG_XDP_INGRESS)
    }

    /// The TC ingress program (`--mode tc`).
    pub fn tc_ingress(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.program(PROG_TC_INGRESS)
    }

    /// The TC egress program.
    pub fn tc_egress(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.program(PROG_TC_EGRESS)
    }

    fn program<'a, P>(&'a mut self, name: &'static str) -> Result<&'a mut P, DataplaneError>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program = self.ebpf.program_mut(name).ok_or(DataplaneError::Program {
            name,
            source: ProgramError::UnexpectedProgramType,
        })?;
        program.try_into().map_err(prog_err(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf.map_mut(name).ok_or(DataplaneError::Map {
            name,
            source: MapError::InvalidName {
                name: name.to_string(),
            },
        })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf.map(name).ok_or(DataplaneError::Map {
            name,
            source: MapError::InvalidName {
                name: name.to_string(),
            },
        })
    }

    /// Installs `rules` (enabled); rule `i` uses counter slot `i`.
    pub fn set_rules(&mut self, rules: &[RedirectRule]) -> Result<(), DataplaneError> {
        let mut map: HashMap<&mut MapData, u16, Rule> =
            HashMap::try_from(self.map_mut(RULES_MAP)?).map_err(map_err(RULES_MAP))?;
        for (slot, rule) in rules.iter().enumerate() {
            let value = Rule {
                to_port: rule.to_port,
                _pad: 0,
                enabled: 1,
                slot: slot as u32,
            };
            map.insert(rule.from_port, value, 0)
                .map_err(map_err(RULES_MAP))?;
        }
        Ok(())
    }

    /// Enables or disables new-flow redirection for the rule on `from_port`.
    pub fn set_rule_enabled(
        &mut self,
        from_port: u16,
        enabled: bool,
    ) -> Result<(), DataplaneError> {
        let mut map: HashMap<&mut MapData, u16, Rule> =
            HashMap::try_from(self.map_mut(RULES_MAP)?).map_err(map_err(RULES_MAP))?;
        let mut rule = map.get(&from_port, 0).map_err(map_err(RULES_MAP))?;
        rule.enabled = u32::from(enabled);
        map.insert(from_port, rule, 0).map_err(map_err(RULES_MAP))
    }

    /// Restricts flow creation to sources in `prefixes`; an empty list allows every source.
    pub fn set_allowed_sources(&mut self, prefixes: &[SourcePrefix]) -> Result<(), DataplaneError> {
        {
            let mut trie: LpmTrie<&mut MapData, [u8; 16], u32> =
                LpmTrie::try_from(self.map_mut(ALLOW_MAP)?).map_err(map_err(ALLOW_MAP))?;
            for prefix in prefixes {
                let (len, addr) = prefix.lpm_key();
                trie.insert(&Key::new(len, addr), 1, 0)
                    .map_err(map_err(ALLOW_MAP))?;
            }
        }
        let mut config: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(CONFIG_MAP)?).map_err(map_err(CONFIG_MAP))?;
        let flags = if prefixes.is_empty() {
            0
        } else {
            CONFIG_F_FILTER_SOURCES
        };
        config
            .set(0, Config { flags }, 0)
            .map_err(map_err(CONFIG_MAP))
    }

    /// Global counters summed over CPUs, indexed like `Counter::ALL`.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], DataplaneError> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(STATS_MAP)?).map_err(map_err(STATS_MAP))?;
        let mut out = [0u64; Counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = map.get(&(i as u32), 0).map_err(map_err(STATS_MAP))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Counters of the rule in `slot`, summed over CPUs.
    pub fn rule_counters(&self, slot: u32) -> Result<RuleCounters, DataplaneError> {
        let map: PerCpuArray<&MapData, RuleStats> =
            PerCpuArray::try_from(self.map(RULE_STATS_MAP)?).map_err(map_err(RULE_STATS_MAP))?;
        let per_cpu = map.get(&slot, 0).map_err(map_err(RULE_STATS_MAP))?;
        Ok(per_cpu.iter().fold(RuleStats::default(), |mut sum, s| {
            sum.packets_in += s.packets_in;
            sum.bytes_in += s.bytes_in;
            sum.packets_out += s.packets_out;
            sum.bytes_out += s.bytes_out;
            sum.flows_new += s.flows_new;
            sum
        }))
    }

    /// A snapshot of every tracked flow (entries may change while it is taken).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        let map: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.map(FLOWS_MAP)?).map_err(map_err(FLOWS_MAP))?;
        // An entry deleted between key iteration and lookup yields KeyNotFound: skip it.
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Inserts a flow entry directly (tests and tooling).
    pub fn insert_flow(&mut self, key: FlowKey, value: FlowValue) -> Result<(), DataplaneError> {
        let mut map: HashMap<&mut MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.map_mut(FLOWS_MAP)?).map_err(map_err(FLOWS_MAP))?;
        map.insert(key, value, 0).map_err(map_err(FLOWS_MAP))
    }

    /// Removes a flow entry; a missing entry is not an error (it may have just closed).
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DataplaneError> {
        let mut map: HashMap<&mut MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.map_mut(FLOWS_MAP)?).map_err(map_err(FLOWS_MAP))?;
        match map.remove(key) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_err(FLOWS_MAP)(e)),
        }
    }
}
