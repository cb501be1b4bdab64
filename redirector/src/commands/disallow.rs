//! `redirector disallow CIDR`: stop redirecting new connections from CIDR.

use redirector::instance::control;

use crate::cli::SourceArgs;

/// Removes the prefix from the pinned ALLOW trie; tracked flows keep being rewritten.
pub fn run(args: SourceArgs) -> anyhow::Result<()> {
    let mut instance = control::open(args.target.iface.as_deref())?;
    let left = control::disallow_source(&mut instance, args.prefix)?;
    println!(
        "{}: new connections are no longer redirected; established ones keep working",
        args.prefix
    );
    if left == 0 {
        println!("the allow list is empty: no source is redirected (`redirector allow 0.0.0.0/0` and `::/0` allow all again)");
    }
    Ok(())
}
