//! Turning the runs into the reported figures: medians over the repetitions, spreads, ratios
//! to direct from the same run, and the targets checked against them.

use serde::Serialize;

use super::loads::Measurement;
use super::netstat::Health;
use super::plan::{Config, Load};

/// One run of one load under one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub repetition: u32,
    pub config: Config,
    pub load: Load,
    /// The client source address of this run.
    pub client_addr: String,
    pub measurement: Option<Measurement>,
    /// Why there is no measurement.
    pub error: Option<String>,
    pub health: Health,
    /// CPU time of the configuration's own processes and their children during the load, in
    /// % of one core; `None` when it started none (its work is in the kernel).
    pub config_cpu_pct: Option<f64>,
    /// CPU time the hypervisor stole from this machine during the load, in % of all CPU
    /// time (`None` if /proc/stat could not be read).
    pub steal_pct: Option<f64>,
}

/// The figures of one (load, configuration) pair over its repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub load: Load,
    pub config: Config,
    /// Runs that produced a figure.
    pub runs: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max − min) / median: how much the repetitions disagree.
    pub spread: f64,
    /// median / median of direct in the same benchmark.
    pub ratio_to_direct: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    /// p99 / p99 of direct.
    pub p99_ratio_to_direct: Option<f64>,
    pub errors: u64,
    pub csum_errors: u64,
    pub syn_retransmits: u64,
    /// Median of the runs' `config_cpu_pct`.
    pub config_cpu_pct: Option<f64>,
}

/// The median (mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// One cell per (throughput load, configuration) that has at least one figure, in plan
/// order (the cost loads are summarized by [`crate::costs`]).
pub fn summarize(runs: &[Run]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for load in Load::ALL.into_iter().filter(|l| !l.is_cost()) {
        for config in Config::ALL {
            if let Some(cell) = cell(runs, load, config) {
                cells.push(cell);
            }
        }
    }
    let direct: Vec<Cell> = cells
        .iter()
        .filter(|c| c.config == Config::Direct)
        .cloned()
        .collect();
    for cell in &mut cells {
        if let Some(base) = direct.iter().find(|d| d.load == cell.load) {
            cell.ratio_to_direct = ratio(cell.median, base.median);
            cell.p99_ratio_to_direct = match (cell.p99_us, base.p99_us) {
                (Some(p99), Some(base)) => ratio(p99, base),
                _ => None,
            };
        }
    }
    cells
}

fn ratio(value: f64, base: f64) -> Option<f64> {
    (base > 0.0).then(|| value / base)
}

fn cell(runs: &[Run], load: Load, config: Config) -> Option<Cell> {
    let mine: Vec<&Run> = runs
        .iter()
        .filter(|r| r.load == load && r.config == config)
        .collect();
    let figures: Vec<&Measurement> = mine.iter().filter_map(|r| r.measurement.as_ref()).collect();
    let values: Vec<f64> = figures.iter().map(|m| m.value).collect();
    let cpu_pcts: Vec<f64> = mine
        .iter()
        .filter(|r| r.measurement.is_some())
        .filter_map(|r| r.config_cpu_pct)
        .collect();
    let median_value = median(&values)?;
    let pick = |f: fn(&Measurement) -> Option<f64>| {
        let values: Vec<f64> = figures.iter().filter_map(|m| f(m)).collect();
        median(&values)
    };
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(Cell {
        load,
        config,
        runs: values.len(),
        median: median_value,
        min,
        max,
        spread: if median_value > 0.0 {
            (max - min) / median_value
        } else {
            0.0
        },
        ratio_to_direct: None,
        p50_us: pick(|m| m.p50_us),
        p99_us: pick(|m| m.p99_us),
        p999_us: pick(|m| m.p999_us),
        p99_ratio_to_direct: None,
        errors: figures.iter().map(|m| m.errors).sum(),
        csum_errors: mine.iter().map(|r| r.health.csum_errors).sum(),
        syn_retransmits: mine.iter().map(|r| r.health.syn_retransmits).sum(),
        config_cpu_pct: median(&cpu_pcts),
    })
}

/// A target of the issue, checked against this benchmark's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    /// The measured figure the target is about (a ratio).
    pub value: Option<f64>,
    /// The bound the value must meet.
    pub bound: f64,
    /// `true`: value ≥ bound; `false`: value ≤ bound.
    pub at_least: bool,
    /// `None` when a figure is missing.
    pub met: Option<bool>,
    /// Context for a miss: whether the gap is within the repetitions' spread.
    pub note: String,
}

fn find(cells: &[Cell], load: Load, config: Config) -> Option<&Cell> {
    cells.iter().find(|c| c.load == load && c.config == config)
}

/// `config`'s figure over `versus`'s in each repetition both measured (back to back in
/// the same round, so a wave of CPU steal hits both), then the median of those ratios and
/// their spread ((max − min) / median). `None` without a common repetition.
fn paired_ratio(runs: &[Run], load: Load, config: Config, versus: Config) -> Option<(f64, f64)> {
    let value = |config: Config, round: u32| {
        runs.iter()
            .find(|r| r.load == load && r.config == config && r.repetition == round)
            .and_then(|r| r.measurement.as_ref())
            .map(|m| m.value)
    };
    let ratios: Vec<f64> = runs
        .iter()
        .filter(|r| r.load == load && r.config == config)
        .filter_map(|r| {
            let (mine, theirs) = (value(config, r.repetition)?, value(versus, r.repetition)?);
            (theirs > 0.0).then(|| mine / theirs)
        })
        .collect();
    let mid = median(&ratios)?;
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((mid, if mid > 0.0 { (max - min) / mid } else { 0.0 }))
}

/// The targets that the load runs decide (the kernel-cost one is added
/// by the caller, which has that figure). A target between two configurations takes
/// their paired ratio ([`paired_ratio`]).
pub fn targets(cells: &[Cell], runs: &[Run]) -> Vec<Target> {
    use Config::{
        Direct, HaproxyHttp, Iptables, RedirectorSniff, RedirectorSocket, RedirectorTc,
        RedirectorXdp,
    };
    let mut targets = Vec::new();
    for (load, bound) in [
        (Load::HttpKeepAlive, 0.97),
        (Load::WsMessages, 0.97),
        (Load::Bulk, 0.95),
    ] {
        let cell = find(cells, load, RedirectorXdp);
        let target = judge(
            format!("redirector-xdp {load} ≥ {bound}× direct"),
            cell.and_then(|c| c.ratio_to_direct),
            bound,
            true,
            spread_of(&[cell, find(cells, load, Config::Direct)]),
        );
        let hook_alone = find(cells, load, Config::PassXdp).and_then(|c| c.ratio_to_direct);
        targets.push(with_hook_alone(target, hook_alone));
    }
    for load in [Load::HttpKeepAlive, Load::WsMessages] {
        let cell = find(cells, load, RedirectorXdp);
        let target = judge(
            format!("redirector-xdp {load} p99 within 10% of direct"),
            cell.and_then(|c| c.p99_ratio_to_direct),
            1.10,
            false,
            None,
        );
        let hook_alone = find(cells, load, Config::PassXdp).and_then(|c| c.p99_ratio_to_direct);
        targets.push(with_hook_alone(target, hook_alone));
    }
    // redirector-tc is what `--mode auto` runs on a veth; redirector-xdp is native XDP.
    for (load, config, versus) in [
        (Load::HttpConnRate, RedirectorXdp, Iptables),
        (Load::WsConnRate, RedirectorXdp, Iptables),
        (Load::HttpConnRate, RedirectorTc, Iptables),
        (Load::WsConnRate, RedirectorTc, Iptables),
        (Load::WsMessages, RedirectorSniff, HaproxyHttp),
        (Load::WsConnRate, RedirectorSniff, HaproxyHttp),
    ] {
        let paired = paired_ratio(runs, load, config, versus);
        let target = judge(
            format!("{config} {load} ≥ {versus} (paired per round)"),
            paired.map(|(ratio, _)| ratio),
            1.0,
            true,
            paired.map(|(_, spread)| spread),
        );
        let hook_alone = match config {
            RedirectorXdp => paired_ratio(runs, load, Config::PassXdp, versus).map(|(r, _)| r),
            _ => None,
        };
        targets.push(with_hook_alone(target, hook_alone));
    }
    // Socket steering: new connections at least as fast as direct ones (within 2 %) and
    // well ahead of iptables; an established connection costs what a direct one does.
    for (load, versus, bound) in [
        (Load::HttpConnRate, Direct, 0.98),
        (Load::WsConnRate, Direct, 0.98),
        (Load::HttpConnRate, Iptables, 1.15),
        (Load::WsConnRate, Iptables, 1.15),
        (Load::HttpKeepAlive, Direct, 0.97),
        (Load::WsMessages, Direct, 0.97),
        (Load::Bulk, Direct, 0.95),
    ] {
        let paired = paired_ratio(runs, load, RedirectorSocket, versus);
        targets.push(judge(
            format!("{RedirectorSocket} {load} ≥ {bound}× {versus} (paired per round)"),
            paired.map(|(ratio, _)| ratio),
            bound,
            true,
            paired.map(|(_, spread)| spread),
        ));
    }
    targets
}

/// Adds to a missed redirector-xdp target what an empty XDP program on the same hook
/// (`pass-xdp`) scored on the same measure: when it misses too, the cost is the hook's
/// (on a veth: a copy per packet), not redirector's work.
fn with_hook_alone(mut target: Target, hook_alone: Option<f64>) -> Target {
    if let (Some(false), Some(alone)) = (target.met, hook_alone) {
        let verdict = if (alone >= target.bound) == target.at_least {
            "meets it"
        } else {
            "misses it too"
        };
        target.note.push_str(&format!(
            "; an empty XDP program on the same hook (pass-xdp) measured {alone:.3}: {verdict}"
        ));
    }
    target
}

/// The larger spread of the cells, if all are present.
fn spread_of(cells: &[Option<&Cell>]) -> Option<f64> {
    cells
        .iter()
        .map(|c| c.map(|c| c.spread))
        .try_fold(0.0_f64, |acc, s| s.map(|s| acc.max(s)))
}

/// Checks `value` against `bound`; a miss smaller than the repetitions' spread is said so.
pub fn judge(
    target: String,
    value: Option<f64>,
    bound: f64,
    at_least: bool,
    spread: Option<f64>,
) -> Target {
    let met = value.map(|v| if at_least { v >= bound } else { v <= bound });
    let note = match (met, value, spread) {
        (None, _, _) => "not measured in this run".to_owned(),
        (Some(true), _, _) => String::new(),
        (Some(false), Some(v), Some(spread)) if (v - bound).abs() / bound <= spread => format!(
            "missed by {:.1}%, within the repetitions' spread of {:.1}%",
            (v - bound).abs() / bound * 100.0,
            spread * 100.0
        ),
        (Some(false), Some(v), _) => format!("missed by {:.1}%", (v - bound).abs() / bound * 100.0),
        (Some(false), None, _) => unreachable!("met is None without a value"),
    };
    Target {
        target,
        value,
        bound,
        at_least,
        met,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_xdp_target_names_what_the_empty_hook_scored() {
        let missed = judge("t".into(), Some(0.70), 0.95, true, None);
        let note = with_hook_alone(missed.clone(), Some(0.76)).note;
        assert!(
            note.ends_with("(pass-xdp) measured 0.760: misses it too"),
            "{note}"
        );
        let note = with_hook_alone(missed.clone(), Some(0.99)).note;
        assert!(note.ends_with("measured 0.990: meets it"), "{note}");
        assert_eq!(with_hook_alone(missed.clone(), None).note, missed.note);
        let met = judge("t".into(), Some(0.99), 0.95, true, None);
        assert_eq!(with_hook_alone(met, Some(0.5)).note, "");
        // An upper bound (p99 ratio): the empty hook at 1.27 misses ≤ 1.10 too.
        let p99 = judge("p".into(), Some(1.69), 1.10, false, None);
        let note = with_hook_alone(p99, Some(1.27)).note;
        assert!(note.ends_with("measured 1.270: misses it too"), "{note}");
    }

    fn run(config: Config, value: f64, p99: f64) -> Run {
        Run {
            repetition: 1,
            config,
            load: Load::HttpKeepAlive,
            client_addr: "10.201.0.11".into(),
            measurement: Some(Measurement {
                value,
                p99_us: Some(p99),
                ..Measurement::default()
            }),
            error: None,
            health: Health::default(),
            config_cpu_pct: None,
            steal_pct: None,
        }
    }

    #[test]
    fn versus_targets_pair_the_rounds() {
        // Round 2 is a steal wave that hit both configurations: paired ratios stay near
        // 1.1, while the ratio of the two medians would read 100 / 95 ≈ 1.05.
        let at = |config, load, repetition, value| Run {
            repetition,
            load,
            ..run(config, value, 1.0)
        };
        let load = Load::HttpConnRate;
        let runs = vec![
            at(Config::Iptables, load, 1, 100.0),
            at(Config::RedirectorTc, load, 1, 110.0),
            at(Config::Iptables, load, 2, 50.0),
            at(Config::RedirectorTc, load, 2, 56.0),
            at(Config::Iptables, load, 3, 95.0),
            at(Config::RedirectorTc, load, 3, 100.0),
            // A round without its iptables partner is left out.
            at(Config::RedirectorTc, load, 4, 10.0),
        ];
        let (ratio, spread) =
            paired_ratio(&runs, load, Config::RedirectorTc, Config::Iptables).unwrap();
        assert!((ratio - 1.1).abs() < 1e-9, "{ratio}");
        assert!(
            (spread - (1.12 - 100.0 / 95.0) / 1.1).abs() < 1e-9,
            "{spread}"
        );
        let cells = summarize(&runs);
        let t = targets(&cells, &runs);
        let tc = t
            .iter()
            .find(|t| t.target.starts_with("redirector-tc http-conn-rate"))
            .unwrap();
        assert_eq!(tc.met, Some(true));
        assert!(paired_ratio(&runs, load, Config::Nginx, Config::Iptables).is_none());
    }

    #[test]
    fn cpu_is_the_median_of_the_runs_with_a_figure() {
        let mut runs: Vec<Run> = [10.0, 30.0, 90.0]
            .into_iter()
            .map(|pct| Run {
                config_cpu_pct: Some(pct),
                ..run(Config::Nginx, 100.0, 1.0)
            })
            .collect();
        runs[2].measurement = None;
        runs.push(run(Config::Direct, 100.0, 1.0));
        let cells = summarize(&runs);
        let nginx = find(&cells, Load::HttpKeepAlive, Config::Nginx).unwrap();
        assert_eq!(nginx.config_cpu_pct, Some(20.0));
        let direct = find(&cells, Load::HttpKeepAlive, Config::Direct).unwrap();
        assert_eq!(direct.config_cpu_pct, None);
    }

    #[test]
    fn median_handles_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn cells_carry_ratios_to_direct() {
        let runs = vec![
            run(Config::Direct, 100.0, 10.0),
            run(Config::Direct, 120.0, 10.0),
            run(Config::Direct, 110.0, 10.0),
            run(Config::RedirectorXdp, 99.0, 11.0),
            run(Config::RedirectorXdp, 110.0, 12.0),
            run(Config::RedirectorXdp, 105.0, 11.5),
        ];
        let cells = summarize(&runs);
        let xdp = find(&cells, Load::HttpKeepAlive, Config::RedirectorXdp).unwrap();
        assert_eq!(xdp.median, 105.0);
        assert!((xdp.ratio_to_direct.unwrap() - 105.0 / 110.0).abs() < 1e-9);
        assert!((xdp.p99_ratio_to_direct.unwrap() - 1.15).abs() < 1e-9);
        let t = targets(&cells, &runs);
        let keepalive = &t[0];
        assert_eq!(keepalive.met, Some(false));
        assert!(
            keepalive.note.contains("within the repetitions' spread"),
            "{keepalive:?}"
        );
        let p99 = t.iter().find(|t| t.target.contains("p99")).unwrap();
        assert_eq!(p99.met, Some(false));
        // No sniffing runs here: those targets are open, not failed.
        assert!(t
            .iter()
            .filter(|t| t.target.starts_with("redirector-sniff"))
            .all(|t| t.met.is_none()));
    }
}
