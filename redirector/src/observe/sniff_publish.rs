//! The sniffing proxy's counters, published by `redirector run --sniff-listen` for
//! `redirector stats` of other processes.
//!
//! The loader rewrites one small JSON file under `/run/redirector` (path from
//! [`crate::instance::paths::sniff_stats_file`]) every [`PUBLISH_INTERVAL`], atomically (temporary file,
//! then rename), and removes it when it stops. A file rather than a pinned BPF map: the
//! counters are user-space atomics that no BPF program touches, /run is shared by every
//! `ip netns exec` (bpffs pins are only reachable through the loader's root), and the
//! eBPF object and its map layout stay as they are. The price is up to one interval of
//! staleness, the same granularity as `stats --watch`.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use redirector_sniff::counters::{Counter, Counters};

/// How often the loader rewrites the file.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Version of the file format.
pub const FORMAT: u32 = 1;

/// Writing or reading the published counters failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Filesystem error.
    #[error("sniff counters file {}", path.display())]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Not JSON of the expected shape.
    #[error("sniff counters file {}", path.display())]
    Json {
        /// Path involved.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The file's content.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// [`FORMAT`].
    pub format: u32,
    /// Pid of the loader that wrote it (a file of another pid is stale).
    pub pid: u32,
    /// Every counter by its stable name ([`Counter::name`]).
    pub counters: BTreeMap<String, u64>,
    /// The proxy's `--max-conns` in use (absent in files of loaders before it was
    /// published: an added field, so [`FORMAT`] stays 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_conns: Option<u64>,
}

impl Published {
    /// The current values of `counters`, as process `pid`, whose proxy holds at most
    /// `max_conns` connections.
    pub fn of(counters: &Counters, pid: u32, max_conns: u64) -> Self {
        Published {
            format: FORMAT,
            pid,
            counters: Counter::ALL
                .iter()
                .map(|c| (c.name().to_string(), counters.get(*c)))
                .collect(),
            max_conns: Some(max_conns),
        }
    }

    /// `sniff limit max_conns=N`, the line `stats` prints after the counters (empty for a
    /// file without the limit).
    pub fn limit_lines(&self) -> String {
        self.max_conns
            .map(|n| format!("sniff limit max_conns={n}\n"))
            .unwrap_or_default()
    }

    /// `sniff counter NAME=VALUE` lines, in the order the loader prints them on exit
    /// (names this version does not know last).
    pub fn lines(&self) -> String {
        let known = Counter::ALL.iter().map(|c| c.name());
        let unknown = self
            .counters
            .keys()
            .map(String::as_str)
            .filter(|name| Counter::ALL.iter().all(|c| c.name() != *name));
        known
            .chain(unknown)
            .filter_map(|name| {
                Some(format!(
                    "sniff counter {name}={}\n",
                    self.counters.get(name)?
                ))
            })
            .collect()
    }
}

/// Keeps the file up to date while it lives; removes it on drop.
#[derive(Debug)]
pub struct Publisher {
    path: PathBuf,
    counters: Arc<Counters>,
    max_conns: u64,
}

impl Publisher {
    /// Publishes `counters` and the limit of `max_conns` connections at `path` (written
    /// once now).
    pub fn create(
        path: PathBuf,
        counters: Arc<Counters>,
        max_conns: u64,
    ) -> Result<Self, PublishError> {
        let publisher = Publisher {
            path,
            counters,
            max_conns,
        };
        publisher.write()?;
        Ok(publisher)
    }

    /// Rewrites the file with the current values, atomically.
    pub fn write(&self) -> Result<(), PublishError> {
        let published = Published::of(&self.counters, std::process::id(), self.max_conns);
        let text = serde_json::to_string(&published).map_err(|source| PublishError::Json {
            path: self.path.clone(),
            source,
        })?;
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PublishError::Io { path, source }
        };
        fs::write(&tmp, text + "\n").map_err(io(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io(&self.path))
    }

    /// Rewrites the file every [`PUBLISH_INTERVAL`] until the future is dropped.
    pub async fn run(&self) {
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = self.write() {
                // Logged, not fatal: the proxy keeps serving; `stats` shows older values.
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                log::warn!("{e}: {}", cause.unwrap_or_default());
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The counters published at `path` by loader `pid`; `None` if it publishes none (no
/// `--sniff-listen`, or a file left by another process).
pub fn read(path: &Path, pid: u32) -> Result<Option<Published>, PublishError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PublishError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let published: Published =
        serde_json::from_str(&text).map_err(|source| PublishError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((published.pid == pid).then_some(published))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back_for_its_pid_only_and_goes_on_drop() {
        let dir = std::env::temp_dir().join(format!("rdr-publish-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.sniff");
        let counters = Arc::new(Counters::default());
        counters.add(Counter::Websocket, 3);
        let publisher = Publisher::create(path.clone(), Arc::clone(&counters), 123).unwrap();
        counters.inc(Counter::Http);
        publisher.write().unwrap();
        let read_back = read(&path, std::process::id()).unwrap().unwrap();
        assert_eq!(read_back, Published::of(&counters, std::process::id(), 123));
        assert_eq!(read_back.max_conns, Some(123));
        assert_eq!(read_back.limit_lines(), "sniff limit max_conns=123\n");
        assert_eq!(read_back.counters["websocket"], 3);
        assert_eq!(read_back.counters["http"], 1);
        assert!(read_back.lines().starts_with("sniff counter accepted=0\n"));
        assert!(read_back.lines().contains("sniff counter websocket=3\n"));
        assert_eq!(read(&path, std::process::id() + 1).unwrap(), None);
        drop(publisher);
        assert!(!path.exists());
        assert_eq!(read(&path, std::process::id()).unwrap(), None);
        let _ = fs::remove_dir(&dir);
    }

    #[test]
    fn a_file_without_the_limit_still_reads() {
        let text = r#"{"format":1,"pid":7,"counters":{"accepted":2}}"#;
        let published: Published = serde_json::from_str(text).unwrap();
        assert_eq!(published.max_conns, None);
        assert_eq!(published.limit_lines(), "");
        assert_eq!(published.lines(), "sniff counter accepted=2\n");
    }
}
