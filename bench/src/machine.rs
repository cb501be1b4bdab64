//! What the figures were measured on: machine, kernel, and the version of every tool, so a
//! result file can be compared with another one knowingly.

use std::collections::BTreeMap;
use std::fs;

use serde::Serialize;

use crate::workspace_root;
use testkit::cmd::Cmd;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub os: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// `git describe` of this checkout (`-dirty` when it has local changes).
    pub redirector: String,
    /// First line of each tool's version output.
    pub tools: BTreeMap<&'static str, String>,
}

/// Describes this machine; anything unreadable is reported as "unknown".
pub fn describe() -> Machine {
    let tools = [
        ("rustc", Cmd::new("rustc").arg("--version")),
        ("wrk", Cmd::new("wrk").arg("--version")),
        ("iperf3", Cmd::new("iperf3").arg("--version")),
        ("haproxy", Cmd::new("haproxy").arg("-v")),
        ("nginx", Cmd::new("nginx").arg("-v")),
        ("nft", Cmd::new("nft").arg("--version")),
        ("iptables", Cmd::new("iptables-nft").arg("--version")),
    ]
    .into_iter()
    .map(|(name, cmd)| (name, first_line(cmd)))
    .collect();
    Machine {
        os: os_release().unwrap_or_else(unknown),
        kernel: first_line(Cmd::new("uname").arg("-r")),
        cpu: cpu_model().unwrap_or_else(unknown),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: memory_gib().unwrap_or(0.0),
        redirector: first_line(
            Cmd::new("git")
                .args(["describe", "--always", "--dirty"])
                .current_dir(workspace_root()),
        ),
        tools,
    }
}

fn unknown() -> String {
    "unknown".to_owned()
}

/// The first non-empty line the command prints on stdout or (nginx, wrk) stderr.
fn first_line(cmd: Cmd) -> String {
    let Ok(output) = cmd.output() else {
        return unknown();
    };
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map_or_else(unknown, str::to_owned)
}

fn os_release() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

fn cpu_model() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn memory_gib() -> Option<f64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((kib / 1024.0 / 1024.0 * 10.0).round() / 10.0)
}
