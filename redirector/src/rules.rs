//! Redirect rules (`FROM:TO`): parsing, validation, and the counter slots they get.
//!
//! [`RuleSlots`] lives here rather than with the instance: the dataplane's `set_rules`
//! (used by `run` and the kernel tests) and the instance's `add` share it, and the
//! dataplane must not depend on the instance model.

use std::{collections::HashSet, fmt, str::FromStr};

use redirector_common::maps::MAX_RULES;

/// One redirect: new TCP flows to `from_port` go to `to_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RedirectRule {
    /// Port clients connect to.
    pub from_port: u16,
    /// Port the server listens on.
    pub to_port: u16,
}

/// The rules used when none are given: plain and TLS WebSocket ports.
pub const DEFAULT_RULES: [RedirectRule; 2] = [
    RedirectRule {
        from_port: 80,
        to_port: 8080,
    },
    RedirectRule {
        from_port: 443,
        to_port: 8443,
    },
];

/// Why a rule was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// Not of the form `FROM:TO`.
    #[error("invalid rule `{0}`: expected FROM:TO, e.g. 80:8080")]
    Format(String),
    /// A port is not a number in 1..=65535.
    #[error("invalid port `{port}` in rule `{rule}`: ports are 1-65535")]
    Port {
        /// The whole rule as given.
        rule: String,
        /// The offending port text.
        port: String,
    },
    /// FROM equals TO.
    #[error("invalid rule `{0}`: FROM and TO are the same port")]
    SamePort(String),
    /// Two rules for one FROM port.
    #[error("duplicate rule for port {0}: each FROM port can be redirected only once")]
    DuplicateFrom(u16),
    /// More rules than the kernel map holds.
    #[error("too many rules ({0}); at most {max} are supported", max = MAX_RULES)]
    TooMany(usize),
}

impl FromStr for RedirectRule {
    type Err = RuleError;

    fn from_str(rule: &str) -> Result<Self, Self::Err> {
        let (from, to) = rule
            .split_once(':')
            .ok_or_else(|| RuleError::Format(rule.to_string()))?;
        let port = |text: &str| -> Result<u16, RuleError> {
            match text.trim().parse::<u16>() {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(RuleError::Port {
                    rule: rule.to_string(),
                    port: text.to_string(),
                }),
            }
        };
        let (from_port, to_port) = (port(from)?, port(to)?);
        if from_port == to_port {
            return Err(RuleError::SamePort(rule.to_string()));
        }
        Ok(RedirectRule { from_port, to_port })
    }
}

impl fmt::Display for RedirectRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.from_port, self.to_port)
    }
}

/// Checks a rule set as a whole: no duplicate FROM port, not more than the map holds.
pub fn validate(rules: &[RedirectRule]) -> Result<(), RuleError> {
    if rules.len() > MAX_RULES as usize {
        return Err(RuleError::TooMany(rules.len()));
    }
    let mut seen = HashSet::new();
    for rule in rules {
        if !seen.insert(rule.from_port) {
            return Err(RuleError::DuplicateFrom(rule.from_port));
        }
    }
    Ok(())
}

/// A counter slot (index into `RULE_STATS`) handed to a new rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Never used: its counters are zero.
    Fresh(u32),
    /// Used before, by a rule since removed whose flows are all gone: its counters must be
    /// zeroed before the new rule takes it.
    Reused(u32),
}

/// Hands out counter slots to rules: fresh ones in order, so the slot of a removed rule —
/// still fed by its surviving flows — is not handed out again while fresh ones remain;
/// once all [`MAX_RULES`] were handed out, the lowest slot no rule and no flow uses.
///
/// The state is the next fresh slot, which the instance file records as `next_slot`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSlots {
    next_fresh: u32,
}

impl RuleSlots {
    /// The slots of an instance whose next fresh slot is `next_fresh`.
    pub fn starting_at(next_fresh: u32) -> Self {
        RuleSlots { next_fresh }
    }

    /// The next fresh slot (what the instance file records).
    pub fn next_fresh(&self) -> u32 {
        self.next_fresh
    }

    /// Slots for the first rules of an instance, in order (rule `i` of a new instance gets
    /// slot `i`). The caller has checked the count ([`validate`]).
    pub fn assign(&mut self, rules: &[RedirectRule]) -> Vec<(RedirectRule, u32)> {
        rules
            .iter()
            .map(|rule| {
                self.next_fresh += 1;
                (*rule, self.next_fresh - 1)
            })
            .collect()
    }

    /// The slot for one new rule: a fresh one while any remain; after that the lowest slot
    /// not in what `in_use` returns (the slots of every rule and flow; asked only then).
    /// `None` if every slot is in use.
    pub fn allocate<E>(
        &mut self,
        in_use: impl FnOnce() -> Result<HashSet<u32>, E>,
    ) -> Result<Option<Slot>, E> {
        if self.next_fresh < MAX_RULES {
            self.next_fresh += 1;
            return Ok(Some(Slot::Fresh(self.next_fresh - 1)));
        }
        let in_use = in_use()?;
        Ok((0..MAX_RULES)
            .find(|slot| !in_use.contains(slot))
            .map(Slot::Reused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_rules() {
        assert_eq!(
            "80:8080".parse(),
            Ok(RedirectRule {
                from_port: 80,
                to_port: 8080
            })
        );
        assert_eq!("65535:1".parse::<RedirectRule>().unwrap().to_port, 1);
    }

    #[test]
    fn rejects_bad_rules() {
        assert!(matches!(
            "80".parse::<RedirectRule>(),
            Err(RuleError::Format(_))
        ));
        assert!(matches!(
            "0:8080".parse::<RedirectRule>(),
            Err(RuleError::Port { .. })
        ));
        assert!(matches!(
            "80:65536".parse::<RedirectRule>(),
            Err(RuleError::Port { .. })
        ));
        assert!(matches!(
            "80:x".parse::<RedirectRule>(),
            Err(RuleError::Port { .. })
        ));
        assert!(matches!(
            "80:80".parse::<RedirectRule>(),
            Err(RuleError::SamePort(_))
        ));
    }

    #[test]
    fn rejects_duplicate_from() {
        let rules = ["80:8080", "80:9090"].map(|r| r.parse().unwrap());
        assert_eq!(validate(&rules), Err(RuleError::DuplicateFrom(80)));
        assert_eq!(validate(&DEFAULT_RULES), Ok(()));
    }

    #[test]
    fn initial_rules_get_slots_in_order() {
        let mut slots = RuleSlots::default();
        let assigned = slots.assign(&DEFAULT_RULES);
        assert_eq!(assigned, [(DEFAULT_RULES[0], 0), (DEFAULT_RULES[1], 1)]);
        assert_eq!(slots.next_fresh(), 2);
    }

    #[test]
    fn fresh_slots_first_then_the_lowest_unused() {
        let no_scan = || -> Result<HashSet<u32>, ()> { panic!("scanned with fresh slots left") };
        let mut slots = RuleSlots::starting_at(MAX_RULES - 1);
        let fresh = slots.allocate(no_scan).unwrap();
        assert_eq!(fresh, Some(Slot::Fresh(MAX_RULES - 1)));
        assert_eq!(slots.next_fresh(), MAX_RULES);
        let used: HashSet<u32> = (0..MAX_RULES).filter(|s| *s != 5 && *s != 9).collect();
        let reused = slots.allocate(|| Ok::<_, ()>(used.clone())).unwrap();
        assert_eq!(reused, Some(Slot::Reused(5)));
        let all: HashSet<u32> = (0..MAX_RULES).collect();
        assert_eq!(slots.allocate(|| Ok::<_, ()>(all)), Ok(None));
        assert_eq!(slots.allocate(|| Err("map")), Err("map"));
        assert_eq!(slots.next_fresh(), MAX_RULES);
    }
}
