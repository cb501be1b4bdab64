//! `redirector detach`: remove a persisted instance.

use redirector::{dataplane::privileges, instance::pinned};

use super::Target;

/// Unpins the links (detaching the programs) and maps of the persisted instance.
pub fn run(args: Target) -> anyhow::Result<()> {
    privileges::check()?;
    let info = pinned::detach(args.iface.as_deref())?;
    let names: Vec<&str> = info.interfaces.iter().map(|i| i.name.as_str()).collect();
    println!(
        "redirector detached from {}: links and maps unpinned",
        names.join(", ")
    );
    Ok(())
}
