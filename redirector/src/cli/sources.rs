//! `redirector allow|disallow CIDR`: change which sources new redirected connections may
//! come from.

use redirector::{instance::control, source_filter::SourcePrefix};

use super::Target;

/// Arguments of `allow` and `disallow`.
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// An IPv4 or IPv6 prefix, e.g. 10.0.0.0/8 or 2001:db8::/32 (a bare address is /32
    /// or /128).
    #[arg(value_name = "CIDR")]
    pub prefix: SourcePrefix,
    #[command(flatten)]
    pub target: Target,
}

/// `allow`: adds the prefix to the pinned ALLOW trie and turns source filtering on.
pub fn allow(args: SourceArgs) -> anyhow::Result<()> {
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

/// `disallow`: removes the prefix from the pinned ALLOW trie; tracked flows keep being
/// rewritten.
pub fn disallow(args: SourceArgs) -> anyhow::Result<()> {
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
