//! Long-running helper processes (ws-echo, the redirector loader): their output is echoed with
//! a `[label] ` prefix, their stdout can be waited on for a readiness line, and dropping one
//! always stops it by PID: SIGTERM, then SIGKILL after a bound.

use std::io::{BufRead as _, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::cmd::Cmd;
use crate::interrupt;

/// How long a process gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the last lines of a process that has exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Slice of the bounded waits, to notice an exit or Ctrl-C soon.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What the stdout reader thread reports.
enum StdoutEvent {
    Line(String),
    Closed,
}

/// A child process started by xtask and stopped again when this is dropped.
pub struct Background {
    label: &'static str,
    shown: String,
    child: Child,
    stdout_events: Receiver<StdoutEvent>,
    /// Set once the child has been reaped; from then on its PID is no longer ours.
    exit_status: Option<ExitStatus>,
}

impl Background {
    /// Starts `cmd`, echoing each stdout line as `[label] line` on stdout and each stderr line
    /// the same way on stderr.
    pub fn spawn(label: &'static str, cmd: Cmd) -> Result<Self> {
        let shown = cmd.to_string();
        println!("$ {shown} &");
        let mut child = cmd.spawn_piped()?;
        let (events, stdout_events) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || forward_lines(label, stdout, Some(events)));
        }
        if let Some(stderr) = child.stderr.take() {
            thread::spawn(move || forward_lines(label, stderr, None));
        }
        println!("  started {label} (pid {})", child.id());
        Ok(Self {
            label,
            shown,
            child,
            stdout_events,
            exit_status: None,
        })
    }

    /// Waits until `ready` has returned true for a stdout line; fails if the process exits,
    /// closes its stdout, or `timeout` passes first.
    pub fn wait_for_stdout(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            self.ensure_running()
                .with_context(|| format!("{} exited before {what}", self.label))?;
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{} did not show {what} within {} s (command: `{}`)",
                    self.label,
                    timeout.as_secs(),
                    self.shown
                );
            }
            match self
                .stdout_events
                .recv_timeout(POLL_INTERVAL.min(deadline - now))
            {
                Ok(StdoutEvent::Line(line)) => {
                    if ready(&line) {
                        return Ok(());
                    }
                }
                Ok(StdoutEvent::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    // Give the exit a moment to become visible, then report it.
                    thread::sleep(POLL_INTERVAL);
                    self.ensure_running()
                        .with_context(|| format!("{} exited before {what}", self.label))?;
                    bail!("{} closed its stdout before {what}", self.label);
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Fails, with the exit status, if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} is no longer running ({status})", self.label),
        }
    }

    /// Sends `signal`, waits up to `grace` for the exit, then SIGKILLs; waits for the last
    /// output lines to be echoed, and returns the exit status.
    pub fn stop(&mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = self.pid();
        match signal::kill(pid, signal) {
            // Already gone (but not yet reaped): the wait below collects it.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => return Err(err).context(format!("could not send {signal} to {pid}")),
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                self.drain_stdout();
                return Ok(status);
            }
            thread::sleep(POLL_INTERVAL);
        }
        eprintln!(
            "  {} (pid {pid}) still running {} s after {signal}: sending SIGKILL",
            self.label,
            grace.as_secs()
        );
        // Child::kill sends SIGKILL to the not yet reaped child, i.e. still our PID.
        self.child
            .kill()
            .with_context(|| format!("could not kill {} (pid {pid})", self.label))?;
        let status = self
            .child
            .wait()
            .with_context(|| format!("could not wait for {} (pid {pid})", self.label))?;
        self.exit_status = Some(status);
        self.drain_stdout();
        Ok(status)
    }

    pub fn label(&self) -> &'static str {
        self.label
    }

    /// The process ID (still ours until the process is reaped, which only `stop` and the
    /// exit checks do).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    fn pid(&self) -> Pid {
        // Linux PIDs fit in an i32 (pid_max is at most 2^22).
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit_status.is_none() {
            self.exit_status = self
                .child
                .try_wait()
                .with_context(|| format!("could not check on {}", self.label))?;
        }
        Ok(self.exit_status)
    }

    /// Waits (bounded) until the stdout reader has echoed everything the process printed.
    fn drain_stdout(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stdout_events.recv_timeout(left) {
                Ok(StdoutEvent::Line(_)) => {}
                Ok(StdoutEvent::Closed) | Err(_) => return,
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        println!("  stopping {} (pid {})", self.label, self.child.id());
        if let Err(err) = self.stop(Signal::SIGTERM, TERM_GRACE) {
            eprintln!("  warning: could not stop {}: {err:#}", self.label);
        }
    }
}

/// Echoes each line of `pipe` with the label; stdout lines also go to `events`.
fn forward_lines(label: &str, pipe: impl Read, events: Option<Sender<StdoutEvent>>) {
    let mut reader = BufReader::new(pipe);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // read_until, not lines(): a non-UTF-8 line must not stop the echo (and then block
        // the child on a full pipe).
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
        match &events {
            Some(events) => {
                println!("[{label}] {line}");
                let _ = events.send(StdoutEvent::Line(line));
            }
            None => eprintln!("[{label}] {line}"),
        }
    }
    if let Some(events) = events {
        let _ = events.send(StdoutEvent::Closed);
    }
}
