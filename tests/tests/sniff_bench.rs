//! Smoke run of `sniff-bench` (small sizes): every relay mode moves the bytes, the backend
//! confirms the count, and the JSON has a row per mode with plausible numbers.

use std::{path::PathBuf, process::Command};

/// The sniff-bench binary next to the other release binaries.
fn sniff_bench() -> PathBuf {
    let redirector = redirector_tests::bins::redirector();
    redirector.with_file_name("sniff-bench")
}

#[test]
fn sniff_bench_measures_every_relay_mode() {
    let out = Command::new("timeout")
        .arg("120")
        .arg(sniff_bench())
        .args([
            "--bytes", "8388608", "--pings", "200", "--rounds", "1", "--json",
        ])
        .output()
        .expect("run sniff-bench (cargo build --release --bins)");
    assert!(
        out.status.success(),
        "sniff-bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = doc["results"].as_array().unwrap();
    let relays: Vec<&str> = rows.iter().map(|r| r["relay"].as_str().unwrap()).collect();
    assert_eq!(relays, ["direct", "auto", "splice", "copy"], "{doc:#}");
    for row in rows {
        assert!(row["bulk_mib_per_s"].as_f64().unwrap() > 1.0, "{row}");
        assert!(row["pingpong_rtt_us"].as_f64().unwrap() > 0.0, "{row}");
        let proxied = row["relay"] != "direct";
        assert_eq!(row["proxy_cpu_s_per_gib"].is_number(), proxied, "{row}");
    }
}
