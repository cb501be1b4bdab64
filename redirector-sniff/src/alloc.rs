//! Keeps memory that relayed connections free inside the allocator while connections come
//! and go, and gives it back to the kernel once a burst has drained.
//!
//! Each connection allocates and frees its task and buffers. glibc gives freed memory at
//! the top of a thread's heap back with `madvise(MADV_DONTNEED)` once it exceeds the trim
//! threshold (128 KiB), and every such call makes the kernel interrupt the proxy's other
//! worker threads to flush their TLBs. A profile of the WebSocket connection-rate benchmark
//! showed about 150 of those calls a second and 4 % of the proxy's time in the IPIs (more
//! in a VM, where each IPI exits to the hypervisor). So the threshold stays high
//! ([`TRIM_THRESHOLD`]): steady churn never trims.
//!
//! But a high threshold alone keeps the peak resident after a burst closes. So
//! [`TrimPolicy`] watches the connections open: when they have fallen to half their peak or
//! less (and by at least [`TRIM_MIN_DROP`]), the buffer and pipe pools are emptied and
//! `malloc_trim(0)` returns every free page of every arena at once — one batch of madvise
//! calls per drained burst, checked every [`TRIM_CHECK_INTERVAL`], instead of one per
//! shrink. Resident memory is back down within that interval after the burst ends.

use std::time::Duration;

/// Memory kept at the top of a heap before it is returned to the kernel on a free.
pub const TRIM_THRESHOLD: usize = 256 << 20;
/// How often the open connections are compared with their peak.
pub const TRIM_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Fewest connections closed since the peak that are worth a trim.
pub const TRIM_MIN_DROP: usize = 512;

/// Raises the allocator's trim threshold to [`TRIM_THRESHOLD`]; false if the allocator
/// refused (or is not glibc's, which has no such setting).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes glibc's tuning parameters; M_TRIM_THRESHOLD with a
        // positive value is a documented, always-valid setting.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the allocator's free memory to the kernel (all arenas); false if nothing was
/// returned or the allocator is not glibc's.
pub fn give_back_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim(3) only releases free memory of glibc's arenas; 0 keeps no
        // padding. It takes the arena locks itself.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// When a burst has drained: the decision of the periodic check, apart from its effects.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrimPolicy {
    /// Most connections seen open since the last trim.
    peak: usize,
}

impl TrimPolicy {
    /// Records `open` connections now; true if memory should be given back now (they have
    /// fallen to half the peak or less, by at least [`TRIM_MIN_DROP`]). The peak then
    /// starts again from `open`.
    pub fn observe(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        let drained = self.peak - open >= TRIM_MIN_DROP && open <= self.peak / 2;
        if drained {
            self.peak = open;
        }
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_the_threshold() {
        assert_eq!(
            keep_freed_memory(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }

    #[test]
    fn trims_once_after_a_burst_drains_and_never_during_churn() {
        let mut policy = TrimPolicy::default();
        // Growing and steady: never.
        for open in [0, 1_000, 50_000, 50_000, 49_000, 30_000] {
            assert!(!policy.observe(open), "{open}");
        }
        // Down to half the peak: once.
        assert!(policy.observe(20_000));
        assert!(!policy.observe(20_000));
        assert!(!policy.observe(15_000), "only a quarter below the new peak");
        assert!(policy.observe(0));
        assert!(!policy.observe(0));
    }

    #[test]
    fn small_swings_are_not_worth_a_trim() {
        let mut policy = TrimPolicy::default();
        for _ in 0..10 {
            assert!(!policy.observe(TRIM_MIN_DROP - 1));
            assert!(!policy.observe(0));
        }
    }

    #[test]
    fn giving_back_is_harmless() {
        let _ = give_back_freed_memory();
    }
}
