//! `redirector enable|disable|remove PORT` and `add FROM:TO`: change the rules of the
//! running instance.

use redirector::{instance::control, rules::RedirectRule};

use super::Target;

/// Arguments of `enable`, `disable` and `remove`.
#[derive(Debug, clap::Args)]
pub struct PortArgs {
    /// The rule's FROM port.
    #[arg(value_name = "PORT")]
    pub port: u16,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The new rule.
    #[arg(value_name = "FROM:TO")]
    pub rule: RedirectRule,
    #[command(flatten)]
    pub target: Target,
}

/// `enable`: sets the rule on `args.port` enabled in the pinned RULES map.
pub fn enable(args: PortArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    control::set_enabled(&mut instance, args.port, true)?;
    println!("port {}: new connections are redirected", args.port);
    Ok(())
}

/// `disable`: sets the rule on `args.port` disabled in the pinned RULES map; tracked
/// flows keep being rewritten through their conntrack entries.
pub fn disable(args: PortArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    control::set_enabled(&mut instance, args.port, false)?;
    println!(
        "port {}: new connections are no longer redirected; established ones keep working",
        args.port
    );
    Ok(())
}

/// `add`: adds the rule to the running instance.
pub fn add(args: AddArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    let slot = control::add_rule(&mut instance, args.rule)?;
    println!("rule {} added (slot {slot})", args.rule);
    Ok(())
}

/// `remove`: removes the rule on `args.port`; its tracked flows keep working until they
/// close.
pub fn remove(args: PortArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    control::remove_rule(&mut instance, args.port)?;
    println!(
        "rule for port {} removed; established connections keep working",
        args.port
    );
    Ok(())
}
