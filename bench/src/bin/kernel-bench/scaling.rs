//! The hit path against the size of the conntrack table: for each size a fresh dataplane
//! whose established capacity has 25 % headroom, filled from user space with established
//! flows, then the XDP hit path timed two ways (one row per size, see
//! `report::ScaleRow`), and the established table's memory before and after the fill.
//!
//! * **repeat**: the fixed-point flow (inserted first, i.e. the oldest entry, and checked
//!   to be still there after the fill) with `repeat`: one hot key, so its bucket and entry
//!   stay in cache and this mostly shows the cost of the lookup's instructions.
//! * **spread** (single mode): one run per call, each on a different flow drawn at random from the
//!   filled table, each a real 80→8080 rewrite checked byte for byte. Between two runs
//!   the syscall touches other memory, so a large table's bucket and entry are usually no
//!   longer cached: closer to real traffic spread over many flows. The kernel's clock
//!   reads are included in these times (and in the baseline's), and so is one store of
//!   `last_seen_ns` per run (the filled entries are more than a second old), which a flow
//!   with many packets per second only pays once a second.

use std::{net::IpAddr, time::Instant};

use anyhow::{Context as _, Result};
use redirector::{
    dataplane::Dataplane,
    reaper::{self, Timeouts},
    rules::RedirectRule,
};
use redirector_common::stats::Counter;
use redirector_tests::packets::{flags::*, Frame};

use crate::{
    cases,
    flows::{self, fill_client},
    measure::{self, Paired, Probe, Prog, Settings},
    memory,
    report::{MemoryRow, ScaleRow},
};

const CLIENT: &str = "10.63.0.1";
const SERVER: &str = "10.1.0.2";
/// Client port of the fixed-point flow.
const FIXED_PORT: u16 = 40002;
/// Payload of the probe segments.
const PAYLOAD: &[u8] = &[0x5a; 64];

/// Measures every size in `sizes` (tracked flows); returns the rows and each table's memory.
pub fn run(
    sizes: &[u32],
    rules: &[RedirectRule],
    settings: &Settings,
) -> Result<(Vec<ScaleRow>, Vec<MemoryRow>)> {
    let (mut rows, mut memory) = (Vec::new(), Vec::new());
    for &flows in sizes {
        let max_entries = flows + flows / 4;
        let mut dp = Dataplane::load(max_entries)
            .with_context(|| format!("loading with --conntrack-size {max_entries}"))?;
        dp.set_rules(rules)?;
        dp.load_baselines()?;
        let empty = memory::established(&dp)?;
        let started = Instant::now();
        flows::insert_fixed_point(&mut dp, CLIENT, SERVER, FIXED_PORT)?;
        flows::fill(&mut dp, SERVER, flows - 1)?;
        eprintln!(
            "  {flows} flows (max_entries {max_entries}) filled in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let full = memory::established(&dp)?;
        memory.push(memory::on_demand_row("scaling", empty, full, flows));
        let hot = repeat(&mut dp, flows, settings)?;
        let probes = spread_probes(flows - 1, settings.single_calls);
        let spread = spread(&mut dp, flows, &probes, settings)?;
        let reaper_ms = reaper_tick(&mut dp, flows)?;
        rows.push(ScaleRow::new(
            flows,
            max_entries,
            hot,
            probes.len(),
            spread,
            reaper_ms,
        ));
    }
    set_ratios(&mut rows);
    Ok((rows, memory))
}

/// Median wall time of [`REAPER_TICKS`] passes of the loader's reaper over the filled
/// tables, in milliseconds. The fill's server address is none of this namespace's, so the
/// kernel has no answer for those flows and their timeouts (days) keep them: every pass
/// reads both tables in batches and judges every entry, and removes none (checked).
fn reaper_tick(dp: &mut Dataplane, flows: u32) -> Result<f64> {
    let timeouts = Timeouts::default();
    let mut times: Vec<f64> = (0..REAPER_TICKS)
        .map(|_| {
            let started = Instant::now();
            let removed = reaper::reap(dp, &timeouts)?;
            anyhow::ensure!(removed == 0, "the reaper removed {removed} filled flows");
            Ok(started.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()
        .with_context(|| format!("timing the reaper over {flows} flows"))?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Reaper passes timed per table size.
const REAPER_TICKS: usize = 3;

/// The fixed-point flow, still present after the fill, timed with `repeat`.
fn repeat(dp: &mut Dataplane, flows: u32, settings: &Settings) -> Result<Paired> {
    let frame = data(CLIENT, FIXED_PORT);
    // One run proves the oldest entry survived the fill: it must still be rewritten.
    cases::check(
        dp,
        Prog::XdpIngress,
        "fixed-point flow after the fill",
        &frame,
        None,
        Counter::RewriteIngress,
    )?;
    let bytes = frame.build();
    let paired = measure::pair_repeat(
        dp,
        Prog::XdpIngress,
        &bytes,
        &bytes,
        Counter::RewriteIngress,
        settings,
    )
    .with_context(|| format!("timing the hit path with {flows} flows (repeat)"))?;
    Ok(paired)
}

/// Real rewrites of flows drawn at random from the fill (`probes`), one run each.
fn spread(dp: &mut Dataplane, flows: u32, probes: &[Probe], settings: &Settings) -> Result<Paired> {
    measure::pair_single_rounds(
        dp,
        Prog::XdpIngress,
        Counter::RewriteIngress,
        settings,
        |_| probes.to_vec(),
    )
    .with_context(|| format!("timing the hit path with {flows} flows (spread)"))
}

/// `count` data segments of filled flows drawn at random (xorshift, fixed seed), with the
/// 80→8080 rewrite each must get.
fn spread_probes(filled: u32, count: usize) -> Vec<Probe> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (client, port) = fill_client((state % u64::from(filled)) as u32);
            let frame = data(&IpAddr::V4(client).to_string(), port);
            Probe {
                input: frame.build(),
                want: frame.with_ports(port, 8080).build(),
            }
        })
        .collect()
}

/// An ACK with data from `client:port` to the server's port 80.
fn data(client: &str, port: u16) -> Frame {
    let mut frame = Frame::tcp(client, SERVER, port, 80, ACK | PSH);
    frame.payload = PAYLOAD.to_vec();
    frame
}

/// Each row's costs relative to those of the smallest table (1 k flows).
fn set_ratios(rows: &mut [ScaleRow]) {
    let Some(smallest) = rows.iter().min_by_key(|r| r.flows) else {
        return;
    };
    let (hot, spread) = (smallest.ns_per_pkt, smallest.spread_ns_per_pkt);
    for row in rows {
        row.ratio_to_1k = row.ns_per_pkt / hot;
        row.spread_ratio_to_1k = row.spread_ns_per_pkt / spread;
    }
}
