//! `cachecast-bench bridge`: two sites joined by two real `cachecast
//! bridge` processes through a NATS server with JetStream (`--nats`;
//! scripts/bench.sh bridge starts one on 127.0.0.1), on loopback only (each
//! site a group in 239.255.0.0/16 on interface 127.0.0.1, TTL 0).
//!
//! A publisher node in site A and a receive-only node in site B live in
//! this process (one monotonic clock). Runs:
//!
//! 1. latency: `--rate` events per second (1,000 by default) for
//!    `--duration`, each stamped with its publish time: publish in A →
//!    delivered in B, p50 / p99 / max;
//! 2. throughput: rising offered rates (`--rates`, each for `--step`,
//!    batches of 100), delivered in B: the bridge pair's limit is the
//!    highest rate delivered whole with no ClearAll (past it, the bridge's
//!    subscription falls behind: a Reset there, a gap record, a ClearAll in
//!    B, never a silent loss).
//!
//! Every load loop is bounded in count and in time.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;

use cachecast::wire::{Event, EventRef};
use cachecast::{DeliveryRef, Node, NodeConfig};

use crate::agent::process::find_binary;
use crate::common::{mono_ns, stamp_of};
use crate::{parse_duration, si, Rate};

/// Options of `cachecast-bench bridge`.
#[derive(Debug, Clone, Args)]
pub struct BridgeArgs {
    /// The NATS server (with JetStream), HOST:PORT.
    #[arg(long)]
    pub nats: SocketAddr,
    /// The `cachecast` binary (default: `cachecast` next to this binary).
    #[arg(long, env = "CACHECAST_BIN")]
    pub cachecast: Option<PathBuf>,
    /// Events per second of the latency run.
    #[arg(long, default_value = "1000")]
    pub rate: Rate,
    /// Length of the latency run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Offered rates of the throughput runs, rising, comma-separated; it
    /// stops at the first not delivered whole.
    #[arg(long, value_delimiter = ',', default_value = "5k,10k,20k,40k,80k,160k")]
    pub rates: Vec<Rate>,
    /// Length of each throughput run.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub step: Duration,
}

/// A `cachecast bridge` of the bench, stopped when dropped.
struct Bridge {
    child: Child,
}

impl Bridge {
    fn start(
        bin: &Path,
        nats: SocketAddr,
        group: SocketAddr,
        cluster: &str,
        site: &str,
    ) -> Result<Bridge, String> {
        let mut child = Command::new(bin)
            .args(["bridge", "--interface", "127.0.0.1", "--ttl", "0"])
            .args(["--group", &group.to_string(), "--cluster", cluster])
            .args(["--nats", &format!("nats://{nats}"), "--site", site])
            .env("RUST_LOG", "cachecast=info")
            .env("CACHECAST_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let err = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if line.contains("active: this bridge holds") {
                    let _ = tx.send(());
                }
                if line.contains("\"ERROR\"") || line.contains("\"WARN\"") {
                    eprintln!("  bridge {line}");
                }
            }
        });
        let mut bridge = Bridge { child };
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let _ = bridge.child.kill();
            return Err(format!("bridge {site} did not become active within 20 s"));
        }
        Ok(bridge)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn group() -> Result<SocketAddr, String> {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let (a, b) = (
        rand::random::<u8>().clamp(1, 254),
        rand::random::<u8>().clamp(1, 254),
    );
    Ok(SocketAddr::from((Ipv4Addr::new(239, 255, a, b), port)))
}

fn node_config(group: SocketAddr, cluster: &str, name: &str) -> NodeConfig {
    NodeConfig {
        group,
        node_name: name.into(),
        ..NodeConfig::loopback(cluster)
    }
}

/// Deliveries in B: (publish stamp, delivered at), for keys of `prefix`.
fn collect(
    rt: &tokio::runtime::Runtime,
    sub: &mut cachecast::Subscription,
    prefix: &str,
    want: u64,
    until: Instant,
    lat: &mut Histogram<u64>,
) -> (u64, u64, u64) {
    let (mut got, mut clears, mut last_ns) = (0u64, 0u64, 0u64);
    rt.block_on(async {
        while got < want {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let r = tokio::time::timeout(
                left,
                sub.recv_each(|d| match d {
                    DeliveryRef::Event {
                        event: EventRef::Invalidate { keys },
                        ..
                    } => {
                        let now = mono_ns();
                        for k in keys {
                            if let Some(stamp) =
                                k.strip_prefix(prefix).and_then(|s| stamp_of(s.as_bytes()))
                            {
                                got += 1;
                                last_ns = now;
                                let _ = lat.record(now.saturating_sub(stamp) / 1000);
                            }
                        }
                    }
                    DeliveryRef::Event {
                        event: EventRef::ClearAll,
                        ..
                    }
                    | DeliveryRef::Reset { .. } => clears += 1,
                    DeliveryRef::Event { .. } => {}
                }),
            )
            .await;
            if !matches!(r, Ok(Some(_))) {
                break;
            }
        }
    });
    (got, clears, last_ns)
}

pub fn run(args: BridgeArgs) -> Result<(), String> {
    let bin = find_binary(args.cachecast.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let cluster = format!("bench{}", rand::random::<u32>());
    let (ga, gb) = (group()?, group()?);
    let _a = Bridge::start(&bin, args.nats, ga, &cluster, "a")?;
    let _b = Bridge::start(&bin, args.nats, gb, &cluster, "b")?;
    let publisher = rt
        .block_on(Node::join(node_config(ga, &cluster, "bench-pub")))
        .map_err(|e| format!("join A: {e}"))?;
    let receiver = rt
        .block_on(Node::join(NodeConfig {
            receive_only: true,
            ..node_config(gb, &cluster, "bench-sub")
        }))
        .map_err(|e| format!("join B: {e}"))?;
    let mut sub = receiver.subscribe();
    println!(
        "bridge: site A → nats-server {} → site B, two `cachecast bridge` processes, loopback",
        args.nats
    );

    // 1. Latency at a fixed rate.
    let n = ((args.rate.0 * args.duration.as_secs_f64()) as u64).clamp(1, 10_000_000);
    let interval = Duration::from_secs_f64(1.0 / args.rate.0);
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let pubr = publisher.clone();
    let handle = rt.spawn(async move {
        let start = tokio::time::Instant::now();
        for i in 0..n {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            let key = format!("l:{:016x}", mono_ns());
            if pubr
                .publish(Event::Invalidate { keys: vec![key] })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let until = Instant::now() + args.duration + Duration::from_secs(10);
    let (got, clears, _) = collect(&rt, &mut sub, "l:", n, until, &mut lat);
    let _ = rt.block_on(handle);
    println!(
        "  latency at {} events/s: {got} of {n} delivered, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, ClearAll/Reset {clears}",
        si(args.rate.0),
        lat.value_at_quantile(0.5) as f64,
        lat.value_at_quantile(0.99) as f64,
        lat.max() as f64,
    );

    // 2. Throughput: rising rates, each for `--step` (batches of 100
    // events); the limit is the highest delivered whole, with no ClearAll.
    let mut limit = 0.0f64;
    for rate in args.rates.iter().map(|r| r.0) {
        let total = ((rate * args.step.as_secs_f64()) as u64).clamp(100, 10_000_000);
        let pubr = publisher.clone();
        let batches = total.div_ceil(100);
        let every = Duration::from_secs_f64(100.0 / rate);
        let t0 = mono_ns();
        let handle = rt.spawn(async move {
            let start = tokio::time::Instant::now();
            let mut sent = 0u64;
            for b in 0..batches {
                tokio::time::sleep_until(start + every.mul_f64(b as f64)).await;
                let n = (total - sent).min(100);
                let events = (0..n).map(|_| Event::Invalidate {
                    keys: vec![format!("t:{:016x}", mono_ns())],
                });
                if pubr.publish_many(events).await.is_err() {
                    break;
                }
                sent += n;
            }
            sent
        });
        let mut lat =
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
        let until = Instant::now() + args.step + Duration::from_secs(10);
        let (got, clears, last) = collect(&rt, &mut sub, "t:", total, until, &mut lat);
        let sent = rt.block_on(handle).map_err(|e| e.to_string())?;
        let secs = (last.saturating_sub(t0)) as f64 / 1e9;
        let whole = got == sent && clears == 0;
        println!(
            "  at {} events/s offered: {got} of {sent} delivered ({} events/s), p99 {:.1} ms, ClearAll/Reset {clears}{}",
            si(rate),
            si(got as f64 / secs.max(1e-9)),
            lat.value_at_quantile(0.99) as f64 / 1000.0,
            if whole { "" } else { ": past the limit" },
        );
        if !whole {
            break;
        }
        limit = rate;
        // What is left of this step is not counted in the next.
        let _ = collect(
            &rt,
            &mut sub,
            "t:",
            u64::MAX,
            Instant::now() + Duration::from_millis(200),
            &mut lat,
        );
    }
    println!(
        "  throughput limit: {} events/s delivered whole, no ClearAll",
        si(limit)
    );
    let _ = std::io::stdout().flush();
    rt.block_on(async {
        publisher.shutdown().await;
        receiver.shutdown().await;
    });
    Ok(())
}
