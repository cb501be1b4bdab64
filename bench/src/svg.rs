//! The chart of a report: for every load, one horizontal bar per configuration showing its
//! median as a ratio to direct (the dashed line at 1.0), written as plain SVG.

use std::fmt::Write as _;

use super::plan::{Config, Load};
use super::stats::Cell;

/// Width of every chart of the report (the header of [`open`] sets it).
const WIDTH: f64 = 860.0;
const LABEL_WIDTH: f64 = 190.0;
const BAR_AREA: f64 = 560.0;
const ROW: f64 = 18.0;
const BAR: f64 = 13.0;
const GROUP_GAP: f64 = 28.0;
/// Room above the first group, for the title.
pub(crate) const TOP: f64 = 40.0;

/// The bar colour of `config`: direct dark, the empty hooks pale, redirector's own
/// configurations orange, the alternatives blue-grey.
pub(crate) fn color(config: Config) -> &'static str {
    match config {
        Config::Direct => "#444444",
        Config::PassXdp | Config::PassTc => "#c7b9a0",
        Config::RedirectorXdp
        | Config::RedirectorXdpGeneric
        | Config::RedirectorTc
        | Config::RedirectorSocket
        | Config::RedirectorSniff => "#d9480f",
        _ => "#8fa3b8",
    }
}

/// The SVG document of the report `name` with the summary cells `summary`.
pub fn chart(name: &str, summary: &[Cell]) -> String {
    let groups: Vec<(Load, Vec<(Config, f64)>)> = Load::ALL
        .into_iter()
        .map(|load| {
            let bars = summary
                .iter()
                .filter(|c| c.load == load)
                .filter_map(|c| c.ratio_to_direct.map(|r| (c.config, r)))
                .collect::<Vec<_>>();
            (load, bars)
        })
        .filter(|(_, bars)| !bars.is_empty())
        .collect();
    let largest = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|(_, r)| *r))
        .fold(1.2_f64, f64::max);
    // Axis up to the next 0.2 above the largest ratio.
    let axis_max = (largest / 0.2).ceil() * 0.2;
    let x = |ratio: f64| LABEL_WIDTH + ratio / axis_max * BAR_AREA;
    let height = TOP
        + groups
            .iter()
            .map(|(_, bars)| GROUP_GAP + bars.len() as f64 * ROW)
            .sum::<f64>()
        + 30.0;

    let mut svg = open(
        height,
        &format!(
            "redirector benchmark {}: median throughput as a ratio to direct (higher is better)",
            escape(name)
        ),
    );
    let mut y = TOP;
    for (load, bars) in &groups {
        y += GROUP_GAP;
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}" font-weight="bold">{} ({})</text>"#,
            y - 8.0,
            load,
            load.unit()
        );
        for (config, ratio) in bars {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{config}</text><rect x="{LABEL_WIDTH}" y="{:.1}" width="{:.1}" height="{BAR}" fill="{}"/><text x="{:.1}" y="{:.1}">{ratio:.2}</text>"#,
                LABEL_WIDTH - 6.0,
                y + BAR - 2.0,
                y,
                (x(*ratio) - LABEL_WIDTH).max(0.5),
                color(*config),
                x(*ratio) + 4.0,
                y + BAR - 2.0,
            );
            y += ROW;
        }
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#000" stroke-dasharray="4 3"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">1.0 = direct</text>"##,
        x(1.0),
        y + 4.0,
        y + 18.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// The start of a chart document `height` high on a white background, with its `title`
/// (already escaped) at the top.
pub(crate) fn open(height: f64, title: &str) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="10" y="22" font-size="15" font-weight="bold">{title}</text>"##
    );
    svg
}

/// `text` escaped for SVG text content.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
