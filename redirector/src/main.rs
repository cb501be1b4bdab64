//! `redirector` binary: parses the command line and dispatches to one module per verb.

mod cli;
mod commands;
mod run;
mod sniff_cmd;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Quiet unless something is wrong; RUST_LOG=info (or debug) shows what the loader does.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => run::run(args),
        cli::Command::Status(args) => commands::status::run(args),
        cli::Command::Stats(args) => commands::stats::run(args),
        cli::Command::Flows(args) => commands::flows::run(args),
        cli::Command::Enable(args) => commands::enable::run(args),
        cli::Command::Disable(args) => commands::disable::run(args),
        cli::Command::Add(args) => commands::add::run(args),
        cli::Command::Remove(args) => commands::remove::run(args),
        cli::Command::Flush(args) => commands::flush::run(args),
        cli::Command::Allow(args) => commands::allow::run(args),
        cli::Command::Disallow(args) => commands::disallow::run(args),
        cli::Command::Detach(args) => commands::detach::run(args),
        cli::Command::Sniff(args) => sniff_cmd::sniff(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("redirector: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
