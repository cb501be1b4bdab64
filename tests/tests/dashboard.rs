//! dist/grafana/redirector.json: the Grafana dashboard loads as a dashboard (panels with
//! unique ids, Prometheus targets on the `$datasource` variable), and every metric its
//! queries use — with every label value they match on — is exported by a running loader
//! (with its sniffing proxy) at `/metrics`.

use std::{collections::BTreeSet, path::PathBuf};

use redirector_tests::fixtures::*;
use serde_json::Value;
use testkit::netns::Topology;

/// The dashboard of the repository.
fn dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana/redirector.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every query of the dashboard's panels.
fn exprs(dashboard: &Value) -> Vec<String> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect()
}

/// One metric a query selects, and the label values it matches on: (`label`, values) for
/// each `label="v"` or `label=~"a|b"` that names no dashboard variable.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    metric: String,
    matchers: Vec<(String, Vec<String>)>,
}

/// The selectors of `expr`: each `redirector_…` name, with its `{…}` matchers if any.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("redirector_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let metric = tail[..end].to_string();
        let mut matchers = Vec::new();
        let after = &tail[end..];
        let mut consumed = end;
        if let Some(body) = after.strip_prefix('{') {
            let close = body.find('}').expect("unclosed {");
            for matcher in body[..close].split(',').map(str::trim) {
                let (label, op_value) = matcher
                    .split_once('=')
                    .unwrap_or_else(|| panic!("matcher {matcher:?} in {expr}"));
                let value = op_value.trim_start_matches('~').trim_matches('"');
                if !value.contains('$') {
                    let values = value.split('|').map(str::to_string).collect();
                    matchers.push((label.trim().to_string(), values));
                }
            }
            consumed += close + 2;
        }
        found.push(Selector { metric, matchers });
        rest = &tail[consumed..];
    }
    found
}

/// Whether a sample line of `body` is of `metric` and has `label="value"`.
fn exported(body: &str, metric: &str, label: Option<(&str, &str)>) -> bool {
    body.lines().filter(|l| !l.starts_with('#')).any(|line| {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        line[..name_end] == *metric
            && label.is_none_or(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
    })
}

/// The parser reads names and matchers the way the dashboard writes them.
#[test]
fn selectors_are_read_with_their_matchers() {
    let got = selectors(
        "sum by (event) (rate(redirector_flow_events_total{iface=~\"$iface\", \
         event=~\"healed_ingress|rst_seen\"}[$__rate_interval])) / redirector_build_info",
    );
    assert_eq!(
        got,
        [
            Selector {
                metric: "redirector_flow_events_total".into(),
                matchers: vec![(
                    "event".into(),
                    vec!["healed_ingress".into(), "rst_seen".into()]
                )],
            },
            Selector {
                metric: "redirector_build_info".into(),
                matchers: vec![],
            },
        ]
    );
}

/// The dashboard is a Grafana dashboard with a panel for each concern of the loader.
#[test]
fn the_dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "redirector");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are not unique");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        for target in panel["targets"].as_array().unwrap() {
            assert!(target["refId"].is_string() && target["expr"].is_string());
        }
    }
    let all = exprs(&dashboard).join("\n");
    for concern in [
        "redirector_rule_flows_new_total",
        "redirector_packets_passed_total",
        "redirector_conntrack_established_entries",
        "table_full",
        "healed_ingress",
        "redirector_sniff_connections_total",
    ] {
        assert!(all.contains(concern), "no query uses {concern}");
    }
}

/// A loader with its sniffing proxy and `--metrics` exports every metric the dashboard
/// queries, with every label value the queries match on.
#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let _serial = serial();
    let topo = Topology::new("dash");
    let _echo = start_echo(&topo, &[]);
    let mut args = SNIFF_RUN_ARGS.to_vec();
    args.extend(["--metrics", "127.0.0.1:9464"]);
    let loader = start_loader(&topo, &args);
    assert_echo(&topo, &topo.url("ws", false, 80));
    let out = topo
        .server
        .cmd("curl")
        .args(["-s", "--max-time", "5", "http://127.0.0.1:9464/metrics"])
        .output()
        .unwrap();
    let body = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{body}");
    let mut missing = Vec::new();
    for expr in exprs(&dashboard()) {
        for selector in selectors(&expr) {
            if !exported(&body, &selector.metric, None) {
                missing.push(selector.metric.clone());
            }
            for (label, values) in &selector.matchers {
                for value in values {
                    if !exported(&body, &selector.metric, Some((label, value))) {
                        missing.push(format!("{}{{{label}=\"{value}\"}}", selector.metric));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queried by the dashboard, not exported: {missing:?}\n{body}"
    );
    stop_loader(loader);
}
