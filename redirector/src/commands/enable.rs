//! `redirector enable PORT`: redirect new connections to PORT again.

use redirector::instance::control;

use crate::cli::PortArgs;

/// Sets the rule on `args.port` enabled in the pinned RULES map.
pub fn run(args: PortArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    control::set_enabled(&mut instance, args.port, true)?;
    println!("port {}: new connections are redirected", args.port);
    Ok(())
}
