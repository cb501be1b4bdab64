//! Running external programs: [`Cmd`] for xtask and the benchmark, whose every error names the
//! full command line and, when the output was captured, what the program printed; [`must`]
//! for tests, which panics the same way.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, BufRead as _, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::interrupt;

/// How often bounded waits look at the child again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Why a command did not run to a successful end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started (typically: it is not installed or not on PATH).
    #[error("could not start `{command}` (is `{program}` installed and on PATH?)")]
    Start {
        /// The full command line, shell-quoted.
        command: String,
        /// The program, the command line's first word.
        program: String,
        /// Why spawning it failed.
        #[source]
        source: io::Error,
    },
    /// Waiting for the started program (or checking whether it has exited) failed.
    #[error("could not wait for `{command}`")]
    Wait {
        /// The full command line, shell-quoted.
        command: String,
        /// Why the wait failed.
        #[source]
        source: io::Error,
    },
    /// It exited non-zero; `output` is empty or the quoted end of what it printed.
    #[error("`{command}` failed ({status}){output}")]
    Failed {
        /// The full command line, shell-quoted.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Empty when the output went to the terminal, else the last lines of its stdout
        /// and stderr (see [`describe_output`]).
        output: String,
    },
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a command to completion and panics with its output if it fails (for tests).
pub fn must(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Prints a step header, the line a reader scans for.
pub fn heading(title: impl fmt::Display) {
    println!("\n==> {title}");
}

/// A command line to run; `Display` shows it the way a user would type it.
pub struct Cmd {
    command: Command,
    argv: Vec<OsString>,
}

/// What a program printed, and how it ended (`None`: killed after its time ran out).
pub struct TimedOutput {
    /// How it exited; `None` if it was killed at the deadline or on Ctrl-C.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout (invalid UTF-8 replaced).
    pub stdout: String,
    /// Everything it wrote to stderr (invalid UTF-8 replaced).
    pub stderr: String,
}

impl Cmd {
    /// A command line of just `program` (looked up on PATH), with stdin from /dev/null.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let mut command = Command::new(program);
        // Nothing here is interactive, and CI has no stdin at all.
        command.stdin(Stdio::null());
        Self {
            command,
            argv: vec![program.to_owned()],
        }
    }

    /// `cargo` from PATH, so that rustup picks the toolchain as it would for the user.
    pub fn cargo() -> Self {
        Self::new("cargo")
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg.as_ref());
        self.argv.push(arg.as_ref().to_owned());
        self
    }

    /// Appends each of `args` in order.
    pub fn args<I>(mut self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        for arg in args {
            self = self.arg(arg);
        }
        self
    }

    /// Sets the environment variable `key` to `value` for the program (not shown in the
    /// command line).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Runs the program in `dir` instead of the current directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    /// Echoes the command line, runs it with the terminal as its output and fails unless it
    /// exits 0.
    pub fn run(mut self) -> Result<()> {
        println!("$ {self}");
        let status = self.command.status().map_err(|e| self.start_error(e))?;
        self.check(status)
    }

    /// Like `run`, but also hands each stdout line to `on_line` after echoing it.
    pub fn run_tee(mut self, mut on_line: impl FnMut(&str)) -> Result<()> {
        println!("$ {self}");
        let mut child = self
            .command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| self.start_error(e))?;
        if let Some(stdout) = child.stdout.take() {
            let mut reader = BufReader::new(stdout);
            let mut raw = Vec::new();
            // read_until, not lines(): a non-UTF-8 line must not end the echo early.
            while reader
                .read_until(b'\n', &mut raw)
                .is_ok_and(|read| read > 0)
            {
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\n', '\r']);
                println!("{line}");
                on_line(line);
                raw.clear();
            }
        }
        let status = child.wait().map_err(|e| self.wait_error(e))?;
        self.check(status)
    }

    /// Runs it quietly and returns its stdout; fails unless it exits 0, quoting its output.
    pub fn run_captured(self) -> Result<String> {
        let shown = self.to_string();
        let output = self.output()?;
        if !output.status.success() {
            return Err(Error::Failed {
                command: shown,
                status: output.status,
                output: describe_output(
                    &String::from_utf8_lossy(&output.stdout),
                    &String::from_utf8_lossy(&output.stderr),
                ),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs it quietly; fails only if it cannot be started at all.
    pub fn output(mut self) -> Result<Output> {
        self.command.output().map_err(|e| self.start_error(e))
    }

    /// Runs it quietly for at most `timeout` (or until Ctrl-C), then kills it.
    pub fn output_timeout(mut self, timeout: Duration) -> Result<TimedOutput> {
        let mut child = self
            .command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.start_error(e))?;
        let stdout = child
            .stdout
            .take()
            .map(|pipe| thread::spawn(|| read_all(pipe)));
        let stderr = child
            .stderr
            .take()
            .map(|pipe| thread::spawn(|| read_all(pipe)));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| self.wait_error(e))? {
                break Some(status);
            }
            if Instant::now() >= deadline || interrupt::requested() {
                // Not yet reaped, so the PID is still ours to kill.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(POLL_INTERVAL);
        };
        let join = |reader: Option<thread::JoinHandle<String>>| {
            reader
                .and_then(|handle| handle.join().ok())
                .unwrap_or_default()
        };
        Ok(TimedOutput {
            status,
            stdout: join(stdout),
            stderr: join(stderr),
        })
    }

    /// Starts it in its own process group (so a Ctrl-C at the terminal reaches only xtask,
    /// which then stops it in order) with stdout and stderr piped.
    pub fn spawn_piped(mut self) -> Result<Child> {
        self.command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| self.start_error(e))
    }

    /// Fails unless `status` is a successful exit.
    fn check(&self, status: ExitStatus) -> Result<()> {
        if !status.success() {
            return Err(Error::Failed {
                command: self.to_string(),
                status,
                output: String::new(),
            });
        }
        Ok(())
    }

    fn start_error(&self, source: io::Error) -> Error {
        Error::Start {
            command: self.to_string(),
            program: self.argv[0].to_string_lossy().into_owned(),
            source,
        }
    }

    fn wait_error(&self, source: io::Error) -> Error {
        Error::Wait {
            command: self.to_string(),
            source,
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self
            .argv
            .iter()
            .map(|arg| shell_quote(&arg.to_string_lossy()))
            .collect();
        f.write_str(&words.join(" "))
    }
}

impl TimedOutput {
    /// Whether it exited in time, with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// "exit status: 1", or that it was killed after `timeout`.
    pub fn describe_end(&self, timeout: Duration) -> String {
        match self.status {
            Some(status) => status.to_string(),
            None => format!("killed: no exit within {} s", timeout.as_secs()),
        }
    }
}

/// Quotes a word for a POSIX shell only when it needs it, so commands can be copied.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The last lines of a failed program's output, for an error message.
pub fn describe_output(stdout: &str, stderr: &str) -> String {
    const LAST_LINES: usize = 20;
    let mut text = String::new();
    for (name, stream) in [("stdout", stdout), ("stderr", stderr)] {
        let lines: Vec<&str> = stream.lines().collect();
        if lines.is_empty() {
            continue;
        }
        text.push_str(&format!("\n  --- {name} ---"));
        for line in &lines[lines.len().saturating_sub(LAST_LINES)..] {
            text.push_str(&format!("\n  {line}"));
        }
    }
    text
}

fn read_all(mut pipe: impl Read) -> String {
    let mut bytes = Vec::new();
    let _ = pipe.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_words_that_need_it() {
        let cmd = Cmd::new("ss").args(["-tn", "( sport = :8080 )", "it's", ""]);
        assert_eq!(cmd.to_string(), r"ss -tn '( sport = :8080 )' 'it'\''s' ''");
        let url = Cmd::new("ws-client").args(["--url", "ws://[fd00:200::2]:80/"]);
        // Brackets would be a glob pattern to the shell.
        assert_eq!(url.to_string(), "ws-client --url 'ws://[fd00:200::2]:80/'");
    }

    #[test]
    fn output_timeout_kills_a_program_that_overruns() {
        let output = Cmd::new("sleep")
            .arg("5")
            .output_timeout(Duration::from_millis(200))
            .unwrap();
        assert!(output.status.is_none());
        assert!(!output.success());
    }

    #[test]
    fn run_captured_quotes_the_output_of_a_failure() {
        let err = Cmd::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run_captured()
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("oops"), "{err}");
    }
}
