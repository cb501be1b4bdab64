//! A stream that replays bytes already read from it (the sniffed prefix) before reading
//! further from the underlying I/O. Writes go straight through.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io`, with `prefix` read back first.
#[derive(Debug)]
pub struct PrefixedIo<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` has been read back already.
    replayed: usize,
    io: S,
}

impl<S> PrefixedIo<S> {
    /// Wraps `io` so that reads return `prefix` before anything else.
    pub fn new(prefix: Vec<u8>, io: S) -> Self {
        PrefixedIo {
            prefix,
            replayed: 0,
            io,
        }
    }

    /// The part of the prefix not read back yet.
    pub fn pending_prefix(&self) -> &[u8] {
        &self.prefix[self.replayed..]
    }

    /// The underlying I/O; any prefix not read back yet is lost.
    pub fn into_inner(self) -> S {
        self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let pending = &this.prefix[this.replayed..];
        if pending.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        this.replayed += n;
        if this.replayed == this.prefix.len() {
            // Free the buffer: the connection may live for hours.
            this.prefix = Vec::new();
            this.replayed = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn prefix_comes_first_then_the_stream() {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b" world").await.unwrap();
        drop(far);
        let mut io = PrefixedIo::new(b"hello".to_vec(), near);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
    }

    #[tokio::test]
    async fn small_reads_replay_the_prefix_piecewise() {
        let (far, near) = tokio::io::duplex(64);
        drop(far);
        let mut io = PrefixedIo::new(b"abcde".to_vec(), near);
        let mut two = [0u8; 2];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = io.read(&mut two).await.unwrap();
            got.extend_from_slice(&two[..n]);
        }
        assert_eq!(got, b"abcde");
        assert!(io.pending_prefix().is_empty());
        assert_eq!(io.read(&mut two).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn writes_go_through() {
        let (mut far, near) = tokio::io::duplex(64);
        let mut io = PrefixedIo::new(b"unread".to_vec(), near);
        io.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(io.pending_prefix(), b"unread");
    }
}
