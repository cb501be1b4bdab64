//! Opening the connection step by step — TCP, TLS for wss, the WebSocket handshake — with one
//! deadline (`--connect-timeout`) for all of them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use wsload::target::Endpoint;
use wsload::{tls, websocket};

use crate::secs;

/// The shared deadline of the connection steps.
pub struct Steps<'a> {
    target: &'a Endpoint,
    limit: Duration,
    deadline: Instant,
}

impl<'a> Steps<'a> {
    /// Starts the clock: every step must be done within `limit` from now.
    pub fn new(target: &'a Endpoint, limit: Duration) -> Self {
        Self {
            target,
            limit,
            deadline: Instant::now() + limit,
        }
    }

    /// Runs one step of connection set-up, failing if the deadline passes first.
    pub async fn run<T>(&self, step: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout_at(self.deadline, step).await {
            Ok(result) => result,
            Err(_) => bail!(
                "connecting to {} timed out after {} (--connect-timeout)",
                self.target,
                secs(self.limit)
            ),
        }
    }
}

/// Opens the TCP connection, from `local_port` if given.
pub async fn tcp(target: &Endpoint, local_port: Option<u16>) -> Result<TcpStream> {
    let tcp = match local_port {
        None => TcpStream::connect((target.host.as_str(), target.port))
            .await
            .with_context(|| format!("cannot connect to {target}"))?,
        Some(port) => connect_from(target, port).await?,
    };
    tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok(tcp)
}

/// Connects to the first address of `target` from local port `port`.
async fn connect_from(target: &Endpoint, port: u16) -> Result<TcpStream> {
    let server = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .with_context(|| format!("resolving {target}"))?
        .next()
        .with_context(|| format!("{target} has no address"))?;
    let (socket, local) = if server.is_ipv4() {
        (TcpSocket::new_v4(), SocketAddr::from(([0, 0, 0, 0], port)))
    } else {
        (TcpSocket::new_v6(), SocketAddr::from(([0u16; 8], port)))
    };
    let socket = socket.context("creating a TCP socket")?;
    socket.set_reuseaddr(true).context("setting SO_REUSEADDR")?;
    socket
        .bind(local)
        .with_context(|| format!("binding local port {port}"))?;
    socket
        .connect(server)
        .await
        .with_context(|| format!("cannot connect to {target} from local port {port}"))
}

/// Runs the TLS handshake for wss, accepting any certificate (see [`tls`]).
pub async fn tls_handshake(target: &Endpoint, tcp: TcpStream) -> Result<TlsStream<TcpStream>> {
    let server_name = ServerName::try_from(target.host.clone())
        .with_context(|| format!("`{}` is not a valid TLS server name", target.host))?;
    let config = tls::insecure_client_config().context("configuring TLS protocol versions")?;
    TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {target} failed"))
}

/// Runs the client side of the WebSocket opening handshake.
pub async fn ws_handshake<S>(target: &Endpoint, stream: S) -> Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(&target.uri, stream, Some(websocket::config()))
            .await
            .with_context(|| format!("WebSocket handshake with {target} failed"))?;
    Ok(ws)
}
