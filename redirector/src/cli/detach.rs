//! `redirector detach`: remove a persisted instance, or (`--stale`) the pinned state of
//! network namespaces that no longer exist.

use redirector::{
    dataplane::privileges,
    instance::{pinned, stale},
};

use super::Target;

/// Arguments of `detach`.
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Instead of this namespace's instance, remove the pins of every network namespace
    /// that no longer exists (deleted without `detach`; `redirector doctor` lists them).
    /// Live instances, of any namespace, are left alone.
    ///
    /// Example: redirector detach --stale
    #[arg(long, conflicts_with = "iface")]
    pub stale: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Unpins the links (detaching the programs) and maps of the persisted instance, or the
/// stale pins.
pub fn run(args: DetachArgs) -> anyhow::Result<()> {
    privileges::check()?;
    if args.stale {
        let found = stale::find()?;
        for pins in &found {
            stale::remove(pins)?;
            println!(
                "removed the pins of {} in {} ({})",
                pins.key_iface,
                pins.dir.display(),
                pins.why
            );
        }
        println!("{} stale instance(s) removed", found.len());
        return Ok(());
    }
    let info = pinned::detach(args.target.iface.as_deref())?;
    let names: Vec<&str> = info.interfaces.iter().map(|i| i.name.as_str()).collect();
    println!(
        "redirector detached from {}: links and maps unpinned",
        names.join(", ")
    );
    Ok(())
}
