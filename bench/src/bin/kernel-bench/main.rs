//! `kernel-bench`: per-packet cost of the redirector's eBPF programs with
//! `BPF_PROG_TEST_RUN`, next to empty programs of the same hooks timed in the same run,
//! the hit path against the size of the conntrack table, and the conntrack tables'
//! kernel memory (per established flow, measured by filling the on-demand table).
//!
//! Run as root: `kernel-bench [--json] [--quick] [--smoke]`. With `--attach-pass IFACE
//! [--hook xdp|xdp-generic|tc]` it measures nothing: it attaches the empty programs like
//! `redirector run` attaches the real ones and waits for SIGTERM (see `attach.rs`). Default: full run, 1 M flows
//! included (about a minute); `--quick`: fewer rounds and shorter calls (under a minute);
//! `--smoke`: tiny calls and 1 k / 10 k flows only (seconds, for the test suite). Progress
//! goes to stderr; the result to stdout, as tables or, with `--json`, as one JSON object.
//! Nothing is asserted about speed; every case is first checked to take the path it names
//! and any mismatch (output frame, verdict, counter) aborts with exit status 1.
//!
//! How packets are timed (`repeat` and `single` methods) is explained in `measure.rs`, the
//! cases and the fixed-point flow in `cases.rs`, the scaling part (one hot flow, and the
//! spread over random flows) in `scaling.rs`, the memory figures in `memory.rs`.
//!
//! # JSON schema (`schema` 2)
//!
//! ```text
//! {
//!   "schema": 2,
//!   "kernel": "6.18.44",            uname -r
//!   "cpus": 2,
//!   "mode": "full" | "quick" | "smoke",
//!   "rounds": 7,                    rounds per measurement; every ns figure is a median
//!   "flow_key_bytes": 36, "flow_value_bytes": 32,
//!   "cases": [ {
//!       "hook": "xdp" | "tc",
//!       "case": "pass" | "syn_v4" | "promote_v4" | "hit_v4" | "syn_ack_v4" | "miss_v4"
//!               | "non_tcp_v4" | … "_v6",
//!       "path": "baseline" | "half_open_insert" | "promote" | "established_hit"
//!               | "half_open_hit" | "untracked" | "not_tcp",
//!       "method": "repeat" | "single",
//!       "ns_per_pkt": f64, "pass_ns_per_pkt": f64,
//!       "ratio_to_pass": f64,       ns_per_pkt / pass_ns_per_pkt
//!       "over_pass_ns": f64         ns_per_pkt - pass_ns_per_pkt
//!   } ],                            xdp: pass, syn, promote, hit, miss, non_tcp;
//!                                   tc: pass, hit, syn_ack, miss
//!   "scaling": [ {                  one row per table size, 1 k first
//!       "flows": 1000, "max_entries": 1250,
//!       "ns_per_pkt": f64, "pass_ns_per_pkt": f64,          repeat mode, one hot flow
//!       "ratio_to_1k": f64,                                 over the 1 k row's
//!       "spread_packets": u32,                              per round
//!       "spread_ns_per_pkt": f64, "spread_pass_ns_per_pkt": f64,
//!       "spread_ratio_to_1k": f64   single mode, a random tracked flow per packet
//!       "reaper_tick_ms": f64       one pass of the loader's reaper over the table
//!   } ],
//!   "memory": [ {                   default tables first, then one per scaling row
//!       "part": "default" | "scaling",
//!       "table": "established" | "half_open",
//!       "allocation": "on_demand" | "preallocated",
//!       "max_entries": u32,
//!       "empty_bytes": u64,         memlock of the empty table: its fixed cost
//!       "entries": u32,             flows inserted (0 when preallocated)
//!       "memlock_bytes": u64,       memlock with them
//!       "bytes_per_entry": f64      on demand: (memlock - empty) / entries;
//!   } ],                            preallocated: empty / max_entries
//!   "target": { "metric": "hit_1m_over_1k", "limit": 1.3,
//!               "repeat": f64 | null, "spread": f64 | null }   null without 1 M flows
//! }
//! ```

mod attach;
mod cases;
mod flows;
mod heal;
mod measure;
mod memory;
mod report;
mod scaling;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser;
use redirector::{dataplane::Dataplane, rules::RedirectRule};
use redirector_common::maps::{FlowKey, FlowValue, DEFAULT_CONNTRACK_SIZE};
use redirector_tests::fixtures;

use crate::{
    measure::Settings,
    report::{Report, Target},
};

/// Per-packet cost of the redirector's eBPF programs (BPF_PROG_TEST_RUN), hit-path
/// scaling with the conntrack size, and conntrack memory. Needs root.
///
/// Example: kernel-bench --quick --json
#[derive(Parser)]
#[command(name = "kernel-bench")]
struct Args {
    /// Print one JSON object (schema in the source's module documentation) instead of tables.
    #[arg(long)]
    json: bool,
    /// Fewer rounds and shorter calls: under a minute.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// Tiny calls and 1 k / 10 k flows only: a few seconds (for the test suite).
    #[arg(long)]
    smoke: bool,
    /// Measure nothing: attach the empty pass-through programs to IFACE (ingress at
    /// --hook, egress TC) until SIGINT/SIGTERM, as a baseline for `cargo xtask bench`.
    #[arg(long, value_name = "IFACE", conflicts_with_all = ["json", "quick", "smoke"])]
    attach_pass: Option<String>,
    /// Ingress hook of --attach-pass.
    #[arg(long, value_enum, default_value = "xdp", requires = "attach_pass")]
    hook: attach::Hook,
}

/// Version of the JSON schema (2: case `path`, promotion and SYN-ACK cases, memory rows
/// per table with measured on-demand cost).
const SCHEMA: u32 = 2;

/// What a mode measures.
struct Mode {
    name: &'static str,
    settings: Settings,
    scaling_flows: &'static [u32],
    /// Established flows inserted to measure the default table's cost per flow.
    memory_flows: u32,
}

fn mode(args: &Args) -> Mode {
    let (name, rounds, call_ms, single_calls, scaling_flows): (_, _, _, _, &[u32]) = if args.smoke {
        ("smoke", 5, 2, 200, &[1_000, 10_000])
    } else if args.quick {
        ("quick", 5, 30, 2_000, &[1_000, 100_000, 1_000_000])
    } else {
        ("full", 7, 150, 10_000, &[1_000, 100_000, 1_000_000])
    };
    let memory_flows = if args.smoke { 10_000 } else { 100_000 };
    Mode {
        name,
        settings: Settings {
            rounds,
            call_time: Duration::from_millis(call_ms),
            single_calls,
        },
        scaling_flows,
        memory_flows,
    }
}

/// The rules of `redirector run`'s defaults.
fn rules() -> Vec<RedirectRule> {
    ["80:8080", "443:8443"]
        .iter()
        .map(|r| r.parse().expect("valid rule literal"))
        .collect()
}

fn run(args: &Args) -> Result<Report> {
    let mode = mode(args);
    // Our programs are loaded from here on: keep other test processes' "no redirector
    // program left" checks from seeing them.
    let _lock = fixtures::serial();
    eprintln!("cases (conntrack size {DEFAULT_CONNTRACK_SIZE})");
    let mut dp = Dataplane::load(DEFAULT_CONNTRACK_SIZE).context("loading (are you root?)")?;
    dp.set_rules(&rules())?;
    dp.load_baselines()?;
    let measured = cases::run(&mut dp, &mode.settings)?;
    drop(dp);
    let mut cases = report::baseline_rows(&measured);
    cases.extend(measured);
    eprintln!("memory of the default tables ({} flows)", mode.memory_flows);
    let mut memory = memory::default_tables(mode.memory_flows)?;
    eprintln!("hit-path scaling");
    let (scaling, scaling_memory) = scaling::run(mode.scaling_flows, &rules(), &mode.settings)?;
    memory.extend(scaling_memory);
    Ok(Report {
        schema: SCHEMA,
        kernel: kernel_release()?,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        mode: mode.name,
        rounds: mode.settings.rounds,
        flow_key_bytes: size_of::<FlowKey>(),
        flow_value_bytes: size_of::<FlowValue>(),
        cases,
        target: Target::from_rows(&scaling),
        scaling,
        memory,
    })
}

fn kernel_release() -> Result<String> {
    let path = "/proc/sys/kernel/osrelease";
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(iface) = &args.attach_pass {
        return match attach::run(iface, args.hook) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kernel-bench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args) {
        Ok(report) if args.json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("serialisable")
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            report::print_human(&report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kernel-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
