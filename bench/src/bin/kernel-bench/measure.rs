//! Running frames through the loaded programs with `BPF_PROG_TEST_RUN`, and the two ways
//! of turning that into a per-packet time.
//!
//! * **repeat**: one call runs the same frame `repeat` times in the kernel; the time is the
//!   calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) over the call, less the call's
//!   fixed cost (measured with `repeat` = 2: syscall, copies and, for XDP, installing the
//!   program in the XDP dispatcher), divided by `repeat`. The kernel's own `duration` is
//!   truncated to whole nanoseconds and wall-clock based (it also counts time the host
//!   steals from this VM, which paravirtual steal-time accounting keeps out of a thread's
//!   CPU time); under load the two differ by several ns. The kernel does not restore the
//!   frame between runs, so the frame must be a fixed point of the program (see
//!   `cases.rs`).
//! * **single**: one call per frame (`repeat` = 1), each a different frame; the time is the
//!   kernel's own `duration` of that one run (its clock reads included, the copies not).
//!   Needed where every run must see a fresh frame (a SYN that creates a flow) or a
//!   different flow (the spread hit path). Per round, the interquartile mean of the calls.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, TestRunResult};
use redirector::dataplane::Dataplane;
use redirector_common::stats::Counter;

/// `XDP_PASS`, what the XDP programs return.
pub const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC` (-1) as the kernel reports it, what the TC programs return.
pub const TC_NEXT: u32 = u32::MAX;

/// The hook a program runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// XDP (ingress).
    Xdp,
    /// TC (egress).
    Tc,
}

impl Hook {
    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }

    /// The redirector's program on this hook (ingress at XDP, egress at TC).
    pub fn program(self) -> Prog {
        match self {
            Hook::Xdp => Prog::XdpIngress,
            Hook::Tc => Prog::TcEgress,
        }
    }

    /// The empty program of this hook.
    pub fn baseline(self) -> Prog {
        match self {
            Hook::Xdp => Prog::PassXdp,
            Hook::Tc => Prog::PassTc,
        }
    }

    /// The verdict every program of this hook returns.
    pub fn verdict(self) -> u32 {
        match self {
            Hook::Xdp => XDP_PASS,
            Hook::Tc => TC_NEXT,
        }
    }
}

/// A program under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    /// The real XDP ingress program.
    XdpIngress,
    /// The real TC egress program.
    TcEgress,
    /// The XDP baseline (returns `XDP_PASS`).
    PassXdp,
    /// The TC baseline (returns `TC_ACT_UNSPEC`).
    PassTc,
}

impl Prog {
    /// Its hook.
    pub fn hook(self) -> Hook {
        match self {
            Prog::XdpIngress | Prog::PassXdp => Hook::Xdp,
            Prog::TcEgress | Prog::PassTc => Hook::Tc,
        }
    }
}

/// How a time per packet was obtained (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// One frame, many runs per call, thread CPU time.
    Repeat,
    /// One run per call, the kernel's duration, many different frames.
    Single,
}

impl Method {
    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Method::Repeat => "repeat",
            Method::Single => "single",
        }
    }
}

/// What one call returned: verdict, output frame, and the kernel's mean time per run.
pub struct Ran {
    /// Program return value.
    pub verdict: u32,
    /// The frame after the last run.
    pub out: Vec<u8>,
    /// The kernel's `duration` (mean per run, whole nanoseconds).
    pub kernel_ns: u64,
}

/// Runs `input` through `prog` `repeat` times in one call.
pub fn run(dp: &mut Dataplane, prog: Prog, input: &[u8], repeat: u32) -> Result<Ran> {
    let mut out = vec![0u8; input.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    };
    let result = test_run(dp, prog, opts)
        .with_context(|| format!("BPF_PROG_TEST_RUN {prog:?} (len {})", input.len()))?;
    out.truncate(result.data_size_out as usize);
    Ok(Ran {
        verdict: result.return_value,
        out,
        kernel_ns: result.duration.as_nanos() as u64,
    })
}

fn test_run(dp: &mut Dataplane, prog: Prog, opts: TestRunOptions<'_>) -> Result<TestRunResult> {
    Ok(match prog {
        Prog::XdpIngress => dp.xdp_ingress()?.test_run(opts)?,
        Prog::TcEgress => dp.tc_egress()?.test_run(opts)?,
        Prog::PassXdp => dp.baseline_xdp()?.test_run(opts)?,
        Prog::PassTc => dp.baseline_tc()?.test_run(opts)?,
    })
}

/// Runs `input` once and fails unless the verdict is the hook's and the output is `want`.
pub fn run_checked(dp: &mut Dataplane, prog: Prog, input: &[u8], want: &[u8]) -> Result<u64> {
    let ran = run(dp, prog, input, 1)?;
    check_ran(prog, &ran, want)?;
    Ok(ran.kernel_ns)
}

fn check_ran(prog: Prog, ran: &Ran, want: &[u8]) -> Result<()> {
    ensure!(
        ran.verdict == prog.hook().verdict(),
        "{prog:?}: verdict {} instead of {}",
        ran.verdict,
        prog.hook().verdict()
    );
    ensure!(
        ran.out == want,
        "{prog:?}: output frame differs from the expected one\n got  {:02x?}\n want {:02x?}",
        ran.out,
        want
    );
    Ok(())
}

/// A global counter, summed over CPUs.
pub fn counter(dp: &Dataplane, counter: Counter) -> Result<u64> {
    Ok(dp.counters()?[counter as usize])
}

/// Fails unless `counter` went up by exactly `runs` since `before`: every run took the path
/// the case claims (the counters are only fed by our test runs: nothing is attached).
pub fn check_counted(dp: &Dataplane, counter: Counter, before: u64, runs: u64) -> Result<()> {
    let delta = self::counter(dp, counter)? - before;
    if delta != runs {
        bail!(
            "counter {} rose by {delta} over {runs} runs: the timed runs did not all take \
             the path the case measures",
            counter.name()
        );
    }
    Ok(())
}

/// CPU time consumed by this thread so far, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How to time one program in repeat mode: runs per call, and the CPU time a call costs
/// besides its runs.
#[derive(Clone, Copy, Debug)]
pub struct Calls {
    /// Runs per call.
    pub repeat: u32,
    /// Fixed cost of a call (syscall, copies and, for XDP with `repeat` > 1, installing
    /// and removing the program in the XDP dispatcher: text patching, about 0.3 ms here,
    /// against about 1.5 µs for TC).
    pub overhead_ns: f64,
}

/// One repeat-mode call: thread CPU time per run (the call's fixed cost taken out), after
/// checking verdict and final frame.
pub fn time_repeat(
    dp: &mut Dataplane,
    prog: Prog,
    input: &[u8],
    want: &[u8],
    calls: Calls,
) -> Result<f64> {
    let start = thread_cpu_ns();
    let ran = run(dp, prog, input, calls.repeat)?;
    let spent = (thread_cpu_ns() - start) as f64;
    check_ran(prog, &ran, want)?;
    ensure!(
        spent > calls.overhead_ns,
        "a call of {} runs took {spent:.0} ns of CPU, no more than its fixed cost of {:.0} ns",
        calls.repeat,
        calls.overhead_ns
    );
    Ok((spent - calls.overhead_ns) / f64::from(calls.repeat))
}

/// The fixed cost of a call (median of calls with `repeat` 2, the smallest that takes the
/// repeat path), and a `repeat` that makes one call last about `target` of CPU time, and
/// at least `WORK_OVER_FIXED` times the fixed cost: with less, a fixed cost measured high
/// (a preempted calibration call) could exceed a whole call and leave nothing per packet.
fn calibrate(dp: &mut Dataplane, prog: Prog, input: &[u8], target: Duration) -> Result<Calls> {
    const PROBE: u32 = 10_000;
    const WORK_OVER_FIXED: f64 = 50.0;
    let mut fixed = Vec::new();
    for _ in 0..5 {
        let start = thread_cpu_ns();
        run(dp, prog, input, 2)?;
        fixed.push((thread_cpu_ns() - start) as f64);
    }
    let overhead_ns = median(&fixed);
    // The fastest of three probes: a probe slowed by an interruption would make `repeat`
    // too small.
    let mut probe_ns = f64::INFINITY;
    for _ in 0..3 {
        let start = thread_cpu_ns();
        run(dp, prog, input, PROBE)?;
        let ns = ((thread_cpu_ns() - start) as f64 - overhead_ns) / f64::from(PROBE);
        probe_ns = probe_ns.min(ns);
    }
    let ns = probe_ns.max(0.1);
    let repeat = (target.as_nanos() as f64 / ns).max(WORK_OVER_FIXED * overhead_ns / ns);
    Ok(Calls {
        repeat: repeat.clamp(1_000.0, 50_000_000.0) as u32,
        overhead_ns,
    })
}

/// How much to measure.
pub struct Settings {
    /// Rounds per measurement (program and baseline alternate; the median is reported).
    pub rounds: usize,
    /// CPU time one repeat-mode call should take.
    pub call_time: Duration,
    /// Calls (different frames) per single-mode round.
    pub single_calls: usize,
}

/// Medians over the rounds of a program and of its hook's baseline, timed alternately.
#[derive(Clone, Copy, Debug)]
pub struct Paired {
    /// The program, ns per packet.
    pub prog_ns: f64,
    /// The empty program of the same hook, ns per packet.
    pub pass_ns: f64,
}

/// Repeat mode: `input` (which `prog` turns into `want`, itself a fixed point) through
/// `prog` and through the baseline, `settings.rounds` times each, alternating which goes
/// first; every run of `prog` must feed `counter`.
pub fn pair_repeat(
    dp: &mut Dataplane,
    prog: Prog,
    input: &[u8],
    want: &[u8],
    counter: Counter,
    settings: &Settings,
) -> Result<Paired> {
    let base = prog.hook().baseline();
    let prog_calls = calibrate(dp, prog, input, settings.call_time)?;
    let base_calls = calibrate(dp, base, input, settings.call_time)?;
    let before = self::counter(dp, counter)?;
    let (mut prog_ns, mut pass_ns) = (Vec::new(), Vec::new());
    for round in 0..settings.rounds {
        if round % 2 == 0 {
            pass_ns.push(time_repeat(dp, base, input, input, base_calls)?);
        }
        prog_ns.push(time_repeat(dp, prog, input, want, prog_calls)?);
        if round % 2 == 1 {
            pass_ns.push(time_repeat(dp, base, input, input, base_calls)?);
        }
    }
    let runs = u64::from(prog_calls.repeat) * settings.rounds as u64;
    check_counted(dp, counter, before, runs)?;
    Ok(Paired {
        prog_ns: median(&prog_ns),
        pass_ns: median(&pass_ns),
    })
}

/// A frame and what the program must turn it into.
#[derive(Clone)]
pub struct Probe {
    /// Input frame.
    pub input: Vec<u8>,
    /// Expected output frame.
    pub want: Vec<u8>,
}

/// Single mode, one round: every probe once through `prog` and once through the baseline
/// (alternating which goes first), each output checked; every run of `prog` must feed
/// `counter`. Returns the interquartile means of the kernel's per-run durations.
pub fn pair_single(
    dp: &mut Dataplane,
    prog: Prog,
    probes: &[Probe],
    counter: Counter,
) -> Result<Paired> {
    let base = prog.hook().baseline();
    let before = self::counter(dp, counter)?;
    let (mut prog_ns, mut pass_ns) = (Vec::new(), Vec::new());
    for (i, probe) in probes.iter().enumerate() {
        if i % 2 == 0 {
            pass_ns.push(run_checked(dp, base, &probe.input, &probe.input)?);
        }
        prog_ns.push(run_checked(dp, prog, &probe.input, &probe.want)?);
        if i % 2 == 1 {
            pass_ns.push(run_checked(dp, base, &probe.input, &probe.input)?);
        }
    }
    check_counted(dp, counter, before, probes.len() as u64)?;
    Ok(Paired {
        prog_ns: interquartile_mean(&prog_ns),
        pass_ns: interquartile_mean(&pass_ns),
    })
}

/// Single mode over rounds: `probes_for(round)` gives each round's frames (fresh ones
/// where a run changes state, e.g. a SYN creating its flow); medians over the rounds.
pub fn pair_single_rounds(
    dp: &mut Dataplane,
    prog: Prog,
    counter: Counter,
    settings: &Settings,
    mut probes_for: impl FnMut(usize) -> Vec<Probe>,
) -> Result<Paired> {
    let (mut prog_ns, mut pass_ns) = (Vec::new(), Vec::new());
    for round in 0..settings.rounds {
        let paired = pair_single(dp, prog, &probes_for(round), counter)?;
        prog_ns.push(paired.prog_ns);
        pass_ns.push(paired.pass_ns);
    }
    Ok(Paired {
        prog_ns: median(&prog_ns),
        pass_ns: median(&pass_ns),
    })
}

/// Median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Mean of the values between the first and third quartile: robust to the interrupts and
/// cache-cold outliers of single runs, yet finer than the whole nanoseconds of each one.
pub fn interquartile_mean(values: &[u64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let (lo, hi) = (sorted.len() / 4, sorted.len() - sorted.len() / 4);
    let middle = &sorted[lo..hi.max(lo + 1)];
    middle.iter().sum::<u64>() as f64 / middle.len() as f64
}
