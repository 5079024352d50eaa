//! The soak as an SVG, in the style of the sweep's plot (`crate::plot`):
//! two panels side by side over time in minutes, the RSS of each process
//! (MiB, linear) and the p99 of each path per interval (log), and a legend
//! under them.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::SoakReport;
use crate::plot::{log_axis, log_range, micros, GREY};

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 640;
const LEGEND_H: u32 = 56;

/// Tableau 10, one per process in order (the bench itself grey; cyan and
/// black are the paths').
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
];

/// The paths' p99 lines (apart from every process's colour).
const MC_P99: RGBColor = RGBColor(0, 0, 0);
const AGENT_P99: RGBColor = RGBColor(23, 190, 207);

fn colour(i: usize, name: &str) -> RGBColor {
    if name == "bench" {
        GREY
    } else {
        COLOURS[i % COLOURS.len()]
    }
}

/// Writes `r`'s samples to `path` as an SVG.
pub fn write_svg(path: &Path, r: &SoakReport) -> Result<(), Box<dyn std::error::Error>> {
    if r.samples.len() < 2 {
        return Err("fewer than two samples: nothing to plot".into());
    }
    let minutes = |t: f64| t / 60.0;
    let x_end = r
        .samples
        .iter()
        .map(|s| minutes(s.t_s))
        .fold(0.0, f64::max)
        .max(0.1);
    let rss_max = (r.samples.iter())
        .flat_map(|s| s.procs.iter().filter_map(|p| p.rss_kib))
        .max()
        .unwrap_or(1024) as f64
        / 1024.0;
    let mc: Vec<(f64, f64)> = (r.samples.iter())
        .filter_map(|s| Some((minutes(s.t_s), s.multicast.latency?.p99_us)))
        .collect();
    let ag: Vec<(f64, f64)> = (r.samples.iter())
        .filter_map(|s| Some((minutes(s.t_s), s.agents.as_ref()?.latency?.p99_us)))
        .collect();
    let y_lat = log_range(mc.iter().chain(&ag).map(|p| p.1), 1.6).unwrap_or(10.0..1e4);

    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let agents = r.agent_rate.map_or(String::new(), |a| {
        format!("; POST on agent A → SSE on B at {}/s", crate::si(a))
    });
    let title = format!(
        "cachecast-bench soak: 1 publisher → {} subscribers at {}/s{agents}; {:.1} min",
        r.subscribers,
        crate::si(r.rate),
        r.ran_s / 60.0
    );
    let body = root.titled(&title, ("sans-serif", 24).into_font().color(&BLACK))?;
    let (panels, legend) = body.split_vertically(body.dim_in_pixel().1 - LEGEND_H);
    let (left, right) = panels.split_horizontally(WIDTH / 2);
    {
        let mut chart = ChartBuilder::on(&left)
            .caption(
                "resident memory (VmRSS) of each process",
                ("sans-serif", 19),
            )
            .margin(12)
            .margin_right(24)
            .x_label_area_size(48)
            .y_label_area_size(76)
            .build_cartesian_2d(0.0..x_end, 0.0..rss_max * 1.15)?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc("RSS (MiB)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()?;
        for (i, name) in r.processes.iter().enumerate() {
            let c = colour(i, name);
            let pts: Vec<(f64, f64)> = (r.samples.iter())
                .filter_map(|s| Some((minutes(s.t_s), s.procs.get(i)?.rss_kib? as f64 / 1024.0)))
                .collect();
            chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
    }
    {
        let mut chart = ChartBuilder::on(&right)
            .caption(
                "p99 latency of each interval, publish → delivery (log)",
                ("sans-serif", 19),
            )
            .margin(12)
            .margin_right(24)
            .x_label_area_size(48)
            .y_label_area_size(76)
            .build_cartesian_2d(0.0..x_end, log_axis(&y_lat))?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .y_desc("p99 (µs / ms)")
            .y_label_formatter(&|v| micros(*v))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()?;
        for (pts, c) in [(&mc, MC_P99), (&ag, AGENT_P99)] {
            chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
    }
    // The legend: processes (left panel), then paths (right panel).
    let font = ("sans-serif", 16)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let y = (LEGEND_H / 2) as i32;
    let mut x = 60;
    let mut entries: Vec<(String, RGBColor)> = (r.processes.iter().enumerate())
        .map(|(i, n)| (n.clone(), colour(i, n)))
        .collect();
    entries.push(("p99 publisher → subscribers".into(), MC_P99));
    if !ag.is_empty() {
        entries.push(("p99 agent A → B (SSE)".into(), AGENT_P99));
    }
    for (name, c) in entries {
        legend.draw(&PathElement::new(
            vec![(x, y), (x + 24, y)],
            c.stroke_width(2),
        ))?;
        legend.draw(&Circle::new((x + 12, y), 3, c.filled()))?;
        x += 30;
        legend.draw(&Text::new(name.clone(), (x, y), font.clone()))?;
        x += legend.estimate_text_size(&name, &font)?.0 as i32 + 22;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_naming_every_process() {
        let r = super::super::tests::report(8500, 0);
        let path =
            std::env::temp_dir().join(format!("cachecast-soak-plot-{}.svg", std::process::id()));
        write_svg(&path, &r).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read back");
        let _ = std::fs::remove_file(&path);
        assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for name in ["sub-1", "bench", "p99 publisher → subscribers"] {
            assert!(
                svg.contains(&format!(">\n{name}\n</text>")),
                "{name} missing"
            );
        }
        assert!(svg.contains("1 publisher → 1 subscribers at 50/s"));
        // One sample is not a line.
        let mut one = r.clone();
        one.samples.truncate(1);
        assert!(write_svg(&path, &one).is_err());
        assert!(!path.exists());
    }
}
