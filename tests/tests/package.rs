//! The Debian package (`cargo xtask deb`): installed with dpkg on this machine, its unit's
//! command line run in a test namespace with WebSocket connections held, upgraded to a
//! newer package version while they stay open (the restarted loader adopts them), reloaded
//! with the unit's ExecReload, removed and purged — after which nothing of it is left:
//! files, enable links, pinned maps and links, loaded programs.
//!
//! The package under test is the one `cargo xtask test` builds (REDIRECTOR_DEB), and the
//! upgrade installs the same build packaged as a higher version (REDIRECTOR_DEB_NEXT).
//! Without systemd as init (this machine: the maintainer scripts then only record the
//! enable links), and even with it (its unit would attach to the host's interfaces), the
//! test does what systemd would: it runs the installed unit's ExecStart= in the test's
//! server namespace (`nsenter --net=`), stops it with the unit's KillSignal= for
//! `try-restart` and `stop`, and runs its ExecReload=.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use redirector_tests::{fixtures::*, format2::netns_inode};
use testkit::{netns::Topology, process::Proc};

const UNIT: &str = "/lib/systemd/system/redirector.service";
const CONFFILE: &str = "/etc/redirector/redirector.toml";
const ENABLE_LINK: &str = "/etc/systemd/system/multi-user.target.wants/redirector.service";

/// The .deb of `env` (set by `cargo xtask test`).
fn deb(env: &str) -> PathBuf {
    let path = std::env::var_os(env).unwrap_or_else(|| {
        panic!("{env} is not set: run `cargo xtask test` (it builds the packages)")
    });
    PathBuf::from(path)
}

/// Runs `dpkg ARGS` and asserts success.
fn dpkg(args: &[&str]) {
    let out = Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dpkg-query -W -f=FORMAT redirector`, or None if dpkg knows no such package.
fn query(format: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", &format!("-f={format}"), "redirector"])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Purges the package when dropped, so a failing test leaves nothing installed (its
/// postrm also removes the pins of the test's loader, killed before by its `Proc`).
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "redirector"])
            .output();
    }
}

/// The value of `Key=` in the installed unit.
fn unit_value(key: &str) -> String {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {UNIT}"))
        .to_string()
}

/// Starts the unit's ExecStart= in the server namespace (as systemd would on the host);
/// returns once it is ready.
fn start_unit(topo: &Topology) -> Proc {
    let exec_start = unit_value("ExecStart");
    let mut words = exec_start.split_whitespace();
    let program = words.next().unwrap();
    assert_eq!(program, "/usr/bin/redirector", "{exec_start}");
    let mut cmd = topo.server.nsenter_cmd(program);
    cmd.args(words);
    let mut loader = Proc::spawn("redirector (the unit's ExecStart)", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    loader
}

/// Stops the loader as systemd does (KillSignal=, to the main process: KillMode=mixed);
/// with --persist it leaves its programs attached and its flows pinned.
fn stop_unit(mut loader: Proc) {
    assert_eq!(unit_value("KillSignal"), "SIGTERM");
    loader.signal(libc::SIGTERM);
    let (status, lines) = loader.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{lines:?} {}", loader.stderr_text());
}

/// The files in /run/redirector of the instance on `iface` in the namespace `inode`.
fn run_files(inode: u64, iface: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/run/redirector")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&format!("netns-{inode}-{iface}."))
        })
        .collect()
}

/// Every path the package installs, and the ones its scripts create.
fn installed_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = [
        "/usr/bin/redirector",
        UNIT,
        CONFFILE,
        "/usr/share/man/man1/redirector.1.gz",
        "/usr/share/man/man1/redirector-run.1.gz",
        "/usr/share/bash-completion/completions/redirector",
        "/usr/share/zsh/vendor-completions/_redirector",
        "/usr/share/fish/vendor_completions.d/redirector.fish",
        "/usr/share/redirector/grafana/redirector.json",
        "/usr/share/doc/redirector/copyright",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    paths.push(PathBuf::from(ENABLE_LINK));
    paths
}

/// Install, hold connections, upgrade (they all still echo), reload, remove, purge:
/// nothing is left behind.
#[test]
fn install_upgrade_remove_purge_keeps_connections_and_leaves_nothing() {
    let _serial = serial();
    let (first, next) = (deb("REDIRECTOR_DEB"), deb("REDIRECTOR_DEB_NEXT"));
    assert!(
        query("${Status}").is_none_or(|s| !s.contains("installed")),
        "a redirector package is installed on this machine already; this test installs and \
         purges its own"
    );
    if Path::new("/run/systemd/system").is_dir() {
        println!(
            "systemd runs: the unit is enabled but not started; the test runs its command lines"
        );
    } else {
        println!("systemd is not running: the test runs the unit's command lines itself");
    }
    let topo = Topology::new("pkg");
    let _echo = start_echo(&topo, &[]);
    // A lock file of an earlier loader in a namespace that had the same inode stays.
    let run_files_before = run_files(netns_inode(&topo.server), topo.server_if);
    let _purge = PurgeOnDrop;

    dpkg(&["--install", first.to_str().unwrap()]);
    for path in installed_paths() {
        assert!(path.exists(), "{} not installed", path.display());
    }
    assert!(
        query("${Conffiles}").unwrap().contains(CONFFILE),
        "{CONFFILE} is not a conffile"
    );
    let page = Command::new("man")
        .args(["-l", "/usr/share/man/man1/redirector-run.1.gz"])
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("--sniff-listen"),
        "{}",
        String::from_utf8_lossy(&page.stderr)
    );

    // The operator's edit of the conffile: the test's interface, no local clients.
    let shipped = std::fs::read_to_string(CONFFILE).unwrap();
    let edited = format!(
        "local = false\n{}",
        shipped.replace(
            "ifaces = [\"eth0\"]",
            &format!("ifaces = [\"{}\"]", topo.server_if)
        )
    );
    assert_ne!(edited, shipped);
    std::fs::write(CONFFILE, &edited).unwrap();

    let loader = start_unit(&topo);
    let mut sessions: Vec<Proc> = [("ws", 80), ("wss", 443)]
        .iter()
        .flat_map(|(scheme, port)| [false, true].map(|v6| topo.url(scheme, v6, *port)))
        .map(|url| open_session(&topo, &url))
        .collect();

    // The upgrade: files replaced while the loader runs, then `try-restart`.
    dpkg(&["--force-confold", "--install", next.to_str().unwrap()]);
    let version = query("${Version}").unwrap();
    assert!(version.ends_with("+next"), "{version}");
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), edited);
    // dpkg replaced the binary under the running loader: the restart runs the new file.
    let exe = std::fs::read_link(format!("/proc/{}/exe", loader.pid())).unwrap();
    assert!(exe.to_string_lossy().ends_with(" (deleted)"), "{exe:?}");
    let old_pid = loader.pid();
    stop_unit(loader);
    let mut loader = start_unit(&topo);
    let ready = ready_line(&loader);
    assert!(
        ready.contains(" adopted ") && ready.contains(&format!("from pid {old_pid}")),
        "{ready}"
    );
    for session in &mut sessions {
        exchange(session, "after the upgrade");
    }

    // `systemctl reload`: the unit's ExecReload= with $MAINPID.
    let reload = unit_value("ExecReload").replace("$MAINPID", &loader.pid().to_string());
    let mut words = reload.split_whitespace();
    let status = Command::new(words.next().unwrap())
        .args(words)
        .status()
        .unwrap();
    assert!(status.success(), "{reload}");
    loader.wait_line("redirector reloaded", Duration::from_secs(10));
    for session in &mut sessions {
        exchange(session, "after the reload");
    }
    for session in sessions {
        close_session(session);
    }

    // Remove: prerm stops the unit (first, as systemd would); the configuration and the
    // pins stay until purge.
    let inode = netns_inode(&topo.server);
    stop_unit(loader);
    dpkg(&["--remove", "redirector"]);
    assert!(!Path::new("/usr/bin/redirector").exists());
    assert!(Path::new(CONFFILE).exists(), "removed before the purge");
    let pins = PathBuf::from(format!("/sys/fs/bpf/redirector/netns-{inode}"));
    assert!(pins.exists(), "the persisted flows went before the purge");

    dpkg(&["--purge", "redirector"]);
    assert!(query("${Status}").is_none_or(|s| !s.contains("installed")));
    let mut left: Vec<PathBuf> = installed_paths()
        .into_iter()
        .chain([
            PathBuf::from("/etc/redirector"),
            PathBuf::from(
                "/var/lib/systemd/deb-systemd-helper-enabled/redirector.service.dsh-also",
            ),
            PathBuf::from("/var/lib/systemd/deb-systemd-helper-masked/redirector.service"),
            pins,
        ])
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    left.extend(
        run_files(inode, topo.server_if)
            .into_iter()
            .filter(|p| !run_files_before.contains(p)),
    );
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
    assert_no_program_loaded();
}
