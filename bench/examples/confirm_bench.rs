//! Membership and confirmation at scale, in the simulator: many members,
//! seeded independent loss on every link. Measures
//!
//! - the steady background of position reports (and of everything else)
//!   per node, with one publisher and with several;
//! - confirmed publishes: latency p50/p99, acknowledgement datagrams per
//!   member per confirmation, `AckRequest`s per confirmation;
//! - the sender's retransmit ring under a burst, with stability on and off.
//!
//! Checks the targets (≤ 1.1 acknowledgements per member per confirmation,
//! ≤ 2 kB/s of reports sent per member) and the no-silent-loss promise,
//! false confirmations included. Run through `scripts/bench.sh confirm-sim`.

use std::time::{Duration, Instant};

use clap::Parser;

use cachecast::testkit::{Faults, Sim, Traffic};
use cachecast::wire::{BodyTag, Event};
use cachecast::{ConfirmReport, CoreConfig};

#[derive(Parser)]
#[command(about = "Membership and confirmation at scale in the deterministic simulator")]
struct Args {
    /// Members besides the publisher(s).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Independent loss probability on every link.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Confirmed publishes (one event each).
    #[arg(long, default_value_t = 50)]
    confirmations: u64,
    /// Confirmed publishes per second of virtual time.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Deadline of each confirmation.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Publishers of the second background measurement (each publishing
    /// `--background-rate` events per second).
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Events per second per publisher during the background measurements.
    #[arg(long, default_value_t = 20.0)]
    background_rate: f64,
    /// Length of each background measurement, virtual time.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Events of the burst of the ring measurement (0: skip it).
    #[arg(long, default_value_t = 200_000)]
    burst: u64,
    /// Events per second of the burst.
    #[arg(long, default_value_t = 100_000.0)]
    burst_rate: f64,
    /// Members of the ring measurement.
    #[arg(long, default_value_t = 100)]
    burst_members: usize,
    /// Members publish too (each has a stream every node follows), instead
    /// of being receive-only: every node then keeps every member's
    /// position in every stream, which grows as members squared per node
    /// (feasible for a few hundred members).
    #[arg(long)]
    members_publish: bool,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn key(i: u64) -> Event {
    Event::Invalidate {
        keys: vec![format!("key-{i:08}")],
    }
}

fn lossy(loss: f64) -> Faults {
    Faults {
        loss,
        delay: Duration::from_micros(100),
        jitter: Duration::from_micros(50),
        ..Faults::default()
    }
}

/// Per node, over a window: what it sent and received.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct PerNode {
    /// Reports sent, datagrams/s and bytes/s (mean over members).
    report_dgrams_s: f64,
    report_bytes_s: f64,
    /// The most any member sent, bytes/s.
    report_bytes_s_max: f64,
    /// Everything sent, datagrams/s and bytes/s (mean over members).
    sent_dgrams_s: f64,
    sent_bytes_s: f64,
    /// Reports received, datagrams/s and bytes/s (mean over members).
    report_recv_dgrams_s: f64,
    report_recv_bytes_s: f64,
    /// Everything received, datagrams/s and bytes/s (mean over members).
    recv_dgrams_s: f64,
    recv_bytes_s: f64,
}

fn snapshot(sim: &Sim, ids: &[usize]) -> Vec<Traffic> {
    ids.iter().map(|i| sim.traffic(*i).clone()).collect()
}

fn per_node(sim: &Sim, ids: &[usize], before: &[Traffic], window: Duration) -> PerNode {
    let s = window.as_secs_f64();
    let n = ids.len() as f64;
    let mut p = PerNode::default();
    for (i, b) in ids.iter().zip(before) {
        let t = sim.traffic(*i).since(b);
        let rep = t.sent(BodyTag::Report);
        p.report_dgrams_s += rep.datagrams as f64 / s / n;
        p.report_bytes_s += rep.bytes as f64 / s / n;
        p.report_bytes_s_max = p.report_bytes_s_max.max(rep.bytes as f64 / s);
        let all = t.sent_total();
        p.sent_dgrams_s += all.datagrams as f64 / s / n;
        p.sent_bytes_s += all.bytes as f64 / s / n;
        let rrep = t.received(BodyTag::Report);
        p.report_recv_dgrams_s += rrep.datagrams as f64 / s / n;
        p.report_recv_bytes_s += rrep.bytes as f64 / s / n;
        let rall = t.received_total();
        p.recv_dgrams_s += rall.datagrams as f64 / s / n;
        p.recv_bytes_s += rall.bytes as f64 / s / n;
    }
    p
}

/// `publishers` nodes publish `rate` events/s each for `window`; returns
/// the traffic per member (the nodes that do not publish).
fn background(
    sim: &mut Sim,
    publishers: &[usize],
    members: &[usize],
    rate: f64,
    window: Duration,
    k: &mut u64,
) -> PerNode {
    let before = snapshot(sim, members);
    let step = Duration::from_secs_f64(1.0 / rate);
    let start = sim.now();
    while sim.now() - start < window {
        for &p in publishers {
            sim.publish(p, key(*k));
            *k += 1;
        }
        sim.run_for(step);
    }
    per_node(sim, members, &before, sim.now() - start)
}

#[derive(Debug, Default, serde::Serialize)]
struct Confirmations {
    count: u64,
    complete: u64,
    covered: u64,
    pending: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    acks_per_member: f64,
    ack_requests_per_confirmation: f64,
    /// Reports per member per second while confirming (acks and periodic).
    reports_s: f64,
    /// Bytes per second each member received while confirming.
    recv_bytes_s: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[derive(Debug, Default, serde::Serialize)]
struct Ring {
    stability: bool,
    peak_bytes: u64,
    /// When the burst ended, and one and three seconds later.
    at_end_bytes: u64,
    after_1s_bytes: u64,
    after_3s_bytes: u64,
    trimmed: u64,
    resets: u64,
}

fn ring(a: &Args, stability: bool) -> Ring {
    let mut sim = Sim::new(a.seed);
    sim.max_steps = u64::MAX;
    for i in 0..=a.burst_members {
        let cfg = CoreConfig {
            stability,
            receive_only: i > 0 && !a.members_publish,
            ..CoreConfig::default()
        };
        sim.add_node(&format!("n{i}"), cfg);
    }
    sim.run_for(Duration::from_secs(2));
    sim.default_link = lossy(a.loss);
    let mut out = Ring {
        stability,
        ..Ring::default()
    };
    let per_ms = (a.burst_rate / 1000.0).max(1.0) as u64;
    let mut k = 0;
    while k < a.burst {
        let n = per_ms.min(a.burst - k);
        sim.publish_batch(0, (k..k + n).map(key).collect());
        k += n;
        sim.run_for(Duration::from_millis(1));
        out.peak_bytes = out
            .peak_bytes
            .max(sim.core(0).expect("alive").stats_snapshot().ring_bytes);
    }
    let ring_now = |sim: &Sim| sim.core(0).expect("alive").stats_snapshot().ring_bytes;
    out.at_end_bytes = ring_now(&sim);
    sim.run_for(Duration::from_secs(1));
    out.after_1s_bytes = ring_now(&sim);
    sim.run_for(Duration::from_secs(2));
    out.after_3s_bytes = ring_now(&sim);
    out.trimmed = sim.core(0).expect("alive").stats().ring_trimmed;
    out.resets = (1..=a.burst_members)
        .map(|r| sim.core(r).expect("alive").stats().resets_total())
        .sum();
    sim.heal_all();
    sim.run_for(Duration::from_secs(1));
    if let Err(v) = sim.check() {
        eprintln!("ring (stability {stability}): {v}");
        std::process::exit(1);
    }
    out
}

/// Progress on standard error (a long run says where it is).
fn progress(started: &Instant, what: &str) {
    eprintln!(
        "confirm_bench: {what} done at {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let a = Args::parse();
    let started = Instant::now();
    let mut sim = Sim::new(a.seed);
    // Each datagram reaches every node: a long run takes billions of steps.
    sim.max_steps = u64::MAX;
    let n = a.members + a.publishers.max(1);
    for i in 0..n {
        let cfg = CoreConfig {
            receive_only: i >= a.publishers.max(1) && !a.members_publish,
            ..CoreConfig::default()
        };
        sim.add_node(&format!("n{i}"), cfg);
    }
    // Joined, and every member has heard every other (names, leases) and
    // reported every position once (the first reports carry everything).
    sim.run_for(Duration::from_secs(2));
    sim.default_link = lossy(a.loss);
    sim.run_for(Duration::from_secs(1));
    progress(&started, "joined");
    let publishers: Vec<usize> = (0..a.publishers.max(1)).collect();
    let members: Vec<usize> = (publishers.len()..n).collect();
    let mut k = 0;

    // Background: one publisher, then several.
    let bg1 = background(
        &mut sim,
        &publishers[..1],
        &members,
        a.background_rate,
        a.window,
        &mut k,
    );
    let wall_bg1 = started.elapsed();
    progress(&started, "background, 1 publisher");
    let bg_many = background(
        &mut sim,
        &publishers,
        &members,
        a.background_rate,
        a.window,
        &mut k,
    );
    let wall_bg = started.elapsed();
    progress(&started, "background, several publishers");

    // Confirmations: node 0 confirms one event at a time at `rate`; the
    // other publishers are quiet. The members' reports over the phase,
    // less what a quiet phase of the same length sends, are the
    // acknowledgements.
    sim.run_for(Duration::from_secs(1));
    let quiet = Duration::from_secs_f64(a.confirmations as f64 / a.rate);
    let before = snapshot(&sim, &members);
    sim.run_for(quiet);
    let idle = per_node(&sim, &members, &before, quiet);
    let before = snapshot(&sim, &members);
    let asks_before = sim.core(0).expect("alive").stats().ack_requests_sent;
    let step = Duration::from_secs_f64(1.0 / a.rate);
    let start = sim.now();
    let mut ids = Vec::new();
    for _ in 0..a.confirmations {
        let seqs = sim.publish_batch(0, vec![key(k)]);
        k += 1;
        ids.push(sim.confirm(0, seqs, a.timeout));
        sim.run_for(step);
    }
    let mut reports: Vec<ConfirmReport> = Vec::new();
    for id in ids {
        let r = sim
            .await_outcome(0, id, a.timeout + Duration::from_millis(10))
            .expect("an outcome by the deadline");
        reports.push(r);
    }
    let phase = sim.now() - start;
    // The window's periodic reports: the quiet rate over the same time.
    let busy = per_node(&sim, &members, &before, phase);
    let acks = (busy.report_dgrams_s - idle.report_dgrams_s) * phase.as_secs_f64();
    let asks = sim.core(0).expect("alive").stats().ack_requests_sent - asks_before;
    let mut lat: Vec<f64> = reports
        .iter()
        .map(|r| r.elapsed.as_secs_f64() * 1e3)
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    let conf = Confirmations {
        count: reports.len() as u64,
        complete: reports.iter().filter(|r| r.is_complete()).count() as u64,
        covered: reports
            .iter()
            .map(|r| r.covered_by_reset.len() as u64)
            .sum(),
        pending: reports.iter().map(|r| r.pending.len() as u64).sum(),
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        acks_per_member: acks / a.confirmations as f64,
        ack_requests_per_confirmation: asks as f64 / a.confirmations as f64,
        reports_s: busy.report_dgrams_s,
        recv_bytes_s: busy.recv_bytes_s,
    };
    let wall_conf = started.elapsed();
    progress(&started, "confirmations");
    sim.heal_all();
    sim.run_for(Duration::from_secs(3));
    let silent = sim.check().err().map(|v| v.to_string());
    let checked = sim.check().ok();
    drop(sim);

    let rings: Vec<Ring> = if a.burst > 0 {
        vec![ring(&a, true), ring(&a, false)]
    } else {
        Vec::new()
    };

    let ok = conf.acks_per_member <= 1.1
        && bg1.report_bytes_s_max <= 2048.0
        && bg_many.report_bytes_s_max <= 2048.0
        && silent.is_none()
        && conf.complete == conf.count;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "members": a.members, "members_publish": a.members_publish,
                "loss": a.loss, "seed": a.seed,
                "background_1_publisher": bg1, "background_publishers": a.publishers,
                "background_n_publishers": bg_many, "background_rate": a.background_rate,
                "quiet": idle, "confirmations": conf, "rate": a.rate,
                "ring": rings, "silent_loss": silent,
                "claims_checked": checked.map(|c| c.confirmed_claims),
                "targets_met": ok, "wall_seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        let kb = |b: f64| b / 1000.0;
        println!(
            "confirm: {} members ({}), {:.1} % loss on every link, seed {}",
            a.members,
            if a.members_publish {
                "each with a stream"
            } else {
                "receive-only"
            },
            a.loss * 100.0,
            a.seed
        );
        for (what, p) in [
            (format!("1 publisher at {}/s", a.background_rate), &bg1),
            (
                format!(
                    "{} publishers at {}/s each",
                    a.publishers, a.background_rate
                ),
                &bg_many,
            ),
        ] {
            println!(
                "background, {what}, per member: reports sent {:.2}/s, {:.0} B/s (largest {:.0} B/s; \
                 target <= 2 kB/s); everything sent {:.2}/s, {:.0} B/s; reports received {:.0}/s, \
                 {:.1} kB/s; everything received {:.0}/s, {:.1} kB/s",
                p.report_dgrams_s,
                p.report_bytes_s,
                p.report_bytes_s_max,
                p.sent_dgrams_s,
                p.sent_bytes_s,
                p.report_recv_dgrams_s,
                kb(p.report_recv_bytes_s),
                p.recv_dgrams_s,
                kb(p.recv_bytes_s),
            );
        }
        println!(
            "confirmations: {} at {}/s, one event each: {} complete, {} members covered by a Reset, \
             {} pending; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; acknowledgements per \
             member per confirmation {:.3} (target <= 1.1); AckRequests per confirmation {:.2}; \
             each member sent {:.1} reports/s and received {:.1} kB/s meanwhile ({:.1} kB/s when \
             quiet)",
            conf.count,
            a.rate,
            conf.complete,
            conf.covered,
            conf.pending,
            conf.p50_ms,
            conf.p99_ms,
            conf.max_ms,
            conf.acks_per_member,
            conf.ack_requests_per_confirmation,
            conf.reports_s,
            kb(conf.recv_bytes_s),
            kb(idle.recv_bytes_s),
        );
        for r in &rings {
            println!(
                "ring, {} events at {}/s to {} members, stability {}: peak {:.1} MB; at the end of \
                 the burst {:.1} MB, 1 s later {:.1} MB, 3 s later {:.1} MB; {} events trimmed; \
                 {} Resets",
                a.burst,
                a.burst_rate,
                a.burst_members,
                if r.stability { "on" } else { "off" },
                r.peak_bytes as f64 / 1e6,
                r.at_end_bytes as f64 / 1e6,
                r.after_1s_bytes as f64 / 1e6,
                r.after_3s_bytes as f64 / 1e6,
                r.trimmed,
                r.resets,
            );
        }
        println!(
            "no silent loss, no false confirmation: {} ({} claims checked); wall {:.1} s \
             (background {:.1} s + {:.1} s, confirmations {:.1} s)",
            silent.as_deref().unwrap_or("yes"),
            checked.map_or(0, |c| c.confirmed_claims),
            started.elapsed().as_secs_f64(),
            wall_bg1.as_secs_f64(),
            (wall_bg - wall_bg1).as_secs_f64(),
            (wall_conf - wall_bg).as_secs_f64(),
        );
    }
    if !ok {
        std::process::exit(1);
    }
}
