//! The heal case: a client's packet of no flow to a rule's FROM port whose connection the
//! kernel holds on the TO port. Timed in single mode, one heal per run, against real
//! sockets: a namespace of its own (made and removed here) with a listener on 8080 and
//! one connection per run; the program's socket lookups see it because the timing
//! thread entered it (a test run's packet arrives on that namespace's loopback).

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
};

use anyhow::{ensure, Context as _, Result};
use redirector::dataplane::Dataplane;
use redirector_common::stats::Counter;
use redirector_tests::packets::{flags::*, Frame};
use testkit::netns::Netns;

use crate::{
    cases::{medians, Path},
    flows::{self, addr16},
    measure::{self, Hook, Method, Probe, Prog, Settings},
    report::CaseRow,
};

/// The namespace the heal case makes for its sockets.
const NETNS: &str = "rdr-kbench-heal";

/// Times the ingress heal of IPv4 and IPv6 flows; one row per family.
pub fn run(dp: &mut Dataplane, settings: &Settings) -> Result<Vec<CaseRow>> {
    // Quiet (a JSON report goes to stdout); replaces a leftover of a crashed run.
    let ns = Netns::new(NETNS);
    let path = format!("/run/netns/{}", ns.name());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on an open namespace fd; it changes only this thread's
                // network namespace, a thread that ends with the case.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
                [("v4", "127.0.0.1"), ("v6", "::1")]
                    .into_iter()
                    .map(|(family, loopback)| family_case(dp, settings, family, loopback))
                    .collect()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One family: `single_calls` connections to the TO port, healed once per round.
fn family_case(
    dp: &mut Dataplane,
    settings: &Settings,
    family: &str,
    loopback: &str,
) -> Result<CaseRow> {
    let name = format!("heal_{family}");
    eprintln!("  xdp {name}");
    let to: SocketAddr = SocketAddr::new(loopback.parse()?, 8080);
    let listener = TcpListener::bind(to).with_context(|| format!("listening on {to}"))?;
    let mut held = Vec::with_capacity(2 * settings.single_calls);
    let mut ports = Vec::with_capacity(settings.single_calls);
    for _ in 0..settings.single_calls {
        let client = TcpStream::connect(to).context("connecting a heal case's client")?;
        ports.push(client.local_addr()?.port());
        held.push(client);
        held.push(listener.accept()?.0);
    }
    let keys: Vec<_> = ports
        .iter()
        .map(|&port| flows::key(addr16(loopback), addr16(loopback), port))
        .collect();
    let (mut prog_ns, mut pass_ns) = (Vec::new(), Vec::new());
    for _ in 0..settings.rounds {
        let probes: Vec<Probe> = ports
            .iter()
            .map(|&port| {
                let ack = Frame::tcp(loopback, loopback, port, 80, ACK);
                Probe {
                    input: ack.build(),
                    want: ack.with_ports(port, 8080).build(),
                }
            })
            .collect();
        let paired =
            measure::pair_single(dp, Prog::XdpIngress, &probes, Counter::FlowHealedIngress)
                .with_context(|| format!("timing xdp {name}"))?;
        prog_ns.push(paired.prog_ns);
        pass_ns.push(paired.pass_ns);
        let (removed, result) = dp.remove_flows(&keys);
        result.context("removing a round's healed flows")?;
        ensure!(
            removed == keys.len(),
            "case {name}: {removed} of a round's {} heals were in the tables",
            keys.len()
        );
    }
    Ok(CaseRow::new(
        Hook::Xdp,
        &name,
        Path::Heal,
        Method::Single,
        medians(&prog_ns, &pass_ns),
    ))
}
