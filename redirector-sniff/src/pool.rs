//! Buffers lent to a relay only while its bytes are in flight.
//!
//! An idle connection waits for readiness holding no buffer; when its socket turns
//! readable the relay borrows one ([`BufferPool::lease`]), reads, writes it all out and
//! the lease gives the buffer back on drop. So memory follows the bytes in flight, not
//! the connections open, as in HAProxy's and nginx's buffer pools. The pool keeps at most
//! `cap` free buffers; beyond that, returned buffers are freed.

use std::{
    ops::{Deref, DerefMut},
    sync::Mutex,
};

/// Free items, at most `cap` of them, shared by every connection.
#[derive(Debug)]
pub struct Pool<T> {
    free: Mutex<Vec<T>>,
    cap: usize,
}

impl<T> Pool<T> {
    /// An empty pool keeping at most `cap` free items.
    pub const fn new(cap: usize) -> Self {
        Pool {
            free: Mutex::new(Vec::new()),
            cap,
        }
    }

    /// A free item, if the pool holds one.
    pub fn take(&self) -> Option<T> {
        self.lock().pop()
    }

    /// Keeps `item` for the next [`take`](Self::take), unless `cap` are kept already
    /// (then it is dropped); true if kept.
    pub fn put(&self, item: T) -> bool {
        let mut free = self.lock();
        if free.len() < self.cap {
            free.push(item);
            true
        } else {
            false
        }
    }

    /// Free items held now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// Drops every free item (after a burst, so the allocator can give the memory back).
    pub fn clear(&self) {
        let drained = std::mem::take(&mut *self.lock());
        drop(drained);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        // A panic while holding the lock cannot leave the Vec inconsistent (push/pop).
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A pool of byte buffers of one size.
#[derive(Debug)]
pub struct BufferPool {
    pool: Pool<Box<[u8]>>,
    size: usize,
}

impl BufferPool {
    /// An empty pool of `size`-byte buffers keeping at most `cap` free.
    pub const fn new(size: usize, cap: usize) -> Self {
        BufferPool {
            pool: Pool::new(cap),
            size,
        }
    }

    /// A buffer for this caller alone until the lease is dropped.
    pub fn lease(&self) -> Lease<'_> {
        let buf = self
            .pool
            .take()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice());
        Lease {
            buf: Some(buf),
            pool: self,
        }
    }

    /// Free buffers held now.
    pub fn idle(&self) -> usize {
        self.pool.idle()
    }

    /// Frees every free buffer.
    pub fn clear(&self) {
        self.pool.clear();
    }
}

/// A borrowed buffer; back to its pool when dropped.
#[derive(Debug)]
pub struct Lease<'a> {
    buf: Option<Box<[u8]>>,
    pool: &'a BufferPool,
}

impl Deref for Lease<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.pool.put(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc, time::Duration};

    use super::*;

    /// A small deterministic generator (xorshift64*), so a failing schedule repeats.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    #[test]
    fn keeps_at_most_cap_free_items() {
        let pool = Pool::new(2);
        assert!(pool.put(1));
        assert!(pool.put(2));
        assert!(!pool.put(3), "over the cap: dropped");
        assert_eq!(pool.idle(), 2);
        assert!(pool.take().is_some());
        pool.clear();
        assert_eq!(pool.take(), None);
    }

    #[test]
    fn a_returned_buffer_is_lent_again_with_its_size() {
        let pool = BufferPool::new(64, 4);
        let first = pool.lease();
        let address = first.as_ptr();
        assert_eq!(first.len(), 64);
        drop(first);
        assert_eq!(pool.idle(), 1);
        let again = pool.lease();
        assert_eq!(again.as_ptr(), address, "reused, not reallocated");
        assert_eq!(pool.idle(), 0);
    }

    /// Many tasks borrow and return on a shuffled schedule (random hold times, paused
    /// clock): each fills its buffer with its own marker, waits, and finds the marker
    /// intact, so no buffer was ever lent to two tasks at once.
    #[tokio::test(start_paused = true)]
    async fn a_buffer_is_never_lent_to_two_borrowers_at_once() {
        const TASKS: u64 = 64;
        const ROUNDS: u64 = 50;
        for seed in [1u64, 0x9e37_79b9_7f4a_7c15, 42] {
            let pool: &'static BufferPool = Box::leak(Box::new(BufferPool::new(256, 8)));
            let rng = Rc::new(Cell::new(seed));
            let local = tokio::task::LocalSet::new();
            let mut checked = 0u64;
            let mut handles = Vec::new();
            for task in 0..TASKS {
                let rng = Rc::clone(&rng);
                handles.push(local.spawn_local(async move {
                    let marker = task as u8 + 1;
                    let mut rounds = 0;
                    for _ in 0..ROUNDS {
                        let mut gen = Rng(rng.get());
                        let hold = gen.below(20);
                        let pause = gen.below(5);
                        rng.set(gen.0);
                        let mut buf = pool.lease();
                        assert!(buf.iter().all(|&b| b == 0), "lent while marked");
                        buf.fill(marker);
                        tokio::time::sleep(Duration::from_millis(hold)).await;
                        assert!(buf.iter().all(|&b| b == marker), "another borrower wrote");
                        // Unmark before returning, so the next borrower can check.
                        buf.fill(0);
                        drop(buf);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        rounds += 1;
                    }
                    rounds
                }));
            }
            local
                .run_until(async {
                    for handle in handles {
                        checked += handle.await.unwrap();
                    }
                })
                .await;
            assert_eq!(checked, TASKS * ROUNDS);
            assert!(pool.idle() <= 8);
        }
    }

    /// The same across OS threads (each with its own seeded schedule of hold times and
    /// spins): the pool's lock, not the runtime, is what keeps buffers exclusive.
    #[test]
    fn threads_never_share_a_buffer() {
        const THREADS: u64 = 8;
        const ROUNDS: u64 = 2_000;
        let pool = BufferPool::new(64, 4);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let pool = &pool;
                scope.spawn(move || {
                    let mut gen = Rng(0x5eed ^ ((thread + 1) * 0x9e37_79b9));
                    let marker = thread as u8 + 1;
                    for _ in 0..ROUNDS {
                        let mut buf = pool.lease();
                        assert!(buf.iter().all(|&b| b == 0), "lent while marked");
                        buf.fill(marker);
                        for _ in 0..gen.below(200) {
                            std::hint::spin_loop();
                        }
                        if gen.below(4) == 0 {
                            std::thread::yield_now();
                        }
                        assert!(buf.iter().all(|&b| b == marker), "another thread wrote");
                        buf.fill(0);
                    }
                });
            }
        });
        assert!(pool.idle() <= 4);
    }
}
