//! `cachecast demo`: replays the incident that motivated cachecast, and
//! more, on loopback (interface 127.0.0.1, TTL 0: nothing leaves the host),
//! prints a timeline, and ends with the no-silent-loss checker's verdict.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;

use crate::failure::Failure;
use crate::stop::Stop;
use cachecast::testkit::{Faults, LoopbackCluster};
use cachecast::wire::{Body, EventRef};
use cachecast::Delivery;

/// Options of the demo.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Frontends (plus one backend).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub frontends: u16,
    /// Loss of the loss-burst scene, in percent.
    #[arg(long, default_value_t = 10.0)]
    pub loss: f64,
    /// Events of the loss-burst scene.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub events: u64,
    /// Seed of the injected faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

struct Timeline {
    start: Instant,
}

impl Timeline {
    fn say(&self, who: &str, what: impl std::fmt::Display) {
        println!(
            "[{:>7.3}s] {who:<12} {what}",
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn is_key(d: &Delivery, key: &str) -> bool {
    matches!(d, Delivery::Event { event, .. } if matches!(event.view(), EventRef::Invalidate { keys } if keys.clone().any(|k| k == key)))
}

/// Waits (bounded) until node `i` delivered `key`; returns how long it took.
async fn wait_for(c: &LoopbackCluster, i: usize, key: &str, since: Instant) -> Option<Duration> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Some((t, _)) = c.deliveries(i).iter().find(|(_, d)| is_key(d, key)) {
            return Some(t.duration_since(since));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Runs `cachecast demo`. SIGINT or SIGTERM stop it between two steps:
/// every node says Goodbye, and it exits 1 without a verdict.
pub async fn run(a: DemoArgs, stop: &Stop) -> Result<(), Failure> {
    if !(0.0..=90.0).contains(&a.loss) {
        return Err(Failure::Usage(format!(
            "--loss {} is out of range: use 0 to 90 (percent)",
            a.loss
        )));
    }
    let mut names = vec!["backend".to_string()];
    names.extend((1..=a.frontends).map(|i| format!("frontend-{i}")));
    stop.arm();
    let mut c = LoopbackCluster::start_named(&names, a.seed, |cfg| {
        // Short enough for a demo: a silent stream is given up after 2 s.
        cfg.protocol.stream_timeout = Duration::from_secs(2);
        cfg.protocol.heartbeat_idle = Duration::from_millis(500);
        cfg.subscriber_queue = 4096;
    })
    .await
    .map_err(|e| e.to_string())?;
    let outcome = tokio::select! {
        r = scenes(&a, &mut c, &names) => r,
        reason = stop.wait() => Err(format!("stopped by {reason} before the verdict; every node said Goodbye")),
    };
    c.shutdown_all().await;
    let verdict = outcome?;
    println!("{verdict}");
    Ok(())
}

/// The scenes and the verdict line (an error for a silent loss).
async fn scenes(a: &DemoArgs, c: &mut LoopbackCluster, names: &[String]) -> Result<String, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let fe = 1..c.len();
    let t = Timeline { start: c.started() };
    println!(
        "cachecast demo: 1 backend, {} frontend(s) on {} (loopback, TTL 0)",
        a.frontends,
        c.group()
    );

    // 1. The incident: a frontend recycles; the very next invalidation must reach it.
    for i in 0..20 {
        c.publish(0, [format!("page:{i}")])
            .await
            .map_err(|e| err(&e))?;
    }
    let last = c.len() - 1;
    t.say(
        &names[last],
        "recycles (Goodbye, then a new process with a new stream)",
    );
    c.recycle(last).await.map_err(|e| err(&e))?;
    t.say(&names[last], "joined: in sync after the 100 ms join window");
    let sent = Instant::now();
    c.publish(0, ["product:42"]).await.map_err(|e| err(&e))?;
    t.say("backend", "invalidates product:42");
    match wait_for(c, last, "product:42", sent).await {
        Some(d) => t.say(
            &names[last],
            format!("delivered product:42 after {:.2} ms", d.as_secs_f64() * 1e3),
        ),
        None => t.say(&names[last], "never delivered product:42"),
    }

    // 2. A loss burst on frontend-1, repaired by NAKs.
    t.say(
        "frontend-1",
        format!("starts losing {:.0} % of what it receives", a.loss),
    );
    c.faults(1).set(Faults {
        loss: a.loss / 100.0,
        ..Faults::default()
    });
    for i in 0..a.events {
        c.publish(0, [format!("burst:{i}")])
            .await
            .map_err(|e| err(&e))?;
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    t.say("backend", format!("published {} invalidations", a.events));
    c.settle(Duration::from_secs(20)).await;
    c.faults(1).clear();
    if let Some(s) = c.stats(1).await {
        let p = &s.protocol;
        t.say(
            "frontend-1",
            format!(
                "lost {} datagrams; {} NAKs sent, {} suppressed; {} events repaired (time to repair p50 {:.1} ms, p99 {:.1} ms); {} resets",
                c.faults(1).lost(),
                p.naks_sent,
                p.naks_suppressed,
                p.events_repaired,
                p.repair_time.quantile_us(0.5) as f64 / 1e3,
                p.repair_time.quantile_us(0.99) as f64 / 1e3,
                p.resets_total()
            ),
        );
    }

    // 3. Tail loss: the last datagram of a burst is lost; the heartbeat 1 ms
    //    later reveals it.
    c.faults(1).set(Faults::dropping(|d| {
        matches!(&d.body, Body::Data { events, .. } if events.iter().any(|e| matches!(e.view(), EventRef::Invalidate { keys } if keys.clone().any(|k| k == "tail:last"))))
    }));
    let sent = Instant::now();
    c.publish(0, ["tail:last"]).await.map_err(|e| err(&e))?;
    t.say(
        "backend",
        "invalidates tail:last (lost on its way to frontend-1)",
    );
    match wait_for(c, 1, "tail:last", sent).await {
        Some(d) => t.say(
            "frontend-1",
            format!(
                "heartbeat revealed the loss; repaired after {:.2} ms",
                d.as_secs_f64() * 1e3
            ),
        ),
        None => t.say("frontend-1", "tail:last not repaired"),
    }
    c.faults(1).clear();

    // 4. The backend crashes (no Goodbye) right after a datagram frontend-1
    //    lost, and restarts.
    c.faults(1).set(Faults::dropping_next_data(1));
    c.publish(0, ["crash:last-words"])
        .await
        .map_err(|e| err(&e))?;
    // Once the datagram has left (before a heartbeat can follow), the crash.
    c.wait_sent(0, Duration::from_secs(5)).await;
    c.crash(0);
    c.faults(1).clear();
    t.say(
        "backend",
        "invalidates crash:last-words, then crashes (no Goodbye)",
    );
    c.restart(0).await.map_err(|e| err(&e))?;
    t.say("backend", "restarted: a new stream, followed from seq 1");
    c.publish(0, ["after-restart"]).await.map_err(|e| err(&e))?;
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    for i in fe.clone() {
        let resets: Vec<String> = c
            .deliveries(i)
            .iter()
            .filter_map(|(_, d)| match d {
                Delivery::Reset { reason } => Some(reason.kind().to_string()),
                _ => None,
            })
            .collect();
        t.say(&names[i], format!("resets so far: {resets:?} (the crashed stream timed out: its last events may be lost)"));
    }

    // 5. A frontend whose application falls behind: it gets a Reset, not
    //    a silent drop.
    if let Some(node) = c.node(1) {
        let mut slow = node.subscribe();
        for i in 0..6_000u64 {
            if c.publish(0, [format!("flood:{i}")]).await.is_err() {
                break;
            }
            if i % 200 == 199 {
                // Paced so that the recording subscriber keeps up; only
                // the one that never reads falls behind.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        c.settle(Duration::from_secs(20)).await;
        let mut lagged = None;
        while let Some(d) = slow.try_recv() {
            if let Delivery::Reset { reason } = d {
                lagged = Some(reason);
                break;
            }
        }
        match lagged {
            Some(r) => t.say(
                "frontend-1",
                format!(
                    "a subscriber that did not read for 6,000 events (queue 4,096) got Reset {r:?}"
                ),
            ),
            None => t.say("frontend-1", "the slow subscriber kept up"),
        }
    }

    // Verdict.
    c.settle(Duration::from_secs(20)).await;
    let check = c.check();
    let mut resets: BTreeMap<String, u64> = BTreeMap::new();
    let mut repaired = 0;
    for (i, name) in names.iter().enumerate() {
        if let Some(s) = c.stats(i).await {
            let p = &s.protocol;
            repaired += p.events_repaired;
            for (k, v) in &p.resets {
                *resets.entry(k.to_string()).or_default() += v;
            }
            t.say(
                name,
                format!(
                    "this life: delivered {} events ({} repaired, {} duplicates dropped), resets {:?}",
                    p.events_delivered, p.events_repaired, p.duplicates, p.resets
                ),
            );
        }
    }
    match check {
        Ok(r) => Ok(format!(
            "verdict: {} events checked ({} delivered, {} covered by a Reset), {repaired} repaired, Resets by reason {resets:?}: no silent loss",
            r.expected, r.delivered, r.covered_by_reset
        )),
        Err(v) => Err(format!("verdict: SILENT LOSS: {v}")),
    }
}
