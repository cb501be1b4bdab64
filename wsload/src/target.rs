//! Where to connect: a `ws://` or `wss://` URL ([`Endpoint`]), and for `wsload` that URL
//! resolved once before the run ([`Target`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio_tungstenite::tungstenite::http::Uri;

/// Why a URL cannot be used.
#[derive(Debug, Error)]
pub enum TargetError {
    /// Not a `ws://` or `wss://` URL with a host.
    #[error("invalid URL `{url}`: {reason}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The host name lookup did not answer in time.
    #[error("resolving the host of `{url}` took more than {}s", after.as_secs_f64())]
    ResolveTimeout {
        /// The URL as given.
        url: String,
        /// How long the lookup was given.
        after: Duration,
    },
    /// The host name lookup failed or found no address.
    #[error("cannot resolve the host of `{url}`")]
    Resolve {
        /// The URL as given.
        url: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
}

/// A parsed server URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The URL as given, for the WebSocket handshake (Host header, path).
    pub uri: Uri,
    /// Whether it is `wss://`.
    pub tls: bool,
    /// Host without IPv6 brackets, for connecting and TLS server name indication.
    pub host: String,
    /// The URL's port, else 80 for ws:// and 443 for wss://.
    pub port: u16,
}

impl Endpoint {
    /// Parses `url`: `ws://HOST[:PORT][/PATH]` or `wss://HOST[:PORT][/PATH]`.
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let invalid = |reason: &str| TargetError::Invalid {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|err| invalid(&format!("{err}")))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(invalid("the scheme must be ws:// or wss://")),
        };
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| invalid("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self {
            uri,
            tls,
            host,
            port,
        })
    }
}

/// `HOST:PORT`, with an IPv6 host in brackets.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One server URL and the address it resolved to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given, for the WebSocket handshake (Host header, path) and the report.
    pub uri: Uri,
    /// Whether it is `wss://`.
    pub tls: bool,
    /// Host without IPv6 brackets, for TLS server name indication.
    pub host: String,
    /// The first address the host resolved to.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `url` and resolves its host within `limit` (the first address returned is used).
    pub async fn resolve(url: &str, limit: Duration) -> Result<Self, TargetError> {
        let Endpoint {
            uri,
            tls,
            host,
            port,
        } = Endpoint::parse(url)?;
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let addr = tokio::time::timeout(limit, lookup)
            .await
            .map_err(|_| TargetError::ResolveTimeout {
                url: url.to_owned(),
                after: limit,
            })?
            .map_err(|source| TargetError::Resolve {
                url: url.to_owned(),
                source,
            })?
            .next();
        let addr = addr.ok_or_else(|| TargetError::Resolve {
            url: url.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        })?;
        Ok(Self {
            uri,
            tls,
            host,
            addr,
        })
    }
}

/// The URL as given.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<(bool, String, u16), TargetError> {
        Endpoint::parse(url).map(|endpoint| (endpoint.tls, endpoint.host, endpoint.port))
    }

    #[test]
    fn urls_parse() {
        let (tls, host, port) = parse("ws://127.0.0.1:8080/").unwrap();
        assert_eq!((tls, host.as_str(), port), (false, "127.0.0.1", 8080));
        let (tls, host, port) = parse("wss://[::1]/path").unwrap();
        assert_eq!((tls, host.as_str(), port), (true, "::1", 443));
        assert_eq!(parse("ws://localhost").unwrap().2, 80);
        assert!(parse("http://127.0.0.1/").is_err());
        assert!(parse("127.0.0.1:80").is_err());
    }

    #[test]
    fn endpoints_show_host_and_port() {
        let endpoint = Endpoint::parse("wss://[::1]/path").unwrap();
        assert_eq!(endpoint.to_string(), "[::1]:443");
        let endpoint = Endpoint::parse("ws://127.0.0.1:8080/").unwrap();
        assert_eq!(endpoint.to_string(), "127.0.0.1:8080");
    }

    #[tokio::test]
    async fn addresses_resolve() {
        let target = Target::resolve("ws://127.0.0.1:9/x", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(target.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(target.to_string(), "ws://127.0.0.1:9/x");
    }
}
