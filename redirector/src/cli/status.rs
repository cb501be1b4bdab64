//! `redirector status`: interfaces, hook mode, rules, conntrack fill (and the sniffing
//! proxy's connection limit, if the loader runs one).

use redirector::{
    dataplane::{link_state::LinkState, steer},
    instance::{control, view},
};

use super::Target;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Print JSON (field names are stable; see docs/CONTROL.md).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Prints the status of the instance of this network namespace.
pub fn run(args: ReadArgs) -> anyhow::Result<()> {
    let instance = control::open(args.target.iface.as_deref())?;
    let status = view::status(&instance)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    match (status.loader_running, status.persist) {
        (true, false) => println!(
            "redirector {} running (pid {}), mode {}",
            status.version, status.pid, status.mode
        ),
        (true, true) => println!(
            "redirector {} running (pid {}), mode {}, persisted (stays attached when it exits)",
            status.version, status.pid, status.mode
        ),
        (false, _) => println!(
            "redirector {} persisted, mode {}: loader (pid {}) exited, no reaper (`redirector detach` removes it)",
            status.version, status.mode, status.pid
        ),
    }
    for iface in &status.interfaces {
        let link = match iface.link {
            Some(LinkState::Attached) => "attached",
            Some(LinkState::Severed) => {
                "severed (the interface exists, the programs are not on it: see `redirector doctor`)"
            }
            Some(LinkState::Missing) => {
                "missing (no interface of that name: attached again when it appears)"
            }
            None => "unknown (the kernel's links could not be read)",
        };
        if iface.ingress_hook == steer::HOOK_NAME {
            println!(
                "interface {}: names the instance; socket steering on the network namespace, {link}",
                iface.name
            );
        } else {
            println!(
                "interface {}: ingress {}, egress tc, {link}",
                iface.name, iface.ingress_hook
            );
        }
    }
    for rule in &status.rules {
        let state = if rule.enabled { "enabled" } else { "disabled" };
        println!(
            "rule {}->{}: {state} (slot {})",
            rule.from_port, rule.to_port, rule.slot
        );
    }
    match &status.steering {
        Some(steering) => print_steering(steering),
        None => print_conntrack(&status.conntrack),
    }
    match (status.sources.filtered, status.sources.allow.as_slice()) {
        (false, _) => println!("sources: all"),
        (true, []) => println!("sources: none (the allow list is empty)"),
        (true, allow) => println!("sources: {}", allow.join(" ")),
    }
    if let Some(t) = status.timeouts {
        println!(
            "timeouts: handshake {}s established {}s fin-wait {}s closing {}s",
            t.handshake_secs, t.established_secs, t.fin_wait_secs, t.closing_secs
        );
    }
    println!("metrics: {}", status.metrics.as_deref().unwrap_or("off"));
    match (&status.local_cgroup, &status.steering) {
        (_, Some(_)) => {
            println!("local clients: steered (their connects go through socket lookup)")
        }
        (Some(cgroup), None) => println!("local clients: redirected in cgroup {cgroup}"),
        (None, None) => println!("local clients: not redirected"),
    }
    if let Some(sniff) = &status.sniff {
        match sniff.max_conns {
            Some(max_conns) => println!("sniff: max-conns {max_conns}"),
            None => println!("sniff: running"),
        }
    }
    Ok(())
}

/// The flow tables of the packet rewrite.
fn print_conntrack(conntrack: &view::ConntrackJson) {
    println!(
        "conntrack {}/{} flows tracked, {} evicted",
        conntrack.tracked, conntrack.size, conntrack.evicted
    );
    let tables = &conntrack.tables;
    println!(
        "conntrack established {}/{}, half-open {}/{}, {} refused (table full), kernel memory {:.1} MiB",
        tables.established,
        conntrack.size,
        tables.half_open,
        tables.half_open_size,
        tables.refused_full,
        (tables.established_memory_bytes + tables.half_open_memory_bytes) as f64
            / (1024.0 * 1024.0)
    );
}

/// Socket steering: no flow table; the listening sockets connections are handed to.
fn print_steering(steering: &view::SteeringJson) {
    println!("flows: none tracked (socket steering: `redirector flows` lists the connections from the socket table)");
    let listeners: Vec<String> = steering
        .listeners
        .iter()
        .map(|l| format!("{} ({})", l.addr, l.family))
        .collect();
    println!(
        "steering to: {}",
        if listeners.is_empty() {
            "nothing".to_string()
        } else {
            listeners.join(", ")
        }
    );
    for port in &steering.ports_without_listener {
        println!("steering: no listener on TO port {port}: new connections to it are refused");
    }
}
