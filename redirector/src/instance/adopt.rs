//! Adopting a persisted instance: `redirector run` on the interfaces of a `--persist`
//! instance whose loader exited reuses its pinned maps (flows and counters) and links.
//! Here: what must match for that ([`check`]), and how the new loader's rules and allow
//! list replace the old ones in the adopted maps ([`assign_slots`], [`apply_rules`],
//! [`apply_allow`]).

use std::collections::HashSet;

use super::info::{InstanceInfo, RuleInfo};
use crate::{
    dataplane::{
        attach::{Hook, Mode},
        maps::{Maps, MapsError},
        steer,
    },
    rules::{RedirectRule, RuleSlots, Slot},
    source_filter::SourcePrefix,
};

/// The persisted instance cannot be adopted as asked.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// Not the same interfaces.
    #[error("interfaces {asked} differ from those of the persisted redirector on {key} ({persisted}; loader pid {pid} exited): give the same --iface list to adopt it with its flows, or remove it with `redirector detach --iface {key}` first (drops its flows)")]
    Interfaces {
        /// The new loader's interfaces.
        asked: String,
        /// The persisted instance's.
        persisted: String,
        /// Its exited loader.
        pid: u32,
        /// Its key interface.
        key: String,
    },
    /// An explicit `--mode` that the persisted hook does not satisfy.
    #[error("--mode {mode}: the persisted redirector on {iface} uses ingress hook {hook}, which cannot be changed without a moment with no program attached; run without --mode (or with --mode {hook}) to adopt it with its flows, or remove it with `redirector detach --iface {key}` first (drops its flows)")]
    Mode {
        /// The mode asked for.
        mode: Mode,
        /// The interface concerned.
        iface: String,
        /// Its persisted hook.
        hook: Hook,
        /// The instance's key interface.
        key: String,
    },
    /// An explicit `--mode` of the other strategy than the persisted instance's.
    #[error("--mode {mode}: the persisted redirector on {key} {persisted}, which cannot change without a moment with neither; run without --mode (or with --mode {wanted}) to adopt it, or remove it with `redirector detach --iface {key}` first")]
    Strategy {
        /// The mode asked for.
        mode: Mode,
        /// What the persisted instance does, in words.
        persisted: &'static str,
        /// The mode that adopts it.
        wanted: &'static str,
        /// The instance's key interface.
        key: String,
    },
    /// The instance file names a hook this version does not know.
    #[error("the persisted redirector's instance file names an unknown ingress hook `{hook}` for {iface}")]
    UnknownHook {
        /// Interface.
        iface: String,
        /// Hook name as written.
        hook: String,
    },
    /// Every counter slot is in use.
    #[error("no free counter slot for the rules of the adopting loader")]
    NoFreeSlot,
    /// A map operation failed.
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// Checks that `old` (a persisted instance found on one of `ifaces`) can be adopted by a
/// loader started on `ifaces` with the explicit `mode` (if any): the same interfaces (in
/// any order) and a mode its hooks satisfy. Returns each interface with its hook, in the
/// persisted order (whose first interface keys the pin directory).
pub fn check(
    old: &InstanceInfo,
    ifaces: &[String],
    mode: Option<Mode>,
) -> Result<Vec<(String, Hook)>, AdoptError> {
    let persisted: Vec<&str> = old.interfaces.iter().map(|i| i.name.as_str()).collect();
    let mut asked_sorted: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    let mut persisted_sorted = persisted.clone();
    asked_sorted.sort_unstable();
    persisted_sorted.sort_unstable();
    if asked_sorted != persisted_sorted {
        return Err(AdoptError::Interfaces {
            asked: ifaces.join(", "),
            persisted: persisted.join(", "),
            pid: old.pid,
            key: old.key_iface().to_string(),
        });
    }
    let mut hooks = Vec::new();
    if old
        .interfaces
        .iter()
        .any(|i| i.ingress_hook == steer::HOOK_NAME)
    {
        // Socket steering: no link per interface, one on the network namespace.
        return match mode {
            None | Some(Mode::Auto | Mode::Socket) => Ok(hooks),
            Some(mode) => Err(AdoptError::Strategy {
                mode,
                persisted: "steers sockets (--mode socket)",
                wanted: "socket",
                key: old.key_iface().to_string(),
            }),
        };
    }
    if mode == Some(Mode::Socket) {
        return Err(AdoptError::Strategy {
            mode: Mode::Socket,
            persisted: "rewrites packets on its interfaces",
            wanted: "auto",
            key: old.key_iface().to_string(),
        });
    }
    for iface in &old.interfaces {
        let hook = Hook::from_name(&iface.ingress_hook).ok_or_else(|| AdoptError::UnknownHook {
            iface: iface.name.clone(),
            hook: iface.ingress_hook.clone(),
        })?;
        if let Some(mode) = mode.filter(|mode| !hook.satisfies(*mode)) {
            return Err(AdoptError::Mode {
                mode,
                iface: iface.name.clone(),
                hook,
                key: old.key_iface().to_string(),
            });
        }
        hooks.push((iface.name.clone(), hook));
    }
    Ok(hooks)
}

/// One rule of the adopting loader and its counter slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdoptedRule {
    /// The rule.
    pub rule: RedirectRule,
    /// Its counter slot.
    pub slot: u32,
    /// The slot was used by a rule since gone: zero its counters first.
    pub reset: bool,
}

impl AdoptedRule {
    /// As recorded in the instance file.
    pub fn info(&self) -> RuleInfo {
        RuleInfo::new(self.rule, self.slot)
    }
}

/// Counter slots for the adopting loader's `rules`: a rule whose FROM port the persisted
/// instance `old` had keeps its slot (its counters continue); the others get slots as
/// `redirector add` would, `flow_slots` giving the slots of tracked flows (asked only once
/// the fresh slots are used up). Also returns the next fresh slot.
pub fn assign_slots<E>(
    old: &InstanceInfo,
    rules: &[RedirectRule],
    mut flow_slots: impl FnMut() -> Result<HashSet<u32>, E>,
) -> Result<(Vec<AdoptedRule>, u32), E>
where
    E: From<AdoptError>,
{
    let kept = |rule: &RedirectRule| old.rules.iter().find(|r| r.from_port == rule.from_port);
    let mut taken: HashSet<u32> = rules.iter().filter_map(kept).map(|r| r.slot).collect();
    let mut slots = RuleSlots::starting_at(old.next_slot);
    let mut adopted = Vec::new();
    for rule in rules {
        let (slot, reset) = match kept(rule) {
            Some(old_rule) => (old_rule.slot, false),
            None => {
                let in_use = || flow_slots().map(|flows| &flows | &taken);
                match slots.allocate(in_use)?.ok_or(AdoptError::NoFreeSlot)? {
                    Slot::Fresh(slot) => (slot, false),
                    Slot::Reused(slot) => (slot, true),
                }
            }
        };
        taken.insert(slot);
        adopted.push(AdoptedRule {
            rule: *rule,
            slot,
            reset,
        });
    }
    Ok((adopted, slots.next_fresh()))
}

/// Makes the adopted RULES map hold exactly `rules` (enabled): rules of `old` on other
/// FROM ports go (their flows keep being rewritten until they close).
pub fn apply_rules(
    maps: &mut Maps,
    old: &InstanceInfo,
    rules: &[AdoptedRule],
) -> Result<(), MapsError> {
    for rule in rules {
        if rule.reset {
            maps.reset_rule_counters(rule.slot)?;
        }
        maps.insert_rule(rule.rule, rule.slot)?;
    }
    for gone in old
        .rules
        .iter()
        .filter(|o| !rules.iter().any(|r| r.rule.from_port == o.from_port))
    {
        maps.remove_rule(gone.from_port)?;
    }
    Ok(())
}

/// Makes the adopted allow list `allow` (empty: every source): the new prefixes are added
/// and the filter set before the old ones go, so no allowed source is refused meanwhile.
pub fn apply_allow(maps: &mut Maps, allow: &[SourcePrefix]) -> Result<(), MapsError> {
    let old = maps.allowed_sources()?;
    maps.set_allowed_sources(allow)?;
    for prefix in old.into_iter().filter(|p| !allow.contains(p)) {
        maps.disallow_source(prefix)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::info::{InterfaceInfo, INSTANCE_FORMAT};

    fn old() -> InstanceInfo {
        InstanceInfo {
            format: INSTANCE_FORMAT,
            version: "0.1.0".into(),
            pid: 42,
            netns_inode: 1,
            netns_cookie: None,
            mode: "auto".into(),
            interfaces: vec![
                InterfaceInfo {
                    name: "eth0".into(),
                    ingress_hook: "xdp".into(),
                },
                InterfaceInfo {
                    name: "veth1".into(),
                    ingress_hook: "tc".into(),
                },
            ],
            conntrack_size: 1024,
            rules: vec![
                RuleInfo::new("80:8080".parse().unwrap(), 0),
                RuleInfo::new("443:8443".parse().unwrap(), 1),
            ],
            next_slot: 2,
            timeouts: None,
            metrics: None,
            persist: true,
            local_cgroup: None,
            mark: None,
        }
    }

    fn ifaces(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_same_interfaces_in_any_order_and_no_or_a_matching_mode_adopt() {
        let hooks = check(&old(), &ifaces(&["veth1", "eth0"]), None).unwrap();
        assert_eq!(
            hooks,
            [
                ("eth0".to_string(), Hook::XdpNative),
                ("veth1".to_string(), Hook::TcIngress)
            ]
        );
        assert!(check(&old(), &ifaces(&["eth0", "veth1"]), Some(Mode::Auto)).is_ok());
    }

    #[test]
    fn other_interfaces_or_another_mode_are_refused_clearly() {
        let err = check(&old(), &ifaces(&["eth0"]), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("give the same --iface list"), "{text}");
        assert!(text.contains("redirector detach --iface eth0"), "{text}");
        let err = check(&old(), &ifaces(&["eth0", "veth1"]), Some(Mode::Tc)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--mode tc"), "{text}");
        assert!(text.contains("uses ingress hook xdp"), "{text}");
    }

    #[test]
    fn rules_on_the_same_port_keep_their_slot_and_new_ones_get_fresh_ones() {
        let rules: Vec<RedirectRule> =
            vec!["443:9443".parse().unwrap(), "22:2222".parse().unwrap()];
        let (adopted, next) =
            assign_slots::<AdoptError>(&old(), &rules, || unreachable!("fresh slots left"))
                .unwrap();
        let slots: Vec<(u16, u32, bool)> = adopted
            .iter()
            .map(|a| (a.rule.from_port, a.slot, a.reset))
            .collect();
        assert_eq!(slots, [(443, 1, false), (22, 2, false)]);
        assert_eq!(next, 3);
    }
}
