//! Where to connect: a `ws://` or `wss://` URL, resolved once before the run.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio_tungstenite::tungstenite::http::Uri;

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("invalid URL `{url}`: {reason}")]
    Invalid { url: String, reason: String },
    #[error("resolving the host of `{url}` took more than {}s", after.as_secs_f64())]
    ResolveTimeout { url: String, after: Duration },
    #[error("cannot resolve the host of `{url}`")]
    Resolve {
        url: String,
        #[source]
        source: io::Error,
    },
}

/// One server URL and the address it resolved to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given, for the WebSocket handshake (Host header, path) and the report.
    pub uri: Uri,
    pub tls: bool,
    /// Host without IPv6 brackets, for TLS server name indication.
    pub host: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `url` and resolves its host within `limit` (the first address returned is used).
    pub async fn resolve(url: &str, limit: Duration) -> Result<Self, TargetError> {
        let (uri, tls, host, port) = parse(url)?;
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

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

/// Splits a URL into (URI, TLS?, host without brackets, port).
fn parse(url: &str) -> Result<(Uri, bool, String, u16), TargetError> {
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
    Ok((uri, tls, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let (_, tls, host, port) = parse("ws://127.0.0.1:8080/").unwrap();
        assert_eq!((tls, host.as_str(), port), (false, "127.0.0.1", 8080));
        let (_, tls, host, port) = parse("wss://[::1]/path").unwrap();
        assert_eq!((tls, host.as_str(), port), (true, "::1", 443));
        assert_eq!(parse("ws://localhost").unwrap().3, 80);
        assert!(parse("http://127.0.0.1/").is_err());
        assert!(parse("127.0.0.1:80").is_err());
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
