//! `redirector remove FROM`: drop a rule at runtime.

use redirector::instance::control;

use crate::cli::PortArgs;

/// Removes the rule on `args.port`; its tracked flows keep working until they close.
pub fn run(args: PortArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    control::remove_rule(&mut instance, args.port)?;
    println!(
        "rule for port {} removed; established connections keep working",
        args.port
    );
    Ok(())
}
