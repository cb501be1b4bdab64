//! `--connect-rate`: hands out connection attempt slots at a fixed rate to every task, without
//! a lock (one compare-and-swap per attempt).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Spaces connection attempts of all tasks `interval` apart; slots are never handed out in the
/// past, so a slow period is not followed by a burst.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    /// Nanoseconds between two attempts; 0 means no limit.
    interval_ns: u64,
    /// Nanoseconds since `start` of the next free slot.
    next_ns: AtomicU64,
}

impl Pacer {
    /// A pacer for `rate` attempts per second (0: as fast as possible).
    pub fn new(start: Instant, rate: f64) -> Self {
        let interval_ns = if rate > 0.0 {
            (1e9 / rate).round() as u64
        } else {
            0
        };
        Self {
            start,
            interval_ns,
            next_ns: AtomicU64::new(0),
        }
    }

    /// Reserves the next slot and waits for it. Returns false, without waiting, when the slot
    /// would be at or after `until`.
    pub async fn wait_turn(&self, until: Instant) -> bool {
        if self.interval_ns == 0 {
            return Instant::now() < until;
        }
        let now_ns = self.elapsed_ns(Instant::now());
        let mut next = self.next_ns.load(Ordering::Relaxed);
        let slot = loop {
            let slot = next.max(now_ns);
            if self.start + Duration::from_nanos(slot) >= until {
                return false;
            }
            match self.next_ns.compare_exchange_weak(
                next,
                slot + self.interval_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break slot,
                Err(current) => next = current,
            }
        };
        tokio::time::sleep_until(self.start + Duration::from_nanos(slot)).await;
        true
    }

    fn elapsed_ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_and_end_at_the_deadline() {
        let start = Instant::now();
        let pacer = Pacer::new(start, 10.0);
        let until = start + Duration::from_millis(350);
        let mut turns = Vec::new();
        while pacer.wait_turn(until).await {
            turns.push(start.elapsed().as_millis());
        }
        assert_eq!(turns, [0, 100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_pacer_never_waits() {
        let start = Instant::now();
        let pacer = Pacer::new(start, 0.0);
        assert!(pacer.wait_turn(start + Duration::from_secs(1)).await);
        assert_eq!(Instant::now(), start);
        assert!(!pacer.wait_turn(start).await);
    }
}
