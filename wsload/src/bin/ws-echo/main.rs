//! `ws-echo`: an RFC 6455 WebSocket echo server (ws and wss) used by the integration tests, the
//! demo and the benchmarks.
//!
//! Every text and binary message is echoed back unchanged; pings are answered by tungstenite and
//! close frames complete the closing handshake. For each listener a line `listening ws ADDR:PORT`
//! or `listening wss ADDR:PORT` is printed to stdout once it is bound, so callers can wait for it
//! (with port 0 the line carries the port the kernel picked).

use std::future::Future;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use clap::{ArgGroup, Parser};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest accepted message and frame (the tests send 1 MiB messages; benchmarks may send more).
const MAX_MESSAGE_SIZE: usize = 64 << 20;
/// How long a client may take for the TLS and WebSocket handshakes before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many already-received messages are echoed before the writes are flushed.
const MAX_BATCH: usize = 64;
/// Pause after an accept error that is not specific to one connection (e.g. no file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Listen backlog of every listening socket.
const LISTEN_BACKLOG: i32 = 1024;

/// RFC 6455 WebSocket echo server (ws and wss).
///
/// Echoes every text and binary message back unchanged, answers pings and completes
/// closing handshakes. After binding each listener it prints `listening ws ADDR:PORT`
/// or `listening wss ADDR:PORT` on stdout. Exits 0 on SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(version, group(listeners_group()))]
struct Cli {
    /// Serve plain WebSocket (ws://) on ADDR:PORT, e.g. 127.0.0.1:8080 or [::1]:8080 (repeatable).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,

    /// Serve WebSocket over TLS (wss://) on ADDR:PORT with a self-signed certificate
    /// generated at start-up (repeatable).
    #[arg(long = "tls-listen", value_name = "ADDR:PORT")]
    tls_listen: Vec<SocketAddr>,

    /// Subject alternative name of the self-signed certificate (repeatable); names that
    /// parse as IP addresses become IP SANs.
    #[arg(long = "cert-name", value_name = "NAME", default_value = "localhost")]
    cert_names: Vec<String>,
}

/// At least one `--listen` or `--tls-listen` is required.
fn listeners_group() -> ArgGroup {
    ArgGroup::new("listeners")
        .required(true)
        .multiple(true)
        .args(["listen", "tls_listen"])
}

/// Whether a listener speaks plain WebSocket or WebSocket over TLS.
#[derive(Clone)]
enum Transport {
    Plain,
    Tls(TlsAcceptor),
}

impl Transport {
    fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "ws",
            Transport::Tls(_) => "wss",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "ws-echo: error: {}",
                wsload::error_text::describe(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// Binds every listener, announces them, then serves until SIGINT or SIGTERM.
async fn run(cli: Cli) -> Result<()> {
    let mut listeners = Vec::new();
    for &addr in &cli.listen {
        listeners.push((bind(addr)?, Transport::Plain));
    }
    if !cli.tls_listen.is_empty() {
        let acceptor = tls_acceptor(&cli.cert_names)?;
        for &addr in &cli.tls_listen {
            listeners.push((bind(addr)?, Transport::Tls(acceptor.clone())));
        }
    }

    let config = ws_config();
    for (listener, transport) in listeners {
        let local = listener.local_addr().context("reading the bound address")?;
        announce(transport.scheme(), local)?;
        tokio::spawn(accept_loop(listener, transport, config));
    }

    wait_for_shutdown_signal().await
}

/// Prints the `listening SCHEME ADDR:PORT` line the tests wait for.
fn announce(scheme: &str, addr: SocketAddr) -> Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening {scheme} {addr}").context("writing to stdout")?;
    stdout.flush().context("flushing stdout")
}

/// WebSocket settings shared by every connection.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

/// Creates a listening socket; IPv6 sockets are IPv6-only so that `0.0.0.0:P` and `[::]:P`
/// can both be served.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listen = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        TcpListener::from_std(socket.into())
    };
    listen().with_context(|| format!("cannot listen on {addr}"))
}

/// Generates the self-signed certificate and the TLS acceptor of the wss listeners.
fn tls_acceptor(cert_names: &[String]) -> Result<TlsAcceptor> {
    let names: Vec<String> = cert_names.iter().map(|name| san_name(name)).collect();
    let certified = rcgen::generate_simple_self_signed(names.clone())
        .with_context(|| format!("generating a self-signed certificate for {names:?}"))?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("loading the self-signed certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Normalises a `--cert-name`: `[::1]` becomes `::1` so that it is used as an IP SAN
/// (rcgen turns every name that parses as an IP address into an IP SAN).
fn san_name(name: &str) -> String {
    let unbracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
    match unbracketed.map(str::parse::<IpAddr>) {
        Some(Ok(ip)) => ip.to_string(),
        _ => name.to_owned(),
    }
}

/// Accepts connections forever, each one served by its own task.
async fn accept_loop(listener: TcpListener, transport: Transport, config: WebSocketConfig) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let transport = transport.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve_connection(tcp, transport, config).await {
                        eprintln!(
                            "ws-echo: connection from {peer}: {}",
                            wsload::error_text::describe(err.as_ref())
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

/// Returns once SIGINT or SIGTERM arrives.
async fn wait_for_shutdown_signal() -> Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bracketed_ipv6_cert_names_become_addresses() {
        assert_eq!(san_name("[::1]"), "::1");
        assert_eq!(san_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(san_name("localhost"), "localhost");
    }

    #[test]
    fn self_signed_acceptor_builds() {
        let names = ["localhost", "127.0.0.1", "[::1]"].map(String::from);
        tls_acceptor(&names).unwrap();
    }

    #[tokio::test]
    async fn ipv4_and_ipv6_wildcards_share_a_port() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            return; // No IPv6 on this host.
        }
        let v4 = bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = bind(SocketAddr::from(([0u16; 8], port))).unwrap();
        assert_eq!(v6.local_addr().unwrap().port(), port);
    }
}
