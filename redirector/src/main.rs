//! `redirector` binary: parses the command line and dispatches to one module per verb.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Quiet unless something is wrong; RUST_LOG=info (or debug) shows what the loader does.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match cli::generate::requested() {
        Some(args) => cli::generate::run(args),
        None => cli::dispatch(cli::parse().command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("redirector: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
