//! The cost loads' summary: per configuration, idle-capacity's memory per connection and
//! conn-cpu's CPU time per connection, medians over the repetitions, with conn-cpu's ratios
//! to direct and to iptables paired per repetition (each ratio between two runs of the same
//! round, measured minutes apart at most); and the checks that every figure was produced.

use serde::Serialize;

use super::conn_cpu::ConnCpuFigures;
use super::idle::{IdleFigures, IdleSize};
use super::plan::{Config, Load};
use super::stats::{judge, median, Run, Target};

/// Both cost loads' cells.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Costs {
    /// idle-capacity's N: requested, measured, and the open-file limit that capped it.
    pub idle_size: Option<IdleSize>,
    pub idle: Vec<IdleCell>,
    pub conn_cpu: Vec<ConnCpuCell>,
}

/// A median with the smallest and largest value it is the median of.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Spread {
    /// `None` for no (finite) values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        Some(Self {
            median: median(&finite)?,
            min: finite.iter().copied().fold(f64::INFINITY, f64::min),
            max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: finite.len(),
        })
    }
}

/// idle-capacity under one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct IdleCell {
    pub config: Config,
    pub runs: usize,
    /// The fewest connections open in a run (N measured, if every one opened).
    pub connections_open: u64,
    /// Resident memory of the configuration's processes per held connection, KiB.
    pub rss_kib_per_conn: Option<Spread>,
    /// The kernel's TCP socket memory per held connection (machine-wide), KiB.
    pub sock_mem_kib_per_conn: Option<Spread>,
    /// The kernel's unreclaimable slab per held connection (machine-wide), KiB.
    pub slab_kib_per_conn: Option<Spread>,
    /// Seconds to open all N.
    pub open_s: Option<Spread>,
    /// Resident memory kept `idle_settle` after the last close, over the one before, KiB.
    pub rss_after_close_delta_kib: Option<Spread>,
    pub echo_errors: u64,
    pub connect_errors: u64,
}

/// conn-cpu under one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ConnCpuCell {
    pub config: Config,
    pub runs: usize,
    /// Machine-wide busy CPU µs per connection.
    pub cpu_us_per_conn: Spread,
    /// The rate achieved (connections per second).
    pub achieved_rate: Option<f64>,
    /// Per repetition: this configuration's µs ÷ direct's (resp. iptables') of the same round.
    pub ratio_to_direct: Option<Spread>,
    pub ratio_to_iptables: Option<Spread>,
    /// CPU µs per connection of the run's own processes and ksoftirqd (other work left out),
    /// with its paired ratios.
    pub own_cpu_us_per_conn: Option<Spread>,
    pub own_ratio_to_direct: Option<Spread>,
    pub own_ratio_to_iptables: Option<Spread>,
    /// CPU steal during its runs, %.
    pub steal_pct: Option<Spread>,
    /// The machine's busy time just before its runs, % of all cores: work that was not the
    /// load's but is counted in its figure if it went on.
    pub background_busy_pct: Option<Spread>,
    pub errors: u64,
}

fn idle_figures(runs: &[Run], config: Config) -> Vec<&IdleFigures> {
    runs.iter()
        .filter(|r| r.config == config && r.load == Load::IdleCapacity)
        .filter_map(|r| r.measurement.as_ref()?.idle.as_ref())
        .collect()
}

/// Which conn-cpu figure.
type CpuFigure = fn(&ConnCpuFigures) -> f64;
const MACHINE: CpuFigure = |c| c.cpu_us_per_conn;
const OWN: CpuFigure = |c| c.own_cpu_us_per_conn;

/// A conn-cpu figure of `config` by repetition.
fn cpu_by_round(runs: &[Run], config: Config, figure: CpuFigure) -> Vec<(u32, f64)> {
    runs.iter()
        .filter(|r| r.config == config && r.load == Load::ConnCpu)
        .filter_map(|r| {
            Some((
                r.repetition,
                figure(r.measurement.as_ref()?.conn_cpu.as_ref()?),
            ))
        })
        .collect()
}

/// Ratios of `mine` to `base` in the rounds both have.
fn paired(mine: &[(u32, f64)], base: &[(u32, f64)]) -> Option<Spread> {
    let ratios: Vec<f64> = mine
        .iter()
        .filter_map(|(round, value)| {
            let (_, base) = base.iter().find(|(r, _)| r == round)?;
            (*base > 0.0).then(|| value / base)
        })
        .collect();
    Spread::of(&ratios)
}

/// The cells of both cost loads, configurations in plan order.
pub fn summarize(runs: &[Run], idle_size: &IdleSize) -> Costs {
    let mut costs = Costs::default();
    if runs.iter().any(|r| r.load == Load::IdleCapacity) {
        costs.idle_size = Some(*idle_size);
    }
    let baseline = |config, figure| cpu_by_round(runs, config, figure);
    let (direct, iptables) = (
        baseline(Config::Direct, MACHINE),
        baseline(Config::Iptables, MACHINE),
    );
    let (own_direct, own_iptables) = (
        baseline(Config::Direct, OWN),
        baseline(Config::Iptables, OWN),
    );
    for config in Config::ALL {
        let idle = idle_figures(runs, config);
        if !idle.is_empty() {
            let spread = |f: fn(&IdleFigures) -> Option<f64>| {
                Spread::of(&idle.iter().filter_map(|i| f(i)).collect::<Vec<_>>())
            };
            costs.idle.push(IdleCell {
                config,
                runs: idle.len(),
                connections_open: idle.iter().map(|i| i.connections_open).min().unwrap_or(0),
                rss_kib_per_conn: spread(|i| i.rss_kib_per_conn),
                sock_mem_kib_per_conn: spread(|i| Some(i.sock_mem_kib_per_conn)),
                slab_kib_per_conn: spread(|i| Some(i.slab_kib_per_conn)),
                open_s: spread(|i| Some(i.open_s)),
                rss_after_close_delta_kib: spread(|i| i.rss_after_close_delta_kib),
                echo_errors: idle.iter().map(|i| i.echo_errors).sum(),
                connect_errors: idle.iter().map(|i| i.connect_errors).sum(),
            });
        }
        let mine = cpu_by_round(runs, config, MACHINE);
        let own = cpu_by_round(runs, config, OWN);
        let values: Vec<f64> = mine.iter().map(|(_, v)| *v).collect();
        if let Some(cpu) = Spread::of(&values) {
            let figures: Vec<_> = runs
                .iter()
                .filter(|r| r.config == config && r.load == Load::ConnCpu)
                .filter_map(|r| r.measurement.as_ref())
                .collect();
            let of = |f: CpuFigure| -> Vec<f64> {
                figures
                    .iter()
                    .filter_map(|m| m.conn_cpu.as_ref().map(f))
                    .collect()
            };
            costs.conn_cpu.push(ConnCpuCell {
                config,
                runs: mine.len(),
                cpu_us_per_conn: cpu,
                achieved_rate: median(&of(|c| c.achieved_rate)),
                ratio_to_direct: paired(&mine, &direct),
                ratio_to_iptables: paired(&mine, &iptables),
                own_cpu_us_per_conn: Spread::of(&own.iter().map(|(_, v)| *v).collect::<Vec<_>>()),
                own_ratio_to_direct: paired(&own, &own_direct),
                own_ratio_to_iptables: paired(&own, &own_iptables),
                steal_pct: Spread::of(&of(|c| c.steal_pct)),
                background_busy_pct: Spread::of(&of(|c| c.background_busy_pct)),
                errors: figures.iter().map(|m| m.errors).sum(),
            });
        }
    }
    costs
}

/// Issue 14's target, reported, never asserted: the sniffing proxy holds an idle connection
/// in no more memory than HAProxy in http mode.
pub fn targets(costs: &Costs) -> Vec<Target> {
    if costs.idle.is_empty() {
        return Vec::new();
    }
    let kib = |config: Config| {
        costs
            .idle
            .iter()
            .find(|c| c.config == config)
            .and_then(|c| c.rss_kib_per_conn)
    };
    let value = match (kib(Config::RedirectorSniff), kib(Config::HaproxyHttp)) {
        (Some(sniff), Some(haproxy)) if haproxy.median > 0.0 => Some(sniff.median / haproxy.median),
        _ => None,
    };
    vec![judge(
        "redirector-sniff idle-capacity KiB/connection ≤ haproxy-http's (ratio)".into(),
        value,
        1.0,
        false,
        None,
    )]
}

/// The cost figures a run should have produced and did not (each is a failure: the smoke run
/// checks the harness produces every figure).
pub fn missing_figures(runs: &[Run]) -> Vec<String> {
    let mut missing = Vec::new();
    for run in runs.iter().filter(|r| r.measurement.is_some()) {
        let what = format!("{} {} rep {}", run.config, run.load, run.repetition);
        let m = run.measurement.as_ref().expect("filtered on measurement");
        match run.load {
            Load::IdleCapacity => match &m.idle {
                None => missing.push(format!("{what}: no idle-capacity figures")),
                Some(idle) => {
                    if idle.connections_open < u64::from(idle.connections_measured) {
                        missing.push(format!(
                            "{what}: {} of {} connections opened ({})",
                            idle.connections_open,
                            idle.connections_measured,
                            idle.first_error.as_deref().unwrap_or("no error recorded")
                        ));
                    }
                    if run.config.is_user_space_proxy()
                        && (idle.rss_kib_per_conn.is_none()
                            || idle.rss_after_close_delta_kib.is_none())
                    {
                        missing.push(format!("{what}: no memory figure of the proxy"));
                    }
                    if idle.messages_received == 0 {
                        missing.push(format!("{what}: no echo"));
                    }
                }
            },
            Load::ConnCpu => match &m.conn_cpu {
                Some(cpu) if cpu.connections > 0 && cpu.busy_cpu_s > 0.0 => {}
                _ => missing.push(format!("{what}: no CPU time per connection")),
            },
            _ => {}
        }
    }
    missing
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::loads::Measurement;
    use crate::netstat::Health;

    pub(crate) fn cpu_run(config: Config, repetition: u32, us: f64) -> Run {
        Run {
            repetition,
            config,
            load: Load::ConnCpu,
            client_addr: String::new(),
            measurement: Some(Measurement {
                value: us,
                conn_cpu: Some(ConnCpuFigures {
                    offered_rate: 1000,
                    connections: 2000,
                    achieved_rate: 1000.0,
                    busy_cpu_s: us * 2000.0 / 1e6,
                    wall_s: 2.0,
                    cpu_us_per_conn: us,
                    own_cpu_s: us * 1000.0 / 1e6,
                    own_cpu_us_per_conn: us / 2.0,
                    steal_pct: 1.0,
                    background_busy_pct: 3.0,
                }),
                ..Measurement::default()
            }),
            error: None,
            health: Health::default(),
            config_cpu_pct: None,
            steal_pct: None,
        }
    }

    pub(crate) fn idle_run(config: Config, rss: Option<f64>) -> Run {
        Run {
            load: Load::IdleCapacity,
            measurement: Some(Measurement {
                value: 300.0,
                idle: Some(IdleFigures {
                    connections_requested: 300,
                    connections_measured: 300,
                    nofile_hard: 20000,
                    connections_open: 300,
                    open_s: 0.2,
                    rss_kib_per_conn: rss,
                    rss_after_close_delta_kib: rss.map(|_| 100.0),
                    sock_mem_kib_per_conn: 1.5,
                    slab_kib_per_conn: 12.25,
                    messages_received: 600,
                    ..IdleFigures::default()
                }),
                ..Measurement::default()
            }),
            ..cpu_run(config, 1, 0.0)
        }
    }

    #[test]
    fn cpu_ratios_are_paired_by_round() {
        // Round 2 was slow for everyone: paired ratios stay at 2.0 where a ratio of the
        // medians would not.
        let runs = vec![
            cpu_run(Config::Direct, 1, 100.0),
            cpu_run(Config::Iptables, 1, 150.0),
            cpu_run(Config::RedirectorTc, 1, 200.0),
            cpu_run(Config::Direct, 2, 300.0),
            cpu_run(Config::Iptables, 2, 450.0),
            cpu_run(Config::RedirectorTc, 2, 600.0),
            cpu_run(Config::Direct, 3, 110.0),
            cpu_run(Config::Iptables, 3, 165.0),
            cpu_run(Config::RedirectorTc, 3, 220.0),
        ];
        let costs = summarize(&runs, &IdleSize::new(300, 20000));
        assert!(costs.idle_size.is_none(), "no idle-capacity run");
        let tc = costs
            .conn_cpu
            .iter()
            .find(|c| c.config == Config::RedirectorTc)
            .unwrap();
        let to_direct = tc.ratio_to_direct.unwrap();
        assert_eq!(
            (to_direct.median, to_direct.min, to_direct.max, to_direct.n),
            (2.0, 2.0, 2.0, 3)
        );
        let to_iptables = tc.ratio_to_iptables.unwrap();
        assert!((to_iptables.median - 4.0 / 3.0).abs() < 1e-9);
        assert_eq!(tc.cpu_us_per_conn.median, 220.0);
        assert_eq!(tc.own_cpu_us_per_conn.unwrap().median, 110.0);
        assert_eq!(tc.own_ratio_to_direct.unwrap().median, 2.0);
        assert!(missing_figures(&runs).is_empty());
    }

    #[test]
    fn idle_cells_and_the_sniff_target() {
        let runs = vec![
            idle_run(Config::Direct, None),
            idle_run(Config::HaproxyHttp, Some(20.0)),
            idle_run(Config::RedirectorSniff, Some(10.0)),
        ];
        let costs = summarize(&runs, &IdleSize::new(300, 20000));
        assert_eq!(costs.idle.len(), 3);
        assert!(costs.idle[0].rss_kib_per_conn.is_none());
        let targets = targets(&costs);
        assert_eq!(targets[0].value, Some(0.5));
        assert_eq!(targets[0].met, Some(true));
        assert!(missing_figures(&runs).is_empty());
        // A proxy without a memory figure is a failure; direct without one is not.
        let broken = vec![
            idle_run(Config::Nginx, None),
            cpu_run(Config::Direct, 1, 0.0),
        ];
        let missing = missing_figures(&broken);
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("nginx idle-capacity rep 1: no memory figure"));
    }
}
