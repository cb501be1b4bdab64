//! Opening connections: TCP (optionally from a `--source-addr`), TLS for wss, then the
//! WebSocket handshake, all within `--connect-timeout`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;
use wsload::target::Target;
use wsload::{tls, websocket};

/// Bounds of each connection's read buffer, which tungstenite allocates up front (128 KiB by
/// default: 640 MB for 5 000 connections).
const MIN_READ_BUFFER: usize = 4 << 10;
const MAX_READ_BUFFER: usize = 128 << 10;
/// WebSocket frame header of a masked or unmasked frame, at most.
const FRAME_HEADER_MAX: usize = 14;

pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// An open WebSocket connection, plain or over TLS (boxed: the streams are large and moved
/// around while a connection is set up).
pub enum Connection {
    Plain(Box<WebSocketStream<TcpStream>>),
    Tls(Box<WebSocketStream<TlsStream>>),
}

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("cannot bind a socket to --source-addr {ip}")]
    Bind {
        ip: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("`{host}` is not a valid TLS server name")]
    ServerName { host: String },
    #[error("TLS handshake with {addr} failed")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("WebSocket handshake with {addr} failed")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: WsError,
    },
    #[error("connecting to {addr} timed out after {}s (--connect-timeout)", after.as_secs_f64())]
    Timeout { addr: SocketAddr, after: Duration },
}

/// Opens connections; shared by every task.
pub struct Connector {
    tls: Option<TlsConnector>,
    sources_v4: Vec<IpAddr>,
    sources_v6: Vec<IpAddr>,
    next_source: AtomicUsize,
    timeout: Duration,
    ws_config: WebSocketConfig,
}

impl Connector {
    /// `insecure_tls`: whether wss may be used (any certificate accepted); `sources`: local
    /// addresses to bind to, used in turn for targets of their family; `message_size`: sizes
    /// the read buffers so that one echo fits.
    pub fn new(
        insecure_tls: bool,
        sources: &[IpAddr],
        timeout: Duration,
        message_size: usize,
    ) -> Result<Self, rustls::Error> {
        let tls = match insecure_tls {
            true => Some(TlsConnector::from(Arc::new(tls::insecure_client_config()?))),
            false => None,
        };
        let (sources_v4, sources_v6) = sources.iter().partition(|ip| ip.is_ipv4());
        Ok(Self {
            tls,
            sources_v4,
            sources_v6,
            next_source: AtomicUsize::new(0),
            timeout,
            ws_config: websocket::config().read_buffer_size(
                (message_size + FRAME_HEADER_MAX).clamp(MIN_READ_BUFFER, MAX_READ_BUFFER),
            ),
        })
    }

    /// Opens one connection to `target`.
    pub async fn open(&self, target: &Target) -> Result<Connection, ConnectError> {
        let addr = target.addr;
        tokio::time::timeout(self.timeout, self.open_unbounded(target))
            .await
            .map_err(|_| ConnectError::Timeout {
                addr,
                after: self.timeout,
            })?
    }

    async fn open_unbounded(&self, target: &Target) -> Result<Connection, ConnectError> {
        let addr = target.addr;
        let tcp = self.connect_tcp(addr).await?;
        let handshake = |source| ConnectError::Handshake { addr, source };
        let Some(tls) = self.tls.as_ref().filter(|_| target.tls) else {
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(&target.uri, tcp, Some(self.ws_config))
                    .await
                    .map_err(handshake)?;
            return Ok(Connection::Plain(Box::new(ws)));
        };
        let name =
            ServerName::try_from(target.host.clone()).map_err(|_| ConnectError::ServerName {
                host: target.host.clone(),
            })?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls { addr, source })?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(&target.uri, stream, Some(self.ws_config))
                .await
                .map_err(handshake)?;
        Ok(Connection::Tls(Box::new(ws)))
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let tcp_error = |source| ConnectError::Tcp { addr, source };
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(tcp_error)?;
        if let Some(ip) = self.source_for(addr) {
            bind_source(&socket, ip).map_err(|source| ConnectError::Bind { ip, source })?;
        }
        let tcp = socket.connect(addr).await.map_err(tcp_error)?;
        tcp.set_nodelay(true).map_err(tcp_error)?;
        Ok(tcp)
    }

    /// The next `--source-addr` of the target's family, round-robin (None: let the kernel pick).
    fn source_for(&self, addr: SocketAddr) -> Option<IpAddr> {
        let sources = match addr {
            SocketAddr::V4(_) => &self.sources_v4,
            SocketAddr::V6(_) => &self.sources_v6,
        };
        if sources.is_empty() {
            return None;
        }
        let turn = self.next_source.fetch_add(1, Ordering::Relaxed);
        Some(sources[turn % sources.len()])
    }
}

/// Binds to `ip` before connecting.
fn bind_source(socket: &TcpSocket, ip: IpAddr) -> io::Result<()> {
    // Best effort: without it binding still works, only with fewer ports to go round.
    let _ = defer_port_choice(socket);
    socket.bind(SocketAddr::new(ip, 0))
}

/// Sets IP_BIND_ADDRESS_NO_PORT, which defers the choice of the source port from bind() to
/// connect(): the port is then only reserved per destination. Without it every bind takes a
/// port for good, and churn runs exhaust the ~28 000 ephemeral ports of one address.
fn defer_port_choice(socket: &TcpSocket) -> io::Result<()> {
    let enable: libc::c_int = 1;
    // SAFETY: the descriptor belongs to `socket`, which outlives the call; the option value
    // points to a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const enable).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_choice_can_be_deferred_on_both_families() {
        for socket in [TcpSocket::new_v4().unwrap(), TcpSocket::new_v6().unwrap()] {
            defer_port_choice(&socket).unwrap();
        }
    }

    #[test]
    fn source_addresses_are_used_in_turn_per_family() {
        let sources: Vec<IpAddr> = ["127.0.0.1", "::1", "127.0.0.2"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        let connector = Connector::new(false, &sources, Duration::from_secs(1), 64).unwrap();
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let picked: Vec<IpAddr> = (0..4).filter_map(|_| connector.source_for(v4)).collect();
        assert!(picked.iter().all(IpAddr::is_ipv4), "{picked:?}");
        assert!(picked.contains(&sources[0]) && picked.contains(&sources[2]));
        assert_eq!(connector.source_for(v6), Some(sources[1]));
        let none = Connector::new(false, &[], Duration::from_secs(1), 64).unwrap();
        assert_eq!(none.source_for(v4), None);
    }
}
