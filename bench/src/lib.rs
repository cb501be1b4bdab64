//! The benchmark behind `cargo xtask bench`: redirector against direct, iptables, nftables,
//! HAProxy and nginx, with real load generators between two network namespaces; results in
//! bench/results/. Its measuring tools are this crate's binaries `kernel-bench` and
//! `sniff-bench`; xtask builds everything and calls [`run_with`].
//!
//! Order of a run: build (xtask); the kernel-side cost (`kernel-bench`); the sniffing proxy's relay
//! modes on loopback (`sniff-bench`); the testbed; then per phase
//! (the servers on 8080/8443 for one kind of traffic) every repetition applies each
//! configuration in turn and runs that phase's loads against it, each from a fresh client
//! source address, recording checksum errors, SYN retransmits and the CPU time of the
//! configuration's own processes; finally medians, ratios to direct, the targets, and the
//! JSON/Markdown/SVG files.

mod args;
mod configs;
mod conn_cpu;
mod costs;
mod costs_report;
mod cpu;
mod idle;
mod kernel;
mod loads;
mod machine;
mod memory;
mod netstat;
pub mod plan;
mod relay;
mod report;
mod servers;
mod stats;
mod svg;
mod testbed;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use self::configs::Tools;
use self::idle::IdleSize;
use self::loads::Target;
use self::netstat::Health;
use self::plan::{Config, Load, Mode, Params, Phase};
use self::report::{LoadInfo, Report};
use self::stats::Run;
use self::testbed::Testbed;
use testkit::cmd::{heading, Cmd};
use testkit::interrupt;
use testkit::lock::KernelLock;
use testkit::process::Proc;

pub use self::args::BenchArgs;
pub use self::testbed::BENCH;

/// Absolute paths of the built binaries the benchmark runs.
pub struct Binaries {
    /// The redirector itself (its XDP/TC loader and its sniffing proxy).
    pub redirector: PathBuf,
    /// ws-echo, the WebSocket (ws and wss) echo server of the WebSocket phase.
    pub ws_echo: PathBuf,
    /// wsload, the WebSocket load generator.
    pub wsload: PathBuf,
    /// kernel-bench, which measures the kernel-side cost with BPF_PROG_TEST_RUN.
    pub kernel_bench: PathBuf,
    /// sniff-bench, which measures the sniffing proxy's relay modes on loopback.
    pub sniff_bench: PathBuf,
}

/// The benchmark with already built binaries (`cargo xtask bench` after its build, and the
/// smoke step of `cargo xtask test`).
pub fn run_with(binaries: &Binaries, args: &BenchArgs) -> Result<()> {
    let params = Params::for_mode(args.mode());
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| params.mode.name().to_owned());
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("bench").join("results"));
    let configs = selected_configs(&args.configs, params.mode)?;
    let loads = selected_loads(&args.loads, params.mode)?;
    let idle_size = IdleSize::for_params(&params)?;
    if loads.contains(&Load::IdleCapacity) && idle_size.capped() {
        println!(
            "idle-capacity: {} connections requested, {} measured, capped by the open-file hard \
             limit {} (a proxy holds 2 descriptors per connection)",
            idle_size.requested, idle_size.measured, idle_size.nofile_hard
        );
    }
    let started = Instant::now();
    let started_at = Cmd::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .run_captured()?
        .trim()
        .to_owned();
    let machine = machine::describe();
    let mut failures = Vec::new();

    let kernel = if args.no_kernel {
        None
    } else {
        heading("kernel-side cost (BPF_PROG_TEST_RUN)");
        match kernel::run(&binaries.kernel_bench, params.mode) {
            Ok(json) => Some(json),
            Err(err) => {
                failures.push(format!("kernel-bench: {err:#}"));
                None
            }
        }
    };

    let relay = if args.no_kernel {
        None
    } else {
        heading("sniffing proxy relay: auto / splice / copy (sniff-bench, loopback)");
        match relay::run(&binaries.sniff_bench, &binaries.redirector, params.mode) {
            Ok(json) => Some(json),
            Err(err) => {
                failures.push(format!("sniff-bench: {err:#}"));
                None
            }
        }
    };

    let runs = {
        // The machine-wide lock the kernel tests take: while the benchmark has programs
        // loaded, another checkout's tests must not check that none are (waits for them).
        let _lock = KernelLock::exclusive()?;
        heading("testbed");
        let mut testbed = Testbed::create()?;
        let work_dir = WorkDir::create()?;
        let tools = Tools {
            redirector: binaries.redirector.clone(),
            kernel_bench: binaries.kernel_bench.clone(),
            work_dir: work_dir.0.clone(),
            max_conns: idle_size.measured,
            nofile_hard: idle_size.nofile_hard,
        };
        let mut session = Session {
            testbed: &mut testbed,
            tools: &tools,
            binaries,
            params: &params,
            idle_size,
            runs: Vec::new(),
            failures: &mut failures,
        };
        session.run_all(&configs, &loads)?;
        session.runs
    };

    heading("results");
    let summary = stats::summarize(&runs);
    let costs = costs::summarize(&runs, &idle_size);
    let mut targets = stats::targets(&summary, &runs);
    targets.extend(kernel::scaling_targets(kernel.as_ref()));
    targets.extend(costs::targets(&costs));
    failures.extend(costs::missing_figures(&runs));
    let csum_errors: u64 = runs.iter().map(|r| r.health.csum_errors).sum();
    if csum_errors > 0 {
        failures.push(format!(
            "{csum_errors} TCP checksum error(s) during the runs (see runs[].health)"
        ));
    }
    let report = Report {
        name,
        started_at,
        elapsed_s: started.elapsed().as_secs_f64(),
        machine,
        params: params.clone(),
        configs,
        loads: loads.iter().map(|l| LoadInfo::of(*l)).collect(),
        runs,
        summary,
        costs,
        targets,
        kernel,
        relay,
        failures: failures.clone(),
    };
    let written = report::write(&report, &out_dir)?;
    println!("{}", report::markdown(&report));
    for path in written {
        println!("  wrote {}", path.display());
    }
    if !failures.is_empty() {
        bail!(
            "{} failure(s) during the benchmark:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    heading(format!(
        "bench `{}` done in {:.0} s",
        report.name,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The processes of a run: the configuration's (loader, proxy) and the phase's servers.
struct Pids<'a> {
    config: &'a [u32],
    servers: &'a [u32],
}

/// The state of the load runs.
struct Session<'a> {
    testbed: &'a mut Testbed,
    tools: &'a Tools,
    binaries: &'a Binaries,
    params: &'a Params,
    idle_size: IdleSize,
    runs: Vec<Run>,
    failures: &'a mut Vec<String>,
}

impl Session<'_> {
    fn run_all(&mut self, configs: &[Config], loads: &[Load]) -> Result<()> {
        let slots = plan::schedule(self.params, configs, loads);
        let total: usize = slots.iter().map(|s| s.loads.len()).sum();
        let mut servers: Option<(Phase, Vec<Proc>)> = None;
        let mut done = 0;
        for slot in slots {
            interrupt::check()?;
            if servers.as_ref().map(|(phase, _)| *phase) != Some(slot.phase) {
                drop(servers.take());
                heading(format!("phase: {}", slot.phase));
                let started = servers::start(
                    slot.phase,
                    self.testbed,
                    &self.tools.work_dir,
                    &self.binaries.ws_echo,
                )?;
                servers = Some((slot.phase, started));
            }
            let applied = match configs::apply(slot.config, self.testbed, self.tools) {
                Ok(applied) => applied,
                Err(err) => {
                    let error = format!("applying {}: {err:#}", slot.config);
                    eprintln!("  FAILED {error}");
                    self.failures.push(error.clone());
                    for load in slot.loads {
                        done += 1;
                        self.record_failure(slot.repetition, slot.config, load, &error);
                    }
                    continue;
                }
            };
            for load in slot.loads {
                done += 1;
                let server_pids: Vec<u32> = servers
                    .as_ref()
                    .map(|(_, procs)| procs.iter().map(Proc::id).collect())
                    .unwrap_or_default();
                let pids = Pids {
                    config: &applied.pids(),
                    servers: &server_pids,
                };
                let run = self.measure(slot.repetition, slot.config, load, &pids)?;
                println!(
                    "[{done}/{total}] rep {}/{} {:<22} {:<15} {}",
                    slot.repetition,
                    self.params.repetitions,
                    slot.config.id(),
                    load.id(),
                    describe(&run)
                );
                self.runs.push(run);
            }
            // A configuration that cannot be removed cleanly would skew every later one.
            applied
                .remove(&self.testbed.topology.server)
                .with_context(|| format!("removing {}", slot.config))?;
        }
        Ok(())
    }

    /// One load run from a fresh client address, with the TCP health counters and the CPU
    /// time of the configuration's processes (`pids`) around it.
    fn measure(&mut self, repetition: u32, config: Config, load: Load, pids: &Pids) -> Result<Run> {
        let client_addr = self.testbed.rotate_client_address()?.to_owned();
        let before = self.health()?;
        let meter = cpu::Meter::start(pids.config);
        let steal = cpu::StealMeter::start();
        let target = Target {
            client: &self.testbed.topology.client,
            server_ip: self.testbed.server_ip(),
            ports: config.client_ports(),
            wsload: &self.binaries.wsload,
        };
        let result = match load {
            Load::IdleCapacity => idle::run(&target, self.params, &self.idle_size, pids.config),
            Load::ConnCpu => {
                conn_cpu::run(&target, self.params, &[pids.config, pids.servers].concat())
            }
            _ => loads::run(load, &target, self.params),
        };
        let config_cpu_pct = meter.and_then(|m| m.map(cpu::Meter::stop).transpose());
        // Context for the figures, not one of them: a failed reading is left out quietly.
        let steal_pct = steal.and_then(cpu::StealMeter::stop).ok();
        let health = netstat::delta(before, self.health()?);
        let config_cpu_pct = config_cpu_pct.unwrap_or_else(|err| {
            let error = format!("{config} {load} rep {repetition}: CPU of its processes: {err:#}");
            self.failures.push(error);
            None
        });
        let (measurement, error) = match result {
            Ok(m) => (Some(m), None),
            Err(err) => {
                let error = format!("{config} {load} rep {repetition}: {err:#}");
                self.failures.push(error.clone());
                (None, Some(error))
            }
        };
        Ok(Run {
            repetition,
            config,
            load,
            client_addr,
            measurement,
            error,
            health,
            config_cpu_pct,
            steal_pct,
        })
    }

    fn record_failure(&mut self, repetition: u32, config: Config, load: Load, error: &str) {
        self.runs.push(Run {
            repetition,
            config,
            load,
            client_addr: String::new(),
            measurement: None,
            error: Some(error.to_owned()),
            health: Health::default(),
            config_cpu_pct: None,
            steal_pct: None,
        });
    }

    /// Both namespaces' counters added up.
    fn health(&self) -> Result<Health> {
        let topology = &self.testbed.topology;
        Ok(netstat::read(&topology.client)?.add(netstat::read(&topology.server)?))
    }
}

/// The progress line's figures for one run.
fn describe(run: &Run) -> String {
    let Some(m) = &run.measurement else {
        return format!("FAILED: {}", run.error.as_deref().unwrap_or("?"));
    };
    let mut text = format!("{} {}", report::figure(m.value), run.load.unit());
    if let Some(p99) = m.p99_us {
        text.push_str(&format!(" p99 {p99:.0} µs"));
    }
    if let Some(idle) = &m.idle {
        if let Some(kib) = idle.rss_kib_per_conn {
            text.push_str(&format!(" rss {kib:.2} KiB/conn"));
        }
        text.push_str(&format!(
            " sockets {:.2} KiB/conn, open in {:.1} s",
            idle.sock_mem_kib_per_conn, idle.open_s
        ));
    }
    if let Some(cpu) = &m.conn_cpu {
        text.push_str(&format!(
            " at {:.0}/s, busy {:.2} CPU s, own processes {:.0} µs/conn, busy before {:.0}%",
            cpu.achieved_rate, cpu.busy_cpu_s, cpu.own_cpu_us_per_conn, cpu.background_busy_pct
        ));
    }
    if m.errors > 0 {
        text.push_str(&format!(" errors {}", m.errors));
    }
    if let Some(pct) = run.config_cpu_pct {
        text.push_str(&format!(" cpu {pct:.1}%"));
    }
    if let Some(steal) = run.steal_pct.filter(|s| *s >= 1.0) {
        text.push_str(&format!(" steal {steal:.0}%"));
    }
    if run.health.syn_retransmits > 0 {
        text.push_str(&format!(" syn-retrans {}", run.health.syn_retransmits));
    }
    if run.health.csum_errors > 0 {
        text.push_str(&format!(" CSUM-ERRORS {}", run.health.csum_errors));
    }
    text
}

/// `--config` ids, direct always included (every ratio needs it); the mode's own when
/// none are given.
fn selected_configs(ids: &[String], mode: Mode) -> Result<Vec<Config>> {
    if ids.is_empty() {
        return Ok(mode.default_configs());
    }
    let mut configs = vec![Config::Direct];
    for id in ids {
        let config = Config::from_id(id).with_context(|| {
            let known: Vec<&str> = Config::ALL.iter().map(|c| c.id()).collect();
            format!("unknown configuration `{id}`; known: {}", known.join(", "))
        })?;
        if !configs.contains(&config) {
            configs.push(config);
        }
    }
    configs.sort();
    Ok(configs)
}

fn selected_loads(ids: &[String], mode: Mode) -> Result<Vec<Load>> {
    if ids.is_empty() {
        return Ok(mode.default_loads());
    }
    ids.iter()
        .map(|id| {
            Load::from_id(id).with_context(|| {
                let known: Vec<&str> = Load::ALL.iter().map(|l| l.id()).collect();
                format!("unknown load `{id}`; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// Runs a measuring tool that prints one JSON document (kernel-bench, sniff-bench), bounded
/// by `timeout`; returns the document.
fn run_json(cmd: Cmd, timeout: std::time::Duration) -> Result<serde_json::Value> {
    let shown = cmd.to_string();
    println!("$ {shown}");
    let output = cmd.output_timeout(timeout)?;
    if !output.success() {
        bail!(
            "`{shown}` failed ({}){}",
            output.describe_end(timeout),
            testkit::cmd::describe_output(&output.stdout, &output.stderr)
        );
    }
    serde_json::from_str(output.stdout.trim())
        .with_context(|| format!("`{shown}` printed no valid JSON"))
}

/// The workspace root: this crate's manifest directory is one level below it.
fn workspace_root() -> &'static Path {
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench_dir.parent().unwrap_or(bench_dir)
}

/// Config files and the static page; removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("redirector-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            eprintln!("  warning: could not remove {}: {err}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_is_always_measured() {
        let configs =
            selected_configs(&["nginx".into(), "redirector-xdp".into()], Mode::Full).unwrap();
        assert_eq!(
            configs,
            [Config::Direct, Config::Nginx, Config::RedirectorXdp]
        );
        assert!(selected_configs(&["nope".into()], Mode::Full).is_err());
        assert_eq!(
            selected_configs(&[], Mode::Full).unwrap().len(),
            Config::ALL.len()
        );
        assert_eq!(
            selected_configs(&[], Mode::Quick).unwrap().len(),
            Config::ALL.len() - 2
        );
        assert!(selected_loads(&["bulk".into(), "x".into()], Mode::Full).is_err());
        assert!(!selected_loads(&[], Mode::Quick)
            .unwrap()
            .contains(&Load::WssMessages));
    }
}
