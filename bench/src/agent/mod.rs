//! `cachecast-bench agent`: the `cachecast agent` daemon measured through
//! its HTTP API, as the real binary, on loopback only (HTTP on 127.0.0.1,
//! multicast on interface 127.0.0.1 with TTL 0, Redis on 127.0.0.1).
//!
//! 1. Publish throughput: agent A alone, `POST /v1/invalidate` flat out
//!    over 1 and 16 keep-alive connections, one event or 100 per request;
//!    invalidations accepted per second and A's CPU per thousand.
//! 2. End to end: agents A and B (B with a Redis applier when `--redis` is
//!    given) at a fixed rate: POST on A → SSE event on B, → key gone from
//!    B's Redis; p50 / p99 and the spread of the per-second p99.
//! 3. Each agent's resident memory idle and under that load, and its CPU
//!    at that rate.
//!
//! Every load loop is bounded in count and in time.

pub mod e2e;
pub mod http;
pub mod process;
pub mod publish;
pub mod resp;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::{parse_duration, si, us, Rate};
use e2e::{E2e, Latency};
use process::{Agent, Cluster};
use publish::PublishRun;

/// The SSE latency the agent promises on loopback (issue #12).
const SSE_P99_TARGET_US: f64 = 2_000.0;

/// Options of `cachecast-bench agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The `cachecast` binary (default: `cachecast` next to this binary).
    #[arg(long, env = "CACHECAST_BIN")]
    pub cachecast: Option<PathBuf>,
    /// A Redis server for agent B's applier (scripts/bench.sh agent starts
    /// one). Use a server of the bench's own: its db 0 gets the bench's
    /// keys, and a Reset on B flushes it.
    #[arg(long)]
    pub redis: Option<SocketAddr>,
    /// Connections of the publish runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub connections: Vec<u16>,
    /// Events per request of the publish runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: Vec<u16>,
    /// Length of each publish run.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub publish_time: Duration,
    /// Most invalidations of one publish run.
    #[arg(long, default_value_t = 10_000_000)]
    pub publish_max: u64,
    /// Invalidations per second of the end-to-end run.
    #[arg(long, default_value = "1000")]
    pub rate: Rate,
    /// Length of the end-to-end run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Skip the publish runs.
    #[arg(long)]
    pub no_publish: bool,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// One agent's memory and CPU.
#[derive(Debug, Clone, Serialize)]
pub struct AgentFigures {
    pub agent: String,
    /// Resident memory a moment after it is ready, KiB.
    pub idle_rss_kib: u64,
    /// Highest resident memory seen under the end-to-end load, KiB.
    pub load_rss_kib: u64,
    /// Peak resident memory (VmHWM) at the end, KiB.
    pub peak_rss_kib: u64,
    /// CPU at the end-to-end rate, % of one core.
    pub cpu_pct: f64,
}

/// Everything one `cachecast-bench agent` measured.
#[derive(Debug, Clone, Serialize)]
pub struct AgentResults {
    pub binary: String,
    pub publish: Vec<PublishRun>,
    /// A's peak resident memory after the publish runs, KiB.
    pub publish_peak_rss_kib: u64,
    pub e2e: Option<E2e>,
    pub agents: Vec<AgentFigures>,
    pub redis: Option<String>,
}

/// Runs the agent benchmark.
pub fn run(args: AgentArgs) -> Result<(), String> {
    if args.publish_time > Duration::from_secs(60) || args.duration > Duration::from_secs(300) {
        return Err("--publish-time is at most 60s and --duration at most 300s".into());
    }
    if args.rate.0 > 100_000.0 {
        return Err("--rate is at most 100k (one POST per event, one connection)".into());
    }
    if args.redis.is_some_and(|r| !r.ip().is_loopback()) {
        return Err("--redis must be on this host (127.0.0.1)".into());
    }
    let bin = process::find_binary(args.cachecast.as_deref())?;
    let dir = std::env::temp_dir().join(format!("cachecast-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = run_in(&args, &bin, &dir);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("bench: the agents' logs are kept in {}", dir.display());
    }
    let r = result?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &r).map_err(|e| e.to_string())?;
        writeln!(out).map_err(|e| e.to_string())?;
    } else {
        print_tables(&mut out, &args, &r).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A fresh cluster: a group in 239.255.0.0/16 and a port picked at random,
/// a name of this run's own.
fn cluster() -> Cluster {
    let g: [u8; 2] = rand::random();
    let port = 20_000 + rand::random::<u16>() % 30_000;
    Cluster {
        group: SocketAddr::from(([239, 255, g[0], g[1]], port)),
        name: format!(
            "bench-agent-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ),
    }
}

fn run_in(
    args: &AgentArgs,
    bin: &std::path::Path,
    dir: &std::path::Path,
) -> Result<AgentResults, String> {
    let say = |msg: String| {
        if !args.quiet {
            eprintln!("bench: {msg}");
        }
    };
    let mut results = AgentResults {
        binary: bin.display().to_string(),
        publish: Vec::new(),
        publish_peak_rss_kib: 0,
        e2e: None,
        agents: Vec::new(),
        redis: args.redis.map(|r| r.to_string()),
    };

    if !args.no_publish {
        let a = Agent::start(bin, "A", &cluster(), None, dir.join("publish-a.log"))?;
        for &c in &args.connections {
            for &b in &args.batch {
                say(format!(
                    "publish: {c} connection(s), {b} event(s) per request, {:?}",
                    args.publish_time
                ));
                let r = publish::run(&a, c, b, args.publish_time, args.publish_max);
                if let Some(e) = &r.error {
                    say(format!("publish: {e}"));
                }
                results.publish.push(r);
            }
        }
        results.publish_peak_rss_kib = a.peak_rss_kib();
        a.stop(Duration::from_secs(5));
    }

    let cl = cluster();
    let b_config = match args.redis {
        Some(r) => {
            let path = dir.join("b.toml");
            // flush_on_start off: the bench sets its keys after B started.
            let toml =
                format!("[[apply.redis]]\nurl = \"redis://{r}/0\"\nflush_on_start = false\n");
            std::fs::write(&path, toml)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let a = Agent::start(bin, "A", &cl, None, dir.join("e2e-a.log"))?;
    let b = Agent::start(bin, "B", &cl, b_config.as_deref(), dir.join("e2e-b.log"))?;
    if args.redis.is_some() {
        wait_ready(&b, Duration::from_secs(10), &say);
    }
    // Settled: what it holds once joined, before any load.
    std::thread::sleep(Duration::from_millis(500));
    let idle = [a.rss_kib(), b.rss_kib()];
    say(format!(
        "end to end: {} invalidations/s for {:?}, POST on A → B{}",
        si(args.rate.0),
        args.duration,
        if args.redis.is_some() {
            " (SSE and Redis)"
        } else {
            " (SSE; no --redis)"
        }
    ));
    let e = e2e::run(&a, &b, args.redis, args.rate.0, args.duration)?;
    for (i, ag) in [&a, &b].into_iter().enumerate() {
        results.agents.push(AgentFigures {
            agent: ag.label.to_owned(),
            idle_rss_kib: idle[i],
            load_rss_kib: e.rss_kib[i],
            peak_rss_kib: ag.peak_rss_kib(),
            cpu_pct: e.cpu_pct[i],
        });
    }
    results.e2e = Some(e);
    for mut ag in [a, b] {
        if !ag.alive() {
            return Err(format!(
                "agent {} died during the run; its log:\n{}",
                ag.label,
                ag.log_tail(10)
            ));
        }
        ag.stop(Duration::from_secs(5));
    }
    Ok(results)
}

/// Waits until B's `/readyz` says ready (its applier connected); says so
/// and goes on if it does not within `within`.
fn wait_ready(b: &Agent, within: Duration, say: &dyn Fn(String)) {
    let deadline = std::time::Instant::now() + within;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        match http::Conn::connect(b.http, Duration::from_secs(2)).and_then(|mut c| {
            let s = c.get("/readyz")?;
            Ok((s, String::from_utf8_lossy(c.body()).into_owned()))
        }) {
            Ok((200, _)) => return,
            Ok((s, body)) => last = format!("{s} {}", body.trim()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say(format!(
        "B is not ready after {within:?} ({last}): its Redis applier may not work; measuring anyway"
    ));
}

fn mib(kib: u64) -> String {
    format!("{:.1}MiB", kib as f64 / 1024.0)
}

fn print_tables(out: &mut impl Write, args: &AgentArgs, r: &AgentResults) -> std::io::Result<()> {
    writeln!(
        out,
        "cachecast-bench agent: the `cachecast agent` binary, HTTP on 127.0.0.1, multicast on 127.0.0.1 (TTL 0); one key of ~30 bytes per event"
    )?;
    if !r.publish.is_empty() {
        writeln!(
            out,
            "\npublish: POST /v1/invalidate flat out to agent A alone, keep-alive, {:?} per run (spread: slowest and fastest 250 ms)",
            args.publish_time
        )?;
        writeln!(
            out,
            "{:>5} {:>10} {:>11} {:>16} {:>17} {:>13} {:>9} {:>9} {:>8}",
            "conns",
            "events/req",
            "requests/s",
            "invalidations/s",
            "spread",
            "agent CPU/1k",
            "agent CPU",
            "agent RSS",
            "refused"
        )?;
        for p in &r.publish {
            writeln!(
                out,
                "{:>5} {:>10} {:>11} {:>16} {:>17} {:>13} {:>9} {:>9} {:>8}",
                p.connections,
                p.batch,
                si(p.requests as f64 / p.seconds),
                si(p.per_s),
                format!("{}..{}", si(p.slice_min_per_s), si(p.slice_max_per_s)),
                format!("{:.2}ms", p.cpu_ms_per_k),
                format!("{:.0}%", p.cpu_pct),
                mib(p.rss_kib),
                p.refused,
            )?;
        }
        for p in r.publish.iter().filter(|p| p.error.is_some()) {
            writeln!(
                out,
                "  {} conn(s) × {}: {}",
                p.connections,
                p.batch,
                p.error.as_deref().unwrap_or_default()
            )?;
        }
        writeln!(
            out,
            "agent RSS: at the end of each run; A's peak over the publish runs {}",
            mib(r.publish_peak_rss_kib)
        )?;
    }
    if let Some(e) = &r.e2e {
        writeln!(
            out,
            "\nend to end: {} invalidations at {}/s over {:.1}s, POST on A → B (spread: lowest and highest p99 of the 1 s windows)",
            e.sent,
            si(e.rate),
            e.seconds
        )?;
        writeln!(
            out,
            "{:<26} {:>8} {:>8} {:>8} {:>8} {:>15} {:>8} {:>8}",
            "path", "p50", "p99", "p99.9", "max", "p99 spread", "seen", "missing"
        )?;
        let row = |out: &mut dyn Write, name: &str, l: &Latency| {
            // Nothing seen: no latency to show.
            let us = |v: f64| {
                if l.received == 0 {
                    "—".to_owned()
                } else {
                    us(v)
                }
            };
            writeln!(
                out,
                "{:<26} {:>8} {:>8} {:>8} {:>8} {:>15} {:>8} {:>8}",
                name,
                us(l.p50_us),
                us(l.p99_us),
                us(l.p999_us),
                us(l.max_us),
                if l.received == 0 {
                    "—".to_owned()
                } else {
                    format!("{}..{}", us(l.window_p99_min_us), us(l.window_p99_max_us))
                },
                l.received,
                l.missing
            )
        };
        row(out, "POST → 202 (A)", &e.post)?;
        row(out, "POST → SSE event on B", &e.sse)?;
        match &e.redis {
            Some(l) => row(out, "POST → key gone, B's Redis", l)?,
            None => writeln!(out, "POST → key gone, B's Redis: not measured (no --redis)")?,
        }
        for (name, l) in [
            ("POST", Some(&e.post)),
            ("SSE", Some(&e.sse)),
            ("Redis", e.redis.as_ref()),
        ] {
            if let Some(err) = l.and_then(|l| l.error.as_deref()) {
                writeln!(out, "  {name}: {err}")?;
            }
        }
        writeln!(
            out,
            "SSE p99 {} (target ≤ {}): {}; resets on B's SSE: {}; POSTs refused: {}",
            us(e.sse.p99_us),
            us(SSE_P99_TARGET_US),
            if e.sse.p99_us <= SSE_P99_TARGET_US && e.sse.missing == 0 {
                "met"
            } else {
                "NOT met"
            },
            e.resets,
            e.refused
        )?;
    }
    if !r.agents.is_empty() {
        writeln!(out, "\nagents (RSS idle = joined, 0.5 s after ready; under load = highest seen during the run)")?;
        writeln!(
            out,
            "{:<22} {:>9} {:>15} {:>9} {:>13}",
            "agent",
            "idle RSS",
            "RSS under load",
            "peak RSS",
            format!("CPU at {}/s", si(args.rate.0))
        )?;
        for a in &r.agents {
            let role = if a.agent == "A" {
                "A (publishes)"
            } else if r.redis.is_some() {
                "B (SSE + Redis)"
            } else {
                "B (SSE)"
            };
            writeln!(
                out,
                "{:<22} {:>9} {:>15} {:>9} {:>13}",
                role,
                mib(a.idle_rss_kib),
                mib(a.load_rss_kib),
                mib(a.peak_rss_kib),
                format!("{:.1}%", a.cpu_pct)
            )?;
        }
    }
    Ok(())
}
