//! Membership and confirmation in virtual time: confirmed publishes under
//! loss, partitions, Resets, crashes and concurrent publishers; the
//! partition hole (a listener cut off while short-lived publishers come and
//! go); stability trimming the retransmit ring. Every run ends with the
//! no-silent-loss checker, which also holds every confirmation report to
//! what its members delivered.

use std::collections::BTreeSet;
use std::time::Duration;

use cachecast::testkit::{data_seqs, CheckReport, Faults, Sim};
use cachecast::wire::Event;
use cachecast::{ConfirmReport, CoreConfig, Liveness, MemberRef, ResetReason};

use crate::common::sim::*;

fn keys(from: u64, n: u64) -> Vec<Event> {
    (from..from + n).map(key).collect()
}

fn streams(sim: &Sim, ids: impl IntoIterator<Item = usize>) -> BTreeSet<u64> {
    ids.into_iter().map(|i| stream_of(sim, i)).collect()
}

fn set(v: &[MemberRef]) -> BTreeSet<u64> {
    v.iter().map(|m| m.stream).collect()
}

/// The report names every member of `expected` exactly once, in one of its
/// four outcomes, and no one else.
fn assert_exact(report: &ConfirmReport, expected: &BTreeSet<u64>) {
    let all: Vec<u64> = [
        &report.confirmed,
        &report.covered_by_reset,
        &report.departed,
        &report.pending,
    ]
    .iter()
    .flat_map(|v| v.iter().map(|m| m.stream))
    .collect();
    let named: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), named.len(), "a member named twice: {report:?}");
    assert_eq!(&named, expected, "{report:?}");
}

fn check(sim: &Sim) -> CheckReport {
    sim.check().unwrap_or_else(|v| panic!("{v}"))
}

/// `rounds` confirmed publishes of 5 events by node 0 of `n` nodes over
/// links with `loss`; returns the reports.
fn confirmed_rounds(
    seed: u64,
    n: usize,
    loss: f64,
    rounds: u64,
    timeout: Duration,
) -> (Sim, Vec<ConfirmReport>) {
    let mut sim = cluster(seed, n);
    sim.default_link = lossy(loss);
    // Everyone has heard everyone (leases, names) before the first ask.
    sim.run_for(secs(1));
    let mut reports = Vec::new();
    for r in 0..rounds {
        reports.push(sim.publish_confirmed(0, keys(r * 5, 5), timeout));
        sim.run_for(ms(10));
    }
    sim.heal_all();
    sim.run_for(secs(3));
    (sim, reports)
}

fn elapsed_ms(reports: &[ConfirmReport]) -> Vec<f64> {
    let mut v: Vec<f64> = reports
        .iter()
        .map(|r| r.elapsed.as_secs_f64() * 1e3)
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

#[test]
fn confirmation_at_1_percent_loss_confirms_every_member() {
    let (sim, reports) = confirmed_rounds(1, 20, 0.01, 50, secs(1));
    let others = streams(&sim, 1..20);
    for r in &reports {
        assert!(r.is_complete(), "{r:?}");
        assert_exact(r, &others);
        assert_eq!(set(&r.confirmed), others, "nobody Reset at 1 %: {r:?}");
        assert_eq!(r.stream, stream_of(&sim, 0));
    }
    let t = elapsed_ms(&reports);
    eprintln!(
        "1 % loss, 19 members: confirmation p50 {:.2} ms, max {:.2} ms",
        t[t.len() / 2],
        t[t.len() - 1]
    );
    // A lost datagram costs a repair or a second ask, tens of ms at most.
    assert!(t[t.len() - 1] < 300.0, "{t:?}");
    let rep = check(&sim);
    assert_eq!(rep.confirmations, 50);
    assert_eq!(rep.confirmed_claims, 50 * 19 * 5);
    let st = sim.core(0).unwrap().stats();
    assert_eq!(
        (st.confirmations_complete, st.confirmations_incomplete),
        (50, 0)
    );
}

#[test]
fn confirmation_at_10_percent_loss_is_exact_about_every_member() {
    let (sim, reports) = confirmed_rounds(2, 20, 0.10, 50, secs(1));
    let others = streams(&sim, 1..20);
    let mut complete = 0;
    for r in &reports {
        assert_exact(r, &others);
        assert!(r.departed.is_empty(), "nobody left: {r:?}");
        complete += usize::from(r.is_complete());
    }
    let t = elapsed_ms(&reports);
    eprintln!(
        "10 % loss, 19 members: {complete}/50 complete, p50 {:.2} ms, max {:.2} ms",
        t[t.len() / 2],
        t[t.len() - 1]
    );
    // Asked again until they answer: a second is plenty at 10 %.
    assert_eq!(complete, 50);
    let rep = check(&sim);
    assert_eq!(rep.confirmations, 50);
}

#[test]
fn a_partitioned_member_is_pending_then_departed_when_its_lease_expires() {
    let mut sim = cluster(3, 6);
    sim.run_for(secs(1));
    let cut = 5;
    let lease = sim.core(0).unwrap().config().lease;
    let live = streams(&sim, 1..5);
    let everyone = streams(&sim, 1..6);
    sim.partition(cut, true);
    let cut_at = sim.now();
    // Shorter than the lease: the member is still live, and silent.
    let r1 = sim.publish_confirmed(0, keys(0, 5), secs(1));
    assert_exact(&r1, &everyone);
    assert_eq!(set(&r1.confirmed), live, "{r1:?}");
    assert_eq!(set(&r1.pending), streams(&sim, [cut]), "{r1:?}");
    assert_eq!(r1.elapsed, secs(1), "resolved at the deadline");
    assert!(!r1.is_complete());
    // Longer than the lease: it is departed when the lease expires.
    let started = sim.now();
    let r2 = sim.publish_confirmed(0, keys(5, 5), secs(10));
    assert_exact(&r2, &everyone);
    assert_eq!(set(&r2.departed), streams(&sim, [cut]), "{r2:?}");
    assert!(r2.is_complete(), "{r2:?}");
    let dead_at = started + r2.elapsed - cut_at;
    // Leases are checked every quarter lease; the member was last heard at
    // most a heartbeat interval before the cut.
    assert!(
        dead_at >= lease - secs(1) && dead_at <= lease + lease / 4,
        "departed {dead_at:?} after the cut"
    );
    let view = sim.core(0).unwrap().members(sim.now());
    let m = view
        .iter()
        .find(|m| m.stream == stream_of(&sim, cut))
        .unwrap();
    assert_eq!(m.state, Liveness::Dead);
    assert_eq!(m.name.as_deref(), Some("n5"));
    assert_eq!(m.addr, Some(sim.addr(cut)));
    // Healed: live again, and it is confirmed like the others (it repairs
    // or Resets what it missed; the checker says which is fine).
    sim.partition(cut, false);
    sim.run_for(secs(2));
    let r3 = sim.publish_confirmed(0, keys(10, 5), secs(2));
    assert!(r3.is_complete(), "{r3:?}");
    assert!(r3.pending.is_empty() && r3.departed.is_empty(), "{r3:?}");
    sim.run_for(secs(3));
    let rep = check(&sim);
    assert_eq!(rep.confirmations, 3);
}

#[test]
fn a_member_that_resets_is_covered_by_its_reset() {
    let mut sim = Sim::new(4);
    let no_repair = CoreConfig {
        max_nak_tries: 0,
        ..CoreConfig::default()
    };
    sim.add_nodes("n", 4);
    let rx = sim.add_node("no-repair", no_repair);
    sim.run_for(secs(1));
    let s0 = stream_of(&sim, 0);
    let first = sim.publish_confirmed(0, keys(0, 3), secs(1));
    assert_eq!(set(&first.confirmed), streams(&sim, 1..5), "{first:?}");
    // The events of the next publish never reach it: without repair, the
    // gap is a Reset after the reorder window.
    sim.set_faults(
        rx,
        Faults::dropping(|d| data_seqs(d).is_some_and(|r| r.contains(&6))),
    );
    let r = sim.publish_confirmed(0, keys(3, 5), secs(1));
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(set(&r.covered_by_reset), streams(&sim, [rx]), "{r:?}");
    assert_eq!(set(&r.confirmed), streams(&sim, 1..4), "{r:?}");
    let resets = sim.resets(rx);
    assert!(
        matches!(
            resets.as_slice(),
            [(_, ResetReason::RetriesExhausted { stream, .. })] if *stream == s0
        ),
        "{resets:?}"
    );
    assert!(!sim
        .delivered_events(rx)
        .iter()
        .any(|&(s, q)| s == s0 && (4..9).contains(&q)));
    // Back to normal: the next one is confirmed.
    sim.clear_faults(rx);
    let next = sim.publish_confirmed(0, keys(8, 5), secs(1));
    assert_eq!(set(&next.confirmed), streams(&sim, 1..5), "{next:?}");
    let rep = check(&sim);
    assert_eq!(rep.confirmations, 3);
}

#[test]
fn a_sender_that_crashes_during_a_confirmation_leaves_nothing_false() {
    let mut sim = cluster(5, 5);
    sim.default_link = lossy(0.05);
    sim.run_for(secs(1));
    let old = stream_of(&sim, 0);
    let seqs = sim.publish_batch(0, keys(0, 20));
    let id = sim.confirm(0, seqs, secs(1));
    // Some members have answered, most not yet (their delay is random).
    sim.run_for(Duration::from_micros(400));
    sim.crash(0);
    assert!(sim.outcome(0, id).is_none());
    sim.run_for(secs(12));
    assert!(sim.record().lives_of(0).all(|l| l.confirmations.is_empty()));
    for r in 1..5 {
        let core = sim.core(r).unwrap();
        // Given up with a Reset at its timeout, and dead in the view.
        assert!(core.stream_state(old).is_none());
        assert!(
            sim.resets(r).iter().any(
                |(_, x)| matches!(x, ResetReason::StreamTimedOut { stream, .. } if *stream == old)
            ),
            "{:?}",
            sim.resets(r)
        );
        let view = core.members(sim.now());
        let m = view.iter().find(|m| m.stream == old).unwrap();
        assert_eq!(m.state, Liveness::Dead);
        assert_eq!(core.open_gaps(), 0);
    }
    // The node comes back as a new stream; the others confirm it.
    sim.restart(0);
    sim.run_for(secs(2));
    let r = sim.publish_confirmed(0, keys(20, 5), secs(1));
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(set(&r.confirmed), streams(&sim, 1..5), "{r:?}");
    sim.heal_all();
    sim.run_for(secs(1));
    let rep = check(&sim);
    assert_eq!(rep.confirmations, 1);
}

#[test]
fn two_publishers_confirming_at_once_are_both_confirmed() {
    let mut sim = cluster(6, 8);
    sim.default_link = lossy(0.05);
    sim.run_for(secs(1));
    for round in 0..20 {
        let a = sim.publish_batch(0, keys(round * 10, 5));
        let b = sim.publish_batch(1, keys(round * 10 + 5, 5));
        let ia = sim.confirm(0, a, secs(1));
        let ib = sim.confirm(1, b, secs(1));
        let ra = sim.await_outcome(0, ia, secs(2)).expect("an outcome");
        let rb = sim.await_outcome(1, ib, secs(2)).expect("an outcome");
        let not_a = streams(&sim, (0..8).filter(|i| *i != 0));
        let not_b = streams(&sim, (0..8).filter(|i| *i != 1));
        assert_eq!(set(&ra.confirmed), not_a, "{ra:?}");
        assert_eq!(set(&rb.confirmed), not_b, "{rb:?}");
        sim.run_for(ms(5));
    }
    sim.heal_all();
    sim.run_for(secs(1));
    let rep = check(&sim);
    assert_eq!(rep.confirmations, 40);
    assert_eq!(rep.confirmed_claims, 40 * 7 * 5);
}

/// One random fault mix with confirmations awaited all along, from its
/// seed: no report may claim a member falsely, whatever happens.
fn confirm_chaos(seed: u64) -> Result<CheckReport, String> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut sim = Sim::new(seed);
    let n = rng.gen_range(3..=8);
    sim.add_nodes("n", n);
    sim.run_for(ms(200));
    let link = Faults {
        loss: rng.gen_range(0.0..0.3),
        duplicate: rng.gen_range(0.0..0.1),
        delay: Duration::from_micros(rng.gen_range(50..2000)),
        jitter: Duration::from_micros(rng.gen_range(0..10_000)),
        ..Faults::default()
    };
    let mix = format!("{n} nodes, {link:?}");
    sim.default_link = link;
    for _ in 0..rng.gen_range(200..600) {
        let who = rng.gen_range(0..n);
        let open = sim.core(who).is_some_and(|c| !c.is_closed());
        match rng.gen_range(0..100) {
            0..=59 => {
                if open {
                    let from = rng.gen();
                    sim.publish_batch(who, keys(from, rng.gen_range(1..4)));
                }
            }
            60..=79 => {
                if open {
                    let from = rng.gen();
                    let seqs = sim.publish_batch(who, keys(from, rng.gen_range(1..4)));
                    sim.confirm(who, seqs, ms(rng.gen_range(1..4000)));
                }
            }
            80..=84 => sim.partition(who, true),
            85..=92 => sim.partition(who, false),
            93..=95 => sim.restart(who),
            96 => sim.crash(who),
            97 => {
                if open {
                    sim.close(who)
                }
            }
            _ => {
                if sim.core(who).is_none() {
                    sim.restart(who);
                }
            }
        }
        sim.run_for(Duration::from_micros(rng.gen_range(100..50_000)));
    }
    sim.heal_all();
    sim.run_for(secs(15));
    sim.check()
        .map_err(|v| format!("seed {seed} ({mix}):\n{v}"))
}

#[test]
fn random_fault_mixes_never_confirm_falsely() {
    let seeds = chaos_seeds(30);
    let runs = seeds.len();
    let mut confirmations = 0;
    let mut failures = Vec::new();
    for seed in seeds {
        match confirm_chaos(seed) {
            Ok(rep) => confirmations += rep.confirmed_claims,
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} seeds failed (replay with CACHECAST_CHAOS_SEED=N):\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The runs did confirm something: the rule was exercised.
    assert!(
        confirmations > 30 * runs as u64,
        "{confirmations} claims checked"
    );
}

/// A short-lived publisher, as `cachecast send`: it joins, publishes
/// `KEYS` keys over 0.35 s of its life, says `Goodbye`, lingers, exits.
struct ShortLived {
    id: usize,
    born: Duration,
    sent: u64,
    closed: bool,
}

const KEYS: u64 = 100;

/// The partition hole: `listener` (node 0) is cut off from `cut_at` for
/// `cut` while a new short-lived publisher starts every second; `peers`
/// stay up. Healed, settled past the stream timeout, every event must be
/// delivered to the listener or covered by a Reset after it, with nothing
/// excused as unknowable.
fn partition_hole(seed: u64, cut: Duration) -> (Sim, CheckReport) {
    hole(seed, 2, 0.01, secs(2), cut)
}

fn hole(seed: u64, peers: usize, loss: f64, cut_at: Duration, cut: Duration) -> (Sim, CheckReport) {
    let mut sim = cluster(seed, peers + 1);
    sim.default_link = lossy(loss);
    let end = cut_at + cut + secs(4);
    let mut pubs: Vec<ShortLived> = Vec::new();
    let step = Duration::from_micros(2500);
    let start = sim.elapsed();
    let mut t = Duration::ZERO;
    let mut next_pub = secs(1);
    let mut k = 0;
    while t < end {
        sim.partition(0, t >= cut_at && t < cut_at + cut);
        if t >= next_pub && t + secs(1) < end {
            next_pub += secs(1);
            let id = sim.add_node(&format!("send{}", pubs.len()), CoreConfig::default());
            pubs.push(ShortLived {
                id,
                born: t,
                sent: 0,
                closed: false,
            });
        }
        for p in &mut pubs {
            let age = t - p.born;
            if sim.core(p.id).is_none() {
                continue;
            }
            if age >= ms(100) && p.sent < KEYS {
                // 100 keys over the 250 ms after the join: 1 per 2.5 ms.
                sim.publish(p.id, key(k));
                k += 1;
                p.sent += 1;
            } else if p.sent == KEYS && !p.closed && age >= ms(350) {
                sim.close(p.id);
                p.closed = true;
            } else if p.closed && age >= ms(850) {
                sim.crash(p.id);
            }
        }
        sim.run_for(step);
        t = sim.elapsed() - start;
    }
    sim.heal_all();
    sim.run_for(secs(15));
    let rep = sim.check().unwrap_or_else(|v| {
        panic!("seed {seed}, {peers} peers, {loss} loss, cut {cut:?} at {cut_at:?}:\n{v}")
    });
    let listener = sim.core(0).unwrap().stats();
    eprintln!(
        "cut {cut:?}: {} publishers, {k} keys; listener: resets {:?}, streams learned {}, \
         delivered {}; check {rep:?}",
        pubs.len(),
        listener.resets,
        listener.streams_learned,
        listener.events_delivered
    );
    if std::env::var("SHOW_RESETS").is_ok() {
        for (t, r) in sim.resets(0) {
            eprintln!("  {:?}: {r:?}", t - sim.record().start);
        }
    }
    (sim, rep)
}

#[test]
fn partition_hole_3s_cut_with_short_lived_publishers_loses_nothing_silently() {
    for seed in [7, 8, 9] {
        let (sim, rep) = partition_hole(seed, secs(3));
        assert_eq!(
            rep.excused, 0,
            "seed {seed}: nothing is unknowable: {rep:?}"
        );
        // The listener heard every stream in the end, or gave it up with a
        // Reset: it knew of each of them.
        let st = sim.core(0).unwrap().stats();
        assert!(
            st.streams_learned > 0 || st.resets.contains_key("isolated"),
            "seed {seed}: {st:?}"
        );
    }
}

/// Cut off for longer than the lease, the listener Resets as isolated
/// once, when it hears the cluster again (not again while members that
/// left are all it has heard so far).
fn assert_isolated_once(sim: &Sim, cut: Duration) {
    let isolated = sim
        .resets(0)
        .iter()
        .filter(|(_, r)| matches!(r, ResetReason::Isolated { .. }))
        .count();
    let lease = sim.core(0).unwrap().config().lease;
    if cut >= lease + secs(2) {
        assert_eq!(isolated, 1, "cut {cut:?}: {:?}", sim.resets(0));
    } else {
        assert!(isolated <= 1, "cut {cut:?}: {:?}", sim.resets(0));
    }
}

#[test]
fn partition_hole_random_cuts_lose_nothing_silently() {
    use rand::{Rng, SeedableRng};
    for seed in 20..28 {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let peers = rng.gen_range(1..=4);
        let loss = rng.gen_range(0.0..0.05);
        let cut_at = ms(rng.gen_range(500..3000));
        let cut = ms(rng.gen_range(300..20_000));
        let (sim, rep) = hole(seed, peers, loss, cut_at, cut);
        assert_eq!(
            rep.excused, 0,
            "seed {seed}, {peers} peers, cut {cut:?}: nothing is unknowable: {rep:?}"
        );
        assert_isolated_once(&sim, cut);
    }
}

#[test]
fn partition_hole_15s_cut_with_short_lived_publishers_loses_nothing_silently() {
    for seed in [10, 11] {
        let (sim, rep) = partition_hole(seed, secs(15));
        assert_eq!(
            rep.excused, 0,
            "seed {seed}: nothing is unknowable: {rep:?}"
        );
        assert_isolated_once(&sim, secs(15));
    }
}

/// Publishes `per_ms` events every millisecond for `d` on node 0, and
/// returns the largest ring seen (sampled every 10 ms).
fn publish_steadily(sim: &mut Sim, d: Duration, per_ms: u64, from: &mut u64) -> u64 {
    let mut max_ring = 0;
    for i in 0..d.as_millis() as u64 {
        sim.publish_batch(0, keys(*from, per_ms));
        *from += per_ms;
        sim.run_for(ms(1));
        if i % 10 == 0 {
            max_ring = max_ring.max(sim.core(0).unwrap().stats_snapshot().ring_bytes);
        }
    }
    max_ring
}

fn with_stability(seed: u64, n: usize, stability: bool) -> Sim {
    let mut sim = Sim::new(seed);
    for i in 0..n {
        let cfg = CoreConfig {
            stability,
            ..CoreConfig::default()
        };
        sim.add_node(&format!("n{i}"), cfg);
    }
    sim.run_for(secs(1));
    sim
}

#[test]
fn stability_trims_the_ring_to_what_some_member_may_still_miss() {
    let mut ring = Vec::new();
    for stability in [true, false] {
        let mut sim = with_stability(12, 5, stability);
        sim.default_link = lossy(0.01);
        let mut k = 0;
        // 8 s at 1,000 events/s.
        let max = publish_steadily(&mut sim, secs(8), 1, &mut k);
        sim.run_for(secs(3));
        let st = sim.core(0).unwrap().stats_snapshot();
        eprintln!(
            "stability {stability}: ring at most {max} bytes while publishing, {} after, \
             {} events trimmed",
            st.ring_bytes, st.ring_trimmed
        );
        ring.push((max, st.ring_bytes, st.ring_trimmed));
        sim.heal_all();
        sim.run_for(secs(1));
        check(&sim);
    }
    let (on, off) = (ring[0], ring[1]);
    // Once every member reported the end, nothing is held.
    assert_eq!(on.1, 0, "{on:?}");
    assert!(on.2 >= 8_000, "{on:?}");
    // Without stability the ring holds everything (within its age).
    assert!(off.1 > 8_000 * 20, "{off:?}");
    assert_eq!(off.2, 0);
    // While publishing, about a report interval (1 s ± 25 %) plus the
    // minimum age of a trimmed event (two idle heartbeats and a sync
    // window, 2.1 s) is held, not the whole 8 s run.
    assert!(on.0 * 2 < off.0, "{on:?} vs {off:?}");
}

#[test]
fn a_member_partitioned_then_back_is_served_under_stability() {
    // Shorter than the lease: it stays a member, its position holds the
    // ring, and it is repaired without a Reset.
    let mut sim = with_stability(13, 5, true);
    let mut k = 0;
    sim.partition(4, true);
    publish_steadily(&mut sim, secs(1), 2, &mut k);
    sim.partition(4, false);
    publish_steadily(&mut sim, secs(1), 2, &mut k);
    sim.run_for(secs(3));
    let s0 = stream_of(&sim, 0);
    assert!(sim.resets(4).is_empty(), "{:?}", sim.resets(4));
    let got = sim
        .delivered_events(4)
        .iter()
        .filter(|(s, _)| *s == s0)
        .count();
    assert_eq!(got as u64, k);
    assert!(sim.core(4).unwrap().stats().events_repaired >= 1_500);
    assert_eq!(sim.core(0).unwrap().stats_snapshot().ring_bytes, 0);
    check(&sim);

    // Longer than the lease: it died for the others, the ring was trimmed
    // past it; back, it Resets (never a silent loss).
    let mut sim = with_stability(14, 5, true);
    let mut k = 0;
    sim.partition(4, true);
    publish_steadily(&mut sim, secs(5), 2, &mut k);
    let st = sim.core(0).unwrap().stats_snapshot();
    assert!(st.ring_trimmed > 0, "trimmed while it was away: {st:?}");
    sim.partition(4, false);
    publish_steadily(&mut sim, secs(1), 2, &mut k);
    sim.run_for(secs(3));
    let resets = sim.resets(4);
    assert!(!resets.is_empty(), "it missed what left the ring");
    let rep = check(&sim);
    assert!(rep.covered_by_reset > 0, "{rep:?}");
    // The others were not disturbed.
    for r in 1..4 {
        assert!(sim.resets(r).is_empty(), "{r}: {:?}", sim.resets(r));
    }
}

#[test]
fn without_loss_a_confirmation_takes_about_the_acknowledgement_delay() {
    let mut sim = cluster(15, 10);
    sim.run_for(secs(1));
    let ack_delay = sim.core(0).unwrap().config().ack_delay;
    for round in 0..20 {
        let r = sim.publish_confirmed(0, keys(round * 5, 5), secs(1));
        assert_eq!(set(&r.confirmed), streams(&sim, 1..10), "{r:?}");
        // The request's way out, the answer's delay and its way back (the
        // links' delay is 100 µs): not a retry interval.
        assert!(
            r.elapsed <= ack_delay + ms(1),
            "round {round}: {:?}",
            r.elapsed
        );
        sim.run_for(ms(3));
    }
    check(&sim);
}

#[test]
fn a_member_that_leaves_during_a_confirmation_is_departed_at_its_goodbye() {
    let mut sim = cluster(16, 4);
    sim.run_for(secs(1));
    // Node 3 hears nothing more (it still sends): it cannot answer.
    sim.set_faults(
        3,
        Faults {
            loss: 1.0,
            ..Faults::default()
        },
    );
    let seqs = sim.publish_batch(0, keys(0, 5));
    let id = sim.confirm(0, seqs, secs(2));
    sim.run_for(ms(50));
    assert!(sim.outcome(0, id).is_none(), "waits for node 3");
    sim.close(3);
    let r = sim
        .await_outcome(0, id, ms(5))
        .expect("resolved by the Goodbye");
    assert_eq!(set(&r.departed), streams(&sim, [3]), "{r:?}");
    assert_eq!(set(&r.confirmed), streams(&sim, [1, 2]), "{r:?}");
    assert!(r.elapsed < ms(52), "{:?}", r.elapsed);
    check(&sim);
}
