//! The sniffing proxy's relay step: runs `sniff-bench` (a bulk upload and a small-message
//! ping-pong through `redirector sniff` on loopback with `--relay auto`, `splice` and
//! `copy`, the proxy's CPU time read from /proc, and the same without a proxy).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::plan::Mode;
use super::run_json;
use testkit::cmd::Cmd;

/// Bound of the whole relay step.
const TIMEOUT: Duration = Duration::from_secs(600);

/// `sniff-bench` sized for the mode: (bytes of the upload, round trips, rounds).
fn sizes(mode: Mode) -> (u64, u32, u32) {
    match mode {
        Mode::Full => (1 << 30, 20_000, 5),
        Mode::Quick => (256 << 20, 5_000, 3),
        Mode::Smoke => (32 << 20, 500, 1),
    }
}

/// Runs sniff-bench against `redirector`; returns its JSON.
pub fn run(sniff_bench: &Path, redirector: &Path, mode: Mode) -> Result<serde_json::Value> {
    let (bytes, pings, rounds) = sizes(mode);
    let cmd = Cmd::new(sniff_bench)
        .env("REDIRECTOR_BIN", redirector)
        .args(["--json", "--bytes", &bytes.to_string()])
        .args([
            "--pings",
            &pings.to_string(),
            "--rounds",
            &rounds.to_string(),
        ]);
    run_json(cmd, TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaller_modes_move_less() {
        assert!(sizes(Mode::Smoke).0 < sizes(Mode::Quick).0);
        assert!(sizes(Mode::Quick).0 < sizes(Mode::Full).0);
    }
}
