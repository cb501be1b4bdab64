//! `redirector flush`: forget tracked flows.

use redirector::instance::control;

use super::Target;

/// Arguments of `flush`.
#[derive(Debug, clap::Args)]
pub struct FlushArgs {
    /// Only flows to this FROM port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    #[command(flatten)]
    pub target: Target,
}

/// Removes tracked flows (to `args.port` only, if given).
pub fn run(args: FlushArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    let removed = control::flush(&mut instance, args.port)?;
    println!("flushed {removed} flows");
    Ok(())
}
