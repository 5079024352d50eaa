//! Repair efficiency in the simulator: one sender, many receivers, seeded
//! independent loss on every link. Reports NAKs and repairs per lost data
//! datagram, time to repair, and Resets; checks the targets
//! (≤ 2 NAKs and ≤ 1.2 repairs per lost datagram) and the no-silent-loss
//! promise. Run through `scripts/bench.sh`.

use std::time::{Duration, Instant};

use clap::Parser;

use cachecast::testkit::{Faults, Sim};
use cachecast::wire::Event;
use cachecast::Histogram;

#[derive(Parser)]
#[command(about = "NAK repair efficiency in the deterministic simulator")]
struct Args {
    /// Receivers.
    #[arg(long, default_value_t = 1000)]
    receivers: usize,
    /// Independent loss probability on every link.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Events published (5 per datagram, one datagram per millisecond).
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Direct repairs, as real nodes on a group have by default: a repair
    /// one receiver asked for goes to it alone, to the group when several
    /// asked (off: every repair to the group, as nodes without a direct
    /// socket).
    #[arg(long)]
    directed: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() {
    let a = Args::parse();
    let started = Instant::now();
    let mut sim = Sim::new(a.seed);
    sim.directed = a.directed;
    sim.add_nodes("n", a.receivers + 1);
    sim.run_for(Duration::from_millis(200));
    sim.default_link = Faults {
        loss: a.loss,
        delay: Duration::from_micros(100),
        jitter: Duration::from_micros(50),
        ..Faults::default()
    };
    let mut i = 0;
    while i < a.events {
        let n = 5.min(a.events - i);
        sim.publish_batch(
            0,
            (i..i + n)
                .map(|k| Event::Invalidate {
                    keys: vec![format!("key-{k:08}")],
                })
                .collect(),
        );
        i += n;
        sim.run_for(Duration::from_millis(1));
    }
    sim.run_for(Duration::from_secs(3));
    let lost = sim.lost_data.max(1) as f64;
    let tx = sim.core(0).expect("sender alive").stats().clone();
    let (mut naks, mut resets, mut complete) = (0u64, 0u64, 0usize);
    let mut hist = Histogram::default();
    let s0 = sim.core(0).expect("sender alive").stream();
    for r in 1..=a.receivers {
        let st = sim.core(r).expect("receiver alive").stats();
        naks += st.naks_sent;
        resets += st.resets_total();
        hist.merge(&st.repair_time);
        let got = sim
            .delivered_events(r)
            .iter()
            .filter(|(s, _)| *s == s0)
            .count() as u64;
        complete += usize::from(got == a.events);
    }
    let naks_per = naks as f64 / lost;
    let repairs_per = tx.repairs_sent as f64 / lost;
    let silent = sim.check().err().map(|v| v.to_string());
    let ok = naks_per <= 2.0 && repairs_per <= 1.2 && silent.is_none();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "receivers": a.receivers, "loss": a.loss, "events": a.events, "seed": a.seed,
                "directed": a.directed, "repairs_directed": tx.repairs_directed,
                "lost_data_datagrams": sim.lost_data, "naks": naks, "repairs": tx.repairs_sent,
                "naks_per_loss": naks_per, "repairs_per_loss": repairs_per,
                "repair_p50_us": hist.quantile_us(0.5), "repair_p99_us": hist.quantile_us(0.99),
                "resets": resets, "complete": complete, "silent_loss": silent,
                "targets_met": ok, "wall_seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        println!(
            "repair: {} receivers, {:.1} % loss, {} events{}: {} data datagrams lost; \
             NAKs/loss {naks_per:.3} (target <= 2), repairs/loss {repairs_per:.3} (target <= 1.2); \
             time to repair p50 {} us, p99 {} us; {resets} resets; {complete}/{} complete; \
             no silent loss: {}; {:.1} s wall",
            a.receivers,
            a.loss * 100.0,
            a.events,
            if a.directed {
                format!(
                    ", direct repairs ({} of the repairs directed)",
                    tx.repairs_directed
                )
            } else {
                String::new()
            },
            sim.lost_data,
            hist.quantile_us(0.5),
            hist.quantile_us(0.99),
            a.receivers,
            silent.as_deref().unwrap_or("yes"),
            started.elapsed().as_secs_f64()
        );
    }
    if !ok {
        std::process::exit(1);
    }
}
