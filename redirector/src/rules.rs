//! Redirect rules (`FROM:TO`): parsing and validation.

use std::{collections::HashSet, fmt, str::FromStr};

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
    #[error("too many rules ({0}); at most {max} are supported", max = redirector_common::maps::MAX_RULES)]
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
    if rules.len() > redirector_common::maps::MAX_RULES as usize {
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
}
