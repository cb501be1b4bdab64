//! What the verb commands (`enable`, `disable`, `add`, `remove`, `allow`, `disallow`,
//! `flush`) change in a running instance, each through [`Instance::edit`]. Flows already
//! tracked keep being rewritten through their conntrack entry whatever happens to their
//! rule.

use std::collections::HashSet;

use redirector_common::{
    maps::{FlowKey, LISTENERS_MAP, MAX_ALLOW, MAX_RULES},
    stats::Counter,
};

use super::{info::RuleInfo, Instance, StateError};
use crate::{
    dataplane::{
        listeners,
        maps::{MapsError, Remover},
        privileges::{self, PrivilegeError},
    },
    rules::{RedirectRule, RuleError, RuleSlots, Slot},
    source_filter::SourcePrefix,
};

/// A control command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Not root.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// No instance, several, or its state is unreadable.
    #[error(transparent)]
    State(Box<StateError>),
    /// A map operation failed.
    #[error(transparent)]
    Maps(Box<MapsError>),
    /// No rule on that FROM port.
    #[error("no rule for port {0} (see `redirector status`)")]
    UnknownPort(u16),
    /// `add` of a FROM port that already has a rule.
    #[error("port {0} already has a rule; remove it first")]
    RuleExists(u16),
    /// The rule is invalid (e.g. as many rules as the map holds).
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Every counter slot is in use by a rule or by flows of a removed rule.
    #[error("no free rule slot: all {MAX_RULES} are used by rules or by flows of removed rules (try `redirector flush`)")]
    NoFreeSlot,
    /// `allow` of a prefix that is listed already.
    #[error("{0} is already in the allow list")]
    AlreadyAllowed(SourcePrefix),
    /// `disallow` of a prefix that is not listed (exactly).
    #[error(
        "{0} is not in the allow list (see `redirector status`; give a prefix exactly as listed)"
    )]
    NotAllowed(SourcePrefix),
    /// The allow list holds as many prefixes as its map.
    #[error("the allow list is full ({MAX_ALLOW} prefixes)")]
    AllowListFull,
    /// The file the loader publishes its sniffing proxy's counters and limit in is
    /// unreadable.
    #[error(transparent)]
    Sniff(#[from] Box<crate::observe::sniff_publish::PublishError>),
    /// Socket steering's listeners could not be read.
    #[error(transparent)]
    Listeners(#[from] Box<crate::dataplane::listeners::ListenersError>),
    /// The socket table (the connections socket steering made) could not be read.
    #[error(transparent)]
    SockDiag(#[from] Box<crate::kernel_truth::sock_diag::SockDiagError>),
}

impl From<StateError> for ControlError {
    fn from(e: StateError) -> Self {
        ControlError::State(Box::new(e))
    }
}

impl From<MapsError> for ControlError {
    fn from(e: MapsError) -> Self {
        ControlError::Maps(Box::new(e))
    }
}

/// Checks privileges and opens the instance of this network namespace.
pub fn open(iface: Option<&str>) -> Result<Instance, ControlError> {
    privileges::check()?;
    Ok(Instance::find(iface)?)
}

/// Adds `prefix` to the allow list and turns source filtering on; returns true if
/// filtering was off before (every source was allowed, now only `prefix` is).
pub fn allow_source(instance: &mut Instance, prefix: SourcePrefix) -> Result<bool, ControlError> {
    instance.edit(|_, maps| {
        let was_filtering = maps.filtering_sources()?;
        let listed = maps.allowed_sources()?;
        if listed.contains(&prefix) && was_filtering {
            return Err(ControlError::AlreadyAllowed(prefix));
        }
        if listed.len() >= MAX_ALLOW as usize {
            return Err(ControlError::AllowListFull);
        }
        maps.allow_source(prefix)?;
        Ok(!was_filtering)
    })
}

/// Removes `prefix` from the allow list; returns how many prefixes are left (filtering
/// stays on: with none left, no source creates flows). Tracked flows are not affected.
pub fn disallow_source(
    instance: &mut Instance,
    prefix: SourcePrefix,
) -> Result<usize, ControlError> {
    instance.edit(|_, maps| {
        if !maps.filtering_sources()? || !maps.disallow_source(prefix)? {
            return Err(ControlError::NotAllowed(prefix));
        }
        Ok(maps.allowed_sources()?.len())
    })
}

/// Enables or disables new-flow redirection on `port`.
pub fn set_enabled(instance: &mut Instance, port: u16, enabled: bool) -> Result<(), ControlError> {
    instance.edit(|_, maps| match maps.set_rule_enabled(port, enabled)? {
        true => Ok(()),
        false => Err(ControlError::UnknownPort(port)),
    })
}

/// Adds `rule` (enabled); returns its counter slot, from the instance's [`RuleSlots`].
pub fn add_rule(instance: &mut Instance, rule: RedirectRule) -> Result<u32, ControlError> {
    let listeners = instance.info.steers_sockets().then(|| {
        instance
            .info
            .pin_dir_from_here(instance.loader_running)
            .join(LISTENERS_MAP)
    });
    instance.edit(|info, maps| {
        let rules = maps.rules()?;
        if rules.iter().any(|(from, _)| *from == rule.from_port) {
            return Err(ControlError::RuleExists(rule.from_port));
        }
        if rules.len() >= MAX_RULES as usize {
            return Err(RuleError::TooMany(rules.len() + 1).into());
        }
        let mut slots = RuleSlots::starting_at(info.next_slot);
        // Asked only once every slot was handed out: the slots rules and flows still use.
        let in_use = || {
            let flows = maps.flows()?;
            let by_rules = rules.iter().map(|(_, r)| r.slot);
            let by_flows = flows.iter().map(|(_, f)| f.rule_slot);
            Ok::<_, ControlError>(by_rules.chain(by_flows).collect())
        };
        let slot = match slots.allocate(in_use)?.ok_or(ControlError::NoFreeSlot)? {
            Slot::Fresh(slot) => slot,
            Slot::Reused(slot) => {
                maps.reset_rule_counters(slot)?;
                slot
            }
        };
        if let Some(path) = &listeners {
            // Socket steering: the new TO port's listeners first (the loader would take
            // them within its next sync, refusing connections until then).
            let mut to_ports: HashSet<u16> = rules.iter().map(|(_, r)| r.to_port).collect();
            to_ports.insert(rule.to_port);
            match listeners::sync_pinned(path, &to_ports) {
                Ok(synced) if synced.untaken.is_empty() => {}
                Ok(synced) => log::warn!(
                    "the loader takes the listeners of {} within its next sync: {:?}",
                    rule.to_port,
                    synced.untaken
                ),
                Err(e) => log::warn!(
                    "the loader takes the listeners of {} within its next sync: {e}",
                    rule.to_port
                ),
            }
        }
        maps.insert_rule(rule, slot)?;
        info.next_slot = slots.next_fresh();
        info.rules.push(RuleInfo::new(rule, slot));
        Ok(slot)
    })
}

/// Removes the rule on `port`; its tracked flows keep working until they close.
pub fn remove_rule(instance: &mut Instance, port: u16) -> Result<(), ControlError> {
    instance.edit(|info, maps| {
        if !maps.remove_rule(port)? {
            return Err(ControlError::UnknownPort(port));
        }
        info.rules.retain(|r| r.from_port != port);
        Ok(())
    })
}

/// Forgets tracked flows (to `port` only, if given); returns how many were removed.
/// A connection the kernel still holds gets its entry back at its next packet (a heal).
pub fn flush(instance: &mut Instance, port: Option<u16>) -> Result<usize, ControlError> {
    // Under the control lock: it serialises the read-modify-write of `flow_flushed`.
    instance.edit(|_, maps| {
        let doomed: Vec<FlowKey> = maps
            .flows()?
            .into_iter()
            .filter(|(_, v)| port.is_none_or(|p| v.orig_port == p))
            .map(|(k, _)| k)
            .collect();
        let (removed, result) = maps.remove_flows(&doomed, Remover::Control);
        // Counted even after an error: what was removed must not look evicted.
        maps.add_to_user_counter(Counter::FlowFlushed, removed as u64)?;
        result?;
        Ok(removed)
    })
}
