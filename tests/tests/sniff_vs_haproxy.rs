//! The sniffing rules side by side with HAProxy: one table of request heads, each sent to
//! a real `redirector sniff --ws-path /ws/` and to a real HAProxy running docs/GUIDE.md's
//! configuration (ports changed), both in front of the same two tiny backends that record
//! which of them got a connection. Every row states the expected outcome of both proxies,
//! so the test fails when either one changes; docs/SNIFF.md lists and explains every row
//! where they differ. Traffic stays on 127.0.0.1; every wait is bounded.

use std::{
    fmt,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, Sender},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use redirector_tests::{
    bins,
    fixtures::{wait_until, TempDir},
};
use testkit::{cmd::must, process::Proc};

/// Longest wait for a proxy's first answer byte.
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(3);
/// Once something arrived, the answer is over after this long without more bytes (HAProxy
/// keeps the client connection open after a response, waiting for the next request).
const QUIET_AFTER: Duration = Duration::from_millis(500);
/// Pause between the bytes of the byte-by-byte case.
const BYTE_PAUSE: Duration = Duration::from_millis(2);
/// HAProxy 2.6's default `tune.bufsize` (16,384) less `tune.maxrewrite` (1,024): the
/// largest request head it accepts.
const HAPROXY_HEAD_LIMIT: usize = 16_384 - 1_024;
/// A head size over HAProxy's limit and under ours (`--max-header-bytes` 16,384).
const BETWEEN_THE_LIMITS: usize = 15_800;
const _: () = assert!(HAPROXY_HEAD_LIMIT < BETWEEN_THE_LIMITS && BETWEEN_THE_LIMITS < 16_384);

// ---------- backends ----------

/// Which backend a connection reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    WebSocket,
    Http,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::WebSocket => "websocket",
            Backend::Http => "http",
        }
    }
}

/// A backend: accepts on 127.0.0.1, records each connection, reads one request head and
/// answers `200` with a body naming itself, then closes.
struct TinyBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TinyBackend {
    fn start(backend: Backend, seen: Sender<Backend>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = seen.send(backend);
                            thread::spawn(move || answer(stream, backend));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5))
                        }
                        Err(e) => panic!("{} backend accept: {e}", backend.name()),
                    }
                }
            }
        });
        TinyBackend {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TinyBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads up to the end of one request head (bounded in time and size), then answers.
fn answer(mut stream: TcpStream, backend: Backend) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head_end(&head).is_none() && head.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("backend={}", backend.name());
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Where a request head ends (CRLF CRLF or bare LF LF), if it does.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

// ---------- the proxies ----------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `redirector sniff --ws-path /ws/`, the same routing as the README's HAProxy lines.
fn start_sniff(ws: SocketAddr, http: SocketAddr) -> (Proc, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = Command::new(bins::redirector());
    cmd.arg("sniff")
        .args(["--listen", &addr.to_string()])
        .args(["--websocket", &ws.to_string()])
        .args(["--http", &http.to_string()])
        .args(["--ws-path", "/ws/"]);
    let mut proxy = Proc::spawn("redirector sniff", cmd, false);
    proxy.wait_line("redirector sniff ready", Duration::from_secs(10));
    (proxy, addr)
}

/// The HAProxy configuration block of docs/GUIDE.md (the one with `frontend web`).
fn readme_haproxy_config() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/GUIDE.md")).unwrap();
    readme
        .split("```")
        .find(|block| block.contains("frontend web\n"))
        .expect("docs/GUIDE.md has the HAProxy configuration")
        .trim()
        .to_string()
}

/// Replaces the one occurrence of `from` in `text`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` once in\n{text}");
    text.replace(from, to)
}

/// HAProxy with the README's configuration, its listener and backends moved to test ports.
fn start_haproxy(dir: &TempDir, ws: SocketAddr, http: SocketAddr) -> (Proc, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = readme_haproxy_config();
    let config = replace_once(&config, "bind :80", &format!("bind {addr}"));
    let config = replace_once(&config, "127.0.0.1:8080", &ws.to_string());
    let config = replace_once(&config, "127.0.0.1:8000", &http.to_string());
    let path = dir.0.join("haproxy.cfg");
    std::fs::write(&path, config + "\n").unwrap();
    let check = Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&path)
        .output()
        .expect("haproxy (installed by `cargo xtask setup`)");
    assert!(
        check.status.success(),
        "README's HAProxy configuration: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = Command::new("haproxy");
    cmd.args(["-db", "-f"]).arg(&path);
    let mut proxy = Proc::spawn("haproxy", cmd, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        proxy.ensure_running().expect("haproxy exited");
        assert!(Instant::now() < deadline, "haproxy not listening on {addr}");
        thread::sleep(Duration::from_millis(50));
    }
    // That probe connection sent nothing; HAProxy drops it before the first case.
    let port = format!("( sport = :{} )", addr.port());
    wait_until(
        "HAProxy closing the probe connection",
        Duration::from_secs(10),
        || {
            let out = must(Command::new("ss").args(["-Htn", "state", "connected", &port]));
            out.stdout.is_empty()
        },
    );
    (proxy, addr)
}

// ---------- outcomes ----------

/// What one proxy did with one head.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Reached these backends, in order (HAProxy routes each request of a connection).
    Routed(Vec<Backend>),
    /// No backend; the proxy itself answered with this HTTP status.
    Status(u16),
    /// No backend; the proxy answered HTTP/2 (a SETTINGS frame).
    Http2,
    /// No backend; closed without a byte.
    Closed,
    /// No backend, no answer, still open after the wait.
    Silent,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Routed(backends) => {
                let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
                f.write_str(&names.join("+"))
            }
            Outcome::Status(status) => write!(f, "{status}"),
            Outcome::Http2 => f.write_str("h2"),
            Outcome::Closed => f.write_str("closed"),
            Outcome::Silent => f.write_str("silent"),
        }
    }
}

/// The expected outcomes of a row, as the table writes them.
#[derive(Clone, Copy, Debug)]
enum Want {
    Ws,
    Http,
    HttpThenWs,
    Status(u16),
    Http2,
    Closed,
}

impl Want {
    fn outcome(self) -> Outcome {
        match self {
            Want::Ws => Outcome::Routed(vec![Backend::WebSocket]),
            Want::Http => Outcome::Routed(vec![Backend::Http]),
            Want::HttpThenWs => Outcome::Routed(vec![Backend::Http, Backend::WebSocket]),
            Want::Status(status) => Outcome::Status(status),
            Want::Http2 => Outcome::Http2,
            Want::Closed => Outcome::Closed,
        }
    }
}

/// How a head is written.
#[derive(Clone, Copy, Debug)]
enum Send {
    /// One write.
    Whole,
    /// One byte per write, [`BYTE_PAUSE`] apart.
    ByteByByte,
}

/// Sends `head` to `proxy`, reads the answer (bounded) and names the outcome, from the
/// backends' records and the bytes the client got.
fn observe(proxy: SocketAddr, head: &[u8], send: Send, seen: &Receiver<Backend>) -> Outcome {
    // Nothing left over from an earlier case.
    while seen.try_recv().is_ok() {}
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(3)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let write = match send {
        Send::Whole => stream.write_all(head),
        Send::ByteByByte => head.iter().try_for_each(|byte| {
            // The pause is the point: each byte reaches the proxy as a read of its own.
            thread::sleep(BYTE_PAUSE);
            stream.write_all(&[*byte])
        }),
    };
    // A proxy may close (or reset) before the whole head is written: that is an outcome.
    let write_failed = write.is_err();
    let (answer, closed) = read_answer(&mut stream);
    drop(stream);
    // Backends record on accept, before they answer: anything routed has been recorded
    // by now; a short grace covers a connection still being set up.
    let mut routed = Vec::new();
    let grace = Instant::now() + Duration::from_millis(100);
    while let Ok(backend) = seen.recv_timeout(grace.saturating_duration_since(Instant::now())) {
        routed.push(backend);
    }
    if !routed.is_empty() {
        return Outcome::Routed(routed);
    }
    if answer.starts_with(b"HTTP/1.") {
        let status = std::str::from_utf8(&answer[9..12.min(answer.len())])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line in {:?}", String::from_utf8_lossy(&answer)));
        return Outcome::Status(status);
    }
    // An HTTP/2 frame header: 3 bytes of length, then type 4 (SETTINGS).
    if answer.len() >= 9 && answer[3] == 4 {
        return Outcome::Http2;
    }
    assert!(
        answer.is_empty(),
        "unexpected answer {:?}",
        String::from_utf8_lossy(&answer)
    );
    match closed || write_failed {
        true => Outcome::Closed,
        false => Outcome::Silent,
    }
}

/// Reads until the peer closes, or [`QUIET_AFTER`] passes without a byte once something
/// came, or [`FIRST_BYTE_WAIT`] passes without any. Returns the bytes and whether the peer
/// closed (FIN or reset).
fn read_answer(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let wait = match answer.is_empty() {
            true => FIRST_BYTE_WAIT.saturating_sub(start.elapsed()),
            false => QUIET_AFTER,
        };
        if wait.is_zero() {
            return (answer, false);
        }
        stream.set_read_timeout(Some(wait)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (answer, true),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (answer, false)
            }
            Err(_) => return (answer, true),
        }
    }
}

// ---------- the table ----------

/// One request head, and what each proxy is expected to do with it.
struct Case {
    name: &'static str,
    head: Vec<u8>,
    send: Send,
    ours: Want,
    haproxy: Want,
}

fn case(name: &'static str, head: impl AsRef<[u8]>, ours: Want, haproxy: Want) -> Case {
    Case {
        name,
        head: head.as_ref().to_vec(),
        send: Send::Whole,
        ours,
        haproxy,
    }
}

/// A valid WebSocket upgrade on `/ws/chat`, with `extra` header lines (CRLF-terminated)
/// before the blank line.
fn upgrade_with(extra: &str) -> String {
    format!(
        "GET /ws/chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// An upgrade on `/ws/chat` with these header lines (`Host` included if wanted), then a
/// `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13` (HAProxy answers 400 to a WebSocket
/// upgrade without the key, which would hide what the row is about).
fn upgrade_headers(lines: &str) -> String {
    format!(
        "GET /ws/chat HTTP/1.1\r\n{lines}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A head of about `size` bytes: a valid upgrade with one long `X-Fill` header.
fn upgrade_of_size(size: usize) -> String {
    let base = upgrade_with("X-Fill: \r\n").len();
    upgrade_with(&format!("X-Fill: {}\r\n", "x".repeat(size - base)))
}

/// A valid upgrade with `n` headers in all (its own five, then short ones).
fn upgrade_with_headers(n: usize) -> String {
    let extra: String = (0..n - 5).map(|i| format!("X-H{i}: v\r\n")).collect();
    upgrade_with(&extra)
}

fn cases() -> Vec<Case> {
    use Want::*;
    let ws = upgrade_with("");
    let plain = "GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n";
    vec![
        // The baseline.
        case("valid upgrade", &ws, Ws, Ws),
        case("plain GET", plain, Http, Http),
        case(
            "upgrade outside --ws-path / path_beg",
            ws.replace("/ws/chat", "/chat"),
            Http,
            Http,
        ),
        Case {
            send: Send::ByteByByte,
            ..case("valid upgrade, one byte per write", &ws, Ws, Ws)
        },
        // Line ends and folding.
        case("LF-only line ends", ws.replace("\r\n", "\n"), Ws, Ws),
        case("mixed CRLF and LF", ws.replacen("\r\n", "\n", 3), Ws, Ws),
        case(
            "bare CR inside a header line",
            ws.replace("Upgrade: websocket\r\n", "Upgrade: websocket\rX: y\r\n"),
            Closed,
            Status(400),
        ),
        case(
            "obs-fold: Upgrade value on a continuation line",
            ws.replace("Upgrade: websocket", "Upgrade:\r\n websocket"),
            Closed,
            Ws,
        ),
        case(
            "obs-fold: continuation of another header",
            upgrade_with("X-Long: a\r\n b\r\n"),
            Closed,
            Ws,
        ),
        case("leading empty lines", format!("\r\n\r\n{ws}"), Ws, Ws),
        // NUL bytes.
        case(
            "NUL in a header name",
            upgrade_with("X-A\0b: v\r\n"),
            Closed,
            Status(400),
        ),
        case(
            "NUL in a header value",
            upgrade_with("X-A: v\0w\r\n"),
            Closed,
            Ws,
        ),
        case(
            "NUL in the request target",
            ws.replace("/ws/chat", "/ws/ch\0at"),
            Closed,
            Status(400),
        ),
        // Repeated headers.
        case(
            "two Upgrade: websocket",
            upgrade_with("Upgrade: websocket\r\n"),
            Ws,
            Ws,
        ),
        case(
            "Upgrade: h2c, then Upgrade: websocket",
            upgrade_headers(
                "Host: a\r\nUpgrade: h2c\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            ),
            Ws,
            Ws,
        ),
        case(
            "Upgrade: websocket, then Upgrade: h2c",
            upgrade_with("Upgrade: h2c\r\n"),
            Ws,
            Ws,
        ),
        case(
            "two Connection: Upgrade",
            upgrade_with("Connection: Upgrade\r\n"),
            Ws,
            Ws,
        ),
        case(
            "Connection: close, then Connection: Upgrade",
            upgrade_headers(
                "Host: a\r\nConnection: close\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            ),
            Ws,
            Ws,
        ),
        case(
            "Upgrade list: h2c, websocket",
            upgrade_headers("Host: a\r\nUpgrade: h2c, websocket\r\nConnection: Upgrade\r\n"),
            Ws,
            Ws,
        ),
        // Bodies on an upgrade.
        case(
            "Transfer-Encoding: chunked on the upgrade",
            upgrade_with("Transfer-Encoding: chunked\r\n") + "0\r\n\r\n",
            Ws,
            Http,
        ),
        case(
            "Content-Length: 5 (and a body) on the upgrade",
            upgrade_with("Content-Length: 5\r\n") + "hello",
            Ws,
            Http,
        ),
        case(
            "Content-Length: 0 on the upgrade",
            upgrade_with("Content-Length: 0\r\n"),
            Ws,
            Ws,
        ),
        case(
            "two different Content-Length",
            upgrade_with("Content-Length: 1\r\nContent-Length: 2\r\n") + "ab",
            Ws,
            Status(400),
        ),
        // Versions, methods, targets.
        case(
            "HTTP/1.0 upgrade",
            ws.replace("HTTP/1.1", "HTTP/1.0"),
            Http,
            Ws,
        ),
        case("HTTP/1.2", ws.replace("HTTP/1.1", "HTTP/1.2"), Closed, Ws),
        case(
            "HTTP/2.0 in an HTTP/1 request line",
            ws.replace("HTTP/1.1", "HTTP/2.0"),
            Closed,
            Ws,
        ),
        case(
            "POST with the upgrade headers",
            ws.replace("GET", "POST"),
            Http,
            Ws,
        ),
        case("lower-case method get", ws.replace("GET", "get"), Http, Ws),
        case(
            "invalid method G@T",
            ws.replace("GET", "G@T"),
            Closed,
            Status(400),
        ),
        case(
            "absolute-form target",
            ws.replace("/ws/chat", "http://example.com/ws/chat"),
            Ws,
            Ws,
        ),
        case(
            "absolute-form target outside /ws/",
            ws.replace("/ws/chat", "http://example.com/chat/ws/"),
            Http,
            Http,
        ),
        case(
            "percent-encoded /ws/ (/%77s/chat)",
            ws.replace("/ws/chat", "/%77s/chat"),
            Http,
            Http,
        ),
        case(
            "non-ASCII (UTF-8) in the path",
            ws.replace("/ws/chat", "/ws/ch\u{e9}t"),
            Ws,
            Status(400),
        ),
        case(
            "h2c upgrade",
            upgrade_headers(
                "Host: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                 HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
            ),
            Http,
            Http,
        ),
        case(
            "HTTP/2 prior knowledge preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            Closed,
            Http2,
        ),
        // Header names and values.
        case(
            "UPGRADE: WebSocket, CONNECTION: UPGRADE",
            upgrade_headers("Host: a\r\nUPGRADE: WebSocket\r\nCONNECTION: UPGRADE\r\n"),
            Ws,
            Ws,
        ),
        case(
            "Connection: keep-alive, Upgrade",
            upgrade_headers("Host: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"),
            Ws,
            Ws,
        ),
        case(
            "no Connection: upgrade",
            upgrade_headers("Host: a\r\nUpgrade: websocket\r\n"),
            Http,
            Ws,
        ),
        case(
            "Connection: keep-alive only",
            upgrade_headers("Host: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"),
            Http,
            Ws,
        ),
        case(
            "no Host",
            upgrade_headers("Upgrade: websocket\r\nConnection: Upgrade\r\n"),
            Ws,
            Ws,
        ),
        case(
            "two different Host",
            upgrade_headers("Host: a\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"),
            Ws,
            Status(400),
        ),
        case(
            "Upgrade: websocket/13 (a version suffix)",
            upgrade_headers("Host: a\r\nUpgrade: websocket/13\r\nConnection: Upgrade\r\n"),
            Ws,
            Http,
        ),
        case(
            "Upgrade: websockets (another token)",
            upgrade_headers("Host: a\r\nUpgrade: websockets\r\nConnection: Upgrade\r\n"),
            Http,
            Http,
        ),
        // The WebSocket handshake's own headers.
        case(
            "no Sec-WebSocket-Key",
            "GET /ws/chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            Ws,
            Status(400),
        ),
        case(
            "no Sec-WebSocket-Version",
            "GET /ws/chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            Ws,
            Ws,
        ),
        case(
            "Sec-WebSocket-Version: 8",
            ws.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            Ws,
            Ws,
        ),
        case(
            "two Sec-WebSocket-Key",
            upgrade_with("Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"),
            Ws,
            Ws,
        ),
        case(
            "whitespace before the colon",
            ws.replace("Upgrade: websocket", "Upgrade : websocket"),
            Closed,
            Status(400),
        ),
        case(
            "space inside a header name",
            upgrade_with("Bad Header: x\r\n"),
            Closed,
            Status(400),
        ),
        // Sizes and counts.
        case(
            "110 headers (over HAProxy's 101, under ours 128)",
            upgrade_with_headers(110),
            Ws,
            Status(400),
        ),
        case(
            "130 headers (over both)",
            upgrade_with_headers(130),
            Closed,
            Status(400),
        ),
        case(
            "head of 15,800 bytes (between the limits)",
            upgrade_of_size(BETWEEN_THE_LIMITS),
            Ws,
            Status(400),
        ),
        case(
            "head of 20,000 bytes (over both limits)",
            upgrade_of_size(20_000),
            Closed,
            Status(400),
        ),
        // Several requests in one write.
        case(
            "pipelined: plain GET, then an upgrade",
            format!("{plain}{ws}"),
            Http,
            HttpThenWs,
        ),
        // Not HTTP at all.
        case(
            "TLS ClientHello",
            b"\x16\x03\x01\x00\xc4\x01\x00\x00\xc0\x03\x03",
            Closed,
            Status(400),
        ),
    ]
}

#[test]
fn request_heads_are_routed_as_the_table_says_by_both_proxies() {
    let version = Command::new("haproxy")
        .arg("-v")
        .output()
        .expect("haproxy (installed by `cargo xtask setup`)");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(
        version.starts_with("HAProxy version 2.6."),
        "the HAProxy column was taken with 2.6: {version}"
    );
    let (seen_tx, seen) = mpsc::channel();
    let ws = TinyBackend::start(Backend::WebSocket, seen_tx.clone());
    let http = TinyBackend::start(Backend::Http, seen_tx);
    let dir = TempDir::new("sniff-vs-haproxy");
    let (sniff, sniff_addr) = start_sniff(ws.addr, http.addr);
    let (haproxy, haproxy_addr) = start_haproxy(&dir, ws.addr, http.addr);
    let cases = cases();
    assert!(cases.len() >= 30);
    let started = Instant::now();
    let mut report = vec![format!("{:<52} {:<16} {:<16}", "case", "ours", "haproxy")];
    let mut wrong = Vec::new();
    for case in &cases {
        let ours = observe(sniff_addr, &case.head, case.send, &seen);
        let theirs = observe(haproxy_addr, &case.head, case.send, &seen);
        let mark = |got: &Outcome, want: Want| match *got == want.outcome() {
            true => got.to_string(),
            false => format!("{got} (want {})", want.outcome()),
        };
        report.push(format!(
            "{:<52} {:<16} {:<16}",
            case.name,
            mark(&ours, case.ours),
            mark(&theirs, case.haproxy)
        ));
        if ours != case.ours.outcome() || theirs != case.haproxy.outcome() {
            wrong.push(case.name);
        }
    }
    println!("{}", report.join("\n"));
    println!("{} cases in {:?}", cases.len(), started.elapsed());
    drop((sniff, haproxy));
    assert!(
        wrong.is_empty(),
        "differs from the table: {wrong:?}\n{}",
        report.join("\n")
    );
}

#[test]
fn the_readme_configuration_routes_in_http_mode() {
    let config = readme_haproxy_config();
    // Without `mode http`, HAProxy runs the frontend in tcp mode, evaluates `use_backend`
    // before any byte arrived and sends every upgrade to the default backend.
    assert!(config.contains("mode http"), "{config}");
    assert!(config.contains("timeout http-request"), "{config}");
}
