//! CPU time over one load run, from /proc: of a configuration's own processes (each started
//! process and all its descendants, as a percentage of one core), and stolen from the whole
//! machine by its hypervisor (as a percentage of all CPU time).

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
    let mut total = 0;
    let mut pending = roots.to_vec();
    for &root in roots {
        if !processes.contains_key(&root) {
            bail!("process {root} is no longer in /proc");
        }
    }
    while let Some(pid) = pending.pop() {
        total += processes.get(&pid).map_or(0, |p| p.ticks);
        pending.extend(
            processes
                .iter()
                .filter(|(_, p)| p.ppid == pid)
                .map(|(&child, _)| child),
        );
    }
    Ok(total)
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
        let meter = Meter::start(&[me]).unwrap().unwrap();
        assert!(meter.stop().unwrap() >= 0.0);
        assert!(Meter::start(&[]).unwrap().is_none());
    }
}
