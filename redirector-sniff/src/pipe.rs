//! Pipes for `splice(2)`, made or pooled for one transfer at a time.
//!
//! A relay takes a pipe only when its source socket is readable, splices into it, drains
//! it into the destination and gives it back, so idle connections hold none. A pipe goes
//! back to the pool only if it is empty (checked with `FIONREAD`): a pipe that still holds
//! bytes of one connection (e.g. its destination failed mid-drain) is closed instead, so
//! those bytes can never reach another connection.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use crate::pool::Pool;

/// A non-blocking pipe: its read end and its write end.
#[derive(Debug)]
pub struct Pipe {
    /// Where spliced bytes come out.
    pub read: OwnedFd,
    /// Where spliced bytes go in.
    pub write: OwnedFd,
}

impl Pipe {
    /// A new non-blocking, close-on-exec pipe.
    pub fn new() -> io::Result<Self> {
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

    /// Bytes waiting in the pipe.
    pub fn pending(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `n`, which we own; the descriptor is open.
        let rc = unsafe { libc::ioctl(self.read.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.max(0) as usize)
    }
}

/// Empty pipes kept for the next transfer.
#[derive(Debug)]
pub struct PipePool {
    pool: Pool<Pipe>,
}

impl PipePool {
    /// An empty pool keeping at most `cap` free pipes (two descriptors each).
    pub const fn new(cap: usize) -> Self {
        PipePool {
            pool: Pool::new(cap),
        }
    }

    /// An empty pipe: a pooled one, else a new one.
    pub fn take(&self) -> io::Result<Pipe> {
        match self.pool.take() {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Keeps `pipe` for the next transfer if it is empty (else closes it, with the bytes
    /// it holds); true if kept.
    pub fn put(&self, pipe: Pipe) -> bool {
        match pipe.pending() {
            Ok(0) => self.pool.put(pipe),
            _ => false,
        }
    }

    /// Free pipes held now.
    pub fn idle(&self) -> usize {
        self.pool.idle()
    }

    /// Closes every free pipe.
    pub fn clear(&self) {
        self.pool.clear();
    }
}

/// One non-blocking `splice(2)` of at most `len` bytes from `from` to `to` (one of them a
/// pipe).
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
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

/// Writes `bytes` into `pipe` with write(2) (tests fill pipes this way).
#[cfg(test)]
fn fill(pipe: &Pipe, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is a live slice of `bytes.len()` bytes; the descriptor is open.
    let n = unsafe { libc::write(pipe.write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_pipe_is_kept_and_lent_again() {
        let pool = PipePool::new(4);
        let pipe = pool.take().unwrap();
        let fd = pipe.read.as_raw_fd();
        assert!(pool.put(pipe));
        assert_eq!(pool.idle(), 1);
        let again = pool.take().unwrap();
        assert_eq!(again.read.as_raw_fd(), fd, "the pooled pipe, not a new one");
        assert_eq!(again.pending().unwrap(), 0);
    }

    #[test]
    fn a_pipe_holding_bytes_never_goes_back() {
        let pool = PipePool::new(4);
        let pipe = pool.take().unwrap();
        assert_eq!(fill(&pipe, b"secret of one connection").unwrap(), 24);
        assert_eq!(pipe.pending().unwrap(), 24);
        assert!(!pool.put(pipe), "closed, not pooled");
        assert_eq!(pool.idle(), 0);
        // Whatever is lent next is empty.
        for _ in 0..3 {
            let pipe = pool.take().unwrap();
            assert_eq!(pipe.pending().unwrap(), 0);
            assert!(pool.put(pipe));
        }
    }

    #[test]
    fn the_pool_keeps_at_most_cap_pipes() {
        let pool = PipePool::new(2);
        let pipes: Vec<_> = (0..3).map(|_| pool.take().unwrap()).collect();
        let kept: Vec<bool> = pipes.into_iter().map(|p| pool.put(p)).collect();
        assert_eq!(kept, [true, true, false]);
        pool.clear();
        assert_eq!(pool.idle(), 0);
    }
}
