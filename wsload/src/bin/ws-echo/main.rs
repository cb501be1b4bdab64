//! `ws-echo`: an RFC 6455 WebSocket echo server (ws and wss) used by the integration tests, the
//! demo and the benchmarks.
//!
//! Every text and binary message is echoed back unchanged; pings are answered by tungstenite and
//! close frames complete the closing handshake. For each listener a line `listening ws ADDR:PORT`
//! or `listening wss ADDR:PORT` is printed to stdout once it is bound, so callers can wait for it
//! (with port 0 the line carries the port the kernel picked).
//!
//! With `--push-requests`, a text message `push-after MS TEXT` is echoed like any other, and
//! MS milliseconds later the server sends TEXT on its own: the tests use it to make a
//! server's packet the first of an idle connection after something happened to it.

mod serve;

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{ArgGroup, Parser};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;
use wsload::{error_text, limits, tls, websocket};

use crate::serve::Transport;

/// Listen backlog of every listening socket (the kernel caps it at `net.core.somaxconn`):
/// the benchmark opens thousands of connections at a few thousand per second.
const LISTEN_BACKLOG: i32 = 4096;

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

    /// Honour `push-after MS TEXT` text messages: echo them, then MS milliseconds later
    /// (at most 600000) send TEXT unprompted, as a text message. At most 64 are pending
    /// per connection; further requests are only echoed.
    #[arg(long)]
    push_requests: bool,
}

/// At least one `--listen` or `--tls-listen` is required.
fn listeners_group() -> ArgGroup {
    ArgGroup::new("listeners")
        .required(true)
        .multiple(true)
        .args(["listen", "tls_listen"])
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ws-echo: error: {}", error_text::describe(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Binds every listener, announces them, then serves until SIGINT or SIGTERM.
async fn run(cli: Cli) -> Result<()> {
    // One descriptor per client: the benchmark's idle load holds thousands.
    if let Err(err) = limits::raise_open_files() {
        eprintln!("ws-echo: warning: cannot raise the open-file limit: {err}");
    }
    let mut listeners = Vec::new();
    for &addr in &cli.listen {
        listeners.push((bind(addr)?, Transport::Plain));
    }
    if !cli.tls_listen.is_empty() {
        let config = tls::self_signed_server_config(&cli.cert_names)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        for &addr in &cli.tls_listen {
            listeners.push((bind(addr)?, Transport::Tls(acceptor.clone())));
        }
    }

    let config = websocket::config();
    for (listener, transport) in listeners {
        let local = listener.local_addr().context("reading the bound address")?;
        announce(transport.scheme(), local)?;
        tokio::spawn(serve::accept_loop(
            listener,
            transport,
            config,
            cli.push_requests,
        ));
    }

    wait_for_shutdown_signal().await
}

/// Prints the `listening SCHEME ADDR:PORT` line the tests wait for.
fn announce(scheme: &str, addr: SocketAddr) -> Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening {scheme} {addr}").context("writing to stdout")?;
    stdout.flush().context("flushing stdout")
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
