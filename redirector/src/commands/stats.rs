//! `redirector stats`: per-rule and global counters.

use redirector::{control, stats::Snapshot};

use crate::cli::ReadArgs;

/// Prints the counters of the instance of this network namespace.
pub fn run(args: ReadArgs) -> anyhow::Result<()> {
    let instance = control::open(args.target.iface.as_deref())?;
    let snapshot = Snapshot::read(&instance.maps)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot.to_json())?);
    } else {
        print!("{snapshot}");
    }
    Ok(())
}
