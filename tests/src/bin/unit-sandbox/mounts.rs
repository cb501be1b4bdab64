//! The mount stage: the test's network namespace, a private mount namespace with that
//! namespace's /sys, and the unit's path protections (systemd's `ProtectSystem=strict`,
//! `ReadWritePaths=`, `RuntimeDirectory=`, `ProtectKernelTunables=`,
//! `ProtectControlGroups=`, `PrivateTmp=`, `ProtectHome=`), `LimitMEMLOCK=` and `UMask=`.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// Where `ip netns add` bind-mounts the network namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";
/// The API file systems `ProtectSystem=strict` leaves writable.
const API_MOUNTS: [&str; 3] = ["/dev", "/proc", "/sys"];
/// The host mounts under /sys that stay visible under the namespace's own sysfs, as they
/// are for a service: the bpffs (pins) and the cgroup hierarchy (local clients).
const KEPT_UNDER_SYS: [&str; 2] = ["/sys/fs/bpf", "/sys/fs/cgroup"];
/// The directories `PrivateTmp=` replaces.
const TMP_DIRS: [&str; 2] = ["/tmp", "/var/tmp"];
/// `mount_setattr(2)`: change the attributes of a whole mount tree.
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// What the mount stage applies (the unit's directives, translated by the test).
#[derive(clap::Args)]
pub struct Plan {
    /// The network namespace to enter (its name under /run/netns).
    #[arg(long)]
    netns: String,
    /// Everything read-only but the API file systems (`ProtectSystem=strict`).
    #[arg(long)]
    read_only_root: bool,
    /// A path made read-only (`ProtectKernelTunables=`, `ProtectControlGroups=`); skipped
    /// if missing.
    #[arg(long = "read-only", value_name = "PATH")]
    read_only: Vec<PathBuf>,
    /// A path left writable (`ReadWritePaths=`); it must exist.
    #[arg(long = "read-write", value_name = "PATH")]
    read_write: Vec<PathBuf>,
    /// A directory created if missing and left writable (`RuntimeDirectory=`).
    #[arg(long = "runtime-dir", value_name = "PATH")]
    runtime_dirs: Vec<PathBuf>,
    /// A fresh tmpfs on /tmp and /var/tmp (`PrivateTmp=`).
    #[arg(long)]
    private_tmp: bool,
    /// A path hidden behind an empty, mode 000, read-only tmpfs (`ProtectHome=`).
    #[arg(long = "inaccessible", value_name = "PATH")]
    inaccessible: Vec<PathBuf>,
    /// `LimitMEMLOCK=infinity` (where this process may raise the hard limit).
    #[arg(long)]
    memlock_unlimited: bool,
    /// `UMask=` (octal).
    #[arg(long, value_parser = parse_octal)]
    umask: Option<u32>,
}

fn parse_octal(text: &str) -> Result<u32, std::num::ParseIntError> {
    u32::from_str_radix(text, 8)
}

/// Applies `plan` to this (single-threaded) process.
pub fn apply(plan: &Plan) -> Result<()> {
    enter_netns(&plan.netns)?;
    // SAFETY: unshare(2) with a flag constant; this process has one thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    check(rc, "unshare(CLONE_NEWNS)")?;
    // Nothing mounted from here on reaches the host (systemd uses slave propagation too).
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )?;
    sysfs_of_this_netns()?;
    for dir in &plan.runtime_dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    }
    // Each protected path becomes a mount of its own, so its attributes can differ from
    // its parent's.
    // A missing read-only path is skipped (as systemd's `-` prefix would); a missing
    // writable one is an error.
    if let Some(missing) = plan.read_write.iter().find(|p| !p.exists()) {
        bail!("{} does not exist", missing.display());
    }
    let own_mounts = plan.read_only.iter().chain(&plan.read_write);
    for path in own_mounts.chain(&plan.runtime_dirs).filter(|p| p.exists()) {
        bind_onto_itself(path)?;
    }
    if plan.private_tmp {
        for dir in TMP_DIRS.iter().map(Path::new).filter(|d| d.exists()) {
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some("mode=1777"))?;
        }
    }
    for path in plan.inaccessible.iter().filter(|p| p.exists()) {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        mount(Some("tmpfs"), path, Some("tmpfs"), flags, Some("mode=000"))?;
    }
    // Attributes from the least to the most specific path: the deeper one wins, as with
    // systemd (`ReadWritePaths=/sys/fs/bpf` under a read-only /sys).
    let mut attrs: Vec<(&Path, bool)> = Vec::new();
    if plan.read_only_root {
        attrs.push((Path::new("/"), true));
        attrs.extend(API_MOUNTS.iter().map(|p| (Path::new(*p), false)));
        if plan.private_tmp {
            attrs.extend(TMP_DIRS.iter().map(|p| (Path::new(*p), false)));
        }
    }
    attrs.extend(plan.read_only.iter().map(|p| (p.as_path(), true)));
    attrs.extend(plan.inaccessible.iter().map(|p| (p.as_path(), true)));
    attrs.extend(plan.read_write.iter().map(|p| (p.as_path(), false)));
    attrs.extend(plan.runtime_dirs.iter().map(|p| (p.as_path(), false)));
    attrs.sort_by_key(|(path, _)| path.components().count());
    for (path, read_only) in attrs.into_iter().filter(|(p, _)| p.exists()) {
        set_read_only(path, read_only)?;
    }
    if plan.memlock_unlimited {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit(2) reads the struct it is given, which lives across the call.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
        if let Err(err) = check(rc, "setrlimit(RLIMIT_MEMLOCK, infinity)") {
            // Raising the hard limit needs CAP_SYS_RESOURCE, which a container may lack;
            // kernels since 5.11 charge BPF memory to the memory cgroup instead.
            eprintln!("unit-sandbox: LimitMEMLOCK= not applied: {err:#}");
        }
    }
    if let Some(mask) = plan.umask {
        // SAFETY: umask(2) only sets this process's file mode creation mask.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    Ok(())
}

/// Joins network namespace `name` (as `ip netns exec` would, without its mount setup).
fn enter_netns(name: &str) -> Result<()> {
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let netns = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns(2) on a descriptor this function owns, alive across the call.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    check(rc, "setns(CLONE_NEWNET)")
}

/// Mounts a sysfs of this network namespace on /sys (its /sys/class/net lists this
/// namespace's interfaces), over the host's, then binds the host's bpffs and cgroup mounts
/// back in place, reached through descriptors opened before they were covered.
fn sysfs_of_this_netns() -> Result<()> {
    let kept: Vec<(&str, File)> = KEPT_UNDER_SYS
        .iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| {
            File::open(p)
                .map(|f| (*p, f))
                .with_context(|| format!("open {p}"))
        })
        .collect::<Result<_>>()?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(Some("sysfs"), Path::new("/sys"), Some("sysfs"), flags, None)?;
    for (path, dir) in &kept {
        let source = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let flags = libc::MS_BIND | libc::MS_REC;
        mount(Some(&source), Path::new(path), None, flags, None)?;
    }
    Ok(())
}

fn bind_onto_itself(path: &Path) -> Result<()> {
    let source = path.to_str().context("a path that is not UTF-8")?;
    mount(Some(source), path, None, libc::MS_BIND | libc::MS_REC, None)
}

/// Makes the mount tree at `path` read-only or writable (`mount_setattr(2)`, recursive).
fn set_read_only(path: &Path, read_only: bool) -> Result<()> {
    /// `struct mount_attr` of linux/mount.h.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let (attr_set, attr_clr) = match read_only {
        true => (MOUNT_ATTR_RDONLY, 0),
        false => (0, MOUNT_ATTR_RDONLY),
    };
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    let c_path = c_path(path)?;
    // SAFETY: mount_setattr(2) reads the path and the struct (with its size), both alive
    // across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    let what = if read_only { "read-only" } else { "writable" };
    check(
        rc as libc::c_int,
        &format!("mount_setattr {} {what}", path.display()),
    )
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let source = source.map(CString::new).transpose()?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    let c_target = c_path(target)?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: mount(2) with NUL-terminated strings (or null) that outlive the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            c_target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(rc, &format!("mount {:?} on {}", source, target.display()))
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")
}

/// `rc` of a libc call: 0 or more is success, -1 fails with errno.
fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| what.to_string());
    }
    Ok(())
}
