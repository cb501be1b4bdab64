//! `redirector sniff` end to end on 127.0.0.1: real ws-echo and Python HTTP backends behind
//! the real binary, clients written here with std sockets so every byte can be checked.

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::atomic::{AtomicU16, Ordering},
    thread,
    time::{Duration, Instant},
};

use redirector_tests::{
    bins,
    fixtures::{sample, start_http_server, wait_until, TempDir},
};
use testkit::process::Proc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Size of the file the HTTP backend serves.
const FILE_SIZE: usize = 20_000;
/// Name of that file.
const FILE_NAME: &str = "known.bin";
/// Every socket operation of a test client gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

// ---------- ports, processes ----------

/// Next candidate port of this test process (tests in one binary run in parallel).
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A 127.0.0.1 port nobody listens on right now, from a range that depends on the PID so
/// that concurrent test runs rarely collide.
fn free_port() -> u16 {
    let base = 20_000 + (std::process::id() % 10_000) as u16 * 3;
    for _ in 0..500 {
        let port = base.wrapping_add(NEXT_PORT.fetch_add(1, Ordering::Relaxed));
        if port < 20_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port near {base}");
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The content of the served file: deterministic, all 256 byte values.
fn file_content() -> Vec<u8> {
    (0..FILE_SIZE)
        .map(|i| (i.wrapping_mul(7919) >> 3) as u8)
        .collect()
}

/// A directory with the served file, removed on drop.
/// The HTTP backend's directory, holding the known file.
fn web_root(tag: &str) -> TempDir {
    let root = TempDir::new(&format!("sniff-{tag}"));
    std::fs::write(root.0.join(FILE_NAME), file_content()).unwrap();
    root
}

/// The backends and the proxy of one test.
struct Stack {
    _root: TempDir,
    _echo: Proc,
    _web: Proc,
    proxy: Proc,
    addr: SocketAddr,
}

fn start_echo(port: u16) -> Proc {
    let mut cmd = Command::new(bins::ws_echo());
    cmd.args(["--listen", &local(port).to_string()]);
    let mut echo = Proc::spawn("ws-echo", cmd, false);
    echo.wait_line("listening ws", Duration::from_secs(10));
    echo
}

/// Starts `redirector sniff` on a free port in front of `ws` and `http`, with `extra` flags.
fn start_proxy(ws: u16, http: u16, extra: &[&str]) -> (Proc, SocketAddr) {
    let addr = local(free_port());
    let mut cmd = Command::new(bins::redirector());
    cmd.arg("sniff")
        .args(["--listen", &addr.to_string()])
        .args(["--websocket", &local(ws).to_string()])
        .args(["--http", &local(http).to_string()])
        .args(extra);
    let mut proxy = Proc::spawn("redirector sniff", cmd, false);
    let line = proxy.wait_line("redirector sniff ready", Duration::from_secs(10));
    assert!(
        line.starts_with(&format!("redirector sniff ready: listening on {addr}")),
        "{line}"
    );
    (proxy, addr)
}

fn start_stack(tag: &str, extra: &[&str]) -> Stack {
    let root = web_root(tag);
    let (ws_port, http_port) = (free_port(), free_port());
    let echo = start_echo(ws_port);
    let web = start_http_server(Command::new("python3"), http_port, &root.0);
    let (proxy, addr) = start_proxy(ws_port, http_port, extra);
    Stack {
        _root: root,
        _echo: echo,
        _web: web,
        proxy,
        addr,
    }
}

/// Stops the proxy with SIGTERM and returns its counters.
fn stop_proxy(mut proxy: Proc) -> HashMap<String, u64> {
    proxy.signal(libc::SIGTERM);
    let (status, lines) = proxy.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "sniff exit: {status}; {lines:?}");
    assert!(
        lines.iter().any(|l| l == "redirector sniff stopped"),
        "{lines:?}"
    );
    let counters: HashMap<String, u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("sniff counter "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert!(counters.contains_key("accepted"), "{lines:?}");
    counters
}

// ---------- clients ----------

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to proxy");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// Splits a response into its head (as text) and body.
fn split_response(response: &[u8]) -> (String, &[u8]) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no response head in {:?}",
                String::from_utf8_lossy(response)
            )
        });
    (
        String::from_utf8_lossy(&response[..end]).into_owned(),
        &response[end + 4..],
    )
}

/// Sends `request`, reads the whole response (the Python server closes after it) and
/// checks that it is the served file, byte for byte.
fn http_fetch_file(addr: SocketAddr, request: &str) {
    let mut stream = connect(addr);
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let (head, body) = split_response(&response);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains("SimpleHTTP"), "served by Python: {head}");
    assert_eq!(body.len(), FILE_SIZE, "{head}");
    assert!(body == file_content().as_slice(), "body differs");
}

fn plain_get(addr: SocketAddr) {
    http_fetch_file(
        addr,
        &format!("GET /{FILE_NAME} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    );
}

/// An upgrade request outside `--ws-path`: must reach the HTTP backend.
fn upgrade_outside_ws_path(addr: SocketAddr) {
    http_fetch_file(
        addr,
        &format!(
            "GET /{FILE_NAME} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    );
}

/// One client-to-server frame (always masked, RFC 6455 §5.3).
fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server frame; returns (first byte, payload).
fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).unwrap();
            u16::from_be_bytes(ext) as usize
        }
        127 => {
            let mut ext = [0u8; 8];
            stream.read_exact(&mut ext).unwrap();
            u64::from_be_bytes(ext) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    (head[0], payload)
}

/// Reads the handshake response byte by byte (so no frame byte is consumed) and checks it.
fn read_upgrade_response(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "response head too long");
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let accept = derive_accept_key(WS_KEY.as_bytes());
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("sec-websocket-accept: {accept}"))),
        "{head}"
    );
}

/// WebSocket handshake, one binary message echoed and checked byte for byte, closing
/// handshake. With `split`, the handshake is sent in two writes 5 ms apart, cut at a
/// place that depends on `seq`, so the proxy must sniff across reads and replay all of it.
/// (Sending the first frame in the same write as the handshake is not allowed by RFC 6455
/// §4.1, and ws-echo refuses it.)
fn websocket_echo(addr: SocketAddr, seq: usize, split: bool) {
    let payload: Vec<u8> = (0..1 + (seq * 37) % 3000)
        .map(|i| (i * 31 + seq) as u8)
        .collect();
    let mask = (seq as u32).wrapping_mul(2_654_435_761).to_be_bytes();
    let request = format!(
        "GET /ws/echo/{seq} HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, Upgrade\r\n\
         upgrade: WebSocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut stream = connect(addr);
    if split {
        let cut = 1 + seq % (request.len() - 1);
        stream.write_all(&request.as_bytes()[..cut]).unwrap();
        // The pause is the point: the two parts reach the proxy as two reads.
        thread::sleep(Duration::from_millis(5));
        stream.write_all(&request.as_bytes()[cut..]).unwrap();
    } else {
        stream.write_all(request.as_bytes()).unwrap();
    }
    read_upgrade_response(&mut stream);
    stream
        .write_all(&masked_frame(0x2, &payload, mask))
        .unwrap();
    let (first, echoed) = read_frame(&mut stream);
    assert_eq!(first, 0x82, "FIN + binary");
    assert!(echoed == payload, "echo differs (seq {seq})");
    stream
        .write_all(&masked_frame(0x8, &1000u16.to_be_bytes(), mask))
        .unwrap();
    let (first, _) = read_frame(&mut stream);
    assert_eq!(first, 0x88, "close echoed");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the close frame");
}

/// Whether the peer closed `stream` (EOF or reset) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("unexpected data"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

// ---------- tests ----------

/// `extra` with `--relay MODE` if a mode is given (none: the default).
fn with_relay<'a>(relay: Option<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = extra.to_vec();
    if let Some(mode) = relay {
        args.extend(["--relay", mode]);
    }
    args
}

/// Three tests of a test body taking the relay mode: `NAME::default` with the default
/// mode, `NAME::splice` and `NAME::copy` with `--relay splice` and `--relay copy`.
/// The relay mode that ran is the one asked for: `splice` moved no round by copying and
/// `copy` none by splicing (the proxy counts each round's way), and a relay that brought
/// bytes back to the client moved them the asked way.
fn assert_relay_way(relay: Option<&str>, counters: &HashMap<String, u64>) {
    let count = |name: &str| counters[name];
    let relayed = count("bytes_backend_to_client") > 0;
    match relay {
        Some("splice") => {
            assert_eq!(count("relay_copy"), 0, "{counters:?}");
            assert!(!relayed || count("relay_splice") > 0, "{counters:?}");
        }
        Some("copy") => {
            assert_eq!(count("relay_splice"), 0, "{counters:?}");
            assert!(!relayed || count("relay_copy") > 0, "{counters:?}");
        }
        _ => assert!(
            !relayed || count("relay_splice") + count("relay_copy") > 0,
            "{counters:?}"
        ),
    }
}

macro_rules! every_relay_mode {
    ($body:ident) => {
        mod $body {
            #[test]
            fn default() {
                super::$body(None)
            }
            #[test]
            fn splice() {
                super::$body(Some("splice"))
            }
            #[test]
            fn copy() {
                super::$body(Some("copy"))
            }
        }
    };
}

every_relay_mode!(thousand_mixed_connections_reach_the_right_backend_intact);
fn thousand_mixed_connections_reach_the_right_backend_intact(relay: Option<&str>) {
    const THREADS: usize = 40;
    const PER_THREAD: usize = 25;
    let stack = start_stack("mixed", &with_relay(relay, &["--ws-path", "/ws/"]));
    let addr = stack.addr;
    let started = Instant::now();
    thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for j in 0..PER_THREAD {
                    let seq = t * PER_THREAD + j;
                    match seq % 4 {
                        0 => plain_get(addr),
                        1 => websocket_echo(addr, seq, false),
                        2 => websocket_echo(addr, seq, true),
                        _ => upgrade_outside_ws_path(addr),
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");

    // A few real WebSocket clients as well.
    for i in 0..3 {
        let out = Command::new(bins::ws_client())
            .args(["--url", &format!("ws://{addr}/ws/client/{i}")])
            .args(["--message", "hello through the sniffer"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ws-client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("echo: hello through the sniffer"));
    }

    let counters = stop_proxy(stack.proxy);
    assert_relay_way(relay, &counters);
    let total = (THREADS * PER_THREAD) as u64;
    assert_eq!(counters["accepted"], total + 3, "{counters:?}");
    assert_eq!(counters["websocket"], total / 2 + 3, "{counters:?}");
    assert_eq!(counters["http"], total / 2, "{counters:?}");
    for zero in [
        "over_limit",
        "not_http",
        "too_large",
        "header_timeout",
        "backend_connect_failed",
        "relay_error",
    ] {
        assert_eq!(counters[zero], 0, "{zero}: {counters:?}");
    }
    assert!(counters["bytes_backend_to_client"] >= total / 2 * FILE_SIZE as u64);
}

every_relay_mode!(slowloris_does_not_delay_others_and_is_cut_at_the_header_timeout);
fn slowloris_does_not_delay_others_and_is_cut_at_the_header_timeout(relay: Option<&str>) {
    let stack = start_stack(
        "slow",
        &with_relay(
            relay,
            &["--header-timeout", "3", "--metrics", "127.0.0.1:0"],
        ),
    );
    let metrics = metrics_addr(&stack.proxy);
    let addr = stack.addr;
    let slow = thread::spawn(move || {
        let mut stream = connect(addr);
        let started = Instant::now();
        for &byte in b"GET / HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaa\r\n\r\n" {
            if stream.write_all(&[byte]).is_err()
                || closed_within(&mut stream, Duration::from_secs(1))
            {
                return started.elapsed();
            }
        }
        panic!("slow client was never cut off");
    });
    // Once the proxy holds the slow client, ordinary clients are served at full speed.
    wait_sample(&metrics, ACCEPTED, 1);
    for i in 0..20 {
        let t = Instant::now();
        if i % 2 == 0 {
            plain_get(addr);
        } else {
            websocket_echo(addr, i, false);
        }
        // Far under the header timeout, with room for a loaded machine.
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "client {i} took {:?}",
            t.elapsed()
        );
    }
    let cut_after = slow.join().unwrap();
    assert!(
        cut_after >= Duration::from_millis(2500) && cut_after < Duration::from_millis(5000),
        "slow client cut after {cut_after:?}"
    );
    let counters = stop_proxy(stack.proxy);
    assert_relay_way(relay, &counters);
    assert_eq!(counters["header_timeout"], 1, "{counters:?}");
    assert_eq!(counters["http"] + counters["websocket"], 20, "{counters:?}");
}

every_relay_mode!(backend_down_closes_the_client_quickly_and_is_counted);
fn backend_down_closes_the_client_quickly_and_is_counted(relay: Option<&str>) {
    // Nothing listens on these ports.
    let (ws_port, http_port) = (free_port(), free_port());
    let (proxy, addr) = start_proxy(ws_port, http_port, &with_relay(relay, &[]));
    for request in [
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
        format!(
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    ] {
        let started = Instant::now();
        let mut stream = connect(addr);
        stream.write_all(request.as_bytes()).unwrap();
        assert!(closed_within(&mut stream, Duration::from_secs(3)));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let counters = stop_proxy(proxy);
    assert_relay_way(relay, &counters);
    assert_eq!(counters["backend_connect_failed"], 2, "{counters:?}");
    assert_eq!(counters["http"], 1, "{counters:?}");
    assert_eq!(counters["websocket"], 1, "{counters:?}");
}

#[test]
fn over_max_conns_is_closed_at_once_and_counted() {
    let (ws_port, http_port) = (free_port(), free_port());
    let (proxy, addr) = start_proxy(
        ws_port,
        http_port,
        &["--max-conns", "2", "--metrics", "127.0.0.1:0"],
    );
    let metrics = metrics_addr(&proxy);
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    // The proxy accepts both before the third arrives.
    wait_sample(&metrics, ACCEPTED, 2);
    let mut third = connect(addr);
    assert!(closed_within(&mut third, Duration::from_secs(2)));
    for stream in &mut held {
        assert!(
            !closed_within(stream, Duration::from_millis(100)),
            "held ones stay open"
        );
    }
    drop(held);
    let counters = stop_proxy(proxy);
    assert_eq!(counters["over_limit"], 1, "{counters:?}");
    assert_eq!(counters["accepted"], 3, "{counters:?}");
}

/// A connection to `addr` from a socket bound to `source` (any 127.0.0.0/8 address).
/// The soft open-file limit of a running process, from /proc/PID/limits.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_open_file_limit_is_raised_to_what_max_conns_needs() {
    let (ws, http) = (free_port(), free_port());
    let addr = local(free_port());
    // Started under the common soft limit of 1,024 (the hard limit stays as it is).
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\""])
        .arg(bins::redirector())
        .arg("sniff")
        .args(["--listen", &addr.to_string()])
        .args(["--websocket", &local(ws).to_string()])
        .args(["--http", &local(http).to_string()])
        .args(["--max-conns", "4096"]);
    let mut proxy = Proc::spawn("redirector sniff", cmd, false);
    proxy.wait_line("redirector sniff ready", Duration::from_secs(10));
    let hard: u64 = String::from_utf8(
        Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    let wanted = (4096 * 5 / 2 + 64).min(hard);
    assert_eq!(soft_nofile(proxy.pid()), wanted);
    stop_proxy(proxy);
}

fn connect_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

/// A plain GET of the served file from `source`, checked byte for byte.
fn plain_get_from(source: std::net::Ipv4Addr, addr: SocketAddr) {
    let mut stream = connect_from(source, addr);
    let request = format!("GET /{FILE_NAME} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let (head, body) = split_response(&response);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(body == file_content().as_slice(), "body differs");
}

#[test]
fn over_max_conns_per_ip_is_closed_for_that_client_only() {
    let stack = start_stack(
        "perip",
        &["--max-conns-per-ip", "2", "--metrics", "127.0.0.1:0"],
    );
    let metrics = metrics_addr(&stack.proxy);
    let addr = stack.addr;
    let (busy, other) = (
        std::net::Ipv4Addr::new(127, 0, 0, 2),
        std::net::Ipv4Addr::new(127, 0, 0, 3),
    );
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect_from(busy, addr)).collect();
    // The proxy accepts both before the third arrives.
    wait_sample(&metrics, ACCEPTED, 2);
    let mut third = connect_from(busy, addr);
    assert!(
        closed_within(&mut third, Duration::from_secs(2)),
        "third from {busy}"
    );
    // Other clients are not affected, however many connections they open in turn (each
    // slot is given back when the proxy has finished the relay, just after the client saw
    // its end).
    for _ in 0..5 {
        relay_to_end(&metrics, || plain_get_from(other, addr));
    }
    for stream in &mut held {
        assert!(
            !closed_within(stream, Duration::from_millis(100)),
            "held ones stay open"
        );
    }
    // A closed connection gives its slot back (its early close is counted just before).
    drop(held.pop());
    wait_sample(&metrics, CLOSED_EARLY, 1);
    plain_get_from(busy, addr);
    drop(held);
    let counters = stop_proxy(stack.proxy);
    assert_eq!(counters["over_ip_limit"], 1, "{counters:?}");
    assert_eq!(counters["over_limit"], 0, "{counters:?}");
    assert_eq!(counters["http"], 6, "{counters:?}");
    assert_eq!(counters["accepted"], 9, "{counters:?}");
}

/// A TLS ClientHello start: record type 22, version 3.1, then handshake type 1.
const TLS_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
];

#[test]
fn not_http_is_closed_by_default() {
    let (ws_port, http_port) = (free_port(), free_port());
    let (proxy, addr) = start_proxy(ws_port, http_port, &[]);
    let mut stream = connect(addr);
    stream.write_all(TLS_HELLO).unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(2)));
    let counters = stop_proxy(proxy);
    assert_eq!(counters["not_http"], 1, "{counters:?}");
    assert_eq!(counters["backend_connect_failed"], 0, "{counters:?}");
}

every_relay_mode!(not_http_can_be_relayed_to_the_http_backend_intact);
fn not_http_can_be_relayed_to_the_http_backend_intact(relay: Option<&str>) {
    // A raw TCP backend that records what it receives and answers.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let unused = free_port();
    let (proxy, addr) = start_proxy(
        unused,
        backend_port,
        &with_relay(relay, &["--not-http", "http"]),
    );
    let mut stream = connect(addr);
    let mut sent = TLS_HELLO.to_vec();
    sent.extend((0..5000).map(|i| (i % 251) as u8));
    stream.write_all(&sent).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut conn, _) = backend.accept().unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut received = Vec::new();
    conn.read_to_end(&mut received).unwrap();
    assert!(received == sent, "backend got exactly what the client sent");
    conn.write_all(b"reply").unwrap();
    drop(conn);
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"reply");
    let counters = stop_proxy(proxy);
    assert_relay_way(relay, &counters);
    assert_eq!(counters["not_http"], 1, "{counters:?}");
    assert_eq!(
        counters["bytes_client_to_backend"],
        sent.len() as u64,
        "{counters:?}"
    );
    assert_eq!(counters["bytes_backend_to_client"], 5, "{counters:?}");
}

#[test]
fn oversize_head_is_closed_and_counted() {
    let (ws_port, http_port) = (free_port(), free_port());
    let (proxy, addr) = start_proxy(ws_port, http_port, &["--max-header-bytes", "1024"]);
    let mut stream = connect(addr);
    let mut request = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        request.extend_from_slice(format!("X-Filler-{i}: some value\r\n").as_bytes());
    }
    // The proxy may close while we are still writing; that is fine.
    let _ = stream.write_all(&request);
    assert!(closed_within(&mut stream, Duration::from_secs(2)));
    let counters = stop_proxy(proxy);
    assert_eq!(counters["too_large"], 1, "{counters:?}");
}

/// A raw TCP backend: accepts one connection, returns everything it receives until the
/// client half-closes, then answers `reply` and closes.
fn one_shot_backend(reply: &'static [u8]) -> (u16, thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut received = Vec::new();
        conn.read_to_end(&mut received).unwrap();
        conn.write_all(reply).unwrap();
        received
    });
    (port, handle)
}

#[test]
fn proxy_protocol_headers_precede_the_client_bytes() {
    for version in ["v1", "v2"] {
        let (backend_port, backend) = one_shot_backend(b"ok");
        let unused = free_port();
        let (proxy, addr) = start_proxy(unused, backend_port, &["--proxy-protocol", version]);
        let mut stream = connect(addr);
        let client = stream.local_addr().unwrap();
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        stream.write_all(request).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"ok");
        let received = backend.join().unwrap();
        let mut expected = match version {
            "v1" => format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
                client.port(),
                addr.port()
            )
            .into_bytes(),
            _ => {
                let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
                header.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
                header.extend_from_slice(&client.port().to_be_bytes());
                header.extend_from_slice(&addr.port().to_be_bytes());
                header
            }
        };
        expected.extend_from_slice(request);
        assert_eq!(received, expected, "{version}");
        let counters = stop_proxy(proxy);
        assert_eq!(counters["http"], 1, "{counters:?}");
    }
}

#[test]
fn tls_is_routed_by_server_name_without_decrypting() {
    let (ws_tls, other_tls) = (free_port(), free_port());
    let mut cmd = Command::new(bins::ws_echo());
    cmd.args(["--tls-listen", &local(ws_tls).to_string()])
        .args(["--tls-listen", &local(other_tls).to_string()]);
    let mut echo = Proc::spawn("ws-echo", cmd, false);
    for _ in 0..2 {
        echo.wait_line("listening wss", Duration::from_secs(10));
    }
    let tls_addr = local(free_port());
    let unused = free_port();
    let (proxy, _addr) = start_proxy(
        unused,
        unused,
        &[
            "--tls-listen",
            &tls_addr.to_string(),
            "--tls-websocket",
            &local(ws_tls).to_string(),
            "--tls-http",
            &local(other_tls).to_string(),
            "--ws-sni",
            "LOCALHOST",
        ],
    );
    // `localhost` sends SNI localhost; an IP address sends no SNI at all.
    for host in ["localhost", "127.0.0.1", "localhost"] {
        let out = Command::new(bins::ws_client())
            .args(["--url", &format!("wss://{host}:{}/", tls_addr.port())])
            .args(["--insecure", "--message", "over tls"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ws-client to {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("echo: over tls"));
    }
    // Plain HTTP on the TLS port is refused at its first byte.
    let mut stream = connect(tls_addr);
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(2)));
    let counters = stop_proxy(proxy);
    assert_eq!(counters["tls_websocket"], 2, "{counters:?}");
    assert_eq!(counters["tls_http"], 1, "{counters:?}");
    assert_eq!(counters["not_tls"], 1, "{counters:?}");
    assert_eq!(counters["relay_error"], 0, "{counters:?}");
}

every_relay_mode!(idle_relays_are_closed_and_early_closes_counted);
fn idle_relays_are_closed_and_early_closes_counted(relay: Option<&str>) {
    let stack = start_stack(
        "idle",
        &with_relay(relay, &["--idle-timeout", "1", "--metrics", "127.0.0.1:0"]),
    );
    let mut stream = connect(stack.addr);
    let request = format!(
        "GET /idle HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    read_upgrade_response(&mut stream);
    let idle_since = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
    let idle_for = idle_since.elapsed();
    assert!(
        idle_for >= Duration::from_millis(800) && idle_for < Duration::from_secs(3),
        "closed after {idle_for:?} idle"
    );
    // A client that leaves before sending anything.
    drop(connect(stack.addr));
    wait_sample(&metrics_addr(&stack.proxy), CLOSED_EARLY, 1);
    let counters = stop_proxy(stack.proxy);
    assert_relay_way(relay, &counters);
    assert_eq!(counters["idle_timeout"], 1, "{counters:?}");
    assert_eq!(counters["client_closed_early"], 1, "{counters:?}");
    assert_eq!(counters["websocket"], 1, "{counters:?}");
}

#[test]
fn ipv6_listener_reports_tcp6_in_the_proxy_header() {
    let (backend_port, backend) = one_shot_backend(b"ok");
    let port = free_port();
    let addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let mut cmd = Command::new(bins::redirector());
    cmd.arg("sniff")
        .args(["--listen", &addr.to_string()])
        .args(["--websocket", &local(free_port()).to_string()])
        .args(["--http", &local(backend_port).to_string()])
        .args(["--proxy-protocol", "v1"]);
    let mut proxy = Proc::spawn("redirector sniff", cmd, false);
    let line = proxy.wait_line("redirector sniff ready", Duration::from_secs(10));
    assert_eq!(line, format!("redirector sniff ready: listening on {addr}"));
    let mut stream = connect(addr);
    let client = stream.local_addr().unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"ok");
    let expected = format!(
        "PROXY TCP6 ::1 ::1 {} {port}\r\nGET / HTTP/1.0\r\n\r\n",
        client.port()
    );
    assert_eq!(String::from_utf8_lossy(&backend.join().unwrap()), expected);
    let counters = stop_proxy(proxy);
    assert_eq!(counters["http"], 1, "{counters:?}");
}

every_relay_mode!(bulk_full_duplex_transfer_is_relayed_intact);
fn bulk_full_duplex_transfer_is_relayed_intact(relay: Option<&str>) {
    const BYTES: u64 = 16 << 20;
    let stack = start_stack("bulk", &with_relay(relay, &["--metrics", "127.0.0.1:0"]));
    let metrics = metrics_addr(&stack.proxy);
    let out = Command::new(bins::ws_client())
        .args(["--url", &format!("ws://{}/bulk", stack.addr)])
        .args(["--bytes", &BYTES.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ws-client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "bulk: sent {BYTES} bytes, received {BYTES} bytes, verified"
        )),
        "{stdout}"
    );
    // The relay counts its bytes when both directions have ended, which is just after the
    // client saw the end: stopping the proxy before then would cut the relay short.
    wait_relayed(&metrics, BYTES, Duration::from_secs(20));
    let counters = stop_proxy(stack.proxy);
    assert_relay_way(relay, &counters);
    assert_eq!(counters["websocket"], 1, "{counters:?}");
    // Frame headers come on top of the payload in both directions.
    assert!(counters["bytes_client_to_backend"] > BYTES, "{counters:?}");
    assert!(counters["bytes_backend_to_client"] > BYTES, "{counters:?}");
}

#[test]
fn listen_address_in_use_is_a_clear_error() {
    let (ws_port, http_port) = (free_port(), free_port());
    let (proxy, addr) = start_proxy(ws_port, http_port, &[]);
    let out = Command::new(bins::redirector())
        .arg("sniff")
        .args(["--listen", &addr.to_string()])
        .args(["--websocket", &local(ws_port).to_string()])
        .args(["--http", &local(http_port).to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("binding {addr}")), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
    stop_proxy(proxy);
}

// ---------- privileges ----------

/// Started as root (the suite runs as root), the proxy binds, then serves as `nobody`
/// with no capabilities and `no_new_privs`: checked on every thread while a WebSocket
/// relay is open and after bytes flowed both ways, with the open-file limit still raised.
#[test]
fn the_proxy_serves_unprivileged_while_traffic_flows() {
    let stack = start_stack("unpriv", &[]);
    let mut stream = connect(stack.addr);
    let request = format!(
        "GET /ws/echo/priv HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    read_upgrade_response(&mut stream);
    redirector_tests::privileges::assert_unprivileged(stack.proxy.pid());
    let mask = [1, 2, 3, 4];
    stream
        .write_all(&masked_frame(0x2, b"still relayed", mask))
        .unwrap();
    let (first, echoed) = read_frame(&mut stream);
    assert_eq!((first, echoed.as_slice()), (0x82, &b"still relayed"[..]));
    http_fetch_file(
        stack.addr,
        &format!("GET /{FILE_NAME} HTTP/1.1\r\nHost: test\r\n\r\n"),
    );
    redirector_tests::privileges::assert_unprivileged(stack.proxy.pid());
    let nobody = redirector_tests::privileges::of(stack.proxy.pid());
    assert!(
        nobody.uids.iter().all(|&uid| uid == nobody.uids[0]),
        "{nobody:?}"
    );
    drop(stream);
    let counters = stop_proxy(stack.proxy);
    assert_eq!(
        (counters["websocket"], counters["http"]),
        (1, 1),
        "{counters:?}"
    );
}

/// A `--user` that does not exist is refused before anything is bound or served.
#[test]
fn a_missing_user_is_refused_before_serving() {
    let (ws_port, http_port) = (free_port(), free_port());
    let addr = local(free_port());
    let out = Command::new(bins::redirector())
        .arg("sniff")
        .args(["--listen", &addr.to_string()])
        .args(["--websocket", &local(ws_port).to_string()])
        .args(["--http", &local(http_port).to_string()])
        .args(["--user", "no-such-user-redirector"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("user \"no-such-user-redirector\" does not exist"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
    // Nothing was left listening.
    assert!(TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_err());
}

/// Started without root (as `nobody`, through `setpriv`), the proxy keeps its user, and
/// still empties its capability sets and sets `no_new_privs` before serving.
#[test]
fn a_proxy_started_without_root_keeps_its_user_and_drops_capabilities() {
    let ws_port = free_port();
    let _echo = start_echo(ws_port);
    let addr = local(free_port());
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(bins::redirector())
    .arg("sniff")
    .args(["--listen", &addr.to_string()])
    .args(["--websocket", &local(ws_port).to_string()])
    .args(["--http", &local(free_port()).to_string()])
    .args(["--max-conns", "100"]);
    let mut proxy = Proc::spawn("redirector sniff (nobody)", cmd, false);
    proxy.wait_line("redirector sniff ready", Duration::from_secs(10));
    websocket_echo(addr, 7, false);
    let held = redirector_tests::privileges::of(proxy.pid());
    assert_eq!(held.uids, [65534; 4], "{held:?}");
    for (name, value) in &held.caps {
        if name != "CapBnd" {
            // The bounding set needs CAP_SETPCAP to change: it stays, unusable.
            assert_eq!(value, "0000000000000000", "{name}: {held:?}");
        }
    }
    assert!(held.no_new_privs, "{held:?}");
    let counters = stop_proxy(proxy);
    assert_eq!(counters["websocket"], 1, "{counters:?}");
}

// ---------- PROXY protocol read by nginx ----------

/// nginx in the foreground (`master_process off`, one process, killed by PID on drop) with
/// every path under its own temp directory; it answers every request with the client
/// address it read from the PROXY header.
struct Nginx {
    port: u16,
    // Fields drop in order: nginx is stopped before its directory goes.
    _proc: Proc,
    _dir: TempDir,
}

impl Nginx {
    fn start(tag: &str) -> Self {
        let temp = TempDir::new(&format!("nginx-{tag}"));
        let dir = temp.0.clone();
        let port = free_port();
        let d = dir.display();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n\
             location / {{ return 200 \"$proxy_protocol_addr:$proxy_protocol_port\\n\"; }}\n  }}\n}}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-p").arg(&dir).arg("-e").arg(dir.join("error.log"));
        cmd.arg("-c").arg(&conf);
        let proc = Proc::spawn("nginx (install it with `cargo xtask setup`)", cmd, false);
        let deadline = Instant::now() + IO_TIMEOUT;
        while TcpStream::connect(local(port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            port,
            _proc: proc,
            _dir: temp,
        }
    }
}

/// A plain GET to `addr` from a socket bound to `source`; returns the client's own address
/// and the response body.
fn get_from(source: std::net::Ipv4Addr, addr: SocketAddr) -> (SocketAddr, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let client = stream.local_addr().unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let (head, body) = split_response(&response);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (client, String::from_utf8_lossy(body).into_owned())
}

#[test]
fn nginx_reads_the_client_address_from_proxy_v1_and_v2() {
    let nginx = Nginx::start("pp");
    let source = std::net::Ipv4Addr::new(127, 0, 0, 3);
    for version in ["v1", "v2"] {
        let unused = free_port();
        let (proxy, addr) = start_proxy(unused, nginx.port, &["--proxy-protocol", version]);
        let (client, body) = get_from(source, addr);
        assert_eq!(client.ip(), source);
        assert_eq!(body, format!("127.0.0.3:{}\n", client.port()), "{version}");
        let counters = stop_proxy(proxy);
        assert_eq!(counters["http"], 1, "{version}: {counters:?}");
    }
}

// ---------- metrics ----------

/// `GET /metrics` from `addr`; returns the body after checking the status and type.
fn scrape(addr: &str) -> String {
    let mut stream = connect(addr.parse().unwrap());
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let (head, body) = split_response(&response);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    String::from_utf8(body.to_vec()).unwrap()
}

/// The `--metrics` address of a proxy, from its ready line.
fn metrics_addr(proxy: &Proc) -> String {
    let ready = proxy
        .seen
        .iter()
        .find(|l| l.starts_with("redirector sniff ready"))
        .unwrap()
        .clone();
    ready
        .split_once(" metrics http://")
        .and_then(|(_, rest)| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {ready}"))
        .to_string()
}

/// Waits (bounded by `limit`) until the proxy has counted more than `bytes` relayed in
/// each direction, i.e. a relay of that size has finished.
fn wait_relayed(metrics: &str, bytes: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let body = scrape(metrics);
        let relayed = ["client_to_backend", "backend_to_client"].map(|direction| {
            sample(
                &body,
                &format!("redirector_sniff_bytes_total{{direction=\"{direction}\"}}"),
            )
        });
        if relayed.iter().all(|&n| n > bytes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "relay not finished after {limit:?}: {relayed:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Connections the proxy has accepted, on its `/metrics`.
const ACCEPTED: &str = "redirector_sniff_accepted_total";
/// Connections closed by their client before sending a request head.
const CLOSED_EARLY: &str = "redirector_sniff_closed_total{reason=\"client_closed_early\"}";
/// Bytes sent back to clients by finished relays.
const BYTES_TO_CLIENT: &str = "redirector_sniff_bytes_total{direction=\"backend_to_client\"}";

/// Waits (bounded) until the sample `series` of the proxy's `/metrics` at `metrics` is at
/// least `value`.
fn wait_sample(metrics: &str, series: &str, value: u64) {
    wait_until(&format!("{series} at {value}"), IO_TIMEOUT, || {
        sample(&scrape(metrics), series) >= value
    });
}

/// Runs `client`, the only client of the proxy at the time, and waits until the proxy has
/// finished its relay (a relay's bytes are counted when it ends, just before its
/// connection slot is given back).
fn relay_to_end(metrics: &str, client: impl FnOnce()) {
    let before = sample(&scrape(metrics), BYTES_TO_CLIENT);
    client();
    wait_sample(metrics, BYTES_TO_CLIENT, before + 1);
}

#[test]
fn metrics_endpoint_serves_the_live_counters() {
    let mut stack = start_stack(
        "metrics",
        &[
            "--metrics",
            "127.0.0.1:0",
            "--max-conns-per-ip",
            "1",
            "--max-conns",
            "123",
        ],
    );
    let metrics = metrics_addr(&stack.proxy);
    let before = scrape(&metrics);
    assert_eq!(sample(&before, "redirector_sniff_accepted_total"), 0);
    // The limit given, on the line after the ready line and as a gauge.
    assert_eq!(
        stack
            .proxy
            .wait_line("redirector sniff limits", Duration::from_secs(5)),
        "redirector sniff limits: max-conns 123"
    );
    assert_eq!(sample(&before, "redirector_sniff_max_connections"), 123);
    // The proxy gives the client's one slot back when it has finished the relay, just
    // after the client saw the end.
    for i in 0..4 {
        if i % 2 == 0 {
            relay_to_end(&metrics, || plain_get(stack.addr));
        } else {
            relay_to_end(&metrics, || websocket_echo(stack.addr, i, false));
        }
    }
    // One connection held, a second from the same address refused (another address than
    // the sequential clients above, whose slots are given back only once the proxy has
    // finished their relays).
    let source = std::net::Ipv4Addr::new(127, 0, 0, 4);
    let mut held = connect_from(source, stack.addr);
    wait_sample(&metrics, ACCEPTED, 5);
    let mut refused = connect_from(source, stack.addr);
    assert!(closed_within(&mut refused, Duration::from_secs(2)));
    let body = scrape(&metrics);
    assert_eq!(sample(&body, "redirector_sniff_accepted_total"), 6);
    assert_eq!(
        sample(
            &body,
            "redirector_sniff_connections_total{route=\"websocket\"}"
        ),
        2
    );
    assert_eq!(
        sample(&body, "redirector_sniff_connections_total{route=\"http\"}"),
        2
    );
    assert_eq!(
        sample(
            &body,
            "redirector_sniff_closed_total{reason=\"over_ip_limit\"}"
        ),
        1
    );
    assert!(
        sample(
            &body,
            "redirector_sniff_bytes_total{direction=\"backend_to_client\"}"
        ) >= 2 * FILE_SIZE as u64
    );
    assert!(
        !body.contains("redirector_rule_"),
        "no kernel series in sniff alone"
    );
    assert!(!closed_within(&mut held, Duration::from_millis(50)));
    drop(held);
    let counters = stop_proxy(stack.proxy);
    assert_eq!(counters["accepted"], 6, "{counters:?}");
}
