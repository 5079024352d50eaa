//! `cachecast-bench reliable`: cachecast beside the NAK-based
//! reliable-multicast references, OpenPGM (RFC 3208, ZeroMQ `epgm://`) and
//! NORM (RFC 5740, ZeroMQ `norm://`), on a LAN of network namespaces, in
//! one run.
//!
//! The references run through the system libzmq (Debian's libzmq5 4.3.4
//! is built with both) and python3-zmq, as `bench/zmq_peer.py` processes:
//! the publisher in this process's namespace (host 1, 10.78.0.1), each
//! subscriber on a host of its own (`PREFIX-h{i+2}`, 10.78.0.{i+2}), as
//! cachecast's own `--lan` runs do. Measured for each system:
//!
//! 1. flat out, 1 → 3 and 1 → 1 subscribers: delivered messages/s per
//!    subscriber, CPU seconds per million messages (publisher, subscriber);
//! 2. paced, 1 → 3, with `--losses` percent of the UDP datagrams arriving at
//!    subscriber 1 dropped by an nft rule in its namespace (`numgen random
//!    mod 100 < N drop`): the fraction delivered at each subscriber, whether
//!    the application was told of what it lost (cachecast: `Reset`s;
//!    ZeroMQ has no such signal, so the peer counts the sequence numbers it
//!    never saw itself), and the time to repair (cachecast: its
//!    `repair_time`; the references deliver in order, so the lossy
//!    subscriber's publish → delivery latency is what repair costs it).
//!
//! Output of the peer processes is untrusted: lines are read with a
//! bounded length ([`read_line_bounded`]) and parsed with serde into plain
//! numbers; nothing in them can panic the bench. Every process has a
//! deadline and is killed when it passes.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::common::Plan;
use crate::{parse_duration, si, Rate};

/// `cachecast-bench reliable --help`.
#[derive(Debug, Clone, Args)]
pub struct ReliableArgs {
    /// The namespace LAN to run on (scripts/bench.sh reliable makes it):
    /// this process runs in PREFIX-h1 (10.78.0.1), subscriber i in
    /// PREFIX-h{i+2} (10.78.0.{i+2}), interface cc0.
    #[arg(long, value_name = "PREFIX")]
    pub lan: String,
    /// The reference peer program.
    #[arg(long, default_value = "bench/zmq_peer.py")]
    pub peer_script: PathBuf,
    /// The Python that has zmq (the distribution's python3-zmq).
    #[arg(long, default_value = "/usr/bin/python3")]
    pub python: PathBuf,
    /// Run cachecast only.
    #[arg(long)]
    pub no_peers: bool,
    /// Messages of a flat-out cachecast run.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Messages of a flat-out OpenPGM run (its Python publisher sends
    /// about 300 k/s).
    #[arg(long, default_value_t = 200_000)]
    pub pgm_events: u64,
    /// Messages of a flat-out NORM run (it carries about 10 k/s here).
    #[arg(long, default_value_t = 30_000)]
    pub norm_events: u64,
    /// Receive loss at subscriber 1 in the loss runs, percent,
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,30")]
    pub losses: Vec<u8>,
    /// Messages of a loss run.
    #[arg(long, default_value_t = 20_000)]
    pub loss_events: u64,
    /// Rate of the loss runs, messages/s.
    #[arg(long, default_value = "10k")]
    pub loss_rate: Rate,
    /// ZMQ_RATE of the PGM publisher, kbit/s (libzmq's default, 100, would
    /// carry about 300 messages/s).
    #[arg(long, default_value_t = 1_000_000)]
    pub zmq_rate: u32,
    /// ZMQ_RECOVERY_IVL, ms: how far back the PGM publisher repairs.
    #[arg(long, default_value_t = 10_000)]
    pub recovery_ivl: u32,
    /// Repeat each measurement this many times (systems taking turns) and
    /// keep the median (by delivered rate flat out, by delivered fraction
    /// at the lossy subscriber under loss).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub runs: u16,
    /// Multicast group (a port is picked per run).
    #[arg(long, default_value = "239.255.78.78")]
    pub group: Ipv4Addr,
    /// Any one run publishes for at most this long.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub max_time: Duration,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// A system of this benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sys {
    Cachecast,
    /// ZeroMQ PUB/SUB over OpenPGM (`epgm://`).
    Pgm,
    /// ZeroMQ PUB/SUB over NORM (`norm://`).
    Norm,
}

impl Sys {
    pub fn name(self) -> &'static str {
        match self {
            Sys::Cachecast => "cachecast",
            Sys::Pgm => "zmq epgm (OpenPGM)",
            Sys::Norm => "zmq norm (NORM)",
        }
    }

    fn transport(self) -> &'static str {
        match self {
            Sys::Pgm => "epgm",
            _ => "norm",
        }
    }
}

/// One subscriber's outcome, whatever the system.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SubOutcome {
    pub received: u64,
    /// Delivered messages per second, from the publisher's start to this
    /// subscriber's last delivery.
    pub per_s: f64,
    /// CPU seconds per million messages received.
    pub cpu_s_per_m: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// What the application was told it lost: cachecast's `Reset`s;
    /// `None` where the system has no such signal.
    pub resets: Option<u64>,
    /// Sequence numbers the application saw skipped by itself (the
    /// references), or events cachecast repaired.
    pub gaps_seen: u64,
    pub repaired: u64,
    /// cachecast: time from noticing a gap to its repair, µs.
    pub repair_p50_us: u64,
    pub repair_p99_us: u64,
    pub error: Option<String>,
}

/// One run of one system in one scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunRow {
    pub system: String,
    pub subscribers: u16,
    /// Receive loss at subscriber 1, percent (0: none).
    pub loss_pct: u8,
    /// Offered messages/s, `None` flat out.
    pub rate: Option<f64>,
    pub published: u64,
    pub pub_cpu_s_per_m: f64,
    pub subs: Vec<SubOutcome>,
}

impl RunRow {
    fn mean(&self, f: impl Fn(&SubOutcome) -> f64) -> f64 {
        if self.subs.is_empty() {
            return 0.0;
        }
        self.subs.iter().map(f).sum::<f64>() / self.subs.len() as f64
    }

    /// Fraction of what was published that subscriber `i` received.
    pub fn fraction(&self, i: usize) -> f64 {
        match self.subs.get(i) {
            Some(s) if self.published > 0 => (s.received as f64 / self.published as f64).min(1.0),
            _ => 0.0,
        }
    }
}

// ------------------------------------------------------------ peer output

/// The longest line a peer may print; longer lines are dropped.
pub const MAX_LINE: usize = 64 * 1024;

/// Reads one line of at most `max` bytes (without its newline) into `buf`.
/// `Ok(false)` at the end of input. A longer line is consumed whole and
/// replaced by an empty one, so hostile output cannot grow memory.
pub fn read_line_bounded(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    buf.clear();
    let mut too_long = false;
    loop {
        let (done, used) = {
            let avail = r.fill_buf()?;
            if avail.is_empty() {
                return Ok(!buf.is_empty() || too_long);
            }
            match avail.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if !too_long && buf.len() + i <= max {
                        buf.extend_from_slice(&avail[..i]);
                    } else {
                        too_long = true;
                    }
                    (true, i + 1)
                }
                None => {
                    if !too_long && buf.len() + avail.len() <= max {
                        buf.extend_from_slice(avail);
                    } else {
                        too_long = true;
                    }
                    (false, avail.len())
                }
            }
        };
        r.consume(used);
        if done {
            if too_long {
                buf.clear();
            }
            return Ok(true);
        }
    }
}

/// A subscriber's report (`REPORT {json}` of bench/zmq_peer.py).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PeerSubReport {
    pub received: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub cpu_s: f64,
    pub seq_gaps: u64,
    pub zmq_errors: u64,
    pub error: Option<String>,
}

/// A publisher's report (`PUBLISHED {json}` then `REPORT {json}`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PeerPubReport {
    pub published: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub cpu_s: f64,
    pub error: Option<String>,
}

/// Parses `WORD {json}` into `T`; `None` if the line is another word.
pub fn parse_tagged<T: serde::de::DeserializeOwned>(
    line: &str,
    word: &str,
) -> Option<Result<T, String>> {
    let rest = line.strip_prefix(word)?.strip_prefix(' ')?;
    Some(serde_json::from_str(rest).map_err(|e| format!("bad {word} line from a peer: {e}")))
}

/// Finite and not negative, else 0 (a peer's floats are untrusted).
fn sane(v: f64) -> f64 {
    if v.is_finite() && v >= 0.0 {
        v
    } else {
        0.0
    }
}

/// A reference subscriber's outcome, against its publisher's start.
pub fn peer_outcome(r: &PeerSubReport, pub_start_ns: u64) -> SubOutcome {
    let window = r.last_ns.saturating_sub(pub_start_ns).max(1) as f64 * 1e-9;
    let us = |ns: u64| ns as f64 / 1e3;
    SubOutcome {
        received: r.received,
        per_s: r.received as f64 / window,
        cpu_s_per_m: if r.received == 0 {
            0.0
        } else {
            sane(r.cpu_s) / r.received as f64 * 1e6
        },
        p50_us: us(r.p50_ns),
        p99_us: us(r.p99_ns),
        max_us: us(r.max_ns),
        resets: None,
        gaps_seen: r.seq_gaps,
        repaired: 0,
        repair_p50_us: 0,
        repair_p99_us: 0,
        error: r
            .error
            .clone()
            .or_else(|| (r.zmq_errors > 0).then(|| format!("{} zmq errors", r.zmq_errors))),
    }
}

// ------------------------------------------------------------ processes

/// A peer process: its standard input (closing it says stop) and its
/// standard output, line by line, bounded.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(mut cmd: Command) -> std::io::Result<Peer> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while let Ok(true) = read_line_bounded(&mut r, &mut buf, MAX_LINE) {
                if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                    break;
                }
            }
        });
        Ok(Peer {
            child,
            stdin,
            lines,
        })
    }

    /// The first line starting with `word` before `deadline`.
    fn expect(&mut self, word: &str, deadline: Instant) -> Result<String, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(word) => return Ok(l),
                Ok(l) if l.starts_with("REPORT ") => {
                    return Err(format!("the peer stopped early: {}", truncate(&l, 300)))
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no {word} from the peer in time"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the peer exited without {word}"))
                }
            }
        }
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Its `REPORT`: waits until `deadline`, then tells it to stop and
    /// waits 5 s more.
    fn report(&mut self, deadline: Instant) -> Result<String, String> {
        match self.expect("REPORT ", deadline) {
            Ok(l) => Ok(l),
            Err(_) => {
                self.close_stdin();
                self.expect("REPORT ", Instant::now() + Duration::from_secs(5))
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The nft table that drops receive traffic in one namespace; removed on
/// drop (and with the namespace by scripts/bench.sh in any case).
struct LossRule {
    netns: String,
}

const NFT_TABLE: &str = "cachecast_bench_loss";

impl LossRule {
    fn install(netns: &str, pct: u8) -> Result<LossRule, String> {
        let rules = format!(
            "table ip {NFT_TABLE} {{\n chain input {{ type filter hook input priority 0; policy accept;\n  ip protocol udp numgen random mod 100 < {} drop\n }}\n}}\n",
            pct.min(100)
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(rules.as_bytes())
                .map_err(|e| format!("nft: {e}"))?;
        }
        let st = child.wait().map_err(|e| format!("nft: {e}"))?;
        if !st.success() {
            return Err(format!("nft in {netns} failed ({st})"));
        }
        Ok(LossRule {
            netns: netns.into(),
        })
    }
}

impl Drop for LossRule {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "nft",
                "delete",
                "table",
                "ip",
                NFT_TABLE,
            ])
            .status();
    }
}

// ------------------------------------------------------------ runs

struct Scenario {
    subscribers: u16,
    loss_pct: u8,
    events: u64,
    rate: Option<f64>,
}

fn port() -> u16 {
    rand::random::<u16>() % 30_000 + 20_000
}

fn run_cachecast(a: &ReliableArgs, sc: &Scenario) -> Result<RunRow, String> {
    let plan = Plan {
        events: sc.events,
        rate: sc.rate,
        key_size: 32,
        keys_per_event: 1,
        max_time: a.max_time,
    };
    let label = if sc.loss_pct > 0 {
        "loss"
    } else {
        "throughput"
    };
    let r = crate::cachecast_on_lan(&a.lan, sc.subscribers, &plan, a.group, label)
        .map_err(|e| e.to_string())?;
    let subs = r
        .subscribers
        .iter()
        .map(|s| {
            let window = s.last_ns.saturating_sub(r.publisher.start_ns).max(1) as f64 * 1e-9;
            SubOutcome {
                received: s.received,
                per_s: s.received as f64 / window,
                cpu_s_per_m: if s.received == 0 {
                    0.0
                } else {
                    s.cpu_s / s.received as f64 * 1e6
                },
                p50_us: s.p50_ns as f64 / 1e3,
                p99_us: s.p99_ns as f64 / 1e3,
                max_us: s.max_ns as f64 / 1e3,
                resets: Some(s.resets),
                gaps_seen: 0,
                repaired: s.repaired,
                repair_p50_us: s.repair_p50_us,
                repair_p99_us: s.repair_p99_us,
                error: s.error.clone(),
            }
        })
        .collect();
    Ok(RunRow {
        system: Sys::Cachecast.name().into(),
        subscribers: sc.subscribers,
        loss_pct: sc.loss_pct,
        rate: sc.rate,
        published: r.publisher.published,
        pub_cpu_s_per_m: r.pub_cpu_s_per_m,
        subs,
    })
}

fn run_peer(a: &ReliableArgs, sys: Sys, sc: &Scenario) -> Result<RunRow, String> {
    let port = port().to_string();
    let group = a.group.to_string();
    let idle = if sc.loss_pct > 0 { "5" } else { "2" };
    let max_time = format!("{:.1}", a.max_time.as_secs_f64());
    let iface = |h: u16| match sys {
        Sys::Pgm => format!("10.78.0.{h}"),
        _ => "cc0".into(),
    };
    let base = |role: &str, h: u16| {
        let mut c = Command::new(&a.python);
        c.arg(&a.peer_script).args([
            role,
            "--transport",
            sys.transport(),
            "--iface",
            &iface(h),
            "--group",
            &group,
            "--port",
            &port,
            "--zmq-rate",
            &a.zmq_rate.to_string(),
            "--recovery-ivl",
            &a.recovery_ivl.to_string(),
            "--max-time",
            &max_time,
        ]);
        c
    };
    let mut subs = Vec::new();
    for i in 0..sc.subscribers {
        let h = i + 2;
        let mut c = Command::new("ip");
        let inner = base("sub", h);
        c.args(["netns", "exec", &format!("{}-h{h}", a.lan)])
            .arg(inner.get_program())
            .args(inner.get_args())
            .args(["--expect", &sc.events.to_string(), "--idle", idle]);
        subs.push(Peer::spawn(c).map_err(|e| format!("{}: {e}", a.python.display()))?);
    }
    for s in &mut subs {
        s.expect("READY", Instant::now() + Duration::from_secs(15))?;
    }
    let mut c = base("pub", 1);
    c.args(["--events", &sc.events.to_string()]);
    if let Some(r) = sc.rate {
        c.args(["--rate", &format!("{r}")]);
    }
    let mut publisher = Peer::spawn(c).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let line = publisher.expect("PUBLISHED ", t0 + a.max_time + Duration::from_secs(10))?;
    let published: PeerPubReport =
        parse_tagged(&line, "PUBLISHED").unwrap_or_else(|| Err("no PUBLISHED".into()))?;
    // Everything handed to ZeroMQ is still to be sent (rate limits,
    // congestion control) and repaired: the subscribers stop on their own
    // (all arrived, or idle), within max_time of the publish at most.
    let deadline = Instant::now() + a.max_time + Duration::from_secs(8);
    let mut outcomes = Vec::new();
    for s in &mut subs {
        let o = match s.report(deadline) {
            Ok(l) => match parse_tagged::<PeerSubReport>(&l, "REPORT") {
                Some(Ok(r)) => peer_outcome(&r, published.start_ns),
                Some(Err(e)) => SubOutcome {
                    error: Some(e),
                    ..SubOutcome::default()
                },
                None => SubOutcome::default(),
            },
            Err(e) => SubOutcome {
                error: Some(e),
                ..SubOutcome::default()
            },
        };
        outcomes.push(o);
    }
    publisher.close_stdin();
    let line = publisher.expect("REPORT ", Instant::now() + Duration::from_secs(10))?;
    let rep: PeerPubReport =
        parse_tagged(&line, "REPORT").unwrap_or_else(|| Err("no REPORT".into()))?;
    if let Some(e) = rep.error {
        return Err(format!("publisher: {e}"));
    }
    Ok(RunRow {
        system: sys.name().into(),
        subscribers: sc.subscribers,
        loss_pct: sc.loss_pct,
        rate: sc.rate,
        published: rep.published,
        pub_cpu_s_per_m: if rep.published == 0 {
            0.0
        } else {
            sane(rep.cpu_s) / rep.published as f64 * 1e6
        },
        subs: outcomes,
    })
}

/// Whether the peer program can run `transport` here (python3-zmq with
/// it); the reason if not.
fn peer_available(a: &ReliableArgs, sys: Sys) -> Result<(), String> {
    if !a.peer_script.is_file() {
        return Err(format!("{} not found", a.peer_script.display()));
    }
    let t = match sys {
        Sys::Pgm => "pgm",
        _ => "norm",
    };
    let out = Command::new(&a.python)
        .args([
            "-c",
            &format!("import sys, zmq; sys.exit(0 if zmq.has('{t}') else 3)"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{}: {e}", a.python.display()))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(format!("this libzmq is built without {t}")),
        _ => Err(format!(
            "{} cannot import zmq (install python3-zmq): {}",
            a.python.display(),
            truncate(String::from_utf8_lossy(&out.stderr).trim(), 200)
        )),
    }
}

/// Everything one `reliable` run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub flat: Vec<RunRow>,
    pub loss: Vec<RunRow>,
    pub skipped: Vec<(String, String)>,
}

pub fn run(a: ReliableArgs) -> Result<(), String> {
    let mut systems = vec![Sys::Cachecast];
    let mut report = Report::default();
    if !a.no_peers {
        for s in [Sys::Pgm, Sys::Norm] {
            match peer_available(&a, s) {
                Ok(()) => systems.push(s),
                Err(e) => {
                    eprintln!("bench: skipping {}: {e}", s.name());
                    report.skipped.push((s.name().into(), e));
                }
            }
        }
    }
    let events = |s: Sys| match s {
        Sys::Cachecast => a.events,
        Sys::Pgm => a.pgm_events,
        Sys::Norm => a.norm_events,
    };
    let mut scenarios: Vec<(Scenario, bool)> = Vec::new();
    for n in [3u16, 1] {
        scenarios.push((
            Scenario {
                subscribers: n,
                loss_pct: 0,
                events: 0,
                rate: None,
            },
            false,
        ));
    }
    for &pct in &a.losses {
        scenarios.push((
            Scenario {
                subscribers: 3,
                loss_pct: pct.min(100),
                events: a.loss_events,
                rate: Some(a.loss_rate.0),
            },
            true,
        ));
    }
    for (sc, lossy) in &scenarios {
        let mut runs: Vec<Vec<RunRow>> = vec![Vec::new(); systems.len()];
        for run in 0..a.runs {
            for (k, &s) in systems.iter().enumerate() {
                let sc = Scenario {
                    events: if *lossy { sc.events } else { events(s) },
                    ..*sc
                };
                eprintln!(
                    "bench: {} {}, 1 → {}{} (run {}/{})",
                    s.name(),
                    match sc.rate {
                        Some(r) => format!("{} at {}/s", si(sc.events as f64), si(r)),
                        None => format!("{} flat out", si(sc.events as f64)),
                    },
                    sc.subscribers,
                    if sc.loss_pct > 0 {
                        format!(", {} % receive loss at subscriber 1", sc.loss_pct)
                    } else {
                        String::new()
                    },
                    run + 1,
                    a.runs
                );
                let rule = if sc.loss_pct > 0 {
                    Some(LossRule::install(&format!("{}-h2", a.lan), sc.loss_pct)?)
                } else {
                    None
                };
                let r = match s {
                    Sys::Cachecast => run_cachecast(&a, &sc),
                    _ => run_peer(&a, s, &sc),
                };
                drop(rule);
                match r {
                    Ok(row) => runs[k].push(row),
                    Err(e) => {
                        eprintln!("bench: {} failed: {e}", s.name());
                        report.skipped.push((s.name().into(), e));
                    }
                }
            }
        }
        for mut rows in runs.into_iter().filter(|r| !r.is_empty()) {
            if *lossy {
                rows.sort_by(|x, y| x.fraction(0).total_cmp(&y.fraction(0)));
            } else {
                rows.sort_by(|x, y| x.mean(|s| s.per_s).total_cmp(&y.mean(|s| s.per_s)));
            }
            let mid = rows.len() / 2;
            let row = rows.swap_remove(mid);
            if *lossy {
                report.loss.push(row);
            } else {
                report.flat.push(row);
            }
        }
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(|e| e.to_string())?;
        writeln!(out).map_err(|e| e.to_string())?;
    } else {
        write!(out, "{}", format_report(&report, a.runs)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ------------------------------------------------------------ the table

fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// The report as Markdown tables (what README's Speed section shows).
pub fn format_report(r: &Report, runs: u16) -> String {
    let mut s = String::new();
    let median = if runs > 1 {
        format!(", median of {runs}")
    } else {
        String::new()
    };
    if !r.flat.is_empty() {
        s.push_str(&format!(
            "\nflat out, namespace LAN, 32-byte messages{median} (ratio: to cachecast with as many subscribers)\n\n"
        ));
        s.push_str("| system | subscribers | delivered msgs/s per subscriber | ratio | lost | publisher CPU s/M | subscriber CPU s/M |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        for x in &r.flat {
            let base = r
                .flat
                .iter()
                .find(|b| b.system == Sys::Cachecast.name() && b.subscribers == x.subscribers)
                .map(|b| b.mean(|s| s.per_s));
            let v = x.mean(|s| s.per_s);
            let ratio = match base {
                Some(b) if b > 0.0 => format!("{:.3}×", v / b),
                _ => "—".into(),
            };
            let lost = 1.0 - x.mean(|s| s.received as f64) / x.published.max(1) as f64;
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.2} | {:.2} |\n",
                x.system,
                x.subscribers,
                si(v),
                ratio,
                pct(lost.max(0.0)),
                x.pub_cpu_s_per_m,
                x.mean(|s| s.cpu_s_per_m)
            ));
        }
    }
    if !r.loss.is_empty() {
        let rate = r.loss[0].rate.unwrap_or(0.0);
        s.push_str(&format!(
            "\nreceive loss at subscriber 1 of 3 (nft), {} messages at {}/s{median}\n\n",
            si(r.loss[0].published as f64),
            si(rate)
        ));
        s.push_str("| system | loss | delivered at the lossy subscriber | at the others (least) | application told | lossy subscriber: latency p50 / p99 / max | time to repair p50 / p99 |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        for x in &r.loss {
            let others = (1..x.subs.len())
                .map(|i| x.fraction(i))
                .fold(f64::INFINITY, f64::min);
            let lossy = x.subs.first().cloned().unwrap_or_default();
            let missing = x.published.saturating_sub(lossy.received);
            let told = match lossy.resets {
                Some(n) if n > 0 => format!("yes: {n} Reset(s)"),
                Some(_) if missing == 0 => "nothing lost".into(),
                Some(_) => format!("**no** ({missing} missing, 0 Resets)"),
                None if missing == 0 && lossy.gaps_seen == 0 => "nothing lost".into(),
                None => format!(
                    "**no**: {} skipped without a signal, {} not arrived by the run's end",
                    lossy.gaps_seen.min(missing),
                    missing.saturating_sub(lossy.gaps_seen)
                ),
            };
            let repair = if lossy.resets.is_some() {
                format!(
                    "{} / {} ({} repaired)",
                    ms(lossy.repair_p50_us as f64),
                    ms(lossy.repair_p99_us as f64),
                    lossy.repaired
                )
            } else {
                "not reported (in order: see latency)".into()
            };
            s.push_str(&format!(
                "| {} | {} % | {} | {} | {} | {} / {} / {} | {} |\n",
                x.system,
                x.loss_pct,
                pct(x.fraction(0)),
                if others.is_finite() {
                    pct(others)
                } else {
                    "—".into()
                },
                told,
                ms(lossy.p50_us),
                ms(lossy.p99_us),
                ms(lossy.max_us),
                repair
            ));
        }
    }
    for x in r.flat.iter().chain(&r.loss) {
        for (i, sub) in x.subs.iter().enumerate() {
            if let Some(e) = &sub.error {
                s.push_str(&format!(
                    "\n{} (1 → {}, loss {} %): subscriber {} failed: {}\n",
                    x.system,
                    x.subscribers,
                    x.loss_pct,
                    i + 1,
                    truncate(e, 300)
                ));
            }
        }
    }
    for (sys, why) in &r.skipped {
        s.push_str(&format!("\nskipped {sys}: {}\n", truncate(why, 300)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let input = format!("READY\n{}\nREPORT {{}}\ntail", "x".repeat(100));
        let mut r = std::io::BufReader::with_capacity(7, input.as_bytes());
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while read_line_bounded(&mut r, &mut buf, 50).unwrap() {
            lines.push(String::from_utf8(buf.clone()).unwrap());
        }
        // The 100-byte line became an empty one; the rest are whole.
        assert_eq!(lines, ["READY", "", "REPORT {}", "tail"]);
        let mut empty: &[u8] = b"";
        assert!(!read_line_bounded(&mut empty, &mut buf, 50).unwrap());
    }

    #[test]
    fn reports_parse_and_reject() {
        let l = r#"REPORT {"received": 5, "last_ns": 3000000000, "cpu_s": 0.5, "seq_gaps": 2, "extra": [1]}"#;
        let r: PeerSubReport = parse_tagged(l, "REPORT").unwrap().unwrap();
        assert_eq!((r.received, r.seq_gaps), (5, 2));
        let o = peer_outcome(&r, 1_000_000_000);
        assert_eq!(o.per_s, 2.5);
        assert_eq!(o.cpu_s_per_m, 100_000.0);
        assert_eq!(o.resets, None);
        // Hostile or broken reports are errors, never panics.
        for bad in [
            "REPORT {",
            "REPORT {\"received\": -1}",
            "REPORT {\"received\": 1e999}",
            "REPORT \"text\"",
        ] {
            assert!(
                parse_tagged::<PeerSubReport>(bad, "REPORT")
                    .unwrap()
                    .is_err(),
                "{bad}"
            );
        }
        assert!(parse_tagged::<PeerSubReport>("READY", "REPORT").is_none());
        assert!(parse_tagged::<PeerSubReport>("REPORTX {}", "REPORT").is_none());
        // Untrusted floats: no negative or infinite CPU.
        let r = PeerSubReport {
            received: 1,
            cpu_s: f64::NAN,
            ..PeerSubReport::default()
        };
        assert_eq!(peer_outcome(&r, 0).cpu_s_per_m, 0.0);
        // A last delivery before the start does not divide by zero.
        let r = PeerSubReport {
            received: 1,
            last_ns: 5,
            ..PeerSubReport::default()
        };
        assert!(peer_outcome(&r, 10).per_s.is_finite());
    }

    fn sub(received: u64, per_s: f64, resets: Option<u64>) -> SubOutcome {
        SubOutcome {
            received,
            per_s,
            cpu_s_per_m: 0.1,
            resets,
            ..SubOutcome::default()
        }
    }

    #[test]
    fn table_says_told_or_silent() {
        let row = |system: &str, loss_pct, subs| RunRow {
            system: system.into(),
            subscribers: 3,
            loss_pct,
            rate: Some(10_000.0),
            published: 100,
            pub_cpu_s_per_m: 0.2,
            subs,
        };
        let r = Report {
            flat: vec![
                row("cachecast", 0, vec![sub(100, 2e6, Some(0)); 3]),
                row("zmq epgm (OpenPGM)", 0, vec![sub(100, 5e5, None); 3]),
            ],
            loss: vec![
                row(
                    "cachecast",
                    30,
                    vec![
                        sub(90, 1.0, Some(1)),
                        sub(100, 1.0, Some(0)),
                        sub(100, 1.0, Some(0)),
                    ],
                ),
                row(
                    "zmq epgm (OpenPGM)",
                    30,
                    vec![sub(60, 1.0, None), sub(100, 1.0, None), sub(99, 1.0, None)],
                ),
            ],
            skipped: vec![("zmq norm (NORM)".into(), "no norm".into())],
        };
        let t = format_report(&r, 3);
        assert!(t.contains("median of 3"), "{t}");
        assert!(
            t.contains("| zmq epgm (OpenPGM) | 3 | 500.0k | 0.250× |"),
            "{t}"
        );
        assert!(
            t.contains("| cachecast | 30 % | 90.0 % | 100.0 % | yes: 1 Reset(s) |"),
            "{t}"
        );
        assert!(
            t.contains("| zmq epgm (OpenPGM) | 30 % | 60.0 % | 99.0 % | **no**: 0 skipped without a signal, 40 not arrived"),
            "{t}"
        );
        assert!(t.contains("skipped zmq norm (NORM): no norm"), "{t}");
    }
}
