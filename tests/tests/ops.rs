//! Operating a running loader: the `--metrics` endpoint scraped from inside the server
//! namespace, the conntrack timeouts, `stats --watch` and the default log level; with the
//! real loader, real eBPF programs and real WebSocket traffic.

use std::time::Duration;

use redirector_common::stats::Counter;
use redirector_tests::{bins, fixtures::*};
use serde_json::Value;
use testkit::{netns::Topology, process::Proc};

/// `curl` inside the server namespace: (HTTP status, body).
fn http_get(topo: &Topology, url: &str) -> (u16, String) {
    let out = topo
        .server
        .cmd("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// The `/metrics` family and label of the `stats` counter `name`, by the naming rule
/// docs/CONTROL.md gives — written out here rather than taken from the loader, so that a
/// counter exported under another one's label fails.
fn documented_series(name: &str) -> (&'static str, &'static str, String) {
    let label = |prefix: &str| name.strip_prefix(prefix).unwrap().to_string();
    match name {
        "rewrite_ingress" => ("redirector_rewrites", "result", "in".into()),
        "rewrite_egress" => ("redirector_rewrites", "result", "out".into()),
        "rewrite_failed" => ("redirector_rewrites", "result", "failed".into()),
        "local_redirected" => ("redirector_local_connects", "result", "redirected".into()),
        n if n.starts_with("local_pass_") => {
            ("redirector_local_connects", "result", label("local_pass_"))
        }
        "steer_assigned" => ("redirector_socket_steering", "result", "steered".into()),
        n if n.starts_with("steer_pass_") => {
            ("redirector_socket_steering", "result", label("steer_pass_"))
        }
        n if n.starts_with("steer_") => ("redirector_socket_steering", "result", label("steer_")),
        n if n.starts_with("pass_") => ("redirector_packets_passed", "reason", label("pass_")),
        n if n.starts_with("flow_") => ("redirector_flow_events", "event", label("flow_")),
        other => panic!("counter {other}: no documented /metrics series"),
    }
}

/// Every counter that `/metrics` and `stats --json` both report, as (name, stats value,
/// metrics value) where they differ: each global counter under its series
/// ([`documented_series`]) and the 80 rule's packets and bytes.
fn metrics_vs_stats(body: &str, stats: &Value, iface: &str, r80: &str) -> Vec<(String, u64, u64)> {
    let counters = &stats["counters"];
    let rule = stats["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from_port"] == 80)
        .unwrap();
    let mut pairs: Vec<(String, u64, String)> = Counter::ALL
        .iter()
        .map(|&counter| {
            let (family, label, value) = documented_series(counter.name());
            (
                counter.name().to_string(),
                counters[counter.name()].as_u64().unwrap(),
                format!("{family}_total{{{iface},{label}=\"{value}\"}}"),
            )
        })
        .collect();
    for (key, metric, direction) in [
        ("packets_in", "packets", "in"),
        ("packets_out", "packets", "out"),
        ("bytes_in", "bytes", "in"),
        ("bytes_out", "bytes", "out"),
    ] {
        pairs.push((
            format!("rule 80 {key}"),
            rule[key].as_u64().unwrap(),
            format!("redirector_rule_{metric}_total{{{r80},direction=\"{direction}\"}}"),
        ));
    }
    pairs
        .into_iter()
        .map(|(name, from_stats, series)| (name, from_stats, sample(body, &series)))
        .filter(|(_, from_stats, from_metrics)| from_stats != from_metrics)
        .collect()
}

#[test]
fn metrics_endpoint_reports_the_traffic() {
    let _serial = serial();
    let topo = Topology::new("ops-met");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(
        &topo,
        &["--metrics", "127.0.0.1:9464", "--conntrack-size", "1024"],
    );
    let ready = ready_line(&loader);
    assert!(
        ready.ends_with("metrics http://127.0.0.1:9464/metrics"),
        "{ready}"
    );
    let url = "http://127.0.0.1:9464/metrics";
    let status = ctl_json(&topo.server, &["status"]);
    assert_eq!(status["metrics"], url, "{status}");
    let text = ctl_ok(&topo.server, &["status"]);
    assert!(text.contains(&format!("metrics: {url}")), "{text}");
    let (code, before) = http_get(&topo, url);
    assert_eq!(code, 200, "{before}");
    assert!(before.contains("# TYPE redirector_rule_packets_total counter"));
    // OpenMetrics when the scraper asks for it (what Prometheus does by default).
    let out = topo
        .server
        .cmd("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-H",
            "Accept: application/openmetrics-text",
        ])
        .arg(url)
        .output()
        .unwrap();
    let openmetrics = String::from_utf8(out.stdout).unwrap();
    assert!(
        openmetrics.ends_with("# EOF\n")
            && openmetrics.contains("# TYPE redirector_rule_packets counter\n"),
        "{openmetrics}"
    );
    assert!(before.contains(&format!(
        "redirector_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    assert_echo(&topo, &topo.url("ws", false, 80));
    assert_echo(&topo, &topo.url("ws", false, 80));

    let iface = format!("iface=\"{}\"", topo.server_if);
    let r80 = format!("{iface},from_port=\"80\",to_port=\"8080\"");
    let r443 = format!("{iface},from_port=\"443\",to_port=\"8443\"");
    // The last ACKs of the closes may still be in flight, and a stray packet (neighbour
    // discovery) may land between the two reads: compare with `stats --json` until every
    // shared counter agrees (bounded), and fail if they never do.
    let mut last = String::new();
    let mut disagreement = Vec::new();
    for _ in 0..40 {
        let (code, body) = http_get(&topo, url);
        assert_eq!(code, 200);
        let stats = ctl_json(&topo.server, &["stats"]);
        disagreement = metrics_vs_stats(&body, &stats, &iface, &r80);
        last = body;
        if disagreement.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        disagreement.is_empty(),
        "/metrics and `stats --json` never agreed: {disagreement:?}\n{last}"
    );
    let body = last;
    assert_eq!(
        sample(&body, &format!("redirector_rule_flows_new_total{{{r80}}}")),
        2,
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("redirector_rule_flows_new_total{{{r443}}}")),
        0
    );
    assert_eq!(
        sample(&body, &format!("redirector_rule_enabled{{{r80}}}")),
        1
    );
    let packets_in = sample(
        &body,
        &format!("redirector_rule_packets_total{{{r80},direction=\"in\"}}"),
    );
    let packets_out = sample(
        &body,
        &format!("redirector_rule_packets_total{{{r80},direction=\"out\"}}"),
    );
    // Two handshakes, a request and an echo each way: well over 4 packets per direction.
    assert!(packets_in >= 8 && packets_out >= 8, "{body}");
    assert_eq!(
        sample(
            &body,
            &format!("redirector_rewrites_total{{{iface},result=\"in\"}}")
        ),
        packets_in
    );
    assert_eq!(
        sample(
            &body,
            &format!("redirector_rewrites_total{{{iface},result=\"out\"}}")
        ),
        packets_out
    );
    assert_eq!(
        sample(
            &body,
            &format!("redirector_rewrites_total{{{iface},result=\"failed\"}}")
        ),
        0
    );
    assert_eq!(
        sample(
            &body,
            &format!("redirector_flow_events_total{{{iface},event=\"created\"}}")
        ),
        2
    );
    assert_eq!(
        sample(&body, &format!("redirector_conntrack_capacity{{{iface}}}")),
        1024
    );
    let tracked = ctl_json(&topo.server, &["status"])["conntrack"]["tracked"]
        .as_u64()
        .unwrap();
    assert_eq!(
        sample(&body, &format!("redirector_conntrack_entries{{{iface}}}")),
        tracked
    );

    let (code, _) = http_get(&topo, "http://127.0.0.1:9464/");
    assert_eq!(code, 404);
    stop_loader(loader);
}

/// Polls `redirector flows --json` until it lists no flow; panics after `limit`.
fn wait_no_flows(topo: &Topology, limit: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let flows = ctl_json(&topo.server, &["flows"]);
        if flows.as_array().unwrap().is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "flows still tracked after {limit:?}: {flows}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn closed_flows_are_reaped_after_the_closing_timeout() {
    let _serial = serial();
    let topo = Topology::new("ops-tclose");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--timeout-closing", "1"]);
    let status = ctl_json(&topo.server, &["status"]);
    let timeouts = &status["timeouts"];
    assert_eq!(timeouts["closing_secs"], 1, "{status}");
    assert_eq!(timeouts["handshake_secs"], 60, "{status}");
    assert_eq!(timeouts["fin_wait_secs"], 120, "{status}");
    assert_eq!(timeouts["established_secs"], 432_000, "{status}");
    assert_eq!(status["metrics"], Value::Null, "{status}");
    let text = ctl_ok(&topo.server, &["status"]);
    assert!(
        text.contains("timeouts: handshake 60s established 432000s fin-wait 120s closing 1s"),
        "{text}"
    );
    assert!(text.contains("metrics: off"), "{text}");
    assert_echo(&topo, &topo.url("ws", false, 80));
    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(stats["counters"]["flow_created"], 1, "{stats}");
    // The default closing timeout is 10 s: well within it, the entry must be gone.
    wait_no_flows(&topo, Duration::from_secs(5));
    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(
        stats["counters"]["flow_closed_fin"], 1,
        "closed by FIN: {stats}"
    );
    stop_loader(loader);
}

/// An established connection idle for longer than `--timeout-established` keeps its
/// entry while the kernel holds its socket: the clock does not overrule the connection.
#[test]
fn an_idle_connection_outlives_the_established_timeout_while_its_socket_is_open() {
    let _serial = serial();
    let topo = Topology::new("ops-tidle");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(&topo, &["--timeout-established", "2"]);
    let mut session = open_session(&topo, &topo.url("ws", false, 80));
    let flows = ctl_json(&topo.server, &["flows"]);
    assert_eq!(flows[0]["state"], "established", "{flows}");

    // Idle for twice the timeout (the reaper looks every second): still tracked.
    std::thread::sleep(Duration::from_secs(4));
    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(stats["flows_tracked"], 1, "{stats}");
    assert_eq!(stats["counters"]["flow_reaped"], 0, "{stats}");
    exchange(&mut session, "after the timeout");
    let stats = ctl_json(&topo.server, &["stats"]);
    assert_eq!(stats["counters"]["flow_healed_ingress"], 0, "{stats}");
    close_session(session);
    stop_loader(loader);
}

#[test]
fn stats_watch_reprints_until_the_loader_stops_and_the_loader_is_quiet() {
    let _serial = serial();
    let topo = Topology::new("ops-watch");
    let loader = start_loader(&topo, &[]);
    let watch = |json: bool| {
        let mut cmd = topo.server.cmd(bins::redirector());
        cmd.args(["stats", "--watch", "1"]);
        if json {
            cmd.arg("--json");
        }
        Proc::spawn("stats --watch", cmd, false)
    };
    let mut text = watch(false);
    let mut json = watch(true);
    for _ in 0..2 {
        text.wait_line("flows tracked=0", Duration::from_secs(10));
        let line = json.wait_line("{", Duration::from_secs(10));
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["flows_tracked"], 0, "{doc}");
    }
    assert!(
        text.seen.iter().any(|l| l.is_empty()),
        "rounds are separated by a blank line: {:?}",
        text.seen
    );
    // Default log level is `warn`: a healthy start logs nothing.
    let logs = loader.stderr_text();
    assert!(
        logs.is_empty(),
        "loader logged at the default level:\n{logs}"
    );

    stop_loader(loader);
    for mut w in [text, json] {
        let (status, _) = w.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "a watch ends when its loader stops");
        assert!(
            w.stderr_text().contains("no redirector running"),
            "{}",
            w.stderr_text()
        );
    }
}

/// Waits (bounded) until the loader's stderr (read from now on: reading consumes it)
/// contains every one of `needles`; returns what it read.
fn wait_stderr(loader: &Proc, needles: &[&str], limit: Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    let mut log = String::new();
    loop {
        log.push_str(&loader.stderr_text());
        log.push('\n');
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all of {needles:?} in the loader's log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The core promise: a connection that was redirected keeps working until it closes. With
/// the established table full, new connections are refused visibly (not redirected, so
/// nothing listens on :80) and counted, and every open, idle session still echoes.
#[test]
fn a_full_established_table_refuses_new_connections_and_keeps_every_open_one() {
    let _serial = serial();
    let topo = Topology::new("ops-full");
    let _echo = start_echo(&topo, &[]);
    const SIZE: u64 = 64;
    const EXTRA: u64 = 8;
    let loader = start_loader(
        &topo,
        &[
            "--conntrack-size",
            &SIZE.to_string(),
            "--timeout-closing",
            "1",
        ],
    );
    let url = topo.url("ws", false, 80);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut sessions = Vec::new();
    for _ in 0..SIZE {
        assert!(std::time::Instant::now() < deadline, "too slow");
        sessions.push(open_session(&topo, &url));
    }
    let refusing = std::time::Instant::now();
    for _ in 0..EXTRA {
        assert_refused(&topo, &url);
    }
    let refusing = refusing.elapsed();
    for (i, session) in sessions.iter_mut().enumerate() {
        exchange(session, &format!("still there {i}"));
    }

    let stats = ctl_json(&topo.server, &["stats"]);
    let counters = &stats["counters"];
    let get = |name: &str| counters[name].as_u64().unwrap();
    assert_eq!(stats["flows_established"], SIZE, "{stats}");
    assert_eq!(stats["flows_evicted"], 0, "{stats}");
    assert_eq!(get("flow_promoted"), SIZE, "{stats}");
    assert!(get("pass_table_full") >= EXTRA, "{stats}");
    // Every flow created is tracked or was removed explicitly; none was evicted.
    let tracked = stats["flows_tracked"].as_u64().unwrap();
    assert_eq!(
        get("flow_created") + get("flow_healed_ingress") + get("flow_healed_egress"),
        tracked
            + get("flow_replaced")
            + get("flow_closed_rst")
            + get("flow_heal_withdrawn")
            + get("flow_reaped")
            + get("flow_flushed"),
        "{stats}"
    );
    let status = ctl_json(&topo.server, &["status"]);
    let conntrack = &status["conntrack"];
    assert_eq!(conntrack["size"], SIZE, "{status}");
    assert_eq!(conntrack["established"], SIZE, "{status}");
    assert_eq!(conntrack["half_open_size"], SIZE, "{status}");
    assert!(
        conntrack["refused_full"].as_u64().unwrap() >= EXTRA,
        "{status}"
    );
    assert!(
        conntrack["established_memory_bytes"].as_u64().unwrap() > 0,
        "{status}"
    );
    let text = ctl_ok(&topo.server, &["stats"]);
    assert!(
        text.contains(&format!("flows established={SIZE} half_open=")),
        "{text}"
    );
    // Filled between two checks: the 95 % warning stands for the 80 % one too.
    // The kernel's own record of a refused SYN (aya-log), rate-limited to one per second
    // per CPU however many SYNs it refuses.
    let kernel = "redirector::kernel] established table full (64/64), SYN to :80 not \
                  redirected; raise --conntrack-size";
    let warnings = ["95% full", "raise --conntrack-size (now 64)", kernel];
    let log = wait_stderr(&loader, &warnings, Duration::from_secs(10));
    let records = log.matches(kernel).count() as u64;
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let bound = cpus * (refusing.as_secs() + 2);
    assert!(
        records <= bound.min(get("pass_table_full")),
        "{records} kernel records for {} refused SYNs in {refusing:?} on {cpus} CPUs:\n{log}",
        get("pass_table_full")
    );

    // A session that closes gives its place back once reaped (closing timeout 1 s).
    close_session(sessions.pop().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = ws_client(
            &topo,
            &url,
            &["--message", "back", "--connect-timeout", "3"],
        );
        if out.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place freed");
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, session) in sessions.iter_mut().enumerate() {
        exchange(session, &format!("after {i}"));
    }
    for session in sessions {
        close_session(session);
    }
    stop_loader(loader);
}
