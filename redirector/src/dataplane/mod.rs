//! The kernel side as user space sees it: the loaded eBPF object ([`Dataplane`], its
//! programs verified by the kernel), typed access to its maps ([`maps`], batched through
//! [`batch`]), attaching to interfaces ([`attach`], [`iface`]) — and following them by
//! rtnetlink ([`netlink`], [`follow`]), with the kernel's view of the links
//! ([`bpf_link`], [`link_state`]) — and to a cgroup for local clients ([`local`]), and the
//! privileges all of that needs ([`privileges`]). Socket steering ([`steer`], its
//! listeners kept by [`listeners`]) is the other strategy: one program on the network
//! namespace instead of programs on interfaces.

pub mod attach;
pub mod batch;
pub mod bpf_link;
pub mod follow;
pub mod iface;
pub mod link_state;
pub mod listeners;
pub mod local;
pub mod maps;
pub mod netlink;
pub mod privileges;
pub mod steer;

use std::{
    collections::HashSet,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as AyaHashMap, Map, MapData, MapError},
    programs::{ProgramError, SchedClassifier, SkLookup, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use redirector_common::{
    maps::{
        established_max_entries, half_open_size, FlowKey, FlowValue, MarkConfig, RedirectedSocket,
        ESTABLISHED_CAPACITY_GLOBAL, ESTABLISHED_MAP, HALF_OPEN_MAP, LISTENERS_MAP,
        LOADER_NETNS_COOKIE_GLOBAL, LOCAL_ADDRS_MAP, LOCAL_PEERS_MAP, MARK_MAP, PROG_PASS_TC,
        PROG_PASS_XDP, PROG_SK_LOOKUP, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_INGRESS,
        REDIRECTED_SOCKETS_MAP,
    },
    reap::{ReapEntry, ReapRequest, REAP_BATCH, REAP_PROGRAM},
    stats::Counter,
};

pub use maps::RuleCounters;
use maps::{Maps, MapsError};

use crate::{packet_mark::PacketMark, rules::RedirectRule, source_filter::SourcePrefix};

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
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// Running the reaping program on a batch of expired flows failed.
    #[error("removing expired flows (test run of `{REAP_PROGRAM}`): {0}")]
    Reap(#[source] ProgramError),
    /// The `MARK` map is missing or could not be written.
    #[error("setting the packet mark (--mark): {0}")]
    Mark(#[source] aya::maps::MapError),
    /// `--conntrack-size` of zero.
    #[error("--conntrack-size must be at least 1")]
    ZeroConntrackSize,
    /// Adopting: a map of the persisted instance is not pinned where expected.
    #[error("adopting: pinned map {} is missing", .0.display())]
    MissingPin(PathBuf),
    /// The network namespace's cookie, which the local-client programs compare against,
    /// could not be read.
    #[error(transparent)]
    Local(#[from] Box<local::LocalError>),
    /// A map of the local-client programs is missing or an operation on it failed.
    #[error("eBPF map `{name}`: {source}")]
    LocalMap {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
}

/// The programs and maps of one loaded redirector.
pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    /// `LOCAL_ADDRS`: this namespace's addresses, kept current by the loader.
    local_addrs: Map,
    /// `LOCAL_PEERS`: the FROM port of redirected local sockets, for getpeername.
    local_peers: Map,
    /// `REDIRECTED_SOCKETS`: cookies of server sockets that carry a redirected connection.
    redirected_sockets: Map,
    /// `LISTENERS`: the listening sockets socket steering hands connections to.
    listeners: Map,
}

fn local_map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::LocalMap { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}

impl Dataplane {
    /// Loads the object with room for `conntrack_size` established flows (and
    /// `half_open_size(conntrack_size)` handshakes) and loads (verifies) all three
    /// programs. Nothing is attached yet.
    pub fn load(conntrack_size: u32) -> Result<Self, DataplaneError> {
        Self::load_reusing(conntrack_size, Path::new(""), &[], &[])
    }

    /// Loads the object as [`Dataplane::load`] does, but reusing the maps pinned in `dir`
    /// (every one of [`maps::PINNED_MAPS`], with their entries) instead of creating new
    /// ones: adopting a persisted instance. `conntrack_size` must be the size the pinned
    /// maps were created with (the instance file's), which a live map cannot change.
    ///
    /// `LOCAL_PEERS` (getpeername's answers for redirected local sockets),
    /// `REDIRECTED_SOCKETS` (the sockets egress may heal) and `LISTENERS` (socket
    /// steering's listeners) are reused too if pinned; an instance pinned before they
    /// existed has none, so aya creates them and pins them into `dir`.
    pub fn load_pinned(conntrack_size: u32, dir: &Path) -> Result<Self, DataplaneError> {
        Self::load_reusing(
            conntrack_size,
            dir,
            &maps::PINNED_MAPS,
            &[LOCAL_PEERS_MAP, REDIRECTED_SOCKETS_MAP, LISTENERS_MAP],
        )
    }

    /// Loads the object as [`Dataplane::load`] does, reusing from `old_dir` (a persisted
    /// instance of the previous state format) only the maps whose layout did not change,
    /// [`maps::KEPT_ON_MIGRATION`]; the flow tables, their count and STATS are new and
    /// empty. Nothing is pinned: the caller pins the whole set elsewhere, then swaps.
    pub fn load_migrating(conntrack_size: u32, old_dir: &Path) -> Result<Self, DataplaneError> {
        Self::load_reusing(conntrack_size, old_dir, &maps::KEPT_ON_MIGRATION, &[])
    }

    /// Loads the object sized for `conntrack_size`, the maps named in `reused` taken from
    /// their pins in `dir` (all of them must exist), those in `reused_or_pinned` taken from
    /// `dir` if pinned there and else created and pinned there, and every other map
    /// created anew.
    fn load_reusing(
        conntrack_size: u32,
        dir: &Path,
        reused: &[&str],
        reused_or_pinned: &[&str],
    ) -> Result<Self, DataplaneError> {
        if conntrack_size == 0 {
            return Err(DataplaneError::ZeroConntrackSize);
        }
        // aya would create (and pin) a map whose pin is missing: never mix old and new state.
        if let Some(name) = reused.iter().find(|name| !dir.join(name).exists()) {
            return Err(DataplaneError::MissingPin(dir.join(name)));
        }
        let capacity = u64::from(conntrack_size);
        let netns_cookie = local::netns_cookie().map_err(Box::new)?;
        let paths: Vec<(&str, PathBuf)> = reused
            .iter()
            .chain(reused_or_pinned)
            .map(|name| (*name, dir.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(HALF_OPEN_MAP, half_open_size(conntrack_size))
            .map_max_entries(ESTABLISHED_MAP, established_max_entries(conntrack_size))
            .map_max_entries(
                REDIRECTED_SOCKETS_MAP,
                established_max_entries(conntrack_size),
            )
            .override_global(ESTABLISHED_CAPACITY_GLOBAL, &capacity, true)
            .override_global(LOADER_NETNS_COOKIE_GLOBAL, &netns_cookie, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        Self::load_with(loader)
    }

    /// Loads the object with `loader` and verifies the three packet programs, the reaping
    /// program, the four cgroup programs of local clients and the socket-lookup program.
    fn load_with(mut loader: EbpfLoader<'_>) -> Result<Self, DataplaneError> {
        let mut ebpf = loader.load(OBJECT)?;
        let maps = Maps::take_from(&mut ebpf)?;
        let mut take = |name| {
            ebpf.take_map(name)
                .ok_or_else(|| local_map_err(name)(MapError::InvalidName { name: name.into() }))
        };
        let local_addrs = take(LOCAL_ADDRS_MAP)?;
        let local_peers = take(LOCAL_PEERS_MAP)?;
        let redirected_sockets = take(REDIRECTED_SOCKETS_MAP)?;
        let listeners = take(LISTENERS_MAP)?;
        let mut dp = Dataplane {
            ebpf,
            maps,
            local_addrs,
            local_peers,
            redirected_sockets,
            listeners,
        };
        dp.xdp_ingress()?
            .load()
            .map_err(prog_err(PROG_XDP_INGRESS))?;
        dp.tc_ingress()?.load().map_err(prog_err(PROG_TC_INGRESS))?;
        dp.tc_egress()?.load().map_err(prog_err(PROG_TC_EGRESS))?;
        dp.program::<Xdp>(REAP_PROGRAM)?
            .load()
            .map_err(prog_err(REAP_PROGRAM))?;
        for (name, _) in local::PROGRAMS {
            dp.cgroup_program(name)?.load().map_err(prog_err(name))?;
        }
        dp.sk_lookup()?.load().map_err(prog_err(PROG_SK_LOOKUP))?;
        Ok(dp)
    }

    /// Makes `LOCAL_ADDRS` hold exactly `addrs` (this namespace's addresses, as
    /// [`local::key`] encodes them): new ones added before gone ones are removed.
    pub fn set_local_addrs(&mut self, addrs: &HashSet<[u8; 16]>) -> Result<(), DataplaneError> {
        let mut map: AyaHashMap<&mut MapData, [u8; 16], u32> =
            AyaHashMap::try_from(&mut self.local_addrs).map_err(local_map_err(LOCAL_ADDRS_MAP))?;
        let present: HashSet<[u8; 16]> = map.keys().filter_map(Result::ok).collect();
        for addr in addrs.difference(&present) {
            map.insert(addr, 1, 0)
                .map_err(local_map_err(LOCAL_ADDRS_MAP))?;
        }
        for addr in present.difference(addrs) {
            // Gone meanwhile is as good as removed.
            let _ = map.remove(addr);
        }
        Ok(())
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

    /// The socket-lookup program of socket steering (`--mode socket`).
    pub fn sk_lookup(&mut self) -> Result<&mut SkLookup, DataplaneError> {
        self.program(PROG_SK_LOOKUP)
    }

    /// `LISTENERS`, the listening sockets socket steering hands connections to.
    pub fn listeners_map(&mut self) -> &mut Map {
        &mut self.listeners
    }

    /// Loads (verifies) the two benchmark baselines, programs that return the hook's
    /// pass verdict and do nothing else. `load` leaves them out and the loader never
    /// attaches them; benchmarks run them next to the real programs with
    /// `BPF_PROG_TEST_RUN` to measure what running any program at all costs.
    pub fn load_baselines(&mut self) -> Result<(), DataplaneError> {
        self.baseline_xdp()?
            .load()
            .map_err(prog_err(PROG_PASS_XDP))?;
        self.baseline_tc()?.load().map_err(prog_err(PROG_PASS_TC))
    }

    /// The XDP baseline (`XDP_PASS`, nothing else); see [`Dataplane::load_baselines`].
    pub fn baseline_xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.program(PROG_PASS_XDP)
    }

    /// The TC baseline (`TC_ACT_UNSPEC`, nothing else); see [`Dataplane::load_baselines`].
    pub fn baseline_tc(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.program(PROG_PASS_TC)
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

    /// Takes the kernel's log ring (aya-log), for [`crate::observe::kernel_log`] to drain.
    pub fn kernel_logger(
        &mut self,
    ) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, aya_log::Error> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
    }

    /// Sets (or, with `None`, clears) the packet mark that TC ingress puts on every packet
    /// it rewrites (`--mark`). The map is not pinned: each loader sets it, also on adoption.
    pub fn set_mark(&mut self, mark: Option<PacketMark>) -> Result<(), DataplaneError> {
        let map = self.ebpf.map_mut(MARK_MAP).ok_or(DataplaneError::Mark(
            aya::maps::MapError::InvalidName {
                name: MARK_MAP.to_string(),
            },
        ))?;
        let mut array: aya::maps::Array<_, MarkConfig> =
            aya::maps::Array::try_from(map).map_err(DataplaneError::Mark)?;
        let config = mark.map_or(MarkConfig::default(), |m| MarkConfig {
            value: m.value,
            mask: m.mask,
            enabled: 1,
        });
        array.set(0, config, 0).map_err(DataplaneError::Mark)
    }

    /// The maps, for reading.
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The maps, for writing.
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// Pins every map into `dir` (see `crate::instance::paths`), `LOCAL_PEERS`,
    /// `REDIRECTED_SOCKETS` and `LISTENERS` included (an adopting loader reuses them;
    /// `LOCAL_ADDRS` each loader fills anew).
    pub fn pin_maps(&self, dir: &std::path::Path) -> Result<(), DataplaneError> {
        self.maps.pin(dir)?;
        for (name, map) in [
            (LOCAL_PEERS_MAP, &self.local_peers),
            (REDIRECTED_SOCKETS_MAP, &self.redirected_sockets),
            (LISTENERS_MAP, &self.listeners),
        ] {
            map.pin(dir.join(name)).map_err(|error| {
                local_map_err(name)(MapError::PinError {
                    name: Some(name.to_string()),
                    error,
                })
            })?;
        }
        Ok(())
    }

    /// The server sockets recorded as carrying a redirected connection
    /// (`REDIRECTED_SOCKETS`), as they are now: cookie and what it was redirected from.
    pub fn redirected_sockets(&self) -> Result<Vec<(u64, RedirectedSocket)>, DataplaneError> {
        let map_err = local_map_err(REDIRECTED_SOCKETS_MAP);
        let fd = match &self.redirected_sockets {
            Map::HashMap(data) | Map::LruHashMap(data) => data.fd().as_fd(),
            other => {
                let err = AyaHashMap::<&MapData, u64, RedirectedSocket>::try_from(other).err();
                return Err(map_err(
                    err.unwrap_or(MapError::InvalidMapType { map_type: 0 }),
                ));
            }
        };
        match batch::lookup_all(fd) {
            Ok(sockets) => Ok(sockets),
            // A kernel without batch commands: key by key, skipping those deleted between
            // the key walk and the lookup.
            Err(e) if batch::is_unsupported(&e) => {
                let map: AyaHashMap<&MapData, u64, RedirectedSocket> =
                    AyaHashMap::try_from(&self.redirected_sockets).map_err(map_err)?;
                Ok(map.iter().filter_map(Result::ok).collect())
            }
            Err(io_error) => Err(map_err(MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error,
            }))),
        }
    }

    /// The cookies of the server sockets recorded as carrying a redirected connection
    /// (`REDIRECTED_SOCKETS`), as they are now.
    pub fn redirected_socket_cookies(&self) -> Result<Vec<u64>, DataplaneError> {
        Ok(self
            .redirected_sockets()?
            .into_iter()
            .map(|(cookie, _)| cookie)
            .collect())
    }

    /// Forgets the sockets of `cookies` (the kernel no longer holds them); returns how many
    /// were still recorded.
    pub fn forget_redirected_sockets(&mut self, cookies: &[u64]) -> Result<usize, DataplaneError> {
        let map_err = local_map_err(REDIRECTED_SOCKETS_MAP);
        if let Map::HashMap(data) | Map::LruHashMap(data) = &self.redirected_sockets {
            match batch::delete_all(data.fd().as_fd(), cookies) {
                (0, Err(e)) if batch::is_unsupported(&e) => {}
                (removed, Ok(())) => return Ok(removed),
                (_, Err(io_error)) => {
                    return Err(map_err(MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_delete_batch",
                        io_error,
                    })))
                }
            }
        }
        let mut map: AyaHashMap<&mut MapData, u64, RedirectedSocket> =
            AyaHashMap::try_from(&mut self.redirected_sockets).map_err(map_err)?;
        // Gone meanwhile is as good as removed.
        Ok(cookies.iter().filter(|c| map.remove(c).is_ok()).count())
    }

    /// Installs the first rules of an instance (enabled); rule `i` uses counter slot `i`
    /// ([`crate::rules::RuleSlots::assign`]).
    pub fn set_rules(&mut self, rules: &[RedirectRule]) -> Result<(), DataplaneError> {
        Ok(self.maps.set_rules(rules)?)
    }

    /// Enables or disables new-flow redirection for the rule on `from_port` (no-op if
    /// there is no such rule).
    pub fn set_rule_enabled(
        &mut self,
        from_port: u16,
        enabled: bool,
    ) -> Result<(), DataplaneError> {
        self.maps.set_rule_enabled(from_port, enabled)?;
        Ok(())
    }

    /// Restricts flow creation to sources in `prefixes`; an empty list allows every source.
    pub fn set_allowed_sources(&mut self, prefixes: &[SourcePrefix]) -> Result<(), DataplaneError> {
        Ok(self.maps.set_allowed_sources(prefixes)?)
    }

    /// Global counters summed over CPUs, indexed like `Counter::ALL`.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT as usize], DataplaneError> {
        Ok(self.maps.counters()?)
    }

    /// Counters of the rule in `slot`, summed over CPUs.
    pub fn rule_counters(&self, slot: u32) -> Result<RuleCounters, DataplaneError> {
        Ok(self.maps.rule_counters(slot)?)
    }

    /// A snapshot of every tracked flow (entries may change while it is taken).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        Ok(self.maps.flows()?)
    }

    /// Inserts a flow entry directly (tests and tooling).
    pub fn insert_flow(&mut self, key: FlowKey, value: FlowValue) -> Result<(), DataplaneError> {
        Ok(self.maps.insert_flow(key, value)?)
    }

    /// Removes a flow entry; returns false if it was not there (it may have just closed).
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<bool, DataplaneError> {
        Ok(self.maps.remove_flow(key)?)
    }

    /// Removes each expired flow of `expired` (as the reaper saw it, with its table) that
    /// is still that flow, in the kernel ([`redirector_common::reap`]): a flow opened on
    /// the same tuple since the reaper's snapshot, or seen since, stays. Returns how many
    /// were removed, also when a later batch fails.
    pub fn reap_flows(&mut self, expired: &[ReapEntry]) -> (usize, Result<(), DataplaneError>) {
        let mut removed = 0;
        for batch in expired.chunks(REAP_BATCH) {
            match self.reap_batch(batch) {
                Ok(n) => removed += n,
                Err(e) => return (removed, Err(e)),
            }
        }
        (removed, Ok(()))
    }

    fn reap_batch(&mut self, batch: &[ReapEntry]) -> Result<usize, DataplaneError> {
        let mut request = ReapRequest {
            count: batch.len() as u32,
            _pad: 0,
            entries: [batch[0]; REAP_BATCH],
        };
        request.entries[..batch.len()].copy_from_slice(batch);
        // SAFETY: `ReapRequest` is `repr(C)` plain data without implicit padding (a test of
        // redirector-common checks its size), so all its bytes are initialised.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const request).cast::<u8>(),
                std::mem::size_of::<ReapRequest>(),
            )
        };
        let mut out = vec![0u8; bytes.len()];
        let opts = TestRunOptions {
            data_in: Some(bytes),
            data_out: Some(&mut out),
            ..Default::default()
        };
        self.program::<Xdp>(REAP_PROGRAM)?
            .test_run(opts)
            .map_err(DataplaneError::Reap)?;
        let removed = u32::from_ne_bytes([out[0], out[1], out[2], out[3]]);
        Ok(removed as usize)
    }

    /// Removes flow entries in batches, skipping those already gone, unconditionally
    /// (tooling and benchmarks; the reaper uses [`Dataplane::reap_flows`]); returns how
    /// many were removed, also when it then fails.
    pub fn remove_flows(&mut self, keys: &[FlowKey]) -> (usize, Result<(), DataplaneError>) {
        let (removed, result) = self.maps.remove_flows(keys, maps::Remover::Reaper);
        (removed, result.map_err(DataplaneError::from))
    }
}
