//! `kernel-bench --attach-pass IFACE`: the empty baseline programs attached the way
//! `redirector run` attaches the real ones, until SIGINT/SIGTERM — so `cargo xtask bench`
//! can measure what running *any* program at those hooks costs on an interface (for a veth,
//! XDP mode itself) apart from what redirector's programs add.

use anyhow::{Context as _, Result};
use aya::programs::{tc::TcAttachType, XdpMode};
use redirector::dataplane::Dataplane;
use redirector_common::maps::DEFAULT_CONNTRACK_SIZE;
use tokio::signal::unix::{signal, SignalKind};

/// Where the empty ingress program goes (egress is always TC, as for `redirector run`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Hook {
    /// Native XDP.
    Xdp,
    /// Generic (skb) XDP.
    XdpGeneric,
    /// TC ingress.
    Tc,
}

/// Attaches the baselines to `iface` with `hook`, prints `pass-through attached`, and
/// returns after SIGINT or SIGTERM (the links are fd-based: they go with the process).
pub fn run(iface: &str, hook: Hook) -> Result<()> {
    // Not the machine-wide test lock: the benchmark that starts us holds it.
    let mut dp = Dataplane::load(DEFAULT_CONNTRACK_SIZE).context("loading (are you root?)")?;
    dp.load_baselines()?;
    match hook {
        Hook::Xdp | Hook::XdpGeneric => {
            let mode = if matches!(hook, Hook::Xdp) {
                XdpMode::Driver
            } else {
                XdpMode::Skb
            };
            dp.baseline_xdp()?
                .attach(iface, mode)
                .with_context(|| format!("attaching the XDP baseline to {iface}"))?;
        }
        Hook::Tc => {
            dp.baseline_tc()?
                .attach(iface, TcAttachType::Ingress)
                .with_context(|| format!("attaching the TC baseline to {iface} ingress"))?;
        }
    }
    dp.baseline_tc()?
        .attach(iface, TcAttachType::Egress)
        .with_context(|| format!("attaching the TC baseline to {iface} egress"))?;
    println!("pass-through attached: {iface} ({hook:?})");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        anyhow::Ok(())
    })?;
    drop(dp);
    Ok(())
}
