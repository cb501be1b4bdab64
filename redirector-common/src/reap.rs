//! The reaper's removal requests: which expired flows the kernel may remove, checked
//! against the entry in place so that a flow created since the reaper's snapshot (a
//! client port reused) is never removed in its stead.
//!
//! The loader runs the never-attached XDP program [`REAP_PROGRAM`] with
//! `BPF_PROG_TEST_RUN` on a [`ReapRequest`] as packet data. For each [`ReapEntry`] the
//! program looks the key up in the entry's table and removes it only if the value there
//! still has the snapshot's `created_ns`, `last_seen_ns` and `state`: the check and the
//! removal are a few instructions apart in one program run, where a removal by the
//! loader (a `BPF_MAP_DELETE_ELEM` after its own lookup) would leave a window of
//! syscalls and scheduling in which a new connection on the same tuple could open and be
//! removed instead. The program writes how many it removed back into `count`.

use crate::maps::FlowKey;

/// Name of the reaping program in the object.
pub const REAP_PROGRAM: &str = "redirector_reap";

/// [`ReapEntry::table`]: the established table.
pub const REAP_TABLE_ESTABLISHED: u32 = 0;
/// [`ReapEntry::table`]: the half-open table.
pub const REAP_TABLE_HALF_OPEN: u32 = 1;

/// Entries per request: the request must fit in one test-run packet (a page less XDP's
/// headroom and tail), and the program's loop is unrolled over them by the verifier.
pub const REAP_BATCH: usize = 32;

/// One expired flow as the reaper saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReapEntry {
    /// `created_ns` of the snapshot: a flow created since (port reuse) differs.
    pub created_ns: u64,
    /// `last_seen_ns` of the snapshot: a packet since (no longer idle) changes it.
    pub last_seen_ns: u64,
    /// The flow's key.
    pub key: FlowKey,
    /// `REAP_TABLE_*`.
    pub table: u32,
    /// `state` of the snapshot.
    pub state: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 7],
}

/// A batch of [`ReapEntry`], the test-run packet of [`REAP_PROGRAM`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReapRequest {
    /// In: entries used (at most [`REAP_BATCH`]). Out: entries removed.
    pub count: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// The entries; those past `count` are ignored.
    pub entries: [ReapEntry; REAP_BATCH],
}

/// Byte offset of entry `index` in a [`ReapRequest`].
pub const fn entry_offset(index: usize) -> usize {
    8 + index * core::mem::size_of::<ReapEntry>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ReapEntry>(), 8 + 8 + 36 + 4 + 1 + 7);
        assert_eq!(
            core::mem::size_of::<ReapRequest>(),
            entry_offset(REAP_BATCH)
        );
        // One test-run packet: a page less XDP headroom (256) and skb_shared_info (320).
        assert!(core::mem::size_of::<ReapRequest>() <= 4096 - 256 - 320);
    }
}
