//! `redirector flush`: forget tracked flows.

use redirector::instance::control;

use crate::cli::FlushArgs;

/// Removes tracked flows (to `args.port` only, if given).
pub fn run(args: FlushArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    let removed = control::flush(&mut instance, args.port)?;
    println!("flushed {removed} flows");
    Ok(())
}
