//! sniff-bench: measures `redirector sniff --relay splice` against `--relay copy` on
//! loopback: a bulk upload (default 1 GiB) and a small-message ping-pong, each through
//! the real binary, with the proxy's CPU time, plus the same without the proxy as a
//! baseline. Bounded in bytes, round trips and time; for `cargo xtask bench` and the
//! numbers in docs/SNIFF.md.
//!
//! Example: sniff-bench --bytes 1073741824 --pings 20000 --rounds 3 [--json]

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use clap::Parser;
use redirector_tests::bins;
use testkit::process::Proc;

/// Splice vs copy relay of `redirector sniff` on loopback.
#[derive(Parser)]
struct Args {
    /// Relay modes to measure (repeatable).
    #[arg(long = "relay", default_values = ["auto", "splice", "copy"])]
    relays: Vec<String>,
    /// Bytes of the bulk upload.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Round trips of the ping-pong.
    #[arg(long, default_value_t = 20_000)]
    pings: u32,
    /// Message size of the ping-pong.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print one JSON document instead of text lines (for `cargo xtask bench`).
    #[arg(long)]
    json: bool,
}

/// Every socket operation gives up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of the client's writes in the bulk upload.
const WRITE_SIZE: usize = 256 * 1024;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds >= 1 && args.size >= 1,
        "--rounds and --size must be at least 1"
    );
    let backend = start_backend()?;
    if !args.json {
        println!(
            "# sniff-bench: bulk {} bytes, ping-pong {} x {} bytes, median of {} rounds",
            args.bytes, args.pings, args.size, args.rounds
        );
    }
    // Every proxy first, then the rounds interleaved, so that a change in the machine's load
    // during the run weighs on every mode alike.
    let mut targets = vec![("direct".to_string(), backend, None)];
    for relay in &args.relays {
        let mut cmd = Command::new(bins::redirector());
        cmd.args(["sniff", "--listen", "127.0.0.1:0"])
            .args(["--websocket", &backend.to_string()])
            .args(["--http", &backend.to_string()])
            .args(["--relay", relay, "--idle-timeout", "60"]);
        let mut proxy = Proc::spawn("redirector sniff", cmd, false);
        let ready = proxy.wait_line("redirector sniff ready", Duration::from_secs(10));
        let addr: SocketAddr = ready
            .strip_prefix("redirector sniff ready: listening on ")
            .context("ready line")?
            .parse()?;
        targets.push((relay.clone(), addr, Some(proxy)));
    }
    let mut results: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    for _ in 0..args.rounds {
        for ((_, addr, _), samples) in targets.iter().zip(&mut results) {
            measure(*addr, &args, samples)?;
        }
    }
    let mut rows = Vec::new();
    for ((label, _, _), samples) in targets.iter().zip(&mut results) {
        let row = Row {
            relay: label.clone(),
            bulk_mib_per_s: median(&mut samples.bulk),
            proxy_cpu_s_per_gib: median_of(&mut samples.cpu),
            pingpong_rtt_us: median(&mut samples.rtt),
            proxy_cpu_us_per_rtt: median_of(&mut samples.rtt_cpu),
        };
        if !args.json {
            let na = |v: Option<f64>, decimals: usize| {
                v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
            };
            println!(
                "relay={} bulk_mib_per_s={:.0} proxy_cpu_s_per_gib={} pingpong_rtt_us={:.1} \
                 proxy_cpu_us_per_rtt={}",
                row.relay,
                row.bulk_mib_per_s,
                na(row.proxy_cpu_s_per_gib, 2),
                row.pingpong_rtt_us,
                na(row.proxy_cpu_us_per_rtt, 1)
            );
        }
        rows.push(row);
    }
    if args.json {
        let doc = serde_json::json!({
            "bytes": args.bytes,
            "pings": args.pings,
            "size": args.size,
            "rounds": args.rounds,
            "results": rows.iter().map(|r| serde_json::json!({
                "relay": r.relay,
                "bulk_mib_per_s": r.bulk_mib_per_s,
                "proxy_cpu_s_per_gib": r.proxy_cpu_s_per_gib,
                "pingpong_rtt_us": r.pingpong_rtt_us,
                "proxy_cpu_us_per_rtt": r.proxy_cpu_us_per_rtt,
            })).collect::<Vec<_>>(),
        });
        println!("{doc:#}");
    }
    Ok(())
}

/// The medians of one target (`None`: not measured, e.g. the proxy's CPU without a proxy).
struct Row {
    relay: String,
    bulk_mib_per_s: f64,
    proxy_cpu_s_per_gib: Option<f64>,
    pingpong_rtt_us: f64,
    proxy_cpu_us_per_rtt: Option<f64>,
}

/// Measurements of one target, one per round.
#[derive(Default)]
struct Samples {
    /// Bulk upload, MiB/s.
    bulk: Vec<f64>,
    /// Proxy CPU seconds per GiB of the bulk upload.
    cpu: Vec<f64>,
    /// Mean ping-pong round trip, microseconds.
    rtt: Vec<f64>,
    /// Proxy CPU microseconds per ping-pong round trip.
    rtt_cpu: Vec<f64>,
}

/// Runs both measurements once through `addr`.
fn measure(addr: SocketAddr, args: &Args, samples: &mut Samples) -> anyhow::Result<()> {
    let cpu_before = process_cpu_seconds(addr);
    let started = Instant::now();
    bulk_upload(addr, args.bytes)?;
    let secs = started.elapsed().as_secs_f64();
    samples
        .bulk
        .push(args.bytes as f64 / secs / (1024.0 * 1024.0));
    if let (Some(before), Some(after)) = (cpu_before, process_cpu_seconds(addr)) {
        samples
            .cpu
            .push((after - before) / (args.bytes as f64 / (1u64 << 30) as f64));
    }
    let cpu_before = process_cpu_seconds(addr);
    let started = Instant::now();
    ping_pong(addr, args.pings, args.size)?;
    samples
        .rtt
        .push(started.elapsed().as_secs_f64() * 1e6 / f64::from(args.pings));
    if let (Some(before), Some(after)) = (cpu_before, process_cpu_seconds(addr)) {
        samples
            .rtt_cpu
            .push((after - before) * 1e6 / f64::from(args.pings));
    }
    Ok(())
}

/// The median, if there are samples.
fn median_of(values: &mut [f64]) -> Option<f64> {
    (!values.is_empty()).then(|| median(values))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// User + system CPU seconds of the process listening on `addr` (the proxy), read from
/// /proc; `None` for the direct baseline (this process) or if it cannot be found.
fn process_cpu_seconds(addr: SocketAddr) -> Option<f64> {
    let pid = listening_pid(addr)?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// The pid of the process (other than this one) that listens on `addr`, found through the
/// socket inode in /proc/net/tcp and the descriptors in /proc/*/fd.
fn listening_pid(addr: SocketAddr) -> Option<u32> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{:04X}", addr.port());
    let inode = tcp.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // local_address ends with the port; state 0A is LISTEN.
        (cols.get(1)?.ends_with(&local) && cols.get(3)? == &"0A")
            .then(|| cols.get(9).map(|s| s.to_string()))?
    })?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                return Some(pid);
            }
        }
    }
    None
}

fn connect(addr: SocketAddr, path: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())?;
    Ok(stream)
}

/// Sends `bytes` to the sink; it answers with the count it received.
fn bulk_upload(addr: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let mut stream = connect(addr, "/sink")?;
    let chunk: Vec<u8> = (0..WRITE_SIZE).map(|i| (i % 251) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(WRITE_SIZE as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    let received = u64::from_be_bytes(count);
    ensure!(
        received == bytes,
        "sink received {received} of {bytes} bytes"
    );
    Ok(())
}

/// `pings` round trips of `size` bytes through the echo backend.
fn ping_pong(addr: SocketAddr, pings: u32, size: usize) -> anyhow::Result<()> {
    let mut stream = connect(addr, "/echo")?;
    let mut message = vec![0u8; size];
    let mut reply = vec![0u8; size];
    for i in 0..pings {
        message[0] = i as u8;
        stream.write_all(&message)?;
        stream.read_exact(&mut reply)?;
        if reply != message {
            bail!("echo {i} differs");
        }
    }
    Ok(())
}

/// The backend: after a request head, `/sink` counts bytes until EOF and answers the count
/// (8 bytes, big endian); `/echo` echoes until EOF. One thread per connection.
fn start_backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                if let Err(e) = serve(stream) {
                    eprintln!("backend: {e:#}");
                }
            });
        }
    });
    Ok(addr)
}

fn serve(mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 4096, "head too long");
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let mut buf = vec![0u8; 256 * 1024];
    if head.starts_with(b"GET /sink ") {
        let mut count = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => break,
                n => count += n as u64,
            }
        }
        stream.write_all(&count.to_be_bytes())?;
    } else {
        loop {
            match stream.read(&mut buf)? {
                0 => break,
                n => stream.write_all(&buf[..n])?,
            }
        }
    }
    Ok(())
}
