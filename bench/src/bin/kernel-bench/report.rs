//! The result: one JSON object (schema in `main.rs`) or a human-readable table.

use serde::Serialize;

use crate::{
    cases::Path,
    measure::{median, Hook, Method, Paired},
};

/// The hit-path scaling target: cost at 1 M flows over cost at 1 k (reported, not asserted).
pub const TARGET_LIMIT: f64 = 1.3;

/// Everything `kernel-bench` measured.
#[derive(Serialize)]
pub struct Report {
    /// Version of this schema.
    pub schema: u32,
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// `full`, `quick` or `smoke`.
    pub mode: &'static str,
    /// Rounds per measurement (medians are over these).
    pub rounds: usize,
    /// `size_of::<FlowKey>()`.
    pub flow_key_bytes: usize,
    /// `size_of::<FlowValue>()`.
    pub flow_value_bytes: usize,
    /// Per-packet cost of each case, and of the baselines (`case` = `pass`).
    pub cases: Vec<CaseRow>,
    /// Hit-path cost against the number of tracked flows.
    pub scaling: Vec<ScaleRow>,
    /// Conntrack table memory: the default tables, then each scaling table.
    pub memory: Vec<MemoryRow>,
    /// The 1 M / 1 k hit-path ratio against its target.
    pub target: Target,
}

/// One case's per-packet cost next to its hook's baseline.
#[derive(Serialize)]
pub struct CaseRow {
    /// `xdp` or `tc`.
    pub hook: &'static str,
    /// `pass`, `syn_v4`, `promote_v4`, `hit_v6`, …
    pub case: String,
    /// The code path it times: `baseline`, `half_open_insert`, `promote`,
    /// `established_hit`, `half_open_hit`, `untracked`, `not_tcp`.
    pub path: &'static str,
    /// `repeat` or `single`.
    pub method: &'static str,
    /// Median ns per packet.
    pub ns_per_pkt: f64,
    /// Median ns per packet of the empty program of the same hook, same rounds.
    pub pass_ns_per_pkt: f64,
    /// `ns_per_pkt / pass_ns_per_pkt`.
    pub ratio_to_pass: f64,
    /// `ns_per_pkt - pass_ns_per_pkt`: what the program adds to running any program.
    pub over_pass_ns: f64,
}

impl CaseRow {
    /// A row from a paired measurement.
    pub fn new(hook: Hook, case: &str, path: Path, method: Method, paired: Paired) -> Self {
        CaseRow {
            hook: hook.name(),
            case: case.to_string(),
            path: path.name(),
            method: method.name(),
            ns_per_pkt: paired.prog_ns,
            pass_ns_per_pkt: paired.pass_ns,
            ratio_to_pass: paired.prog_ns / paired.pass_ns,
            over_pass_ns: paired.prog_ns - paired.pass_ns,
        }
    }
}

/// Rows `pass` for each hook and method: the median of the baseline over all its cases.
pub fn baseline_rows(cases: &[CaseRow]) -> Vec<CaseRow> {
    let mut rows = Vec::new();
    for hook in [Hook::Xdp, Hook::Tc] {
        for method in [Method::Repeat, Method::Single] {
            let pass: Vec<f64> = cases
                .iter()
                .filter(|c| c.hook == hook.name() && c.method == method.name())
                .map(|c| c.pass_ns_per_pkt)
                .collect();
            if !pass.is_empty() {
                let ns = median(&pass);
                let paired = Paired {
                    prog_ns: ns,
                    pass_ns: ns,
                };
                rows.push(CaseRow::new(hook, "pass", Path::Baseline, method, paired));
            }
        }
    }
    rows
}

/// The XDP hit path with a table of `flows` tracked flows, measured both ways.
#[derive(Serialize)]
pub struct ScaleRow {
    /// Tracked flows in the table.
    pub flows: u32,
    /// The established capacity (`--conntrack-size`): `flows` plus 25 % headroom.
    pub max_entries: u32,
    /// Median ns per packet, repeat mode on one hot flow.
    pub ns_per_pkt: f64,
    /// Median ns per packet of the XDP baseline, same rounds, repeat mode.
    pub pass_ns_per_pkt: f64,
    /// `ns_per_pkt` over that of the smallest table (1 k flows).
    pub ratio_to_1k: f64,
    /// Timed packets of the spread measurement (single mode, each of a random flow).
    pub spread_packets: u32,
    /// Median ns per packet, single mode over random flows.
    pub spread_ns_per_pkt: f64,
    /// Median ns per packet of the XDP baseline, same rounds, single mode.
    pub spread_pass_ns_per_pkt: f64,
    /// `spread_ns_per_pkt` over that of the smallest table.
    pub spread_ratio_to_1k: f64,
    /// Median wall time of one pass of the loader's reaper over the filled tables
    /// (`reaper::reap`: both tables read in batches, the kernel asked, nothing removed),
    /// milliseconds.
    pub reaper_tick_ms: f64,
}

impl ScaleRow {
    /// A row from the two measurements (ratios are filled in once all sizes are done).
    pub fn new(
        flows: u32,
        max_entries: u32,
        hot: Paired,
        spread_packets: usize,
        spread: Paired,
        reaper_tick_ms: f64,
    ) -> Self {
        ScaleRow {
            flows,
            max_entries,
            ns_per_pkt: hot.prog_ns,
            pass_ns_per_pkt: hot.pass_ns,
            ratio_to_1k: f64::NAN,
            spread_packets: spread_packets as u32,
            spread_ns_per_pkt: spread.prog_ns,
            spread_pass_ns_per_pkt: spread.pass_ns,
            spread_ratio_to_1k: f64::NAN,
            reaper_tick_ms,
        }
    }
}

/// Kernel memory of one conntrack table, from the `memlock` of its fdinfo.
#[derive(Serialize)]
pub struct MemoryRow {
    /// `default` (the tables of the default `--conntrack-size`) or `scaling` (the
    /// established table of a scaling row).
    pub part: &'static str,
    /// `established` or `half_open`.
    pub table: &'static str,
    /// `on_demand` (`BPF_F_NO_PREALLOC`: entries allocated as they are inserted) or
    /// `preallocated`.
    pub allocation: &'static str,
    /// The table's `max_entries`.
    pub max_entries: u32,
    /// Kernel memory of the table with no entry: the fixed cost (buckets, locks, and
    /// for a preallocated table every entry).
    pub empty_bytes: u64,
    /// Entries inserted for the measurement (0 for a preallocated table).
    pub entries: u32,
    /// Kernel memory with `entries` inserted.
    pub memlock_bytes: u64,
    /// What one entry costs: `(memlock_bytes - empty_bytes) / entries` on demand,
    /// `empty_bytes / max_entries` preallocated.
    pub bytes_per_entry: f64,
}

/// The scaling target: `hit_1m_over_1k` ≤ `limit`, for each measurement (`null` if 1 M
/// or 1 k flows were not measured).
#[derive(Serialize)]
pub struct Target {
    /// What is compared: `hit_1m_over_1k`.
    pub metric: &'static str,
    /// The limit, 1.3.
    pub limit: f64,
    /// `ratio_to_1k` of the 1 M row (one hot flow).
    pub repeat: Option<f64>,
    /// `spread_ratio_to_1k` of the 1 M row (random flows).
    pub spread: Option<f64>,
}

impl Target {
    /// The target from the scaling rows.
    pub fn from_rows(rows: &[ScaleRow]) -> Self {
        let million = rows
            .iter()
            .find(|r| r.flows == 1_000_000)
            .filter(|_| rows.iter().any(|r| r.flows == 1_000));
        Target {
            metric: "hit_1m_over_1k",
            limit: TARGET_LIMIT,
            repeat: million.map(|r| r.ratio_to_1k),
            spread: million.map(|r| r.spread_ratio_to_1k),
        }
    }
}

/// Prints the report as tables.
pub fn print_human(report: &Report) {
    println!(
        "kernel {} · {} CPUs · {} mode · median of {} rounds · FlowKey {} B + FlowValue {} B",
        report.kernel,
        report.cpus,
        report.mode,
        report.rounds,
        report.flow_key_bytes,
        report.flow_value_bytes
    );
    println!("\nper-packet cost (BPF_PROG_TEST_RUN), against the empty program of the same hook");
    println!(
        "{:<5} {:<12} {:<17} {:<7} {:>9} {:>9} {:>7} {:>9}",
        "hook", "case", "path", "method", "ns/pkt", "pass ns", "×pass", "+ns"
    );
    for c in &report.cases {
        println!(
            "{:<5} {:<12} {:<17} {:<7} {:>9.1} {:>9.1} {:>7.2} {:>9.1}",
            c.hook,
            c.case,
            c.path,
            c.method,
            c.ns_per_pkt,
            c.pass_ns_per_pkt,
            c.ratio_to_pass,
            c.over_pass_ns
        );
    }
    println!("\nXDP hit path against tracked flows: one hot flow (repeat), random flows (spread)");
    println!(
        "{:>9} {:>11} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>10}",
        "flows",
        "max_entries",
        "ns/pkt",
        "pass ns",
        "×1k",
        "spread ns",
        "pass ns",
        "×1k",
        "reaper ms"
    );
    for s in &report.scaling {
        println!(
            "{:>9} {:>11} {:>9.1} {:>9.1} {:>6.2} {:>9.1} {:>9.1} {:>6.2} {:>10.1}",
            s.flows,
            s.max_entries,
            s.ns_per_pkt,
            s.pass_ns_per_pkt,
            s.ratio_to_1k,
            s.spread_ns_per_pkt,
            s.spread_pass_ns_per_pkt,
            s.spread_ratio_to_1k,
            s.reaper_tick_ms
        );
    }
    println!("\nconntrack table memory (fdinfo memlock)");
    println!(
        "{:<8} {:<12} {:<12} {:>11} {:>12} {:>9} {:>13} {:>10}",
        "part", "table", "allocation", "max_entries", "empty bytes", "entries", "bytes", "B/entry"
    );
    for m in &report.memory {
        println!(
            "{:<8} {:<12} {:<12} {:>11} {:>12} {:>9} {:>13} {:>10.1}",
            m.part,
            m.table,
            m.allocation,
            m.max_entries,
            m.empty_bytes,
            m.entries,
            m.memlock_bytes,
            m.bytes_per_entry
        );
    }
    let verdict = |ratio: Option<f64>| match ratio {
        Some(r) if r <= TARGET_LIMIT => format!("{r:.2} (met)"),
        Some(r) => format!("{r:.2} (not met)"),
        None => "not measured".to_string(),
    };
    println!(
        "\ntarget hit at 1M flows ≤ {TARGET_LIMIT}× hit at 1k: repeat {}, spread {}",
        verdict(report.target.repeat),
        verdict(report.target.spread)
    );
}
