//! The loader's refusals: bad flags, missing privileges, unknown interfaces, an XDP
//! program that is not ours, a second instance. Each must fail clearly and attach nothing.

use std::{process::Output, time::Duration};

use aya::programs::XdpMode;
use redirector::dataplane::Dataplane;
use redirector_tests::bins;
use testkit::{cmd::must, netns::Netns, process::Proc};

fn run_in(ns: &Netns, args: &[&str]) -> Output {
    ns.cmd(bins::redirector())
        .args(["run", "--no-local"])
        .args(args)
        .output()
        .unwrap()
}

fn assert_fails(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr lacks `{needle}`:\n{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
}

/// A namespace with one veth pair (`v0` ↔ `v1`), both up.
fn veth_ns(tag: &str) -> Netns {
    let ns = Netns::new(&format!("rdrt-cli-{tag}-{}", std::process::id()));
    must(
        ns.cmd("ip")
            .args(["link", "add", "v0", "type", "veth", "peer", "name", "v1"]),
    );
    must(ns.cmd("ip").args(["link", "set", "v0", "up"]));
    must(ns.cmd("ip").args(["link", "set", "v1", "up"]));
    ns
}

fn xdp_attached(ns: &Netns) -> bool {
    let out = must(ns.cmd("ip").args(["-d", "link", "show", "dev", "v0"]));
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// Every BPF program on `v0`, by hook: XDP, tcx ingress and egress (asked of the kernel
/// from a thread in the namespace), classic tc filters. What `run` may attach (`auto` on a
/// veth takes tcx), so a refused run must leave this empty.
fn attached(ns: &Netns) -> Vec<String> {
    use aya::programs::tc::{SchedClassifier, TcAttachType};
    let mut found = Vec::new();
    if xdp_attached(ns) {
        found.push("xdp".to_string());
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(ns.name());
                for (hook, kind) in [
                    ("tcx ingress", TcAttachType::Ingress),
                    ("tcx egress", TcAttachType::Egress),
                ] {
                    let (_, programs) = SchedClassifier::query_tcx("v0", kind).unwrap();
                    found.extend(programs.iter().map(|p| format!("{hook} {}", p.id())));
                }
            })
            .join()
            .unwrap()
    });
    for direction in ["ingress", "egress"] {
        let out = must(
            ns.cmd("tc")
                .args(["filter", "show", "dev", "v0", direction]),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.trim().is_empty() {
            found.push(format!("tc {direction}: {text}"));
        }
    }
    found
}

#[test]
fn invalid_flags_are_rejected_with_a_reason() {
    let ns = veth_ns("flags");
    for (args, needle) in [
        (vec!["--redirect", "80:80"], "same port"),
        (vec!["--redirect", "0:8080"], "ports are 1-65535"),
        (vec!["--redirect", "80:70000"], "ports are 1-65535"),
        (vec!["--redirect", "80"], "expected FROM:TO"),
        (
            vec!["--redirect", "80:8080", "--redirect", "80:9090"],
            "duplicate rule for port 80",
        ),
        (vec!["--mode", "fast"], "invalid mode"),
        (vec!["--allow", "10.0.0.0/33"], "invalid --allow prefix"),
        (vec!["--conntrack-size", "0"], "at least 1"),
        (
            vec!["--timeout-closing", "0"],
            "invalid value '0' for '--timeout-closing",
        ),
        (vec!["--timeout-established", "x"], "--timeout-established"),
        (
            vec!["--sniff-listen", "0.0.0.0:80"],
            "--sniff-websocket <ADDR:PORT>",
        ),
        (
            // The default rules redirect 80 in the kernel.
            vec![
                "--sniff-listen",
                "0.0.0.0:80",
                "--sniff-websocket",
                "127.0.0.1:8080",
                "--sniff-http",
                "127.0.0.1:8000",
            ],
            "port 80 is also redirected in the kernel by rule 80->8080",
        ),
        (vec!["--ws-path", "/ws"], "--sniff-listen <ADDR:PORT>"),
    ] {
        let mut all = vec!["--iface", "v0"];
        all.extend(args);
        assert_fails(&run_in(&ns, &all), needle);
        assert_eq!(attached(&ns), Vec::<String>::new(), "{all:?}");
    }
}

#[test]
fn unknown_interface_is_named() {
    let ns = veth_ns("iface");
    let out = run_in(&ns, &["--iface", "nosuch0"]);
    assert_fails(&out, "unknown interface `nosuch0`");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("v0"),
        "lists what exists"
    );
}

#[test]
fn missing_privileges_are_explained() {
    let ns = veth_ns("priv");
    // Drop to nobody with no capabilities at all.
    let out = ns
        .cmd_unprivileged(bins::redirector())
        .args(["run", "--no-local", "--iface", "v0"])
        .output()
        .unwrap();
    assert_fails(&out, "insufficient privileges");
    assert_eq!(attached(&ns), Vec::<String>::new());
}

#[test]
fn foreign_xdp_program_is_not_replaced() {
    let ns = veth_ns("foreign");
    // Attach an XDP program from this process (not through the loader) inside the namespace.
    let mut dp = Dataplane::load(16).unwrap();
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns.name());
            dp.xdp_ingress()
                .unwrap()
                .attach("v0", XdpMode::Skb)
                .map(|_| ())
        })
        .join()
        .unwrap()
    });
    status.expect("attach foreign program");
    for mode in ["xdp", "xdp-generic"] {
        assert_fails(
            &run_in(&ns, &["--iface", "v0", "--mode", mode]),
            "already has an XDP program",
        );
    }
    // `auto` takes TC ingress on a veth, which leaves the foreign XDP program alone.
    let mut cmd = ns.cmd(bins::redirector());
    cmd.args(["run", "--no-local", "--iface", "v0", "--mode", "auto"]);
    let mut auto = Proc::spawn("auto", cmd, false);
    let ready = auto.wait_line("redirector ready", Duration::from_secs(30));
    assert!(ready.contains("v0 (tc)"), "{ready}");
    auto.signal(libc::SIGTERM);
    let (status, _) = auto.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    assert!(xdp_attached(&ns), "the foreign program stays");
    drop(dp);
    assert!(!xdp_attached(&ns), "our stand-in program detaches on drop");
}

#[test]
fn second_instance_on_the_same_interface_is_refused() {
    let ns = veth_ns("twice");
    let mut cmd = ns.cmd(bins::redirector());
    cmd.args(["run", "--no-local", "--iface", "v0", "--mode", "tc"]);
    let mut first = Proc::spawn("first", cmd, false);
    first.wait_line("redirector ready", Duration::from_secs(30));
    // What the refusals below must not leave behind is seen while it is there.
    let before = attached(&ns);
    assert_eq!(before.len(), 2, "tcx ingress and egress: {before:?}");
    assert_fails(
        &run_in(&ns, &["--iface", "v0", "--mode", "tc"]),
        "already handled by a running redirector",
    );
    assert_eq!(
        attached(&ns),
        before,
        "the refused run attached nothing more"
    );
    first.signal(libc::SIGTERM);
    let (status, _) = first.wait_exit(Duration::from_secs(10));
    assert!(status.success());
    assert_eq!(attached(&ns), Vec::<String>::new(), "SIGTERM detaches both");
}

/// Moves the calling thread into network namespace `name` (for in-process attaches).
fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    // SAFETY: setns on a valid namespace fd; affects only this (scoped) thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Writes `text` to a fresh file named after `tag` and this process; removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rdrt-{tag}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn bad_config_files_are_rejected_with_the_key() {
    let ns = veth_ns("badcfg");
    for (tag, text, needles) in [
        (
            "unknown",
            "ifaces = [\"v0\"]\nredirect = [\"80:8080\"]\n",
            &["unknown field `redirect`", "line 2"][..],
        ),
        (
            "value",
            "ifaces = [\"v0\"]\nredirects = [\"80:80\"]\n",
            &["`redirects`: invalid rule `80:80`"][..],
        ),
        ("syntax", "mode = tc\n", &["config file"][..]),
        (
            "sniff",
            "ifaces = [\"v0\"]\n[sniff]\nlisten = \"0.0.0.0:81\"\nmax_conns = 0\n",
            &["`sniff.max_conns`: 0 is not in 1..=1000000"][..],
        ),
        ("persist", "persist = 1\n", &["persist"][..]),
    ] {
        let file = TempFile::new(&format!("cfg-{tag}"), text);
        let out = run_in(&ns, &["--config", file.path()]);
        for needle in needles {
            assert_fails(&out, needle);
        }
        assert_fails(&out, file.path());
        assert_eq!(attached(&ns), Vec::<String>::new(), "{tag}");
    }
    let out = run_in(&ns, &["--config", "/nonexistent/redirector.toml"]);
    assert_fails(&out, "reading config file /nonexistent/redirector.toml");
}

#[test]
fn config_file_is_used_and_flags_override_it() {
    let ns = veth_ns("cfg");
    let file = TempFile::new(
        "cfg-ok",
        "ifaces = [\"v0\"]\nredirects = [\"9000:8080\"]\nmode = \"tc\"\nconntrack_size = 512\n",
    );
    let mut cmd = ns.cmd(bins::redirector());
    cmd.args([
        "run",
        "--no-local",
        "--config",
        file.path(),
        "--mode",
        "xdp-generic",
    ]);
    let mut loader = Proc::spawn("loader", cmd, false);
    let ready = loader.wait_line("redirector ready", Duration::from_secs(30));
    assert!(
        ready.contains("v0 (xdp-generic) rules 9000->8080 conntrack-size 512"),
        "{ready}"
    );
    loader.signal(libc::SIGTERM);
    let (status, lines) = loader.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{lines:?} {}", loader.stderr_text());
}

/// Native XDP on a veth turns off TSO on its peer: `auto` takes TC ingress there, and an
/// explicit `--mode xdp` works but says what it costs.
#[test]
fn auto_mode_prefers_tc_on_a_veth_and_xdp_there_warns() {
    let ns = veth_ns("vethauto");
    let tso = |ns: &Netns| {
        let out = must(ns.cmd("ethtool").args(["-k", "v1"]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("tcp-segmentation-offload:"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(tso(&ns).ends_with(": on"), "{}", tso(&ns));
    for (mode, hook, peer_tso) in [("auto", "tc", ": on"), ("xdp", "xdp", ": off")] {
        let mut cmd = ns.cmd(bins::redirector());
        cmd.args(["run", "--no-local", "--iface", "v0", "--mode", mode]);
        if mode == "auto" {
            // auto's choice is an info line; the cost of forcing xdp is a default warning.
            cmd.env("RUST_LOG", "info");
        }
        let mut run = Proc::spawn(mode, cmd, false);
        let ready = run.wait_line("redirector ready", Duration::from_secs(30));
        assert!(ready.contains(&format!("v0 ({hook})")), "{mode}: {ready}");
        assert!(
            tso(&ns).starts_with(&format!("tcp-segmentation-offload{peer_tso}")),
            "{mode}: {}",
            tso(&ns)
        );
        run.signal(libc::SIGTERM);
        let (status, _) = run.wait_exit(Duration::from_secs(10));
        assert!(status.success());
        let stderr = run.stderr_text();
        assert!(
            stderr.contains("turns off TSO on its peer"),
            "{mode} explains the veth choice:\n{stderr}"
        );
    }
    assert!(tso(&ns).ends_with(": on"), "TSO is back once XDP is gone");
}
