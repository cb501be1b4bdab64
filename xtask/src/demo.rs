//! `cargo xtask demo`: build, then show the redirector at work: a client namespace sends
//! WebSocket echoes to ports 80 and 443 (IPv4 and IPv6) of a server namespace whose echo
//! server listens only on 8080 and 8443; the redirector on the server's veth bridges the gap.
//! Then local clients of the server itself (127.0.0.1, ::1, its own address) on port 80,
//! redirected at connect time by the cgroup programs, attached to a cgroup of the demo's
//! own (never the machine's root cgroup).
//! Everything it starts is torn down by one RAII guard, also on error, panic or Ctrl-C.

use std::path::Path;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::Signal;

use crate::build::{self, Binaries, Profile};
use crate::cli::DemoArgs;
use testkit::cgroup::Cgroup;
use testkit::cmd::{describe_output, heading};
use testkit::interrupt;
use testkit::netns::{Link, Side, Topology};
use testkit::process::Proc;

/// The demo's namespaces.
///
/// ```text
///  rdr-demo-cli                                      rdr-demo-srv
///  rdrd-c 10.200.0.1/24 fd00:200::1/64  <== veth ==>  rdrd-s 10.200.0.2/24 fd00:200::2/64
/// ```
const DEMO: Link = Link {
    client: Side {
        netns: "rdr-demo-cli",
        veth: "rdrd-c",
        ipv4: "10.200.0.1",
        ipv6: "fd00:200::1",
    },
    server: Side {
        netns: "rdr-demo-srv",
        veth: "rdrd-s",
        ipv4: "10.200.0.2",
        ipv6: "fd00:200::2",
    },
};
const CLIENT: Side = DEMO.client;
const SERVER: Side = DEMO.server;

/// The demo's cgroup, under the cgroup v2 root: local clients run in it, the loader's
/// cgroup programs are attached to it.
const DEMO_CGROUP: &str = "redirector-demo";

/// Text sent by every client; its echo must come back as `echo: <MESSAGE>`.
const MESSAGE: &str = "hello server";
/// ws-echo prints one `listening ...` line per listener: ws and wss, IPv4 and IPv6.
const ECHO_LISTENERS: usize = 4;
const ECHO_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The loader prints a line starting with this once its programs are attached.
const LOADER_READY_PREFIX: &str = "redirector ready";
const LOADER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the loader gets to print its final counters and exit after SIGINT.
const LOADER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `--hold` checks on Ctrl-C and on its processes.
const HOLD_POLL: Duration = Duration::from_millis(200);

/// Everything the demo set up; dropping it tears it down in order: loader, echo server, then
/// the namespaces (fields drop after `Drop::drop`).
struct Demo {
    topology: Topology,
    cgroup: Option<Cgroup>,
    echo_server: Option<Proc>,
    loader: Option<Proc>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        heading("teardown");
        drop(self.loader.take());
        drop(self.echo_server.take());
        drop(self.cgroup.take());
    }
}

/// One echo through the redirector.
struct Probe {
    url: String,
    tls: bool,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    interrupt::install("demo", [CLIENT.netns, SERVER.netns])?;
    let binaries = build::run(Profile::Release)?;
    interrupt::check()?;

    heading(format!(
        "topology: {} <-> {} (veth {} / {})",
        CLIENT.netns, SERVER.netns, CLIENT.veth, SERVER.veth
    ));
    let mut demo = Demo {
        topology: Topology::create(&DEMO)?,
        cgroup: None,
        echo_server: None,
        loader: None,
    };
    let cgroup = demo.cgroup.insert(Cgroup::create(DEMO_CGROUP)?);
    println!("  cgroup {} (local clients)", cgroup.path().display());

    heading(format!(
        "ws-echo in {}: ws on 8080, wss on 8443",
        SERVER.netns
    ));
    demo.echo_server = Some(start_echo_server(&demo.topology, &binaries.ws_echo)?);

    heading(format!(
        "redirector on {}: 80 -> 8080, 443 -> 8443, the packet rewrite (--mode tc)",
        SERVER.veth
    ));
    let cgroup = demo.cgroup.as_ref().expect("created above");
    demo.loader = Some(start_loader(
        &demo.topology,
        &binaries.redirector,
        &["--mode", "tc", "--local-cgroup", path_str(cgroup.path())?],
    )?);

    heading(format!(
        "echoes from {} to ports 80 and 443 of the server",
        CLIENT.netns
    ));
    let mut failures = send_echoes(&demo.topology, &binaries.ws_client);
    interrupt::check()?;
    heading(format!(
        "local clients in {} (cgroup {DEMO_CGROUP}) to its own port 80",
        SERVER.netns
    ));
    failures.extend(send_local_echoes(&binaries.ws_client, cgroup));
    interrupt::check()?;
    show_sockets(&demo.topology, &binaries.ws_client, REWRITTEN_SERVER_VIEW);
    heading("redirect counters");
    show_stats(&demo.topology, &binaries.redirector);
    if let Some(mut loader) = demo.loader.take() {
        stop_loader(&mut loader)?;
    }
    interrupt::check()?;

    heading(format!(
        "redirector on {}, --mode auto: the servers listen in its namespace, so it steers \
         sockets",
        SERVER.netns
    ));
    demo.loader = Some(start_loader(
        &demo.topology,
        &binaries.redirector,
        &["--mode", "auto"],
    )?);
    heading(format!(
        "echoes from {} and from the server itself, steered at socket lookup",
        CLIENT.netns
    ));
    failures.extend(send_echoes(&demo.topology, &binaries.ws_client));
    failures.extend(send_local_echoes(&binaries.ws_client, cgroup));
    interrupt::check()?;
    show_sockets(&demo.topology, &binaries.ws_client, STEERED_SERVER_VIEW);

    if args.hold {
        hold(&mut demo, &binaries)?;
    }

    heading("steering counters");
    show_stats(&demo.topology, &binaries.redirector);
    if let Some(loader) = demo.loader.as_mut() {
        stop_loader(loader)?;
    }
    drop(demo);

    let echoes = 2 * (probes().len() + local_probes().len());
    if !failures.is_empty() {
        bail!(
            "{} of {echoes} echoes failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    heading(format!("demo passed: all {echoes} echoes came back"));
    Ok(())
}

/// The server's side of a rewritten connection: its socket is on the TO port …
const REWRITTEN_SERVER_VIEW: &str = "( sport = :8080 or sport = :8443 )";
/// … and of a steered one: on the port the client dialled.
const STEERED_SERVER_VIEW: &str = "( sport = :80 or sport = :443 )";

/// `path` as UTF-8, for a command line.
fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn start_echo_server(topology: &Topology, ws_echo: &Path) -> Result<Proc> {
    let command = topology
        .server
        .exec(ws_echo)
        .args(["--listen", "0.0.0.0:8080", "--listen", "[::]:8080"])
        .args(["--tls-listen", "0.0.0.0:8443", "--tls-listen", "[::]:8443"])
        .args(["--cert-name", SERVER.ipv4, "--cert-name", SERVER.ipv6]);
    let mut echo_server = Proc::background("ws-echo", command)?;
    let mut listening = 0;
    echo_server.wait_for_stdout(
        &format!("{ECHO_LISTENERS} `listening ...` lines"),
        ECHO_READY_TIMEOUT,
        |line| {
            if line.starts_with("listening") {
                listening += 1;
            }
            listening == ECHO_LISTENERS
        },
    )?;
    Ok(echo_server)
}

/// Starts `redirector run ARGS` on the server's veth, in the server's network namespace.
///
/// Through nsenter rather than `ip netns exec`: the latter mounts a private /sys, which hides
/// the bpffs at /sys/fs/bpf (so pins made by `run` would be invisible to `stats`) and the
/// cgroup mount.
fn start_loader(topology: &Topology, redirector: &Path, args: &[&str]) -> Result<Proc> {
    let command = topology
        .server
        .enter_net_only(redirector)
        .args(["run", "--iface", SERVER.veth])
        .args(args);
    let mut loader = Proc::background("redirector", command)?;
    loader.wait_for_stdout(
        &format!("a `{LOADER_READY_PREFIX}` line"),
        LOADER_READY_TIMEOUT,
        |line| line.starts_with(LOADER_READY_PREFIX),
    )?;
    Ok(loader)
}

/// ws and wss, to the IPv4 and the IPv6 address of the server, on the ports that nothing
/// listens on: only the redirector makes them work.
fn probes() -> Vec<Probe> {
    let hosts = [SERVER.ipv4.to_owned(), format!("[{}]", SERVER.ipv6)];
    hosts
        .iter()
        .flat_map(|host| {
            [
                Probe {
                    url: format!("ws://{host}:80/"),
                    tls: false,
                },
                Probe {
                    url: format!("wss://{host}:443/"),
                    tls: true,
                },
            ]
        })
        .collect()
}

/// ws to the server's own port 80 from the server itself: loopback (IPv4, IPv6) and its
/// veth address. These never cross the veth, only the cgroup connect programs see them.
fn local_probes() -> Vec<Probe> {
    ["127.0.0.1", "[::1]", SERVER.ipv4]
        .iter()
        .map(|host| Probe {
            url: format!("ws://{host}:80/"),
            tls: false,
        })
        .collect()
}

/// Runs every probe from the client namespace; returns a description of each failure.
fn send_echoes(topology: &Topology, ws_client: &Path) -> Vec<String> {
    run_probes(probes(), |_| topology.client.exec(ws_client))
}

/// Runs the local probes in the server namespace, each client started inside the demo's
/// cgroup (the cgroup first: `nsenter --net=` keeps the host's /sys, where it lives).
fn send_local_echoes(ws_client: &Path, cgroup: &Cgroup) -> Vec<String> {
    run_probes(local_probes(), |_| {
        cgroup
            .cmd("nsenter")
            .arg(format!("--net=/run/netns/{}", SERVER.netns))
            .arg("--")
            .arg(ws_client)
    })
}

/// Runs each probe with the ws-client command `client` gives, showing its output;
/// returns a description of each failure.
fn run_probes(probes: Vec<Probe>, client: impl Fn(&Probe) -> testkit::cmd::Cmd) -> Vec<String> {
    let expected = format!("echo: {MESSAGE}");
    let mut failures = Vec::new();
    for probe in probes {
        if interrupt::requested() {
            failures.push(format!("{}: not tried (Ctrl-C)", probe.url));
            continue;
        }
        let mut command = client(&probe).args(["--url", &probe.url]);
        if probe.tls {
            // ws-echo's certificate is self-signed.
            command = command.arg("--insecure");
        }
        let command = command.args(["--message", MESSAGE]);
        println!("$ {command}");
        let output = match command.output_timeout(CLIENT_TIMEOUT) {
            Ok(output) => output,
            Err(err) => {
                println!("  FAILED: {err:#}");
                failures.push(format!("{}: {err:#}", probe.url));
                continue;
            }
        };
        for line in output.stdout.lines() {
            println!("  {line}");
        }
        let echoed = output.stdout.lines().any(|line| line.trim() == expected);
        if output.success() && echoed {
            println!("  ok: {}", probe.url);
        } else {
            let reason = if output.success() {
                format!("exited 0 without printing `{expected}`")
            } else {
                output.describe_end(CLIENT_TIMEOUT)
            };
            println!(
                "  FAILED: {} ({reason}){}",
                probe.url,
                describe_output("", &output.stderr)
            );
            failures.push(format!("{}: {reason}", probe.url));
        }
    }
    failures
}

/// Shows both views of the same connection, held open meanwhile: the client talks to 80,
/// the server answers on `server_view` (8080 rewritten, 80 steered). Informational only.
fn show_sockets(topology: &Topology, ws_client: &Path, server_view: &str) {
    heading("the same connections seen from both ends");
    let held = match hold_session(topology, ws_client) {
        Ok(session) => Some(session),
        Err(err) => {
            println!("  (no connection held open: {err:#})");
            None
        }
    };
    let views = [
        (&topology.client, "( dport = :80 or dport = :443 )"),
        (&topology.server, server_view),
    ];
    for (netns, filter) in views {
        let command = netns
            .exec("ss")
            .args(["-tn", "state", "established", filter]);
        println!("$ {command}");
        match command.run_captured() {
            Ok(table) => table.lines().for_each(|line| println!("  {line}")),
            Err(err) => println!("  (not shown: {err:#})"),
        }
    }
    if let Some(mut session) = held {
        // End of input: the client sends its close frame and exits.
        session.close_stdin();
        let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
        while session.ensure_running().is_ok() && std::time::Instant::now() < deadline {
            thread::sleep(HOLD_POLL);
        }
        match session.stop(Signal::SIGTERM, CLIENT_TIMEOUT) {
            Ok(status) if status.success() => println!("  held connection closed cleanly"),
            Ok(status) => println!("  warning: the held connection's client exited with {status}"),
            Err(err) => println!("  warning: closing the held connection: {err:#}"),
        }
    }
}

/// An interactive WebSocket session to the server's port 80, open until the returned
/// process's stdin is closed (or it is dropped).
fn hold_session(topology: &Topology, ws_client: &Path) -> Result<Proc> {
    let url = format!("ws://{}:80/", SERVER.ipv4);
    let mut command = topology.client.cmd(ws_client);
    command.args(["--url", &url, "--interactive"]);
    println!(
        "$ ip netns exec {} {} --url {url} --interactive   (held open)",
        CLIENT.netns,
        ws_client.display()
    );
    let mut session = Proc::spawn("ws-client (held open)", command, true);
    session.wait_for_stdout("`connected`", CLIENT_TIMEOUT, |line| {
        line.starts_with("connected")
    })?;
    Ok(session)
}

/// `--hold`: keeps everything up until Ctrl-C, printing how to try it by hand.
fn hold(demo: &mut Demo, binaries: &Binaries) -> Result<()> {
    heading("holding: try it by hand from another terminal");
    let client = &demo.topology.client;
    let examples = [
        client
            .exec(&binaries.ws_client)
            .arg("--url")
            .arg(format!("ws://{}:80/", SERVER.ipv4))
            .arg("--interactive"),
        client
            .exec(&binaries.ws_client)
            .arg("--url")
            .arg(format!("wss://[{}]:443/", SERVER.ipv6))
            .args(["--insecure", "--interactive"]),
        demo.topology
            .server
            .enter_net_only(&binaries.redirector)
            .arg("stats"),
        demo.topology.server.exec("ss").args(["-tn"]),
    ];
    for example in examples {
        println!("  {example}");
    }
    println!("Press Ctrl-C here to stop the demo and tear everything down.");
    while !interrupt::take() {
        for process in [&mut demo.echo_server, &mut demo.loader]
            .into_iter()
            .flatten()
        {
            process.ensure_running()?;
        }
        thread::sleep(HOLD_POLL);
    }
    Ok(())
}

/// Runs `redirector stats` if the loader has that verb; informational only.
fn show_stats(topology: &Topology, redirector: &Path) {
    let command = topology.server.enter_net_only(redirector).arg("stats");
    println!("$ {command}");
    match command.output_timeout(STATS_TIMEOUT) {
        Ok(output) if output.success() => {
            output.stdout.lines().for_each(|line| println!("  {line}"));
        }
        Ok(output) if output.stderr.contains("unrecognized subcommand") => {
            println!("  (this redirector has no `stats` verb; the final counters follow below)");
        }
        Ok(output) => println!(
            "  (no counters from `redirector stats`: {}; the final counters follow below){}",
            output.describe_end(STATS_TIMEOUT),
            describe_output("", &output.stderr)
        ),
        Err(err) => println!("  (`redirector stats` did not run: {err:#})"),
    }
}

/// Sends SIGINT to the loader, which prints its final counters (echoed with the
/// `[redirector]` prefix) and detaches; SIGKILL if it takes too long.
fn stop_loader(loader: &mut Proc) -> Result<()> {
    println!(
        "stopping the {} with SIGINT; it prints its final counters:",
        loader.label()
    );
    let status = loader.stop(Signal::SIGINT, LOADER_EXIT_TIMEOUT)?;
    if status.success() {
        println!("  {} exited cleanly", loader.label());
    } else {
        println!("  warning: {} exited with {status}", loader.label());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_probes_cover_loopback_and_the_servers_own_address() {
        let urls: Vec<String> = local_probes().into_iter().map(|probe| probe.url).collect();
        assert_eq!(
            urls,
            [
                "ws://127.0.0.1:80/",
                "ws://[::1]:80/",
                "ws://10.200.0.2:80/"
            ]
        );
    }

    #[test]
    fn probes_cover_both_schemes_and_both_families() {
        let urls: Vec<String> = probes().into_iter().map(|probe| probe.url).collect();
        assert_eq!(
            urls,
            [
                "ws://10.200.0.2:80/",
                "wss://10.200.0.2:443/",
                "ws://[fd00:200::2]:80/",
                "wss://[fd00:200::2]:443/",
            ]
        );
    }
}
