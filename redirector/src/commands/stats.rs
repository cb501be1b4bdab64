//! `redirector stats`: per-rule and global counters, once or every few seconds.

use std::{io::Write as _, time::Duration};

use redirector::{control, stats::Snapshot};

use crate::cli::StatsArgs;

/// Prints the counters of the instance of this network namespace; with `--watch`, again
/// every interval until interrupted or until the instance is gone.
pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let Some(secs) = args.watch else {
        return print_once(&args, false);
    };
    loop {
        print_once(&args, true)?;
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs(secs));
    }
}

/// Reads and prints one snapshot. The instance is looked up every time, so a watch notices
/// when its loader stops (its maps would otherwise stay open, frozen, through our handles).
fn print_once(args: &StatsArgs, watching: bool) -> anyhow::Result<()> {
    let instance = control::open(args.target.iface.as_deref())?;
    let snapshot = Snapshot::read(&instance.maps)?;
    match (args.json, watching) {
        (true, false) => println!("{}", serde_json::to_string_pretty(&snapshot.to_json())?),
        (true, true) => println!("{}", serde_json::to_string(&snapshot.to_json())?),
        (false, false) => print!("{snapshot}"),
        (false, true) => println!("{snapshot}"), // a blank line between rounds
    }
    Ok(())
}
