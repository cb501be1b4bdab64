//! The instance file (`/run/redirector/netns-<inode>-<iface>.json`): what the loader was
//! started with, the rule slots in use, and its format version.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{io_err, paths, StateError};
use crate::{reaper::Timeouts, rules::RedirectRule};

/// Version of the instance file format, and with it of the pinned maps' layout: bumped
/// whenever a file or a map of an older loader would be misread (2: three counters
/// appended to STATS; 3: the FLOWS map replaced by HALF_OPEN, ESTABLISHED and
/// FLOW_COUNT). `run` adopts a persisted instance of this format only.
pub const INSTANCE_FORMAT: u32 = 3;

/// The instance file: what the loader was started with, plus the rule slots in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// [`INSTANCE_FORMAT`].
    pub format: u32,
    /// Version of the redirector that wrote it.
    pub version: String,
    /// Loader process id.
    pub pid: u32,
    /// Inode of its network namespace.
    pub netns_inode: u64,
    /// Cookie of its network namespace (`SO_NETNS_COOKIE`): unlike the inode, never reused
    /// by a later namespace. Absent in files of older loaders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
    /// Requested `--mode`.
    pub mode: String,
    /// Interfaces, in `--iface` order; the first one keys the instance.
    pub interfaces: Vec<InterfaceInfo>,
    /// Size of the conntrack table.
    pub conntrack_size: u32,
    /// Current rules (the RULES map holds whether each is enabled).
    pub rules: Vec<RuleInfo>,
    /// Next never-used counter slot.
    pub next_slot: u32,
    /// Conntrack timeouts the loader's reaper applies (absent in files of older loaders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsInfo>,
    /// URL of the `--metrics` endpoint, if served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Started with `--persist`: links pinned next to the maps, on a bpffs that outlives
    /// the loader, and left attached when it exits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub persist: bool,
    /// The cgroup whose local clients are redirected (`--local-cgroup`); absent with
    /// `--no-local` and in files of older loaders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_cgroup: Option<String>,
    /// `--mark` as `VALUE/MASK` (hex); absent without it and in files of older loaders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<String>,
}

/// The reaper's timeouts, in seconds, as recorded in the instance file and shown by
/// `redirector status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutsInfo {
    /// `--timeout-handshake`.
    pub handshake_secs: u64,
    /// `--timeout-established`.
    pub established_secs: u64,
    /// `--timeout-fin-wait`.
    pub fin_wait_secs: u64,
    /// `--timeout-closing`.
    pub closing_secs: u64,
}

impl From<&Timeouts> for TimeoutsInfo {
    fn from(t: &Timeouts) -> Self {
        TimeoutsInfo {
            handshake_secs: t.handshake.as_secs(),
            established_secs: t.established.as_secs(),
            fin_wait_secs: t.fin_wait.as_secs(),
            closing_secs: t.closing.as_secs(),
        }
    }
}

/// One interface of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    /// Interface name.
    pub name: String,
    /// Ingress hook in use: `xdp`, `xdp-generic` or `tc`; `socket` when the instance steers
    /// sockets (then no program is on the interface, which only names the instance).
    pub ingress_hook: String,
}

/// One rule of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// Port clients connect to.
    pub from_port: u16,
    /// Port the server listens on.
    pub to_port: u16,
    /// Index of its counters.
    pub slot: u32,
}

impl RuleInfo {
    /// `rule`, counting in `slot`.
    pub fn new(rule: RedirectRule, slot: u32) -> Self {
        RuleInfo {
            from_port: rule.from_port,
            to_port: rule.to_port,
            slot,
        }
    }
}

impl InstanceInfo {
    /// The instance steers sockets (`--mode socket`) rather than rewriting packets.
    pub fn steers_sockets(&self) -> bool {
        self.interfaces
            .iter()
            .any(|i| i.ingress_hook == crate::dataplane::steer::HOOK_NAME)
    }

    /// The interface that keys the instance's files.
    pub fn key_iface(&self) -> &str {
        self.interfaces.first().map_or("", |i| i.name.as_str())
    }

    /// Its programs stay attached without a loader: started with `--persist`, or (a loader
    /// without it that adopted a persisted instance, then crashed) its links are pinned.
    pub fn left_attached(&self) -> bool {
        self.persist
            || self
                .pin_dir_from_here(false)
                .join(paths::LINKS_DIR)
                .exists()
    }

    /// The pin directory as this process can reach it: through the loader's root while
    /// it runs, else (a persisted instance) in this process's own /sys/fs/bpf.
    pub fn pin_dir_from_here(&self, loader_running: bool) -> PathBuf {
        if loader_running {
            paths::pin_dir_of(self.pid, self.netns_inode, self.key_iface())
        } else {
            paths::pin_dir(self.netns_inode, self.key_iface())
        }
    }
}

/// Writes `info` to its instance file atomically (temporary file, then rename).
pub fn write_info(info: &InstanceInfo) -> Result<PathBuf, StateError> {
    let path = paths::instance_file(info.netns_inode, info.key_iface());
    fs::create_dir_all(paths::RUN_DIR).map_err(io_err(Path::new(paths::RUN_DIR)))?;
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let text = serde_json::to_string_pretty(info).map_err(|source| StateError::Json {
        path: path.clone(),
        source,
    })?;
    fs::write(&tmp, text + "\n").map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// Reads an instance file; one of another format (another redirector version) is
/// [`StateError::Incompatible`], checked before the rest is interpreted.
pub fn read_info(path: &Path) -> Result<InstanceInfo, StateError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let json_err = |source| StateError::Json {
        path: path.to_path_buf(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(json_err)?;
    let found = value.get("format").and_then(serde_json::Value::as_u64);
    if found != Some(u64::from(INSTANCE_FORMAT)) {
        return Err(StateError::Incompatible {
            path: path.to_path_buf(),
            found: found.unwrap_or(0),
            version: value
                .get("version")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            pid: value
                .get("pid")
                .and_then(serde_json::Value::as_u64)
                .and_then(|pid| u32::try_from(pid).ok())
                .unwrap_or(0),
        });
    }
    serde_json::from_value(value).map_err(json_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_file_of_another_format_is_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("rdr-state-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("netns-1-eth0.json");
        fs::write(&path, r#"{"format": 1, "version": "0.0.9", "pid": 1}"#).unwrap();
        let err = read_info(&path).unwrap_err();
        assert!(
            matches!(err, StateError::Incompatible { found: 1, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("redirector 0.0.9 (state format 1)"), "{text}");
        assert!(
            text.contains(&format!("reads format {INSTANCE_FORMAT}")),
            "{text}"
        );
        fs::write(&path, r#"{"version": "x"}"#).unwrap();
        assert!(matches!(
            read_info(&path),
            Err(StateError::Incompatible { found: 0, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn instance_file_round_trips() {
        let info = InstanceInfo {
            format: INSTANCE_FORMAT,
            version: "0.1.0".into(),
            pid: 42,
            netns_inode: 4026531840,
            netns_cookie: Some(4096),
            mode: "auto".into(),
            interfaces: vec![
                InterfaceInfo {
                    name: "eth0".into(),
                    ingress_hook: "xdp".into(),
                },
                InterfaceInfo {
                    name: "eth1".into(),
                    ingress_hook: "tc".into(),
                },
            ],
            conntrack_size: 1024,
            rules: vec![RuleInfo {
                from_port: 80,
                to_port: 8080,
                slot: 0,
            }],
            next_slot: 1,
            timeouts: Some(TimeoutsInfo::from(&Timeouts::default())),
            metrics: None,
            persist: false,
            local_cgroup: Some("/sys/fs/cgroup".into()),
            mark: Some("0x42/0xff".into()),
        };
        let text = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<InstanceInfo>(&text).unwrap(), info);
        assert_eq!(info.key_iface(), "eth0");
        assert!(text.contains("\"next_slot\":1"), "{text}");
        assert!(text.contains("\"closing_secs\":10"), "{text}");
        assert!(!text.contains("metrics"), "{text}");
        // Files of loaders that predate the optional fields still read.
        let old = text.replace(",\"timeouts\":{\"handshake_secs\":60,\"established_secs\":432000,\"fin_wait_secs\":120,\"closing_secs\":10}", "");
        assert_ne!(old, text);
        assert_eq!(
            serde_json::from_str::<InstanceInfo>(&old).unwrap().timeouts,
            None
        );
    }
}
