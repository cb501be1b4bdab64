//! `cargo xtask`: developer tasks for redirector; this file only dispatches to one module per verb.

mod bench;
mod build;
mod cli;
mod deb;
mod demo;
mod image;
mod setup;
mod test;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => build::run(args.profile()).map(|_| ()),
        Command::Demo(args) => demo::run(&args),
        Command::Image => image::run(),
        Command::Deb(args) => deb::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nerror: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
