//! `kernel-bench --smoke --json`: the benchmark loads the real programs, checks that every
//! case takes the path it names, and prints a well-formed, sane result. Nothing about
//! speed is asserted (benchmarks report ratios, tests do not time).

use std::{collections::BTreeSet, process::Command};

use redirector_common::maps::{
    established_max_entries, half_open_size, FlowKey, FlowValue, DEFAULT_CONNTRACK_SIZE,
};
use redirector_tests::bins;
use serde_json::Value;

/// Runs the smoke benchmark (it takes the machine-wide test lock itself).
fn smoke_report() -> Value {
    let out = Command::new(bins::kernel_bench())
        .args(["--smoke", "--json"])
        .output()
        .expect("spawn kernel-bench");
    assert!(
        out.status.success(),
        "kernel-bench --smoke failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

fn num(row: &Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("`{field}` is not a number in {row}"))
}

fn positive(row: &Value, field: &str) -> f64 {
    let value = num(row, field);
    assert!(
        value.is_finite() && value > 0.0,
        "`{field}` = {value} in {row}"
    );
    value
}

fn rows<'a>(report: &'a Value, field: &str) -> &'a Vec<Value> {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("`{field}` is not an array"))
}

fn check_cases(report: &Value) {
    let mut seen = BTreeSet::new();
    for row in rows(report, "cases") {
        let ns = positive(row, "ns_per_pkt");
        let pass = positive(row, "pass_ns_per_pkt");
        let ratio = positive(row, "ratio_to_pass");
        assert!((ratio - ns / pass).abs() < 1e-6 * ratio, "{row}");
        assert!(num(row, "over_pass_ns").is_finite(), "{row}");
        let key = |f: &str| {
            row[f]
                .as_str()
                .unwrap_or_else(|| panic!("{f} in {row}"))
                .to_string()
        };
        seen.insert(format!(
            "{} {} {} {}",
            key("hook"),
            key("case"),
            key("path"),
            key("method")
        ));
    }
    let mut want = vec![
        "xdp pass baseline repeat",
        "xdp pass baseline single",
        "tc pass baseline repeat",
    ];
    // hook, case, path, method: every case names the path it was checked to take.
    let per_family = [
        ("xdp", "syn", "half_open_insert", "single"),
        ("xdp", "promote", "promote", "single"),
        ("xdp", "hit", "established_hit", "repeat"),
        ("xdp", "miss", "untracked", "repeat"),
        ("xdp", "miss_rule_port", "untracked_rule_port", "repeat"),
        ("xdp", "non_tcp", "not_tcp", "repeat"),
        ("xdp", "heal", "heal", "single"),
        ("tc", "hit", "established_hit", "repeat"),
        ("tc", "syn_ack", "half_open_hit", "repeat"),
        ("tc", "miss", "untracked", "repeat"),
    ];
    let mut named = Vec::new();
    for fam in ["v4", "v6"] {
        for (hook, case, path, method) in per_family {
            named.push(format!("{hook} {case}_{fam} {path} {method}"));
        }
    }
    want.extend(named.iter().map(String::as_str));
    let want: BTreeSet<String> = want.into_iter().map(str::to_string).collect();
    assert_eq!(seen, want, "cases");
}

fn check_scaling(report: &Value) {
    let mut flows_seen = Vec::new();
    for row in rows(report, "scaling") {
        positive(row, "ns_per_pkt");
        positive(row, "pass_ns_per_pkt");
        positive(row, "spread_ns_per_pkt");
        positive(row, "spread_pass_ns_per_pkt");
        let ratio = positive(row, "ratio_to_1k");
        let spread_ratio = positive(row, "spread_ratio_to_1k");
        positive(row, "reaper_tick_ms");
        let flows = row["flows"].as_u64().expect("flows");
        assert!(
            row["max_entries"].as_u64().expect("max_entries") >= flows,
            "{row}"
        );
        assert!(
            row["spread_packets"].as_u64().expect("spread_packets") >= 1,
            "{row}"
        );
        if flows == 1_000 {
            assert_eq!((ratio, spread_ratio), (1.0, 1.0), "{row}");
        }
        flows_seen.push(flows);
    }
    assert_eq!(flows_seen, [1_000, 10_000], "scaling rows of --smoke");
}

fn check_memory(report: &Value) {
    let min = (size_of::<FlowKey>() + size_of::<FlowValue>()) as f64;
    let memory = rows(report, "memory");
    let row = |part: &str, table: &str| {
        memory
            .iter()
            .find(|m| m["part"] == part && m["table"] == table)
            .unwrap_or_else(|| panic!("no {part} {table} row: {memory:?}"))
    };
    // The default established table allocates on demand: while empty it costs its
    // buckets, and each inserted flow at least its key and value.
    let established = row("default", "established");
    assert_eq!(established["allocation"], "on_demand", "{established}");
    assert_eq!(
        established["max_entries"],
        established_max_entries(DEFAULT_CONNTRACK_SIZE),
        "{established}"
    );
    assert_eq!(established["entries"], 10_000, "--smoke fills 10 k flows");
    // The half-open table is preallocated: its memory is all fixed, at least a key and
    // value per slot.
    let half_open = row("default", "half_open");
    assert_eq!(half_open["allocation"], "preallocated", "{half_open}");
    assert_eq!(
        half_open["max_entries"],
        half_open_size(DEFAULT_CONNTRACK_SIZE),
        "{half_open}"
    );
    assert_eq!(half_open["empty_bytes"], half_open["memlock_bytes"]);
    let scaling: Vec<_> = memory.iter().filter(|m| m["part"] == "scaling").collect();
    assert_eq!(
        scaling.len(),
        2,
        "one row per --smoke scaling size: {memory:?}"
    );
    for row in [established, half_open].into_iter().chain(scaling) {
        let empty = row["empty_bytes"].as_u64().expect("empty_bytes");
        let with = row["memlock_bytes"].as_u64().expect("memlock_bytes");
        assert!(empty > 0 && with >= empty, "{row}");
        let per_entry = positive(row, "bytes_per_entry");
        assert!(
            per_entry >= min,
            "{per_entry} bytes per entry < key + value {min}: {row}"
        );
    }
}

#[test]
fn smoke_run_reports_well_formed_sane_json() {
    let report = smoke_report();
    assert_eq!(report["schema"], 2);
    assert_eq!(report["mode"], "smoke");
    assert!(!report["kernel"].as_str().expect("kernel").is_empty());
    assert!(report["cpus"].as_u64().expect("cpus") >= 1);
    assert!(report["rounds"].as_u64().expect("rounds") >= 5);
    assert_eq!(report["flow_key_bytes"], size_of::<FlowKey>());
    assert_eq!(report["flow_value_bytes"], size_of::<FlowValue>());
    check_cases(&report);
    check_scaling(&report);
    check_memory(&report);
    let target = &report["target"];
    assert_eq!(target["metric"], "hit_1m_over_1k");
    assert_eq!(target["limit"], 1.3);
    // --smoke stops at 10 k flows: the 1 M ratio is not measured.
    assert!(
        target["repeat"].is_null() && target["single"].is_null(),
        "{target}"
    );
}
