//! wsload against the real ws-echo on loopback addresses: each mode, ws and wss, IPv4 and IPv6,
//! and the failures a user meets first (refused port, bad flags, wss without --insecure).

mod common;

use std::time::{Duration, Instant};

use common::{assert_ordered_summary, int, wsload, wsload_json, EchoServer};

/// A loopback port that was just free: nothing listens on it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[test]
fn ping_pong_echoes_are_all_verified_and_timed() {
    let server = EchoServer::start(&["--listen", "127.0.0.1:0"]);
    let started = Instant::now();
    let report = wsload_json(&[&server.url(0), "-c", "4", "--duration", "2"]);
    let elapsed = started.elapsed();

    assert_eq!(report["mode"], "ping-pong");
    assert_eq!(report["urls"][0], server.url(0));
    assert_eq!(int(&report, "connects_ok"), 4, "{report}");
    assert_eq!(int(&report, "connect_errors"), 0, "{report}");
    assert!(int(&report, "messages_received") > 0, "{report}");
    assert_eq!(
        int(&report, "messages_received"),
        int(&report, "messages_sent"),
        "{report}"
    );
    assert_eq!(int(&report, "errors"), 0, "{report}");
    assert!(report["first_error"].is_null(), "{report}");
    assert!(report["messages_per_s"].as_f64().unwrap() > 0.0, "{report}");
    let bytes_per_s = report["bytes_per_s"].as_f64().unwrap();
    assert_eq!(
        bytes_per_s,
        report["messages_per_s"].as_f64().unwrap() * 64.0
    );
    assert_ordered_summary(&report, "latency_us");
    assert_ordered_summary(&report, "handshake_us");
    assert_eq!(
        int(&report["latency_us"], "count"),
        int(&report, "messages_received")
    );
    // Closing a healthy run takes well under a second after the 2 s of load (slack for busy CI).
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
}

#[test]
fn fixed_rate_sends_about_the_requested_number_of_messages() {
    let server = EchoServer::start(&["--listen", "127.0.0.1:0"]);
    let report = wsload_json(&[
        &server.url(0),
        "-c",
        "2",
        "--message-rate",
        "200",
        "--message-size",
        "1000",
        "--duration",
        "1.5",
    ]);
    assert_eq!(report["mode"], "rate");
    let sent = int(&report, "messages_sent");
    // 2 connections × 200/s × 1.5 s = 600.
    assert!((400..=720).contains(&sent), "sent {sent}: {report}");
    assert_eq!(int(&report, "messages_received"), sent, "{report}");
    assert_eq!(int(&report, "errors"), 0, "{report}");
    assert_ordered_summary(&report, "latency_us");
}

#[test]
fn wss_with_insecure_accepts_the_self_signed_certificate() {
    let server = EchoServer::start(&["--tls-listen", "127.0.0.1:0"]);
    let url = server.url(0);
    assert!(url.starts_with("wss://"), "{url}");
    let report = wsload_json(&[&url, "--insecure", "-c", "2", "--duration", "1"]);
    assert_eq!(int(&report, "connects_ok"), 2, "{report}");
    assert!(int(&report, "messages_received") > 0, "{report}");
    assert_eq!(int(&report, "errors"), 0, "{report}");
    assert_ordered_summary(&report, "latency_us");
}

#[test]
fn wss_without_insecure_is_refused_before_connecting() {
    let output = wsload(&["wss://127.0.0.1:1/", "--duration", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("requires --insecure"), "{stderr}");
}

#[test]
fn churn_measures_connections_per_second() {
    let server = EchoServer::start(&["--listen", "127.0.0.1:0"]);
    let report = wsload_json(&[&server.url(0), "--conn-churn", "-c", "2", "--duration", "1"]);
    assert_eq!(report["mode"], "churn");
    let connects = int(&report, "connects_ok");
    assert!(connects > 10, "{report}");
    assert_eq!(int(&report, "connect_errors"), 0, "{report}");
    assert_eq!(int(&report, "errors"), 0, "{report}");
    assert!(
        report["connects_per_s"].as_f64().unwrap() > 10.0,
        "{report}"
    );
    assert_eq!(int(&report["handshake_us"], "count"), connects, "{report}");
    // One echo per connection (the last connection may start too late to send one).
    let received = int(&report, "messages_received");
    assert!(received + 2 >= connects && received <= connects, "{report}");
    assert_ordered_summary(&report, "handshake_us");
}

#[test]
fn ipv6_with_source_address_and_several_urls() {
    if !ipv6_available() {
        eprintln!("skipped: no IPv6 loopback");
        return;
    }
    let server = EchoServer::start(&["--listen", "[::1]:0", "--listen", "[::1]:0"]);
    let report = wsload_json(&[
        &server.url(0),
        &server.url(1),
        "--source-addr",
        "::1",
        "-c",
        "4",
        "--duration",
        "1",
    ]);
    assert_eq!(report["urls"].as_array().unwrap().len(), 2);
    assert_eq!(int(&report, "connects_ok"), 4, "{report}");
    assert!(int(&report, "messages_received") > 0, "{report}");
    assert_eq!(int(&report, "errors"), 0, "{report}");
}

#[test]
fn source_address_of_the_wrong_family_is_refused() {
    let output = wsload(&["ws://127.0.0.1:1/", "--source-addr", "::1"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no --source-addr is of that address family"),
        "{stderr}"
    );
}

#[test]
fn warmup_is_run_but_not_counted() {
    let server = EchoServer::start(&["--listen", "127.0.0.1:0"]);
    let started = Instant::now();
    let report = wsload_json(&[&server.url(0), "--warmup", "1", "--duration", "1"]);
    assert!(started.elapsed() >= Duration::from_secs(2));
    // The connection was opened during the warm-up: its messages count, its connect does not.
    assert_eq!(int(&report, "connects_ok"), 0, "{report}");
    assert!(int(&report, "messages_received") > 0, "{report}");
    assert_eq!(report["warmup_s"], 1.0);
}

#[test]
fn a_server_that_stops_echoing_cannot_hold_the_run() {
    let server = EchoServer::start(&["--listen", "127.0.0.1:0"]);
    let url = server.url(0);
    let started = Instant::now();
    let run = std::thread::spawn(move || wsload_json(&[&url, "-c", "2", "--duration", "1"]));
    std::thread::sleep(Duration::from_millis(500));
    server.freeze();
    let report = run.join().expect("wsload run");
    // 1 s of load, then at most 5 s of drain for the echoes in flight.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(int(&report, "errors"), 2, "{report}");
    assert!(
        report["first_error"]
            .as_str()
            .unwrap()
            .contains("echo not received within"),
        "{report}"
    );
    assert!(int(&report, "messages_received") > 0, "{report}");
}

#[test]
fn refused_port_fails_with_a_clear_message() {
    let port = free_port();
    let started = Instant::now();
    let output = wsload(&[&format!("ws://127.0.0.1:{port}/"), "-c", "3", "--json"]);
    // Refused connections end the run at once, not after --duration (10 s).
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no connection could be opened")
            && stderr.contains(&format!("cannot connect to 127.0.0.1:{port}"))
            && stderr.contains("refused"),
        "{stderr}"
    );
    // The report is printed all the same.
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(int(&report, "connect_errors"), 3, "{report}");
}

#[test]
fn churn_against_a_refused_port_stops_early() {
    let port = free_port();
    let started = Instant::now();
    let output = wsload(&[
        &format!("ws://127.0.0.1:{port}/"),
        "--conn-churn",
        "-c",
        "2",
    ]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn invalid_flags_are_rejected_with_clear_errors() {
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &["ws://127.0.0.1:1/", "--message-size", "10"],
            2,
            "--message-size",
        ),
        (
            &["ws://127.0.0.1:1/", "--connections", "0"],
            2,
            "--connections",
        ),
        (
            &["ws://127.0.0.1:1/", "--duration", "0"],
            2,
            "positive number of seconds",
        ),
        (
            &["ws://127.0.0.1:1/", "--conn-churn", "--message-rate", "5"],
            2,
            "cannot be used with",
        ),
        (&["--duration", "1"], 2, "<URL>"),
        (
            &["http://127.0.0.1:1/"],
            1,
            "the scheme must be ws:// or wss://",
        ),
    ];
    for (args, code, needle) in cases {
        let output = wsload(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn idle_holds_every_connection_and_trickles_checked_messages() {
    let server = EchoServer::start(&["--listen", "127.0.0.1:0"]);
    let url = server.url(0);
    let args = [
        url.as_str(),
        "--idle",
        "-c",
        "50",
        "--connect-rate",
        "500",
        "--idle-interval",
        "0.5",
        "--duration",
        "1.5",
        "--json",
    ];
    let started = Instant::now();
    let output = wsload(&args);
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let mut lines = stdout.lines();
    let ready = lines.next().unwrap();
    assert!(
        ready.starts_with("wsload idle: 50 of 50 connections open"),
        "{ready}"
    );
    let report: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(report["mode"], "idle");
    assert_eq!(int(&report, "connections_open"), 50, "{report}");
    assert_eq!(int(&report, "peak_open"), 50, "{report}");
    assert_eq!(int(&report, "errors"), 0, "{report}");
    assert_eq!(int(&report, "connect_errors"), 0, "{report}");
    // One message on opening, then one per 0.5 s over the 1.5 s hold, each echoed.
    let received = int(&report, "messages_received");
    assert!(received >= 50 * 3, "{report}");
    assert_eq!(received, int(&report, "messages_sent"), "{report}");
    // 50 connections at 500/s open in about 0.1 s.
    assert!(report["open_s"].as_f64().unwrap() < 2.0, "{report}");
    assert_ordered_summary(&report, "latency_us");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn idle_against_a_refused_port_fails_without_waiting_for_the_hold() {
    let url = format!("ws://127.0.0.1:{}/", free_port());
    let started = Instant::now();
    let output = wsload(&[&url, "--idle", "-c", "3", "--duration", "30", "--json"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no connection could be opened"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
