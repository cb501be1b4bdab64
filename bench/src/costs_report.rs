//! The cost loads in the result files: the Markdown tables of idle-capacity (memory per
//! connection) and conn-cpu (CPU time per connection), and their chart
//! (`<name>-costs.svg`: one group of bars per figure, each on its own scale, with whiskers
//! from the smallest to the largest repetition).

use std::fmt::Write as _;

use super::costs::{Costs, Spread};
use super::idle::held_settle;
use super::plan::{Config, Params};
use super::svg::{color, escape, open, TOP};

/// `median (min–max)`, or the median alone when the repetitions agree or there is one.
fn spread_text(spread: Option<Spread>, digits: usize) -> String {
    match spread {
        None => "–".into(),
        Some(s) if s.n < 2 => format!("{:.digits$}", s.median),
        Some(s) => format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            s.median, s.min, s.max
        ),
    }
}

/// The two tables (whichever loads ran).
pub fn markdown(md: &mut String, costs: &Costs, params: &Params) {
    idle_table(md, costs, params);
    conn_cpu_table(md, costs, params);
}

fn idle_table(md: &mut String, costs: &Costs, params: &Params) {
    let Some(size) = costs.idle_size else {
        return;
    };
    let n = if size.capped() {
        format!(
            "N requested {}, N measured {}, capped by the nofile hard limit {} (a proxy holds \
             two descriptors per connection and cannot raise that limit)",
            size.requested, size.measured, size.nofile_hard
        )
    } else {
        format!(
            "N = {} (requested and measured; nofile hard limit {})",
            size.measured, size.nofile_hard
        )
    };
    let _ = writeln!(
        md,
        "## Idle connections (idle-capacity): memory per connection\n\n\
         {n}. wsload opens N WebSocket connections at {rate}/s; each sends one 64-byte \
         message every {interval} s (echo checked) and the connections are held {hold} s. \
         Memory is read {held} s after all N are open and have echoed once, against the reading \
         before the load. **Proxy RSS**: VmRSS of the configuration's processes and their \
         children (`–`: it runs no relaying process; redirector-tc's row is its loader). \
         **Kernel socket memory**: the `mem` pages of /proc/net/sockstat's TCP line — \
         machine-wide, so both ends of every connection (4 sockets per connection through a \
         proxy, 2 direct) and anything else on the machine; it counts the buffers of queued \
         data, which idle sockets hardly hold, in steps of per-CPU reserves (up to 1 MiB per \
         CPU), so it only means something at thousands of connections. **Kernel slab**: \
         `SUnreclaim` of /proc/meminfo, machine-wide too: the socket structures themselves, \
         their files and epoll entries. **Kept after close**: proxy RSS \
         {settle} s after the last connection closed, minus the reading before. Lower is \
         better; median (min–max) over the repetitions.\n\n\
         | configuration | connections open | proxy RSS KiB/conn | kernel socket memory KiB/conn | kernel slab KiB/conn | time to open all N (s) | proxy RSS kept after close (KiB) | echo / connect errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|",
        rate = params.idle_connect_rate,
        interval = params.idle_interval.as_secs_f64(),
        hold = params.idle_hold.as_secs_f64(),
        settle = params.idle_settle.as_secs_f64(),
        held = held_settle(params).as_secs_f64(),
    );
    for cell in &costs.idle {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            cell.config,
            cell.connections_open,
            spread_text(cell.rss_kib_per_conn, 2),
            spread_text(cell.sock_mem_kib_per_conn, 2),
            spread_text(cell.slab_kib_per_conn, 2),
            spread_text(cell.open_s, 1),
            spread_text(cell.rss_after_close_delta_kib, 0),
            cell.echo_errors,
            cell.connect_errors
        );
    }
    md.push('\n');
}

fn conn_cpu_table(md: &mut String, costs: &Costs, params: &Params) {
    if costs.conn_cpu.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## CPU time per connection (conn-cpu)\n\n\
         WebSocket connections (TCP and WebSocket handshakes, one {bytes}-byte echo, close) \
         offered at {rate}/s for {secs} s, below saturation; busy CPU time of the whole \
         machine over the run (user + nice + system + irq + softirq of /proc/stat, all \
         cores: client, server, configuration and kernel alike; idle, iowait and steal left \
         out) ÷ connections completed. Ratios are paired: each repetition's figure over \
         direct's (iptables') of the same round, then the median (min–max) of those. Anything \
         else running on the machine is counted too: **busy before** is the machine's busy \
         time in the second before each run, % of all cores (near 0 on a quiet machine; \
         more means other work was counted in the figures). **Own processes** leaves other \
         work out: the CPU time of wsload, ws-echo, the configuration's processes and the \
         kernel's ksoftirqd threads (this kernel charges softirq work — netfilter, XDP, tc, \
         TCP — to the task it interrupts, on a veth nearly always one of these), ÷ the same \
         connections. Lower is better.\n\n\
         | configuration | machine: CPU µs/conn | ratio to direct | ratio to iptables | own processes: CPU µs/conn | ratio to direct | ratio to iptables | connections/s achieved | steal % (median / max) | busy before % (median / max) | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        bytes = params.message_bytes,
        rate = params.conn_cpu_rate,
        secs = params.conn_cpu_time.as_secs_f64(),
    );
    for cell in &costs.conn_cpu {
        let median_max = |s: Option<Spread>| {
            s.map_or("–".into(), |s| format!("{:.1} / {:.1}", s.median, s.max))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell.config,
            spread_text(Some(cell.cpu_us_per_conn), 0),
            spread_text(cell.ratio_to_direct, 2),
            spread_text(cell.ratio_to_iptables, 2),
            spread_text(cell.own_cpu_us_per_conn, 0),
            spread_text(cell.own_ratio_to_direct, 2),
            spread_text(cell.own_ratio_to_iptables, 2),
            cell.achieved_rate.map_or("–".into(), |r| format!("{r:.0}")),
            median_max(cell.steal_pct),
            median_max(cell.background_busy_pct),
            cell.errors
        );
    }
    md.push('\n');
}

const LABEL_WIDTH: f64 = 190.0;
const BAR_AREA: f64 = 540.0;
const ROW: f64 = 18.0;
const BAR: f64 = 13.0;
const GROUP_GAP: f64 = 30.0;

/// One group of bars: a title and (configuration, value) pairs on a scale of their own.
struct Group {
    title: String,
    bars: Vec<(Config, Spread)>,
    /// A dashed reference line (1.0 for ratios).
    reference: Option<f64>,
}

/// The chart of the cost figures; `None` when no cost load ran.
pub fn chart(name: &str, costs: &Costs) -> Option<String> {
    let idle = |f: fn(&super::costs::IdleCell) -> Option<Spread>| -> Vec<(Config, Spread)> {
        costs
            .idle
            .iter()
            .filter_map(|c| Some((c.config, f(c)?)))
            .collect()
    };
    let groups: Vec<Group> = [
        Group {
            title: "idle-capacity: proxy resident memory, KiB per connection".into(),
            bars: idle(|c| c.rss_kib_per_conn),
            reference: None,
        },
        Group {
            title: "idle-capacity: kernel TCP socket memory (machine-wide), KiB per connection"
                .into(),
            bars: idle(|c| c.sock_mem_kib_per_conn),
            reference: None,
        },
        Group {
            title: "idle-capacity: kernel unreclaimable slab (machine-wide), KiB per connection"
                .into(),
            bars: idle(|c| c.slab_kib_per_conn),
            reference: None,
        },
        Group {
            title: "conn-cpu: machine busy CPU per connection, ratio to direct (paired per round)"
                .into(),
            bars: costs
                .conn_cpu
                .iter()
                .filter_map(|c| Some((c.config, c.ratio_to_direct?)))
                .collect(),
            reference: Some(1.0),
        },
        Group {
            title:
                "conn-cpu: own processes' CPU per connection, ratio to direct (paired per round)"
                    .into(),
            bars: costs
                .conn_cpu
                .iter()
                .filter_map(|c| Some((c.config, c.own_ratio_to_direct?)))
                .collect(),
            reference: Some(1.0),
        },
    ]
    .into_iter()
    .filter(|g| !g.bars.is_empty())
    .collect();
    if groups.is_empty() {
        return None;
    }
    let height = TOP
        + groups
            .iter()
            .map(|g| GROUP_GAP + g.bars.len() as f64 * ROW + 8.0)
            .sum::<f64>()
        + 10.0;
    let mut svg = open(
        height,
        &format!(
            "redirector benchmark {}: cost per connection, median with min–max whiskers \
             (lower is better)",
            escape(name)
        ),
    );
    let mut y = TOP;
    for group in &groups {
        y += GROUP_GAP;
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#,
            y - 8.0,
            escape(&group.title)
        );
        let largest = group
            .bars
            .iter()
            .map(|(_, s)| s.max.max(s.median))
            .chain(group.reference)
            .fold(f64::MIN_POSITIVE, f64::max);
        let x = |value: f64| LABEL_WIDTH + value.max(0.0) / largest * BAR_AREA;
        let top = y;
        for (config, spread) in &group.bars {
            let mid = y + BAR / 2.0;
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{config}</text><rect x="{LABEL_WIDTH}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{}"/><line x1="{:.1}" y1="{mid:.1}" x2="{:.1}" y2="{mid:.1}" stroke="#000"/><text x="{:.1}" y="{:.1}">{}</text>"##,
                LABEL_WIDTH - 6.0,
                y + BAR - 2.0,
                (x(spread.median) - LABEL_WIDTH).max(0.5),
                color(*config),
                x(spread.min),
                x(spread.max),
                x(spread.max.max(spread.median)) + 4.0,
                y + BAR - 2.0,
                super::report::figure(spread.median),
            );
            y += ROW;
        }
        if let Some(reference) = group.reference {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#000" stroke-dasharray="4 3"/>"##,
                x(reference),
                top - 2.0,
                y
            );
        }
        y += 8.0;
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costs::{
        summarize,
        tests::{cpu_run, idle_run},
    };
    use crate::idle::IdleSize;
    use crate::plan::Mode;

    #[test]
    fn tables_and_chart_show_every_cost_figure() {
        let runs = vec![
            cpu_run(Config::Direct, 1, 100.0),
            cpu_run(Config::Iptables, 1, 120.0),
            cpu_run(Config::RedirectorXdp, 1, 110.0),
            idle_run(Config::Direct, None),
            idle_run(Config::RedirectorSniff, Some(9.5)),
        ];
        let costs = summarize(&runs, &IdleSize::new(10_000, 20_000));
        let mut md = String::new();
        markdown(&mut md, &costs, &Params::for_mode(Mode::Quick));
        assert!(
            md.contains(
                "N requested 10000, N measured 9900, capped by the nofile hard limit 20000"
            ),
            "{md}"
        );
        assert!(
            md.contains("| direct | 300 | – | 1.50 | 12.25 | 0.2 | – | 0 / 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| redirector-sniff | 300 | 9.50 | 1.50 | 12.25 | 0.2 | 100 | 0 / 0 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| redirector-xdp | 110 | 1.10 | 0.92 | 55 | 1.10 | 0.92 | 1000 | 1.0 / 1.0 | 3.0 / 3.0 | 0 |"
            ),
            "{md}"
        );
        let svg = chart("t", &costs).unwrap();
        assert!(svg.contains("proxy resident memory"));
        assert!(svg.contains("ratio to direct"));
        assert!(chart("t", &Costs::default()).is_none());
    }
}
