//! `wsload`: a WebSocket load generator for echo servers — messages per second, echo latency
//! (HDR histogram, µs) and WebSocket connections per second, over ws:// and wss://.
//!
//! `main` parses the command line, resolves the URLs, runs the load ([`run`]) and prints the
//! [`report`]; usage and the `--json` schema are in `wsload/README.md`.

mod cli;
mod connect;
mod frame;
mod idle;
mod idle_report;
mod pacer;
mod plan;
mod report;
mod run;
mod session;
mod stats;
mod timeline;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser as _;
use tokio::time::Instant;
use wsload::target::Target;
use wsload::{error_text, limits};

use crate::cli::Cli;
use crate::connect::Connector;
use crate::frame::Filler;
use crate::idle::IdleSettings;
use crate::idle_report::IdleReport;
use crate::pacer::Pacer;
use crate::plan::{Mode, Plan};
use crate::report::{Report, Setup};
use crate::stats::Histograms;
use crate::timeline::Timeline;

/// Histogram shards per worker thread (see [`stats`]).
const SHARDS_PER_THREAD: usize = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(err) => Err(err).context("starting the tokio runtime"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wsload: error: {}", error_text::describe(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Runs the load described by `cli`, prints the report, and fails if nothing worked.
async fn run(cli: Cli) -> Result<()> {
    let mut targets = Vec::with_capacity(cli.urls.len());
    for url in &cli.urls {
        targets.push(Target::resolve(url, cli.connect_timeout).await?);
    }
    check_targets(&cli, &targets)?;
    let connections = cli.connections as usize;
    match limits::raise_open_files() {
        Ok(limit) if limit < connections as u64 + 64 => eprintln!(
            "wsload: warning: at most {limit} open files allowed, fewer than {connections} \
             connections need; raise `ulimit -n`"
        ),
        Ok(_) => {}
        Err(err) => eprintln!("wsload: warning: cannot raise the open-file limit: {err}"),
    }

    let message_size = cli.message_size as usize;
    let connector = Connector::new(
        cli.insecure,
        &cli.source_addrs,
        cli.connect_timeout,
        message_size,
    )
    .context("configuring TLS")?;
    if cli.idle {
        return run_idle(&cli, targets, connector).await;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    let plan = Arc::new(Plan {
        targets,
        mode: cli.mode(),
        connections,
        filler: Filler::new(message_size),
        timeline: Timeline::new(start, cli.warmup, cli.duration),
        pacer: Pacer::new(start, cli.connect_rate),
        connector,
        histograms: Arc::new(Histograms::new(threads * SHARDS_PER_THREAD)),
    });
    let totals = run::run(plan.clone()).await;

    let setup = Setup {
        urls: &cli.urls,
        mode: plan.mode,
        connections,
        duration_s: cli.duration.as_secs_f64(),
        warmup_s: cli.warmup.as_secs_f64(),
        message_size,
    };
    let report = Report::new(&setup, &totals);
    let mut stdout = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer(&mut stdout, &report).context("writing the report")?;
        writeln!(stdout).context("writing the report")?;
    } else {
        write!(stdout, "{report}").context("writing the report")?;
    }
    stdout.flush().context("writing the report")?;

    let cause = totals.first_error.as_deref().unwrap_or("no error recorded");
    let counters = &totals.counters;
    ensure!(
        counters.connects_ok_in_run > 0,
        "no connection could be opened: {cause}"
    );
    ensure!(
        counters.messages_received_in_run > 0,
        "connections opened but no echo came back: {cause}"
    );
    Ok(())
}

/// `--idle`: holds the connections, prints the report, fails if nothing worked.
async fn run_idle(cli: &Cli, targets: Vec<Target>, connector: Connector) -> Result<()> {
    let settings = IdleSettings {
        connections: cli.connections as usize,
        interval: cli.idle_interval,
        hold: cli.duration,
        open_timeout: cli.open_timeout,
        connect_rate: cli.connect_rate,
        message_size: cli.message_size as usize,
    };
    let totals = idle::run(targets, connector, settings.clone()).await;
    let report = IdleReport::new(&cli.urls, &settings, &totals);
    let mut stdout = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer(&mut stdout, &report).context("writing the report")?;
        writeln!(stdout).context("writing the report")?;
    } else {
        write!(stdout, "{report}").context("writing the report")?;
    }
    stdout.flush().context("writing the report")?;
    let cause = totals.first_error.as_deref().unwrap_or("no error recorded");
    ensure!(totals.ready > 0, "no connection could be opened: {cause}");
    Ok(())
}

/// Refuses combinations that cannot work, before any connection is attempted.
fn check_targets(cli: &Cli, targets: &[Target]) -> Result<()> {
    for target in targets {
        if target.tls && !cli.insecure {
            bail!(
                "{target}: wss:// requires --insecure (wsload has no certificate trust store; \
                 it accepts test servers' self-signed certificates)"
            );
        }
        if !cli.source_addrs.is_empty() && !has_source_for(&cli.source_addrs, target.addr) {
            bail!(
                "{target} resolves to {}, but no --source-addr is of that address family",
                target.addr.ip()
            );
        }
    }
    if cli.mode() != Mode::Churn && !cli.idle && cli.connect_rate > 0.0 {
        let opening = f64::from(cli.connections) / cli.connect_rate;
        let load = (cli.warmup + cli.duration).as_secs_f64();
        if opening > load {
            eprintln!(
                "wsload: warning: opening {} connections at {}/s takes {opening:.1}s, longer than \
                 the {load:.1}s of load",
                cli.connections, cli.connect_rate
            );
        }
    }
    Ok(())
}

fn has_source_for(sources: &[std::net::IpAddr], addr: SocketAddr) -> bool {
    sources.iter().any(|ip| ip.is_ipv4() == addr.is_ipv4())
}
