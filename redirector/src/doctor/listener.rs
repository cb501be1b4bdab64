//! Check 1, `listener`: something must listen on every rule's TO port in this network
//! namespace (the loader's), on an address redirected packets can reach: a redirected SYN
//! to a closed port is answered with a reset, so every redirected connection would fail.

use std::net::IpAddr;

use super::{proc_net::TcpSocket, Check, Status};
use crate::rules::RedirectRule;

const NAME: &str = "listener";

/// One finding per rule.
pub fn check(rules: &[RedirectRule], sockets: &[TcpSocket]) -> Vec<Check> {
    rules.iter().map(|rule| check_rule(rule, sockets)).collect()
}

fn check_rule(rule: &RedirectRule, sockets: &[TcpSocket]) -> Check {
    let to = rule.to_port;
    let arrow = format!("rule {}→{to}", rule.from_port);
    let listeners: Vec<IpAddr> = sockets
        .iter()
        .filter(|s| s.is_listener() && s.local_port == to)
        .map(|s| s.local_addr)
        .collect();
    if listeners.is_empty() {
        return Check::new(
            NAME,
            Status::Fail,
            format!(
                "nothing listens on {to} ({arrow}): every redirected connection would be reset"
            ),
        )
        .with_fix(format!(
            "start the server on {to}, or `redirector disable {}`",
            rule.from_port
        ));
    }
    // A redirected packet keeps its destination address (an interface's): a listener
    // bound only to loopback never sees it.
    if listeners.iter().all(IpAddr::is_loopback) {
        let addrs: Vec<String> = listeners.iter().map(IpAddr::to_string).collect();
        return Check::new(
            NAME,
            Status::Fail,
            format!(
                "{to} listens only on loopback ({}) ({arrow}): redirected connections keep the \
                 interface address they were sent to and would be reset",
                addrs.join(", ")
            ),
        )
        .with_fix(format!(
            "bind the server on {to} to 0.0.0.0 / [::] (or the interface's address)"
        ));
    }
    Check::new(NAME, Status::Ok, format!("{to} has a listener ({arrow})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(addr: [u8; 4], port: u16, state: u8) -> TcpSocket {
        TcpSocket {
            local_addr: IpAddr::from(addr),
            local_port: port,
            state,
        }
    }

    #[test]
    fn a_rule_needs_a_listener_reachable_from_the_interface() {
        let rule: RedirectRule = "80:8080".parse().unwrap();
        let none = check(&[rule], &[socket([0, 0, 0, 0], 8080, 1)]);
        assert_eq!(none[0].status, Status::Fail);
        assert!(
            none[0].message.contains("nothing listens on 8080"),
            "{}",
            none[0]
        );
        assert!(none[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("redirector disable 80"));
        let loopback = check(&[rule], &[socket([127, 0, 0, 1], 8080, 0x0a)]);
        assert_eq!(loopback[0].status, Status::Fail);
        assert!(loopback[0].message.contains("only on loopback"));
        let any = check(&[rule], &[socket([0, 0, 0, 0], 8080, 0x0a)]);
        assert_eq!(any[0].status, Status::Ok);
        assert_eq!(any[0].message, "8080 has a listener (rule 80→8080)");
    }
}
