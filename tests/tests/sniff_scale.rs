//! `redirector sniff` at WebSocket scale: 9,900 connections open at once through the real
//! binary to a real `ws-echo`, each handshaking, echoing its own message and closing
//! cleanly. Counted, not timed. The proxy holds two descriptors per connection, so 9,900 is
//! what a hard open-file limit of 20,000 (this sandbox's, where CAP_SYS_RESOURCE is not
//! granted) leaves room for; under a lower hard limit the test fails rather than test
//! fewer. Also: the default `--max-conns` follows the open-file limit, and an explicit one
//! wins.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    sync::Arc,
    time::Duration,
};

use redirector_tests::bins;
use testkit::process::Proc;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Connections open at once: the most a hard open-file limit of 20,000 holds in the proxy
/// (two descriptors each, [`PROXY_SPARE_FDS`] besides, rounded down).
const CONNECTIONS: usize = 9_900;
/// Handshakes in progress at once (keeps the listen backlogs from overflowing).
const OPENING_AT_ONCE: usize = 256;
/// Client source addresses (127.0.0.x), so ephemeral ports never run short.
const SOURCES: u8 = 4;
/// Open-file limit wanted for this process and its children: 10,000 sockets here, 20,000
/// in the proxy, 10,000 in ws-echo.
const NOFILE: u64 = 65_536;
/// Descriptors the proxy needs besides two per connection (listener, epoll, stdio…).
const PROXY_SPARE_FDS: u64 = 64;
/// Every phase gives up after this long.
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Raises this process's open-file limit (inherited by the proxy and ws-echo) to
/// [`NOFILE`], or as far as the hard limit allows; returns the soft limit now.
fn raise_nofile() -> u64 {
    let mut limit = nofile();
    let wanted = libc::rlimit {
        rlim_cur: NOFILE.max(limit.rlim_cur),
        rlim_max: NOFILE.max(limit.rlim_max),
    };
    // SAFETY: setrlimit reads the struct we own; raising the hard limit needs
    // CAP_SYS_RESOURCE, else the soft limit goes up to the hard one below.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
        return wanted.rlim_cur;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above; a soft limit equal to the hard one is always allowed.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    limit.rlim_cur
}

/// This process's open-file limits.
fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    limit
}

/// Starts `redirector sniff` in front of ws-echo on `echo_port` with `extra` flags;
/// returns it, its address and the `--max-conns` its limits line shows.
fn start_proxy(echo_port: u16, extra: &[&str]) -> (Proc, SocketAddr, usize) {
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(bins::redirector());
    cmd.arg("sniff")
        .args(["--listen", &proxy_addr.to_string()])
        .args(["--websocket", &format!("127.0.0.1:{echo_port}")])
        .args(["--http", &format!("127.0.0.1:{echo_port}")])
        .args(extra);
    let mut proxy = Proc::spawn("redirector sniff", cmd, false);
    proxy.wait_line("redirector sniff ready", Duration::from_secs(10));
    let limits = proxy.wait_line("redirector sniff limits", Duration::from_secs(10));
    let max_conns = limits
        .strip_prefix("redirector sniff limits: max-conns ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{limits}"));
    (proxy, proxy_addr, max_conns)
}

#[test]
fn the_default_max_conns_follows_the_open_file_limit_and_a_given_one_wins() {
    raise_nofile();
    let (mut default, _, derived) = start_proxy(free_port(), &[]);
    assert_eq!(derived, redirector_sniff_default(nofile().rlim_max));
    default.signal(libc::SIGTERM);
    default.wait_exit(Duration::from_secs(10));
    let (mut given, _, max_conns) = start_proxy(free_port(), &["--max-conns", "123"]);
    assert_eq!(max_conns, 123);
    given.signal(libc::SIGTERM);
    given.wait_exit(Duration::from_secs(10));
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A masked client frame (RFC 6455 §5.3) with a payload under 126 bytes.
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server frame with a payload under 126 bytes: (first byte, payload).
async fn server_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let len = (head[1] & 0x7f) as usize;
    assert!(len < 126, "short frames only, got length code {len}");
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok((head[0], payload))
}

/// Connects from 127.0.0.`source` and completes the WebSocket handshake.
async fn open(proxy: SocketAddr, source: u8) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, source), 0)))?;
    let mut stream = socket.connect(proxy).await?;
    let request = format!(
        "GET /scale HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 4096 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let accept = derive_accept_key(WS_KEY.as_bytes());
    if !head.starts_with("HTTP/1.1 101") || !head.contains(&accept) {
        return Err(std::io::Error::other(format!("bad handshake: {head}")));
    }
    Ok(stream)
}

/// Echoes a message unique to connection `n`, then closes: a close frame each way, then
/// the server's FIN.
async fn echo_and_close(mut stream: TcpStream, n: usize) -> std::io::Result<()> {
    let message = format!("connection {n:05} says hello");
    let mask = (n as u32).to_be_bytes();
    stream
        .write_all(&client_frame(0x2, message.as_bytes(), mask))
        .await?;
    let (first, payload) = server_frame(&mut stream).await?;
    if first != 0x82 || payload != message.as_bytes() {
        return Err(std::io::Error::other(format!("echo of {n}: {payload:?}")));
    }
    stream
        .write_all(&client_frame(0x8, &1000u16.to_be_bytes(), mask))
        .await?;
    let (first, _) = server_frame(&mut stream).await?;
    if first != 0x88 {
        return Err(std::io::Error::other(format!("no close frame for {n}")));
    }
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    if !rest.is_empty() {
        return Err(std::io::Error::other(format!("bytes after close for {n}")));
    }
    Ok(())
}

#[test]
fn nine_thousand_nine_hundred_websockets_echo_and_close_through_the_proxy() {
    let nofile = raise_nofile();
    let connections = CONNECTIONS;
    assert!(
        (nofile.saturating_sub(PROXY_SPARE_FDS) / 2) as usize >= connections,
        "an open-file limit of {nofile} cannot hold {connections} proxied connections; \
         raise the hard limit (ulimit -Hn) to at least {}",
        connections as u64 * 2 + PROXY_SPARE_FDS
    );
    let echo_port = free_port();
    let mut cmd = Command::new(bins::ws_echo());
    cmd.args(["--listen", &format!("127.0.0.1:{echo_port}")]);
    let mut echo = Proc::spawn("ws-echo", cmd, false);
    echo.wait_line("listening ws", Duration::from_secs(10));
    let limit = connections.to_string();
    let (mut proxy, proxy_addr, max_conns) = start_proxy(echo_port, &["--max-conns", &limit]);
    assert_eq!(max_conns, connections);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // Phase 1: all of them open at once.
        let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
        let opening: Vec<_> = (0..connections)
            .map(|n| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move {
                    let _turn = gate.acquire().await.unwrap();
                    let source = 2 + (n % SOURCES as usize) as u8;
                    tokio::time::timeout(PHASE_TIMEOUT, open(proxy_addr, source)).await
                })
            })
            .collect();
        let mut streams = Vec::with_capacity(connections);
        let mut first_error = None;
        for task in opening {
            match task.await.unwrap() {
                Ok(Ok(stream)) => streams.push(stream),
                Ok(Err(err)) => first_error = first_error.or(Some(err.to_string())),
                Err(_) => first_error = first_error.or(Some("handshake timed out".into())),
            }
        }
        assert_eq!(streams.len(), connections, "first error: {first_error:?}");
        // Phase 2: each echoes and closes, all concurrently.
        let closing: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(n, stream)| {
                tokio::spawn(tokio::time::timeout(
                    PHASE_TIMEOUT,
                    echo_and_close(stream, n),
                ))
            })
            .collect();
        let mut echoed = 0;
        for task in closing {
            match task.await.unwrap() {
                Ok(Ok(())) => echoed += 1,
                Ok(Err(err)) => first_error = first_error.or(Some(err.to_string())),
                Err(_) => first_error = first_error.or(Some("echo timed out".into())),
            }
        }
        assert_eq!(echoed, connections, "first error: {first_error:?}");
    });

    proxy.signal(libc::SIGTERM);
    let (status, lines) = proxy.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "sniff exit: {status}; {lines:?}");
    let counter = |name: &str| -> u64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("sniff counter {name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no counter {name} in {lines:?}"))
    };
    assert_eq!(counter("accepted"), connections as u64);
    assert_eq!(counter("websocket"), connections as u64);
    assert_eq!(counter("over_limit"), 0);
    assert_eq!(counter("relay_error"), 0);
}

/// The default `--max-conns` under a hard open-file limit of `hard` (as the library
/// derives it: 2.5 descriptors a connection after a reserve of 64).
fn redirector_sniff_default(hard: u64) -> usize {
    (hard.saturating_sub(64) * 2 / 5).clamp(1, 1_000_000) as usize
}
