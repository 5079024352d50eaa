//! `cachecast-bench confirm`: confirmed publish on loopback (interface
//! 127.0.0.1, TTL 0, a group in 239.255.0.0/16), side by side with
//! unconfirmed publish in the same run, with the same nodes.
//!
//! One publisher and `--members` members (3 by default), each a node on a
//! thread and a single-threaded runtime of its own, in this process (all
//! share the host's monotonic clock). Runs, one after the other:
//!
//! 1. unconfirmed at `--rate`: `invalidate` per event; publish → delivered
//!    at every member;
//! 2. confirmed at `--rate`: each event its own `invalidate_confirmed`,
//!    awaited concurrently (as requests of a web application would);
//!    publish → confirmed by every member, and publish → delivered;
//! 3. for each `--batch` B, confirmed flat out: `publish_confirmed` of B
//!    events, back to back; then unconfirmed flat out: `publish_many` of B
//!    events, back to back.
//!
//! A confirmation counts as complete only when every member confirmed
//! (none pending, covered by a Reset, or departed). Every load loop is
//! bounded in count (`--max-events`) and in time.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use cachecast::wire::{Event, EventRef};
use cachecast::{ConfirmReport, DeliveryRef, Node, NodeConfig, PublishError};

use crate::common::{loopback_opts, mono_ns, stamp_of};
use crate::{parse_duration, si, us, Rate};

/// The confirmed-publish latency targeted on loopback at 1,000 events/s
/// with 3 members (issue #13).
pub const CONFIRM_P99_TARGET_US: f64 = 2_000.0;

/// Options of `cachecast-bench confirm`.
#[derive(Debug, Clone, Args)]
pub struct ConfirmArgs {
    /// Members besides the publisher (each a node of its own).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub members: u16,
    /// Events per second of the paced runs.
    #[arg(long, default_value = "1000")]
    pub rate: Rate,
    /// Length of each paced run.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Events per confirmation (and per publish) of the flat-out runs,
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100",
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch: Vec<u16>,
    /// Length of each flat-out run.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub flat_time: Duration,
    /// Most events of any one run.
    #[arg(long, default_value_t = 300_000)]
    pub max_events: u64,
    /// A confirmation still pending after this long is incomplete.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Most confirmations awaited at once in the paced run.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,
    /// The members' longest random delay before acknowledging
    /// (`CoreConfig::ack_delay`; default: the library's, 500µs).
    #[arg(long, value_parser = parse_duration)]
    pub ack_delay: Option<Duration>,
    /// Multicast group, in 239.255.0.0/16 (a port is picked per run).
    #[arg(long, default_value = "239.255.77.79")]
    pub group: Ipv4Addr,
    /// Skip the flat-out runs.
    #[arg(long)]
    pub no_flat: bool,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Latency quantiles, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Quantiles {
        if h.is_empty() {
            return Quantiles::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Quantiles {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct ConfirmRun {
    /// What it did, e.g. "confirmed 1.0k/s".
    pub name: String,
    /// Whether the publisher awaited confirmations.
    pub confirmed: bool,
    /// Offered events/s; `None` for flat out.
    pub offered: Option<f64>,
    /// Events per publish (and per confirmation).
    pub batch: usize,
    /// Events published.
    pub events: u64,
    /// From the first publish to the last confirmation (or publish).
    pub seconds: f64,
    /// Events published (confirmed runs: and confirmed) per second.
    pub events_per_s: f64,
    /// Confirmations awaited.
    pub confirmations: u64,
    /// Confirmations in which every member confirmed.
    pub complete: u64,
    /// Confirmations with a member pending, covered by a Reset or
    /// departed, or that failed.
    pub incomplete: u64,
    /// The first incomplete report or error, if any.
    pub first_problem: Option<String>,
    /// Publish → confirmed by every member (confirmed runs).
    pub confirm: Option<Quantiles>,
    /// Publish → delivered, every member's deliveries together.
    pub delivery: Quantiles,
    /// Deliveries missing at the end of the run (events × members −
    /// deliveries seen).
    pub missing: u64,
    /// The publisher's acknowledgement requests during the run.
    pub ack_requests: u64,
    /// Reports the publisher received during the run (acknowledgements and
    /// periodic ones, from every member).
    pub reports_received: u64,
}

/// Everything one `cachecast-bench confirm` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConfirmResults {
    pub group: String,
    pub members: u16,
    pub runs: Vec<ConfirmRun>,
    /// Resets the members delivered (all runs).
    pub member_resets: u64,
    /// Reports the members sent, in all (all runs and the waits between).
    pub member_reports_sent: u64,
    /// The confirmed run at --rate met the p99 target (with every
    /// confirmation complete).
    pub target_met: bool,
}

/// What a member does: counts and times deliveries per run.
struct Tally {
    /// Deliveries of each run.
    received: Vec<AtomicU64>,
}

/// What a member hands back at the end.
struct MemberEnd {
    delivery: Vec<Histogram<u64>>,
    resets: u64,
    reports_sent: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds")
}

fn node_config(group: SocketAddr, cluster: &str, name: &str) -> NodeConfig {
    let o = loopback_opts(group);
    NodeConfig {
        group,
        interface: o.interface,
        ttl: o.ttl,
        cluster: cluster.into(),
        node_name: name.into(),
        ..NodeConfig::default()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// A key: the publish time (16 hex digits of `CLOCK_MONOTONIC` ns), the
/// run and the event's number.
fn key(run: usize, i: u64) -> String {
    format!("{:016x}-r{run}-{i}", mono_ns())
}

/// The run and publish time of a key of ours.
fn parse_key(key: &str) -> Option<(usize, u64)> {
    let ts = stamp_of(key.as_bytes())?;
    let rest = key.get(16..)?.strip_prefix("-r")?;
    let run = rest.split('-').next()?.parse().ok()?;
    Some((run, ts))
}

/// A member to run.
struct MemberSpec {
    group: SocketAddr,
    cluster: String,
    name: String,
    /// Runs in the plan.
    runs: usize,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    /// Told once the member joined (or could not).
    ready: mpsc::Sender<Result<(), String>>,
    /// The member stops after this long, whatever happens.
    max_time: Duration,
    ack_delay: Option<Duration>,
}

/// One member: joins, then records every delivery until `stop` (bounded
/// by `max_time`).
fn member(spec: MemberSpec) -> Result<MemberEnd, String> {
    let MemberSpec {
        group,
        cluster,
        name,
        runs,
        tally,
        stop,
        ready,
        max_time,
        ack_delay,
    } = spec;
    let rt = runtime()?;
    rt.block_on(async move {
        let mut config = node_config(group, &cluster, &name);
        if let Some(d) = ack_delay {
            config.protocol.ack_delay = d;
        }
        let node = match Node::join(config).await {
            Ok(n) => n,
            Err(e) => {
                let e = format!("{name}: join: {e}");
                let _ = ready.send(Err(e.clone()));
                return Err(e);
            }
        };
        let mut sub = node.subscribe();
        let mut delivery: Vec<Histogram<u64>> = (0..runs).map(|_| histogram()).collect();
        let mut resets = 0u64;
        let _ = ready.send(Ok(()));
        let deadline = tokio::time::Instant::now() + max_time;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
            let mut now = None;
            let mut record = |d: DeliveryRef<'_>| match d {
                DeliveryRef::Event {
                    event: EventRef::Invalidate { keys },
                    ..
                } => {
                    let t = *now.get_or_insert_with(mono_ns);
                    for k in keys {
                        if let Some((run, sent)) = parse_key(k) {
                            if let Some(h) = delivery.get_mut(run) {
                                h.saturating_record(t.saturating_sub(sent).max(1_000));
                                tally.received[run].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                DeliveryRef::Reset { .. } => resets += 1,
                _ => {}
            };
            tokio::select! {
                biased;
                n = sub.recv_each(&mut record) => if n.is_none() {
                    break;
                },
                _ = tick.tick() => {}
            }
        }
        let reports_sent = node.stats().await.protocol.reports_sent;
        node.shutdown().await;
        Ok(MemberEnd {
            delivery,
            resets,
            reports_sent,
        })
    })
}

/// The outcome of one confirmation, as the run counts it.
fn outcome(members: usize, r: &Result<ConfirmReport, PublishError>) -> Result<(), String> {
    match r {
        Ok(r) if r.is_complete() && r.confirmed.len() == members => Ok(()),
        Ok(r) => Err(format!(
            "confirmed {}, covered by a Reset {}, departed {}, pending {} (of {members} members)",
            r.confirmed.len(),
            r.covered_by_reset.len(),
            r.departed.len(),
            r.pending.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// What the publisher measured of one run (the members' side is added
/// later).
struct PubRun {
    name: String,
    confirmed: bool,
    offered: Option<f64>,
    batch: usize,
    events: u64,
    seconds: f64,
    confirmations: u64,
    complete: u64,
    first_problem: Option<String>,
    confirm: Histogram<u64>,
    ack_requests: u64,
    reports_received: u64,
    missing: u64,
}

/// Counts one confirmation into `run`.
fn count(run: &mut PubRun, members: usize, took: Duration, r: Result<ConfirmReport, PublishError>) {
    run.confirmations += 1;
    match outcome(members, &r) {
        Ok(()) => {
            run.complete += 1;
            run.confirm
                .saturating_record((took.as_nanos() as u64).max(1_000));
        }
        Err(e) => {
            run.first_problem.get_or_insert(e);
        }
    }
}

/// The publisher's side of every run, in order.
struct Publisher<'a> {
    node: Node,
    args: &'a ConfirmArgs,
    tally: &'a Tally,
    members: usize,
    say: &'a dyn Fn(String),
}

impl Publisher<'_> {
    fn start(&self, name: String, confirmed: bool, offered: Option<f64>, batch: usize) -> PubRun {
        (self.say)(format!("run: {name}"));
        PubRun {
            name,
            confirmed,
            offered,
            batch,
            events: 0,
            seconds: 0.0,
            confirmations: 0,
            complete: 0,
            first_problem: None,
            confirm: histogram(),
            ack_requests: 0,
            reports_received: 0,
            missing: 0,
        }
    }

    /// Paced at `rate`: each event published (and, if `confirmed`, its
    /// confirmation awaited in a task of its own) at its time.
    async fn paced(&self, index: usize, confirmed: bool) -> Result<PubRun, String> {
        let rate = self.args.rate.0;
        let what = if confirmed {
            "confirmed"
        } else {
            "unconfirmed"
        };
        let mut run = self.start(format!("{what} {}/s", si(rate)), confirmed, Some(rate), 1);
        let n = ((rate * self.args.duration.as_secs_f64()) as u64).clamp(1, self.args.max_events);
        let before = self.node.stats().await.protocol;
        let start = tokio::time::Instant::now();
        let time_limit = self.args.duration * 2 + Duration::from_secs(1);
        let mut tasks = tokio::task::JoinSet::new();
        let mut sent = 0u64;
        while sent < n && start.elapsed() < time_limit {
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(n);
            while sent < due {
                if confirmed {
                    while tasks.len() >= self.args.max_in_flight {
                        if let Some(Ok((took, r))) = tasks.join_next().await {
                            count(&mut run, self.members, took, r);
                        }
                    }
                    let node = self.node.clone();
                    let timeout = self.args.timeout;
                    let k = key(index, sent);
                    tasks.spawn(async move {
                        let t0 = Instant::now();
                        let r = node.invalidate_confirmed([k], timeout).await;
                        (t0.elapsed(), r)
                    });
                } else {
                    self.node
                        .invalidate([key(index, sent)])
                        .await
                        .map_err(|e| format!("publish: {e}"))?;
                }
                sent += 1;
            }
            let next = start + Duration::from_secs_f64(sent as f64 / rate);
            // Wake at the next event's time, counting confirmations as
            // they come.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    Some(Ok((took, r))) = tasks.join_next(), if !tasks.is_empty() => {
                        count(&mut run, self.members, took, r);
                    }
                }
            }
        }
        // The last confirmations: each ends by its own timeout.
        let drain = tokio::time::Instant::now() + self.args.timeout + Duration::from_secs(2);
        while !tasks.is_empty() {
            match tokio::time::timeout_at(drain, tasks.join_next()).await {
                Ok(Some(Ok((took, r)))) => count(&mut run, self.members, took, r),
                Ok(_) => {}
                Err(_) => {
                    run.first_problem
                        .get_or_insert("confirmations outlived their timeout".into());
                    tasks.abort_all();
                    break;
                }
            }
        }
        run.events = sent;
        run.seconds = start.elapsed().as_secs_f64();
        self.finish(index, &mut run, before).await;
        Ok(run)
    }

    /// Flat out: batches of `batch` events back to back, each confirmed
    /// before the next (if `confirmed`).
    async fn flat(&self, index: usize, confirmed: bool, batch: usize) -> Result<PubRun, String> {
        let what = if confirmed {
            "confirmed"
        } else {
            "unconfirmed"
        };
        let mut run = self.start(
            format!("{what} flat out, {batch}/publish"),
            confirmed,
            None,
            batch,
        );
        let n = self.args.max_events;
        let before = self.node.stats().await.protocol;
        let start = tokio::time::Instant::now();
        let mut sent = 0u64;
        while sent < n && start.elapsed() < self.args.flat_time {
            let b = (batch as u64).min(n - sent);
            let events: Vec<Event> = (sent..sent + b)
                .map(|i| Event::Invalidate {
                    keys: vec![key(index, i)],
                })
                .collect();
            if confirmed {
                let t0 = Instant::now();
                let r = self.node.publish_confirmed(events, self.args.timeout).await;
                count(&mut run, self.members, t0.elapsed(), r);
            } else {
                self.node
                    .publish_many(events)
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
                // Let the driver send what was handed over.
                tokio::task::yield_now().await;
            }
            sent += b;
        }
        run.events = sent;
        run.seconds = start.elapsed().as_secs_f64();
        self.finish(index, &mut run, before).await;
        Ok(run)
    }

    /// Waits (bounded) until every member has every event of the run, then
    /// takes the publisher's counters.
    async fn finish(&self, index: usize, run: &mut PubRun, before: cachecast::Stats) {
        let want = run.events * self.members as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let got = loop {
            let got = self.tally.received[index].load(Ordering::Relaxed);
            if got >= want || tokio::time::Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        run.missing = want.saturating_sub(got);
        let after = self.node.stats().await.protocol;
        run.ack_requests = after.ack_requests_sent - before.ack_requests_sent;
        run.reports_received = after.reports_received - before.reports_received;
    }

    /// Waits (bounded) until the publisher sees every member live.
    async fn await_members(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let live = self
                .node
                .members()
                .await
                .iter()
                .filter(|m| !m.this_node && m.state == cachecast::Liveness::Live)
                .count();
            if live >= self.members {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the publisher sees {live} live members of {} after 10 s",
                    self.members
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The runs, in order: (confirmed, batch; 0 = paced).
fn plan(args: &ConfirmArgs) -> Vec<(bool, usize)> {
    let mut p = vec![(false, 0), (true, 0)];
    if !args.no_flat {
        for &b in &args.batch {
            p.push((true, b as usize));
            p.push((false, b as usize));
        }
    }
    p
}

/// Runs the confirm benchmark.
pub fn run(args: ConfirmArgs) -> Result<(), String> {
    if args.duration > Duration::from_secs(300) || args.flat_time > Duration::from_secs(60) {
        return Err("--duration is at most 300s and --flat-time at most 60s".into());
    }
    if args.rate.0 > 100_000.0 {
        return Err("--rate is at most 100k (one confirmation per event)".into());
    }
    let o = args.group.octets();
    if o[0] != 239 || o[1] != 255 {
        return Err(format!(
            "--group {} is not in 239.255.0.0/16 (organisation-local scope)",
            args.group
        ));
    }
    if args.max_in_flight == 0 {
        return Err("--max-in-flight must be at least 1".into());
    }
    let r = run_in(&args)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &r).map_err(|e| e.to_string())?;
        writeln!(out).map_err(|e| e.to_string())?;
    } else {
        print_table(&mut out, &args, &r).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn run_in(args: &ConfirmArgs) -> Result<ConfirmResults, String> {
    let quiet = args.quiet;
    let say = move |msg: String| {
        if !quiet {
            eprintln!("bench: {msg}");
        }
    };
    let port = 20_000 + rand::random::<u16>() % 30_000;
    let group = SocketAddr::from((args.group, port));
    let cluster = format!(
        "bench-confirm-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let plan = plan(args);
    let members = args.members as usize;
    let tally = Arc::new(Tally {
        received: (0..plan.len()).map(|_| AtomicU64::new(0)).collect(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    // Every run's time, with room: the members' own bound.
    let max_time = args.duration * 2 * 2
        + (args.flat_time + Duration::from_secs(8)) * plan.len() as u32
        + Duration::from_secs(60);
    say(format!(
        "{members} members and a publisher on {group} (interface 127.0.0.1, TTL 0)"
    ));

    let rt = runtime()?;
    // The publisher joins first: it hears the members' Hellos.
    let node = rt
        .block_on(Node::join(NodeConfig {
            deliver_own: false,
            ..node_config(group, &cluster, "publisher")
        }))
        .map_err(|e| format!("publisher: join: {e}"))?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for i in 0..members {
        let spec = MemberSpec {
            group,
            cluster: cluster.clone(),
            name: format!("member-{i}"),
            runs: plan.len(),
            tally: tally.clone(),
            stop: stop.clone(),
            ready: ready_tx.clone(),
            max_time,
            ack_delay: args.ack_delay,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("member-{i}"))
                .spawn(move || member(spec))
                .map_err(|e| format!("thread: {e}"))?,
        );
    }
    drop(ready_tx);
    let mut joined = Ok(());
    for _ in 0..members {
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => joined = Err(e),
            Err(_) => joined = Err("a member did not join within 10 s".into()),
        }
    }

    let publisher = Publisher {
        node: node.clone(),
        args,
        tally: &tally,
        members,
        say: &say,
    };
    let runs = joined.and_then(|()| {
        rt.block_on(async {
            publisher.await_members().await?;
            let mut runs = Vec::new();
            for (i, &(confirmed, batch)) in plan.iter().enumerate() {
                let r = if batch == 0 {
                    publisher.paced(i, confirmed).await?
                } else {
                    publisher.flat(i, confirmed, batch).await?
                };
                runs.push(r);
            }
            Ok::<_, String>(runs)
        })
    });
    stop.store(true, Ordering::Relaxed);
    let mut ends = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(end)) => ends.push(end),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a member thread panicked".into()),
        }
    }
    rt.block_on(node.shutdown());
    let runs = runs?;

    let mut out = Vec::new();
    for (i, p) in runs.into_iter().enumerate() {
        let mut h = histogram();
        for e in &ends {
            h.add(&e.delivery[i])
                .map_err(|e| format!("histogram: {e}"))?;
        }
        let incomplete = p.confirmations - p.complete;
        out.push(ConfirmRun {
            events_per_s: if p.seconds > 0.0 {
                p.events as f64 / p.seconds
            } else {
                0.0
            },
            name: p.name,
            confirmed: p.confirmed,
            offered: p.offered,
            batch: p.batch,
            events: p.events,
            seconds: p.seconds,
            confirmations: p.confirmations,
            complete: p.complete,
            incomplete,
            first_problem: p.first_problem,
            confirm: p.confirmed.then(|| Quantiles::of(&p.confirm)),
            delivery: Quantiles::of(&h),
            missing: p.missing,
            ack_requests: p.ack_requests,
            reports_received: p.reports_received,
        });
    }
    let target_met = out.iter().any(|r| {
        r.confirmed
            && r.offered.is_some()
            && r.incomplete == 0
            && r.confirm
                .as_ref()
                .is_some_and(|q| q.count > 0 && q.p99_us <= CONFIRM_P99_TARGET_US)
    });
    Ok(ConfirmResults {
        group: group.to_string(),
        members: args.members,
        runs: out,
        member_resets: ends.iter().map(|e| e.resets).sum(),
        member_reports_sent: ends.iter().map(|e| e.reports_sent).sum(),
        target_met,
    })
}

fn print_table(
    out: &mut impl Write,
    args: &ConfirmArgs,
    r: &ConfirmResults,
) -> std::io::Result<()> {
    writeln!(
        out,
        "cachecast-bench confirm: 1 publisher, {} members on loopback ({}, TTL 0); confirm = publish → every member confirmed; deliver = publish → delivered (all members)",
        r.members, r.group
    )?;
    writeln!(
        out,
        "{:<32} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8}",
        "run",
        "events",
        "events/s",
        "conf p50",
        "conf p99",
        "conf max",
        "dlv p50",
        "dlv p99",
        "incomplete",
        "missing",
        "acks/conf"
    )?;
    for x in &r.runs {
        let (c50, c99, cmax) = match &x.confirm {
            Some(q) => (us(q.p50_us), us(q.p99_us), us(q.max_us)),
            None => ("—".into(), "—".into(), "—".into()),
        };
        let acks = if x.confirmations > 0 {
            format!(
                "{:.2}",
                x.reports_received as f64 / x.confirmations as f64 / r.members as f64
            )
        } else {
            "—".into()
        };
        writeln!(
            out,
            "{:<32} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8}",
            x.name,
            x.events,
            si(x.events_per_s),
            c50,
            c99,
            cmax,
            us(x.delivery.p50_us),
            us(x.delivery.p99_us),
            if x.confirmed {
                format!("{}/{}", x.incomplete, x.confirmations)
            } else {
                "—".into()
            },
            x.missing,
            acks
        )?;
        if let Some(p) = &x.first_problem {
            writeln!(out, "  first incomplete: {p}")?;
        }
    }
    writeln!(
        out,
        "acks/conf: reports the publisher received per confirmation per member (periodic ones included). Members' Resets: {}",
        r.member_resets
    )?;
    writeln!(
        out,
        "target: confirmed p99 ≤ {} at {}/s with {} members: {}",
        us(CONFIRM_P99_TARGET_US),
        si(args.rate.0),
        r.members,
        if r.target_met { "met" } else { "MISSED" }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_run_and_time() {
        let k = key(3, 42);
        let (run, ts) = parse_key(&k).unwrap();
        assert_eq!(run, 3);
        assert!(ts > 0 && ts <= mono_ns());
        assert_eq!(parse_key("0123456789abcdef-x1-2"), None);
        assert_eq!(parse_key("short"), None);
    }
}
