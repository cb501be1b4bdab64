//! The shipped unit's sandbox as one command line: `unit-sandbox mounts` (network
//! namespace, mount protections), `setpriv` (capabilities, `no_new_privs`), `unit-sandbox
//! seccomp` (the filters), then the program — each directive translated from the unit,
//! and every directive of the unit either emulated, or listed with the reason it is not.

use std::{collections::BTreeSet, path::Path, process::Command};

use crate::{bins, unit::Unit};

/// The unit's directives this emulation applies.
pub const EMULATED: &[&str] = &[
    "ProtectSystem",
    "ReadWritePaths",
    "RuntimeDirectory",
    "ProtectKernelTunables",
    "ProtectControlGroups",
    "PrivateTmp",
    "ProtectHome",
    "PrivateMounts",
    "LimitMEMLOCK",
    "UMask",
    "CapabilityBoundingSet",
    "NoNewPrivileges",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "SystemCallArchitectures",
    "RestrictAddressFamilies",
    "MemoryDenyWriteExecute",
    "RestrictNamespaces",
];

/// The unit's sandbox directives not emulated here, and why.
pub const NOT_EMULATED: &[(&str, &str)] = &[
    (
        "AmbientCapabilities",
        "the loader runs as root, whose effective set is its bounding set (checked)",
    ),
    (
        "PrivateDevices",
        "a private /dev with only the pseudo devices needs systemd's device setup",
    ),
    (
        "ProtectProc",
        "hides other processes only with a procfs of its own pid namespace",
    ),
    (
        "ProtectKernelModules",
        "its @module part is in the filter; the module directories stay visible",
    ),
    (
        "ProtectKernelLogs",
        "syslog(2) and /dev/kmsg, /proc/kmsg stay reachable",
    ),
    (
        "ProtectClock",
        "its @clock part is in the filter; the clock devices stay reachable",
    ),
    (
        "ProtectHostname",
        "no UTS namespace of its own, sethostname(2) not filtered",
    ),
    ("LockPersonality", "personality(2) not filtered"),
    ("RestrictRealtime", "real-time scheduling not filtered"),
    ("RestrictSUIDSGID", "set-user-ID file modes not filtered"),
    (
        "RemoveIPC",
        "needs a service user whose IPC objects systemd removes",
    ),
];

/// The unit's directives that are no sandboxing (how it starts, stops, reloads).
pub const NOT_SANDBOX: &[&str] = &[
    "Type",
    "ExecStart",
    "KillSignal",
    "ExecReload",
    "KillMode",
    "Restart",
    "RestartSec",
    "Environment",
    "RuntimeDirectoryPreserve",
];

/// Paths `ProtectKernelTunables=yes` makes read-only (the ones present on any host).
const KERNEL_TUNABLES: &[&str] = &[
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/sys",
];
/// Paths `ProtectHome=yes` hides.
const HOMES: &[&str] = &["/home", "/root", "/run/user"];

/// The sandbox of a unit, ready to be changed by a test before it runs a program under it.
pub struct Sandbox {
    /// The network namespace the program runs in.
    pub netns: String,
    /// `unit-sandbox mounts` options.
    pub mounts: Vec<String>,
    /// `setpriv` options.
    pub setpriv: Vec<String>,
    /// The system calls allowed.
    pub allow: BTreeSet<String>,
    /// Other `unit-sandbox seccomp` options.
    pub seccomp: Vec<String>,
}

impl Sandbox {
    /// The sandbox of `unit` in network namespace `netns`; `group` expands system-call
    /// groups ([`crate::unit::systemd_syscall_group`]).
    pub fn of_unit(unit: &Unit, netns: &str, group: impl FnMut(&str) -> Vec<String>) -> Self {
        Self {
            netns: netns.to_string(),
            mounts: mount_options(unit),
            setpriv: unit.setpriv_args(),
            allow: unit.syscall_allow_list(group),
            seccomp: seccomp_options(unit),
        }
    }

    /// Makes `path` read-only instead of writable (a negative case).
    pub fn make_read_only(&mut self, path: &str) {
        let before = self.mounts.len();
        let mut options = std::mem::take(&mut self.mounts).into_iter().peekable();
        while let Some(option) = options.next() {
            if option == "--read-write" && options.peek().map(String::as_str) == Some(path) {
                options.next();
                continue;
            }
            self.mounts.push(option);
        }
        assert_eq!(self.mounts.len() + 2, before, "{path} was not writable");
        self.mounts
            .extend(["--read-only".to_string(), path.to_string()]);
    }

    /// `program args…` under the whole sandbox.
    pub fn command(&self, program: &Path, args: &[String]) -> Command {
        let allow: Vec<&str> = self.allow.iter().map(String::as_str).collect();
        let mut cmd = Command::new(bins::unit_sandbox());
        cmd.args(["mounts", "--netns", &self.netns])
            .args(&self.mounts)
            .args(["--", "setpriv"])
            .args(&self.setpriv)
            .arg("--")
            .arg(bins::unit_sandbox())
            .args(["seccomp", "--allow", &allow.join(",")])
            .args(&self.seccomp)
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }
}

/// `unit-sandbox mounts` options of the unit's path protections.
fn mount_options(unit: &Unit) -> Vec<String> {
    let mut options = Vec::new();
    let mut add = |flag: &str, value: &str| {
        options.push(flag.to_string());
        if !value.is_empty() {
            options.push(value.to_string());
        }
    };
    match unit.value("ProtectSystem") {
        Some("strict") => add("--read-only-root", ""),
        other => panic!("ProtectSystem={other:?}: only strict is emulated"),
    }
    if unit.enabled("ProtectKernelTunables") {
        KERNEL_TUNABLES.iter().for_each(|p| add("--read-only", p));
    }
    if unit.enabled("ProtectControlGroups") {
        add("--read-only", "/sys/fs/cgroup");
    }
    for paths in unit.values("ReadWritePaths") {
        paths
            .split_whitespace()
            .for_each(|p| add("--read-write", p));
    }
    for dirs in unit.values("RuntimeDirectory") {
        for dir in dirs.split_whitespace() {
            add("--runtime-dir", &format!("/run/{dir}"));
        }
    }
    if unit.enabled("PrivateTmp") {
        add("--private-tmp", "");
    }
    if unit.enabled("ProtectHome") {
        HOMES.iter().for_each(|p| add("--inaccessible", p));
    }
    match unit.value("LimitMEMLOCK") {
        Some("infinity") => add("--memlock-unlimited", ""),
        None => {}
        Some(other) => panic!("LimitMEMLOCK={other}: only infinity is emulated"),
    }
    if let Some(mask) = unit.value("UMask") {
        add("--umask", mask);
    }
    options
}

/// `unit-sandbox seccomp` options other than the allow-list.
fn seccomp_options(unit: &Unit) -> Vec<String> {
    let errno = match unit.value("SystemCallErrorNumber") {
        Some("EPERM") => libc::EPERM,
        other => panic!("SystemCallErrorNumber={other:?}: only EPERM is emulated"),
    };
    assert_eq!(
        unit.value("SystemCallArchitectures"),
        Some("native"),
        "only SystemCallArchitectures=native is emulated"
    );
    let families: Vec<String> = unit.address_families().iter().map(u32::to_string).collect();
    let mut options = vec![
        "--errno".to_string(),
        errno.to_string(),
        "--families".to_string(),
        families.join(","),
    ];
    if unit.enabled("MemoryDenyWriteExecute") {
        options.push("--deny-write-execute".to_string());
    }
    if unit.enabled("RestrictNamespaces") {
        options.push("--restrict-namespaces".to_string());
    }
    options
}
