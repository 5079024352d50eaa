//! Repair at scale and under every fault the simulator has, in virtual
//! time, with the no-silent-loss checker on every run.

use std::collections::BTreeMap;
use std::time::Duration;

use cachecast::testkit::{data_seqs, Faults, GilbertElliott, Sim};
use cachecast::wire::{BodyTag, Event};
use cachecast::{CoreConfig, ResetReason};

use crate::common::sim::*;

struct Outcome {
    resets: BTreeMap<&'static str, u64>,
    lost: u64,
    naks: u64,
    repairs: u64,
    complete: usize,
    p50_us: u64,
    p99_us: u64,
}

/// One sender, `receivers` receivers, `events` events published 5 per
/// datagram every millisecond, every link faulty as `link`.
fn one_to_many(seed: u64, receivers: usize, events: u64, link: Faults) -> (Sim, Outcome) {
    let mut sim = Sim::new(seed);
    sim.add_nodes("n", receivers + 1);
    sim.run_for(ms(200));
    sim.default_link = link;
    let mut i = 0;
    while i < events {
        let batch: Vec<Event> = (i..(i + 5).min(events)).map(key).collect();
        i += batch.len() as u64;
        sim.publish_batch(0, batch);
        sim.run_for(ms(1));
    }
    sim.run_for(Duration::from_secs(3));
    let s0 = sim.core(0).unwrap().stream();
    let mut out = Outcome {
        resets: BTreeMap::new(),
        lost: sim.lost_data,
        naks: 0,
        repairs: sim.core(0).unwrap().stats().repairs_sent,
        complete: 0,
        p50_us: 0,
        p99_us: 0,
    };
    let mut hist = cachecast::Histogram::default();
    for r in 1..=receivers {
        let st = sim.core(r).unwrap().stats();
        out.naks += st.naks_sent;
        for (k, v) in &st.resets {
            *out.resets.entry(k).or_default() += v;
        }
        hist.merge(&st.repair_time);
        let got = sim
            .delivered_events(r)
            .iter()
            .filter(|(s, _)| *s == s0)
            .count();
        if got as u64 == events {
            out.complete += 1;
        }
    }
    out.p50_us = hist.quantile_us(0.5);
    out.p99_us = hist.quantile_us(0.99);
    eprintln!(
        "{receivers} receivers, {events} events: {} data datagrams lost, NAKs/loss {:.3}, repairs/loss {:.3}, \
         time to repair p50 {} µs p99 {} µs, complete {}/{receivers}, resets {:?}",
        out.lost,
        out.naks as f64 / out.lost.max(1) as f64,
        out.repairs as f64 / out.lost.max(1) as f64,
        out.p50_us,
        out.p99_us,
        out.complete,
        out.resets
    );
    (sim, out)
}

#[test]
fn one_to_200_at_1_percent_loss_delivers_everything_without_reset() {
    let (sim, out) = one_to_many(1, 200, 10_000, lossy(0.01));
    assert!(out.resets.is_empty(), "{:?}", out.resets);
    assert_eq!(out.complete, 200);
    assert!(out.lost > 1000, "loss was injected: {}", out.lost);
    sim.check().unwrap();
}

#[test]
fn one_to_200_at_5_percent_loss_delivers_everything_without_reset() {
    let (sim, out) = one_to_many(2, 200, 10_000, lossy(0.05));
    assert!(out.resets.is_empty(), "{:?}", out.resets);
    assert_eq!(out.complete, 200);
    sim.check().unwrap();
}

/// Resets that say repair was impossible (as opposed to a bug or a bound
/// hit by a healthy run).
const IMPOSSIBLE: [&str; 4] = [
    "unavailable",
    "retries_exhausted",
    "too_old",
    "stream_timed_out",
];

#[test]
fn one_to_200_at_20_percent_bursty_loss_never_loses_silently() {
    let link = Faults {
        burst: Some(GilbertElliott::with_average(0.20, 8.0)),
        delay: Duration::from_micros(100),
        jitter: Duration::from_micros(50),
        ..Faults::default()
    };
    let (sim, out) = one_to_many(3, 200, 10_000, link);
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
    for kind in out.resets.keys() {
        assert!(IMPOSSIBLE.contains(kind), "reset for {kind}");
    }
    // Bursts of 8 at 20 %: repair still gets nearly everything through.
    assert!(out.complete >= 190, "{} of 200 complete", out.complete);
}

#[test]
fn one_to_200_with_a_partition_that_heals_is_repaired_without_reset() {
    let mut sim = Sim::new(4);
    sim.add_nodes("n", 201);
    sim.run_for(ms(200));
    sim.default_link = lossy(0.01);
    let cut: Vec<usize> = (181..=200).collect();
    // 10,000 events, 5 per millisecond; 20 receivers cut off from event
    // 2,000 to 4,000 (400 ms).
    for i in (0..10_000u64).step_by(5) {
        if i == 2_000 || i == 4_000 {
            for &r in &cut {
                sim.partition(r, i == 2_000);
            }
        }
        sim.publish_batch(0, (i..i + 5).map(key).collect());
        sim.run_for(ms(1));
    }
    sim.run_for(Duration::from_secs(5));
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
    let s0 = sim.core(0).unwrap().stream();
    for r in 1..=200 {
        let st = sim.core(r).unwrap().stats();
        assert_eq!(st.resets_total(), 0, "receiver {r}: {:?}", st.resets);
        let got = sim
            .delivered_events(r)
            .iter()
            .filter(|(s, _)| *s == s0)
            .count();
        assert_eq!(got, 10_000, "receiver {r}");
    }
    let healed = sim.core(200).unwrap().stats();
    assert!(
        healed.events_repaired >= 1_900,
        "{}",
        healed.events_repaired
    );
}

#[test]
fn a_loss_that_left_the_ring_is_reset_as_unavailable() {
    let mut sim = Sim::new(5);
    let small = CoreConfig {
        retransmit_bytes: 500,
        ..CoreConfig::default()
    };
    let tx = sim.add_node("tx", small);
    let rx = sim.add_node("rx", CoreConfig::default());
    sim.run_for(ms(200));
    let s0 = sim.core(tx).unwrap().stream();
    sim.set_faults(
        rx,
        Faults::dropping(|d| data_seqs(d).is_some_and(|r| r.contains(&10))),
    );
    // 200 events in one go: seq 10 leaves the 500-byte ring before any Nak.
    for i in 0..200 {
        sim.publish(tx, key(i));
    }
    sim.run_for(ms(100));
    let resets = sim.resets(rx);
    assert_eq!(
        resets.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        [ResetReason::Unavailable {
            stream: s0,
            missing: (10, 11)
        }]
    );
    assert_eq!(sim.delivered_events(rx).len(), 199);
    sim.check().unwrap();
}

#[test]
fn sender_crash_without_goodbye_then_a_new_stream() {
    let mut sim = Sim::new(6);
    sim.add_nodes("n", 4);
    sim.run_for(ms(200));
    sim.default_link = lossy(0.05);
    for i in 0..500 {
        sim.publish(0, key(i));
        sim.run_for(ms(1));
    }
    let old = sim.core(0).unwrap().stream();
    sim.restart(0); // a crash: no Goodbye, a new process, a new stream
    sim.run_for(ms(150));
    let new = sim.core(0).unwrap().stream();
    for i in 500..1000 {
        sim.publish(0, key(i));
        sim.run_for(ms(1));
    }
    sim.run_for(Duration::from_secs(12));
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
    for r in 1..4 {
        let mut new_seqs: Vec<u64> = sim
            .delivered_events(r)
            .iter()
            .filter(|(s, _)| *s == new)
            .map(|(_, q)| *q)
            .collect();
        new_seqs.sort();
        assert_eq!(new_seqs, (1..=500).collect::<Vec<_>>(), "receiver {r}");
        // The crashed stream is given up with a Reset: its tail may be lost.
        let resets = sim.resets(r);
        assert!(
            resets.iter().any(
                |(_, x)| matches!(x, ResetReason::StreamTimedOut { stream, .. } if *stream == old)
            ),
            "{resets:?}"
        );
        assert!(sim.core(r).unwrap().stream_state(old).is_none());
    }
}

#[test]
fn receiver_restart_is_in_sync_after_its_join() {
    let mut sim = Sim::new(7);
    sim.add_nodes("n", 3);
    sim.run_for(ms(200));
    sim.default_link = lossy(0.05);
    for i in 0..1000 {
        if i == 400 {
            sim.restart(2);
        }
        sim.publish(0, key(i));
        sim.run_for(ms(1));
    }
    sim.run_for(Duration::from_secs(2));
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
    let life = sim.life(2);
    let published_after: Vec<u64> = sim
        .published()
        .iter()
        .filter(|p| p.node == 0 && p.at >= life.synced)
        .map(|p| p.seq)
        .collect();
    let got: std::collections::HashSet<u64> = life.events().map(|(_, seq)| seq).collect();
    assert!(published_after.len() > 400);
    for q in published_after {
        assert!(got.contains(&q), "restarted receiver missed seq {q}");
    }
    assert_eq!(sim.core(2).unwrap().stats().resets_total(), 0);
}

/// Over the unicast transport a `Nak` reaches its stream's origin only, and
/// a repair only the node that asked: with one publisher and two
/// receivers, one of them lossy, the other receiver hears no `Nak` and no
/// repair at all, and the lossy one still gets everything.
#[test]
fn over_unicast_naks_go_to_the_origin_and_repairs_to_the_asker() {
    let mut sim = Sim::new(5);
    sim.unicast = true;
    sim.add_nodes("n", 3);
    sim.run_for(ms(200));
    sim.set_faults(2, lossy(0.2));
    for i in 0..300 {
        sim.publish(0, key(i));
        sim.run_for(ms(1));
    }
    sim.set_faults(2, Faults::default());
    sim.run_for(Duration::from_secs(2));
    let naks = |id| sim.traffic(id).received(BodyTag::Nak).datagrams;
    assert!(
        sim.core(2).unwrap().stats().naks_sent > 0,
        "no loss repaired"
    );
    assert!(naks(0) > 0, "the origin heard no Nak");
    assert_eq!(naks(1), 0, "a Nak reached a node that is not the origin");
    let repairs = |id| sim.traffic(id).received(BodyTag::Repair).datagrams;
    assert!(repairs(2) > 0);
    assert_eq!(repairs(1), 0, "a repair reached a node that did not ask");
    let s = sim.core(0).unwrap().stats();
    assert_eq!(s.repairs_directed, s.repairs_sent, "{s:?}");
    for r in [1, 2] {
        assert_eq!(sim.delivered_events(r).len(), 300, "node {r}");
        assert_eq!(sim.core(r).unwrap().stats().resets_total(), 0, "node {r}");
    }
}

/// The same fault mixes over the unicast transport (`Nak`s to their
/// stream's origin only: no receiver's `Nak` is suppressed by another's).
#[test]
fn random_fault_mixes_over_unicast_never_lose_silently() {
    let seeds = chaos_seeds(60);
    let runs = seeds.len();
    let failures: Vec<String> = seeds
        .into_iter()
        .filter_map(|seed| chaos_over(seed, false, true).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {runs} seeds lost silently over unicast (replay with CACHECAST_CHAOS_SEED=N):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn random_fault_mixes_never_lose_silently() {
    let seeds = chaos_seeds(60);
    let runs = seeds.len();
    let failures: Vec<String> = seeds
        .into_iter()
        .filter_map(|seed| chaos(seed, false).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {runs} seeds lost silently (replay with CACHECAST_CHAOS_SEED=N):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Multicast with direct repairs (a real node's default): a repair one
/// receiver asked for goes to it alone, and to the group when another asks
/// for the same events (it lost them too and waited on the first `Nak`).
/// Twenty receivers at 5 % loss on every link (losses shared by several
/// receivers every few datagrams), and one receiver that loses 30 % of
/// what it receives: every event reaches everyone, no `Reset`, and both kinds
/// of repair were sent.
#[test]
fn directed_repairs_under_shared_loss_deliver_everything() {
    let mut sim = Sim::new(21);
    sim.directed = true;
    sim.add_nodes("n", 21);
    sim.run_for(ms(1000));
    sim.default_link = lossy(0.05);
    sim.set_faults(20, lossy(0.3));
    for i in 0..1000 {
        sim.publish(0, key(i));
        sim.run_for(ms(1));
    }
    sim.run_for(Duration::from_secs(3));
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
    for r in 1..21 {
        assert_eq!(sim.delivered_events(r).len(), 1000, "node {r}");
        assert_eq!(sim.core(r).unwrap().stats().resets_total(), 0, "node {r}");
    }
    let s = sim.core(0).unwrap().stats();
    assert!(s.repairs_directed > 0, "{s:?}");
    assert!(s.repairs_sent > s.repairs_directed, "{s:?}");
    // Every directed repair went to a node's address (the simulator loses
    // one sent anywhere else).
    assert_eq!(sim.traffic(0).misdirected(), 0);
}

/// Each stream keeps its own round trip of repairs: a receiver that
/// follows a near publisher (0.1 ms away, repaired in 0.2 ms, most of its
/// samples) and a far one (4 ms away, 8 ms round trip) waits for the far
/// one's repairs as long as they take, rather than asking again after the
/// near one's round trip (2 ms, the floor) and doubling its `Nak`s.
#[test]
fn each_stream_keeps_its_own_round_trip_of_repairs() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use cachecast::wire::Body;

    let mut sim = Sim::new(11);
    // 0: near publisher, 1: far publisher, 2: the receiver.
    sim.add_nodes("n", 3);
    sim.run_for(ms(1000));
    let far = stream_of(&sim, 1);
    // Every 10th Data datagram of each publisher is lost at the receiver.
    let lossy = |delay: Duration, lost: Arc<AtomicU64>| {
        let mut f = Faults::dropping(move |d| {
            let hit = matches!(d.body, Body::Data { first_seq, .. } if first_seq % 10 == 3);
            if hit {
                lost.fetch_add(1, Ordering::SeqCst);
            }
            hit
        });
        f.delay = delay;
        f
    };
    let far_lost = Arc::new(AtomicU64::new(0));
    sim.set_link(
        0,
        2,
        lossy(Duration::from_micros(100), Arc::new(AtomicU64::new(0))),
    );
    sim.set_link(1, 2, lossy(ms(4), far_lost.clone()));
    // The receiver's Naks for the far stream, counted on their way.
    let far_naks = Arc::new(AtomicU64::new(0));
    let counted = far_naks.clone();
    let mut back = Faults::dropping(move |d| {
        if matches!(d.body, Body::Nak { stream, .. } if stream == far) {
            counted.fetch_add(1, Ordering::SeqCst);
        }
        false
    });
    back.delay = ms(4);
    sim.set_link(2, 1, back);
    sim.set_link(
        2,
        0,
        Faults {
            delay: Duration::from_micros(100),
            ..Faults::default()
        },
    );
    sim.set_link(1, 0, back_link());
    // The near publisher sends ten times as often as the far one.
    for i in 0..2000 {
        sim.publish(0, key(i));
        if i % 10 == 0 {
            sim.publish(1, key(i));
        }
        sim.run_for(ms(1));
    }
    sim.run_for(ms(500));
    let lost = far_lost.load(Ordering::SeqCst);
    let naks = far_naks.load(Ordering::SeqCst);
    let rx = sim.core(2).unwrap().stats().clone();
    eprintln!(
        "far stream: {lost} lost, {naks} Naks; receiver: {} repaired, p99 {} µs",
        rx.events_repaired,
        rx.repair_time.quantile_us(0.99)
    );
    assert!(lost >= 15, "the test needs losses: {lost}");
    assert!(
        naks * 10 <= lost * 13,
        "{naks} Naks for {lost} losses of the far stream"
    );
    assert!(sim.resets(2).is_empty(), "{:?}", sim.resets(2));
    sim.check().unwrap();
}

fn back_link() -> Faults {
    Faults {
        delay: ms(4),
        ..Faults::default()
    }
}
