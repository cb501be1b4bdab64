//! Settings of `redirector run`, from the command line and from `--config FILE` (TOML):
//! the same keys as the flags; a flag given on the command line wins over the file.
//!
//! Every field is optional at this level: "not given" is kept apart from "the default",
//! so that [`RunSettings::or`] can merge flags over the file before defaults apply.
//! Every flag of `run` has its key (the cli's tests check it); the sniffing proxy's
//! settings are the `[sniff]` table ([`sniff`]).

pub mod reload;
pub mod sniff;

use std::{
    fmt::Display,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use redirector_common::maps::DEFAULT_CONNTRACK_SIZE;
use serde::Deserialize;

use crate::packet_mark::{PacketMark, PacketMarkError};

use crate::{
    dataplane::attach::Mode, reaper::Timeouts, rules::RedirectRule, source_filter::SourcePrefix,
};
use sniff::{FileSniff, SniffSettings};

/// The configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("config file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause (names the key and line).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value of the right type that is not valid (a bad rule, mode, prefix, …).
    #[error("config file {}: `{key}`: {message}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `redirects` or `timeouts.closing`.
        key: String,
        /// Why.
        message: String,
    },
}

/// The rules of the settings cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesSettingError {
    /// A bad rule set (duplicate FROM port, too many).
    #[error(transparent)]
    Rule(#[from] crate::rules::RuleError),
    /// `--disable PORT` / `disabled` names a port without a rule.
    #[error("--disable {0} (`disabled`): port {0} has no rule (see --redirect / `redirects`)")]
    DisabledWithoutRule(u16),
}

/// The file as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    ifaces: Option<Vec<String>>,
    redirects: Option<Vec<String>>,
    disabled: Option<Vec<u16>>,
    mode: Option<String>,
    allow: Option<Vec<String>>,
    conntrack_size: Option<u32>,
    metrics: Option<String>,
    mark: Option<String>,
    persist: Option<bool>,
    local: Option<bool>,
    local_cgroup: Option<PathBuf>,
    timeouts: Option<FileTimeouts>,
    sniff: Option<FileSniff>,
}

/// `[timeouts]`, in seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    established: Option<u64>,
    closing: Option<u64>,
    fin_wait: Option<u64>,
    handshake: Option<u64>,
}

/// Conntrack timeouts in seconds; `None` = not given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeoutSettings {
    /// Idle established flows.
    pub established: Option<u64>,
    /// Both sides sent FIN.
    pub closing: Option<u64>,
    /// One side sent FIN.
    pub fin_wait: Option<u64>,
    /// Handshake in progress.
    pub handshake: Option<u64>,
}

/// Redirection of local clients (cgroup connect hooks): `--local-cgroup` / `--no-local`,
/// `local_cgroup` / `local = false`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalSetting {
    /// Not redirected (`--no-local`, `local = false`).
    Off,
    /// Redirected for the processes of this cgroup (v2) and its descendants.
    Cgroup(PathBuf),
}

impl LocalSetting {
    /// The cgroup to attach to, if any.
    pub fn cgroup(&self) -> Option<&Path> {
        match self {
            LocalSetting::Off => None,
            LocalSetting::Cgroup(path) => Some(path),
        }
    }
}

/// Settings of `run`; an empty list or `None` means "not given".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSettings {
    /// `--iface` / `ifaces`.
    pub ifaces: Vec<String>,
    /// `--redirect` / `redirects`.
    pub redirects: Vec<RedirectRule>,
    /// `--disable` / `disabled`: FROM ports whose rule is loaded disabled.
    pub disabled: Vec<u16>,
    /// `--mode` / `mode`.
    pub mode: Option<Mode>,
    /// `--allow` / `allow`.
    pub allow: Vec<SourcePrefix>,
    /// `--conntrack-size` / `conntrack_size`.
    pub conntrack_size: Option<u32>,
    /// `--metrics` / `metrics`.
    pub metrics: Option<SocketAddr>,
    /// `--mark` / `mark`.
    pub mark: Option<PacketMark>,
    /// `--local-cgroup`, `--no-local` / `local_cgroup`, `local`.
    pub local: Option<LocalSetting>,
    /// `--timeout-*` / `[timeouts]`.
    pub timeouts: TimeoutSettings,
    /// `--persist` / `persist` (the flag can only turn it on).
    pub persist: Option<bool>,
    /// `--sniff-*` / `[sniff]`.
    pub sniff: SniffSettings,
}

fn first<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file
    } else {
        flag
    }
}

impl RunSettings {
    /// Reads and parses the TOML file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML `text` (`path` only names the file in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Value {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        fn parse_all<T: FromStr>(
            key: &str,
            items: Option<Vec<String>>,
            invalid: &impl Fn(&str, String) -> ConfigError,
        ) -> Result<Vec<T>, ConfigError>
        where
            T::Err: Display,
        {
            items
                .unwrap_or_default()
                .iter()
                .map(|s| s.parse().map_err(|e: T::Err| invalid(key, e.to_string())))
                .collect()
        }
        let t = file.timeouts.unwrap_or_default();
        for (key, secs) in [
            ("timeouts.established", t.established),
            ("timeouts.closing", t.closing),
            ("timeouts.fin_wait", t.fin_wait),
            ("timeouts.handshake", t.handshake),
        ] {
            if secs == Some(0) {
                return Err(invalid(key, "must be at least 1 (seconds)".into()));
            }
        }
        let local = match (file.local, file.local_cgroup) {
            (Some(false), Some(path)) => {
                return Err(invalid(
                    "local_cgroup",
                    format!(
                        "`{}` given with `local = false`: remove one of them",
                        path.display()
                    ),
                ))
            }
            (Some(false), None) => Some(LocalSetting::Off),
            (_, Some(path)) => Some(LocalSetting::Cgroup(path)),
            (_, None) => None,
        };
        let sniff = file.sniff.unwrap_or_default().parse(invalid)?;
        Ok(RunSettings {
            ifaces: file.ifaces.unwrap_or_default(),
            redirects: parse_all("redirects", file.redirects, &invalid)?,
            disabled: file.disabled.unwrap_or_default(),
            mode: file
                .mode
                .map(|m| Mode::parse(&m).map_err(|e| invalid("mode", e)))
                .transpose()?,
            allow: parse_all("allow", file.allow, &invalid)?,
            conntrack_size: file.conntrack_size,
            metrics: file
                .metrics
                .map(|m| {
                    m.parse().map_err(|_| {
                        invalid(
                            "metrics",
                            format!("invalid address `{m}`: expected IP:PORT, e.g. 127.0.0.1:9464"),
                        )
                    })
                })
                .transpose()?,
            mark: file
                .mark
                .map(|m| {
                    m.parse()
                        .map_err(|e: PacketMarkError| invalid("mark", e.to_string()))
                })
                .transpose()?,
            local,
            timeouts: TimeoutSettings {
                established: t.established,
                closing: t.closing,
                fin_wait: t.fin_wait,
                handshake: t.handshake,
            },
            persist: file.persist,
            sniff,
        })
    }

    /// These settings (the flags), falling back to `file` for whatever was not given.
    pub fn or(self, file: RunSettings) -> RunSettings {
        RunSettings {
            ifaces: first(self.ifaces, file.ifaces),
            redirects: first(self.redirects, file.redirects),
            disabled: first(self.disabled, file.disabled),
            mode: self.mode.or(file.mode),
            allow: first(self.allow, file.allow),
            conntrack_size: self.conntrack_size.or(file.conntrack_size),
            metrics: self.metrics.or(file.metrics),
            mark: self.mark.or(file.mark),
            local: self.local.or(file.local),
            timeouts: TimeoutSettings {
                established: self.timeouts.established.or(file.timeouts.established),
                closing: self.timeouts.closing.or(file.timeouts.closing),
                fin_wait: self.timeouts.fin_wait.or(file.timeouts.fin_wait),
                handshake: self.timeouts.handshake.or(file.timeouts.handshake),
            },
            persist: self.persist.or(file.persist),
            sniff: self.sniff.or(file.sniff),
        }
    }

    /// Whether the programs stay attached when the loader exits; off if not given.
    pub fn persist(&self) -> bool {
        self.persist.unwrap_or(false)
    }

    /// The rules, [`crate::rules::DEFAULT_RULES`] if none were given.
    pub fn rules(&self) -> Vec<RedirectRule> {
        if self.redirects.is_empty() {
            crate::rules::DEFAULT_RULES.to_vec()
        } else {
            self.redirects.clone()
        }
    }

    /// Checks the rules as a set, and that every `disabled` port has one.
    pub fn check_rules(&self) -> Result<(), RulesSettingError> {
        let rules = self.rules();
        crate::rules::validate(&rules)?;
        match self
            .disabled
            .iter()
            .find(|port| !rules.iter().any(|rule| rule.from_port == **port))
        {
            Some(port) => Err(RulesSettingError::DisabledWithoutRule(*port)),
            None => Ok(()),
        }
    }

    /// The ingress mode, `auto` if not given.
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or_default()
    }

    /// The conntrack size, [`DEFAULT_CONNTRACK_SIZE`] if not given.
    pub fn conntrack_size(&self) -> u32 {
        self.conntrack_size.unwrap_or(DEFAULT_CONNTRACK_SIZE)
    }

    /// The reaper's timeouts, [`Timeouts::default`] for those not given.
    pub fn timeouts(&self) -> Timeouts {
        let d = Timeouts::default();
        let secs =
            |given: Option<u64>, default: Duration| given.map_or(default, Duration::from_secs);
        Timeouts {
            established: secs(self.timeouts.established, d.established),
            closing: secs(self.timeouts.closing, d.closing),
            fin_wait: secs(self.timeouts.fin_wait, d.fin_wait),
            handshake: secs(self.timeouts.handshake, d.handshake),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RunSettings, ConfigError> {
        RunSettings::parse(text, Path::new("test.toml"))
    }

    const FULL: &str = r#"
        ifaces = ["eth0", "eth1"]
        redirects = ["80:8080", "443:8443", "9000:9090"]
        disabled = [9000]
        mode = "xdp-generic"
        allow = ["10.0.0.0/8", "2001:db8::/32"]
        conntrack_size = 1024
        metrics = "127.0.0.1:9464"
        mark = "0x42/0xff"
        local_cgroup = "/sys/fs/cgroup/web"

        persist = true

        [timeouts]
        established = 3600
        closing = 5
        fin_wait = 30
        handshake = 20

        [sniff]
        listen = "0.0.0.0:80"
        websocket = "127.0.0.1:8080"
        http = "127.0.0.1:8000"
        max_conns = 100
        header_timeout = 3
        not_http = "http"
        ws_path = ["/ws/"]
        tls_listen = "0.0.0.0:443"
        tls_websocket = "127.0.0.1:8443"
        tls_http = "127.0.0.1:9443"
        ws_sni = ["*.example.com"]
    "#;

    #[test]
    fn parses_every_key() {
        let s = parse(FULL).unwrap();
        assert_eq!(s.ifaces, ["eth0", "eth1"]);
        assert_eq!(s.redirects.len(), 3);
        assert_eq!(s.redirects[2].to_string(), "9000->9090");
        assert_eq!(s.disabled, [9000]);
        assert_eq!(s.check_rules(), Ok(()));
        assert_eq!(s.mode(), Mode::XdpGeneric);
        assert_eq!(s.allow[1].to_string(), "2001:db8::/32");
        assert_eq!(s.conntrack_size(), 1024);
        assert_eq!(s.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(s.mark.map(|m| m.to_string()).as_deref(), Some("0x42/0xff"));
        assert_eq!(
            s.local,
            Some(LocalSetting::Cgroup(PathBuf::from("/sys/fs/cgroup/web")))
        );
        let t = s.timeouts();
        assert_eq!(t.established, Duration::from_secs(3600));
        assert_eq!(t.closing, Duration::from_secs(5));
        assert_eq!(t.fin_wait, Duration::from_secs(30));
        assert_eq!(t.handshake, Duration::from_secs(20));
        assert!(s.persist());
        assert_eq!(s.sniff.validate("sniff-"), Ok(()));
        let sniff = s.sniff.config().unwrap();
        assert_eq!(sniff.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(sniff.max_conns, 100);
        assert_eq!(sniff.header_timeout, Duration::from_secs(3));
        assert_eq!(sniff.detect.ws_paths, ["/ws/"]);
        assert_eq!(sniff.tls.unwrap().ws_sni.len(), 1);
    }

    /// dist/redirector.toml with every commented-out key line (and `[sniff]`) uncommented.
    fn shipped_uncommented() -> String {
        include_str!("../../dist/redirector.toml")
            .lines()
            .map(|line| {
                let bare = line.trim_start_matches("# ");
                let is_key = bare.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
                if bare != line && (is_key || bare == "[sniff]") {
                    bare
                } else {
                    line
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn shipped_example_with_every_key_uncommented_parses() {
        let s = parse(&shipped_uncommented()).unwrap();
        assert!(s.persist());
        assert!(!s.allow.is_empty() && s.metrics.is_some() && s.mark.is_some());
        assert_eq!(s.sniff.validate("sniff-"), Ok(()));
        let sniff = s.sniff.config().expect("[sniff] uncommented");
        assert_eq!(sniff.max_conns_per_ip, Some(100));
        assert!(sniff.tls.is_some() && sniff.proxy_protocol.is_some());
    }

    #[test]
    fn shipped_example_parses_to_the_defaults() {
        let s = parse(include_str!("../../dist/redirector.toml")).unwrap();
        assert_eq!(s.ifaces, ["eth0"]);
        assert_eq!(s.redirects, crate::rules::DEFAULT_RULES);
        assert_eq!(s.mode(), Mode::Auto);
        assert_eq!(s.conntrack_size(), DEFAULT_CONNTRACK_SIZE);
        let (t, d) = (s.timeouts(), Timeouts::default());
        assert_eq!(
            (t.established, t.closing, t.fin_wait, t.handshake),
            (d.established, d.closing, d.fin_wait, d.handshake)
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s, RunSettings::default());
        assert_eq!(s.mode(), Mode::Auto);
        assert_eq!(s.conntrack_size(), DEFAULT_CONNTRACK_SIZE);
        assert_eq!(s.timeouts().closing, Timeouts::default().closing);
        assert_eq!(s.timeouts().established, Timeouts::default().established);
    }

    #[test]
    fn local_keys_turn_local_clients_off_or_pick_the_cgroup() {
        assert_eq!(
            parse("local = false").unwrap().local,
            Some(LocalSetting::Off)
        );
        assert_eq!(parse("local = true").unwrap().local, None);
        let s = parse("local = true\nlocal_cgroup = \"/sys/fs/cgroup/a\"").unwrap();
        let cgroup = Some(LocalSetting::Cgroup("/sys/fs/cgroup/a".into()));
        assert_eq!(s.local, cgroup);
        // --no-local wins over the file's cgroup, as any flag over its key.
        let flags = RunSettings {
            local: Some(LocalSetting::Off),
            ..RunSettings::default()
        };
        assert_eq!(flags.or(s).local, Some(LocalSetting::Off));
        // Not given as a flag: the file's.
        assert_eq!(
            RunSettings::default()
                .or(parse("local_cgroup = \"/sys/fs/cgroup/a\"").unwrap())
                .local,
            cgroup
        );
    }

    #[test]
    fn flags_override_the_file_key_by_key() {
        let file = parse(FULL).unwrap();
        let flags = RunSettings {
            redirects: vec!["81:8081".parse().unwrap()],
            mode: Some(Mode::Tc),
            timeouts: TimeoutSettings {
                closing: Some(1),
                ..TimeoutSettings::default()
            },
            ..RunSettings::default()
        };
        let s = flags.or(file);
        assert_eq!(s.redirects.len(), 1, "a list flag replaces the file's list");
        assert_eq!(s.mode(), Mode::Tc);
        assert_eq!(s.timeouts().closing, Duration::from_secs(1));
        // Not given as flags: from the file.
        assert_eq!(s.ifaces, ["eth0", "eth1"]);
        assert_eq!(s.allow.len(), 2);
        assert_eq!(s.conntrack_size(), 1024);
        assert_eq!(s.timeouts().fin_wait, Duration::from_secs(30));
        assert!(s.metrics.is_some());
        assert!(s.persist(), "from the file");
    }

    #[test]
    fn sniff_flags_override_the_file_key_by_key() {
        let file = parse(FULL).unwrap();
        let flags = RunSettings {
            sniff: SniffSettings {
                header_timeout: Some(9),
                http: Some("127.0.0.1:9000".parse().unwrap()),
                ..SniffSettings::default()
            },
            ..RunSettings::default()
        };
        let s = flags.or(file).sniff.config().unwrap();
        assert_eq!(s.header_timeout, Duration::from_secs(9));
        assert_eq!(s.http_backend, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.max_conns, 100, "from the file");
        assert_eq!(s.websocket_backend, "127.0.0.1:8080".parse().unwrap());
    }

    fn error(text: &str) -> String {
        let e = parse(text).unwrap_err();
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        msg
    }

    #[test]
    fn a_disabled_port_needs_a_rule() {
        let s = parse("disabled = [443]").unwrap();
        assert_eq!(s.check_rules(), Ok(()), "443 has a default rule");
        let s = parse("redirects = [\"80:8080\"]\ndisabled = [443]").unwrap();
        assert_eq!(
            s.check_rules(),
            Err(RulesSettingError::DisabledWithoutRule(443))
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = error("ifaces = [\"eth0\"]\nredirect = [\"80:8080\"]\n");
        assert!(
            e.contains("test.toml") && e.contains("unknown field `redirect`"),
            "{e}"
        );
        let e = error("[timeouts]\nclosed = 1\n");
        assert!(e.contains("unknown field `closed`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, needle) in [
            (
                "redirects = [\"80:80\"]",
                "`redirects`: invalid rule `80:80`",
            ),
            ("mode = \"fast\"", "`mode`: invalid mode `fast`"),
            (
                "allow = [\"10.0.0.0/33\"]",
                "`allow`: invalid --allow prefix",
            ),
            (
                "metrics = \"localhost\"",
                "`metrics`: invalid address `localhost`",
            ),
            (
                "[timeouts]\nclosing = 0",
                "`timeouts.closing`: must be at least 1",
            ),
            ("conntrack_size = \"big\"", "conntrack_size"),
            (
                "local = false\nlocal_cgroup = \"/sys/fs/cgroup\"",
                "`local_cgroup`: `/sys/fs/cgroup` given with `local = false`",
            ),
            ("ifaces = \"eth0\"", "ifaces"),
            ("this is not toml", "test.toml"),
            ("persist = \"yes\"", "persist"),
            (
                "[sniff]\nlisten = \"80\"",
                "`sniff.listen`: invalid address `80`",
            ),
            (
                "[sniff]\nmax_conns = 0",
                "`sniff.max_conns`: 0 is not in 1..=1000000",
            ),
            (
                "[sniff]\nheader_timeout = 3601",
                "`sniff.header_timeout`: 3601 is not in 1..=3600",
            ),
            (
                "[sniff]\nmax_header_bytes = 10",
                "`sniff.max_header_bytes`: 10 is not in 64..=1048576",
            ),
            (
                "[sniff]\nws_path = [\"ws\"]",
                "`sniff.ws_path`: invalid --ws-path `ws`",
            ),
            ("[sniff]\nnot_http = \"drop\"", "`sniff.not_http`"),
            ("[sniff]\nrelay = \"fast\"", "`sniff.relay`"),
            ("[sniff]\nproxy_protocol = \"v3\"", "`sniff.proxy_protocol`"),
            ("[sniff]\nws_sni = [\"\"]", "`sniff.ws_sni`"),
            (
                "[sniff]\nlisten_on = \"0.0.0.0:80\"",
                "unknown field `listen_on`",
            ),
        ] {
            let e = error(text);
            assert!(e.contains(needle), "{text}: `{needle}` not in {e}");
        }
    }
}
