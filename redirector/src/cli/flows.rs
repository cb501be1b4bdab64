//! `redirector flows`: the tracked flows.

use redirector::instance::{control, view};

use super::Target;

/// Arguments of `flows`.
#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Only flows to this FROM port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Print JSON (field names are stable; see docs/CONTROL.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Lists the tracked flows of the instance of this network namespace.
pub fn run(args: FlowsArgs) -> anyhow::Result<()> {
    let instance = control::open(args.target.iface.as_deref())?;
    let flows = view::flows(&instance, args.port)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
        return Ok(());
    }
    for f in &flows {
        println!(
            "{} -> {} port {}->{} {} age {}s idle {}s",
            f.client, f.server_addr, f.orig_port, f.target_port, f.state, f.age_secs, f.idle_secs
        );
    }
    println!("{} flows", flows.len());
    Ok(())
}
