//! Child processes that are always stopped by PID when their guard is dropped: SIGTERM,
//! then SIGKILL after a bound, also on error or panic.
//!
//! Two ways to start one. Tests use [`Proc::spawn`]: the output is collected (stdout lines
//! in `seen`, stderr for failure messages) and every wait panics when it fails. xtask and
//! the benchmark use [`Proc::background`]: each output line is echoed with a `[label] `
//! prefix, the child gets its own process group (a Ctrl-C at the terminal reaches only the
//! parent, which then stops it in order), and waits return a typed error.

use std::io::{self, BufRead as _, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, Cmd};
use crate::error_chain;
use crate::interrupt::{self, Interrupted};

/// How long a test's process gets to exit after SIGTERM before SIGKILL.
const TEST_TERM_GRACE: Duration = Duration::from_secs(5);
/// How long a background process gets to exit after SIGTERM before SIGKILL.
const BACKGROUND_TERM_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the last lines of a process that has exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a process that closed its stdout gets to show its exit, which then is what a
/// wait reports.
const EXIT_AFTER_EOF: Duration = Duration::from_secs(1);
/// Slice of the bounded waits of background processes, to notice an exit or Ctrl-C soon.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Slice of the tests' waits for an exit.
const TEST_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Why a background process did not do what was waited for, or could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process could not be started.
    #[error(transparent)]
    Cmd(#[from] cmd::Error),
    /// Ctrl-C was pressed during a wait.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// The process exited (or could not be checked on) while a wait for `what` was going on.
    #[error("{label} exited before {what}")]
    ExitedBefore {
        /// The process's label.
        label: String,
        /// What was being waited for, as the caller described it.
        what: String,
        /// The [`Error::NotRunning`] (or [`Error::Check`]) that ended the wait.
        #[source]
        source: Box<Error>,
    },
    /// The process has exited.
    #[error("{label} is no longer running ({status})")]
    NotRunning {
        /// The process's label.
        label: String,
        /// How it exited.
        status: ExitStatus,
    },
    /// No stdout line was accepted as ready before the wait's timeout.
    #[error("{label} did not show {what} within {secs} s (command: `{command}`)")]
    NoReadyLine {
        /// The process's label.
        label: String,
        /// What was being waited for, as the caller described it.
        what: String,
        /// The timeout, in whole seconds.
        secs: u64,
        /// The process's command line.
        command: String,
    },
    /// The process closed its stdout (while still running) before the line waited for.
    #[error("{label} closed its stdout before {what}")]
    StdoutClosed {
        /// The process's label.
        label: String,
        /// What was being waited for, as the caller described it.
        what: String,
    },
    /// kill(2) with the stop signal failed (other than for a process already gone).
    #[error("could not send {signal} to {pid}")]
    Signal {
        /// The signal that was to be sent.
        signal: Signal,
        /// The process's PID.
        pid: Pid,
        /// The errno of kill(2).
        #[source]
        source: Errno,
    },
    /// The SIGKILL after the grace period could not be sent.
    #[error("could not kill {label} (pid {pid})")]
    Kill {
        /// The process's label.
        label: String,
        /// The process's PID.
        pid: Pid,
        /// Why sending SIGKILL failed.
        #[source]
        source: io::Error,
    },
    /// Reaping the process after SIGKILL failed.
    #[error("could not wait for {label} (pid {pid})")]
    Wait {
        /// The process's label.
        label: String,
        /// The process's PID.
        pid: Pid,
        /// Why the wait failed.
        #[source]
        source: io::Error,
    },
    /// Checking whether the process has exited (a non-blocking wait) failed.
    #[error("could not check on {label}")]
    Check {
        /// The process's label.
        label: String,
        /// Why the check failed.
        #[source]
        source: io::Error,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// A running child, stopped by PID when dropped.
pub struct Proc {
    label: String,
    /// The command line, for messages.
    shown: String,
    child: Child,
    /// Stdout lines; disconnected once stdout is closed and read to the end.
    lines: Receiver<String>,
    /// Every stdout line received so far.
    pub seen: Vec<String>,
    /// Stderr lines, when collected (tests) rather than echoed.
    stderr: Option<Receiver<String>>,
    /// Background (echoing, announcing) or a test's.
    background: bool,
    /// Set once the child has been reaped; from then on its PID is no longer ours.
    exit_status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` for a test with piped stdout/stderr (and stdin if `stdin` is true),
    /// collecting its output; panics if it cannot be started.
    pub fn spawn(label: &str, mut cmd: Command, stdin: bool) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {label} ({cmd:?}): {e}"));
        let (lines, stderr) = read_output(&mut child, None);
        Self {
            label: label.to_owned(),
            shown: format!("{cmd:?}"),
            child,
            lines,
            seen: Vec::new(),
            stderr,
            background: false,
            exit_status: None,
        }
    }

    /// Starts `cmd` in the background, echoing each stdout line as `[label] line` on stdout
    /// and each stderr line the same way on stderr.
    pub fn background(label: &str, cmd: Cmd) -> Result<Self> {
        let shown = cmd.to_string();
        println!("$ {shown} &");
        let mut child = cmd.spawn_piped()?;
        let (lines, stderr) = read_output(&mut child, Some(label));
        println!("  started {label} (pid {})", child.id());
        Ok(Self {
            label: label.to_owned(),
            shown,
            child,
            lines,
            seen: Vec::new(),
            stderr,
            background: true,
            exit_status: None,
        })
    }

    /// Its label in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process ID (still ours until the process is reaped, which only `stop`,
    /// `wait_exit` and the exit checks do).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process ID (tests' name for `id`).
    pub fn pid(&self) -> u32 {
        self.id()
    }

    /// The child's stdin (when spawned with `stdin = true`).
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("spawned without stdin")
    }

    /// Closes stdin (EOF for the child).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits up to `timeout` for a stdout line starting with `prefix`; panics otherwise.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no line `{prefix}` within {timeout:?}; stdout {:?}; stderr:\n{}",
                        self.label,
                        self.seen,
                        self.stderr_text()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{}: exited before printing `{prefix}`; stdout {:?}; stderr:\n{}",
                        self.label,
                        self.seen,
                        self.stderr_text()
                    )
                }
            }
        }
    }

    /// Waits until `ready` has returned true for a stdout line; fails if the process exits,
    /// closes its stdout, Ctrl-C is pressed, or `timeout` passes first.
    pub fn wait_for_stdout(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            self.ensure_running_before(what)?;
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NoReadyLine {
                    label: self.label.clone(),
                    what: what.to_owned(),
                    secs: timeout.as_secs(),
                    command: self.shown.clone(),
                });
            }
            match self.lines.recv_timeout(POLL_INTERVAL.min(deadline - now)) {
                Ok(line) => {
                    let found = ready(&line);
                    self.seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closes as the process exits: report the exit if it follows.
                    let exit_deadline = Instant::now() + EXIT_AFTER_EOF;
                    loop {
                        self.ensure_running_before(what)?;
                        if Instant::now() >= exit_deadline {
                            break;
                        }
                        thread::sleep(TEST_POLL_INTERVAL);
                    }
                    return Err(Error::StdoutClosed {
                        label: self.label.clone(),
                        what: what.to_owned(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Fails, with the exit status, if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_wait()? {
            None => Ok(()),
            Some(status) => Err(Error::NotRunning {
                label: self.label.clone(),
                status,
            }),
        }
    }

    /// Sends `signal` (a libc signal number) to the child; panics if there is no such
    /// signal (tests).
    pub fn signal(&self, signal: i32) {
        let signal = Signal::try_from(signal).expect("a valid signal number");
        if self.exit_status.is_some() {
            // Reaped: the PID is no longer ours.
            return;
        }
        // An exited but not yet reaped child ignores it, as kill(2) would.
        let _ = signal::kill(self.nix_pid(), signal);
    }

    /// Waits up to `timeout` for exit; returns the status and all stdout lines (tests;
    /// panics on timeout).
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait().expect("try_wait") {
                self.seen.extend(self.lines.try_iter());
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return (status, self.seen.clone());
            }
            if Instant::now() > deadline {
                panic!("{}: did not exit within {timeout:?}", self.label);
            }
            thread::sleep(TEST_POLL_INTERVAL);
        }
    }

    /// Everything the child wrote to stderr so far (empty when it is echoed instead).
    pub fn stderr_text(&self) -> String {
        self.stderr
            .as_ref()
            .map(|stderr| stderr.try_iter().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Sends `signal`, waits up to `grace` for the exit, then SIGKILLs; waits for the last
    /// output lines of a background process to be echoed, and returns the exit status.
    pub fn stop(&mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let pid = self.nix_pid();
        match signal::kill(pid, signal) {
            // Already gone (but not yet reaped): the wait below collects it.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => {
                return Err(Error::Signal {
                    signal,
                    pid,
                    source,
                })
            }
        }
        let poll = if self.background {
            POLL_INTERVAL
        } else {
            TEST_POLL_INTERVAL
        };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                self.drain_stdout();
                return Ok(status);
            }
            thread::sleep(poll);
        }
        if self.background {
            eprintln!(
                "  {} (pid {pid}) still running {} s after {signal}: sending SIGKILL",
                self.label,
                grace.as_secs()
            );
        }
        // Child::kill sends SIGKILL to the not yet reaped child, i.e. still our PID.
        self.child.kill().map_err(|source| Error::Kill {
            label: self.label.clone(),
            pid,
            source,
        })?;
        let status = self.child.wait().map_err(|source| Error::Wait {
            label: self.label.clone(),
            pid,
            source,
        })?;
        self.exit_status = Some(status);
        self.drain_stdout();
        Ok(status)
    }

    fn ensure_running_before(&mut self, what: &str) -> Result<()> {
        self.ensure_running().map_err(|source| Error::ExitedBefore {
            label: self.label.clone(),
            what: what.to_owned(),
            source: Box::new(source),
        })
    }

    fn nix_pid(&self) -> Pid {
        // Linux PIDs fit in an i32 (pid_max is at most 2^22).
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait().map_err(|source| Error::Check {
                label: self.label.clone(),
                source,
            })?;
        }
        Ok(self.exit_status)
    }

    /// Waits (bounded) until the stdout reader of a background process has echoed
    /// everything the process printed; a test's lines stay queued for `wait_exit`.
    fn drain_stdout(&mut self) {
        if !self.background {
            return;
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => return,
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        if !self.background {
            let _ = self.stop(Signal::SIGTERM, TEST_TERM_GRACE);
            return;
        }
        println!("  stopping {} (pid {})", self.label, self.child.id());
        if let Err(err) = self.stop(Signal::SIGTERM, BACKGROUND_TERM_GRACE) {
            eprintln!(
                "  warning: could not stop {}: {}",
                self.label,
                error_chain(&err)
            );
        }
    }
}

/// Starts the reader threads of the child's stdout and stderr: stdout lines always go to
/// the returned channel; with an `echo` label both streams are also echoed with it and
/// stderr is not collected.
fn read_output(
    child: &mut Child,
    echo: Option<&str>,
) -> (Receiver<String>, Option<Receiver<String>>) {
    let (lines_tx, lines) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let echo = echo.map(|label| format!("[{label}] "));
        thread::spawn(move || {
            forward_lines(stdout, |line| {
                let Some(prefix) = &echo else {
                    return lines_tx.send(line).is_ok();
                };
                println!("{prefix}{line}");
                // Echoing goes on when nobody waits for lines any more: a child must
                // never block on a full pipe.
                let _ = lines_tx.send(line);
                true
            })
        });
    }
    let mut collected = None;
    if let Some(stderr) = child.stderr.take() {
        match echo {
            Some(label) => {
                let prefix = format!("[{label}] ");
                thread::spawn(move || {
                    forward_lines(stderr, |line| {
                        eprintln!("{prefix}{line}");
                        true
                    })
                });
            }
            None => {
                let (tx, rx): (Sender<String>, _) = mpsc::channel();
                thread::spawn(move || forward_lines(stderr, |line| tx.send(line).is_ok()));
                collected = Some(rx);
            }
        }
    }
    (lines, collected)
}

/// Hands each line of `pipe` to `on_line` until the pipe closes or `on_line` returns false.
fn forward_lines(pipe: impl Read, mut on_line: impl FnMut(String) -> bool) {
    let mut reader = BufReader::new(pipe);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // read_until, not lines(): a non-UTF-8 line must not stop the reader (and then
        // block the child on a full pipe).
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        if !on_line(line) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_reports_an_exit_that_follows_the_end_of_stdout() {
        let cmd = Cmd::new("sh").args(["-c", "exec >&-; sleep 0.3; exit 3"]);
        let mut proc = Proc::background("closes-then-exits", cmd).unwrap();
        let err = proc
            .wait_for_stdout("a line", Duration::from_secs(5), |_| true)
            .unwrap_err();
        assert!(matches!(err, Error::ExitedBefore { .. }), "{err:?}");
    }
}
