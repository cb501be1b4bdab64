//! `redirector doctor`: each fault is set up for real in the namespaces a test creates (no
//! listener, an nftables drop policy, open connections, a veth's offload, a missing bpffs,
//! a foreign XDP program), doctor must report it as FAIL/warn with its fix, and report ok
//! once the fault is gone.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Output,
};

use redirector_tests::{bins, fixtures::*};
use testkit::{
    cmd::must,
    netns::{Netns, Topology},
};

/// Every check doctor runs (its `--json` must hold each).
const CHECKS: [&str; 7] = [
    "listener",
    "firewall",
    "conntrack",
    "hook",
    "offload",
    "bpffs",
    "programs",
];

/// `redirector doctor --iface veth-s ARGS` in the server namespace (`ip netns exec`),
/// explaining the packet rewrite at TC unless `args` name a mode.
fn doctor(topo: &Topology, args: &[&str]) -> Output {
    topo.server
        .cmd(bins::redirector())
        .args(["doctor", "--iface", topo.server_if])
        .args(rewrite_unless_mode(args))
        .args(args)
        .output()
        .expect("spawn redirector doctor")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of check `name` with `status` (`ok  `, `warn`, `FAIL`) that contains `needle`.
fn assert_line(out: &Output, status: &str, name: &str, needle: &str) -> String {
    let text = stdout(out);
    let prefix = format!("{status:<4} {name}: ");
    text.lines()
        .find(|l| l.starts_with(&prefix) && l.contains(needle))
        .unwrap_or_else(|| {
            panic!(
                "no `{prefix}…{needle}…` line in\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

/// Asserts the exit status doctor gives for its findings: 1 if a check failed, else 0.
fn assert_exit(out: &Output, failed: bool) {
    assert_eq!(
        out.status.code(),
        Some(i32::from(failed)),
        "{}{}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_listener_fails_until_the_server_listens_and_json_has_every_check() {
    let _serial = serial();
    let topo = Topology::new("dr-lis");
    let out = doctor(&topo, &["--redirect", "80:8080"]);
    let line = assert_line(
        &out,
        "FAIL",
        "listener",
        "nothing listens on 8080 (rule 80→8080)",
    );
    assert!(
        line.contains("every redirected connection would be reset"),
        "{line}"
    );
    assert!(line.contains("— fix: start the server on 8080"), "{line}");
    assert_exit(&out, true);

    let _echo = start_echo(&topo, &[]);
    let out = doctor(&topo, &[]);
    assert_line(&out, "ok", "listener", "8080 has a listener (rule 80→8080)");
    assert_line(
        &out,
        "ok",
        "listener",
        "8443 has a listener (rule 443→8443)",
    );
    // A fresh namespace with a server has nothing else to fix.
    assert!(!stdout(&out).contains("FAIL"), "{}", stdout(&out));
    assert_exit(&out, false);

    let out = doctor(
        &topo,
        &["--json", "--redirect", "80:8080", "--redirect", "81:8081"],
    );
    assert_exit(&out, true);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    for name in CHECKS {
        assert!(
            checks.iter().any(|c| c["name"] == name),
            "{name} missing in {report:#}"
        );
    }
    for check in checks {
        let status = check["status"].as_str().unwrap();
        assert!(["ok", "skip", "warn", "fail"].contains(&status), "{check}");
        assert!(check["message"].is_string(), "{check}");
        assert_eq!(
            check["fix"].is_string(),
            status == "fail" || status == "warn",
            "{check}"
        );
    }
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["status"] == "fail").collect();
    assert_eq!(report["fail"], failed.len());
    assert_eq!(failed.len(), 1, "only 8081 has no listener: {report:#}");
    assert!(failed[0]["message"].as_str().unwrap().contains("8081"));
}

#[test]
fn a_drop_policy_fails_without_the_mark_and_passes_with_it() {
    let _serial = serial();
    let topo = Topology::new("dr-fw");
    let _echo = start_echo(&topo, &[]);
    install_input_firewall(&topo.server, "rdrtest_doctor");

    let out = doctor(&topo, &[]);
    let line = assert_line(
        &out,
        "FAIL",
        "firewall",
        "chain inet rdrtest_doctor input (policy drop) drops redirected IPv4 packets to 8080",
    );
    assert!(line.contains("--mark 0x42/0xff"), "{line}");
    assert_line(&out, "FAIL", "firewall", "to 8443 (rule 443→8443)");
    assert_exit(&out, true);

    let out = doctor(&topo, &["--mark", "0x42/0xff"]);
    assert_line(&out, "ok", "firewall", "accepts redirected packets to 8080");
    assert_line(&out, "ok", "hook", "--mark 0x42/0xff lives in the skb");
    assert_exit(&out, false);

    let out = doctor(&topo, &["--mark", "0x43/0xff"]);
    let line = assert_line(&out, "FAIL", "firewall", "to 8080");
    assert!(line.contains("meta mark & 0xff == 0x43 accept"), "{line}");

    // A running instance's mark is the default, and so is the rest of its settings.
    let loader = start_loader(&topo, &["--mark", "0x42/0xff", "--redirect", "80:8080"]);
    let out = doctor(&topo, &[]);
    assert_line(
        &out,
        "ok",
        "firewall",
        "accepts redirected packets to 8080 (rule 80→8080)",
    );
    assert!(
        !stdout(&out).contains("8443"),
        "only the instance's rule: {}",
        stdout(&out)
    );
    assert_exit(&out, false);
    stop_loader(loader);
}

#[test]
fn a_conntrack_size_below_the_open_connections_fails_and_near_it_warns() {
    let _serial = serial();
    let topo = Topology::new("dr-ct");
    let _echo = start_echo(&topo, &[]);
    let url = topo.url("ws", false, 8080);
    let sessions: Vec<_> = (0..3).map(|_| open_session(&topo, &url)).collect();

    let out = doctor(&topo, &["--conntrack-size", "2"]);
    let line = assert_line(&out, "FAIL", "conntrack", "TCP connections open");
    assert!(line.contains("--conntrack-size is 2"), "{line}");
    assert!(line.contains("fix: raise --conntrack-size"), "{line}");
    assert_exit(&out, true);
    let out = doctor(&topo, &["--conntrack-size", "3"]);
    assert_line(&out, "warn", "conntrack", "3 TCP connections open");
    assert_exit(&out, false);
    let out = doctor(&topo, &[]);
    assert_line(
        &out,
        "ok",
        "conntrack",
        "the default --conntrack-size is 1048576",
    );

    sessions.into_iter().for_each(close_session);
}

#[test]
fn the_hook_of_a_veth_is_explained() {
    let _serial = serial();
    let topo = Topology::new("dr-hook");
    let _echo = start_echo(&topo, &[]);
    // With listeners on every TO port here, auto takes socket steering …
    let out = doctor(&topo, &["--mode", "auto"]);
    assert_line(
        &out,
        "ok",
        "hook",
        "veth-s (driver veth), --mode auto: socket steering (8080, 8443 listen in this namespace and no NAT rule applies to them)",
    );
    // … and with a TO port nothing listens on, the rewrite, saying why.
    let unheard = ["--mode", "auto", "--redirect", "80:9999"];
    let line = assert_line(
        &doctor(&topo, &unheard),
        "ok",
        "hook",
        "veth-s (driver veth), --mode auto: TC ingress (on a veth",
    );
    assert!(
        line.contains("not socket steering: nothing listens on 9999"),
        "{line}"
    );
    let out = doctor(&topo, &["--mode", "xdp"]);
    let line = assert_line(&out, "warn", "hook", "native XDP on a veth");
    assert!(line.contains("fix: --mode auto"), "{line}");
    assert_exit(&out, false);

    let loader = start_loader(&topo, &unheard);
    let out = doctor(&topo, &["--mode", "auto"]);
    assert_line(
        &out,
        "ok",
        "hook",
        "ingress at tc with --mode auto: auto takes TC on a veth",
    );
    stop_loader(loader);

    // `lo` has no native XDP (the netdev family's xdp-features): auto would take generic
    // XDP (the rewrite: nothing listens on 9999), and --mode xdp would fail.
    let on_lo = |mode: &str| {
        topo.server
            .cmd(bins::redirector())
            .args([
                "doctor",
                "--iface",
                "lo",
                "--redirect",
                "80:9999",
                "--mode",
                mode,
            ])
            .output()
            .unwrap()
    };
    assert_line(
        &on_lo("auto"),
        "ok",
        "hook",
        "generic XDP: the driver has no native XDP",
    );
    let out = on_lo("xdp");
    let line = assert_line(&out, "FAIL", "hook", "the driver has no native XDP");
    assert!(line.contains("run would fail to attach"), "{line}");
    assert_exit(&out, true);
}

#[test]
fn tx_checksum_offload_on_a_veth_warns() {
    let _serial = serial();
    let topo = Topology::new("dr-off");
    let _echo = start_echo(&topo, &[]);
    let ethtool = |state: &str| {
        must(
            topo.server
                .cmd("ethtool")
                .args(["-K", topo.server_if, "tx", state]),
        )
    };
    ethtool("on");
    let out = doctor(&topo, &[]);
    let line = assert_line(
        &out,
        "warn",
        "offload",
        "tx checksum offload is on on veth veth-s",
    );
    assert!(line.contains("fix: ethtool -K veth-s tx off"), "{line}");
    assert_exit(&out, false);
    ethtool("off");
    let out = doctor(&topo, &[]);
    assert_line(
        &out,
        "ok",
        "offload",
        "tx checksum offload is off on veth veth-s",
    );
}

#[test]
fn persist_without_bpffs_fails() {
    let _serial = serial();
    let topo = Topology::new("dr-bpffs");
    let _echo = start_echo(&topo, &[]);
    let redirector = bins::redirector();
    // A private mount namespace (unshare's default propagation is private) with a tmpfs
    // over /sys/fs/bpf: the host's mount is never touched.
    let script = format!(
        "mount -t tmpfs rdrt-doctor /sys/fs/bpf && exec {} doctor --iface {} --persist",
        redirector.display(),
        topo.server_if
    );
    let out = topo
        .server
        .nsenter_cmd("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    let line = assert_line(
        &out,
        "FAIL",
        "bpffs",
        "--persist needs a bpffs at /sys/fs/bpf",
    );
    assert!(line.contains("nsenter --net=/run/netns/NS"), "{line}");
    assert_exit(&out, true);

    // `ip netns exec` has a fresh /sys, without bpffs, too.
    assert_line(
        &doctor(&topo, &["--persist"]),
        "FAIL",
        "bpffs",
        "none is mounted",
    );
    // The host's bpffs, through nsenter.
    let out = topo
        .server
        .nsenter_cmd(&redirector)
        .args(["doctor", "--iface", topo.server_if, "--persist"])
        .output()
        .unwrap();
    assert_line(&out, "ok", "bpffs", "--persist can pin there");
    assert_exit(&out, false);
}

#[test]
fn a_foreign_xdp_program_fails_and_redirectors_own_pass() {
    let _serial = serial();
    let topo = Topology::new("dr-prog");
    let _echo = start_echo(&topo, &[]);
    let out = doctor(&topo, &[]);
    assert_line(
        &out,
        "ok",
        "programs",
        "no foreign XDP, tcx or tc program on veth-s",
    );

    let foreign = ForeignXdp::attach(topo.server.name(), topo.server_if);
    let out = doctor(&topo, &[]);
    let line = assert_line(&out, "FAIL", "programs", "carries XDP program");
    assert!(
        line.contains("`rdrt_foreign`") && line.contains("not redirector's"),
        "{line}"
    );
    assert!(line.contains("fix: find its owner"), "{line}");
    assert_exit(&out, true);

    // With redirector running (TC ingress and egress), its programs are its own; the
    // foreign one is still reported.
    let loader = start_loader(&topo, &[]);
    let out = doctor(&topo, &[]);
    assert_line(&out, "FAIL", "programs", "`rdrt_foreign`");
    assert!(
        !stdout(&out).contains("tcx ingress program"),
        "{}",
        stdout(&out)
    );
    drop(foreign);
    let out = doctor(&topo, &[]);
    assert_line(&out, "ok", "programs", "(2 of redirector's attached)");
    assert_exit(&out, false);
    stop_loader(loader);

    // A classic tc filter's program shares the hook: a warning.
    add_foreign_tc_filter(&topo.server, topo.server_if);
    let out = doctor(&topo, &[]);
    let line = assert_line(&out, "warn", "programs", "carries tc ingress program");
    assert!(line.contains("`rdrt_foreign_tc`"), "{line}");
    assert_exit(&out, false);
    must(
        topo.server
            .cmd("tc")
            .args(["filter", "del", "dev", topo.server_if, "ingress"]),
    );
    assert_line(
        &doctor(&topo, &[]),
        "ok",
        "programs",
        "no foreign XDP, tcx or tc program",
    );
}

#[test]
fn bad_flags_and_unknown_interfaces_are_explained() {
    let _serial = serial();
    let topo = Topology::new("dr-bad");
    for (args, needle) in [
        (
            &["--iface", "nope0"][..],
            "unknown interface `nope0` (interfaces here: ",
        ),
        (&["--mode", "fast"][..], "invalid mode `fast`"),
        (
            &["--redirect", "80:80"][..],
            "FROM and TO are the same port",
        ),
        (&["--mark", "0"][..], "must not be 0"),
        (&["--conntrack-size", "lots"][..], "invalid value 'lots'"),
    ] {
        let out = topo
            .server
            .cmd(bins::redirector())
            .arg("doctor")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: no findings printed");
    }
}

/// A trivial XDP program (`return XDP_PASS`) named `rdrt_foreign`, attached in generic
/// mode through a BPF link from this process, in another namespace: not redirector's.
/// Dropping it closes the link, which detaches the program.
struct ForeignXdp {
    _link: OwnedFd,
    _program: OwnedFd,
}

impl ForeignXdp {
    fn attach(netns: &str, iface: &str) -> Self {
        let (netns, iface) = (netns.to_string(), iface.to_string());
        // Only this short-lived thread enters the namespace (interface indexes are per
        // namespace); the descriptors it returns stay valid in the whole process.
        std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let name = std::ffi::CString::new(iface).unwrap();
            // SAFETY: `name` is NUL-terminated and outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert_ne!(ifindex, 0, "no interface in {netns}");
            let program = load_xdp_pass();
            let link = link_xdp(&program, ifindex);
            ForeignXdp {
                _link: link,
                _program: program,
            }
        })
        .join()
        .unwrap()
    }
}

/// `union bpf_attr`, large enough for the commands used here (the kernel requires the
/// bytes it does not know to be zero).
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn put(&mut self, offset: usize, bytes: &[u8]) {
        self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
}

/// `bpf(cmd, attr)`, which must succeed; its return value.
fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> i64 {
    // SAFETY: `attr` is a valid, zero-padded `bpf_attr` of the size passed; the pointers it
    // holds name live buffers of the caller.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>(),
        )
    };
    assert!(ret >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
    ret
}

/// `bpf(cmd, attr)` for a command that returns a new descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut BpfAttr) -> OwnedFd {
    let fd = bpf(cmd, attr);
    // SAFETY: a fresh descriptor the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// BPF_PROG_LOAD of a program of `prog_type` named `name` that returns `verdict`.
fn load_trivial(prog_type: u32, name: &str, verdict: i32) -> OwnedFd {
    const BPF_PROG_LOAD: libc::c_long = 5;
    // struct bpf_insn: code, dst/src registers, offset, immediate.
    let insn = |code: u8, imm: i32| -> u64 {
        let mut bytes = [0u8; 8];
        bytes[0] = code;
        bytes[4..].copy_from_slice(&imm.to_ne_bytes());
        u64::from_ne_bytes(bytes)
    };
    let insns = [
        insn(0xb7, verdict), /* mov64 r0, imm */
        insn(0x95, 0),       /* exit */
    ];
    let license = c"GPL";
    let mut attr = BpfAttr([0; 128]);
    attr.put(0, &prog_type.to_ne_bytes());
    attr.put(4, &(insns.len() as u32).to_ne_bytes());
    attr.put(8, &(insns.as_ptr() as u64).to_ne_bytes());
    attr.put(16, &(license.as_ptr() as u64).to_ne_bytes());
    attr.put(48, name.as_bytes());
    bpf_fd(BPF_PROG_LOAD, &mut attr)
}

/// `r0 = XDP_PASS; exit`.
fn load_xdp_pass() -> OwnedFd {
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const XDP_PASS: i32 = 2;
    load_trivial(BPF_PROG_TYPE_XDP, "rdrt_foreign", XDP_PASS)
}

/// BPF_LINK_CREATE of `program` on XDP (generic mode) of `ifindex`.
fn link_xdp(program: &OwnedFd, ifindex: u32) -> OwnedFd {
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
    let mut attr = BpfAttr([0; 128]);
    attr.put(0, &(program.as_raw_fd() as u32).to_ne_bytes());
    attr.put(4, &ifindex.to_ne_bytes());
    attr.put(8, &BPF_XDP.to_ne_bytes());
    attr.put(12, &XDP_FLAGS_SKB_MODE.to_ne_bytes());
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// A classic tc BPF filter (cls_bpf, direct action, `return TC_ACT_UNSPEC`) named
/// `rdrt_foreign_tc` on the ingress of `iface` in `ns`: loaded here, pinned for `tc` under
/// a name unique to this process and unpinned once the filter holds it. The filter and its
/// clsact qdisc go with the namespace.
fn add_foreign_tc_filter(ns: &Netns, iface: &str) {
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const TC_ACT_UNSPEC: i32 = -1;
    /// Removes the pin on drop, also when `tc` fails.
    struct Pin(std::path::PathBuf);
    impl Drop for Pin {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let program = load_trivial(BPF_PROG_TYPE_SCHED_CLS, "rdrt_foreign_tc", TC_ACT_UNSPEC);
    let pin = Pin(format!("/sys/fs/bpf/rdrt-doctor-tc-{}", std::process::id()).into());
    let path = std::ffi::CString::new(pin.0.to_str().unwrap()).unwrap();
    let mut attr = BpfAttr([0; 128]);
    attr.put(0, &(path.as_ptr() as u64).to_ne_bytes());
    attr.put(8, &(program.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr);
    // nsenter keeps this process's mounts, where the pin is (`ip netns exec` would not).
    must(
        ns.nsenter_cmd("tc")
            .args(["qdisc", "add", "dev", iface, "clsact"]),
    );
    must(
        ns.nsenter_cmd("tc")
            .args([
                "filter", "add", "dev", iface, "ingress", "bpf", "da", "pinned",
            ])
            .arg(&pin.0),
    );
}
