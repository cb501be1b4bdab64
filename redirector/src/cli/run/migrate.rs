//! Step 2 of `run` on a persisted instance of the previous state format: migrate its
//! flow table into today's two, then take over its links (docs/ARCHITECTURE.md,
//! "Migration from format 2", gives the order and why).

use anyhow::Context as _;
use redirector::{
    dataplane::{attach, follow::Follower, iface, Dataplane},
    instance::{
        adopt::{self, AdoptedRule},
        migrate::{self, Copied, OldTables, MIGRATES_FROM},
        paths,
        pinned::PinnedInstance,
    },
};

use super::{
    prepare::{Adoption, Prepared},
    start::Begun,
};

impl Prepared {
    /// Migrates the format-2 instance `adoption`: new flow tables filled from its FLOWS,
    /// its counters copied, the whole new pin set assembled in a temporary directory;
    /// only then the programs on its links are replaced (`bpf_link_update`), a second
    /// copy catches the flows its program created meanwhile, this loader's rules and allow
    /// list go in, the directories are swapped and the format-3 instance file written.
    /// Until the link update nothing of the old instance is written: an error leaves it
    /// running as it was.
    pub(super) fn start_migrated(
        &self,
        adoption: Adoption,
        metrics_url: Option<String>,
    ) -> anyhow::Result<Begun> {
        let old = &adoption.old;
        let dir = paths::pin_dir(old.netns_inode, old.key_iface());
        let tmp = paths::pin_tmp_dir(old.netns_inode, old.key_iface(), std::process::id());
        let links: Vec<String> = adoption
            .hooks
            .iter()
            .flat_map(|(name, _)| {
                [
                    paths::link_pin_name(name, "ingress"),
                    paths::link_pin_name(name, "egress"),
                ]
            })
            .collect();
        let prepared = self.prepare_migration(&dir, &tmp, old.key_iface(), old.netns_inode, &links);
        let (mut dp, tables, first) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.context(format!(
                    "migrating the persisted redirector of state format {MIGRATES_FROM} \
                     (pid {}) on {}: nothing was changed, it keeps redirecting",
                    old.pid,
                    old.key_iface()
                )));
            }
        };
        self.configure_loaded(&mut dp)?;
        let link_dir = dir.join(paths::LINKS_DIR);
        let mut follower = Follower::new(Some(link_dir.clone()));
        for (name, hook) in &adoption.hooks {
            let ingress = link_dir.join(paths::link_pin_name(name, "ingress"));
            let egress = link_dir.join(paths::link_pin_name(name, "egress"));
            let ifindex = iface::ifindex(name)?;
            let held =
                attach::adopt(&mut dp, name, *hook, &ingress, &egress).with_context(|| {
                    format!(
                        "replacing the programs on {name} (interfaces before it already run the \
                     new programs; the new pins wait in {})",
                        tmp.display()
                    )
                })?;
            follower.attached(name, *hook, ifindex, Some(held));
            log::info!("migrated the links on {name}: ingress {hook}, egress tc");
        }
        // Flows the old program created, or completed, since the first copy.
        let second = migrate::copy_flows(&tables, dp.maps_mut())
            .context("copying the flows created during the migration")?;
        let flow_slots = || -> anyhow::Result<_> {
            Ok(dp.flows()?.iter().map(|(_, flow)| flow.rule_slot).collect())
        };
        let (rules, next_slot) = adopt::assign_slots(old, &self.rules, flow_slots)?;
        adopt::apply_rules(dp.maps_mut(), old, &rules)?;
        adopt::apply_allow(dp.maps_mut(), &self.allow)?;
        migrate::swap(&tmp, &dir).context("replacing the pinned state")?;
        drop(tables);
        // Format 2 had no cgroup links: attached afresh (pinned in the new directory).
        self.adopt_local(&mut dp, &dir, old)?;
        let mut info = self.info(old.interfaces.clone(), metrics_url);
        info.mode.clone_from(&old.mode);
        info.rules = rules.iter().map(AdoptedRule::info).collect();
        info.next_slot = next_slot;
        let pinned = PinnedInstance::adopt(&info).context("rewriting the instance file")?;
        let established = first.established + second.established + second.promoted;
        let half_open = first.half_open + second.half_open;
        let note = format!(
            "migrated {established} established and {half_open} half-open flows from state \
             format {MIGRATES_FROM} (pid {})",
            old.pid
        );
        log::info!(
            "{note}; {} created during the migration (maps and links pinned in {})",
            second.established + second.half_open + second.promoted,
            pinned.dir().display()
        );
        Ok((dp, pinned, info, Some(note), follower))
    }

    /// Everything before the link update: opens the old tables, loads the new object on
    /// the kept maps, copies the flows and counters, assembles the new pins in `tmp`.
    fn prepare_migration(
        &self,
        dir: &std::path::Path,
        tmp: &std::path::Path,
        key_iface: &str,
        netns: u64,
        links: &[String],
    ) -> anyhow::Result<(Dataplane, OldTables, Copied)> {
        let tables = OldTables::open(dir)?;
        let mut dp = Dataplane::load_migrating(self.conntrack_size, dir)
            .context("loading the new programs")?;
        let copied = migrate::copy_flows(&tables, dp.maps_mut())?;
        if copied.established > u64::from(self.conntrack_size) {
            return Err(migrate::MigrateError::TooMany {
                flows: copied.established,
                capacity: self.conntrack_size,
            }
            .into());
        }
        let counters = dp.maps_mut().import_counters(tables.stats())?;
        log::debug!("copied {counters} counters and {copied:?}");
        let info_path = paths::instance_file(netns, key_iface);
        migrate::assemble(&dp, dir, tmp, &info_path, links)?;
        Ok((dp, tables, copied))
    }
}
