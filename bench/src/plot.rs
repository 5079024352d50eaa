//! The sweep as an SVG: delivered rate and p99 latency against the offered
//! rate, one line per system.
//!
//! Two panels side by side, both log-log: delivered events/s per
//! subscriber (with a dashed y = x "offered" line), and p99 publish →
//! delivery latency. A filled dot is a clean run; an × is a run with loss
//! or Resets. A shared legend sits under the panels.
//!
//! Text needs no font: plotters is built without `ttf`, so it estimates
//! text sizes crudely and the SVG backend writes `<text>` elements that the
//! viewer renders with its own sans-serif font.

use std::ops::Range;
use std::path::Path;

use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{Results, RunResult, System};

/// Canvas size, pixels.
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 640;
/// Height of the legend strip under the panels.
const LEGEND_H: u32 = 56;

/// Systems in the order they are drawn and listed.
const ORDER: [System; 8] = [
    System::Cachecast,
    System::CachecastAuth,
    System::CachecastEncrypt,
    System::CachecastUnicast,
    System::Udp,
    System::UdpGso,
    System::Redis,
    System::Nats,
];

/// A fixed colour per system (Tableau 10), whatever else is plotted.
fn colour(s: System) -> RGBColor {
    match s {
        System::Cachecast => RGBColor(31, 119, 180),     // blue
        System::CachecastAuth => RGBColor(23, 190, 207), // cyan
        System::CachecastEncrypt => RGBColor(140, 86, 75), // brown
        System::CachecastUnicast => RGBColor(188, 189, 34), // olive
        System::Udp => RGBColor(255, 127, 14),           // orange
        System::UdpGso => RGBColor(44, 160, 44),         // green
        System::Redis => RGBColor(214, 39, 40),          // red
        System::Nats => RGBColor(148, 103, 189),         // purple
    }
}

pub(crate) const GREY: RGBColor = RGBColor(90, 90, 90);

/// One point of one system's line.
struct Point {
    offered: f64,
    delivered: f64,
    p99_us: f64,
    clean: bool,
}

/// Writes the sweep of `r` to `path` as an SVG.
pub fn write_svg(path: &Path, r: &Results) -> Result<(), Box<dyn std::error::Error>> {
    let lines = series(&r.sweep);
    if lines.is_empty() {
        return Err("no sweep results to plot; run with --mode sweep or all".into());
    }

    let offered = lines
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(|p| p.offered));
    let x_range = log_range(offered.clone(), 1.4).unwrap_or(1e3..1e7);
    let delivered = lines
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(|p| p.delivered));
    // The delivered panel also shows y = x over the whole x range.
    let y_rate = log_range(delivered.chain([x_range.start, x_range.end]), 1.0)
        .map(|r| r.start / 1.4..r.end * 1.4)
        .unwrap_or(1e3..1e7);
    let latencies = lines.iter().flat_map(|(_, ps)| ps.iter().map(|p| p.p99_us));
    let y_lat = log_range(latencies, 1.6).unwrap_or(1.0..1e3);

    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let keys = if r.keys_per_event > 1 {
        format!(" × {} keys per event", r.keys_per_event)
    } else {
        String::new()
    };
    let title = format!(
        "cachecast-bench: 1 publisher → {} subscribers, {}-byte keys{keys}",
        r.subscribers, r.key_size
    );
    let body = root.titled(&title, ("sans-serif", 26).into_font().color(&BLACK))?;
    let (panels, legend) = body.split_vertically(body.dim_in_pixel().1 - LEGEND_H);
    let (left, right) = panels.split_horizontally(WIDTH / 2);

    let x_fmt = |v: &f64| si_short(*v);
    let rate_fmt = |v: &f64| si_short(*v);
    let lat_fmt = |v: &f64| micros(*v);

    // (1) Delivered per subscriber against offered.
    {
        let mut chart = ChartBuilder::on(&left)
            .caption(
                "delivered events/s per subscriber vs offered (log-log)",
                ("sans-serif", 19),
            )
            .margin(12)
            .margin_right(24)
            .x_label_area_size(48)
            .y_label_area_size(76)
            .build_cartesian_2d(log_axis(&x_range), log_axis(&y_rate))?;
        chart
            .configure_mesh()
            .x_desc("offered rate (events/s)")
            .y_desc("delivered per subscriber (events/s)")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&rate_fmt)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()?;
        chart.draw_series(DashedLineSeries::new(
            [(x_range.start, x_range.start), (x_range.end, x_range.end)],
            8,
            6,
            GREY.stroke_width(2),
        ))?;
        for (s, ps) in &lines {
            let floor = y_rate.start;
            draw_line(&mut chart, colour(*s), ps, |p| {
                // Nothing delivered cannot sit on a log axis: the bottom edge.
                (p.offered, p.delivered.max(floor))
            })?;
        }
    }

    // (2) p99 latency against offered.
    {
        let mut chart = ChartBuilder::on(&right)
            .caption(
                "p99 latency, publish → delivery, vs offered (log-log)",
                ("sans-serif", 19),
            )
            .margin(12)
            .margin_right(24)
            .x_label_area_size(48)
            .y_label_area_size(76)
            .build_cartesian_2d(log_axis(&x_range), log_axis(&y_lat))?;
        chart
            .configure_mesh()
            .x_desc("offered rate (events/s)")
            .y_desc("p99 latency (µs / ms / s)")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&lat_fmt)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200))
            .draw()?;
        for (s, ps) in &lines {
            // A run that delivered nothing has no latency to show.
            let ps: Vec<&Point> = ps.iter().filter(|p| p.p99_us > 0.0).collect();
            draw_line(&mut chart, colour(*s), &ps, |p| (p.offered, p.p99_us))?;
        }
    }

    draw_legend(&legend, &lines)?;
    root.present()?;
    Ok(())
}

/// The sweep's points by system, systems in `ORDER`, points by offered rate.
fn series(sweep: &[RunResult]) -> Vec<(System, Vec<Point>)> {
    ORDER
        .iter()
        .filter_map(|&s| {
            let mut ps: Vec<Point> = sweep
                .iter()
                .filter(|x| x.system == s)
                .filter_map(|x| {
                    let offered = x.offered.filter(|o| *o > 0.0 && o.is_finite())?;
                    Some(Point {
                        offered,
                        delivered: x.delivered_per_s,
                        p99_us: x.p99_us,
                        clean: x.clean(),
                    })
                })
                .collect();
            ps.sort_by(|a, b| a.offered.total_cmp(&b.offered));
            (!ps.is_empty()).then_some((s, ps))
        })
        .collect()
}

/// From the smallest to the largest positive finite value, widened by
/// `pad` (a factor) either side; `None` without any.
pub(crate) fn log_range(vals: impl Iterator<Item = f64>, pad: f64) -> Option<Range<f64>> {
    let (lo, hi) =
        vals.filter(|v| *v > 0.0 && v.is_finite())
            .fold(None, |acc: Option<(f64, f64)>, v| match acc {
                None => Some((v, v)),
                Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
            })?;
    // One value alone still gets a decade around it.
    let (lo, hi) = if hi / lo < 3.0 {
        let mid = (lo * hi).sqrt();
        (mid / 3.0, mid * 3.0)
    } else {
        (lo, hi)
    };
    Some(lo / pad..hi * pad)
}

/// A log axis over `r` with labels at 1-2-5 (or sparser) steps and light
/// grid lines at every 1..9 × 10^k.
pub(crate) fn log_axis(r: &Range<f64>) -> WithKeyPoints<LogCoord<f64>> {
    let (bold, light) = log_ticks(r.start, r.end);
    (r.start..r.end)
        .log_scale()
        .with_key_points(bold)
        .with_light_points(light)
}

/// Labelled ticks (at most about 10) and light grid lines in `lo..=hi`.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let decades = || {
        let first = lo.log10().floor() as i32;
        let last = hi.log10().ceil() as i32;
        (first..=last).map(|e| 10f64.powi(e))
    };
    let at = |mults: &[f64]| -> Vec<f64> {
        decades()
            .flat_map(|d| mults.iter().map(move |m| m * d))
            .filter(|v| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9))
            .collect()
    };
    let mut bold = Vec::new();
    for mults in [
        &[1.0, 2.0, 3.0, 5.0][..],
        &[1.0, 2.0, 5.0],
        &[1.0, 3.0],
        &[1.0],
    ] {
        bold = at(mults);
        if bold.len() <= 10 {
            break;
        }
    }
    if bold.len() > 10 {
        // Very many decades: every other one.
        bold = bold.into_iter().step_by(2).collect();
    }
    let light = at(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    (bold, light)
}

/// One system's line: the points joined, a dot where clean, an × where not.
fn draw_line<'a, DB, CT, P>(
    chart: &mut ChartContext<'a, DB, CT>,
    c: RGBColor,
    ps: &[P],
    xy: impl Fn(&Point) -> (f64, f64),
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    CT: CoordTranslate<From = (f64, f64)>,
    P: std::borrow::Borrow<Point>,
{
    let pts: Vec<(f64, f64, bool)> = ps
        .iter()
        .map(|p| {
            let p = p.borrow();
            let (x, y) = xy(p);
            (x, y, p.clean)
        })
        .collect();
    chart.draw_series(LineSeries::new(
        pts.iter().map(|&(x, y, _)| (x, y)),
        c.stroke_width(2),
    ))?;
    chart.draw_series(
        pts.iter()
            .filter(|p| p.2)
            .map(|&(x, y, _)| Circle::new((x, y), 4, c.filled())),
    )?;
    chart.draw_series(
        pts.iter()
            .filter(|p| !p.2)
            .map(|&(x, y, _)| Cross::new((x, y), 6, c.stroke_width(3))),
    )?;
    Ok(())
}

/// The shared legend: one entry per system, the markers, the dashed line.
fn draw_legend<DB>(
    area: &DrawingArea<DB, Shift>,
    lines: &[(System, Vec<Point>)],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let font = ("sans-serif", 16)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let y = (LEGEND_H / 2) as i32;
    let mut x = 90;
    let gap = 34;
    let text = |x: &mut i32, s: &str| -> Result<(), Box<dyn std::error::Error>> {
        area.draw(&Text::new(s.to_string(), (*x, y), font.clone()))?;
        *x += area.estimate_text_size(s, &font)?.0 as i32 + gap;
        Ok(())
    };
    for (s, _) in lines {
        let c = colour(*s);
        area.draw(&PathElement::new(
            vec![(x, y), (x + 30, y)],
            c.stroke_width(2),
        ))?;
        area.draw(&Circle::new((x + 15, y), 4, c.filled()))?;
        x += 38;
        text(&mut x, s.name())?;
    }
    area.draw(&PathElement::new(
        vec![(x, y), (x + 30, y)],
        GREY.stroke_width(2),
    ))?;
    // Dashes by hand: the legend is in pixels.
    area.draw(&PathElement::new(
        vec![(x + 9, y), (x + 14, y)],
        WHITE.stroke_width(3),
    ))?;
    area.draw(&PathElement::new(
        vec![(x + 20, y), (x + 25, y)],
        WHITE.stroke_width(3),
    ))?;
    x += 38;
    text(&mut x, "offered (y = x)")?;
    area.draw(&Circle::new((x + 6, y), 4, GREY.filled()))?;
    x += 16;
    text(&mut x, "clean run")?;
    area.draw(&Cross::new((x + 6, y), 6, GREY.stroke_width(3)))?;
    x += 18;
    text(&mut x, "not clean (loss, Resets, or fell behind)")?;
    Ok(())
}

/// 100000 → "100k", 2500000 → "2.5M" (axis labels).
fn si_short(v: f64) -> String {
    let (n, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    format!("{}{unit}", trim(n))
}

/// Microseconds as "50µs", "2ms", "1.5s".
pub(crate) fn micros(v: f64) -> String {
    if v >= 1e6 {
        format!("{}s", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}ms", trim(v / 1e3))
    } else {
        format!("{}µs", trim(v))
    }
}

/// At most two decimals, no trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::super::common::{PubReport, SubReport};
    use super::*;
    use std::collections::BTreeMap;

    fn run(system: System, offered: f64, delivered: f64, p99_us: f64, loss: f64) -> RunResult {
        RunResult {
            system,
            offered: Some(offered),
            publisher: PubReport::default(),
            subscribers: vec![SubReport::default(); 2],
            delivered_per_s: delivered,
            delivered_min_per_s: delivered,
            datagrams_per_s: delivered / 10.0,
            mb_per_s: delivered * 32.0 / 1e6,
            loss,
            resets: 0,
            reset_kinds: BTreeMap::new(),
            repaired: 0,
            p50_us: p99_us / 3.0,
            p99_us,
            p999_us: p99_us * 2.0,
            pub_cpu_s_per_m: 1.0,
            sub_cpu_s_per_m: 1.0,
            sub_rss_mib: 10.0,
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("cachecast-plot-{}-{name}.svg", std::process::id()))
    }

    #[test]
    fn writes_an_svg_naming_every_system() {
        let mut sweep = Vec::new();
        // Out of order on purpose: the plot orders systems and rates.
        for &(s, scale) in &[(System::Udp, 1.0), (System::Cachecast, 0.9)] {
            for &rate in &[3e6, 1e5, 1e6] {
                let delivered = if rate > 2e6 { rate * 0.6 * scale } else { rate };
                let loss = if rate > 2e6 { 0.4 } else { 0.0 };
                sweep.push(run(s, rate, delivered, 50.0 + rate / 1e4, loss));
            }
        }
        // A run with Resets but no loss is not clean either.
        let mut reset = run(System::UdpGso, 1e6, 1e6, 80.0, 0.0);
        reset.resets = 3;
        sweep.push(reset);
        // Nothing delivered: no latency, and it must not break the log axes.
        sweep.push(run(System::UdpGso, 3e6, 0.0, 0.0, 1.0));
        let results = Results {
            subscribers: 3,
            key_size: 32,
            keys_per_event: 1,
            events_per_datagram: 40,
            sweep,
            ..Results::default()
        };
        let path = temp("ok");
        write_svg(&path, &results).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read back");
        let _ = std::fs::remove_file(&path);
        assert!(
            svg.trim_start().starts_with("<svg"),
            "not an SVG: {}",
            &svg[..80]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        for name in ["cachecast", "udp", "udp-gso"] {
            // The SVG backend writes `<text ...>\nNAME\n</text>`.
            assert!(
                svg.contains(&format!(">\n{name}\n</text>")),
                "{name} missing from the legend"
            );
        }
        assert!(!svg.contains("redis") && !svg.contains("nats"));
        assert!(svg.contains("1 publisher → 3 subscribers, 32-byte keys"));
        assert!(svg.contains("not clean (loss, Resets, or fell behind)"));
    }

    #[test]
    fn empty_sweep_is_an_error() {
        let results = Results {
            subscribers: 3,
            key_size: 32,
            keys_per_event: 1,
            ..Results::default()
        };
        let path = temp("empty");
        let e = write_svg(&path, &results).expect_err("nothing to plot");
        assert_eq!(
            e.to_string(),
            "no sweep results to plot; run with --mode sweep or all"
        );
        assert!(!path.exists(), "no file for an empty sweep");
    }

    #[test]
    fn log_ticks_are_few_and_in_range() {
        let (bold, light) = log_ticks(7e4, 4.3e6);
        assert!(!bold.is_empty() && bold.len() <= 10, "{bold:?}");
        assert!(bold.iter().all(|v| (7e4..=4.3e6).contains(v)));
        assert!(bold.contains(&1e5) && bold.contains(&1e6));
        assert!(light.len() >= bold.len());
        let (bold, _) = log_ticks(1.0, 1e12);
        assert!(bold.len() <= 10, "{bold:?}");
        assert_eq!(si_short(2.5e6), "2.5M");
        assert_eq!(si_short(1e5), "100k");
        assert_eq!(micros(1500.0), "1.5ms");
        assert_eq!(micros(50.0), "50µs");
    }
}
