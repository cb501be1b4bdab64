//! The result files: `bench/results/<name>.json` (everything, for tools), `<name>.md` (the
//! tables the README quotes) and `<name>.svg` (the chart).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::costs::Costs;
use super::costs_report;
use super::machine::Machine;
use super::plan::{Config, Load, Params};
use super::stats::{median, Cell, Run, Target};
use super::svg;

/// Everything one benchmark produced.
#[derive(Debug, Serialize)]
pub struct Report {
    pub name: String,
    /// UTC start time, RFC 3339.
    pub started_at: String,
    pub elapsed_s: f64,
    pub machine: Machine,
    pub params: Params,
    pub configs: Vec<Config>,
    pub loads: Vec<LoadInfo>,
    pub runs: Vec<Run>,
    pub summary: Vec<Cell>,
    /// The cost loads (idle-capacity, conn-cpu), summarized apart from the throughput ones.
    pub costs: Costs,
    pub targets: Vec<Target>,
    /// `kernel-bench --json` output (see bench/src/bin/kernel-bench/main.rs for its schema).
    pub kernel: Option<serde_json::Value>,
    /// `sniff-bench --json` output (bench/src/bin/sniff-bench.rs).
    pub relay: Option<serde_json::Value>,
    /// Runs or steps that failed; a benchmark with failures exits non-zero.
    pub failures: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct LoadInfo {
    pub id: Load,
    pub unit: &'static str,
}

impl LoadInfo {
    pub fn of(load: Load) -> Self {
        Self {
            id: load,
            unit: load.unit(),
        }
    }
}

/// Writes the three files under `dir`; returns their paths.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let base = dir.join(&report.name);
    let mut files = vec![
        (
            base.with_extension("json"),
            serde_json::to_string_pretty(report)? + "\n",
        ),
        (base.with_extension("md"), markdown(report)),
    ];
    if !report.summary.is_empty() {
        files.push((
            base.with_extension("svg"),
            svg::chart(&report.name, &report.summary),
        ));
    }
    if let Some(chart) = costs_report::chart(&report.name, &report.costs) {
        files.push((dir.join(format!("{}-costs.svg", report.name)), chart));
    }
    let mut written = Vec::new();
    for (path, text) in files {
        fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The Markdown report: setting, throughput and latency tables, targets, kernel cost.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let m = &report.machine;
    let p = &report.params;
    let _ = writeln!(md, "# redirector benchmark `{}`\n", report.name);
    let _ = writeln!(
        md,
        "{} · mode `{}` · {} repetition(s) × {} s per load, interleaved · {:.0} s in all\n",
        report.started_at,
        p.mode.name(),
        p.repetitions,
        p.load_time.as_secs(),
        report.elapsed_s
    );
    let _ = writeln!(
        md,
        "Machine: {} · {} core(s) · {} GiB · {} · kernel {} · redirector {}\n",
        m.cpu, m.cores, m.memory_gib, m.os, m.kernel, m.redirector
    );
    let tools: Vec<String> = m.tools.values().cloned().collect();
    let _ = writeln!(md, "Tools: {}\n", tools.join(" · "));

    if !report.summary.is_empty() {
        throughput_table(&mut md, report);
        latency_table(&mut md, report);
        cpu_table(&mut md, report);
    }
    costs_report::markdown(&mut md, &report.costs, &report.params);
    targets_list(&mut md, &report.targets);
    if let Some(kernel) = &report.kernel {
        kernel_tables(&mut md, kernel);
    }
    if let Some(relay) = &report.relay {
        relay_table(&mut md, relay);
    }
    health(&mut md, report);
    md
}

fn loads_present(report: &Report) -> Vec<Load> {
    Load::ALL
        .into_iter()
        .filter(|l| report.summary.iter().any(|c| c.load == *l))
        .collect()
}

fn cell(report: &Report, load: Load, config: Config) -> Option<&Cell> {
    report
        .summary
        .iter()
        .find(|c| c.load == load && c.config == config)
}

fn throughput_table(md: &mut String, report: &Report) {
    let loads = loads_present(report);
    let _ = writeln!(
        md,
        "## Throughput: median (ratio to direct)\n\nHigher is better. `n/a`: the \
         configuration cannot carry that traffic (HTTP proxies and iperf3).\n"
    );
    let header: Vec<String> = loads
        .iter()
        .map(|l| format!("{l} ({})", l.unit()))
        .collect();
    config_rows(
        md,
        report,
        &loads,
        &header,
        |load, config, cell| match cell {
            Some(c) => format!(
                "{} ({})",
                figure(c.median),
                c.ratio_to_direct.map_or("–".into(), |r| format!("{r:.2}"))
            ),
            None => no_figure(load, config),
        },
    );
}

/// What a table shows for a pair without a figure: `n/a` when the configuration cannot
/// carry the load, `failed` when it could but no run produced a figure.
fn no_figure(load: Load, config: Config) -> String {
    if config.carries(load) {
        "failed".into()
    } else {
        "n/a".into()
    }
}

/// A table with one row per configuration and one column per load: `text` writes each
/// cell from the summary cell of that pair (if any).
fn config_rows(
    md: &mut String,
    report: &Report,
    loads: &[Load],
    header: &[String],
    text: impl Fn(Load, Config, Option<&Cell>) -> String,
) {
    let _ = writeln!(md, "| configuration | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(loads.len()));
    for &config in &report.configs {
        let row: Vec<String> = loads
            .iter()
            .map(|&load| text(load, config, cell(report, load, config)))
            .collect();
        let _ = writeln!(md, "| {config} | {} |", row.join(" | "));
    }
    md.push('\n');
}

fn latency_table(md: &mut String, report: &Report) {
    let loads: Vec<Load> = loads_present(report)
        .into_iter()
        .filter(|l| l.has_latency())
        .collect();
    if loads.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Latency: median p50 / p99 in µs (p99 ratio to direct)\n\nLower is better.\n"
    );
    let header: Vec<String> = loads.iter().map(ToString::to_string).collect();
    config_rows(md, report, &loads, &header, |_, _, cell| match cell {
        Some(Cell {
            p50_us: Some(p50),
            p99_us: Some(p99),
            p99_ratio_to_direct,
            ..
        }) => format!(
            "{p50:.0} / {p99:.0} ({})",
            p99_ratio_to_direct.map_or("–".into(), |r| format!("{r:.2}"))
        ),
        _ => "n/a".into(),
    });
}

fn cpu_table(md: &mut String, report: &Report) {
    let loads = loads_present(report);
    let _ = writeln!(
        md,
        "## CPU of the configuration's own processes (median % of one core during the load)\n\n\
         Lower is better. User and system time of the processes the configuration starts \
         (loader, proxy) and their children, from /proc; `–`: it starts none. In-kernel work \
         (netfilter rules, XDP and tc programs) is attributable to no process and is not in \
         this table, so a redirector row shows only its loader.\n"
    );
    let header: Vec<String> = loads.iter().map(ToString::to_string).collect();
    config_rows(md, report, &loads, &header, cpu_text);
}

/// One cell of the CPU table.
fn cpu_text(load: Load, config: Config, cell: Option<&Cell>) -> String {
    match cell {
        Some(Cell {
            config_cpu_pct: Some(pct),
            ..
        }) => format!("{pct:.1}"),
        Some(_) => "–".into(),
        None => no_figure(load, config),
    }
}

fn targets_list(md: &mut String, targets: &[Target]) {
    let _ = writeln!(md, "## Targets\n");
    for t in targets {
        let mark = match t.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let value = t.value.map_or("–".into(), |v| format!("{v:.3}"));
        let note = if t.note.is_empty() {
            String::new()
        } else {
            format!(" — {}", t.note)
        };
        let _ = writeln!(md, "- {mark}: {} (measured {value}){note}", t.target);
    }
    md.push('\n');
}

/// One Markdown table row per element of `rows`: a text column for each string field and
/// a number with the given digits for each numeric one ("–" where a field is missing).
fn json_rows(md: &mut String, rows: &serde_json::Value, columns: &[(&str, usize)]) {
    for row in rows.as_array().into_iter().flatten() {
        let cells: Vec<String> = columns
            .iter()
            .map(|&(key, digits)| match &row[key] {
                serde_json::Value::String(text) => text.clone(),
                value => value
                    .as_f64()
                    .map_or("–".into(), |v| format!("{v:.digits$}")),
            })
            .collect();
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
}

/// Renders the kernel-bench JSON; fields it lacks are shown as "–".
fn kernel_tables(md: &mut String, kernel: &serde_json::Value) {
    let _ = writeln!(
        md,
        "## Kernel-side cost (BPF_PROG_TEST_RUN, median ns per packet)\n\n\
         | hook | case | path | method | ns/packet | pass-through ns/packet | ratio to pass-through |\n\
         |---|---|---|---|---:|---:|---:|"
    );
    json_rows(
        md,
        &kernel["cases"],
        &[
            ("hook", 0),
            ("case", 0),
            ("path", 0),
            ("method", 0),
            ("ns_per_pkt", 1),
            ("pass_ns_per_pkt", 1),
            ("ratio_to_pass", 2),
        ],
    );
    let _ = writeln!(
        md,
        "\n| tracked flows | hit ns/packet, one hot flow | ratio to 1 k | \
         hit ns/packet, random flows | ratio to 1 k |\n|---:|---:|---:|---:|---:|"
    );
    json_rows(
        md,
        &kernel["scaling"],
        &[
            ("flows", 0),
            ("ns_per_pkt", 1),
            ("ratio_to_1k", 2),
            ("spread_ns_per_pkt", 1),
            ("spread_ratio_to_1k", 2),
        ],
    );
    let _ = writeln!(
        md,
        "\nConntrack table memory (fdinfo `memlock`). On demand: bytes per entry = (memory with \
         the entries − empty) / entries; preallocated: empty / max_entries.\n\n\
         | part | table | allocation | max_entries | empty (bytes) | entries | with entries (bytes) | bytes per entry |\n\
         |---|---|---|---:|---:|---:|---:|---:|"
    );
    json_rows(
        md,
        &kernel["memory"],
        &[
            ("part", 0),
            ("table", 0),
            ("allocation", 0),
            ("max_entries", 0),
            ("empty_bytes", 0),
            ("entries", 0),
            ("memlock_bytes", 0),
            ("bytes_per_entry", 1),
        ],
    );
    md.push('\n');
}

/// Renders the sniff-bench JSON; fields it lacks are shown as "–".
fn relay_table(md: &mut String, relay: &serde_json::Value) {
    let number = |key: &str| relay[key].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        md,
        "## Sniffing proxy relay (`sniff-bench`, loopback, median of {} round(s))\n\n\
         Bulk upload of {:.0} MiB and {} ping-pongs of {} bytes through `redirector sniff`; \
         `direct` is the same without the proxy.\n\n\
         | relay | bulk MiB/s | proxy CPU s per GiB | ping-pong RTT µs | proxy CPU µs per round trip |\n\
         |---|---:|---:|---:|---:|",
        number("rounds"),
        number("bytes") / f64::from(1 << 20),
        number("pings"),
        number("size"),
    );
    json_rows(
        md,
        &relay["results"],
        &[
            ("relay", 0),
            ("bulk_mib_per_s", 0),
            ("proxy_cpu_s_per_gib", 2),
            ("pingpong_rtt_us", 1),
            ("proxy_cpu_us_per_rtt", 1),
        ],
    );
    md.push('\n');
}

fn health(md: &mut String, report: &Report) {
    let csum: u64 = report.runs.iter().map(|r| r.health.csum_errors).sum();
    let _ = writeln!(
        md,
        "## Health\n\nTCP checksum errors over all runs: {csum} (must be 0).\n\n\
         `errors` adds up what the generators count: wrk socket errors (with \
         `Connection: close` wrk counts the server's closes as read errors), wsload errors and \
         iperf3 retransmits.\n\n\
         {steal}\n\n\
         | configuration | SYN retransmits | errors | steal % (median / max) |\n|---|---:|---:|---:|",
        steal = steal_summary(report),
    );
    for config in &report.configs {
        // From the runs, not the throughput summary, so the cost loads count too.
        let mine = || report.runs.iter().filter(|r| r.config == *config);
        let syn: u64 = mine().map(|r| r.health.syn_retransmits).sum();
        let errors: u64 = mine()
            .filter_map(|r| r.measurement.as_ref())
            .map(|m| m.errors)
            .sum();
        let steal: Vec<f64> = report
            .runs
            .iter()
            .filter(|r| r.config == *config)
            .filter_map(|r| r.steal_pct)
            .collect();
        let steal = match median_and_max(&steal) {
            Some((median, max)) => format!("{median:.1} / {max:.1}"),
            None => "–".to_owned(),
        };
        let _ = writeln!(md, "| {config} | {syn} | {errors} | {steal} |");
    }
    if !report.failures.is_empty() {
        let _ = writeln!(md, "\nFailures:\n");
        for failure in &report.failures {
            let _ = writeln!(md, "- {failure}");
        }
    }
    md.push('\n');
}

/// One sentence on the CPU time the hypervisor took during the loads (a virtual machine's
/// other tenants): the noise the repetitions' spread partly comes from.
fn steal_summary(report: &Report) -> String {
    let steal: Vec<f64> = report.runs.iter().filter_map(|r| r.steal_pct).collect();
    let Some((median, max)) = median_and_max(&steal) else {
        return "CPU steal: not measured.".to_owned();
    };
    let heavy = steal.iter().filter(|s| **s >= STEAL_HEAVY_PCT).count();
    format!(
        "CPU steal (time the hypervisor gave to other guests while this machine wanted to run) \
         during the loads: median {median:.1} %, max {max:.1} %; {heavy} of {} runs at \
         {STEAL_HEAVY_PCT:.0} % or more. Steal lowers whichever configuration it hits; \
         interleaving spreads it over all of them.",
        steal.len()
    )
}

/// The median and the largest of `values`; `None` for none.
fn median_and_max(values: &[f64]) -> Option<(f64, f64)> {
    Some((median(values)?, values.iter().copied().reduce(f64::max)?))
}

/// Steal at which a run is called out in the health summary.
const STEAL_HEAVY_PCT: f64 = 10.0;

/// A figure with a sensible number of digits for its size.
pub fn figure(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loads::Measurement;
    use crate::netstat::Health;
    use crate::plan::Mode;
    use crate::stats;

    fn run(config: Config, load: Load, value: f64, p99: Option<f64>) -> Run {
        let config_cpu_pct = (config == Config::Nginx).then_some(42.34);
        // Steal only in nginx's and direct's runs: iptables' row has none to show.
        let steal_pct = match config {
            Config::Nginx => Some(12.5),
            Config::Direct => Some(0.5),
            _ => None,
        };
        Run {
            repetition: 1,
            config,
            load,
            client_addr: String::new(),
            measurement: Some(Measurement {
                value,
                p50_us: p99.map(|p| p / 2.0),
                p99_us: p99,
                ..Measurement::default()
            }),
            error: None,
            health: Health::default(),
            config_cpu_pct,
            steal_pct,
        }
    }

    #[test]
    fn tables_have_a_row_per_configuration_and_say_why_a_cell_is_empty() {
        let runs = vec![
            run(Config::Direct, Load::HttpKeepAlive, 100.0, Some(1000.0)),
            run(Config::Direct, Load::Bulk, 10.0, None),
            run(Config::Nginx, Load::HttpKeepAlive, 50.0, Some(2000.0)),
            run(Config::Iptables, Load::HttpKeepAlive, 90.0, Some(1100.0)),
        ];
        let summary = stats::summarize(&runs);
        let report = Report {
            name: "t".into(),
            started_at: String::new(),
            elapsed_s: 0.0,
            machine: Machine {
                os: String::new(),
                kernel: String::new(),
                cpu: String::new(),
                cores: 2,
                memory_gib: 1.0,
                redirector: String::new(),
                tools: Default::default(),
            },
            params: Params::for_mode(Mode::Smoke),
            configs: vec![Config::Direct, Config::Iptables, Config::Nginx],
            loads: vec![],
            runs,
            summary,
            costs: Costs::default(),
            targets: vec![],
            kernel: None,
            relay: None,
            failures: vec![],
        };
        let md = markdown(&report);
        assert!(md.contains("| direct | 100 (1.00) | 10.0 (1.00) |"), "{md}");
        // iptables could carry bulk but has no figure: failed; nginx cannot: n/a.
        assert!(md.contains("| iptables | 90.0 (0.90) | failed |"), "{md}");
        assert!(md.contains("| nginx | 50.0 (0.50) | n/a |"), "{md}");
        assert!(md.contains("| nginx | 1000 / 2000 (2.00) |"), "{md}");
        let cpu = md.split("## CPU").nth(1).unwrap();
        // Rules only: `–`, not 0; nginx's own processes: its figure.
        assert!(cpu.contains("| direct | – | – |"), "{md}");
        assert!(cpu.contains("| iptables | – | failed |"), "{md}");
        assert!(cpu.contains("| nginx | 42.3 | n/a |"), "{md}");
        let health = md.split("## Health").nth(1).unwrap();
        assert!(health.contains("| direct | 0 | 0 | 0.5 / 0.5 |"), "{md}");
        assert!(health.contains("| iptables | 0 | 0 | – |"), "{md}");
        assert!(health.contains("| nginx | 0 | 0 | 12.5 / 12.5 |"), "{md}");
        assert!(
            health.contains("median 0.5 %, max 12.5 %; 1 of 3 runs"),
            "{md}"
        );
    }

    #[test]
    fn figures_keep_three_significant_digits_or_more() {
        assert_eq!(figure(62500.4), "62500");
        assert_eq!(figure(25.04), "25.0");
        assert_eq!(figure(2.5), "2.50");
    }

    #[test]
    fn kernel_tables_tolerate_missing_fields() {
        let mut md = String::new();
        let kernel = serde_json::json!({
            "cases": [{"hook": "xdp", "case": "hit_v4", "ns_per_pkt": 41.5}],
            "scaling": [{"flows": 1000, "ns_per_pkt": 40.0, "ratio_to_1k": 1.0}],
        });
        kernel_tables(&mut md, &kernel);
        assert!(
            md.contains("| xdp | hit_v4 | – | – | 41.5 | – | – |"),
            "{md}"
        );
        assert!(md.contains("| 1000 | 40.0 | 1.00 | – | – |"), "{md}");
    }

    #[test]
    fn kernel_memory_rows_show_each_table() {
        let mut md = String::new();
        let kernel = serde_json::json!({"memory": [{
            "part": "default", "table": "established", "allocation": "on_demand",
            "max_entries": 1114112, "empty_bytes": 33555328, "entries": 100000,
            "memlock_bytes": 46355328, "bytes_per_entry": 128.0
        }]});
        kernel_tables(&mut md, &kernel);
        assert!(
            md.contains(
                "| default | established | on_demand | 1114112 | 33555328 | 100000 | 46355328 | 128.0 |"
            ),
            "{md}"
        );
    }
}
