//! Serving one listener: accept connections, run the (TLS and) WebSocket handshakes within a
//! time limit, then echo every data message until the peer closes.

use std::future::Future;
use std::io;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use wsload::error_text;

/// How long a client may take for the TLS and WebSocket handshakes before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many already-received messages are echoed before the writes are flushed.
const MAX_BATCH: usize = 64;
/// Pause after an accept error that is not specific to one connection (e.g. no file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether a listener speaks plain WebSocket or WebSocket over TLS.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(TlsAcceptor),
}

impl Transport {
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "ws",
            Transport::Tls(_) => "wss",
        }
    }
}

/// Accepts connections forever, each one served by its own task.
pub async fn accept_loop(listener: TcpListener, transport: Transport, config: WebSocketConfig) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let transport = transport.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve_connection(tcp, transport, config).await {
                        eprintln!(
                            "ws-echo: connection from {peer}: {}",
                            error_text::describe(err.as_ref())
                        );
                    }
                });
            }
            Err(err) if is_per_connection_error(&err) => {}
            Err(err) => {
                eprintln!("ws-echo: accept failed: {err}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Accept errors that concern only the connection being accepted, not the listener.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Performs the (TLS and) WebSocket handshakes, then echoes until the connection ends.
async fn serve_connection(
    tcp: TcpStream,
    transport: Transport,
    config: WebSocketConfig,
) -> Result<()> {
    tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
    match transport {
        Transport::Plain => {
            let ws = with_handshake_timeout(accept_ws(tcp, config)).await?;
            echo(ws).await
        }
        Transport::Tls(acceptor) => {
            let ws = with_handshake_timeout(async {
                let tls = acceptor.accept(tcp).await.context("TLS handshake failed")?;
                accept_ws(tls, config).await
            })
            .await?;
            echo(ws).await
        }
    }
}

/// Bounds the handshakes so that idle or stuck clients cannot hold a task forever.
async fn with_handshake_timeout<T>(handshake: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("handshake not completed within {HANDSHAKE_TIMEOUT:?}"))?
}

/// Runs the server side of the WebSocket opening handshake.
async fn accept_ws<S>(stream: S, config: WebSocketConfig) -> Result<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio_tungstenite::accept_async_with_config(stream, Some(config))
        .await
        .context("WebSocket handshake failed")
}

/// Echoes data messages until the peer closes.
///
/// Messages that have already arrived are queued (`feed`) in one batch and written with a single
/// flush, which keeps the number of writes low under bulk traffic without delaying lone messages.
async fn echo<S>(mut ws: WebSocketStream<S>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(first) = ws.next().await {
        let mut next = Some(first);
        let mut batched = 0;
        while let Some(message) = next.take() {
            echo_one(&mut ws, message?).await?;
            batched += 1;
            if batched < MAX_BATCH {
                // `None` from now_or_never: nothing is ready; `Some(None)`: the stream ended.
                next = ws.next().now_or_never().flatten();
            }
        }
        ws.flush().await.context("writing echoes")?;
    }
    // The closing handshake is complete: end the transport too (TLS close_notify, then FIN).
    // Best effort, the peer may already be gone.
    let _ = ws.get_mut().shutdown().await;
    Ok(())
}

/// Queues the echo of one received message; control frames need no echo (tungstenite queues
/// pongs and the close reply itself, and they go out with the next flush).
async fn echo_one<S>(ws: &mut WebSocketStream<S>, message: Message) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match message {
        Message::Text(_) | Message::Binary(_) => ws.feed(message).await,
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(()),
    }
}
