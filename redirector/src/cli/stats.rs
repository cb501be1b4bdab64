//! `redirector stats`: per-rule and global counters (and those of the loader's sniffing
//! proxy, if it runs one), once or every few seconds.

use std::{io::Write as _, time::Duration};

use redirector::{
    instance::{control, paths},
    observe::{sniff_publish, stats::Snapshot},
};

use super::Target;

/// Arguments of `stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Print JSON (field names are stable; see docs/CONTROL.md). With --watch, one
    /// compact JSON document per line.
    #[arg(long)]
    pub json: bool,
    /// Print the counters again every SECS seconds until interrupted (Ctrl-C); stops
    /// with an error when the loader goes away.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub watch: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

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
    // The loader's sniffing proxy (`run --sniff-listen`), if it runs one.
    let info = &instance.info;
    let sniff = sniff_publish::read(
        &paths::sniff_stats_file(info.netns_inode, info.key_iface()),
        info.pid,
    )?;
    if args.json {
        let mut json = serde_json::to_value(snapshot.to_json())?;
        if let (Some(sniff), Some(object)) = (sniff, json.as_object_mut()) {
            object.insert("sniff".into(), serde_json::to_value(sniff.counters)?);
            if let Some(max_conns) = sniff.max_conns {
                object.insert(
                    "sniff_limits".into(),
                    serde_json::json!({ "max_conns": max_conns }),
                );
            }
        }
        match watching {
            false => println!("{}", serde_json::to_string_pretty(&json)?),
            true => println!("{}", serde_json::to_string(&json)?),
        }
    } else {
        print!("{snapshot}");
        if let Some(sniff) = sniff {
            print!("{}{}", sniff.lines(), sniff.limit_lines());
        }
        if watching {
            println!(); // a blank line between rounds
        }
    }
    Ok(())
}
