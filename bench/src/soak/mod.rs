//! `cachecast-bench soak`: a long run at a steady rate, sampled every
//! interval, to show that nothing grows and nothing is lost.
//!
//! Two paths at once, on loopback only (multicast on interface 127.0.0.1,
//! TTL 0, a group in 239.255.0.0/16; HTTP on 127.0.0.1):
//!
//! 1. a publisher process → `--subscribers` subscriber processes, cachecast
//!    nodes ([`nodes`]), at `--rate` (50 k events/s);
//! 2. with `--agents on`, two real `cachecast agent` processes: `POST` on A
//!    → SSE event on B ([`agents`]), at `--agent-rate` (1,000/s).
//!
//! Every `--sample` it reads each process's RSS and CPU from `/proc`
//! ([`procfs`]) and asks each receiver for its counts and its latency
//! histogram of the interval ([`samples`]). At the end: a table, the
//! samples as CSV (`--csv`), an SVG plot (`--plot`), and the targets: RSS
//! flat within 10 % after the warm-up, no Reset, nothing lost.

pub mod agents;
pub mod lines;
pub mod nodes;
pub mod plot;
pub mod procfs;
mod run;
pub mod samples;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::{parse_duration, si, us, Rate};
use samples::{Counters, Flatness, Latency, PathSample, ProcSample};

/// RSS after the warm-up stays within this fraction of its sample then.
pub const RSS_TOLERANCE: f64 = 0.10;
/// Most samples a run may take (their memory is the soak's only growth).
const MAX_SAMPLES: f64 = 10_000.0;

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn on(self) -> bool {
        self == OnOff::On
    }
}

/// Options of `cachecast-bench soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Length of the run, minutes (fractions allowed; at most a day).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Events per second, publisher → subscribers.
    #[arg(long, default_value = "50k")]
    pub rate: Rate,
    /// Subscriber processes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub subscribers: u16,
    /// Sample every this long (e.g. 60s, 10s).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub sample: Duration,
    /// RSS is compared with the first sample at or after this time.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Also run the agent path: two `cachecast agent` processes, POST on
    /// A → SSE on B, at --agent-rate, alongside the multicast path.
    #[arg(long, value_enum, default_value = "on")]
    pub agents: OnOff,
    /// Invalidations per second through the agents (one POST each).
    #[arg(long, default_value = "1000")]
    pub agent_rate: Rate,
    /// The `cachecast` binary (default: `cachecast` next to this binary).
    #[arg(long, env = "CACHECAST_BIN")]
    pub cachecast: Option<PathBuf>,
    /// Write an SVG plot here: RSS of each process and p99 over time.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the samples here as CSV, one row per sample.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Print one JSON document (every sample) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Every process and path at one sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since publishing began (0: just before).
    pub t_s: f64,
    /// In the order of [`SoakReport::processes`].
    pub procs: Vec<ProcSample>,
    pub multicast: PathSample,
    pub agents: Option<PathSample>,
}

/// One path over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct PathTotals {
    /// Events published (agents: accepted by A).
    pub sent: u64,
    /// POSTs refused or failed (agents only).
    pub refused: u64,
    pub receivers: usize,
    /// All receivers together.
    pub counts: Counters,
    /// Events some receiver never got (sequence gaps, and what had not
    /// arrived when the drain ended), all receivers.
    pub lost: u64,
    /// Over the whole run, every receiver's events.
    pub latency: Option<Latency>,
    /// The lowest and highest p99 of the intervals, µs.
    pub p99_range_us: Option<(f64, f64)>,
}

impl PathTotals {
    fn new(
        sent: u64,
        receivers: &[Counters],
        latency: Option<Latency>,
        p99_range_us: Option<(f64, f64)>,
    ) -> PathTotals {
        let mut counts = Counters::default();
        let mut lost = 0u64;
        for c in receivers {
            counts.add(c);
            lost = lost.saturating_add(c.lost.max(sent.saturating_sub(c.delivered)));
        }
        PathTotals {
            sent,
            refused: 0,
            receivers: receivers.len(),
            counts,
            lost,
            latency,
            p99_range_us,
        }
    }
}

/// The targets.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Every process's RSS (the bench's own aside) flat within 10 % after
    /// the warm-up; `None` when the run was too short to tell.
    pub rss_flat: Option<bool>,
    pub resets: u64,
    pub lost: u64,
    /// All met, and the run went to its end.
    pub met: bool,
}

/// Everything one soak measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub minutes: f64,
    pub ran_s: f64,
    /// False when interrupted or a process died.
    pub completed: bool,
    pub rate: f64,
    pub subscribers: u16,
    pub agent_rate: Option<f64>,
    pub sample_s: f64,
    pub warmup_s: f64,
    /// Process names, in the order of each sample's `procs`; `bench` is
    /// this process (not a target).
    pub processes: Vec<String>,
    pub samples: Vec<Sample>,
    pub rss: Vec<Flatness>,
    pub multicast: PathTotals,
    pub agents: Option<PathTotals>,
    pub errors: Vec<String>,
    pub verdict: Verdict,
}

impl SoakReport {
    #[allow(clippy::too_many_arguments)]
    fn new(
        args: &SoakArgs,
        ran_s: f64,
        completed: bool,
        processes: Vec<String>,
        samples: Vec<Sample>,
        rss: Vec<Flatness>,
        multicast: PathTotals,
        agents: Option<PathTotals>,
        errors: Vec<String>,
    ) -> SoakReport {
        let verdict = verdict(&rss, &multicast, agents.as_ref(), completed);
        SoakReport {
            minutes: args.minutes,
            ran_s,
            completed,
            rate: args.rate.0,
            subscribers: args.subscribers,
            agent_rate: args.agents.on().then_some(args.agent_rate.0),
            sample_s: args.sample.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            processes,
            samples,
            rss,
            multicast,
            agents,
            errors,
            verdict,
        }
    }
}

/// The targets over the figures: RSS flat (the bench's own process
/// aside), no Reset, nothing lost, and the run complete.
fn verdict(
    rss: &[Flatness],
    multicast: &PathTotals,
    agents: Option<&PathTotals>,
    completed: bool,
) -> Verdict {
    let targets = rss.iter().filter(|f| f.process != "bench");
    let rss_flat = if targets.clone().any(|f| f.flat == Some(false)) {
        Some(false)
    } else if targets.clone().all(|f| f.flat == Some(true)) && targets.count() > 0 {
        Some(true)
    } else {
        None
    };
    let paths = || std::iter::once(multicast).chain(agents);
    let resets = paths().map(|p| p.counts.resets_total()).sum();
    let lost = paths().map(|p| p.lost.saturating_add(p.refused)).sum();
    Verdict {
        rss_flat,
        resets,
        lost,
        met: completed && rss_flat == Some(true) && resets == 0 && lost == 0,
    }
}

/// Runs the soak and prints what it measured.
pub fn run(args: SoakArgs) -> Result<(), String> {
    let samples = args.minutes * 60.0 / args.sample.as_secs_f64().max(1e-9);
    if !(args.minutes > 0.0 && args.minutes <= 24.0 * 60.0) {
        return Err("--minutes must be more than 0 and at most 1440".into());
    }
    if args.sample < Duration::from_secs(1) || samples > MAX_SAMPLES {
        return Err(format!(
            "--sample must be at least 1s and give at most {MAX_SAMPLES} samples"
        ));
    }
    if args.rate.0 > 1e6 || args.agent_rate.0 > 20e3 {
        return Err("--rate is at most 1M and --agent-rate at most 20k".into());
    }
    let dir = std::env::temp_dir().join(format!("cachecast-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = run::soak(&args, &dir);
    match &result {
        Ok(r) if r.errors.is_empty() => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => eprintln!("soak: the agents' logs are kept in {}", dir.display()),
    }
    let r = result?;
    let io = |e: std::io::Error| e.to_string();
    {
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &r).map_err(|e| e.to_string())?;
            writeln!(out).map_err(io)?;
        } else {
            print_report(&mut out, &r).map_err(io)?;
        }
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&r)).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("soak: samples written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::write_svg(path, &r).map_err(|e| format!("plot {}: {e}", path.display()))?;
        eprintln!("soak: plot written to {}", path.display());
    }
    if r.verdict.met {
        Ok(())
    } else {
        Err("targets missed (see above)".into())
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1}MiB", k as f64 / 1024.0))
}

fn mmss(t: f64) -> String {
    format!("{}:{:02}", (t / 60.0) as u64, (t % 60.0) as u64)
}

fn print_report(out: &mut impl Write, r: &SoakReport) -> std::io::Result<()> {
    writeln!(
        out,
        "cachecast-bench soak: {:.1} of {} min; 1 publisher → {} subscribers at {}/s (cachecast, loopback multicast){}; a sample every {}",
        r.ran_s / 60.0,
        r.minutes,
        r.subscribers,
        si(r.rate),
        r.agent_rate.map_or(String::new(), |a| format!(
            ", and POST on agent A → SSE on agent B at {}/s alongside",
            si(a)
        )),
        humantime::format_duration(Duration::from_secs_f64(r.sample_s))
    )?;
    // The samples.
    write!(out, "\n{:>6}", "t")?;
    for n in &r.processes {
        write!(out, " {n:>9}")?;
    }
    write!(
        out,
        " {:>9} {:>8} {:>8} {:>5} {:>6}",
        "mc /s/sub", "p50", "p99", "lost", "Resets"
    )?;
    if r.agent_rate.is_some() {
        write!(
            out,
            " {:>9} {:>8} {:>8} {:>5} {:>6}",
            "agent /s", "p50", "p99", "lost", "Resets"
        )?;
    }
    writeln!(out, "   (RSS per process; CPU % below)")?;
    let path = |out: &mut dyn Write, p: &PathSample| {
        let l = |f: fn(&Latency) -> f64| p.latency.as_ref().map_or("—".into(), |l| us(f(l)));
        write!(
            out,
            " {:>9} {:>8} {:>8} {:>5} {:>6}",
            si(p.delivered_per_s),
            l(|l| l.p50_us),
            l(|l| l.p99_us),
            p.counts.lost,
            p.counts.resets_total()
        )
    };
    for s in &r.samples {
        write!(out, "{:>6}", mmss(s.t_s))?;
        for p in &s.procs {
            write!(out, " {:>9}", mib(p.rss_kib))?;
        }
        path(out, &s.multicast)?;
        if let Some(a) = &s.agents {
            path(out, a)?;
        }
        writeln!(out)?;
        write!(out, "{:>6}", "")?;
        for p in &s.procs {
            write!(
                out,
                " {:>9}",
                p.cpu_pct.map_or("—".into(), |c| format!("{c:.0}%"))
            )?;
        }
        writeln!(out)?;
    }
    // RSS against the warm-up sample.
    writeln!(
        out,
        "\nRSS: the first sample at or after {} against every later one (target: within {:.0} %)",
        mmss(r.warmup_s),
        RSS_TOLERANCE * 100.0
    )?;
    writeln!(
        out,
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9}  flat",
        "process", "at", "RSS", "end RSS", "max rise", "max fall"
    )?;
    for f in &r.rss {
        writeln!(
            out,
            "{:<10} {:>9} {:>9} {:>9} {:>8.1}% {:>8.1}%  {}",
            f.process,
            f.base_t_s.map_or("—".into(), mmss),
            mib(f.base_kib),
            mib(f.end_kib),
            f.max_rise * 100.0,
            f.max_fall * 100.0,
            match (f.flat, f.process == "bench") {
                (_, true) => "(the bench itself, not a target)",
                (Some(true), _) => "yes",
                (Some(false), _) => "NO",
                (None, _) => "not evaluated (no sample after the warm-up)",
            }
        )?;
    }
    // The paths over the whole run.
    writeln!(out)?;
    let totals = |out: &mut dyn Write, name: &str, t: &PathTotals| {
        let kinds: Vec<String> = (t.counts.resets.iter())
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        writeln!(
            out,
            "{name}: {} sent, {} delivered over {} receiver(s), {} lost{}, {} Resets{}, {} repaired; p50 {} p99 {} max {} (interval p99 {})",
            t.sent,
            t.counts.delivered,
            t.receivers,
            t.lost,
            if t.refused > 0 { format!(" ({} POSTs refused)", t.refused) } else { String::new() },
            t.counts.resets_total(),
            if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) },
            t.counts.repaired,
            t.latency.map_or("—".into(), |l| us(l.p50_us)),
            t.latency.map_or("—".into(), |l| us(l.p99_us)),
            t.latency.map_or("—".into(), |l| us(l.max_us)),
            t.p99_range_us.map_or("—".into(), |(lo, hi)| format!("{}..{}", us(lo), us(hi))),
        )
    };
    totals(out, "multicast", &r.multicast)?;
    if let Some(a) = &r.agents {
        totals(out, "agents (POST on A → SSE on B)", a)?;
    }
    for e in &r.errors {
        writeln!(out, "error: {e}")?;
    }
    let v = &r.verdict;
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    writeln!(
        out,
        "\ntargets: RSS flat within {:.0} % after {}: {}; zero Resets: {} ({}); nothing lost: {} ({}){}",
        RSS_TOLERANCE * 100.0,
        mmss(r.warmup_s),
        match v.rss_flat {
            Some(ok) => met(ok),
            None => "not evaluated (run longer than the warm-up plus a sample)",
        },
        met(v.resets == 0),
        v.resets,
        met(v.lost == 0),
        v.lost,
        if r.completed { "" } else { "; the run did not complete" }
    )
}

/// The samples as CSV: one row per sample; per process its RSS (KiB) and
/// CPU (% of a core), then per path its figures for the interval.
pub fn csv(r: &SoakReport) -> String {
    let mut s = String::from("t_s");
    for n in &r.processes {
        s += &format!(",{n}_rss_kib,{n}_cpu_pct");
    }
    let paths: &[&str] = if r.agent_rate.is_some() {
        &["mc", "agent"]
    } else {
        &["mc"]
    };
    for p in paths {
        s += &format!(
            ",{p}_sent,{p}_delivered,{p}_delivered_per_s,{p}_lost,{p}_resets,{p}_repaired,{p}_p50_us,{p}_p99_us,{p}_max_us"
        );
    }
    s.push('\n');
    let opt = |v: Option<String>| v.unwrap_or_default();
    for x in &r.samples {
        s += &format!("{:.1}", x.t_s);
        for p in &x.procs {
            s += &format!(
                ",{},{}",
                opt(p.rss_kib.map(|v| v.to_string())),
                opt(p.cpu_pct.map(|v| format!("{v:.1}")))
            );
        }
        let rows =
            std::iter::once(Some(&x.multicast)).chain(r.agent_rate.map(|_| x.agents.as_ref()));
        for p in rows {
            let (p, l) = match p {
                Some(p) => (p, p.latency),
                None => {
                    s += ",,,,,,,,,";
                    continue;
                }
            };
            let lat = |f: fn(&Latency) -> f64| opt(l.as_ref().map(|l| format!("{:.1}", f(l))));
            s += &format!(
                ",{},{},{:.1},{},{},{},{},{},{}",
                p.sent,
                p.counts.delivered,
                p.delivered_per_s,
                p.counts.lost,
                p.counts.resets_total(),
                p.counts.repaired,
                lat(|l| l.p50_us),
                lat(|l| l.p99_us),
                lat(|l| l.max_us)
            );
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::samples::flatness;
    use super::*;

    fn proc(rss: u64) -> ProcSample {
        ProcSample {
            rss_kib: Some(rss),
            cpu_pct: Some(12.5),
        }
    }

    /// A small report: two processes (a subscriber and the bench), three
    /// samples a minute apart; `sub_end` is the subscriber's last RSS.
    pub(crate) fn report(sub_end: u64, resets: u64) -> SoakReport {
        let mut mc = PathSample {
            sent: 3000,
            delivered_per_s: 50.0,
            latency: Some(Latency {
                count: 3000,
                p50_us: 40.0,
                p99_us: 120.0,
                max_us: 900.0,
            }),
            ..PathSample::default()
        };
        mc.counts.delivered = 3000;
        let samples: Vec<Sample> = [(0.0, 5000), (60.0, 8000), (120.0, sub_end)]
            .into_iter()
            .map(|(t, rss)| Sample {
                t_s: t,
                procs: vec![proc(rss), proc(2000)],
                multicast: mc.clone(),
                agents: None,
            })
            .collect();
        let processes = vec!["sub-1".to_owned(), "bench".to_owned()];
        let rss: Vec<Flatness> = (processes.iter().enumerate())
            .map(|(i, n)| {
                let pts: Vec<_> = samples
                    .iter()
                    .map(|s| (s.t_s, s.procs[i].rss_kib))
                    .collect();
                flatness(n, &pts, 60.0, RSS_TOLERANCE)
            })
            .collect();
        let mut counts = Counters {
            delivered: 6000,
            ..Counters::default()
        };
        for _ in 0..resets {
            counts.reset("too_old");
        }
        let multicast = PathTotals::new(6000, &[counts], None, Some((100.0, 120.0)));
        let args = SoakArgs {
            minutes: 2.0,
            rate: Rate(50.0),
            subscribers: 1,
            sample: Duration::from_secs(60),
            warmup: Duration::from_secs(60),
            agents: OnOff::Off,
            agent_rate: Rate(1000.0),
            cachecast: None,
            plot: None,
            csv: None,
            json: false,
            quiet: true,
        };
        SoakReport::new(
            &args,
            120.0,
            true,
            processes,
            samples,
            rss,
            multicast,
            None,
            vec![],
        )
    }

    #[test]
    fn the_verdict_needs_flat_rss_no_reset_and_nothing_lost() {
        assert!(report(8500, 0).verdict.met);
        let grew = report(9000, 0).verdict; // 12.5 % over minute 1
        assert_eq!((grew.rss_flat, grew.met), (Some(false), false));
        let reset = report(8000, 2).verdict;
        assert_eq!((reset.resets, reset.met), (2, false));
        // The bench's own RSS is not a target.
        let mut r = report(8000, 0);
        r.rss[1].flat = Some(false);
        let v = verdict(&r.rss, &r.multicast, None, true);
        assert!(v.met);
        assert!(
            !verdict(&r.rss, &r.multicast, None, false).met,
            "incomplete"
        );
    }

    #[test]
    fn loss_is_gaps_or_what_never_arrived_per_receiver() {
        let got = |delivered, lost| Counters {
            delivered,
            lost,
            ..Counters::default()
        };
        // Receiver 1 saw a gap of 5 (repaired nothing), receiver 2 missed
        // the last 3 (no later event to show a gap), receiver 3 all.
        let t = PathTotals::new(100, &[got(95, 5), got(97, 0), got(100, 0)], None, None);
        assert_eq!((t.lost, t.counts.delivered, t.receivers), (8, 292, 3));
        let t = PathTotals::new(100, &[got(100, 0)], None, None);
        assert_eq!(t.lost, 0);
    }

    #[test]
    fn csv_has_a_column_per_process_and_path_and_a_row_per_sample() {
        let text = csv(&report(8500, 0));
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 4);
        let head: Vec<&str> = rows[0].split(',').collect();
        assert_eq!(
            &head[..5],
            [
                "t_s",
                "sub-1_rss_kib",
                "sub-1_cpu_pct",
                "bench_rss_kib",
                "bench_cpu_pct"
            ]
        );
        assert_eq!(head.len(), 5 + 9);
        for row in &rows[1..] {
            assert_eq!(row.split(',').count(), head.len(), "{row}");
        }
        assert!(
            rows[3].starts_with("120.0,8500,12.5,2000,12.5,3000,3000,50.0,0,0,0,40.0,120.0,900.0"),
            "{}",
            rows[3]
        );
    }

    #[test]
    fn the_report_prints_the_targets() {
        let mut out = Vec::new();
        print_report(&mut out, &report(9000, 1)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("RSS flat within 10 % after 1:00: MISSED"),
            "{text}"
        );
        assert!(text.contains("zero Resets: MISSED (1)"), "{text}");
        assert!(text.contains("(the bench itself, not a target)"));
    }
}
