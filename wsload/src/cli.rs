//! Command line (clap); the doc comments are the `--help` text.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use wsload::websocket::MAX_MESSAGE_SIZE;

use crate::frame::HEADER_LEN;
use crate::plan::Mode;

/// WebSocket load generator: echo message rate, echo latency and connection rate against
/// WebSocket echo servers (ws:// and wss://), with a command line like tcpkali's.
///
/// Opens --connections connections and, by default, runs a closed loop on each: send a
/// binary message, wait for its echo, send the next. Every message carries a sequence number
/// and its send time, so each echo is verified (a corrupted or unexpected echo is an error)
/// and its round-trip time recorded. --message-rate R sends R messages per second per
/// connection instead, without waiting for echoes; --conn-churn measures WebSocket
/// connections per second (connect, one echo, close, reconnect); --idle holds --connections
/// open with one message per --idle-interval each (the memory an open connection costs).
///
/// Prints a summary, or one JSON object with --json (schema: wsload/README.md). Exits 1 when
/// no connection could be opened or no echo came back; other errors are counted.
///
/// Example: wsload ws://127.0.0.1:8080/ --connections 50 --duration 10
///
/// Example: wsload wss://[::1]:8443/ --insecure -c 10 --message-rate 1000 --message-size 512
///
/// Example: wsload ws://10.0.0.2/ --conn-churn -c 200 --source-addr 10.0.0.1 --source-addr 10.0.0.3 --json
///
/// Example: wsload ws://10.0.0.2/ --idle -c 10000 --connect-rate 2000 --idle-interval 7 --duration 20 --json
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    /// Server URL: ws://HOST[:PORT][/PATH] or wss://HOST[:PORT][/PATH]; several URLs share
    /// the connections round-robin.
    #[arg(value_name = "URL", required = true)]
    pub urls: Vec<String>,

    /// Concurrent connections (in --conn-churn: concurrent connect/echo/close loops).
    #[arg(short = 'c', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// New connections per second, over all connections (0: as fast as possible).
    #[arg(short = 'R', long, value_name = "R", default_value = "0", value_parser = parse_rate)]
    pub connect_rate: f64,

    /// Length of the measurement, in seconds, after --warmup.
    #[arg(short = 'T', long, value_name = "SECS", default_value = "10", value_parser = parse_positive_seconds)]
    pub duration: Duration,

    /// Messages per second per connection, sent without waiting for echoes (0: closed loop,
    /// the next message is sent when the echo of the previous one is back).
    #[arg(short = 'r', long, value_name = "R", default_value = "0", value_parser = parse_rate,
          conflicts_with = "conn_churn")]
    pub message_rate: f64,

    /// Size of each message in bytes (at least 24: sequence number, send time, check word).
    #[arg(short = 's', long, value_name = "BYTES", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(HEADER_LEN as i64..=MAX_MESSAGE_SIZE as i64))]
    pub message_size: u32,

    /// Seconds of load before the measurement starts; what happens then is not counted.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_seconds)]
    pub warmup: Duration,

    /// Local address to connect from (repeatable: used in turn, for targets of the same
    /// family), so that many connections do not exhaust the ports of one address.
    #[arg(long = "source-addr", value_name = "IP")]
    pub source_addrs: Vec<IpAddr>,

    /// Accept any server certificate (required for wss://; there is no trust store).
    #[arg(long)]
    pub insecure: bool,

    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// Limit on the TCP connect and the TLS and WebSocket handshakes, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_positive_seconds)]
    pub connect_timeout: Duration,

    /// Measure the connection rate: each connection opens, exchanges one message, closes,
    /// and starts again.
    #[arg(long)]
    pub conn_churn: bool,

    /// Hold --connections idle connections: open them (at --connect-rate), one echo each,
    /// print `wsload idle: N of M connections open ...` once all are, then one message per
    /// --idle-interval per connection for --duration seconds, then close all.
    #[arg(long, conflicts_with_all = ["conn_churn", "message_rate", "warmup"])]
    pub idle: bool,

    /// --idle: seconds between two messages of one connection (phases spread evenly).
    #[arg(long, value_name = "SECS", default_value = "7", value_parser = parse_positive_seconds)]
    pub idle_interval: Duration,

    /// --idle: connections not open within this many seconds of the start are given up.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_positive_seconds)]
    pub open_timeout: Duration,
}

impl Cli {
    pub fn mode(&self) -> Mode {
        if self.conn_churn {
            Mode::Churn
        } else if self.message_rate > 0.0 {
            Mode::Rate(self.message_rate)
        } else {
            Mode::PingPong
        }
    }
}

/// A rate per second: a finite number ≥ 0.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && (0.0..=1e9).contains(&rate) => Ok(rate),
        _ => Err(format!("`{text}` is not a rate per second (a number >= 0)")),
    }
}

/// A number of seconds ≥ 0, fractions allowed.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=1e6).contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!("`{text}` is not a number of seconds")),
    }
}

/// A number of seconds > 0.
fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn modes_follow_the_flags() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.mode());
        assert_eq!(parse(&["wsload", "ws://a/"]).unwrap(), Mode::PingPong);
        assert_eq!(
            parse(&["wsload", "ws://a/", "-r", "100"]).unwrap(),
            Mode::Rate(100.0)
        );
        assert_eq!(
            parse(&["wsload", "ws://a/", "--conn-churn"]).unwrap(),
            Mode::Churn
        );
        assert!(parse(&["wsload", "ws://a/", "--conn-churn", "-r", "5"]).is_err());
        assert!(parse(&["wsload"]).is_err());
        assert!(parse(&["wsload", "ws://a/", "--idle", "--conn-churn"]).is_err());
        let idle =
            Cli::try_parse_from(["wsload", "ws://a/", "--idle", "--idle-interval", "2.5"]).unwrap();
        assert!(idle.idle);
        assert_eq!(idle.idle_interval, Duration::from_millis(2500));
    }

    #[test]
    fn values_are_checked() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert!(parse_positive_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(Cli::try_parse_from(["wsload", "ws://a/", "-s", "23"]).is_err());
        assert!(Cli::try_parse_from(["wsload", "ws://a/", "-c", "0"]).is_err());
    }
}
