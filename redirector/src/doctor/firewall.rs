//! Check 2, `firewall`: would the host firewall drop redirected packets? INPUT sees them
//! with their new port (TO), so an input policy that accepts only 80/443 drops every
//! redirected connection unless it accepts TO or the packet mark of `--mark`.
//!
//! The nftables ruleset of this network namespace (`nft -j list ruleset`; iptables-nft
//! rules are in it too) is walked for a redirected SYN — TCP to TO, arriving on the
//! interface, connection tracking state `new`, the `--mark` bits set — through every base
//! chain on the input hook, following jumps. A match on what doctor cannot know (source
//! address, rate limits, sets, xt matches) is "maybe": an accept behind one turns a drop
//! into a warning rather than a failure.

use std::{collections::HashMap, process::Command};

use serde_json::Value;

use super::{Check, Settings, Status};
use crate::packet_mark::PacketMark;

const NAME: &str = "firewall";

/// Jumps followed at most (nft itself refuses loops; this bounds a malformed ruleset).
const MAX_DEPTH: usize = 16;

/// The findings: one per rule's TO port (or one saying why it could not look). With socket
/// steering (`steering`) nothing is rewritten and INPUT sees the port the client dialled:
/// one per FROM port.
pub fn check(settings: &Settings, steering: bool) -> Vec<Check> {
    let ruleset = match list_ruleset() {
        Ok(ruleset) => ruleset,
        Err(why) => return vec![Check::new(NAME, Status::Skip, why)],
    };
    let ruleset = Ruleset::parse(&ruleset);
    if steering {
        let mut ports: Vec<u16> = settings.rules.iter().map(|r| r.from_port).collect();
        ports.sort_unstable();
        ports.dedup();
        return ports
            .into_iter()
            .map(|port| check_steered_port(&ruleset, settings, port))
            .collect();
    }
    let mut ports: Vec<u16> = settings.rules.iter().map(|r| r.to_port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
        .into_iter()
        .map(|port| check_port(&ruleset, settings, port))
        .collect()
}

/// Socket steering: INPUT sees a steered connection's SYN on its FROM port, unmarked.
fn check_steered_port(ruleset: &Ruleset, settings: &Settings, port: u16) -> Check {
    match worst_outcome(ruleset, settings, port, 0) {
        None | Some((_, Outcome::Accepted)) => Check::new(
            NAME,
            Status::Ok,
            format!("the input hook accepts connections to {port} (socket steering: INPUT sees the port clients dial)"),
        ),
        Some((family, Outcome::Dropped { chain, how, maybe })) => Check::new(
            NAME,
            if maybe { Status::Warn } else { Status::Fail },
            format!(
                "chain {chain} ({how}) drops {family} connections to {port}: with socket \
                 steering INPUT sees the port clients dial"
            ),
        )
        .with_fix(format!("open tcp dport {port} in chain {chain}")),
    }
}

/// The worst the input hook does to a new connection's SYN to `dport` carrying `mark`, on
/// any of the interfaces, over IPv4 and IPv6 (`None`: no interface to judge).
fn worst_outcome(
    ruleset: &Ruleset,
    settings: &Settings,
    dport: u16,
    mark: u32,
) -> Option<(Family, Outcome)> {
    let mut worst: Option<(Family, Outcome)> = None;
    for iface in &settings.ifaces {
        for family in [Family::V4, Family::V6] {
            let packet = Packet {
                family,
                dport,
                mark,
                iif: iface.clone(),
            };
            let outcome = ruleset.judge(&packet);
            if worst
                .as_ref()
                .is_none_or(|(_, w)| outcome.rank() > w.rank())
            {
                worst = Some((family, outcome));
            }
        }
    }
    worst
}

fn list_ruleset() -> Result<Value, String> {
    let out = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .map_err(|e| format!("cannot run `nft -j list ruleset` ({e}): firewall not checked"))?;
    if !out.status.success() {
        return Err(format!(
            "`nft -j list ruleset` failed ({}): firewall not checked",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null); // an empty ruleset prints nothing
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`nft -j list ruleset` printed no JSON ({e}): firewall not checked"))
}

fn check_port(ruleset: &Ruleset, settings: &Settings, port: u16) -> Check {
    let rules: Vec<String> = settings
        .rules
        .iter()
        .filter(|r| r.to_port == port)
        .map(|r| format!("{}→{port}", r.from_port))
        .collect();
    let rules = format!("rule {}", rules.join(", "));
    let mark = settings.mark.map_or(0, |m| m.value);
    match worst_outcome(ruleset, settings, port, mark) {
        None | Some((_, Outcome::Accepted)) => Check::new(
            NAME,
            Status::Ok,
            format!("the input hook accepts redirected packets to {port} ({rules})"),
        ),
        Some((family, Outcome::Dropped { chain, how, maybe })) => {
            let status = if maybe { Status::Warn } else { Status::Fail };
            let hedge = if maybe {
                " unless an earlier rule that matches on what doctor cannot know accepts them"
            } else {
                ""
            };
            Check::new(
                NAME,
                status,
                format!(
                    "chain {chain} ({how}) drops redirected {family} packets to {port} ({rules}){hedge}: INPUT \
                     sees them with their new port"
                ),
            )
            .with_fix(fix_text(settings.mark, port, &chain))
        }
    }
}

fn fix_text(mark: Option<PacketMark>, port: u16, chain: &str) -> String {
    match mark {
        Some(mark) => format!(
            "accept the mark in chain {chain}: `meta mark & {:#x} == {:#x} accept` (before its \
             drop), or open tcp dport {port}",
            mark.mask, mark.value
        ),
        None => format!(
            "run redirector with --mark 0x42/0xff and accept `meta mark & 0xff == 0x42` in chain \
             {chain} before its drop (ufw: `-A ufw-before-input -m mark --mark 0x42/0xff -j \
             ACCEPT` in /etc/ufw/before.rules), or open tcp dport {port}"
        ),
    }
}

/// IPv4 or IPv6: which table families see the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl Family {
    /// Tables of `family` (`ip`, `ip6`, `inet`) see packets of this family.
    fn sees(self, family: &str) -> bool {
        matches!(
            (self, family),
            (_, "inet") | (Family::V4, "ip") | (Family::V6, "ip6")
        )
    }
}

/// A redirected SYN as the input hook sees it.
#[derive(Clone, Debug)]
struct Packet {
    family: Family,
    dport: u16,
    mark: u32,
    iif: String,
}

/// What the input hook does with the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Every base chain lets it through.
    Accepted,
    /// Base chain `chain` (`FAMILY TABLE NAME`) drops it, `how` (its policy, or a rule of
    /// it or of a chain it jumps to); `maybe`: a rule that might have accepted it came
    /// first.
    Dropped {
        chain: String,
        how: String,
        maybe: bool,
    },
}

impl Outcome {
    fn rank(&self) -> u8 {
        match self {
            Outcome::Accepted => 0,
            Outcome::Dropped { maybe: true, .. } => 1,
            Outcome::Dropped { maybe: false, .. } => 2,
        }
    }
}

/// A chain: its rules' expressions, and for a base chain its hook, priority and policy.
#[derive(Debug, Default)]
struct Chain {
    hook: Option<String>,
    prio: i64,
    policy_drop: bool,
    rules: Vec<Vec<Value>>,
}

/// The ruleset's chains by (family, table, chain).
#[derive(Debug, Default)]
struct Ruleset {
    chains: HashMap<(String, String, String), Chain>,
}

/// A rule's match result: three-valued, since doctor does not know every packet field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

/// How a walk through a chain ended.
enum Walk {
    Accept,
    Drop(String),
    /// Fell off the end, or `return`: back to the caller (the policy for a base chain).
    End,
}

impl Ruleset {
    fn parse(json: &Value) -> Ruleset {
        let mut ruleset = Ruleset::default();
        let items = json.get("nftables").and_then(Value::as_array);
        for item in items.into_iter().flatten() {
            if let Some(chain) = item.get("chain") {
                let entry = ruleset.chains.entry(key(chain)).or_default();
                entry.hook = chain
                    .get("hook")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                entry.prio = chain.get("prio").and_then(Value::as_i64).unwrap_or(0);
                entry.policy_drop = chain.get("policy").and_then(Value::as_str) == Some("drop");
            } else if let Some(rule) = item.get("rule") {
                let exprs = rule
                    .get("expr")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                ruleset
                    .chains
                    .entry(key(rule))
                    .or_default()
                    .rules
                    .push(exprs);
            }
        }
        ruleset
    }

    /// Runs the packet through every input base chain of its family, lowest priority first.
    fn judge(&self, packet: &Packet) -> Outcome {
        let mut bases: Vec<(&(String, String, String), &Chain)> = self
            .chains
            .iter()
            .filter(|((family, _, _), c)| {
                c.hook.as_deref() == Some("input") && packet.family.sees(family)
            })
            .collect();
        bases.sort_by_key(|(k, c)| (c.prio, (*k).clone()));
        let mut maybe = false;
        for (key, chain) in bases {
            let (family, table, name) = key;
            match self.walk(key, packet, 0, &mut maybe) {
                Walk::Accept => continue,
                Walk::Drop(how) => {
                    return Outcome::Dropped {
                        chain: format!("{family} {table} {name}"),
                        how,
                        maybe,
                    }
                }
                Walk::End if chain.policy_drop => {
                    return Outcome::Dropped {
                        chain: format!("{family} {table} {name}"),
                        how: "policy drop".into(),
                        maybe,
                    }
                }
                Walk::End => continue,
            }
        }
        Outcome::Accepted
    }

    fn walk(
        &self,
        key: &(String, String, String),
        packet: &Packet,
        depth: usize,
        maybe: &mut bool,
    ) -> Walk {
        let Some(chain) = self.chains.get(key).filter(|_| depth < MAX_DEPTH) else {
            return Walk::End;
        };
        let (family, table, name) = key;
        for exprs in &chain.rules {
            let matched = rule_matches(exprs, packet);
            if matched == Tri::No {
                continue;
            }
            let Some(verdict) = exprs.iter().find_map(verdict_of) else {
                continue;
            };
            let target = |target: &str| (family.clone(), table.clone(), target.to_string());
            let result = match verdict {
                Verdict::Accept => Walk::Accept,
                Verdict::Drop(kind) => Walk::Drop(format!("a {kind} rule in chain {name}")),
                Verdict::Return => Walk::End,
                Verdict::Jump(to) => match self.walk(&target(&to), packet, depth + 1, maybe) {
                    Walk::End => continue,
                    other => other,
                },
                // This chain is left for good: its end is the callee's end.
                Verdict::Goto(to) => self.walk(&target(&to), packet, depth + 1, maybe),
            };
            match (matched, result) {
                (Tri::Yes, result) => return result,
                // Might accept: remember it, and go on as if it did not match.
                (_, Walk::Accept) => *maybe = true,
                // Might drop, or a maybe-return: assume the packet passes on.
                _ => {}
            }
        }
        Walk::End
    }
}

fn key(object: &Value) -> (String, String, String) {
    let field = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (
        field("family"),
        field("table"),
        field(if object.get("chain").is_some() {
            "chain"
        } else {
            "name"
        }),
    )
}

/// A rule's verdict statement.
enum Verdict {
    Accept,
    Drop(&'static str),
    Return,
    Jump(String),
    Goto(String),
}

fn verdict_of(expr: &Value) -> Option<Verdict> {
    let target = |v: &Value| {
        v.get("target")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let object = expr.as_object()?;
    let (name, value) = object.iter().next()?;
    Some(match name.as_str() {
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop("drop"),
        "reject" => Verdict::Drop("reject"),
        "return" => Verdict::Return,
        "jump" => Verdict::Jump(target(value)),
        "goto" => Verdict::Goto(target(value)),
        _ => return None,
    })
}

/// Statements that neither match nor decide.
const NEUTRAL: &[&str] = &[
    "counter", "log", "mangle", "notrack", "quota", "meter", "set",
];

/// All of a rule's matches, and-ed.
fn rule_matches(exprs: &[Value], packet: &Packet) -> Tri {
    let mut result = Tri::Yes;
    for expr in exprs {
        let Some((name, value)) = expr.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let one = match name.as_str() {
            "match" => match_expr(value, packet),
            n if NEUTRAL.contains(&n) || verdict_of(expr).is_some() => continue,
            // xt matches, limits, …: unknown.
            _ => Tri::Maybe,
        };
        result = match (result, one) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Maybe, _) | (_, Tri::Maybe) => Tri::Maybe,
            _ => Tri::Yes,
        };
    }
    result
}

/// A field of the packet, as the left side of a match evaluates.
enum Field {
    /// A number, with the names nft may print for it (`tcp`, `ipv4`, `new`).
    Num(u64, &'static [&'static str]),
    /// A name (`iif`, `iifname`).
    Name(String),
}

/// One `{"match": {"op", "left", "right"}}`.
fn match_expr(m: &Value, packet: &Packet) -> Tri {
    let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
    let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
        return Tri::Maybe;
    };
    let field = match field_of(left, packet) {
        Ok(field) => field,
        Err(tri) => return tri,
    };
    let hit = match right_contains(right, &field) {
        Some(hit) => hit,
        None => return Tri::Maybe,
    };
    match op {
        "==" | "in" => tri(hit),
        "!=" => tri(!hit),
        _ => Tri::Maybe,
    }
}

fn tri(yes: bool) -> Tri {
    if yes {
        Tri::Yes
    } else {
        Tri::No
    }
}

/// The packet's value of `left`; `Err` when the match is decided (No: the packet has no
/// such header) or unknowable (Maybe).
fn field_of(left: &Value, packet: &Packet) -> Result<Field, Tri> {
    if let Some(and) = left.get("&").and_then(Value::as_array) {
        // `meta mark & MASK`
        if let [inner, mask] = and.as_slice() {
            if let (Ok(Field::Num(value, _)), Some(mask)) = (field_of(inner, packet), mask.as_u64())
            {
                return Ok(Field::Num(value & mask, &[]));
            }
        }
        return Err(Tri::Maybe);
    }
    if let Some(meta) = left.get("meta") {
        return match meta.get("key").and_then(Value::as_str) {
            Some("l4proto") => Ok(Field::Num(6, &["tcp"])),
            Some("nfproto") => Ok(match packet.family {
                Family::V4 => Field::Num(2, &["ipv4"]),
                Family::V6 => Field::Num(10, &["ipv6"]),
            }),
            Some("iif" | "iifname") => Ok(Field::Name(packet.iif.clone())),
            Some("mark") => Ok(Field::Num(u64::from(packet.mark), &[])),
            _ => Err(Tri::Maybe),
        };
    }
    if let Some(ct) = left.get("ct") {
        // A redirected connection's first packet: state new, not yet established.
        return match ct.get("key").and_then(Value::as_str) {
            Some("state") => Ok(Field::Num(8, &["new"])),
            _ => Err(Tri::Maybe),
        };
    }
    if let Some(payload) = left.get("payload") {
        let protocol = payload.get("protocol").and_then(Value::as_str);
        let field = payload.get("field").and_then(Value::as_str);
        return match (protocol, field) {
            (Some("tcp" | "th"), Some("dport")) => Ok(Field::Num(u64::from(packet.dport), &[])),
            (Some("ip"), Some("protocol")) if packet.family == Family::V4 => {
                Ok(Field::Num(6, &["tcp"]))
            }
            (Some("ip6"), Some("nexthdr")) if packet.family == Family::V6 => {
                Ok(Field::Num(6, &["tcp"]))
            }
            // Another field of the packet's own headers (saddr, flags, …): unknown.
            (Some("tcp" | "th"), _) => Err(Tri::Maybe),
            (Some("ip"), _) if packet.family == Family::V4 => Err(Tri::Maybe),
            (Some("ip6"), _) if packet.family == Family::V6 => Err(Tri::Maybe),
            // A header the packet does not have (udp, icmp, the other IP version).
            (Some("udp" | "icmp" | "icmpv6" | "sctp" | "udplite" | "ip" | "ip6"), _) => {
                Err(Tri::No)
            }
            _ => Err(Tri::Maybe),
        };
    }
    Err(Tri::Maybe)
}

/// Whether the right side (a value, a set, a range, a flag list) holds `field`; `None`
/// when unknowable (prefixes, named sets).
fn right_contains(right: &Value, field: &Field) -> Option<bool> {
    match right {
        Value::Array(items) => any_of(items, field),
        Value::Object(object) => {
            if let Some(items) = object.get("set").and_then(Value::as_array) {
                any_of(items, field)
            } else if let Some(range) = object.get("range") {
                in_range(range, field)
            } else {
                None
            }
        }
        _ => element_eq(right, field),
    }
}

fn any_of(items: &[Value], field: &Field) -> Option<bool> {
    let mut unknown = false;
    for item in items {
        match right_contains(item, field) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => unknown = true,
        }
    }
    (!unknown).then_some(false)
}

fn in_range(range: &Value, field: &Field) -> Option<bool> {
    let Field::Num(value, _) = field else {
        return None;
    };
    let bounds = range.as_array()?;
    let (low, high) = (bounds.first()?.as_u64()?, bounds.get(1)?.as_u64()?);
    Some((low..=high).contains(value))
}

fn element_eq(element: &Value, field: &Field) -> Option<bool> {
    match (element, field) {
        (Value::Number(n), Field::Num(value, _)) => Some(n.as_u64()? == *value),
        (Value::String(s), Field::Num(value, names)) => {
            Some(names.iter().any(|n| n == s) || s.parse::<u64>().ok() == Some(*value))
        }
        (Value::String(pattern), Field::Name(name)) => Some(match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => pattern == name,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list ruleset` of tests/tests/firewall.rs's firewall, plus an `ip` table of
    /// iptables-nft with a drop policy, a jump and a saddr match.
    const RULESET: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "inet", "name": "fw", "handle": 1}},
      {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "inet", "table": "fw", "name": "other", "handle": 2}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 3, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 4, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 6, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["icmp", "ipv6-icmp"]}}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, 443]}}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 9, "expr": [{"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 255]}, "right": 66}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "input", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"range": [9000, 9100]}}}, {"jump": {"target": "other"}}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "other", "handle": 11, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 9001}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "fw", "chain": "other", "handle": 12, "expr": [{"return": null}]}},
      {"table": {"family": "ip", "name": "filter", "handle": 2}},
      {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
      {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 7000}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}}
    ]}"#;

    fn judge(family: Family, dport: u16, mark: u32) -> Outcome {
        let ruleset = Ruleset::parse(&serde_json::from_str(RULESET).unwrap());
        ruleset.judge(&Packet {
            family,
            dport,
            mark,
            iif: "veth-s".into(),
        })
    }

    #[test]
    fn a_drop_policy_drops_the_new_port_unless_the_mark_or_the_port_is_accepted() {
        for family in [Family::V4, Family::V6] {
            assert_eq!(
                judge(family, 8080, 0),
                Outcome::Dropped {
                    chain: "inet fw input".into(),
                    how: "policy drop".into(),
                    maybe: false
                }
            );
            assert_eq!(judge(family, 8080, 0x42), Outcome::Accepted);
            assert_eq!(judge(family, 8080, 0x142), Outcome::Accepted, "mask 0xff");
            assert_eq!(judge(family, 8080, 0x43), judge(family, 8080, 0));
            assert_eq!(judge(family, 443, 0), Outcome::Accepted);
            assert_eq!(
                judge(family, 9001, 0),
                Outcome::Accepted,
                "through the jump"
            );
            assert_eq!(
                judge(family, 9002, 0).rank(),
                2,
                "returned, then the policy"
            );
        }
    }

    #[test]
    fn a_match_doctor_cannot_decide_turns_a_drop_into_a_maybe() {
        let ruleset = r#"{"nftables": [
          {"chain": {"family": "ip", "table": "t", "name": "in", "hook": "input", "prio": 0, "policy": "drop"}},
          {"rule": {"family": "ip", "table": "t", "chain": "in", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"accept": null}]}},
          {"rule": {"family": "ip", "table": "t", "chain": "in", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 8080}}, {"accept": null}]}}
        ]}"#;
        let ruleset = Ruleset::parse(&serde_json::from_str(ruleset).unwrap());
        let packet = |family| Packet {
            family,
            dport: 8080,
            mark: 0,
            iif: "eth0".into(),
        };
        assert_eq!(ruleset.judge(&packet(Family::V4)).rank(), 1);
        assert_eq!(
            ruleset.judge(&packet(Family::V6)),
            Outcome::Accepted,
            "ip table: IPv4 only"
        );
        assert_eq!(
            Ruleset::parse(&Value::Null).judge(&packet(Family::V4)),
            Outcome::Accepted
        );
    }
}
