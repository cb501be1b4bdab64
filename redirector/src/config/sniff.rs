//! The sniffing proxy's settings: `[sniff]` of the config file, the `--sniff-*` flags of
//! `run` and the flags of `redirector sniff`, all merged the same way ("not given" kept
//! apart from the default), checked, then turned into a [`SniffConfig`].
//!
//! The value ranges live here once: clap's value parsers and the file's check use them.

use std::{net::SocketAddr, ops::RangeInclusive, time::Duration};

use redirector_sniff::{
    detect::{DetectConfig, DEFAULT_MAX_HEADER_BYTES},
    fd_limit,
    proxy_protocol::ProxyProtocol,
    server::{
        NotHttpPolicy, SniffConfig, TlsRoute, DEFAULT_CONNECT_TIMEOUT_SECS,
        DEFAULT_HEADER_TIMEOUT_SECS, DEFAULT_IDLE_TIMEOUT_SECS,
    },
    sni::SniPattern,
    splice::RelayMode,
};
use serde::Deserialize;

use crate::privdrop::DEFAULT_USER;

// Bounds typed as clap's ranged parsers take them: i64 for u32 values, u64 for u64 ones.
/// Accepted `max_conns` and `max_conns_per_ip`.
pub const MAX_CONNS_RANGE: RangeInclusive<i64> = 1..=1_000_000;
/// Accepted `header_timeout`, in seconds.
pub const HEADER_TIMEOUT_RANGE: RangeInclusive<u64> = 1..=3600;
/// Accepted `connect_timeout`, in seconds.
pub const CONNECT_TIMEOUT_RANGE: RangeInclusive<u64> = 1..=600;
/// Accepted `max_header_bytes`.
pub const MAX_HEADER_BYTES_RANGE: RangeInclusive<i64> = 64..=1_048_576;

/// Settings that contradict each other once flags and file are merged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SniffSettingsError {
    /// A setting given without the one it depends on.
    #[error("{given} needs {needed}")]
    Requires {
        /// What was given, as `--flag (`key`)`.
        given: String,
        /// What is missing, as `--flag <VALUE> (`key`)`.
        needed: String,
    },
}

/// `[sniff]` as written: every key optional, unknown keys rejected. Keys are the `--sniff-`
/// flags without the prefix, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSniff {
    listen: Option<String>,
    websocket: Option<String>,
    http: Option<String>,
    user: Option<String>,
    group: Option<String>,
    ws_path: Option<Vec<String>>,
    max_conns: Option<i64>,
    max_conns_per_ip: Option<i64>,
    header_timeout: Option<i64>,
    idle_timeout: Option<u64>,
    connect_timeout: Option<i64>,
    max_header_bytes: Option<i64>,
    not_http: Option<String>,
    tls_listen: Option<String>,
    tls_websocket: Option<String>,
    tls_http: Option<String>,
    ws_sni: Option<Vec<String>>,
    proxy_protocol: Option<String>,
    relay: Option<String>,
}

/// The sniffing proxy's settings; `None` or an empty list means "not given".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SniffSettings {
    /// `--sniff-listen` / `sniff.listen`.
    pub listen: Option<SocketAddr>,
    /// `--sniff-websocket` / `sniff.websocket`.
    pub websocket: Option<SocketAddr>,
    /// `--sniff-http` / `sniff.http`.
    pub http: Option<SocketAddr>,
    /// `--sniff-user` / `sniff.user`.
    pub user: Option<String>,
    /// `--sniff-group` / `sniff.group`.
    pub group: Option<String>,
    /// `--sniff-ws-path` / `sniff.ws_path`.
    pub ws_paths: Vec<String>,
    /// `--sniff-max-conns` / `sniff.max_conns`.
    pub max_conns: Option<u32>,
    /// `--sniff-max-conns-per-ip` / `sniff.max_conns_per_ip`.
    pub max_conns_per_ip: Option<u32>,
    /// `--sniff-header-timeout` / `sniff.header_timeout`, seconds.
    pub header_timeout: Option<u64>,
    /// `--sniff-idle-timeout` / `sniff.idle_timeout`, seconds (0: never).
    pub idle_timeout: Option<u64>,
    /// `--sniff-connect-timeout` / `sniff.connect_timeout`, seconds.
    pub connect_timeout: Option<u64>,
    /// `--sniff-max-header-bytes` / `sniff.max_header_bytes`.
    pub max_header_bytes: Option<u32>,
    /// `--sniff-not-http` / `sniff.not_http`.
    pub not_http: Option<NotHttpPolicy>,
    /// `--sniff-tls-listen` / `sniff.tls_listen`.
    pub tls_listen: Option<SocketAddr>,
    /// `--sniff-tls-websocket` / `sniff.tls_websocket`.
    pub tls_websocket: Option<SocketAddr>,
    /// `--sniff-tls-http` / `sniff.tls_http`.
    pub tls_http: Option<SocketAddr>,
    /// `--sniff-ws-sni` / `sniff.ws_sni`.
    pub ws_sni: Vec<SniPattern>,
    /// `--sniff-proxy-protocol` / `sniff.proxy_protocol`.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `--sniff-relay` / `sniff.relay`.
    pub relay: Option<RelayMode>,
}

/// A `ws_path` must be an absolute path prefix without blanks.
pub fn parse_ws_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.contains(|c: char| c.is_ascii_whitespace()) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid --ws-path `{s}`: expected a path prefix starting with /"
        ))
    }
}

/// `value` if it lies in `range`, else why not.
fn in_range<T: TryFrom<i64>, R: Copy + Into<i128> + std::fmt::Display>(
    value: i64,
    range: &RangeInclusive<R>,
) -> Result<T, String> {
    let (lo, hi): (i128, i128) = ((*range.start()).into(), (*range.end()).into());
    if (lo..=hi).contains(&i128::from(value)) {
        T::try_from(value).map_err(|_| format!("{value} is out of range"))
    } else {
        Err(format!(
            "{value} is not in {}..={}",
            range.start(),
            range.end()
        ))
    }
}

fn first<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() {
        file
    } else {
        flag
    }
}

impl FileSniff {
    /// Parses and range-checks each value; `invalid(key, why)` names the key (`sniff.KEY`).
    pub(super) fn parse<E>(self, invalid: impl Fn(&str, String) -> E) -> Result<SniffSettings, E> {
        fn one<T, E>(
            key: &str,
            value: Option<String>,
            invalid: &impl Fn(&str, String) -> E,
        ) -> Result<Option<T>, E>
        where
            T: std::str::FromStr,
            T::Err: std::fmt::Display,
        {
            value
                .map(|v| v.parse().map_err(|e: T::Err| invalid(key, e.to_string())))
                .transpose()
        }
        fn addr<E>(
            key: &str,
            value: Option<String>,
            invalid: &impl Fn(&str, String) -> E,
        ) -> Result<Option<SocketAddr>, E> {
            value
                .map(|v| {
                    v.parse().map_err(|_| {
                        invalid(
                            key,
                            format!("invalid address `{v}`: expected IP:PORT, e.g. 127.0.0.1:8080"),
                        )
                    })
                })
                .transpose()
        }
        fn ranged<T: TryFrom<i64>, R: Copy + Into<i128> + std::fmt::Display, E>(
            key: &str,
            value: Option<i64>,
            range: &RangeInclusive<R>,
            invalid: &impl Fn(&str, String) -> E,
        ) -> Result<Option<T>, E> {
            value
                .map(|v| in_range(v, range).map_err(|why| invalid(key, why)))
                .transpose()
        }
        let invalid = &invalid;
        Ok(SniffSettings {
            listen: addr("sniff.listen", self.listen, invalid)?,
            websocket: addr("sniff.websocket", self.websocket, invalid)?,
            http: addr("sniff.http", self.http, invalid)?,
            user: self.user,
            group: self.group,
            ws_paths: self
                .ws_path
                .unwrap_or_default()
                .iter()
                .map(|p| parse_ws_path(p).map_err(|why| invalid("sniff.ws_path", why)))
                .collect::<Result<_, _>>()?,
            max_conns: ranged("sniff.max_conns", self.max_conns, &MAX_CONNS_RANGE, invalid)?,
            max_conns_per_ip: ranged(
                "sniff.max_conns_per_ip",
                self.max_conns_per_ip,
                &MAX_CONNS_RANGE,
                invalid,
            )?,
            header_timeout: ranged(
                "sniff.header_timeout",
                self.header_timeout,
                &HEADER_TIMEOUT_RANGE,
                invalid,
            )?,
            idle_timeout: self.idle_timeout,
            connect_timeout: ranged(
                "sniff.connect_timeout",
                self.connect_timeout,
                &CONNECT_TIMEOUT_RANGE,
                invalid,
            )?,
            max_header_bytes: ranged(
                "sniff.max_header_bytes",
                self.max_header_bytes,
                &MAX_HEADER_BYTES_RANGE,
                invalid,
            )?,
            not_http: one("sniff.not_http", self.not_http, invalid)?,
            tls_listen: addr("sniff.tls_listen", self.tls_listen, invalid)?,
            tls_websocket: addr("sniff.tls_websocket", self.tls_websocket, invalid)?,
            tls_http: addr("sniff.tls_http", self.tls_http, invalid)?,
            ws_sni: self
                .ws_sni
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    p.parse()
                        .map_err(|e: <SniPattern as std::str::FromStr>::Err| {
                            invalid("sniff.ws_sni", e.to_string())
                        })
                })
                .collect::<Result<_, _>>()?,
            proxy_protocol: one("sniff.proxy_protocol", self.proxy_protocol, invalid)?,
            relay: one("sniff.relay", self.relay, invalid)?,
        })
    }
}

impl SniffSettings {
    /// These settings (the flags), falling back to `file` for whatever was not given.
    pub fn or(self, file: SniffSettings) -> SniffSettings {
        SniffSettings {
            listen: self.listen.or(file.listen),
            websocket: self.websocket.or(file.websocket),
            http: self.http.or(file.http),
            user: self.user.or(file.user),
            group: self.group.or(file.group),
            ws_paths: first(self.ws_paths, file.ws_paths),
            max_conns: self.max_conns.or(file.max_conns),
            max_conns_per_ip: self.max_conns_per_ip.or(file.max_conns_per_ip),
            header_timeout: self.header_timeout.or(file.header_timeout),
            idle_timeout: self.idle_timeout.or(file.idle_timeout),
            connect_timeout: self.connect_timeout.or(file.connect_timeout),
            max_header_bytes: self.max_header_bytes.or(file.max_header_bytes),
            not_http: self.not_http.or(file.not_http),
            tls_listen: self.tls_listen.or(file.tls_listen),
            tls_websocket: self.tls_websocket.or(file.tls_websocket),
            tls_http: self.tls_http.or(file.tls_http),
            ws_sni: first(self.ws_sni, file.ws_sni),
            proxy_protocol: self.proxy_protocol.or(file.proxy_protocol),
            relay: self.relay.or(file.relay),
        }
    }

    /// The names (flag without `--sniff-`, i.e. the key with `-` for `_`) of the settings
    /// given, `listen` and the backends excepted.
    fn options_given(&self) -> Vec<&'static str> {
        let given = [
            ("user", self.user.is_some()),
            ("group", self.group.is_some()),
            ("ws-path", !self.ws_paths.is_empty()),
            ("max-conns", self.max_conns.is_some()),
            ("max-conns-per-ip", self.max_conns_per_ip.is_some()),
            ("header-timeout", self.header_timeout.is_some()),
            ("idle-timeout", self.idle_timeout.is_some()),
            ("connect-timeout", self.connect_timeout.is_some()),
            ("max-header-bytes", self.max_header_bytes.is_some()),
            ("not-http", self.not_http.is_some()),
            ("tls-listen", self.tls_listen.is_some()),
            ("tls-websocket", self.tls_websocket.is_some()),
            ("tls-http", self.tls_http.is_some()),
            ("ws-sni", !self.ws_sni.is_empty()),
            ("proxy-protocol", self.proxy_protocol.is_some()),
            ("relay", self.relay.is_some()),
        ];
        given
            .into_iter()
            .filter_map(|(name, given)| given.then_some(name))
            .collect()
    }

    /// Checks, after flags and file are merged, what clap's `requires` checked on the
    /// command line alone: the proxy's addresses come together, its options need
    /// `listen`, and the TLS listener comes with both of its backends. `prefix` is how
    /// flags are spelt (`sniff-` under `run`, empty under `redirector sniff`).
    pub fn validate(&self, prefix: &str) -> Result<(), SniffSettingsError> {
        let name = |n: &str| format!("--{prefix}{n} (`sniff.{}`)", n.replace('-', "_"));
        let needs = |given: &str, needed: &str| SniffSettingsError::Requires {
            given: name(given),
            needed: name(needed).replacen(' ', " <ADDR:PORT> ", 1),
        };
        if self.listen.is_some() {
            for (backend, set) in [("websocket", self.websocket), ("http", self.http)] {
                if set.is_none() {
                    return Err(needs("listen", backend));
                }
            }
        } else {
            let orphan = [
                ("websocket", self.websocket.is_some()),
                ("http", self.http.is_some()),
            ]
            .into_iter()
            .filter_map(|(n, given)| given.then_some(n))
            .chain(self.options_given())
            .next();
            if let Some(orphan) = orphan {
                return Err(needs(orphan, "listen"));
            }
        }
        if self.tls_listen.is_some() {
            for (backend, set) in [
                ("tls-websocket", self.tls_websocket),
                ("tls-http", self.tls_http),
            ] {
                if set.is_none() {
                    return Err(needs("tls-listen", backend));
                }
            }
        } else {
            for (option, given) in [
                ("tls-websocket", self.tls_websocket.is_some()),
                ("tls-http", self.tls_http.is_some()),
                ("ws-sni", !self.ws_sni.is_empty()),
            ] {
                if given {
                    return Err(needs(option, "tls-listen"));
                }
            }
        }
        Ok(())
    }

    /// The user the proxy runs as, [`DEFAULT_USER`] if not given.
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(DEFAULT_USER)
    }

    /// The proxy's configuration, defaults applied, if `listen` and both backends are
    /// given (see [`SniffSettings::validate`]).
    pub fn config(&self) -> Option<SniffConfig> {
        Some(SniffConfig {
            listen: self.listen?,
            websocket_backend: self.websocket?,
            http_backend: self.http?,
            detect: DetectConfig {
                ws_paths: self.ws_paths.clone(),
                max_header_bytes: self
                    .max_header_bytes
                    .map_or(DEFAULT_MAX_HEADER_BYTES, |n| n as usize),
            },
            max_conns: self
                .max_conns
                .map_or_else(fd_limit::default_max_conns, |n| n as usize),
            max_conns_per_ip: self.max_conns_per_ip,
            header_timeout: Duration::from_secs(
                self.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT_SECS),
            ),
            idle_timeout: match self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            connect_timeout: Duration::from_secs(
                self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS),
            ),
            not_http: self.not_http.unwrap_or_default(),
            tls: self.tls_listen.and_then(|listen| {
                Some(TlsRoute {
                    listen,
                    websocket_backend: self.tls_websocket?,
                    http_backend: self.tls_http?,
                    ws_sni: self.ws_sni.clone(),
                })
            }),
            proxy_protocol: self.proxy_protocol,
            relay: self.relay.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn proxy() -> SniffSettings {
        SniffSettings {
            listen: addr("0.0.0.0:80"),
            websocket: addr("127.0.0.1:8080"),
            http: addr("127.0.0.1:8000"),
            ..SniffSettings::default()
        }
    }

    #[test]
    fn defaults_apply_to_what_is_not_given() {
        let config = proxy().config().unwrap();
        assert_eq!(
            config.header_timeout,
            Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS)
        );
        assert_eq!(
            config.idle_timeout,
            Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS))
        );
        assert_eq!(config.detect.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert!(config.tls.is_none());
        assert_eq!(proxy().user(), DEFAULT_USER);
        let never = SniffSettings {
            idle_timeout: Some(0),
            ..proxy()
        };
        assert_eq!(never.config().unwrap().idle_timeout, None);
        assert!(SniffSettings::default().config().is_none());
    }

    #[test]
    fn merged_settings_are_checked_together() {
        assert_eq!(proxy().validate("sniff-"), Ok(()));
        assert_eq!(SniffSettings::default().validate("sniff-"), Ok(()));
        let no_http = SniffSettings {
            http: None,
            ..proxy()
        };
        assert_eq!(
            no_http.validate("sniff-").unwrap_err().to_string(),
            "--sniff-listen (`sniff.listen`) needs --sniff-http <ADDR:PORT> (`sniff.http`)"
        );
        let orphan = SniffSettings {
            max_conns: Some(3),
            ..SniffSettings::default()
        };
        assert_eq!(
            orphan.validate("sniff-").unwrap_err().to_string(),
            "--sniff-max-conns (`sniff.max_conns`) needs --sniff-listen <ADDR:PORT> (`sniff.listen`)"
        );
        let tls_alone = SniffSettings {
            tls_listen: addr("0.0.0.0:443"),
            tls_http: addr("127.0.0.1:9443"),
            ..proxy()
        };
        assert!(tls_alone
            .validate("")
            .unwrap_err()
            .to_string()
            .contains("--tls-listen (`sniff.tls_listen`) needs --tls-websocket <ADDR:PORT>"));
        let sni_alone = SniffSettings {
            ws_sni: vec!["ws.example.com".parse().unwrap()],
            ..proxy()
        };
        assert!(sni_alone.validate("sniff-").is_err());
    }

    #[test]
    fn ranges_are_those_of_the_flags() {
        assert_eq!(in_range::<u32, _>(1, &MAX_CONNS_RANGE), Ok(1));
        assert!(in_range::<u32, _>(0, &MAX_CONNS_RANGE).is_err());
        assert!(in_range::<u64, _>(3601, &HEADER_TIMEOUT_RANGE).is_err());
        assert!(in_range::<u32, _>(63, &MAX_HEADER_BYTES_RANGE).is_err());
        assert_eq!(parse_ws_path("/ws/"), Ok("/ws/".to_string()));
        assert!(parse_ws_path("ws").is_err());
    }
}
