//! The zero-copy relay (`--relay splice`, and `auto` for bulk): bytes go socket → pipe →
//! socket with `splice(2)` and never enter user space.
//!
//! Each direction has its own pipe. The sniffed prefix is written to the backend first
//! with ordinary writes; then each direction loops: wait until the source socket is
//! readable, splice from it into the (empty) pipe, wait until the destination is writable,
//! splice the pipe out until it is empty. Every splice is `SPLICE_F_NONBLOCK` on
//! non-blocking sockets and pipes and runs inside tokio's `try_io`, so `EAGAIN` clears the
//! socket's readiness and the task waits for the next edge. Because a fill starts only
//! when the pipe is empty and a drain only when it holds data, `EAGAIN` can only mean
//! that the *socket* is not ready (never that the pipe is full or empty), which is what
//! makes clearing the socket's readiness correct.
//!
//! End of stream from one side shuts down the other side's write half (half-close); the
//! relay ends when both directions have, on the first error, or after the idle timeout
//! without a byte read on either side, like the copy relay. If the pipes cannot be made
//! (e.g. out of file descriptors) the connection is relayed by copy instead.
//!
//! `auto` reads and writes through a [`SPLICE_THRESHOLD`]-byte buffer while messages are
//! small and splices while a round brings at least that much, because a splice costs
//! more than a copy for a small message and less for bulk (measured: docs/SNIFF.md). Its
//! pipes are made only when bulk first flows, so chatty connections hold none.

use std::{
    fmt, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    str::FromStr,
    time::Duration,
};

use tokio::{
    io::{AsyncWriteExt as _, Interest},
    net::TcpStream,
};

use crate::{
    option_value::{InvalidValue, Keyword},
    prefixed::PrefixedIo,
    relay::{self, relayed, until_idle, Activity, RelayError, Relayed},
};

/// Most bytes asked of one splice into a pipe: the default pipe capacity (16 pages).
const PIPE_CHUNK: usize = 64 * 1024;

/// How the proxy moves a connection's bytes once it has chosen the backend (`--relay`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RelayMode {
    /// `splice(2)` while rounds bring at least [`SPLICE_THRESHOLD`] bytes, else a read and
    /// a write through a buffer of that size: zero-copy for bulk, no splice overhead for
    /// small messages.
    #[default]
    Auto,
    /// Always `splice(2)` through a pipe per direction: no copy to user space.
    Splice,
    /// `tokio::io::copy_bidirectional` with user-space buffers.
    Copy,
}

/// In [`RelayMode::Auto`], rounds of fewer bytes than this are read and written instead
/// of spliced (splicing costs more than copying for small messages).
pub const SPLICE_THRESHOLD: usize = 16 * 1024;

impl Keyword for RelayMode {
    const OPTION: &'static str = "relay";
    const KEYWORDS: &'static [(&'static str, Self)] = &[
        ("auto", RelayMode::Auto),
        ("splice", RelayMode::Splice),
        ("copy", RelayMode::Copy),
    ];
}

impl FromStr for RelayMode {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_keyword(s)
    }
}

/// The keyword (`--relay`'s default is shown in `--help` with it).
impl fmt::Display for RelayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// Relays between `client` and `backend` with `mode`, sending `prefix` (the sniffed bytes)
/// to the backend first.
pub async fn relay(
    mode: RelayMode,
    client: TcpStream,
    mut backend: TcpStream,
    prefix: Vec<u8>,
    idle_timeout: Option<Duration>,
) -> Result<Relayed, RelayError> {
    // `splice` makes both pipes up front; `auto` makes each direction's pipe when bulk
    // first flows there, so connections that only ever carry small messages hold no pipe.
    let (up, down, threshold) = match mode {
        RelayMode::Copy => (None, None, 0),
        RelayMode::Auto => (None, None, SPLICE_THRESHOLD),
        RelayMode::Splice => match (Pipe::new(), Pipe::new()) {
            (Ok(up), Ok(down)) => (Some(up), Some(down), 0),
            (Err(err), _) | (_, Err(err)) => {
                log::debug!("no pipe for splice ({err}); relaying by copy");
                (None, None, 0)
            }
        },
    };
    if up.is_none() && threshold == 0 {
        let mut client = PrefixedIo::new(prefix, client);
        return relay::relay(&mut client, &mut backend, idle_timeout).await;
    }
    let clock = Activity::new();
    let work = async {
        backend.write_all(&prefix).await?;
        clock.touch();
        let (to_backend, to_client) = tokio::try_join!(
            one_way(&client, &backend, up, threshold, &clock),
            one_way(&backend, &client, down, threshold, &clock),
        )?;
        Ok(relayed(prefix.len() as u64 + to_backend, to_client))
    };
    until_idle(work, &clock, idle_timeout).await
}

/// Moves bytes from `from` to `to` until `from` ends, then shuts down the write half of
/// `to`; returns the number of bytes moved.
///
/// With `threshold` 0 every round splices through `pipe`. Otherwise a round reads into a
/// `threshold`-byte buffer and writes it, until a read fills the whole buffer (bulk is
/// flowing): from then on rounds splice (through `pipe`, made then if needed; without one,
/// e.g. out of descriptors, it keeps copying), until a splice brings less than
/// `threshold`. That costs no extra system call to decide, and the pipe is always empty
/// between rounds, so the two ways never reorder bytes.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    mut pipe: Option<Pipe>,
    threshold: usize,
    clock: &Activity,
) -> io::Result<u64> {
    let mut moved = 0u64;
    let mut buf = vec![0u8; threshold];
    let mut bulk = threshold == 0;
    loop {
        from.readable().await?;
        let splicing = if bulk { pipe.as_ref() } else { None };
        let read = match splicing {
            // The pipe is empty here: EAGAIN can only be the socket's.
            Some(pipe) => from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), pipe.write.as_fd(), PIPE_CHUNK)
            }),
            None => from.try_read(&mut buf),
        };
        let filled = match read {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if filled == 0 {
            shutdown_write(to)?;
            return Ok(moved);
        }
        clock.touch();
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            let written = match splicing {
                // The pipe holds `left` bytes: EAGAIN can only be the socket's.
                Some(pipe) => to.try_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_fd(), to.as_fd(), left)
                }),
                None => to.try_write(&buf[filled - left..filled]),
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        if threshold > 0 {
            bulk = filled >= threshold && ensure_pipe(&mut pipe);
        }
    }
}

/// Makes `pipe` if there is none yet; false if that failed (the caller keeps copying).
fn ensure_pipe(pipe: &mut Option<Pipe>) -> bool {
    if pipe.is_none() {
        match Pipe::new() {
            Ok(new) => *pipe = Some(new),
            Err(err) => log::debug!("no pipe for splice ({err}); relaying by copy"),
        }
    }
    pipe.is_some()
}

/// A non-blocking pipe: its read end and its write end.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a writable array of two ints, as pipe2(2) requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }
}

/// One non-blocking `splice(2)` of at most `len` bytes from `from` to `to` (one of them a
/// pipe).
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed, so open for the call; null offsets are what
    // splice(2) requires for pipes and sockets; no memory of ours is passed.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Shuts down the write half of `stream` (a FIN to its peer); a peer already gone is not
/// an error here (the other direction reports it, if it matters).
fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    // SAFETY: shutdown(2) on a descriptor borrowed from a live stream; no memory involved.
    let rc = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    if rc == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
        time::Instant,
    };

    use super::*;

    /// A connected pair of loopback sockets: (ours, the peer's).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = TcpStream::connect(listener.local_addr().unwrap());
        let (ours, accepted) = tokio::join!(connect, listener.accept());
        (ours.unwrap(), accepted.unwrap().0)
    }

    #[test]
    fn parses_modes() {
        assert_eq!("splice".parse::<RelayMode>().unwrap(), RelayMode::Splice);
        assert_eq!("auto".parse::<RelayMode>().unwrap(), RelayMode::Auto);
        assert_eq!("copy".parse::<RelayMode>().unwrap(), RelayMode::Copy);
        assert!("zero".parse::<RelayMode>().is_err());
        assert_eq!(RelayMode::Copy.to_string(), "copy");
    }

    #[tokio::test]
    async fn both_modes_replay_the_prefix_then_relay_both_ways_and_half_close() {
        for mode in [RelayMode::Auto, RelayMode::Splice, RelayMode::Copy] {
            let (mut client_far, client) = pair().await;
            let (backend, mut backend_far) = pair().await;
            let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let peers = async {
                // More than a pipe holds, in both directions at once.
                let upload = async {
                    client_far.write_all(&big).await.unwrap();
                    client_far.shutdown().await.unwrap();
                    let mut got = Vec::new();
                    client_far.read_to_end(&mut got).await.unwrap();
                    got
                };
                let serve = async {
                    let mut got = Vec::new();
                    backend_far.read_to_end(&mut got).await.unwrap();
                    backend_far.write_all(&got).await.unwrap();
                    backend_far.shutdown().await.unwrap();
                    got
                };
                tokio::join!(upload, serve)
            };
            let (result, (echoed, received)) = tokio::join!(
                relay(
                    mode,
                    client,
                    backend,
                    b"HEAD".to_vec(),
                    Some(Duration::from_secs(30))
                ),
                peers
            );
            assert_eq!(&received[..4], b"HEAD", "{mode}");
            assert!(received[4..] == big[..], "{mode}: backend got the bytes");
            assert!(echoed == received, "{mode}: client got the echo");
            let n = big.len() as u64 + 4;
            assert_eq!(result.unwrap(), relayed(n, n), "{mode}");
        }
    }

    #[tokio::test]
    async fn splice_relay_times_out_when_idle() {
        let (_client_far, client) = pair().await;
        let (backend, _backend_far) = pair().await;
        let started = Instant::now();
        let result = relay(
            RelayMode::Splice,
            client,
            backend,
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            Some(Duration::from_millis(300)),
        )
        .await;
        assert!(matches!(result, Err(RelayError::Idle(_))), "{result:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn splice_relay_reports_a_reset() {
        let (client_far, client) = pair().await;
        let (backend, mut backend_far) = pair().await;
        // SO_LINGER 0: closing sends a reset instead of a FIN.
        client_far.set_zero_linger().unwrap();
        let peers = async {
            let mut head = [0u8; 4];
            backend_far.read_exact(&mut head).await.unwrap();
            drop(client_far);
        };
        let (result, ()) = tokio::join!(
            relay(RelayMode::Splice, client, backend, b"HEAD".to_vec(), None),
            peers
        );
        assert!(matches!(result, Err(RelayError::Io(_))), "{result:?}");
    }
}
