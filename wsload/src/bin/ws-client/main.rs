//! `ws-client`: a WebSocket (ws and wss) client that verifies echoes, used by the integration
//! tests, the demo and the benchmarks.
//!
//! It connects to an echo server (see `ws-echo`) and runs, in this order, the requested text
//! exchanges (`--message`), a full-duplex bulk transfer (`--bytes`) and an interactive session
//! (`--interactive`), then closes the connection cleanly. It exits 0 only if every echo was
//! verified; otherwise it prints `error: ...` to stderr and exits 1.

mod bulk;
mod connect;
mod pattern;
mod session;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};
use clap::Parser;
use wsload::target::Endpoint;
use wsload::{error_text, websocket};

/// Largest `--chunk`: one bulk message must fit in a WebSocket message.
const MAX_CHUNK: u32 = websocket::MAX_MESSAGE_SIZE as u32;

/// WebSocket client that sends messages to an echo server and verifies the echoes.
///
/// Steps run in this order: every --message, then the --bytes bulk transfer, then the
/// --interactive session; the connection is then closed with a closing handshake.
/// Exit status 0 means every echo was verified; on any failure `error: ...` is printed
/// to stderr and the exit status is 1.
///
/// wss:// requires --insecure: ws-client has no certificate trust store, it is meant for
/// test servers such as ws-echo that present a self-signed certificate. With --insecure
/// the certificate chain and name are not checked, but the server must still prove
/// possession of the certificate's key (handshake signatures are verified).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Server URL: ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]; HOST is an IPv4
    /// address, a bracketed IPv6 address such as [::1], or a name.
    #[arg(long, value_name = "URL")]
    url: String,

    /// Accept any server certificate (required for wss://).
    #[arg(long)]
    insecure: bool,

    /// Send TEXT as a text message, verify the echo and print `echo: TEXT` (repeatable).
    #[arg(long = "message", value_name = "TEXT")]
    messages: Vec<String>,

    /// Full-duplex bulk test: send N bytes of pseudo-random data as binary messages while
    /// concurrently receiving and verifying the echoes; prints
    /// `bulk: sent N bytes, received N bytes, verified (... MiB/s ...)`.
    #[arg(long, value_name = "N")]
    bytes: Option<u64>,

    /// Size of each binary message of the bulk test, in bytes.
    #[arg(long, value_name = "SIZE", default_value_t = 65536, requires = "bytes",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CHUNK)))]
    chunk: u32,

    /// Print `connected`, then send each line read from stdin as a text message, verify its
    /// echo and print `echo: LINE`; ends at end of input.
    #[arg(long)]
    interactive: bool,

    /// Limit on the whole run (connect and every exchange, including --interactive), in seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    timeout: Duration,

    /// Connect from this local TCP port (bound with SO_REUSEADDR) instead of one the kernel
    /// picks: tests reuse a client port on purpose.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    local_port: Option<u16>,

    /// Limit on the TCP connect and the TLS and WebSocket handshakes, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    connect_timeout: Duration,
}

/// Parses a positive number of seconds (fractions allowed).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow!(err).context("starting the tokio runtime")),
    };
    let result = runtime.block_on(run_with_timeout(&cli));
    // A pending stdin read (--interactive) runs on a blocking thread that must not delay the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {}", error_text::describe(err.as_ref()));
    ExitCode::FAILURE
}

/// Runs the whole session within `--timeout`.
async fn run_with_timeout(cli: &Cli) -> Result<()> {
    let target = Endpoint::parse(&cli.url)?;
    ensure!(
        !target.tls || cli.insecure,
        "wss:// requires --insecure: ws-client has no certificate trust store and accepts only \
         test servers' (self-signed) certificates"
    );
    match tokio::time::timeout(cli.timeout, run(cli, &target)).await {
        Ok(result) => result,
        Err(_) => bail!("timed out after {} (--timeout)", secs(cli.timeout)),
    }
}

fn secs(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

/// Connects (TCP, TLS for wss, WebSocket handshake; all within `--connect-timeout`), runs every
/// requested step, then closes the connection.
async fn run(cli: &Cli, target: &Endpoint) -> Result<()> {
    let steps = connect::Steps::new(target, cli.connect_timeout);
    let tcp = steps.run(connect::tcp(target, cli.local_port)).await?;
    if !target.tls {
        let ws = steps.run(connect::ws_handshake(target, tcp)).await?;
        return session::run(cli, ws).await;
    }
    let tls = steps.run(connect::tls_handshake(target, tcp)).await?;
    let ws = steps.run(connect::ws_handshake(target, tls)).await?;
    session::run(cli, ws).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("soon").is_err());
    }
}
