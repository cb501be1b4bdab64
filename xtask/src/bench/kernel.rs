//! The kernel-side cost step: runs `kernel-bench` (BPF_PROG_TEST_RUN timings of the real
//! programs against a pass-through program, flow-table scaling, map memory per flow) and
//! checks the scaling target against its output.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::plan::Mode;
use super::stats::{judge, Target};
use crate::cmd::{describe_output, Cmd};

/// Bound of the whole kernel step (the full mode fills a 1 M-entry table).
const TIMEOUT: Duration = Duration::from_secs(600);
/// The scaling target: the hit path at 1 M tracked flows costs at most this times 1 k.
const SCALING_BOUND: f64 = 1.3;
const MILLION: f64 = 1e6;

/// Runs kernel-bench in the mode's size; returns its JSON.
pub fn run(kernel_bench: &Path, mode: Mode) -> Result<serde_json::Value> {
    let mut cmd = Cmd::new(kernel_bench).arg("--json");
    match mode {
        Mode::Full => {}
        Mode::Quick => cmd = cmd.arg("--quick"),
        Mode::Smoke => cmd = cmd.arg("--smoke"),
    }
    let shown = cmd.to_string();
    println!("$ {shown}");
    let output = cmd.output_timeout(TIMEOUT)?;
    if !output.success() {
        bail!(
            "`{shown}` failed ({}){}",
            output.describe_end(TIMEOUT),
            describe_output(&output.stdout, &output.stderr)
        );
    }
    serde_json::from_str(output.stdout.trim())
        .with_context(|| format!("`{shown}` printed no valid JSON"))
}

/// The "hit path at 1 M flows ≤ 1.3× 1 k" target; open when the run had no 1 M row.
pub fn scaling_target(kernel: Option<&serde_json::Value>) -> Target {
    let value = kernel
        .and_then(|k| k["scaling"].as_array())
        .into_iter()
        .flatten()
        .find(|row| row["flows"].as_f64().is_some_and(|f| f >= MILLION))
        .and_then(|row| row["ratio_to_1k"].as_f64());
    judge(
        format!("kernel hit path at 1 M flows ≤ {SCALING_BOUND}× at 1 k"),
        value,
        SCALING_BOUND,
        false,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_target_reads_the_million_row() {
        let kernel = serde_json::json!({"scaling": [
            {"flows": 1000, "ratio_to_1k": 1.0},
            {"flows": 1000000, "ratio_to_1k": 1.12}
        ]});
        let target = scaling_target(Some(&kernel));
        assert_eq!(target.met, Some(true));
        assert_eq!(target.value, Some(1.12));
        assert_eq!(scaling_target(None).met, None);
    }
}
