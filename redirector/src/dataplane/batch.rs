//! Batched dump and removal of hash-map entries (`BPF_MAP_LOOKUP_BATCH`,
//! `BPF_MAP_DELETE_BATCH`): one syscall per thousands of entries instead of two per entry.
//!
//! The reaper reads the whole conntrack table every second. Walked key by key (what aya
//! offers), a full 64 k table cost 128 k syscalls per pass, which a profile of the
//! connection-rate benchmark showed as the loader's whole CPU use. aya 0.14 has no batch
//! API, so this module issues the two commands itself, for plain and LRU hash maps
//! (Linux ≥ 5.6); callers fall back to key-by-key access where the kernel refuses them.

use std::{io, mem::size_of, os::fd::AsRawFd as _, os::fd::BorrowedFd};

use aya::Pod;

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries asked for per lookup call; a hash map returns whole buckets, so the buffer must
/// hold the longest bucket (it is grown on `ENOSPC`).
const LOOKUP_CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`, as the kernel lays it out.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Address of the resume token (NULL on the first call).
    in_batch: u64,
    /// Address where the kernel writes the next resume token.
    out_batch: u64,
    /// Address of the key array.
    keys: u64,
    /// Address of the value array.
    values: u64,
    /// In: entries the arrays hold. Out: entries processed.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The kernel does not implement the command for this map or refuses its arguments: the
/// caller should fall back to key-by-key access.
pub fn is_unsupported(e: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524; // kernel-internal, leaks to user space from some map types
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` prefix of the size passed; every
    // address in it points at a live buffer of the length `count` promises (callers).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of the hash map `fd` whose key and value types are `K` and `V` (the map's
/// `key_size`/`value_size` must be their sizes). Entries changed during the dump may or may
/// not appear, as with any walk of a live map.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    let mut token: u32 = 0;
    let mut next_token: u32 = 0;
    let mut first = true;
    let mut chunk = LOOKUP_CHUNK;
    loop {
        // `K`/`V` are `Pod`: every bit pattern, zero included, is a valid value.
        let mut keys: Vec<K> = vec![zeroed(); chunk];
        let mut values: Vec<V> = vec![zeroed(); chunk];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token as u64 },
            out_batch: &raw mut next_token as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // A bucket longer than the buffer: retry the same position with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < (1 << 20) => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(e),
        };
        let filled = attr.count as usize;
        entries.extend(keys.into_iter().zip(values).take(filled));
        if done {
            return Ok(entries);
        }
        token = next_token;
        first = false;
    }
}

/// Deletes `keys` from the hash map `fd`; keys already gone are skipped. Returns how many
/// were deleted, and the first error other than a missing key (deleted ones stay counted).
pub fn delete_all<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> (usize, io::Result<()>) {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr);
        // On any outcome, `count` says how many keys from the front were deleted.
        let done = (attr.count as usize).min(rest.len());
        deleted += done;
        rest = &rest[done..];
        match result {
            Ok(()) => break,
            // The key at `rest[0]` is gone already (closed by RST, evicted): skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !rest.is_empty() => {
                rest = &rest[1..];
            }
            Err(e) => return (deleted, Err(e)),
        }
    }
    (deleted, Ok(()))
}

fn zeroed<T: Pod>() -> T {
    // SAFETY: `Pod` types are plain data for which the all-zero bit pattern is valid.
    unsafe { std::mem::zeroed() }
}
