//! `systemctl reload redirector` (SIGHUP to a loader started with `--config`): what changed
//! in the file is applied to the running loader — rules, disabled rules, the allow list,
//! timeouts, mark, metrics address — while held WebSocket connections keep echoing; an
//! invalid file or a change of a setting only a restart applies is refused with one log
//! line and changes nothing. Real loader, real programs, test namespaces.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use redirector_tests::{bins, fixtures::*};
use serde_json::Value;
use testkit::{netns::Topology, process::Proc};

/// Writes the config file the loader re-reads: `text`, after the test's interface (unless
/// `text` names others), the packet rewrite at TC ingress (unless `text` names a mode) and
/// no local clients.
fn write_config(topo: &Topology, path: &Path, text: &str) {
    let mut base = String::from("local = false\n");
    if !text.contains("ifaces =") {
        base.push_str(&format!("ifaces = [\"{}\"]\n", topo.server_if));
    }
    if !text.contains("mode =") {
        base.push_str("mode = \"tc\"\n");
    }
    std::fs::write(path, format!("{base}{text}")).unwrap();
}

/// Starts `redirector run --config FILE` (no flag: everything from the file) in the
/// server namespace; returns once it is attached.
fn start_with_config(topo: &Topology, config: &Path) -> Proc {
    let mut cmd = topo.server.cmd(bins::redirector());
    cmd.arg("run").arg("--config").arg(config);
    let mut loader = Proc::spawn("redirector", cmd, false);
    loader.wait_line("redirector ready", Duration::from_secs(30));
    loader
}

/// Sends SIGHUP and waits for the loader's `redirector reloaded` line.
fn reload(loader: &mut Proc) -> String {
    loader.signal(libc::SIGHUP);
    loader.wait_line("redirector reloaded", Duration::from_secs(10))
}

/// Sends SIGHUP and waits for the refusal on stderr, up to the line that gives `reason`
/// (a TOML error spans several lines); returns the log record from its first line on.
fn reload_refused(loader: &mut Proc, reason: &str) -> String {
    loader.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stderr = String::new();
    loop {
        stderr.push_str(&loader.stderr_text());
        stderr.push('\n');
        if let Some(at) = stderr.find("refused, nothing changed") {
            let start = stderr[..at].rfind('\n').map_or(0, |i| i + 1);
            if stderr[start..].contains(reason) {
                return stderr[start..].to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no refusal naming `{reason}` logged: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `curl` of `url` in the server namespace: the body, or None if nothing answers.
fn scrape(topo: &Topology, url: &str) -> Option<String> {
    let out = topo
        .server
        .cmd("curl")
        .args(["-s", "--max-time", "5", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The status's rules as (from, to, enabled).
fn rules(status: &Value) -> Vec<(u64, u64, bool)> {
    let mut rules: Vec<(u64, u64, bool)> = status["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["from_port"].as_u64().unwrap(),
                r["to_port"].as_u64().unwrap(),
                r["enabled"].as_bool().unwrap(),
            )
        })
        .collect();
    rules.sort();
    rules
}

/// A reload adds a rule, disables one, sets the allow list, the timeouts, the mark and
/// moves the metrics server; connections held on 80 and 443 keep echoing throughout, and
/// a new connection sees the new rules.
#[test]
fn reload_applies_what_changed_without_dropping_a_connection() {
    let _serial = serial();
    let topo = Topology::new("reload");
    let _echo = start_echo(&topo, &[]);
    let dir = TempDir::new("reload");
    let config = dir.0.join("redirector.toml");
    write_config(
        &topo,
        &config,
        "redirects = [\"80:8080\", \"443:8443\"]\nmetrics = \"127.0.0.1:9464\"\n",
    );
    let mut loader = start_with_config(&topo, &config);
    let mut ws = open_session(&topo, &topo.url("ws", false, 80));
    let mut wss = open_session(&topo, &topo.url("wss", true, 443));
    assert!(scrape(&topo, "http://127.0.0.1:9464/metrics").is_some());

    // Nothing changed: nothing to do, and said so.
    let line = reload(&mut loader);
    assert!(line.ends_with(": nothing changed"), "{line}");

    write_config(
        &topo,
        &config,
        &format!(
            "redirects = [\"80:8080\", \"443:8443\", \"9000:8080\"]\ndisabled = [443]\n\
             allow = [\"{}/32\", \"fd00::/8\"]\nmetrics = \"127.0.0.1:9465\"\n\
             mark = \"0x42/0xff\"\n[timeouts]\nestablished = 3600\n",
            topo.client_v4
        ),
    );
    let line = reload(&mut loader);
    for change in [
        "rule 9000->8080 added",
        "port 443 disabled",
        "sources: ",
        "established 3600s",
        "mark 0x42/0xff",
        "metrics http://127.0.0.1:9465/metrics",
    ] {
        assert!(line.contains(change), "{change}: {line}");
    }
    exchange(&mut ws, "after the reload");
    exchange(&mut wss, "after the reload");
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(
        rules(&status),
        [(80, 8080, true), (443, 8443, false), (9000, 8080, true)],
        "{status}"
    );
    assert_eq!(status["sources"]["filtered"], true, "{status}");
    assert_eq!(status["sources"]["allow"].as_array().unwrap().len(), 2);
    assert_eq!(status["timeouts"]["established_secs"], 3600, "{status}");
    assert_eq!(status["metrics"], "http://127.0.0.1:9465/metrics");
    assert_echo(&topo, &topo.url("ws", false, 9000));
    // 443 is disabled: a new connection is not redirected, and nothing listens on 443.
    assert_refused(&topo, &topo.url("wss", false, 443));
    let body = scrape(&topo, "http://127.0.0.1:9465/metrics").expect("the new address");
    assert!(body.contains("redirector_rule_enabled"), "{body}");
    assert!(
        scrape(&topo, "http://127.0.0.1:9464/metrics").is_none(),
        "the old metrics address still answers"
    );

    // Back: the rule goes, 443 is enabled again, every source allowed, metrics off.
    write_config(&topo, &config, "redirects = [\"80:8080\", \"443:8443\"]\n");
    let line = reload(&mut loader);
    for change in [
        "rule for port 9000 removed",
        "port 443 enabled",
        "sources: all",
        "mark off",
        "metrics off",
    ] {
        assert!(line.contains(change), "{change}: {line}");
    }
    assert_echo(&topo, &topo.url("wss", false, 443));
    assert_refused(&topo, &topo.url("ws", false, 9000));
    exchange(&mut ws, "after the second reload");
    exchange(&mut wss, "after the second reload");
    close_session(ws);
    close_session(wss);
    stop_loader(loader);
}

/// A file that is not valid, or that changes the interfaces or the mode, is refused with
/// one log line naming why; the running rules, the metrics server and the held connection
/// are as before.
#[test]
fn an_invalid_file_or_a_fixed_setting_is_refused_and_changes_nothing() {
    let _serial = serial();
    let topo = Topology::new("reloadno");
    let _echo = start_echo(&topo, &[]);
    let dir = TempDir::new("reloadno");
    let config = dir.0.join("redirector.toml");
    let good = "redirects = [\"80:8080\"]\nmetrics = \"127.0.0.1:9464\"\n";
    write_config(&topo, &config, good);
    let mut loader = start_with_config(&topo, &config);
    let mut ws = open_session(&topo, &topo.url("ws", false, 80));
    let before = ctl_json(&topo.server, &["status"]);

    for (text, reason) in [
        (
            "redirects = [\"80:8080\", \"9000:8080\"]\nmode = \"xdp\"\n",
            "`mode` cannot change while the loader runs",
        ),
        (
            "ifaces = [\"lo\"]\n",
            "`ifaces` cannot change while the loader runs",
        ),
        ("redirect = [\"9000:8080\"]\n", "unknown field `redirect`"),
        (
            "redirects = [\"80:8080\", \"9000:9000\"]\n",
            "FROM and TO are the same port",
        ),
        ("disabled = [22]\n", "port 22 has no rule"),
        ("this is not toml", "TOML parse error"),
    ] {
        write_config(&topo, &config, text);
        let line = reload_refused(&mut loader, reason);
        assert!(line.contains(config.to_str().unwrap()), "{line}");
        let after = ctl_json(&topo.server, &["status"]);
        assert_eq!(after["rules"], before["rules"], "{text}");
        assert_eq!(after["metrics"], before["metrics"], "{text}");
        exchange(&mut ws, "still here");
    }
    assert!(scrape(&topo, "http://127.0.0.1:9464/metrics").is_some());
    assert_refused(&topo, &topo.url("ws", false, 9000));
    // Fixed again: the next reload applies, from the state before the refusals.
    write_config(&topo, &config, good);
    let line = reload(&mut loader);
    assert!(line.ends_with(": nothing changed"), "{line}");
    close_session(ws);
    stop_loader(loader);
}
