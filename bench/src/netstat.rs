//! TCP health counters of a namespace (/proc/net/snmp and /proc/net/netstat): checksum
//! errors, which must stay zero, and SYN retransmits, which show a dropped handshake.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use serde::Serialize;

use testkit::netns::Netns;

/// The counters one run is judged by, as differences over the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Tcp InCsumErrors: segments dropped for a bad checksum (any is a failure).
    pub csum_errors: u64,
    /// TcpExt TCPSynRetrans: SYNs sent again (handshakes that got no answer in time).
    pub syn_retransmits: u64,
}

impl Health {
    pub fn add(self, other: Self) -> Self {
        Self {
            csum_errors: self.csum_errors + other.csum_errors,
            syn_retransmits: self.syn_retransmits + other.syn_retransmits,
        }
    }
}

/// Reads the counters of `ns` now.
pub fn read(ns: &Netns) -> Result<Health> {
    let text = ns
        .exec("cat")
        .args(["/proc/net/snmp", "/proc/net/netstat"])
        .run_captured()
        .with_context(|| format!("could not read the TCP counters of {}", ns.name()))?;
    let counters = parse(&text);
    Ok(Health {
        csum_errors: counters.get("Tcp:InCsumErrors").copied().unwrap_or(0),
        syn_retransmits: counters.get("TcpExt:TCPSynRetrans").copied().unwrap_or(0),
    })
}

/// The change from `before` to `after` (counters only grow).
pub fn delta(before: Health, after: Health) -> Health {
    Health {
        csum_errors: after.csum_errors.saturating_sub(before.csum_errors),
        syn_retransmits: after.syn_retransmits.saturating_sub(before.syn_retransmits),
    }
}

/// `Proto: name name …` / `Proto: value value …` line pairs → `Proto:name` → value.
fn parse(text: &str) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let mut names = names.split_whitespace();
        let mut values = values.split_whitespace();
        let (Some(proto), Some(_)) = (names.next(), values.next()) else {
            continue;
        };
        for (name, value) in names.zip(values) {
            if let Ok(value) = value.parse::<u64>() {
                counters.insert(format!("{proto}{name}"), value);
            }
        }
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_paired_by_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm InSegs InCsumErrors\nTcp: 1 100 3\n\
                    TcpExt: SyncookiesSent TCPSynRetrans\nTcpExt: 0 7\n";
        let counters = parse(text);
        assert_eq!(counters["Tcp:InCsumErrors"], 3);
        assert_eq!(counters["TcpExt:TCPSynRetrans"], 7);
        assert_eq!(counters["Ip:DefaultTTL"], 64);
        let before = Health {
            csum_errors: 1,
            syn_retransmits: 5,
        };
        let after = Health {
            csum_errors: 1,
            syn_retransmits: 9,
        };
        assert_eq!(
            delta(before, after),
            Health {
                csum_errors: 0,
                syn_retransmits: 4
            }
        );
    }
}
