//! The loader's side of the sniffing proxy's process: `run --sniff-listen` binds the
//! listeners, then re-executes itself as an unprivileged child that serves them
//! ([`super::proxy_main`]), so the process holding CAP_BPF never parses client bytes.
//!
//! The child inherits the listening sockets, the write end of a reports pipe and the read
//! end of a stop pipe (their numbers in [`CHILD_ENV`]); it writes its counters to the
//! reports pipe as one `name=value …` line every [`super::proxy_main::REPORT_INTERVAL`] and
//! once more when it stops. A thread of the loader copies them into
//! [`SniffChild::counters`], which `redirector stats` (through the counters file),
//! `/metrics` and the final report read as before. The loader stops the child by closing
//! the stop pipe (signalling a process of another user would need CAP_KILL, which the
//! systemd unit does not grant; SIGTERM is sent too, for when it is held); the child also
//! dies with the loader (`PR_SET_PDEATHSIG`). The end of the reports pipe tells the loader
//! if the child dies first.

use std::{
    io::{BufRead as _, BufReader, PipeReader},
    net::{SocketAddr, TcpListener},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::Context as _;
use redirector_sniff::{
    counters::{Counter, Counters},
    server::ListenerKind,
};
use tokio::sync::oneshot;

/// Environment variable that makes `redirector run` the proxy's child; its value names
/// the loader's pid and the inherited descriptors:
/// `parent=PID,report=FD,stop=FD,max_conns=N,http=FD[,tls=FD]`. The loader resolves
/// `--sniff-max-conns` (or its default from the open-file limit) once and hands the value
/// down, so the limit it shows (`stats`, `status`, `/metrics`) is the one the child uses.
pub const CHILD_ENV: &str = "REDIRECTOR_SNIFF_CHILD";

/// How long the child has to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// Interval of the bounded wait for the child's exit.
const STOP_POLL: Duration = Duration::from_millis(20);

/// The running proxy child, and the loader's copy of its counters.
pub struct SniffChild {
    child: Child,
    /// Closed to tell the child to stop.
    stop: Option<std::io::PipeWriter>,
    addrs: Vec<(SocketAddr, ListenerKind)>,
    max_conns: usize,
    counters: Arc<Counters>,
    /// Copies the child's reports until the pipe ends.
    reader: Option<JoinHandle<()>>,
    /// Completes when the pipe ends (the child exited).
    ended: Option<oneshot::Receiver<()>>,
}

impl SniffChild {
    /// Starts the child on `listeners` (bound by the loader, which keeps no copy), to hold
    /// at most `max_conns` connections open.
    pub fn spawn(
        listeners: Vec<(TcpListener, ListenerKind)>,
        max_conns: usize,
    ) -> anyhow::Result<Self> {
        let addrs = listeners
            .iter()
            .map(|(listener, kind)| Ok((listener.local_addr()?, *kind)))
            .collect::<std::io::Result<Vec<_>>>()
            .context("reading the sniff address")?;
        let (reports, report_writer) = std::io::pipe().context("creating the counters pipe")?;
        let (stop_reader, stop) = std::io::pipe().context("creating the stop pipe")?;
        let mut spec = format!(
            "parent={},report={},stop={},max_conns={max_conns}",
            std::process::id(),
            report_writer.as_raw_fd(),
            stop_reader.as_raw_fd()
        );
        let mut inherited = vec![report_writer.as_raw_fd(), stop_reader.as_raw_fd()];
        for (listener, kind) in &listeners {
            let name = match kind {
                ListenerKind::Http => "http",
                ListenerKind::Tls => "tls",
            };
            spec.push_str(&format!(",{name}={}", listener.as_raw_fd()));
            inherited.push(listener.as_raw_fd());
        }
        let mut cmd = Command::new("/proc/self/exe");
        cmd.args(std::env::args_os().skip(1))
            .env(CHILD_ENV, spec)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: runs in the forked child before exec, where only async-signal-safe calls
        // are allowed: fcntl and prctl are, and they touch only descriptors this process
        // owns (kept open by `listeners` and `report_writer` until after spawn).
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherited {
                    // Keep these across exec (they were opened close-on-exec).
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The proxy goes when the loader goes (re-armed after the drop, which
                // clears it).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("starting the sniffing proxy's process")?;
        // The loader never accepts on them, nor writes reports.
        drop(listeners);
        drop(report_writer);
        drop(stop_reader);
        let counters = Arc::new(Counters::default());
        let (done, ended) = oneshot::channel();
        let reader = thread::Builder::new()
            .name("sniff-counters".into())
            .spawn({
                let counters = Arc::clone(&counters);
                move || {
                    copy_reports(reports, &counters);
                    let _ = done.send(());
                }
            })
            .context("starting the sniff counters reader")?;
        log::info!("sniffing proxy runs as process {}", child.id());
        Ok(SniffChild {
            child,
            stop: Some(stop),
            addrs,
            max_conns,
            counters,
            reader: Some(reader),
            ended: Some(ended),
        })
    }

    /// The addresses the child serves, the plain listener first.
    pub fn addrs(&self) -> &[(SocketAddr, ListenerKind)] {
        &self.addrs
    }

    /// The connections the child holds open at once.
    pub fn max_conns(&self) -> usize {
        self.max_conns
    }

    /// The loader's copy of the child's counters (at most one report behind).
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Completes when the child's reports end, i.e. it exited (once; later calls never
    /// complete).
    pub async fn exited(&mut self) {
        match self.ended.take() {
            Some(ended) => {
                let _ = ended.await;
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the child (SIGTERM, then SIGKILL after [`STOP_WAIT`]) and waits for its last
    /// report, so the counters are final.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if !self.terminate() {
            anyhow::bail!("the sniffing proxy's process did not stop");
        }
        if let Some(reader) = self.reader.take() {
            reader
                .join()
                .map_err(|_| anyhow::anyhow!("the sniff counters reader panicked"))?;
        }
        Ok(())
    }

    /// Closes the stop pipe and sends SIGTERM, waits (bounded), SIGKILL if still running
    /// and allowed; reaps the child. Whether it is gone.
    fn terminate(&mut self) -> bool {
        drop(self.stop.take());
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // EPERM without CAP_KILL: the closed stop pipe does it.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..STOP_WAIT.as_millis() / STOP_POLL.as_millis() {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            thread::sleep(STOP_POLL);
        }
        log::warn!("sniffing proxy did not stop within {STOP_WAIT:?}; killing it");
        match self.child.kill() {
            // SIGKILL cannot be ignored: this wait ends.
            Ok(()) => self.child.wait().is_ok(),
            Err(err) => {
                log::error!(
                    "cannot kill the sniffing proxy (pid {}): {err}; it gets SIGTERM when \
                     the loader exits (PR_SET_PDEATHSIG)",
                    self.child.id()
                );
                false
            }
        }
    }
}

impl Drop for SniffChild {
    /// A loader that fails before serving takes its child down with it.
    fn drop(&mut self) {
        if self.reader.is_some() {
            self.terminate();
        }
    }
}

/// Copies each `name=value …` line of `reports` into `counters`, until the pipe ends.
fn copy_reports(reports: PipeReader, counters: &Counters) {
    for line in BufReader::new(reports).lines() {
        let Ok(line) = line else { return };
        for (name, value) in line.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            let counter = Counter::ALL.iter().find(|c| c.name() == name);
            if let (Some(counter), Ok(value)) = (counter, value.parse()) {
                counters.set(*counter, value);
            }
        }
    }
}
