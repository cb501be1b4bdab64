//! Raw `bpf(2)` on BPF links where aya 0.14 has no call: open a pinned link, swap or
//! detach its program, read where it is attached (interface index, TCX direction), list
//! every link of the kernel, and the maps a program uses.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// `bpf(2)` command numbers (`enum bpf_cmd` of the kernel's UAPI).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_link_type`: an XDP link.
pub const LINK_TYPE_XDP: u32 = 6;
/// `BPF_LINK_TYPE_NETNS`: a link on a network namespace (`sk_lookup`, flow dissector).
pub const LINK_TYPE_NETNS: u32 = 5;
/// `enum bpf_link_type`: a TCX link.
pub const LINK_TYPE_TCX: u32 = 11;
/// `enum bpf_attach_type`: TCX ingress.
pub const TCX_INGRESS: u32 = 46;
/// `enum bpf_attach_type`: TCX egress.
pub const TCX_EGRESS: u32 = 47;

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a link (`struct bpf_link_info`), for the kinds
/// redirector attaches to interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// `bpf_link_type`.
    pub kind: u32,
    /// Link id.
    pub id: u32,
    /// The program it runs.
    pub prog_id: u32,
    /// XDP and TCX: the interface it is attached to; 0 once the interface went away
    /// (the link is *severed*: it holds its program, attached nowhere).
    pub ifindex: u32,
    /// TCX: [`TCX_INGRESS`] or [`TCX_EGRESS`]; 0 for other kinds.
    pub attach_type: u32,
}

/// Runs `bpf(cmd, attr)`; the raw return value or the errno.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member `cmd` reads, and every pointer in it must be
/// valid for what `cmd` does with it (reads, or writes of the length it carries).
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: the caller's contract: `attr` is what `cmd` expects, its size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Takes ownership of a descriptor `bpf(2)` returned.
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Opens the BPF object pinned at `path` (aya's pinned-link handle does not lend its fd).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = Attr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_GET reads `attr` and the NUL-terminated path it points to, alive
    // for the call.
    unsafe { sys_bpf(BPF_OBJ_GET, &mut attr) }.map(owned)
}

/// Replaces the program of the link `link` by `prog`, atomically (the kernel swaps the
/// link's program pointer). A severed link refuses: `ENOLINK`.
pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: BPF_LINK_UPDATE only reads `attr`, which holds no pointer.
    unsafe { sys_bpf(BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// Detaches the link `link` from its hook whoever else holds it (its pin, another
/// process): it stays a valid, severed link until the last reference goes.
pub fn detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
    };
    // SAFETY: BPF_LINK_DETACH only reads `attr`, which holds no pointer.
    unsafe { sys_bpf(BPF_LINK_DETACH, &mut attr) }.map(drop)
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info`.
///
/// # Safety
/// `T` must be a `#[repr(C)]` prefix of the object's info structure, and every pointer in
/// it null or valid for the writes its length field allows.
unsafe fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: std::ptr::from_mut(info) as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes to `info`, a live `T`; the
    // pointers inside `T` are the caller's (this module's) to get right.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.map(drop)
}

/// The head of `struct bpf_link_info` and the part of its union XDP and TCX fill.
#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    kind: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    /// `xdp.ifindex` / `tcx.ifindex`.
    ifindex: u32,
    /// `tcx.attach_type`.
    attach_type: u32,
    /// The rest of the union, which other link kinds fill (all zero: no pointer set).
    _rest: [u64; 6],
}

/// What the kernel says of the link `fd`.
pub fn info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut raw = RawLinkInfo::default();
    // SAFETY: a prefix of `struct bpf_link_info`; no pointer is set.
    unsafe { obj_info(fd, &mut raw) }?;
    let attached = raw.kind == LINK_TYPE_XDP || raw.kind == LINK_TYPE_TCX;
    Ok(LinkInfo {
        kind: raw.kind,
        id: raw.id,
        prog_id: raw.prog_id,
        ifindex: if attached { raw.ifindex } else { 0 },
        attach_type: if raw.kind == LINK_TYPE_TCX {
            raw.attach_type
        } else {
            0
        },
    })
}

/// What the kernel says of the link pinned at `path`.
pub fn pinned_info(path: &Path) -> io::Result<LinkInfo> {
    let fd = obj_get(path)?;
    info(std::os::fd::AsFd::as_fd(&fd))
}

/// Every BPF link of the kernel (all namespaces) that can still be opened.
pub fn all_links() -> io::Result<Vec<LinkInfo>> {
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut links = Vec::new();
    let mut id = 0;
    loop {
        let mut next = Attr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        // SAFETY: BPF_LINK_GET_NEXT_ID reads `start_id` and writes `next_id` in `next`.
        match unsafe { sys_bpf(BPF_LINK_GET_NEXT_ID, &mut next) } {
            Ok(_) => id = next.next_id,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(links),
            Err(e) => return Err(e),
        }
        let mut by_id = Attr {
            id,
            next_id: 0,
            open_flags: 0,
        };
        // SAFETY: BPF_LINK_GET_FD_BY_ID only reads `link_id` and `open_flags`.
        let fd = match unsafe { sys_bpf(BPF_LINK_GET_FD_BY_ID, &mut by_id) } {
            Ok(fd) => owned(fd),
            // Released since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        links.push(info(std::os::fd::AsFd::as_fd(&fd))?);
    }
}

/// The ids of the maps program `prog_id` uses.
pub fn prog_map_ids(prog_id: u32) -> io::Result<Vec<u32>> {
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    /// `struct bpf_prog_info` up to `map_ids`.
    #[repr(C)]
    #[derive(Default)]
    struct ProgInfo {
        kind: u32,
        id: u32,
        tag: [u8; 8],
        jited_prog_len: u32,
        xlated_prog_len: u32,
        jited_prog_insns: u64,
        xlated_prog_insns: u64,
        load_time: u64,
        created_by_uid: u32,
        nr_map_ids: u32,
        map_ids: u64,
    }
    let mut by_id = Attr {
        id: prog_id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: BPF_PROG_GET_FD_BY_ID only reads `prog_id` and `open_flags`.
    let fd = owned(unsafe { sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id) }?);
    let mut ids = vec![0u32; 64];
    let mut prog = ProgInfo {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..ProgInfo::default()
    };
    // SAFETY: a prefix of `struct bpf_prog_info`; `map_ids` points at `ids`, writable for
    // `nr_map_ids` entries, and no other pointer is set.
    unsafe { obj_info(std::os::fd::AsFd::as_fd(&fd), &mut prog) }?;
    ids.truncate((prog.nr_map_ids as usize).min(64));
    Ok(ids)
}
