//! `redirector disable PORT`: stop redirecting new connections to PORT.

use redirector::instance::control;

use crate::cli::PortArgs;

/// Sets the rule on `args.port` disabled in the pinned RULES map; tracked flows keep
/// being rewritten through their conntrack entries.
pub fn run(args: PortArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    control::set_enabled(&mut instance, args.port, false)?;
    println!(
        "port {}: new connections are no longer redirected; established ones keep working",
        args.port
    );
    Ok(())
}
