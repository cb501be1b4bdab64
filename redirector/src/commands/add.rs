//! `redirector add FROM:TO`: a new rule at runtime.

use redirector::instance::control;

use crate::cli::AddArgs;

/// Adds the rule to the running instance.
pub fn run(args: AddArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    let slot = control::add_rule(&mut instance, args.rule)?;
    println!("rule {} added (slot {slot})", args.rule);
    Ok(())
}
