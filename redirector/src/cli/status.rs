//! `redirector status`: interfaces, hook mode, rules, conntrack fill (and the sniffing
//! proxy's connection limit, if the loader runs one).

use redirector::{
    dataplane::link_state::LinkState,
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
        println!(
            "interface {}: ingress {}, egress tc, {link}",
            iface.name, iface.ingress_hook
        );
    }
    for rule in &status.rules {
        let state = if rule.enabled { "enabled" } else { "disabled" };
        println!(
            "rule {}->{}: {state} (slot {})",
            rule.from_port, rule.to_port, rule.slot
        );
    }
    println!(
        "conntrack {}/{} flows tracked, {} evicted",
        status.conntrack.tracked, status.conntrack.size, status.conntrack.evicted
    );
    let tables = &status.conntrack.tables;
    println!(
        "conntrack established {}/{}, half-open {}/{}, {} refused (table full), kernel memory {:.1} MiB",
        tables.established,
        status.conntrack.size,
        tables.half_open,
        tables.half_open_size,
        tables.refused_full,
        (tables.established_memory_bytes + tables.half_open_memory_bytes) as f64
            / (1024.0 * 1024.0)
    );
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
    match &status.local_cgroup {
        Some(cgroup) => println!("local clients: redirected in cgroup {cgroup}"),
        None => println!("local clients: not redirected"),
    }
    if let Some(sniff) = &status.sniff {
        match sniff.max_conns {
            Some(max_conns) => println!("sniff: max-conns {max_conns}"),
            None => println!("sniff: running"),
        }
    }
    Ok(())
}
