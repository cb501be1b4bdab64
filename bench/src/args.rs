//! The options of `cargo xtask bench` (clap derives; the doc comments are the `--help` text).

use clap::Args;

use crate::plan::Mode;

/// What to measure and where the result files go.
///
/// Not the `--help` text of the verb: that is the doc comment of xtask's `Command::Bench`,
/// which clap applies after this one.
#[derive(Debug, Clone, Default, Args)]
pub struct BenchArgs {
    /// 3 repetitions of 2 s per load, fewer configurations: about 20 minutes (default: every
    /// configuration and load, 5 × 10 s, about an hour and a half).
    #[arg(long, conflicts_with = "smoke")]
    pub quick: bool,
    /// 1 repetition of 1 s per load: checks the harness in about 2 minutes (CI runs it).
    #[arg(long)]
    pub smoke: bool,
    /// Name of the result files (default: the mode, e.g. `quick`).
    #[arg(long)]
    pub name: Option<String>,
    /// Directory of the result files.
    #[arg(long, value_name = "DIR", default_value = None)]
    pub out: Option<std::path::PathBuf>,
    /// Only these configurations (comma-separated ids, e.g. nginx,redirector-xdp); direct is
    /// always measured.
    #[arg(long = "config", value_name = "ID", value_delimiter = ',')]
    pub configs: Vec<String>,
    /// Only these loads (comma-separated: http-keepalive, http-conn-rate, ws-messages,
    /// wss-messages, ws-conn-rate, bulk, idle-capacity, conn-cpu).
    #[arg(long = "load", value_name = "ID", value_delimiter = ',')]
    pub loads: Vec<String>,
    /// Skip the steps without load generators: the kernel-side cost (kernel-bench) and the
    /// sniffing proxy's relay modes (sniff-bench).
    #[arg(long)]
    pub no_kernel: bool,
}

impl BenchArgs {
    /// How thorough the run is: `--smoke`, else `--quick`, else full.
    pub fn mode(&self) -> Mode {
        if self.smoke {
            Mode::Smoke
        } else if self.quick {
            Mode::Quick
        } else {
            Mode::Full
        }
    }
}
