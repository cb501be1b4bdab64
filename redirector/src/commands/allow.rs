//! `redirector allow CIDR`: let new connections from CIDR be redirected.

use redirector::instance::control;

use crate::cli::SourceArgs;

/// Adds the prefix to the pinned ALLOW trie and turns source filtering on.
pub fn run(args: SourceArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    let was_open = control::allow_source(&mut instance, args.prefix)?;
    if was_open {
        println!(
            "{}: allowed; source filter turned on: only listed prefixes are redirected now",
            args.prefix
        );
    } else {
        println!("{}: new connections are redirected", args.prefix);
    }
    Ok(())
}
