//! Keeps memory that relayed connections free inside the allocator instead of handing it
//! back to the kernel after every shrink.
//!
//! Each connection allocates and frees its buffers. glibc gives freed memory at the top of a
//! thread's heap back with `madvise(MADV_DONTNEED)` once it exceeds the trim threshold
//! (128 KiB), and every such call makes the kernel interrupt the proxy's other worker
//! threads to flush their TLBs. A profile of the WebSocket connection-rate benchmark showed
//! about 150 of those calls a second and 4 % of the proxy's time in the IPIs (more in a VM,
//! where each IPI exits to the hypervisor). With a high threshold the memory stays for the
//! next connections, as HAProxy's and nginx's pools keep theirs: the resident size stays at
//! its busiest, and no longer shrinks after a burst.

/// Memory kept at the top of a heap before it is returned to the kernel.
pub const TRIM_THRESHOLD: usize = 256 << 20;

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
}
