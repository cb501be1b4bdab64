//! The relay of a connection once its backend is chosen: `--relay copy` (read and write
//! through a buffer), `splice` (bytes go socket → pipe → socket with `splice(2)` and never
//! enter user space) and `auto` (copy small rounds, splice bulk).
//!
//! State follows the bytes in flight, not the connections open: each direction waits for
//! its source socket to turn readable holding nothing, then borrows a buffer
//! ([`crate::pool`]) or a pipe ([`crate::pipe`]) for one round — read, write it all out —
//! and gives it back. An idle WebSocket connection therefore costs its task and its two
//! sockets only. The sniffed prefix is written to the backend first and then freed.
//!
//! Every splice is `SPLICE_F_NONBLOCK` on non-blocking sockets and pipes and runs inside
//! tokio's `try_io`, so `EAGAIN` clears the socket's readiness and the task waits for the
//! next edge. A round starts with an empty pipe (the pool lends only empty ones) and
//! drains it before giving it back, so `EAGAIN` can only mean that the *socket* is not
//! ready (never that the pipe is full or empty), which is what makes clearing the socket's
//! readiness correct. A pipe that still holds bytes when a round fails is closed, never
//! pooled.
//!
//! End of stream from one side shuts down the other side's write half (half-close); the
//! relay ends when both directions have, on the first error, or after the idle timeout
//! without a byte read on either side. If no pipe can be had (e.g. out of file
//! descriptors) the round is copied instead.
//!
//! `auto` copies through a [`SPLICE_THRESHOLD`]-byte buffer while rounds are small and
//! splices while a round brings at least that much, because a splice costs more than a
//! copy for a small message and less for bulk (measured: docs/SNIFF.md).

use std::{fmt, io, os::fd::AsFd, os::fd::AsRawFd, str::FromStr, time::Duration};

use tokio::{
    io::{AsyncWriteExt as _, Interest},
    net::TcpStream,
};

use crate::{
    counters::{Counter, Counters},
    option_value::{InvalidValue, Keyword},
    pipe::{splice, Pipe, PipePool},
    pool::BufferPool,
    relay::{relayed, until_idle, Activity, RelayError, Relayed},
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
    /// Always `splice(2)` through a pipe lent for the round: no copy to user space.
    Splice,
    /// A read and a write through a buffer lent for the round.
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

/// Buffers lent to copy rounds; a few are kept free for the next rounds.
pub static BUFFERS: BufferPool = BufferPool::new(SPLICE_THRESHOLD, FREE_BUFFERS);
/// Pipes lent to splice rounds; a few are kept free for the next rounds.
pub static PIPES: PipePool = PipePool::new(FREE_PIPES);

/// Free buffers kept between rounds (4 MiB at most).
const FREE_BUFFERS: usize = 256;
/// Free pipes kept between rounds (two descriptors each, pages only while they hold data).
const FREE_PIPES: usize = 64;

/// Relays between `client` and `backend` with `mode`, sending `prefix` (the sniffed bytes)
/// to the backend first.
pub async fn relay(
    mode: RelayMode,
    client: TcpStream,
    mut backend: TcpStream,
    prefix: Vec<u8>,
    idle_timeout: Option<Duration>,
    counters: &Counters,
) -> Result<Relayed, RelayError> {
    let clock = Activity::new();
    let work = async {
        backend.write_all(&prefix).await?;
        let prefix_len = prefix.len() as u64;
        // Not kept for the connection's life.
        drop(prefix);
        clock.touch();
        let (to_backend, to_client) = tokio::try_join!(
            one_way(&client, &backend, mode, &clock, counters),
            one_way(&backend, &client, mode, &clock, counters),
        )?;
        Ok(relayed(prefix_len + to_backend, to_client))
    };
    until_idle(work, &clock, idle_timeout).await
}

/// What one round moved.
enum Round {
    /// The readiness was stale: nothing to read yet.
    NotReady,
    /// The source ended.
    End,
    /// This many bytes went from the source to the destination, the way it says.
    Moved(usize, Way),
}

/// How a round moved its bytes (counted: `relay_splice`, `relay_copy`).
#[derive(Clone, Copy)]
enum Way {
    Splice,
    Copy,
}

/// Moves bytes from `from` to `to` until `from` ends, then shuts down the write half of
/// `to`; returns the number of bytes moved.
///
/// Between rounds it holds nothing but its place in the task. `copy` rounds always copy,
/// `splice` rounds always splice; `auto` copies until a round fills the whole buffer (bulk
/// is flowing), then splices until a round brings less than [`SPLICE_THRESHOLD`]. That
/// costs no extra system call to decide, and every round ends with its bytes written, so
/// the two ways never reorder bytes.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    mode: RelayMode,
    clock: &Activity,
    counters: &Counters,
) -> io::Result<u64> {
    let mut moved = 0u64;
    let mut bulk = mode == RelayMode::Splice;
    loop {
        from.readable().await?;
        let round = if bulk {
            splice_round(from, to, clock).await?
        } else {
            copy_round(from, to, clock).await?
        };
        match round {
            Round::NotReady => continue,
            Round::End => {
                shutdown_write(to)?;
                return Ok(moved);
            }
            Round::Moved(n, way) => {
                counters.inc(match way {
                    Way::Splice => Counter::RelaySplice,
                    Way::Copy => Counter::RelayCopy,
                });
                moved += n as u64;
                if mode == RelayMode::Auto {
                    bulk = n >= SPLICE_THRESHOLD;
                }
            }
        }
    }
}

/// One read into a borrowed buffer and the writes of all of it; the buffer goes back to
/// [`BUFFERS`] when the round ends (or fails).
async fn copy_round(from: &TcpStream, to: &TcpStream, clock: &Activity) -> io::Result<Round> {
    let mut buf = BUFFERS.lease();
    let filled = match from.try_read(&mut buf) {
        Ok(0) => return Ok(Round::End),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Round::NotReady),
        Err(e) => return Err(e),
    };
    clock.touch();
    let mut sent = 0;
    while sent < filled {
        to.writable().await?;
        match to.try_write(&buf[sent..filled]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Round::Moved(filled, Way::Copy))
}

/// One splice into a pipe from [`PIPES`] and the splices that drain it; the pipe goes back
/// only if empty. Without a pipe (out of descriptors) the round is copied.
async fn splice_round(from: &TcpStream, to: &TcpStream, clock: &Activity) -> io::Result<Round> {
    let pipe = match PIPES.take() {
        Ok(pipe) => pipe,
        Err(err) => {
            log::debug!("no pipe for splice ({err}); copying");
            return copy_round(from, to, clock).await;
        }
    };
    let round = splice_through(&pipe, from, to, clock).await;
    // Empty unless the round failed mid-drain; `put` closes it then.
    PIPES.put(pipe);
    round
}

/// Splices from `from` into the empty `pipe`, then all of it out to `to`.
async fn splice_through(
    pipe: &Pipe,
    from: &TcpStream,
    to: &TcpStream,
    clock: &Activity,
) -> io::Result<Round> {
    // The pipe is empty here: EAGAIN can only be the socket's.
    let read = from.try_io(Interest::READABLE, || {
        splice(from.as_fd(), pipe.write.as_fd(), PIPE_CHUNK)
    });
    let filled = match read {
        Ok(0) => return Ok(Round::End),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Round::NotReady),
        Err(e) => return Err(e),
    };
    clock.touch();
    let mut left = filled;
    while left > 0 {
        to.writable().await?;
        // The pipe holds `left` bytes: EAGAIN can only be the socket's.
        match to.try_io(Interest::WRITABLE, || {
            splice(pipe.read.as_fd(), to.as_fd(), left)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Round::Moved(filled, Way::Splice))
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

    /// Counters the relays of these tests count into (nothing reads them here).
    static COUNTERS: std::sync::LazyLock<Counters> = std::sync::LazyLock::new(Counters::default);

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
                    Some(Duration::from_secs(30)),
                    &COUNTERS,
                ),
                peers
            );
            assert_eq!(&received[..4], b"HEAD", "{mode}");
            assert!(received[4..] == big[..], "{mode}: backend got the bytes");
            assert!(echoed == received, "{mode}: client got the echo");
            let n = big.len() as u64 + 4;
            assert_eq!(result.unwrap(), relayed(n, n), "{mode}");
            // Every pipe the relay gave back is empty.
            let pooled: Vec<Pipe> = (0..PIPES.idle()).map_while(|_| PIPES.take().ok()).collect();
            for pipe in pooled {
                assert_eq!(pipe.pending().unwrap(), 0, "{mode}");
                PIPES.put(pipe);
            }
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
            &COUNTERS,
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
            relay(
                RelayMode::Splice,
                client,
                backend,
                b"HEAD".to_vec(),
                None,
                &COUNTERS
            ),
            peers
        );
        assert!(matches!(result, Err(RelayError::Io(_))), "{result:?}");
    }
}
