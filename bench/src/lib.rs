//! `cachecast-bench` (this crate, unpublished): cachecast side by side with raw UDP multicast and,
//! when given, Redis pub/sub and NATS, on this host.
//!
//! One publisher (in this process) and `--subscribers` subscriber
//! processes (this binary again, as the hidden `sub`), on loopback
//! multicast (interface 127.0.0.1, TTL 0) or the broker on 127.0.0.1.
//! Four modes: flat-out throughput, paced latency, a rate sweep, and the
//! memory of a subscriber following many streams.
//! Timestamps travel in the messages and come from `CLOCK_MONOTONIC`,
//! which every process of the host shares.

/// Parses "250ms", "2s", "1m30s".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 500ms, 2s, 1m)"))
}

pub mod agent;
pub mod bridge;
pub mod cachecast_sys;
pub mod common;
pub mod confirm;
pub mod forged;
pub mod peers;
pub mod plot;
pub mod reliable;
pub mod soak;
pub mod udp;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

use common::{Done, Plan, PubReport, SubReport, MIN_KEY_SIZE, PROGRESS};

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// cachecast nodes (the public API).
    Cachecast,
    /// cachecast nodes with a key file: every datagram authenticated
    /// (HMAC-SHA256 trailer), auth "require" (--auth adds it).
    CachecastAuth,
    /// cachecast nodes with a key file and --encrypt: bodies encrypted
    /// (XAES-256-GCM) (--encrypt adds it).
    CachecastEncrypt,
    /// cachecast nodes over the unicast transport: each subscriber on its
    /// own port of 127.0.0.1, the publisher sending to every one of them
    /// (--unicast adds it).
    CachecastUnicast,
    /// Raw UDP multicast, one sendto / recvfrom per datagram.
    Udp,
    /// Raw UDP multicast with GSO (32 segments per send) and GRO/recvmmsg.
    UdpGso,
    /// Redis pub/sub (needs --redis).
    Redis,
    /// NATS core pub/sub (needs --nats).
    Nats,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Cachecast => "cachecast",
            System::CachecastAuth => "cachecast-auth",
            System::CachecastEncrypt => "cachecast-encrypt",
            System::CachecastUnicast => "cachecast-unicast",
            System::Udp => "udp",
            System::UdpGso => "udp-gso",
            System::Redis => "redis",
            System::Nats => "nats",
        }
    }

    /// cachecast nodes, with or without keys.
    pub fn is_cachecast(self) -> bool {
        matches!(
            self,
            System::Cachecast
                | System::CachecastAuth
                | System::CachecastEncrypt
                | System::CachecastUnicast
        )
    }

    /// The keys a cachecast system runs with: `None` without, else whether
    /// it encrypts.
    pub fn keyed(self) -> Option<bool> {
        match self {
            System::CachecastAuth => Some(false),
            System::CachecastEncrypt => Some(true),
            _ => None,
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Flat out: events/s delivered per subscriber, CPU, Resets.
    Throughput,
    /// Paced at --rate: publish-to-delivery p50/p99/p99.9.
    Latency,
    /// Paced at each --sweep rate: the highest rate with no loss.
    Sweep,
    /// Receiver memory: every subscriber follows --streams publishers.
    Memory,
    /// Throughput, latency, the sweep, then memory.
    All,
}

/// A rate such as 10000, 250k or 1.5M (events per second).
#[derive(Debug, Clone, Copy)]
pub struct Rate(pub f64);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, mul) = match s.chars().last() {
            Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
            Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
            _ => (s, 1.0),
        };
        match num.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(Rate(v * mul)),
            _ => Err(format!(
                "{s:?} is not a positive rate (write e.g. 10000, 250k, 1.5M)"
            )),
        }
    }
}

/// The bench's options (`cachecast-bench --help`).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure, comma-separated (e.g. throughput,latency).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub mode: Vec<Mode>,
    /// Systems to compare, comma-separated; --redis / --nats add theirs.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cachecast,udp,udp-gso"
    )]
    pub systems: Vec<System>,
    /// A Redis server to compare with (e.g. 127.0.0.1:6379).
    #[arg(long)]
    pub redis: Option<SocketAddr>,
    /// A NATS server to compare with (e.g. 127.0.0.1:4222).
    #[arg(long)]
    pub nats: Option<SocketAddr>,
    /// Also run cachecast with keys (cachecast-auth: every datagram
    /// authenticated, auth require), side by side with cachecast without
    /// keys in the same run; the summary gives the ratios against the
    /// targets (throughput >= 85 %, p99 within +10 µs).
    #[arg(long)]
    pub auth: bool,
    /// Also run cachecast with keys and encrypted bodies
    /// (cachecast-encrypt), side by side likewise.
    #[arg(long)]
    pub encrypt: bool,
    /// Also run cachecast over the unicast transport (cachecast-unicast:
    /// the publisher sends one copy to each subscriber), side by side with
    /// multicast: the cost of fan-out per subscriber.
    #[arg(long)]
    pub unicast: bool,
    /// Run on a LAN of network namespaces (scripts/bench.sh unicast-lan
    /// makes it): this process is host 1 (10.78.0.1) in namespace
    /// PREFIX-h1, subscriber i runs in PREFIX-h{i+2} (10.78.0.{i+2}), all
    /// joined by a bridge; TTL 1. cachecast systems only.
    #[arg(long, value_name = "PREFIX")]
    pub lan: Option<String>,
    /// The cachecast nodes' coalescing (`CoreConfig::coalesce`; only a
    /// publisher's datagrams are held), in microseconds: how long a
    /// datagram that is not full may wait for more events while datagrams
    /// go out more often than that. Default: the library's (50); at most
    /// 500. 0 turns it off: before and after in one build.
    #[arg(long, value_name = "MICROSECONDS")]
    pub coalesce_us: Option<u64>,
    /// The key file of the keyed runs (default: a fresh one in a private
    /// temporary directory, removed after).
    #[arg(long, env = "CACHECAST_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Subscriber processes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub subscribers: u16,
    /// Bytes per key (at least 16: the timestamp).
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Keys per event.
    #[arg(long, default_value_t = 1)]
    pub keys_per_event: usize,
    /// Events published in a throughput run.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Events per second in the latency and memory runs (10000, 250k, 1.5M).
    #[arg(long, default_value = "10k")]
    pub rate: Rate,
    /// Length of the latency and memory runs.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Offered rates of the sweep, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100k,300k,1M,2M,3M,4M,6M"
    )]
    pub sweep: Vec<Rate>,
    /// Length of each sweep step.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub step: Duration,
    /// Publishing nodes in the memory run (each its own stream).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub streams: u16,
    /// Repeat each measurement this many times and keep the median run (by
    /// p99 for latency, by delivered rate otherwise).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub runs: u16,
    /// Multicast group address (a port is picked per run).
    #[arg(long, default_value = "239.255.77.77")]
    pub group: Ipv4Addr,
    /// Any one run publishes for at most this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub max_time: Duration,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG plot of the sweep here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// The subscriber side of one run: a process of its own.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    #[arg(long, value_enum)]
    pub system: System,
    /// Multicast group:port, or the broker's address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Bytes per event (key size × keys per event).
    #[arg(long)]
    pub msg_len: usize,
    /// Stop once this many events arrived.
    #[arg(long)]
    pub expect: u64,
    /// Stop after this long without anything.
    #[arg(long, value_parser = parse_duration)]
    pub idle: Duration,
    #[arg(long)]
    pub name: String,
    /// The key file (cachecast-auth, cachecast-encrypt).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// cachecast-unicast: where this subscriber receives.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// cachecast-unicast: the publisher's address.
    #[arg(long)]
    pub peer: Option<SocketAddr>,
    /// On a namespace LAN (--lan): this host's address (TTL 1).
    #[arg(long)]
    pub interface: Option<std::net::Ipv4Addr>,
}

/// The result of one run of one system.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub system: System,
    /// Offered events/s; `None` for flat out.
    pub offered: Option<f64>,
    pub publisher: PubReport,
    pub subscribers: Vec<SubReport>,
    /// Derived figures, per subscriber (mean unless said).
    pub delivered_per_s: f64,
    pub delivered_min_per_s: f64,
    pub datagrams_per_s: f64,
    pub mb_per_s: f64,
    /// Fraction of published events not delivered (mean over subscribers).
    pub loss: f64,
    pub resets: u64,
    /// Resets by kind (`lagged`, `unavailable`, …), all subscribers.
    pub reset_kinds: BTreeMap<String, u64>,
    pub repaired: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// CPU seconds per million events: publisher, and a subscriber (mean).
    pub pub_cpu_s_per_m: f64,
    pub sub_cpu_s_per_m: f64,
    /// Peak RSS of the largest subscriber, MiB.
    pub sub_rss_mib: f64,
}

impl RunResult {
    fn new(
        system: System,
        offered: Option<f64>,
        p: PubReport,
        subs: Vec<SubReport>,
        msg_len: usize,
    ) -> Self {
        let n = subs.len().max(1) as f64;
        let window = |s: &SubReport| {
            let end = s.last_ns.max(p.start_ns + 1);
            (end - p.start_ns) as f64 * 1e-9
        };
        let rates: Vec<f64> = subs.iter().map(|s| s.received as f64 / window(s)).collect();
        let mean = |f: &dyn Fn(&SubReport) -> f64| subs.iter().map(f).sum::<f64>() / n;
        let mut p50s: Vec<u64> = subs.iter().map(|s| s.p50_ns).collect();
        p50s.sort_unstable();
        RunResult {
            system,
            offered,
            delivered_per_s: rates.iter().sum::<f64>() / n,
            delivered_min_per_s: rates.iter().copied().fold(f64::INFINITY, f64::min),
            datagrams_per_s: mean(&|s| s.datagrams as f64 / window(s)),
            mb_per_s: rates.iter().sum::<f64>() / n * msg_len as f64 / 1e6,
            loss: mean(&|s| {
                if p.published == 0 {
                    0.0
                } else {
                    1.0 - (s.received as f64 / p.published as f64).min(1.0)
                }
            }),
            resets: subs.iter().map(|s| s.resets).sum(),
            reset_kinds: subs.iter().flat_map(|s| &s.reset_kinds).fold(
                BTreeMap::new(),
                |mut m, (k, n)| {
                    *m.entry(k.clone()).or_default() += n;
                    m
                },
            ),
            repaired: subs.iter().map(|s| s.repaired).sum(),
            p50_us: p50s.get(p50s.len() / 2).copied().unwrap_or(0) as f64 / 1e3,
            p99_us: subs.iter().map(|s| s.p99_ns).max().unwrap_or(0) as f64 / 1e3,
            p999_us: subs.iter().map(|s| s.p999_ns).max().unwrap_or(0) as f64 / 1e3,
            pub_cpu_s_per_m: if p.published == 0 {
                0.0
            } else {
                p.cpu_s / p.published as f64 * 1e6
            },
            sub_cpu_s_per_m: mean(&|s| {
                if s.received == 0 {
                    0.0
                } else {
                    s.cpu_s / s.received as f64 * 1e6
                }
            }),
            sub_rss_mib: subs.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / 1024.0,
            publisher: p,
            subscribers: subs,
        }
    }

    /// True when nothing was lost, nothing Reset, no subscriber failed,
    /// and (paced) every subscriber kept up with the offered rate (within
    /// 5 %: a subscriber that falls ever further behind loses nothing in a
    /// short run, yet cannot sustain the rate).
    pub fn clean(&self) -> bool {
        let kept_up = self
            .offered
            .is_none_or(|r| self.delivered_min_per_s >= 0.95 * r);
        self.resets == 0
            && self.loss == 0.0
            && kept_up
            && self.subscribers.iter().all(|s| s.error.is_none())
    }
}

/// Everything one bench run measured.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub subscribers: u16,
    pub key_size: usize,
    pub keys_per_event: usize,
    /// Events (messages) per datagram for cachecast and raw UDP.
    pub events_per_datagram: usize,
    pub throughput: Vec<RunResult>,
    pub latency: Vec<RunResult>,
    pub sweep: Vec<RunResult>,
    /// cachecast subscribers following `streams` publishers (memory).
    pub memory: Vec<RunResult>,
    pub streams: u16,
    /// Systems that could not be run, and why.
    pub skipped: Vec<(System, String)>,
    /// Keyed cachecast against cachecast without keys, same run.
    pub auth: Vec<AuthComparison>,
}

/// A keyed cachecast system against cachecast without keys, measured in
/// the same run on the same machine.
#[derive(Debug, Clone, Serialize)]
pub struct AuthComparison {
    pub system: System,
    /// Flat-out delivered events/s, keyed over unkeyed (target >= 0.85).
    pub throughput_ratio: Option<f64>,
    /// p99 at the latency run's rate, keyed minus unkeyed, µs (target
    /// <= +10).
    pub p99_delta_us: Option<f64>,
    /// p50 likewise.
    pub p50_delta_us: Option<f64>,
    /// Publisher CPU per million events, keyed over unkeyed.
    pub pub_cpu_ratio: Option<f64>,
    /// Subscriber CPU per million events, keyed over unkeyed.
    pub sub_cpu_ratio: Option<f64>,
}

/// The targets of issue 14.
pub const AUTH_THROUGHPUT_TARGET: f64 = 0.85;
pub const AUTH_P99_TARGET_US: f64 = 10.0;

impl AuthComparison {
    fn of(system: System, r: &Results) -> AuthComparison {
        let pair = |v: &[RunResult], f: fn(&RunResult) -> f64| {
            let base = v.iter().find(|x| x.system == System::Cachecast).map(f)?;
            let keyed = v.iter().find(|x| x.system == system).map(f)?;
            Some((keyed, base))
        };
        let ratio = |p: Option<(f64, f64)>| p.and_then(|(k, b)| (b > 0.0).then(|| k / b));
        AuthComparison {
            system,
            throughput_ratio: ratio(pair(&r.throughput, |x| x.delivered_per_s)),
            p99_delta_us: pair(&r.latency, |x| x.p99_us).map(|(k, b)| k - b),
            p50_delta_us: pair(&r.latency, |x| x.p50_us).map(|(k, b)| k - b),
            pub_cpu_ratio: ratio(pair(&r.throughput, |x| x.pub_cpu_s_per_m)),
            sub_cpu_ratio: ratio(pair(&r.throughput, |x| x.sub_cpu_s_per_m)),
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    // The bench blocks (processes, pacing): keep it off the async runtime.
    tokio::task::spawn_blocking(move || run_blocking(args).map_err(|e| e.to_string()))
        .await?
        .map_err(Into::into)
}

fn run_blocking(mut args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.key_size < MIN_KEY_SIZE || args.key_size > cachecast::wire::MAX_KEY_LEN {
        return Err(format!(
            "--key-size must be {MIN_KEY_SIZE}..={} (it carries a 16-digit timestamp)",
            cachecast::wire::MAX_KEY_LEN
        )
        .into());
    }
    if args.keys_per_event == 0 {
        return Err("--keys-per-event must be at least 1".into());
    }
    let measures = |m: Mode| args.mode.contains(&m) || args.mode.contains(&Mode::All);
    if args.plot.is_some() && !measures(Mode::Sweep) {
        return Err("--plot draws the rate sweep: use it with --mode sweep or all".into());
    }
    if !args.group.is_multicast() {
        return Err(format!("--group {} is not a multicast address", args.group).into());
    }
    if let Some(us) = args.coalesce_us {
        if us > 500 {
            return Err("--coalesce-us: at most 500 (CoreConfig::coalesce's limit)".into());
        }
        let _ = cachecast_sys::COALESCE.set(std::time::Duration::from_micros(us));
    }
    if args.lan.is_some() {
        if args.systems.iter().any(|s| !s.is_cachecast())
            || args.redis.is_some()
            || args.nats.is_some()
        {
            return Err(
                "--lan runs cachecast systems only (--systems cachecast, with --unicast)".into(),
            );
        }
        let _ = cachecast_sys::LAN_HOST.set(std::net::Ipv4Addr::new(10, 78, 0, 1));
    }
    let sample = cachecast::wire::Event::Invalidate {
        keys: vec!["k".repeat(args.key_size); args.keys_per_event],
    };
    let max_datagram = cachecast::CoreConfig::default().max_datagram;
    let ev_len = cachecast::wire::check_event(&sample, max_datagram)
        .map_err(|e| format!("an event of this size cannot be published: {e}"))?;
    let per_datagram = ((max_datagram - cachecast::wire::DATA_OVERHEAD) / ev_len)
        .clamp(1, cachecast::wire::MAX_EVENTS);
    if args.redis.is_some() && !args.systems.contains(&System::Redis) {
        args.systems.push(System::Redis);
    }
    if args.nats.is_some() && !args.systems.contains(&System::Nats) {
        args.systems.push(System::Nats);
    }
    // Keyed runs sit right after cachecast without keys, which they are
    // compared with.
    let keyed: Vec<System> = [
        (args.auth, System::CachecastAuth),
        (args.encrypt, System::CachecastEncrypt),
        (args.unicast, System::CachecastUnicast),
    ]
    .into_iter()
    .filter(|(on, s)| *on && !args.systems.contains(s))
    .map(|(_, s)| s)
    .collect();
    if !keyed.is_empty() {
        if !args.systems.contains(&System::Cachecast) {
            args.systems.insert(0, System::Cachecast);
        }
        let at = args
            .systems
            .iter()
            .position(|s| *s == System::Cachecast)
            .unwrap_or(0)
            + 1;
        for (i, s) in keyed.into_iter().enumerate() {
            args.systems.insert(at + i, s);
        }
    }
    let key = if args.systems.iter().any(|s| s.keyed().is_some()) {
        Some(forged::BenchKey::new(args.key_file.clone()).map_err(|e| format!("key file: {e}"))?)
    } else {
        None
    };
    let mut results = Results {
        subscribers: args.subscribers,
        key_size: args.key_size,
        keys_per_event: args.keys_per_event,
        events_per_datagram: per_datagram,
        ..Results::default()
    };
    let mut systems = Vec::new();
    for &s in &args.systems {
        match s {
            System::Redis if args.redis.is_none() => results.skipped.push((
                s,
                "no --redis address (scripts/bench.sh --peers starts one)".into(),
            )),
            System::Nats if args.nats.is_none() => results.skipped.push((
                s,
                "no --nats address (scripts/bench.sh --peers starts one)".into(),
            )),
            _ if !systems.contains(&s) => systems.push(s),
            _ => {}
        }
    }
    for (s, why) in &results.skipped {
        eprintln!("bench: skipping {}: {why}", s.name());
    }
    let ctx = Ctx {
        args: &args,
        per_datagram,
        msg_len: args.key_size * args.keys_per_event,
        key_file: key.as_ref().map(|k| k.path.clone()),
    };
    if measures(Mode::Throughput) {
        let plan = ctx.plan(args.events, None);
        let r = ctx.medians(&systems, &plan, "throughput", &mut results.skipped);
        results.throughput.extend(r);
    }
    if measures(Mode::Latency) {
        let n = (args.rate.0 * args.duration.as_secs_f64()).ceil() as u64;
        let plan = ctx.plan(n.max(1), Some(args.rate.0));
        let r = ctx.medians(&systems, &plan, "latency", &mut results.skipped);
        results.latency.extend(r);
    }
    if measures(Mode::Sweep) {
        for &s in &systems {
            for rate in &args.sweep {
                let n = (rate.0 * args.step.as_secs_f64()).ceil() as u64;
                let plan = ctx.plan(n.max(1), Some(rate.0));
                if let Some(r) = ctx.median(s, &plan, "sweep", &mut results.skipped) {
                    results.sweep.push(r);
                }
            }
        }
    }
    if measures(Mode::Memory) {
        let n = (args.rate.0 * args.duration.as_secs_f64()).ceil() as u64;
        let plan = ctx.plan(n.max(1), Some(args.rate.0));
        results.streams = args.streams;
        if let Some(r) = ctx.median(System::Cachecast, &plan, "memory", &mut results.skipped) {
            results.memory.push(r);
        }
    }
    for &s in &systems {
        if s.keyed().is_some() {
            results.auth.push(AuthComparison::of(s, &results));
        }
    }
    if !args.quiet {
        eprint!("\r{:80}\r", "");
    }
    {
        let out = std::io::stdout();
        let mut out = out.lock();
        if args.json {
            serde_json::to_writer_pretty(&mut out, &results)?;
            writeln!(out)?;
        } else {
            print_tables(&mut out, &results)?;
        }
    }
    if let Some(path) = &args.plot {
        plot::write_svg(path, &results)?;
        eprintln!("bench: plot written to {}", path.display());
    }
    // A peer that is missing or fails is skipped; cachecast or raw UDP
    // failing is the bench failing (after printing what it measured).
    let failed: Vec<&str> = (results.skipped.iter())
        .filter(|(s, _)| !matches!(s, System::Redis | System::Nats))
        .map(|(s, _)| s.name())
        .collect();
    if !failed.is_empty() {
        return Err(format!("runs failed: {} (see above)", failed.join(", ")).into());
    }
    Ok(())
}

/// One run of cachecast (multicast, no keys) on the namespace LAN `lan`
/// (as `--lan`): this process is host 1, subscriber i runs on host i + 2.
/// For `cachecast-bench reliable`, which measures it beside the
/// reliable-multicast references.
pub(crate) fn cachecast_on_lan(
    lan: &str,
    subscribers: u16,
    plan: &Plan,
    group: Ipv4Addr,
    label: &str,
) -> Result<RunResult, Box<dyn std::error::Error>> {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        bench: BenchArgs,
    }
    let args = <Wrap as clap::Parser>::try_parse_from([
        "cachecast-bench".to_string(),
        "--systems".into(),
        "cachecast".into(),
        "--lan".into(),
        lan.into(),
        "--subscribers".into(),
        subscribers.to_string(),
        "--group".into(),
        group.to_string(),
        "--quiet".into(),
    ])?
    .bench;
    let _ = cachecast_sys::LAN_HOST.set(Ipv4Addr::new(10, 78, 0, 1));
    let ctx = Ctx {
        args: &args,
        per_datagram: 1,
        msg_len: plan.key_size * plan.keys_per_event,
        key_file: None,
    };
    ctx.run_once(System::Cachecast, plan, label, 0)
}

struct Ctx<'a> {
    args: &'a BenchArgs,
    per_datagram: usize,
    msg_len: usize,
    /// The key file of the keyed systems.
    key_file: Option<PathBuf>,
}

impl Ctx<'_> {
    fn plan(&self, events: u64, rate: Option<f64>) -> Plan {
        Plan {
            events,
            rate,
            key_size: self.args.key_size,
            keys_per_event: self.args.keys_per_event,
            max_time: self.args.max_time,
        }
    }

    /// `--runs` runs of `system`, keeping the median (see
    /// [`Ctx::medians`]).
    fn median(
        &self,
        system: System,
        plan: &Plan,
        label: &str,
        skipped: &mut Vec<(System, String)>,
    ) -> Option<RunResult> {
        self.medians(&[system], plan, label, skipped).pop()
    }

    /// `--runs` runs of each of `systems`, taking turns (run 1 of each,
    /// then run 2 of each, ...: a shared machine's slow minute falls on
    /// all of them, not on whichever ran then), keeping each one's median:
    /// by p99 for the latency runs (at a fixed rate the delivered rate says
    /// nothing, and one scheduling hiccup makes a p99), by delivered rate
    /// for the others. A system whose run fails is skipped from then on.
    fn medians(
        &self,
        systems: &[System],
        plan: &Plan,
        label: &str,
        skipped: &mut Vec<(System, String)>,
    ) -> Vec<RunResult> {
        let mut runs: Vec<Option<Vec<RunResult>>> = vec![Some(Vec::new()); systems.len()];
        for i in 0..self.args.runs {
            for (&system, runs) in systems.iter().zip(&mut runs) {
                let Some(done) = runs else { continue };
                match self.run_once(system, plan, label, i) {
                    Ok(r) => done.push(r),
                    Err(e) => {
                        eprintln!("\rbench: {} {label} failed: {e}", system.name());
                        skipped.push((system, format!("{label}: {e}")));
                        *runs = None;
                    }
                }
            }
        }
        runs.into_iter()
            .flatten()
            .filter(|r| !r.is_empty())
            .map(|mut runs| {
                if label == "latency" {
                    runs.sort_by(|a, b| a.p99_us.total_cmp(&b.p99_us));
                } else {
                    runs.sort_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s));
                }
                let mid = runs.len() / 2;
                runs.swap_remove(mid)
            })
            .collect()
    }

    fn addr(&self, system: System) -> SocketAddr {
        match system {
            System::Redis => self.args.redis.expect("checked"),
            System::Nats => self.args.nats.expect("checked"),
            // A fresh port per run: nothing of an earlier run arrives.
            _ => SocketAddr::from((self.args.group, rand::random::<u16>() % 30_000 + 20_000)),
        }
    }

    fn run_once(
        &self,
        system: System,
        plan: &Plan,
        label: &str,
        run: u16,
    ) -> Result<RunResult, Box<dyn std::error::Error>> {
        let addr = self.addr(system);
        // cachecast keeps repairing after the last publish: wait longer.
        let idle = if system.is_cachecast() {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        let keys = match (system.keyed(), &self.key_file) {
            (Some(encrypt), Some(path)) => Some(cachecast_sys::Keys {
                file: path.clone(),
                encrypt,
            }),
            (Some(_), None) => return Err("no key file for a keyed run".into()),
            _ => None,
        };
        // Unicast: the publisher on the run's port of 127.0.0.1, each
        // subscriber on a port free now.
        let unicast_ports: Vec<u16> = if system == System::CachecastUnicast {
            let held: Vec<std::net::UdpSocket> = (0..self.args.subscribers)
                .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
                .collect::<Result<_, _>>()?;
            held.iter()
                .map(|s| s.local_addr().map(|a| a.port()))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        // On a namespace LAN, host H is 10.78.0.H: the publisher 1, each
        // subscriber its own (so one port serves them all).
        let lan = self.args.lan.as_deref();
        let host = |h: u16| -> std::net::Ipv4Addr {
            if lan.is_some() {
                std::net::Ipv4Addr::new(10, 78, 0, h as u8)
            } else {
                std::net::Ipv4Addr::LOCALHOST
            }
        };
        let pub_addr = SocketAddr::from((host(1), addr.port()));
        let sub_addr = |i: u16, port: u16| SocketAddr::from((host(i + 2), port));
        let mut subs = Vec::new();
        for i in 0..self.args.subscribers {
            let mut key_arg = Vec::new();
            if let Some(k) = &keys {
                key_arg = vec!["--key-file".into(), k.file.display().to_string()];
            }
            if let Some(port) = unicast_ports.get(usize::from(i)) {
                key_arg.extend([
                    "--listen".into(),
                    sub_addr(i, *port).to_string(),
                    "--peer".into(),
                    pub_addr.to_string(),
                ]);
            }
            if lan.is_some() {
                key_arg.extend(["--interface".into(), host(i + 2).to_string()]);
            }
            subs.push(SubProcess::spawn(
                &[
                    "sub".into(),
                    "--system".into(),
                    system.name().into(),
                    "--addr".into(),
                    addr.to_string(),
                    "--msg-len".into(),
                    self.msg_len.to_string(),
                    "--expect".into(),
                    plan.events.to_string(),
                    "--idle".into(),
                    format!("{}ms", idle.as_millis()),
                    "--name".into(),
                    format!("bench-sub-{i}"),
                ]
                .into_iter()
                .chain(key_arg)
                .collect::<Vec<String>>(),
                lan.map(|p| format!("{p}-h{}", i + 2)).as_deref(),
            )?);
        }
        for s in &mut subs {
            s.wait_ready(Duration::from_secs(15))?;
        }
        PROGRESS.store(0, Ordering::Relaxed);
        let plan2 = plan.clone();
        let per_datagram = self.per_datagram;
        let unicast = (system == System::CachecastUnicast).then(|| cachecast_sys::Unicast {
            listen: pub_addr,
            peers: (unicast_ports.iter().enumerate())
                .map(|(i, p)| sub_addr(i as u16, *p))
                .collect(),
        });
        let streams = if label == "memory" {
            usize::from(self.args.streams)
        } else {
            1
        };
        // The publisher reports when it has published, and (cachecast)
        // stays up answering Naks until the subscribers are done: a
        // publisher that leaves early cannot repair, which is not what a
        // running service does.
        let (report_tx, report_rx) = mpsc::channel::<std::io::Result<PubReport>>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let publisher = std::thread::spawn(move || {
            common::tighten_timer_slack();
            let done = |r| {
                let _ = report_tx.send(r);
            };
            match system {
                System::Cachecast
                | System::CachecastAuth
                | System::CachecastEncrypt
                | System::CachecastUnicast => cachecast_sys::publish(
                    addr,
                    streams,
                    &plan2,
                    keys.as_ref(),
                    unicast.as_ref(),
                    done,
                    released,
                ),
                System::Udp => done(udp::publish(addr, &plan2, per_datagram, false)),
                System::UdpGso => done(udp::publish(addr, &plan2, per_datagram, true)),
                System::Redis => done(peers::publish(peers::Broker::Redis, addr, &plan2)),
                System::Nats => done(peers::publish(peers::Broker::Nats, addr, &plan2)),
            }
        });
        let t0 = Instant::now();
        let what = match plan.rate {
            None => format!("{label} {} flat out", system.name()),
            Some(r) => format!("{label} {} at {}/s", system.name(), si(r)),
        };
        let run_note = if self.args.runs > 1 {
            format!(" (run {}/{})", run + 1, self.args.runs)
        } else {
            String::new()
        };
        let report = loop {
            match report_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => break r.map_err(|e| format!("publisher: {e}"))?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the publisher stopped without a report".into())
                }
            }
            // Publishing stops at --max-time, and waiting for what was
            // handed over to leave takes at most as long again.
            if t0.elapsed() > plan.max_time * 2 + Duration::from_secs(10) {
                return Err("the publisher did not finish within twice --max-time".into());
            }
            if !self.args.quiet {
                let n = PROGRESS.load(Ordering::Relaxed);
                eprint!(
                    "\rbench: {what}{run_note}: {}/{} events, {:.1}s   ",
                    si(n as f64),
                    si(plan.events as f64),
                    t0.elapsed().as_secs_f64()
                );
            }
        };
        if !self.args.quiet {
            eprint!("\rbench: {what}{run_note}: published, waiting for subscribers      ");
        }
        // Subscribers stop on their own (all arrived, or idle); past this
        // deadline they are told to stop, then killed.
        let deadline = Instant::now() + Duration::from_secs(10) + idle;
        let mut reports = Vec::new();
        for s in &mut subs {
            reports.push(s.finish(deadline)?);
        }
        let _ = release.send(());
        publisher.join().map_err(|_| "the publisher panicked")?;
        Ok(RunResult::new(
            system,
            plan.rate,
            report,
            reports,
            self.msg_len,
        ))
    }
}

/// A subscriber child process.
struct SubProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl SubProcess {
    /// Spawns this binary with `args`, in network namespace `netns` if
    /// given (`ip netns exec`).
    fn spawn(args: &[String], netns: Option<&str>) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(SubProcess {
            child,
            stdin,
            lines,
        })
    }

    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l == "READY" => return Ok(()),
                Ok(l) if l.starts_with("REPORT ") => {
                    let json = l.strip_prefix("REPORT ").unwrap_or_default();
                    let r: SubReport = serde_json::from_str(json).unwrap_or_default();
                    return Err(format!(
                        "subscriber failed to start: {}",
                        r.error.unwrap_or_default()
                    ));
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    return Err(format!("subscriber did not start within {within:?}"));
                }
            }
        }
    }

    fn finish(&mut self, deadline: Instant) -> Result<SubReport, String> {
        let mut told = false;
        loop {
            let wait = if told {
                Duration::from_secs(5)
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match self.lines.recv_timeout(wait) {
                Ok(l) => {
                    if let Some(json) = l.strip_prefix("REPORT ") {
                        let _ = self.child.wait();
                        return serde_json::from_str(json)
                            .map_err(|e| format!("bad subscriber report: {e}"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !told => {
                    // Closing its standard input tells it to stop.
                    self.stdin = None;
                    told = true;
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err("a subscriber neither reported nor stopped".into());
                }
            }
        }
    }
}

impl Drop for SubProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `cachecast-bench sub`: one subscriber, reporting one JSON line. Runs on
/// a thread of its own (the subscriber builds its own runtime).
pub fn run_sub(args: SubArgs) -> Result<(), String> {
    std::thread::spawn(move || sub_main(args).map_err(|e| e.to_string()))
        .join()
        .map_err(|_| "the subscriber panicked".to_string())?
}

fn sub_main(args: SubArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(ip) = args.interface {
        let _ = cachecast_sys::LAN_HOST.set(ip);
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // End of input (the parent closed it, or died) means stop.
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    let done = Done {
        expect: args.expect,
        idle: args.idle,
        stop,
    };
    // The parent may be gone (interrupted): a closed pipe is not an error.
    let ready = || {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "READY").and_then(|()| out.flush());
    };
    let result = match args.system {
        System::Cachecast
        | System::CachecastAuth
        | System::CachecastEncrypt
        | System::CachecastUnicast => {
            let unicast = match (args.listen, args.peer) {
                (Some(listen), Some(peer)) => Some(cachecast_sys::Unicast {
                    listen,
                    peers: vec![peer],
                }),
                _ => None,
            };
            let keys = match (args.system.keyed(), &args.key_file) {
                (Some(encrypt), Some(file)) => Some(cachecast_sys::Keys {
                    file: file.clone(),
                    encrypt,
                }),
                _ => None,
            };
            cachecast_sys::subscribe(
                args.addr,
                &args.name,
                keys.as_ref(),
                unicast.as_ref(),
                done,
                ready,
            )
            .map(|(rec, stats)| {
                let mut r = rec.report();
                r.resets = stats.protocol.resets_total();
                r.reset_kinds = (stats.protocol.resets.iter())
                    .map(|(k, n)| (k.to_string(), *n))
                    .collect();
                r.repaired = stats.protocol.events_repaired;
                r.naks = stats.protocol.naks_sent;
                let rt = &stats.protocol.repair_time;
                r.repair_p50_us = rt.quantile_us(0.5);
                r.repair_p99_us = rt.quantile_us(0.99);
                r.repair_max_us = rt.quantile_us(1.0);
                r.datagrams = stats.protocol.datagrams_received;
                r
            })
        }
        System::Udp => {
            udp::subscribe(args.addr, args.msg_len, false, &done, ready).map(|r| r.report())
        }
        System::UdpGso => {
            udp::subscribe(args.addr, args.msg_len, true, &done, ready).map(|r| r.report())
        }
        System::Redis => {
            peers::subscribe(peers::Broker::Redis, args.addr, args.msg_len, &done, ready)
                .map(|r| r.report())
        }
        System::Nats => {
            peers::subscribe(peers::Broker::Nats, args.addr, args.msg_len, &done, ready)
                .map(|r| r.report())
        }
    };
    let report = result.unwrap_or_else(|e| SubReport {
        error: Some(e.to_string()),
        ..SubReport::default()
    });
    let _ = writeln!(
        std::io::stdout(),
        "REPORT {}",
        serde_json::to_string(&report)?
    );
    Ok(())
}

/// 1234567 → "1.23M".
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn ratio(v: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "—".into(),
    }
}

fn print_tables(out: &mut impl Write, r: &Results) -> std::io::Result<()> {
    writeln!(
        out,
        "cachecast-bench: 1 publisher → {} subscribers, {}-byte keys, {} key(s) per event, {} events per datagram (cachecast and raw UDP)",
        r.subscribers, r.key_size, r.keys_per_event, r.events_per_datagram
    )?;
    let base = |v: &[RunResult], f: fn(&RunResult) -> f64| {
        v.iter().find(|x| x.system == System::Cachecast).map(f)
    };
    // The system column: as wide as the longest name shown.
    let w = (r.throughput.iter().chain(&r.latency))
        .map(|x| x.system.name().len())
        .max()
        .unwrap_or(0)
        .max(10);
    if !r.throughput.is_empty() {
        writeln!(
            out,
            "\nflat out (per subscriber; ratio = system / cachecast)"
        )?;
        writeln!(
            out,
            "{:<w$} {:>11} {:>7} {:>11} {:>8} {:>7} {:>7} {:>8} {:>9} {:>9} {:>9} {:>8}",
            "system",
            "events/s",
            "ratio",
            "datagrams/s",
            "MB/s",
            "loss",
            "Resets",
            "repaired",
            "p99",
            "pub CPU/M",
            "sub CPU/M",
            "sub RSS"
        )?;
        let b = base(&r.throughput, |x| x.delivered_per_s);
        for x in &r.throughput {
            writeln!(
                out,
                "{:<w$} {:>11} {:>7} {:>11} {:>8.1} {:>6.2}% {:>7} {:>8} {:>9} {:>8.2}s {:>8.2}s {:>5.1}MiB",
                x.system.name(),
                si(x.delivered_per_s),
                ratio(x.delivered_per_s, b),
                si(x.datagrams_per_s),
                x.mb_per_s,
                x.loss * 100.0,
                x.resets,
                x.repaired,
                us(x.p99_us),
                x.pub_cpu_s_per_m,
                x.sub_cpu_s_per_m,
                x.sub_rss_mib
            )?;
        }
    }
    if !r.latency.is_empty() {
        let rate = r.latency[0].offered.unwrap_or(0.0);
        writeln!(
            out,
            "\nlatency at {}/s, publish → delivery (ratio = system / cachecast)",
            si(rate)
        )?;
        writeln!(
            out,
            "{:<w$} {:>9} {:>7} {:>9} {:>7} {:>9} {:>7} {:>7}",
            "system", "p50", "ratio", "p99", "ratio", "p99.9", "loss", "Resets"
        )?;
        let b50 = base(&r.latency, |x| x.p50_us);
        let b99 = base(&r.latency, |x| x.p99_us);
        for x in &r.latency {
            writeln!(
                out,
                "{:<w$} {:>9} {:>7} {:>9} {:>7} {:>9} {:>6.2}% {:>7}",
                x.system.name(),
                us(x.p50_us),
                ratio(x.p50_us, b50),
                us(x.p99_us),
                ratio(x.p99_us, b99),
                us(x.p999_us),
                x.loss * 100.0,
                x.resets
            )?;
        }
    }
    if !r.sweep.is_empty() {
        writeln!(
            out,
            "\nrate sweep (delivered per subscriber, p99, loss, Resets)"
        )?;
        let mut systems: Vec<System> = r.sweep.iter().map(|x| x.system).collect();
        systems.dedup();
        for s in systems {
            let rows: Vec<&RunResult> = r.sweep.iter().filter(|x| x.system == s).collect();
            let best = rows
                .iter()
                .filter(|x| x.clean())
                .map(|x| x.offered.unwrap_or(0.0))
                .fold(0.0, f64::max);
            writeln!(
                out,
                "{}: highest rate with nothing lost: {}",
                s.name(),
                if best > 0.0 {
                    format!("{}/s", si(best))
                } else {
                    "none".into()
                }
            )?;
            for x in rows {
                writeln!(
                    out,
                    "  offered {:>8}/s  delivered {:>8}/s  p99 {:>9}  loss {:>6.2}%  Resets {}",
                    si(x.offered.unwrap_or(0.0)),
                    si(x.delivered_per_s),
                    us(x.p99_us),
                    x.loss * 100.0,
                    x.resets
                )?;
            }
        }
    }
    if let Some(x) = r.memory.first() {
        writeln!(
            out,
            "\nmemory: a subscriber following {} streams ({} events at {}/s in all): peak RSS {:.1} MiB (largest of {} subscribers), {} Resets, {:.2}% loss",
            r.streams,
            x.publisher.published,
            si(x.offered.unwrap_or(0.0)),
            x.sub_rss_mib,
            x.subscribers.len(),
            x.resets,
            x.loss * 100.0
        )?;
    }
    for x in r
        .throughput
        .iter()
        .chain(&r.latency)
        .chain(&r.sweep)
        .chain(&r.memory)
    {
        if !x.reset_kinds.is_empty() {
            let kinds: Vec<String> = (x.reset_kinds.iter())
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            let at = x
                .offered
                .map_or("flat out".into(), |r| format!("{}/s", si(r)));
            writeln!(
                out,
                "\n{} Resets at {at}: {}",
                x.system.name(),
                kinds.join(", ")
            )?;
        }
        for (i, s) in x.subscribers.iter().enumerate() {
            if let Some(e) = &s.error {
                writeln!(out, "\n{} subscriber {i} failed: {e}", x.system.name())?;
            }
        }
    }
    for a in &r.auth {
        writeln!(
            out,
            "\n{} against cachecast without keys (same run):",
            a.system.name()
        )?;
        let met = |ok: bool| if ok { "met" } else { "MISSED" };
        if let Some(x) = a.throughput_ratio {
            writeln!(
                out,
                "  flat-out throughput {:.1} % of unkeyed (target >= {:.0} %: {}); CPU per event: publisher {}, subscriber {}",
                x * 100.0,
                AUTH_THROUGHPUT_TARGET * 100.0,
                met(x >= AUTH_THROUGHPUT_TARGET),
                a.pub_cpu_ratio.map_or("—".into(), |v| format!("{v:.2}×")),
                a.sub_cpu_ratio.map_or("—".into(), |v| format!("{v:.2}×")),
            )?;
        }
        if let (Some(d99), Some(d50)) = (a.p99_delta_us, a.p50_delta_us) {
            let rate = r.latency.first().and_then(|x| x.offered).unwrap_or(0.0);
            writeln!(
                out,
                "  latency at {}/s: p99 {:+.1} µs, p50 {:+.1} µs (target p99 within +{:.0} µs: {})",
                si(rate),
                d99,
                d50,
                AUTH_P99_TARGET_US,
                met(d99 <= AUTH_P99_TARGET_US)
            )?;
        }
    }
    for (s, why) in &r.skipped {
        writeln!(out, "\nskipped {}: {why}", s.name())?;
    }
    Ok(())
}

/// Microseconds, as µs below a millisecond and ms above.
pub(crate) fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}ms", v / 1000.0)
    } else {
        format!("{v:.0}µs")
    }
}
