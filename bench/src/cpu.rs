//! CPU time over one load run, from /proc: of a configuration's own processes (each started
//! process and all its descendants, as a percentage of one core), stolen from the whole
//! machine by its hypervisor (as a percentage of all CPU time), and the whole machine's busy
//! time (conn-cpu's figure).

use std::collections::HashMap;
use std::fs;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use nix::unistd::{sysconf, SysconfVar};

/// The figures of one `/proc/<pid>/stat` line that the meter needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    ppid: u32,
    /// utime + stime of the process (all its threads), plus cutime + cstime: the time of
    /// children it has reaped, so a worker that exits during the run still counts.
    ticks: u64,
}

/// The CPU time of a set of process trees, from a first reading to `stop`.
pub struct Meter {
    roots: Vec<u32>,
    ticks: u64,
    started: Instant,
}

impl Meter {
    /// Takes the first reading of the trees under `roots`; `None` for no roots.
    pub fn start(roots: &[u32]) -> Result<Option<Self>> {
        if roots.is_empty() {
            return Ok(None);
        }
        let ticks = tree_ticks(roots)?;
        Ok(Some(Self {
            roots: roots.to_vec(),
            ticks,
            started: Instant::now(),
        }))
    }

    /// CPU seconds since `start` ÷ wall seconds since `start`, × 100.
    pub fn stop(self) -> Result<f64> {
        let ticks = tree_ticks(&self.roots)?;
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = ticks.saturating_sub(self.ticks) as f64 / clock_ticks_per_second()?;
        Ok(if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 })
    }
}

/// CPU time the hypervisor gave to others while this (virtual) machine wanted to run: the
/// `steal` column of /proc/stat's `cpu` line. A run with much steal measured the host's
/// other tenants as much as the configuration.
pub struct StealMeter {
    steal: u64,
    total: u64,
}

impl StealMeter {
    pub fn start() -> Result<Self> {
        let (steal, total) = read_steal()?;
        Ok(Self { steal, total })
    }

    /// Stolen ticks ÷ all ticks since `start`, × 100.
    pub fn stop(self) -> Result<f64> {
        let (steal, total) = read_steal()?;
        let total = total.saturating_sub(self.total);
        let steal = steal.saturating_sub(self.steal);
        Ok(if total > 0 {
            steal as f64 / total as f64 * 100.0
        } else {
            0.0
        })
    }
}

/// The machine's busy CPU time over a span: user + nice + system + irq + softirq of /proc/stat's
/// `cpu` line (all cores), so idle, iowait and steal are out — time the hypervisor gave to
/// other guests is not charged to the load.
pub struct BusyMeter {
    start: CpuTimes,
    started: Instant,
}

/// The columns of the `cpu` line a [`BusyMeter`] reads, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    steal: u64,
    /// user … steal: all time, guest time excluded (user time holds it already).
    total: u64,
}

/// What a [`BusyMeter`] measured.
#[derive(Debug, Clone, Copy)]
pub struct BusySpan {
    /// Busy CPU seconds, all cores together.
    pub busy_s: f64,
    /// Stolen ÷ all CPU time, × 100.
    pub steal_pct: f64,
    /// Wall seconds.
    pub wall_s: f64,
}

impl BusyMeter {
    pub fn start() -> Result<Self> {
        Ok(Self {
            start: read_cpu_times()?,
            started: Instant::now(),
        })
    }

    pub fn stop(self) -> Result<BusySpan> {
        let end = read_cpu_times()?;
        let wall_s = self.started.elapsed().as_secs_f64();
        let total = end.total.saturating_sub(self.start.total);
        let steal = end.steal.saturating_sub(self.start.steal);
        Ok(BusySpan {
            busy_s: end.busy.saturating_sub(self.start.busy) as f64 / clock_ticks_per_second()?,
            steal_pct: if total > 0 {
                steal as f64 / total as f64 * 100.0
            } else {
                0.0
            },
            wall_s,
        })
    }
}

fn read_cpu_times() -> Result<CpuTimes> {
    let text = fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
    parse_cpu_times(&text).context("no complete `cpu` line in /proc/stat")
}

/// user nice system idle iowait irq softirq steal … of the machine-wide `cpu` line.
fn parse_cpu_times(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let columns: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|c| c.parse().ok())
        .collect::<Option<_>>()?;
    let column = |i: usize| columns.get(i).copied();
    Some(CpuTimes {
        busy: column(0)? + column(1)? + column(2)? + column(5)? + column(6)?,
        steal: column(7)?,
        total: columns.iter().take(8).sum(),
    })
}

fn read_steal() -> Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
    parse_cpu_line(&text).context("no `cpu` line in /proc/stat")
}

/// (steal, sum of all columns but guest time, which user time already holds) of the
/// machine-wide `cpu` line: user nice system idle iowait irq softirq steal guest guest_nice.
fn parse_cpu_line(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let columns: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|c| c.parse().ok())
        .collect::<Option<_>>()?;
    let steal = *columns.get(7)?;
    Some((steal, columns.iter().take(8).sum()))
}

/// The unit of the /proc times (USER_HZ, 100 on every Linux architecture in practice).
fn clock_ticks_per_second() -> Result<f64> {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => Ok(hz as f64),
        other => bail!("sysconf(_SC_CLK_TCK) gave {other:?}"),
    }
}

/// The ticks of every process in the trees under `roots`; fails if a root is gone.
fn tree_ticks(roots: &[u32]) -> Result<u64> {
    let processes = all_processes()?;
    Ok(walk(&processes, roots)?
        .iter()
        .map(|pid| processes.get(pid).map_or(0, |p| p.ticks))
        .sum())
}

/// CPU seconds (user + system, with reaped children) of the trees under `roots` so far.
pub fn tree_cpu_s(roots: &[u32]) -> Result<f64> {
    Ok(tree_ticks(roots)? as f64 / clock_ticks_per_second()?)
}

/// The kernel's softirq threads (`ksoftirqd/N`): softirq work deferred to them (under load)
/// is charged to them rather than to the task it interrupted.
pub fn ksoftirqd_pids() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("could not list /proc")? {
        let entry = entry.context("could not list /proc")?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ksoftirqd/") {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// CPU seconds (user + system) of the children this process has reaped so far
/// (`getrusage(RUSAGE_CHILDREN)`): a load generator's, once it has exited.
pub fn reaped_children_cpu_s() -> Result<f64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .context("getrusage(RUSAGE_CHILDREN)")?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

/// Every process in the trees under `roots` (the roots and all their descendants); fails if
/// a root is gone.
pub fn tree_pids(roots: &[u32]) -> Result<Vec<u32>> {
    walk(&all_processes()?, roots)
}

fn walk(processes: &HashMap<u32, ProcStat>, roots: &[u32]) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    let mut pending = roots.to_vec();
    for &root in roots {
        if !processes.contains_key(&root) {
            bail!("process {root} is no longer in /proc");
        }
    }
    while let Some(pid) = pending.pop() {
        found.push(pid);
        pending.extend(
            processes
                .iter()
                .filter(|(_, p)| p.ppid == pid)
                .map(|(&child, _)| child),
        );
    }
    Ok(found)
}

/// Every process in /proc by PID; processes that exit while it is read are left out.
fn all_processes() -> Result<HashMap<u32, ProcStat>> {
    let mut processes = HashMap::new();
    for entry in fs::read_dir("/proc").context("could not list /proc")? {
        let entry = entry.context("could not list /proc")?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(line) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(stat) = parse_stat(&line) {
            processes.insert(pid, stat);
        }
    }
    Ok(processes)
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// itself contain spaces and `)`, so the fields are counted from the last `)`.
fn parse_stat(line: &str) -> Option<ProcStat> {
    let (_, rest) = line.rsplit_once(')')?;
    // Fields 3 (state) onwards; ppid is field 4, utime..cstime are fields 14 to 17.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    let ppid = u32::try_from(field(4)?).ok()?;
    let ticks = field(14)? + field(15)? + field(16)? + field(17)?;
    Some(ProcStat { ppid, ticks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_column_of_the_cpu_line() {
        let text = "cpu  100 5 50 800 10 1 4 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\n";
        assert_eq!(parse_cpu_line(text), Some((30, 1000)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3\n"), None);
        assert_eq!(parse_cpu_line("cpu  1 2 3\n"), None, "too few columns");
        let meter = StealMeter::start().unwrap();
        let pct = meter.stop().unwrap();
        assert!((0.0..=100.0).contains(&pct), "{pct}");
    }

    #[test]
    fn busy_time_leaves_out_idle_iowait_and_steal() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let text = "cpu  100 5 50 800 10 1 4 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\n";
        assert_eq!(
            parse_cpu_times(text),
            Some(CpuTimes {
                busy: 100 + 5 + 50 + 1 + 4,
                steal: 30,
                total: 1000
            })
        );
        assert_eq!(
            parse_cpu_times("cpu  1 2 3 4 5 6\n"),
            None,
            "no steal column"
        );
        assert_eq!(
            parse_cpu_times("cpu0 1 2 3 4 5 6 7 8\n"),
            None,
            "no machine line"
        );
        let meter = BusyMeter::start().unwrap();
        let span = meter.stop().unwrap();
        assert!(span.busy_s >= 0.0 && (0.0..=100.0).contains(&span.steal_pct));
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "1234 (a b) c) S 77 1234 1234 0 -1 4194560 120 0 0 0 \
                    250 31 4 2 20 0 1 0 5000 1000000 200 18446744073709551615\n";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                ppid: 77,
                ticks: 250 + 31 + 4 + 2
            })
        );
        assert_eq!(parse_stat("1234 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn this_process_is_its_own_tree() {
        let me = std::process::id();
        assert!(all_processes().unwrap().contains_key(&me));
        assert!(tree_ticks(&[me]).is_ok());
        assert_eq!(tree_pids(&[me]).unwrap()[0], me);
        assert!(tree_cpu_s(&[me]).unwrap() >= 0.0);
        assert!(reaped_children_cpu_s().unwrap() >= 0.0);
        assert!(
            !ksoftirqd_pids().unwrap().is_empty(),
            "one ksoftirqd per CPU"
        );
        assert!(tree_pids(&[u32::MAX]).is_err());
        let meter = Meter::start(&[me]).unwrap().unwrap();
        assert!(meter.stop().unwrap() >= 0.0);
        assert!(Meter::start(&[]).unwrap().is_none());
    }
}
