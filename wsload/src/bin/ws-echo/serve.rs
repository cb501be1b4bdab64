//! Serving one listener: accept connections, run the (TLS and) WebSocket handshakes within a
//! time limit, then echo every data message until the peer closes.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::time::Instant;

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
/// The request prefix of `--push-requests`: `push-after MS TEXT`.
const PUSH_PREFIX: &str = "push-after ";
/// Longest delay of a push request, in milliseconds.
const MAX_PUSH_DELAY_MS: u64 = 600_000;
/// Most pushes pending on one connection.
const MAX_PENDING_PUSHES: usize = 64;

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

/// Accepts connections forever, each one served by its own task; `push` honours push
/// requests (`--push-requests`).
pub async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    config: WebSocketConfig,
    push: bool,
) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let transport = transport.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve_connection(tcp, transport, config, push).await {
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
    push: bool,
) -> Result<()> {
    tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
    match transport {
        Transport::Plain => {
            let ws = with_handshake_timeout(accept_ws(tcp, config)).await?;
            echo(ws, push).await
        }
        Transport::Tls(acceptor) => {
            let ws = with_handshake_timeout(async {
                let tls = acceptor.accept(tcp).await.context("TLS handshake failed")?;
                accept_ws(tls, config).await
            })
            .await?;
            echo(ws, push).await
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

/// Echoes data messages until the peer closes; with `push`, also sends the pushes its push
/// requests asked for when they are due.
///
/// Messages that have already arrived are queued (`feed`) in one batch and written with a single
/// flush, which keeps the number of writes low under bulk traffic without delaying lone messages.
async fn echo<S>(mut ws: WebSocketStream<S>, push: bool) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pushes = Pushes::default();
    loop {
        let first = tokio::select! {
            first = ws.next() => match first {
                Some(first) => first,
                None => break,
            },
            text = pushes.next_due() => {
                ws.send(Message::text(text)).await.context("pushing a message")?;
                continue;
            }
        };
        let mut next = Some(first);
        let mut batched = 0;
        while let Some(message) = next.take() {
            let message = message?;
            if push {
                pushes.request(&message);
            }
            echo_one(&mut ws, message).await?;
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

/// The pushes one connection's push requests asked for: (when, text).
#[derive(Default)]
struct Pushes {
    pending: Vec<(Instant, String)>,
}

impl Pushes {
    /// Schedules the push `message` asks for, if it is a push request and there is room.
    fn request(&mut self, message: &Message) {
        let Message::Text(text) = message else {
            return;
        };
        let Some((delay, text)) = parse_push_request(text.as_str()) else {
            return;
        };
        if self.pending.len() < MAX_PENDING_PUSHES {
            self.pending.push((Instant::now() + delay, text.to_owned()));
        }
    }

    /// Waits for the earliest pending push and takes it; never returns if none is pending.
    /// Cancel-safe: a push is only taken once it is due.
    async fn next_due(&mut self) -> String {
        let Some(due) = self.pending.iter().map(|(at, _)| *at).min() else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(due).await;
        let index = self
            .pending
            .iter()
            .position(|(at, _)| *at == due)
            .expect("nothing else takes pushes");
        self.pending.swap_remove(index).1
    }
}

/// `push-after MS TEXT` → (MS, TEXT), for MS up to [`MAX_PUSH_DELAY_MS`].
fn parse_push_request(text: &str) -> Option<(Duration, &str)> {
    let (ms, text) = text.strip_prefix(PUSH_PREFIX)?.split_once(' ')?;
    let ms: u64 = ms.parse().ok().filter(|ms| *ms <= MAX_PUSH_DELAY_MS)?;
    Some((Duration::from_millis(ms), text))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_requests_parse() {
        assert_eq!(
            parse_push_request("push-after 250 hello there"),
            Some((Duration::from_millis(250), "hello there"))
        );
        assert_eq!(parse_push_request("push-after 250"), None);
        assert_eq!(parse_push_request("push-after soon hello"), None);
        assert_eq!(parse_push_request("push-after 600001 hello"), None);
        assert_eq!(parse_push_request("hello"), None);
    }
}
