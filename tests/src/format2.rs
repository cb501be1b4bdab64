//! A persisted instance of state format 2 (the previous release), for the migration tests.
//!
//! Made from a persisted format-3 instance whose loader exited: its pin directory is
//! rewritten into exactly what format 2 pinned — one LRU `FLOWS` table (created here with
//! `BPF_MAP_CREATE`: the previous release's type, key and value sizes, `max_entries` and
//! name) holding every flow of the two tables plus the `extra` ones, a 21-counter `STATS`
//! holding the first 21 counters, RULES, ALLOW, CONFIG and RULE_STATS as they are, the
//! links, and a format-2 instance file. The pins of HALF_OPEN, ESTABLISHED, FLOW_COUNT and
//! LOCAL_PEERS go.
//!
//! Also [`predate_local_clients`]: a format-3 instance as the loaders before local-client
//! redirection pinned it (a 24-counter STATS, no LOCAL_PEERS), for the adoption tests.
//!
//! The links keep running the programs that were attached: they redirect real
//! connections on their own (now unpinned) tables, so sessions opened before keep
//! echoing only if the migration put their entries into the new tables.
//!
//! The upgrade itself is proved with the real previous releases ([`crate::releases`]);
//! this fixture stays for the cases those cannot make: flows in chosen states (a handshake
//! that must land in the half-open table), and instances cut to exactly an older set of
//! pins (no LOCAL_PEERS or REDIRECTED_SOCKETS, a shorter STATS).

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use redirector::{
    dataplane::maps::Maps,
    instance::{
        migrate::{OLD_FLOWS_MAP, OLD_STATS_COUNT},
        paths,
    },
};
use redirector_common::maps::{
    FlowKey, FlowValue, ESTABLISHED_MAP, FLOW_COUNT_MAP, HALF_OPEN_MAP, LOCAL_PEERS_MAP,
    REDIRECTED_SOCKETS_MAP, STATS_MAP,
};
use testkit::{cmd::must, netns::Netns};

/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: libc::c_long = 0;
/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
const PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LRU_HASH`.
const LRU_HASH: u32 = 9;

/// The head of `union bpf_attr` for `BPF_MAP_CREATE` (the kernel reads the rest as zero).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates a map as the previous release's object declared it.
fn create_map(name: &str, map_type: u32, key_size: u32, value_size: u32, max: u32) -> Map {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries: max,
        ..Default::default()
    };
    attr.map_name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size passed; the
    // kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            size_of::<MapCreateAttr>() as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE {name}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Map::from_map_data(MapData::from_fd(fd).unwrap()).unwrap()
}

/// Inode of `ns`'s network namespace (what keys its pins and instance files).
pub fn netns_inode(ns: &Netns) -> u64 {
    let out = must(ns.cmd("stat").args(["-L", "-c", "%i", "/proc/self/ns/net"]));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The pin directory and instance file of the persisted instance keyed by `iface` in `ns`.
pub fn instance_paths(ns: &Netns, iface: &str) -> (PathBuf, PathBuf) {
    let netns = netns_inode(ns);
    (
        paths::pin_dir(netns, iface),
        paths::instance_file(netns, iface),
    )
}

/// Rewrites the persisted (format-3, loader exited) instance keyed by `iface` in `ns`
/// into a format-2 one whose FLOWS holds its flows and `extra`; returns how many entries
/// FLOWS holds.
pub fn downgrade(ns: &Netns, iface: &str, extra: &[(FlowKey, FlowValue)]) -> usize {
    let (dir, info_path) = instance_paths(ns, iface);
    let mut info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).unwrap()).unwrap();
    let size = u32::try_from(info["conntrack_size"].as_u64().unwrap()).unwrap();

    let current = Maps::from_pins(&dir).unwrap();
    let mut flows = current.flows().unwrap();
    flows.extend_from_slice(extra);
    let mut old_flows = create_map(OLD_FLOWS_MAP, LRU_HASH, 36, 32, size.max(64));
    {
        let mut map: HashMap<&mut MapData, FlowKey, FlowValue> =
            HashMap::try_from(&mut old_flows).unwrap();
        for (key, value) in &flows {
            map.insert(key, value, 0).unwrap();
        }
    }
    let old_stats = shorter_stats(&dir, OLD_STATS_COUNT);
    drop(current);
    for name in [HALF_OPEN_MAP, ESTABLISHED_MAP, FLOW_COUNT_MAP, STATS_MAP] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    for name in [LOCAL_PEERS_MAP, REDIRECTED_SOCKETS_MAP] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    old_flows.pin(dir.join(OLD_FLOWS_MAP)).unwrap();
    old_stats.pin(dir.join(STATS_MAP)).unwrap();
    info["format"] = 2.into();
    info["version"] = "0.0.2-format2-fixture".into();
    std::fs::write(&info_path, info.to_string()).unwrap();
    flows.len()
}

/// A STATS map of the first `count` counters of the one pinned in `dir`, values copied.
fn shorter_stats(dir: &Path, count: u32) -> Map {
    let mut short = create_map(STATS_MAP, PERCPU_ARRAY, 4, 8, count);
    let stats = MapData::from_pin(dir.join(STATS_MAP)).unwrap();
    let stats = Map::from_map_data(stats).unwrap();
    let now: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(&stats).unwrap();
    let mut old: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(&mut short).unwrap();
    for index in 0..count {
        let values: Vec<u64> = now.get(&index, 0).unwrap().iter().copied().collect();
        old.set(index, PerCpuValues::try_from(values).unwrap(), 0)
            .unwrap();
    }
    short
}

/// Counters of the STATS of the loaders before local-client redirection.
pub const PRE_LOCAL_STATS_COUNT: u32 = 24;

/// Rewrites the persisted (format-3, loader exited) instance keyed by `iface` in `ns` as
/// a loader before local-client redirection left it: a STATS of
/// [`PRE_LOCAL_STATS_COUNT`] counters, no LOCAL_PEERS or REDIRECTED_SOCKETS, no cgroup links.
pub fn predate_local_clients(ns: &Netns, iface: &str) {
    let (dir, _) = instance_paths(ns, iface);
    let short = shorter_stats(&dir, PRE_LOCAL_STATS_COUNT);
    std::fs::remove_file(dir.join(STATS_MAP)).unwrap();
    short.pin(dir.join(STATS_MAP)).unwrap();
    for name in [LOCAL_PEERS_MAP, REDIRECTED_SOCKETS_MAP] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// The names pinned in `dir`, sorted.
pub fn pinned_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
