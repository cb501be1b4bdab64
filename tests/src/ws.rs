//! A minimal WebSocket client on plain sockets of the test process, for suites that hold
//! hundreds of idle sessions or need control over each connection's TCP (its local port,
//! who closes first, an abortive close): the opening handshake, masked text frames, and
//! the reading of one frame. Sockets are created in a namespace by [`in_netns`].

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Limit on a connect, and on each read and write of a session.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The WebSocket key of every handshake (fixed: the server only echoes its hash).
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Opcode of a text frame, with FIN set.
const TEXT_FRAME: u8 = 0x81;
/// Opcode of a close frame, with FIN set.
const CLOSE_FRAME: u8 = 0x88;
/// The client's frame mask (any value will do; the server unmasks).
const MASK: [u8; 4] = [0x5a, 0xa5, 0x3c, 0xc3];

/// Runs `f` on a thread that entered network namespace `name` (sockets it creates stay in
/// that namespace whichever thread uses them later; threads it spawns inherit it).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Opens a WebSocket session to `addr` (TCP connect, opening handshake, one echo), from
/// `local_port` if given (bound with SO_REUSEADDR), else from a port the kernel picks.
pub fn open(addr: SocketAddr, local_port: Option<u16>) -> Result<TcpStream, String> {
    let stream = connect(addr, local_port)?;
    upgrade(addr, stream)
}

/// [`open`] from a port the kernel picks, giving up on the TCP handshake after
/// `connect_timeout` (a test that retries rather than waits for SYN retransmissions).
pub fn open_within(addr: SocketAddr, connect_timeout: Duration) -> Result<TcpStream, String> {
    let stream =
        TcpStream::connect_timeout(&addr, connect_timeout).map_err(|e| format!("connect: {e}"))?;
    upgrade(addr, stream)
}

/// The opening handshake and one echo on a connected `stream`.
fn upgrade(addr: SocketAddr, mut stream: TcpStream) -> Result<TcpStream, String> {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("request: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .map_err(|e| format!("response: {e}"))?;
        head.push(byte[0]);
        if head.len() > 4096 {
            return Err("response head too long".into());
        }
    }
    let head = String::from_utf8_lossy(&head);
    let accept = derive_accept_key(WS_KEY.as_bytes());
    if !head.starts_with("HTTP/1.1 101") || !head.contains(&accept) {
        return Err(format!("not a WebSocket upgrade: {head}"));
    }
    echo(&mut stream, "first")?;
    Ok(stream)
}

fn connect(addr: SocketAddr, local_port: Option<u16>) -> Result<TcpStream, String> {
    let Some(port) = local_port else {
        return TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"));
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], port).into()
    } else {
        ([0u16; 8], port).into()
    };
    socket
        .bind(&local.into())
        .map_err(|e| format!("bind {local}: {e}"))?;
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .map_err(|e| format!("connect from {local}: {e}"))?;
    Ok(socket.into())
}

/// Sends `text` (< 126 bytes) as one masked text frame.
pub fn send_text(stream: &mut TcpStream, text: &str) -> Result<(), String> {
    send_frame(stream, TEXT_FRAME, text.as_bytes()).map_err(|e| format!("send {text:?}: {e}"))
}

fn send_frame(stream: &mut TcpStream, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    assert!(payload.len() < 126, "one short frame");
    let mut frame = vec![opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    stream.write_all(&frame)
}

/// Reads one short unmasked frame: (first byte, payload).
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header)?;
    let mut payload = vec![0u8; usize::from(header[1] & 0x7f)];
    stream.read_exact(&mut payload)?;
    Ok((header[0], payload))
}

/// Reads the next message, which must be the text frame `text` (the server's echo or a
/// message it sent on its own).
pub fn expect_text(stream: &mut TcpStream, text: &str) -> Result<(), String> {
    let (first, payload) = read_frame(stream).map_err(|e| format!("awaiting {text:?}: {e}"))?;
    if first != TEXT_FRAME || payload != text.as_bytes() {
        return Err(format!("awaiting {text:?}: got {first:#04x} {payload:?}"));
    }
    Ok(())
}

/// Sends `text` (< 126 bytes) as one masked text frame and checks that it comes back.
pub fn echo(stream: &mut TcpStream, text: &str) -> Result<(), String> {
    send_text(stream, text)?;
    expect_text(stream, text)
}

/// Ends the connection with the client's FIN first, no closing handshake (the server
/// sees end of input, then closes its side); returns once the server's FIN arrived.
pub fn close_by_client_fin(mut stream: TcpStream) -> Result<(), String> {
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    read_to_end(&mut stream)
}

/// Ends the connection with the server's FIN first: a close frame, whose answer the
/// server sends before its FIN; the client's FIN follows once that arrived.
pub fn close_by_server_fin(mut stream: TcpStream) -> Result<(), String> {
    send_frame(&mut stream, CLOSE_FRAME, &[]).map_err(|e| format!("close frame: {e}"))?;
    let (first, _) = read_frame(&mut stream).map_err(|e| format!("close answer: {e}"))?;
    if first != CLOSE_FRAME {
        return Err(format!("close answer: got {first:#04x}"));
    }
    read_to_end(&mut stream)
}

/// Ends the connection with a RST (SO_LINGER 0, then close), as an application aborting it.
pub fn close_by_client_rst(stream: TcpStream) -> Result<(), String> {
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(|e| format!("SO_LINGER: {e}"))?;
    drop(stream);
    Ok(())
}

/// Reads until the peer's FIN (end of input).
fn read_to_end(stream: &mut TcpStream) -> Result<(), String> {
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .map_err(|e| format!("awaiting the server's FIN: {e}"))?;
    Ok(())
}
