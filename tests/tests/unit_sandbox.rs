//! dist/redirector.service as shipped: its own ExecStart (`run --persist --config FILE`,
//! local clients on, on a cgroup the test creates) under its own sandbox, applied without
//! systemd as PID 1 by `unit-sandbox` (tests/src/sandbox.rs translates each directive):
//! the effective `SystemCallFilter=` computed with `systemd-analyze syscall-filter` and
//! installed with libseccomp (`SystemCallErrorNumber=EPERM`, native architecture only),
//! `RestrictAddressFamilies=`, `MemoryDenyWriteExecute=` and `RestrictNamespaces=` as
//! seccomp argument rules; `ProtectSystem=strict` with `ReadWritePaths=/sys/fs/bpf` and
//! `RuntimeDirectory=` in a private mount namespace with read-only /sys, /proc/sys and
//! /sys/fs/cgroup, a private /tmp and hidden homes; the capability bounding set and
//! `NoNewPrivileges=` (setpriv). Under it the loader redirects WebSocket sessions,
//! `status` reports it, SIGTERM leaves them attached, a second sandboxed start adopts them
//! and every held session still echoes. Without `bpf` in the filter, or with /sys/fs/bpf
//! read-only, the loader fails with a clear error, and probes run under the same sandbox
//! see socket(AF_PACKET) fail with EAFNOSUPPORT, a writable executable mapping and
//! ptrace(2) with EPERM, clone3(2) with ENOSYS, writes to the root and /proc/sys with EROFS and
//! /root unreadable: the emulation bites.
//!
//! Not emulated here: `PrivateDevices=`, `ProtectProc=`, `ProtectHostname=`,
//! `LockPersonality=`, `RestrictRealtime=`, `RestrictSUIDSGID=`, `RemoveIPC=`,
//! `AmbientCapabilities=` (as root the bounding set is the effective set, checked), and the
//! parts of `ProtectKernelModules=`, `ProtectKernelLogs=` and `ProtectClock=` outside the
//! system-call filter (tests/src/sandbox.rs says why for each); `LimitMEMLOCK=` only where
//! the test may raise the hard limit (not in a container without CAP_SYS_RESOURCE; kernels
//! since 5.11 do not charge BPF memory to it).

use std::{path::PathBuf, time::Duration};

use redirector_tests::{
    bins,
    fixtures::*,
    sandbox::{Sandbox, EMULATED, NOT_EMULATED, NOT_SANDBOX},
    unit::{systemd_syscall_group, Unit},
};
use testkit::{cgroup::Cgroup, netns::Topology, process::Proc};

/// The shipped example configuration the test's config is made from.
fn shipped_config() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/redirector.toml");
    std::fs::read_to_string(path).unwrap()
}

/// A directory of the test outside /tmp (which the sandbox replaces), so on the read-only
/// root under the sandbox; removed on drop.
struct ConfigDir(PathBuf);

impl ConfigDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("usbx-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the shipped config with the test's interface and cgroup into `dir`; returns the
/// unit's ExecStart (program and arguments) with that file as `--config`.
fn exec_start(unit: &Unit, dir: &ConfigDir, iface: &str, cgroup: &Cgroup) -> Vec<String> {
    let mut config = String::new();
    for line in shipped_config().lines() {
        if line.starts_with("ifaces =") {
            config.push_str(&format!("ifaces = [\"{iface}\"]\n"));
            config.push_str(&format!("local_cgroup = {:?}\n", cgroup.path()));
        } else {
            config.push_str(line);
            config.push('\n');
        }
    }
    assert!(
        config.contains("local_cgroup ="),
        "no ifaces line in dist/redirector.toml"
    );
    let path = dir.0.join("redirector.toml");
    std::fs::write(&path, config).unwrap();
    let mut words = unit.exec_start();
    assert!(words[0].ends_with("/redirector"), "ExecStart: {words:?}");
    for flag in ["run", "--persist", "--config"] {
        assert!(words.contains(&flag.to_string()), "ExecStart: {words:?}");
    }
    let at = words.iter().position(|w| w == "--config").unwrap() + 1;
    words[at] = path.to_str().unwrap().to_string();
    words
}

/// Starts the loader under `sandbox` with `exec_start`'s arguments.
fn spawn_sandboxed(sandbox: &Sandbox, exec_start: &[String]) -> Proc {
    let cmd = sandbox.command(&bins::redirector(), &exec_start[1..]);
    Proc::spawn("redirector (unit sandbox)", cmd, false)
}

/// A `/proc/PID/status` field, e.g. `Seccomp`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

/// The file system type and mount options of the topmost mount on `target` in the mount
/// namespace of `pid`.
fn mount_of(pid: u32, target: &str) -> (String, String) {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    info.lines()
        .rev()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields[4] == target).then(|| (fields[sep + 1].to_string(), fields[5].to_string()))
        })
        .unwrap_or_else(|| panic!("no mount on {target}:\n{info}"))
}

/// Asserts that the sandbox is in force on the loader `pid`.
fn assert_sandboxed(pid: u32, unit: &Unit) {
    // Mode 2: a filter; one each for the families, W^X, namespaces and system calls.
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "Seccomp_filters"), "4");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let caps = unit.bounding_mask();
    for field in ["CapEff", "CapBnd"] {
        assert_eq!(status_field(pid, field), format!("{caps:016x}"), "{field}");
    }
    let writable = |opts: &str| opts.split(',').any(|o| o == "rw");
    for (target, rw) in [
        ("/", false),
        ("/sys", false),
        ("/proc/sys", false),
        ("/sys/fs/cgroup", false),
        ("/sys/fs/bpf", true),
        ("/run/redirector", true),
        ("/tmp", true),
    ] {
        let (fstype, opts) = mount_of(pid, target);
        assert_eq!(writable(&opts), rw, "{target}: {fstype} {opts}");
    }
    assert_eq!(mount_of(pid, "/tmp").0, "tmpfs", "private /tmp");
    assert_eq!(mount_of(pid, "/sys/fs/bpf").0, "bpf");
}

/// An interactive WebSocket session from the server namespace itself (a local client,
/// in this process's cgroup) to `url`, after one exchanged message.
fn local_session(topo: &Topology, url: &str) -> Proc {
    let mut cmd = topo.server.cmd(bins::ws_client());
    cmd.args(["--url", url, "--interactive", "--timeout", "120"]);
    let mut session = Proc::spawn("ws-client (local session)", cmd, true);
    session.wait_line("connected", Duration::from_secs(10));
    exchange(&mut session, "first");
    session
}

#[test]
fn every_directive_of_the_unit_is_emulated_or_said_not_to_be() {
    let unit = Unit::shipped();
    for key in unit.keys() {
        let known = EMULATED.contains(&key)
            || NOT_SANDBOX.contains(&key)
            || NOT_EMULATED.iter().any(|(k, _)| *k == key);
        assert!(
            known,
            "{key}= is new: emulate it in tests/src/sandbox.rs or say why not"
        );
    }
}

#[test]
fn the_units_filter_allows_bpf_and_denies_what_it_lists() {
    let allow = Unit::shipped().syscall_allow_list(systemd_syscall_group);
    for call in [
        "bpf",
        "mmap",
        "epoll_wait",
        "socket",
        "setsockopt",
        "execve",
    ] {
        assert!(allow.contains(call), "{call} is not allowed");
    }
    // Denied by the `~` line whatever the first line lists (perf_event_open is in @debug).
    for call in [
        "perf_event_open",
        "ptrace",
        "mount",
        "init_module",
        "clock_settime",
    ] {
        assert!(!allow.contains(call), "{call} is allowed");
    }
}

#[test]
fn the_units_execstart_redirects_persists_and_adopts_under_its_sandbox() {
    let _serial = serial();
    let unit = Unit::shipped();
    let topo = Topology::new("usbx");
    let cgroup = Cgroup::new(&format!("redirector-test-usbx-{}", std::process::id()));
    let _inside = cgroup.enter().unwrap();
    let _cleanup = DetachOnDrop(&topo.server);
    let _echo = start_echo(&topo, &[]);
    let dir = ConfigDir::new("run");
    let exec_start = exec_start(&unit, &dir, topo.server_if, &cgroup);
    let sandbox = Sandbox::of_unit(&unit, topo.server.name(), systemd_syscall_group);

    let mut first = spawn_sandboxed(&sandbox, &exec_start);
    first.wait_line("redirector ready", Duration::from_secs(30));
    let pid = first.pid();
    assert_sandboxed(pid, &unit);
    let mut sessions = vec![
        open_session(&topo, &topo.url("ws", false, 80)),
        open_session(&topo, &topo.url("wss", true, 443)),
        local_session(&topo, "ws://127.0.0.1:80/"),
        local_session(&topo, "ws://[::1]:80/"),
    ];
    let status = ctl_json_via(Via::Nsenter, &topo.server, &["status"]);
    assert_eq!(status["loader_running"], true, "{status}");
    assert_eq!(status["pid"], pid, "{status}");
    assert_eq!(
        status["local_cgroup"].as_str(),
        cgroup.path().to_str(),
        "{status}"
    );

    let lines = stop_loader(first);
    assert!(
        lines.iter().any(|l| l.contains("programs left attached")),
        "{lines:?}"
    );
    for session in &mut sessions {
        exchange(session, "without a loader");
    }

    let mut second = spawn_sandboxed(&sandbox, &exec_start);
    let ready = second.wait_line("redirector ready", Duration::from_secs(30));
    assert!(ready.contains(&format!("from pid {pid}")), "{ready}");
    assert_sandboxed(second.pid(), &unit);
    for session in &mut sessions {
        exchange(session, "after the adoption");
    }
    assert_echo(&topo, &topo.url("wss", false, 443));
    let stats = ctl_json_via(Via::Nsenter, &topo.server, &["stats"]);
    assert!(
        stats["counters"]["local_redirected"].as_u64() >= Some(2),
        "{stats}"
    );
    stop_loader(second);
    for session in sessions {
        close_session(session);
    }
    let detached = ctl_ok_via(Via::Nsenter, &topo.server, &["detach"]);
    assert!(detached.contains("detached"), "{detached}");
    assert_no_program_loaded();
}

/// The loader under `sandbox` exits with an error; returns its stderr.
fn sandboxed_start_fails(sandbox: &Sandbox, exec_start: &[String]) -> String {
    let mut loader = spawn_sandboxed(sandbox, exec_start);
    let (status, lines) = loader.wait_exit(Duration::from_secs(30));
    let stderr = loader.stderr_text();
    assert!(!status.success(), "the loader started: {lines:?}\n{stderr}");
    assert!(
        !lines.iter().any(|l| l.starts_with("redirector ready")),
        "{lines:?}"
    );
    eprintln!("as expected, the sandboxed loader failed ({status}):\n{stderr}");
    stderr
}

#[test]
fn the_loader_fails_without_bpf_in_the_filter_or_with_a_read_only_bpffs() {
    let _serial = serial();
    let unit = Unit::shipped();
    let topo = Topology::new("usbx-neg");
    let cgroup = Cgroup::new(&format!("redirector-test-usbx-neg-{}", std::process::id()));
    let _cleanup = DetachOnDrop(&topo.server);
    let dir = ConfigDir::new("neg");
    let exec_start = exec_start(&unit, &dir, topo.server_if, &cgroup);

    let mut no_bpf = Sandbox::of_unit(&unit, topo.server.name(), systemd_syscall_group);
    assert!(no_bpf.allow.remove("bpf"));
    let stderr = sandboxed_start_fails(&no_bpf, &exec_start);
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert_no_program_loaded();

    let mut read_only = Sandbox::of_unit(&unit, topo.server.name(), systemd_syscall_group);
    read_only.make_read_only("/sys/fs/bpf");
    let stderr = sandboxed_start_fails(&read_only, &exec_start);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_no_program_loaded();
}

/// The probes of the sandbox: a name, what it does (Python), and the errno it must end
/// with under the sandbox (0: it succeeds). `DIR` is a directory of the test on the
/// read-only root (where a write would land if the emulation failed).
const PROBES: &[(&str, &str, i32)] = &[
    ("socket AF_INET", "socket.socket(socket.AF_INET).close()", 0),
    // Without the family rule: EPERM (no CAP_NET_RAW), never EAFNOSUPPORT.
    (
        "socket AF_PACKET",
        "socket.socket(socket.AF_PACKET, socket.SOCK_RAW)",
        libc::EAFNOSUPPORT,
    ),
    (
        "mmap W+X",
        "mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)",
        libc::EPERM,
    ),
    // Allowed to anyone without the filter (@debug).
    (
        "ptrace TRACEME",
        "check(libc.ptrace(0, 0, None, None))",
        libc::EPERM,
    ),
    // ENOSYS only from the RestrictNamespaces= rule (else EFAULT: no argument struct).
    (
        "clone3",
        "check(libc.syscall(435, None, ctypes.c_size_t(88)))",
        libc::ENOSYS,
    ),
    (
        "write the root",
        "os.close(os.open('DIR/probe', os.O_WRONLY | os.O_CREAT))",
        libc::EROFS,
    ),
    (
        "write /tmp",
        "os.close(os.open('/tmp/usbx-probe', os.O_WRONLY | os.O_CREAT))",
        0,
    ),
    (
        "write /proc/sys",
        "os.close(os.open('/proc/sys/net/ipv4/ip_forward', os.O_WRONLY))",
        libc::EROFS,
    ),
    ("list /root", "os.listdir('/root')", libc::EACCES),
];

/// The Python program that runs every probe and prints `NAME: ERRNO` for each.
fn probe_program(dir: &std::path::Path) -> String {
    let mut program = String::from(
        "import ctypes, mmap, os, socket\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def check(rc):\n\
         \x20   if rc == -1:\n\
         \x20       e = ctypes.get_errno()\n\
         \x20       raise OSError(e, os.strerror(e))\n",
    );
    for (name, code, _) in PROBES {
        let code = code.replace("DIR", dir.to_str().unwrap());
        program.push_str(&format!(
            "try:\n    {code}\n    print('{name}: 0')\nexcept OSError as e:\n    print('{name}: %d' % e.errno)\n"
        ));
    }
    program
}

#[test]
fn the_sandbox_denies_other_families_wx_mappings_namespaces_and_writes() {
    let _serial = serial();
    let unit = Unit::shipped();
    let topo = Topology::new("usbx-probe");
    let dir = ConfigDir::new("probe");
    let sandbox = Sandbox::of_unit(&unit, topo.server.name(), systemd_syscall_group);
    let cmd = sandbox.command(
        std::path::Path::new("/usr/bin/python3"),
        &["-c".to_string(), probe_program(&dir.0)],
    );
    let mut probe = Proc::spawn("python3 (unit sandbox probes)", cmd, false);
    let (status, lines) = probe.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{lines:?}\n{}", probe.stderr_text());
    for (name, _, errno) in PROBES {
        let line = format!("{name}: {errno}");
        assert!(lines.contains(&line), "want {line:?} in {lines:?}");
    }
}
