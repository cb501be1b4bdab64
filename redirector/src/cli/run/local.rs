//! Local clients in `run`: the cgroup programs attached afresh, or — adopting or migrating
//! a persisted instance — given the new programs on the pinned links (no moment without
//! them), attached afresh if it had none, or moved when the cgroup changed.

use std::path::Path;

use anyhow::Context as _;
use aya::programs::links::FdLink;
use redirector::{
    dataplane::{local, Dataplane},
    instance::{info::InstanceInfo, paths},
};

use super::prepare::Prepared;

impl Prepared {
    /// A fresh start: attaches the cgroup programs (unless `--no-local`); with `--persist`
    /// returns their links, to be pinned with the interfaces' ones.
    pub(super) fn attach_local(&self, dp: &mut Dataplane) -> anyhow::Result<Vec<(String, FdLink)>> {
        let Some(cgroup) = self.local.cgroup() else {
            return Ok(Vec::new());
        };
        let attached = local::attach(dp, cgroup)?;
        log::info!(
            "attached to cgroup {}: local connect and getpeername",
            cgroup.display()
        );
        if self.persist {
            return Ok(attached.take_links(dp)?);
        }
        Ok(Vec::new())
    }

    /// Adopting (or migrating) `old`, whose pins are in `dir`: if it has pinned cgroup
    /// links on the cgroup asked for, their programs are replaced in place
    /// (`BPF_LINK_UPDATE`); otherwise the programs are attached afresh (pinned with
    /// `--persist`) and only then are links on another cgroup — or all of them with
    /// `--no-local` — unpinned, which detaches them.
    pub(super) fn adopt_local(
        &self,
        dp: &mut Dataplane,
        dir: &Path,
        old: &InstanceInfo,
    ) -> anyhow::Result<()> {
        let links_dir = dir.join(paths::LINKS_DIR);
        let pinned = local::pinned_in(&links_dir);
        let wanted = self.local.cgroup();
        let same_cgroup = wanted.is_some_and(|c| old.local_cgroup.as_deref() == c.to_str());
        if pinned && same_cgroup {
            local::adopt(dp, &links_dir)?;
            log::info!("adopted the cgroup links (local connect and getpeername)");
            return Ok(());
        }
        if wanted.is_some() {
            let links = self.attach_local(dp)?;
            if !links.is_empty() {
                std::fs::create_dir_all(&links_dir)
                    .with_context(|| format!("creating {}", links_dir.display()))?;
            }
            for (name, link) in links {
                let path = links_dir.join(name);
                link.pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            }
        }
        if pinned {
            for (_, name) in local::PROGRAMS {
                let path = links_dir.join(name);
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
            }
            log::info!(
                "removed the cgroup links of {} (local clients now: {})",
                old.local_cgroup.as_deref().unwrap_or("an older loader"),
                wanted.map_or("not redirected".into(), |c| c.display().to_string())
            );
        }
        Ok(())
    }
}
