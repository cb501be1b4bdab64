//! The child's side of `run --sniff-listen` ([`super::proxy_child`]): takes the inherited
//! listeners and counters pipe, drops to the unprivileged `--sniff-user` with no
//! capabilities and `no_new_privs`, then serves until the loader closes the stop pipe (or
//! sends SIGTERM, or dies), reporting its counters to the loader.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::TcpListener,
    os::fd::{FromRawFd as _, RawFd},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use redirector::privdrop::{self, Identity};
use redirector_sniff::{
    counters::{Counter, Counters},
    server::{ListenerKind, SniffConfig, SniffServer},
};
use tokio::signal::unix::{signal, SignalKind};

use redirector::config::sniff::SniffSettings;

/// How often the child reports its counters to the loader.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// What the loader handed over ([`super::proxy_child::CHILD_ENV`]).
struct Inherited {
    parent: i32,
    report: RawFd,
    stop: RawFd,
    /// The loader's `--sniff-max-conns` (or its default), resolved once.
    max_conns: usize,
    listeners: Vec<(RawFd, ListenerKind)>,
}

impl Inherited {
    /// Parses `parent=PID,report=FD,stop=FD,max_conns=N,http=FD[,tls=FD]`.
    fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut inherited = Inherited {
            parent: 0,
            report: -1,
            stop: -1,
            max_conns: 0,
            listeners: Vec::new(),
        };
        for item in spec.split(',') {
            let (key, value) = item.split_once('=').context("malformed child spec")?;
            let value: i32 = value.parse().context("malformed child spec")?;
            match key {
                "parent" => inherited.parent = value,
                "report" => inherited.report = value,
                "stop" => inherited.stop = value,
                "max_conns" => inherited.max_conns = value.try_into().unwrap_or(0),
                "http" => inherited.listeners.push((value, ListenerKind::Http)),
                "tls" => inherited.listeners.push((value, ListenerKind::Tls)),
                _ => bail!("unknown key {key} in child spec"),
            }
        }
        if inherited.parent <= 0
            || inherited.report < 0
            || inherited.stop < 0
            || inherited.max_conns == 0
            || inherited.listeners.is_empty()
        {
            bail!("incomplete child spec {spec:?}");
        }
        Ok(inherited)
    }
}

/// Runs the proxy child: called by `run` (before any runtime starts) when
/// [`super::proxy_child::CHILD_ENV`] is set.
pub fn serve_inherited(
    spec: &str,
    mut config: SniffConfig,
    settings: &SniffSettings,
) -> anyhow::Result<()> {
    let inherited = Inherited::parse(spec)?;
    // The loader's value, not one derived again here: the two must agree.
    config.max_conns = inherited.max_conns;
    let identity = Identity::resolve(settings.user(), settings.group.as_deref())?;
    let listeners: Vec<(TcpListener, ListenerKind)> = inherited
        .listeners
        .iter()
        // SAFETY: the loader left these descriptors open for this process alone, named in
        // the spec; each is taken over exactly once here.
        .map(|&(fd, kind)| (unsafe { TcpListener::from_raw_fd(fd) }, kind))
        .collect();
    // SAFETY: as above, for the write end of the counters pipe.
    let mut report = unsafe { File::from_raw_fd(inherited.report) };
    // SAFETY: as above, for the read end of the stop pipe.
    let mut stop = unsafe { File::from_raw_fd(inherited.stop) };
    privdrop::drop_privileges(&identity).context("dropping privileges")?;
    // Changing credentials cleared the parent-death signal: arm it again, then make sure
    // the loader did not exit in between (we would have been reparented).
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).context("prctl(PR_SET_PDEATHSIG)")?;
    if nix::unistd::getppid().as_raw() != inherited.parent {
        bail!("the loader exited before the sniffing proxy started");
    }
    // Threads start only now, with the dropped credentials.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let counters = runtime.block_on(async {
        // Ctrl-C reaches the whole process group: the loader decides when its proxy stops,
        // so SIGINT is caught and ignored here.
        let _sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        // The loader closes the stop pipe to stop us: the read returns (end of file).
        let stopped = tokio::task::spawn_blocking(move || {
            let _ = stop.read(&mut [0u8; 1]);
        });
        let server = SniffServer::from_std(config, listeners)?;
        let counters = server.counters();
        let mut reporter = report.try_clone().context("cloning the counters pipe")?;
        let reporting = {
            let counters = Arc::clone(&counters);
            async move {
                let mut tick = tokio::time::interval(REPORT_INTERVAL);
                loop {
                    tick.tick().await;
                    if let Err(err) = reporter.write_all(report_line(&counters).as_bytes()) {
                        log::error!("reporting counters to the loader: {err}");
                        return;
                    }
                }
            }
        };
        server
            .serve(async {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = stopped => {}
                    () = reporting => {}
                }
            })
            .await;
        anyhow::Ok(counters)
    })?;
    runtime.shutdown_timeout(Duration::from_millis(100));
    // The last report: the loader's final counters.
    report
        .write_all(report_line(&counters).as_bytes())
        .context("reporting the final counters")?;
    Ok(())
}

/// `name=value …` of every counter, one line.
fn report_line(counters: &Counters) -> String {
    let mut line: Vec<String> = Counter::ALL
        .iter()
        .map(|c| format!("{}={}", c.name(), counters.get(*c)))
        .collect();
    line.push("\n".into());
    line.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_carries_the_loaders_max_conns() {
        let inherited = Inherited::parse("parent=7,report=3,stop=4,max_conns=123,http=5,tls=6")
            .expect("a complete spec");
        assert_eq!(inherited.max_conns, 123);
        assert_eq!(inherited.listeners.len(), 2);
        // Without it (or 0), the child would derive its own: refused instead.
        for spec in [
            "parent=7,report=3,stop=4,http=5",
            "parent=7,report=3,stop=4,max_conns=0,http=5",
            "parent=7,report=3,stop=4,max_conns=-1,http=5",
        ] {
            assert!(Inherited::parse(spec).is_err(), "{spec}");
        }
    }
}
