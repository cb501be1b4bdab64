//! Check 3, `conntrack`: the established-flow capacity (`--conntrack-size`) against the TCP
//! connections this network namespace holds now. The established table never evicts: once
//! full, new connections are not redirected, so a capacity below today's connection count
//! refuses redirects as soon as that many are redirected.

use super::{
    proc_net::{TcpSocket, TCP_LISTEN},
    Check, Source, Status,
};

const NAME: &str = "conntrack";

/// Fill (connections ÷ capacity) from which the check warns, in percent: the loader warns
/// at 80 % too.
const WARN_PERCENT: u64 = 80;

/// TIME_WAIT and CLOSE sockets hold no established flow.
const TCP_TIME_WAIT: u8 = 0x06;
const TCP_CLOSE: u8 = 0x07;

/// One finding: `capacity` (and where it came from) against the open connections.
pub fn check((capacity, source): (u32, Source), sockets: &[TcpSocket]) -> Check {
    let connections = sockets
        .iter()
        .filter(|s| ![TCP_LISTEN, TCP_TIME_WAIT, TCP_CLOSE].contains(&s.state))
        .count() as u64;
    let from = match source {
        Source::Flag => "--conntrack-size",
        Source::Instance => "the running instance's --conntrack-size",
        Source::Default => "the default --conntrack-size",
    };
    let capacity = u64::from(capacity);
    let fix = format!(
        "raise --conntrack-size above {} (a running instance keeps its size: `redirector \
         detach` or a restart without --persist applies a new one)",
        connections * 2
    );
    let summary = format!(
        "{connections} TCP connections open in this network namespace, {from} is {capacity}"
    );
    if connections > capacity {
        Check::new(
            NAME,
            Status::Fail,
            format!(
                "{summary}: the established table would be full, and further connections not \
                 redirected"
            ),
        )
        .with_fix(fix)
    } else if connections * 100 >= capacity * WARN_PERCENT {
        Check::new(
            NAME,
            Status::Warn,
            format!("{summary}: at least {WARN_PERCENT} % of it"),
        )
        .with_fix(fix)
    } else {
        Check::new(NAME, Status::Ok, summary)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn sockets(established: usize) -> Vec<TcpSocket> {
        let socket = |state| TcpSocket {
            local_addr: IpAddr::from([10, 0, 0, 1]),
            local_port: 8080,
            state,
        };
        let mut all = vec![socket(TCP_LISTEN), socket(TCP_TIME_WAIT)];
        all.extend(std::iter::repeat_n(socket(1), established));
        all
    }

    #[test]
    fn counts_open_connections_against_the_capacity() {
        assert_eq!(check((2, Source::Flag), &sockets(3)).status, Status::Fail);
        assert_eq!(check((3, Source::Flag), &sockets(3)).status, Status::Warn);
        let ok = check((1_048_576, Source::Default), &sockets(3));
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.message.starts_with("3 TCP connections"), "{ok}");
    }
}
