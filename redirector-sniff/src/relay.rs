//! The bidirectional copy between a client and its backend, with an idle timeout.
//!
//! [`relay`] copies any pair of async streams with `tokio::io::copy_bidirectional` (two
//! buffers held for the relay's life); the proxy's sockets go through [`crate::splice`]
//! instead, which borrows a buffer or a pipe per round and shares this module's idle
//! timeout ([`until_idle`]). When one side
//! finishes sending, the other side's write half is shut down, and the relay ends once
//! both directions are done, or when neither direction moved a byte for the idle timeout.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// How a relay ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Neither side sent anything for the idle timeout.
    #[error("no traffic in either direction for {0:?}")]
    Idle(Duration),
    /// Reading or writing one of the sockets failed (e.g. reset by the peer).
    #[error("relaying: {0}")]
    Io(#[from] io::Error),
}

/// Bytes moved by a finished relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    /// From the client to the backend (including the replayed prefix).
    pub client_to_backend: u64,
    /// From the backend to the client.
    pub backend_to_client: u64,
}

/// Copies both ways between `client` and `backend` until both directions end; with
/// `idle_timeout`, gives up after that long without any byte read on either side.
pub async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    idle_timeout: Option<Duration>,
) -> Result<Relayed, RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let Some(idle_timeout) = idle_timeout else {
        let (up, down) = tokio::io::copy_bidirectional(client, backend).await?;
        return Ok(relayed(up, down));
    };
    let clock = Activity::new();
    let mut client = Watched::new(client, &clock);
    let mut backend = Watched::new(backend, &clock);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
    let (up, down) = until_idle(copy, &clock, Some(idle_timeout)).await?;
    Ok(relayed(up, down))
}

/// Runs `work` to its end, unless `clock` shows no activity for `idle_timeout`.
pub(super) async fn until_idle<T>(
    work: impl std::future::Future<Output = io::Result<T>>,
    clock: &Activity,
    idle_timeout: Option<Duration>,
) -> Result<T, RelayError> {
    let Some(idle_timeout) = idle_timeout else {
        return Ok(work.await?);
    };
    tokio::pin!(work);
    loop {
        let deadline = clock.last() + idle_timeout;
        tokio::select! {
            result = &mut work => return Ok(result?),
            _ = tokio::time::sleep_until(deadline) => {
                if clock.last() + idle_timeout <= Instant::now() {
                    return Err(RelayError::Idle(idle_timeout));
                }
            }
        }
    }
}

pub(super) fn relayed(client_to_backend: u64, backend_to_client: u64) -> Relayed {
    Relayed {
        client_to_backend,
        backend_to_client,
    }
}

/// When a byte was last read on either side, as milliseconds since `start`.
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that records in an [`Activity`] every read that returned data.
struct Watched<'a, S> {
    io: &'a mut S,
    clock: &'a Activity,
}

impl<'a, S> Watched<'a, S> {
    fn new(io: &'a mut S, clock: &'a Activity) -> Self {
        Watched { io, clock }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.clock.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_until_both_end() {
        let (mut client_far, mut client) = tokio::io::duplex(1024);
        let (mut backend_far, mut backend) = tokio::io::duplex(1024);
        let peers = async {
            client_far.write_all(b"request").await.unwrap();
            client_far.shutdown().await.unwrap();
            let mut got = Vec::new();
            backend_far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"request");
            backend_far.write_all(b"response!").await.unwrap();
            drop(backend_far);
            let mut got = Vec::new();
            client_far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"response!");
        };
        let (result, ()) = tokio::join!(
            relay(&mut client, &mut backend, Some(Duration::from_secs(60))),
            peers
        );
        assert_eq!(result.unwrap(), relayed(7, 9));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relay_times_out() {
        let (_client_far, mut client) = tokio::io::duplex(1024);
        let (_backend_far, mut backend) = tokio::io::duplex(1024);
        let started = Instant::now();
        let result = relay(&mut client, &mut backend, Some(Duration::from_secs(30))).await;
        assert!(matches!(result, Err(RelayError::Idle(_))), "{result:?}");
        assert_eq!(started.elapsed().as_secs(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_the_relay_alive() {
        let (mut client_far, mut client) = tokio::io::duplex(1024);
        let (mut backend_far, mut backend) = tokio::io::duplex(1024);
        let started = Instant::now();
        let peers = async {
            let mut byte = [0u8; 1];
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                client_far.write_all(b"x").await.unwrap();
                backend_far.read_exact(&mut byte).await.unwrap();
            }
        };
        let (result, ()) = tokio::join!(
            relay(&mut client, &mut backend, Some(Duration::from_secs(30))),
            peers
        );
        assert!(matches!(result, Err(RelayError::Idle(_))));
        // Last byte at 100 s, so idle from 130 s on.
        assert_eq!(started.elapsed().as_secs(), 130);
    }
}
