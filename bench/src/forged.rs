//! `cachecast-bench forged`: what rejecting forged datagrams costs a
//! listener that requires keys, and that it keeps delivering meanwhile.
//!
//! One listener node and one publisher node share a fresh key file (or
//! `--key-file`); the publisher publishes real events at `--events-rate`
//! for two phases of `--duration` each: first alone (the baseline), then
//! while a forger sends `--rate` forged datagrams per second of the
//! right cluster, for the publisher's real stream id, with `FLAG_AUTH`,
//! the real key id and a random tag (far-future `Heartbeat`s, `Goodbye`s,
//! far-ahead `Data`, `Hello`s): each is dropped as `auth_bad_tag`. The
//! listener runs on one thread (a current-thread runtime, its driver
//! included): that thread's CPU time is its cost. Reported per phase:
//! events published and delivered, the listener's CPU (as a share of one
//! core), delivery latency p50/p99, Resets; and the CPU per forged
//! datagram (the forged phase's CPU less the baseline's, scaled to its
//! length, over the forgeries the listener counted).
//!
//! What it may not do: send anywhere but the group on 127.0.0.1 with TTL
//! 0 (nothing leaves the host), or without a bound: the forger stops after
//! `rate × duration` datagrams or twice `--duration`, whichever comes
//! first.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use cachecast::wire::{self, Body, Event, EventBatch, EventRef, Events, Header};
use cachecast::{DeliveryRef, Node, NodeConfig};

use crate::common::{loopback_opts, mono_ns, stamp, stamp_of, thread_cpu, tighten_timer_slack};
use crate::{parse_duration, si, us, Rate};

/// The cluster of the forged-datagram bench.
const CLUSTER: &str = "cachecast-bench-forged";

/// Measure what rejecting forged datagrams costs a keyed listener.
#[derive(Debug, Clone, Args)]
pub struct ForgedArgs {
    /// Forged datagrams per second sent to the listener.
    #[arg(long, default_value = "100k")]
    pub rate: Rate,
    /// Real events per second, in both phases.
    #[arg(long, default_value = "1k")]
    pub events_rate: Rate,
    /// Length of each phase (the baseline, then with forgeries).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Repeat and keep the median run by CPU per forged datagram.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=10))]
    pub runs: u16,
    /// Multicast group address (a port is picked per run).
    #[arg(long, default_value = "239.255.77.78")]
    pub group: Ipv4Addr,
    /// The key file of both nodes (default: a fresh one, removed after).
    #[arg(long, env = "CACHECAST_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// One phase, as the listener saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// Seconds from the phase's start to its last delivery.
    pub secs: f64,
    /// Real events published, and delivered to the listener.
    pub published: u64,
    pub delivered: u64,
    /// CPU seconds of the listener's thread (driver included).
    pub cpu_s: f64,
    /// `cpu_s` over `secs`, in % of one core.
    pub core_pct: f64,
    /// Publish-to-delivery latency of the real events.
    pub p50_us: f64,
    pub p99_us: f64,
    /// Resets delivered during the phase.
    pub resets: u64,
    /// Datagrams the listener dropped as `auth_bad_tag` during the phase.
    pub auth_bad_tag: u64,
}

/// One run: the baseline and the forged phase.
#[derive(Debug, Clone, Serialize)]
pub struct ForgedRun {
    /// Forged datagrams sent, and per second achieved.
    pub forged_sent: u64,
    pub forged_per_s: f64,
    pub baseline: Phase,
    pub forged: Phase,
    /// Listener CPU per forged datagram counted, microseconds.
    pub cpu_us_per_forged: f64,
}

impl ForgedRun {
    /// Every real event delivered in both phases, no Reset, and every
    /// forgery that reached the listener dropped as `auth_bad_tag`.
    pub fn clean(&self) -> bool {
        [&self.baseline, &self.forged]
            .iter()
            .all(|p| p.delivered == p.published && p.resets == 0)
            && self.forged.auth_bad_tag > 0
    }
}

/// What the bench prints with `--json`.
#[derive(Debug, Serialize)]
pub struct ForgedResults {
    pub rate: f64,
    pub events_rate: f64,
    pub duration_s: f64,
    pub runs: Vec<ForgedRun>,
    /// The median run by CPU per forged datagram.
    pub median: ForgedRun,
}

/// A key file for the run: the given one, or a fresh one in a private
/// directory, removed on drop.
pub struct BenchKey {
    pub path: PathBuf,
    dir: Option<PathBuf>,
}

impl BenchKey {
    /// `given`, or a new key file.
    pub fn new(given: Option<PathBuf>) -> io::Result<BenchKey> {
        if let Some(path) = given {
            return Ok(BenchKey { path, dir: None });
        }
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "cachecast-bench-key-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("cluster.key");
        cachecast::keys::write_new(&path).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(BenchKey {
            path,
            dir: Some(dir),
        })
    }
}

impl Drop for BenchKey {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn config(group: SocketAddr, name: &str, key: &BenchKey) -> NodeConfig {
    let o = loopback_opts(group);
    NodeConfig {
        group,
        interface: o.interface,
        ttl: o.ttl,
        cluster: CLUSTER.into(),
        node_name: name.into(),
        key_file: Some(key.path.clone()),
        ..NodeConfig::default()
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// What the listener had seen at a mark.
#[derive(Debug, Clone, Default)]
struct Mark {
    at: Option<Instant>,
    cpu_s: f64,
    delivered: u64,
    resets: u64,
    bad_tag: u64,
    /// Latency since the previous mark, µs.
    p50_us: f64,
    p99_us: f64,
}

enum ListenCtl {
    /// Reply with a [`Mark`] (and restart the latency histogram).
    Mark(oneshot::Sender<Mark>),
    /// Reply once `n` events in all were delivered, or after `within`.
    Await(u64, Duration, oneshot::Sender<u64>),
}

/// The listener: joins, says ready, then delivers until its control
/// channel closes, answering marks.
fn listener(
    group: SocketAddr,
    key: &BenchKey,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
    mut ctl: mpsc::UnboundedReceiver<ListenCtl>,
) -> io::Result<()> {
    let rt = runtime()?;
    let config = NodeConfig {
        receive_only: true,
        ..config(group, "forged-listener", key)
    };
    rt.block_on(async move {
        let node = match Node::join(config).await {
            Ok(n) => n,
            Err(e) => {
                let _ = ready.send(Err(io_err(e)));
                return Ok(());
            }
        };
        let mut sub = node.subscribe();
        let _ = ready.send(Ok(()));
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)
            .map_err(io_err)?;
        let (mut delivered, mut resets) = (0u64, 0u64);
        let mut waiting: Option<(u64, tokio::time::Instant, oneshot::Sender<u64>)> = None;
        loop {
            let deadline = waiting
                .as_ref()
                .map_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600), |w| w.1);
            tokio::select! {
                n = sub.recv_each(|d| match d {
                    DeliveryRef::Event { event, .. } => {
                        delivered += 1;
                        if let EventRef::Invalidate { mut keys } = event {
                            if let Some(ts) = keys.next().and_then(|k| stamp_of(k.as_bytes())) {
                                hist.saturating_record(mono_ns().saturating_sub(ts).max(1));
                            }
                        }
                    }
                    DeliveryRef::Reset { .. } => resets += 1,
                }) => {
                    if n.is_none() {
                        break;
                    }
                }
                c = ctl.recv() => match c {
                    None => break,
                    Some(ListenCtl::Mark(reply)) => {
                        let stats = node.stats().await.protocol;
                        let q = |q: f64| if hist.is_empty() { 0.0 } else { hist.value_at_quantile(q) as f64 / 1e3 };
                        let _ = reply.send(Mark {
                            at: Some(Instant::now()),
                            cpu_s: thread_cpu(),
                            delivered,
                            resets,
                            bad_tag: stats.dropped.get("auth_bad_tag").copied().unwrap_or(0),
                            p50_us: q(0.5),
                            p99_us: q(0.99),
                        });
                        hist.reset();
                    }
                    Some(ListenCtl::Await(n, within, reply)) => {
                        waiting = Some((n, tokio::time::Instant::now() + within, reply));
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let due = waiting
                .as_ref()
                .is_some_and(|w| delivered >= w.0 || tokio::time::Instant::now() >= w.1);
            if due {
                if let Some((_, _, reply)) = waiting.take() {
                    let _ = reply.send(delivered);
                }
            }
        }
        node.shutdown().await;
        Ok(())
    })
}

enum PubCtl {
    /// Publish `n` events at `rate` per second; reply with how many.
    Publish(u64, f64, oneshot::Sender<u64>),
}

/// The publisher: joins, sends its stream id, then publishes what it is
/// told, stamped, until its control channel closes.
fn publisher(
    group: SocketAddr,
    key: &BenchKey,
    ready: std::sync::mpsc::Sender<io::Result<u64>>,
    mut ctl: mpsc::UnboundedReceiver<PubCtl>,
) -> io::Result<()> {
    let rt = runtime()?;
    let config = NodeConfig {
        deliver_own: false,
        ..config(group, "forged-publisher", key)
    };
    rt.block_on(async move {
        let node = match Node::join(config).await {
            Ok(n) => n,
            Err(e) => {
                let _ = ready.send(Err(io_err(e)));
                return Ok(());
            }
        };
        let _ = ready.send(Ok(node.stream()));
        let mut key = vec![0u8; 32];
        let mut batch = EventBatch::new();
        while let Some(PubCtl::Publish(n, rate, reply)) = ctl.recv().await {
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut sent = 0u64;
            while sent < n {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(n);
                for _ in sent..due {
                    stamp(&mut key, mono_ns());
                    let k = std::str::from_utf8(&key).unwrap_or_default();
                    batch.invalidate(&[k]).map_err(io_err)?;
                }
                if due > sent {
                    node.publish_batch(&mut batch).await.map_err(io_err)?;
                    sent = due;
                }
                if start.elapsed() > Duration::from_secs_f64(n as f64 / rate) * 3 {
                    break;
                }
            }
            let _ = reply.send(sent);
        }
        node.shutdown().await;
        Ok(())
    })
}

/// A send-only socket on 127.0.0.1 with TTL 0.
fn forger_socket() -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
    s.set_multicast_ttl_v4(0)?;
    s.set_multicast_loop_v4(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
    Ok(s.into())
}

/// Forged datagrams for `stream` of the bench's cluster, without their
/// trailer (written per send: the real key id, a timestamp of now, a
/// counter and a random tag), flagged `FLAG_AUTH`. Every body kind that
/// could do harm if accepted: a far-future `Heartbeat`, `Goodbye`,
/// far-ahead `Data`, `Hello`.
fn forgeries(stream: u64) -> Vec<Vec<u8>> {
    let mut header = Header::new(wire::cluster_hash(CLUSTER), stream);
    header.flags |= wire::FLAG_AUTH;
    let data = Events::new(&[Event::Invalidate {
        keys: vec!["forged".into()],
    }])
    .expect("a small event");
    let bodies = [
        Body::Heartbeat {
            next_seq: 1 << 40,
            oldest: 1,
            node: "forger".into(),
        },
        Body::Goodbye { next_seq: 2 },
        Body::Data {
            first_seq: 1 << 30,
            events: data,
        },
        Body::Hello {
            node: "forger".into(),
        },
    ];
    bodies
        .iter()
        .map(|b| {
            let mut buf = Vec::new();
            wire::encode(&header, b, &mut buf);
            buf
        })
        .collect()
}

/// Sends `total` forged datagrams at `rate` per second, for at most
/// `limit`; returns how many were sent.
fn forge(
    group: SocketAddr,
    stream: u64,
    key_id: u32,
    rate: f64,
    total: u64,
    limit: Duration,
) -> io::Result<u64> {
    tighten_timer_slack();
    let sock = forger_socket()?;
    let templates = forgeries(stream);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut d = Vec::with_capacity(wire::MAX_DATAGRAM);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    let start = Instant::now();
    let mut sent = 0u64;
    let mut counter: u64 = rng.gen_range(1..1 << 32);
    while sent < total && start.elapsed() < limit {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            d.clear();
            d.extend_from_slice(&templates[(sent % 4) as usize]);
            counter += 1;
            let mut tag = [0u8; wire::TAG_LEN];
            rng.fill_bytes(&mut tag);
            let trailer = wire::Trailer {
                key_id,
                algorithm: wire::Algorithm::HmacSha256,
                timestamp_ms: now_ms,
                counter,
            };
            trailer.write(&tag, &mut d);
            // A send the kernel refuses (buffer full) is a forgery less.
            if sock.send_to(&d, group).is_ok() {
                sent += 1;
            } else {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(sent)
}

/// One run: both phases.
fn run_once(args: &ForgedArgs, key: &BenchKey, key_id: u32) -> io::Result<ForgedRun> {
    let group = SocketAddr::from((args.group, rand::random::<u16>() % 30_000 + 20_000));
    std::thread::scope(|s| {
        let (lready_tx, lready) = std::sync::mpsc::channel();
        let (lctl, lctl_rx) = mpsc::unbounded_channel();
        let l = s.spawn(move || listener(group, key, lready_tx, lctl_rx));
        lready
            .recv_timeout(Duration::from_secs(15))
            .map_err(|_| io_err("the listener did not join"))??;
        let (pready_tx, pready) = std::sync::mpsc::channel();
        let (pctl, pctl_rx) = mpsc::unbounded_channel();
        let p = s.spawn(move || publisher(group, key, pready_tx, pctl_rx));
        let stream = pready
            .recv_timeout(Duration::from_secs(15))
            .map_err(|_| io_err("the publisher did not join"))??;

        let mark = || -> io::Result<Mark> {
            let (tx, rx) = oneshot::channel();
            lctl.send(ListenCtl::Mark(tx)).map_err(io_err)?;
            rx.blocking_recv().map_err(io_err)
        };
        let n = (args.events_rate.0 * args.duration.as_secs_f64()).ceil() as u64;
        let mut total = 0u64;
        // Publishes a phase's events, then waits (bounded) until the
        // listener has delivered everything published so far.
        let mut phase = |forge_too: bool| -> io::Result<(u64, u64)> {
            let (tx, rx) = oneshot::channel();
            pctl.send(PubCtl::Publish(n, args.events_rate.0, tx))
                .map_err(io_err)?;
            let forged = if forge_too {
                let total = (args.rate.0 * args.duration.as_secs_f64()).ceil() as u64;
                forge(group, stream, key_id, args.rate.0, total, args.duration * 2)?
            } else {
                0
            };
            let published = rx.blocking_recv().map_err(io_err)?;
            total += published;
            let (tx, rx) = oneshot::channel();
            lctl.send(ListenCtl::Await(total, Duration::from_secs(10), tx))
                .map_err(io_err)?;
            rx.blocking_recv().map_err(io_err)?;
            Ok((published, forged))
        };
        let m0 = mark()?;
        let (pub_a, _) = phase(false)?;
        let m1 = mark()?;
        if !args.quiet {
            eprint!(
                "\rbench: forged: baseline done, forging at {}/s   ",
                si(args.rate.0)
            );
        }
        let t_forge = Instant::now();
        let (pub_b, forged_sent) = phase(true)?;
        let forge_secs = t_forge.elapsed().as_secs_f64();
        let m2 = mark()?;
        drop(pctl);
        drop(lctl);
        p.join().map_err(|_| io_err("the publisher panicked"))??;
        l.join().map_err(|_| io_err("the listener panicked"))??;

        let phase_of = |a: &Mark, b: &Mark, published: u64| {
            let secs = match (a.at, b.at) {
                (Some(x), Some(y)) => y.duration_since(x).as_secs_f64(),
                _ => 0.0,
            };
            let cpu_s = b.cpu_s - a.cpu_s;
            Phase {
                secs,
                published,
                delivered: b.delivered - a.delivered,
                cpu_s,
                core_pct: if secs > 0.0 {
                    cpu_s / secs * 100.0
                } else {
                    0.0
                },
                p50_us: b.p50_us,
                p99_us: b.p99_us,
                resets: b.resets - a.resets,
                auth_bad_tag: b.bad_tag - a.bad_tag,
            }
        };
        let baseline = phase_of(&m0, &m1, pub_a);
        let forged = phase_of(&m1, &m2, pub_b);
        let extra = forged.cpu_s
            - if baseline.secs > 0.0 {
                baseline.cpu_s * forged.secs / baseline.secs
            } else {
                0.0
            };
        Ok(ForgedRun {
            forged_sent,
            forged_per_s: forged_sent as f64 / forge_secs.max(1e-9),
            cpu_us_per_forged: if forged.auth_bad_tag > 0 {
                extra.max(0.0) / forged.auth_bad_tag as f64 * 1e6
            } else {
                0.0
            },
            baseline,
            forged,
        })
    })
}

/// Runs `cachecast-bench forged`.
pub fn run(args: ForgedArgs) -> Result<(), String> {
    let [a, b, _, _] = args.group.octets();
    if (a, b) != (239, 255) {
        return Err(format!(
            "--group {}: the forger sends only to a group in 239.255.0.0/16 (on 127.0.0.1, TTL 0)",
            args.group
        ));
    }
    let key = BenchKey::new(args.key_file.clone()).map_err(|e| format!("key file: {e}"))?;
    let file = cachecast::keys::KeyFile::load(&key.path).map_err(|e| e.to_string())?;
    let key_id = file.ids()[0];
    let mut runs = Vec::new();
    for i in 0..args.runs {
        if !args.quiet {
            eprint!(
                "\rbench: forged: run {}/{}                              ",
                i + 1,
                args.runs
            );
        }
        runs.push(run_once(&args, &key, key_id).map_err(|e| format!("run {}: {e}", i + 1))?);
    }
    if !args.quiet {
        eprint!("\r{:80}\r", "");
    }
    let mut sorted = runs.clone();
    sorted.sort_by(|a, b| a.cpu_us_per_forged.total_cmp(&b.cpu_us_per_forged));
    let median = sorted.swap_remove(sorted.len() / 2);
    let results = ForgedResults {
        rate: args.rate.0,
        events_rate: args.events_rate.0,
        duration_s: args.duration.as_secs_f64(),
        runs,
        median,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", table(&results));
    }
    if results.runs.iter().all(ForgedRun::clean) {
        Ok(())
    } else {
        Err("a run lost real events, Reset, or counted no forgery (see above)".into())
    }
}

/// The results as text.
fn table(r: &ForgedResults) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let m = &r.median;
    let _ = writeln!(
        t,
        "cachecast-bench forged: a listener requiring keys, real events at {}/s for {:.1}s, then \
         {:.1}s more while {}/s forged datagrams arrive (right cluster and key id, random tag); \
         median of {} run(s)",
        si(r.events_rate),
        r.duration_s,
        r.duration_s,
        si(r.rate),
        r.runs.len()
    );
    let _ = writeln!(
        t,
        "{:<9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>12}",
        "phase", "published", "delivered", "Resets", "p50", "p99", "CPU", "auth_bad_tag"
    );
    for (name, p) in [("baseline", &m.baseline), ("forged", &m.forged)] {
        let _ = writeln!(
            t,
            "{:<9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>6.1}% {:>12}",
            name,
            p.published,
            p.delivered,
            p.resets,
            us(p.p50_us),
            us(p.p99_us),
            p.core_pct,
            p.auth_bad_tag
        );
    }
    let _ = writeln!(
        t,
        "forged: {} sent ({}/s achieved), {} counted as auth_bad_tag; listener CPU per forged \
         datagram: {:.2} µs ({:.1}% of a core at {}/s)",
        m.forged_sent,
        si(m.forged_per_s),
        m.forged.auth_bad_tag,
        m.cpu_us_per_forged,
        m.cpu_us_per_forged * r.rate / 1e4,
        si(r.rate)
    );
    let _ = writeln!(
        t,
        "{}",
        if m.clean() {
            "every real event delivered in both phases, no Reset"
        } else {
            "NOT CLEAN: real events lost, a Reset, or no forgery counted"
        }
    );
    t
}
