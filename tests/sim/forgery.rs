//! Forged datagrams without keys (`auth = off`): anyone who can send to the
//! group may forge any body for a real stream. It may cost `Reset`s and
//! duplicate deliveries, never a silent loss: after a forged datagram,
//! every real event published later is still delivered, or followed by a
//! `Reset` produced after it was published. One test per body kind, each
//! at the stream's real position, a little ahead, far ahead and in its
//! past; the two attacks once measured on a LAN; and the chaos runs with
//! an adversary forging all along. Every run is judged by the test kit's
//! checker, which matches events by content when datagrams were forged.

use std::collections::HashSet;

use cachecast::testkit::{data_seqs, Faults, Sim};
use cachecast::wire::{Body, Event, Events, Position};
use cachecast::{CoreConfig, Delivery};

use crate::common::sim::*;

/// Where a forged datagram puts the stream.
#[derive(Debug, Clone, Copy)]
enum At {
    /// The stream's real next seq.
    Real,
    /// A little ahead of it (seqs the stream will use soon).
    Ahead,
    /// Far ahead (seqs it will not use for years).
    Far,
    /// In its past.
    Past,
}

const ALL: [At; 4] = [At::Real, At::Ahead, At::Far, At::Past];

impl At {
    fn of(self, real: u64) -> u64 {
        match self {
            At::Real => real,
            At::Ahead => real + 3,
            At::Far => real + (1 << 40),
            At::Past => (real / 2).max(1),
        }
    }
}

fn forged_events(n: usize) -> Events {
    let events: Vec<Event> = (0..n)
        .map(|i| Event::Invalidate {
            keys: vec![format!("forged-{i}")],
        })
        .collect();
    Events::new(&events).unwrap()
}

/// A body of `kind` forged for stream `s` (of node `n0`) at `pos`.
fn forged(kind: &str, s: u64, pos: u64) -> Body {
    match kind {
        // "I hold nothing below it any more" too: what is missing below is
        // given up at once.
        "heartbeat" => Body::Heartbeat {
            next_seq: pos,
            oldest: pos,
            node: "n0".into(),
        },
        "goodbye" => Body::Goodbye { next_seq: pos },
        "unavailable" => Body::Unavailable {
            stream: s,
            ranges: vec![(pos.saturating_sub(20).max(1), pos + 1000)],
        },
        "ack_request" => Body::AckRequest {
            next_seq: pos,
            members: Vec::new(),
        },
        "nak" => Body::Nak {
            stream: s,
            ranges: vec![(pos, pos + 50)],
        },
        "hello" => Body::Hello { node: "n0".into() },
        "data" => Body::Data {
            first_seq: pos,
            events: forged_events(3),
        },
        "repair" => Body::Repair {
            first_seq: pos,
            events: forged_events(3),
        },
        // More events than a receiver keeps runs (`RECENT_RUNS`): each is
        // a seq of the forged repair's span, its print kept one by one.
        "long repair" => Body::Repair {
            first_seq: pos,
            events: forged_events(100),
        },
        other => panic!("unknown kind {other}"),
    }
}

struct Run {
    sim: Sim,
    /// Seqs of node 0's events published after the forgery.
    after: Vec<u64>,
}

/// Four nodes; node 0 publishes an event every 2 ms, before and after one
/// forged datagram (`from` names the header's stream: node 0's, or the
/// forger's own for a report or a Nak), for 4 s. Node 1 loses some of the
/// events published after the forgery (every 37th `Data` from node 0, and
/// every `Data` of a stretch a second and a half later, when a receiver
/// fooled by a far-future position would have given that stretch up): a
/// receiver left blind by the forgery would lose them silently.
fn scenario(seed: u64, make: impl FnOnce(&Sim) -> (u64, Body)) -> Run {
    let mut sim = cluster(seed, 4);
    let s0 = stream_of(&sim, 0);
    for i in 0..50 {
        sim.publish(0, key(i));
        sim.run_for(ms(2));
    }
    let (from, body) = make(&sim);
    sim.forge(from, &body);
    let first_after = sim.core(0).unwrap().next_seq();
    let blind_from = first_after + 1200;
    sim.set_faults(
        1,
        Faults::dropping(move |d| {
            d.header.stream == s0
                && data_seqs(d).is_some_and(|q| {
                    q.start % 37 == 0 || (blind_from..blind_from + 30).contains(&q.start)
                })
        }),
    );
    for i in 50..2050 {
        sim.publish(0, key(i));
        sim.run_for(ms(2));
    }
    sim.heal_all();
    sim.run_for(secs(15));
    let after = (first_after..sim.core(0).unwrap().next_seq()).collect();
    Run { sim, after }
}

impl Run {
    /// The promise, by the checker; and every real event published after
    /// the forgery delivered at every receiver, or a Reset produced after
    /// it, except where a forged event took its seq and the real one never
    /// reached the receiver (the checker's exception 4: a long forged
    /// repair can cover a seq node 1 loses).
    fn holds(&self, what: &str) {
        if let Err(v) = self.sim.check() {
            panic!("{what}: {v}");
        }
        let s0 = stream_of(&self.sim, 0);
        let published: Vec<_> = (self.sim.published().iter())
            .filter(|p| p.stream == s0 && self.after.contains(&p.seq))
            .collect();
        for r in 1..4 {
            let life = self.sim.life(r);
            let got: HashSet<u64> = (life.delivered_events())
                .filter(|((s, q), e)| {
                    *s == s0 && published.iter().any(|p| p.seq == *q && **e == p.event)
                })
                .map(|((_, q), _)| q)
                .collect();
            let last_reset = life.resets().map(|(t, _)| t).max();
            let stood_in = |q: u64| {
                (life.delivered_events()).any(|((s, d), _)| s == s0 && d == q)
                    && !life.received.contains(&(s0, q))
            };
            for p in &published {
                assert!(
                    got.contains(&p.seq)
                        || last_reset.is_some_and(|t| t >= p.at)
                        || stood_in(p.seq),
                    "{what}: node {r} lost seq {} silently (resets {:?})",
                    p.seq,
                    self.sim.resets(r)
                );
            }
        }
    }

    fn resets(&self) -> usize {
        (1..4).map(|r| self.sim.resets(r).len()).sum()
    }

    fn stat(&self, f: impl Fn(&cachecast::Stats) -> u64) -> u64 {
        (1..4).map(|r| f(self.sim.core(r).unwrap().stats())).sum()
    }
}

/// Each position of `kind`, forged in node 0's name.
fn every_position(kind: &str) {
    for (i, at) in ALL.into_iter().enumerate() {
        let run = scenario(100 + i as u64, |sim| {
            let s0 = stream_of(sim, 0);
            let real = sim.core(0).unwrap().next_seq();
            (s0, forged(kind, s0, at.of(real)))
        });
        run.holds(&format!("forged {kind} at {at:?}"));
    }
}

#[test]
fn a_forged_heartbeat_loses_nothing_silently() {
    every_position("heartbeat");
}

#[test]
fn a_forged_goodbye_loses_nothing_silently() {
    every_position("goodbye");
}

#[test]
fn a_forged_unavailable_loses_nothing_silently() {
    every_position("unavailable");
}

#[test]
fn a_forged_ack_request_loses_nothing_silently() {
    every_position("ack_request");
}

#[test]
fn a_forged_nak_loses_nothing_silently() {
    every_position("nak");
}

#[test]
fn a_forged_hello_loses_nothing_silently() {
    every_position("hello");
}

#[test]
fn a_forged_report_loses_nothing_silently() {
    // In the name of node 2, about node 0's stream.
    for (i, at) in ALL.into_iter().enumerate() {
        let run = scenario(200 + i as u64, |sim| {
            let s0 = stream_of(sim, 0);
            let real = sim.core(0).unwrap().next_seq();
            let delivered = at.of(real);
            let body = Body::Report {
                node: "n2".into(),
                positions: vec![Position {
                    stream: s0,
                    delivered,
                    reset_end: delivered,
                    idle_ms: 0,
                }],
                keys: Vec::new(),
            };
            (stream_of(sim, 2), body)
        });
        run.holds(&format!("forged report at {at:?}"));
    }
}

/// Forged events take a seq; the real event of that seq, arriving after,
/// is still delivered (its content differs), and nothing after it is lost.
#[test]
fn forged_data_and_repairs_lose_nothing_silently() {
    for kind in ["data", "repair", "long repair"] {
        every_position(kind);
    }
}

/// The attack measured on a LAN: one forged `Goodbye` at a live stream's
/// real position made every listener retire the stream and drop the rest of
/// it as `ended_stream` (14,979 of 20,000 keys lost, zero Resets). Now the
/// stream's next event shows the `Goodbye` false before it is retired:
/// every listener goes on following it, and loses nothing, without a Reset.
#[test]
fn a_forged_goodbye_at_the_real_position_is_undone_by_the_next_event() {
    let run = scenario(7, |sim| {
        let s0 = stream_of(sim, 0);
        let real = sim.core(0).unwrap().next_seq();
        (s0, Body::Goodbye { next_seq: real })
    });
    run.holds("forged Goodbye at the real position");
    assert_eq!(run.resets(), 0, "{:?}", run.sim.resets(1));
    assert!(run.stat(|s| s.position_contradicted) >= 3);
    assert_eq!(
        run.stat(|s| s.dropped.get("ended_stream").copied().unwrap_or(0)),
        0
    );
    members_see_node_0_live(&run.sim);
}

/// The member is live again in every listener's view.
fn members_see_node_0_live(sim: &Sim) {
    let s0 = stream_of(sim, 0);
    for r in 1..sim.len() {
        let view = sim.core(r).unwrap().members(sim.now());
        let m = view.iter().find(|m| m.stream == s0).unwrap();
        assert_eq!(m.state, cachecast::Liveness::Live, "node {r}: {m:?}");
    }
}

/// A `Goodbye`, forged twice while the stream is idle, a reorder window
/// apart (as a closing sender repeats it), and the stream's heartbeats lost
/// for longer than a `Goodbye` must stand: nothing contradicts it, and
/// every listener retires the stream. Its next heartbeat shows the `Goodbye` false (a
/// stream that said Goodbye sends none): the stream is followed again from
/// where it was, and what node 1 loses afterwards is repaired.
#[test]
fn a_forged_goodbye_to_an_idle_stream_is_undone_by_its_next_heartbeat() {
    let mut sim = cluster(10, 4);
    let s0 = stream_of(&sim, 0);
    for i in 0..20 {
        sim.publish(0, key(i));
        sim.run_for(ms(2));
    }
    sim.run_for(ms(500));
    let real = sim.core(0).unwrap().next_seq();
    // Everything of the stream but the forger's Goodbyes is lost (none of
    // its heartbeats shows them false).
    for r in 1..4 {
        sim.set_faults(
            r,
            Faults::dropping(move |d| {
                d.header.stream == s0 && !matches!(d.body, Body::Goodbye { .. })
            }),
        );
    }
    sim.forge(s0, &Body::Goodbye { next_seq: real });
    sim.run_for(ms(6));
    sim.forge(s0, &Body::Goodbye { next_seq: real });
    sim.run_for(secs(2));
    for r in 1..4 {
        let core = sim.core(r).unwrap();
        assert!(
            core.stream_state(s0).is_none(),
            "node {r} did not retire it"
        );
        assert_eq!(core.stats().streams_ended, 1);
        sim.clear_faults(r);
    }
    sim.run_for(secs(2));
    for r in 1..4 {
        let st = sim.core(r).unwrap().stats();
        assert_eq!(
            st.streams_reopened, 1,
            "node {r}: its heartbeat reopened it"
        );
        assert!(sim.core(r).unwrap().stream_state(s0).is_some());
    }
    later_events_reach_everyone(&mut sim, s0, 1);
}

/// One `Goodbye`, forged while the stream is idle, at its real position:
/// a `Goodbye` must stand a heartbeat interval and a contradiction window
/// before it retires a stream, and the live stream's next heartbeat shows
/// it false first. Nothing is retired, lost or Reset, and the member is
/// live again.
#[test]
fn a_forged_goodbye_to_a_live_idle_stream_retires_nothing() {
    let mut sim = cluster(11, 4);
    let s0 = stream_of(&sim, 0);
    for i in 0..20 {
        sim.publish(0, key(i));
        sim.run_for(ms(2));
    }
    sim.run_for(ms(500));
    let real = sim.core(0).unwrap().next_seq();
    sim.forge(s0, &Body::Goodbye { next_seq: real });
    sim.run_for(secs(4));
    for r in 1..4 {
        let core = sim.core(r).unwrap();
        assert!(core.stream_state(s0).is_some(), "node {r} retired it");
        assert_eq!(core.stats().streams_ended, 0, "node {r}");
        assert!(
            core.stats().position_contradicted >= 1,
            "node {r}: the heartbeat showed it false"
        );
    }
    later_events_reach_everyone(&mut sim, s0, 0);
}

/// A real node that closes while the others listen is retired by every
/// one of them, cleanly (its `Goodbye` stands, nothing contradicts it),
/// and costs no `Reset`.
#[test]
fn a_real_goodbye_still_retires_the_stream_without_a_reset() {
    let mut sim = cluster(12, 4);
    let s0 = stream_of(&sim, 0);
    for i in 0..50 {
        sim.publish(0, key(i));
        sim.run_for(ms(2));
    }
    sim.close(0);
    sim.run_for(secs(3));
    for r in 1..4 {
        let core = sim.core(r).unwrap();
        assert!(core.stream_state(s0).is_none(), "node {r} still follows it");
        assert_eq!(core.stats().streams_ended, 1, "node {r}");
        assert_eq!(core.stats().resets_total(), 0, "node {r}");
    }
    sim.check().unwrap();
}

/// The other attack measured: a forged far-future heartbeat made the
/// receiver give the stream's future up with a Reset and jump to the forged
/// position, blind to later losses (they looked like duplicates). Now the
/// stream's own next heartbeat contradicts it: the receiver follows the
/// stream from the truth, and repairs what it loses afterwards, even the
/// stretch lost when the old receiver had given it up.
#[test]
fn a_forged_far_future_heartbeat_leaves_no_blind_spot() {
    let run = scenario(8, |sim| {
        let s0 = stream_of(sim, 0);
        let real = sim.core(0).unwrap().next_seq();
        let body = Body::Heartbeat {
            next_seq: real + (1 << 40),
            oldest: 1,
            node: "n0".into(),
        };
        (s0, body)
    });
    run.holds("forged far-future heartbeat");
    assert!(run.stat(|s| s.position_contradicted) >= 3);
    // Node 1's losses were repaired, not Reset: the forged position was
    // forgotten before its gap could be given up.
    let st = run.sim.core(1).unwrap().stats();
    assert!(st.events_repaired >= 80, "{st:?}");
    assert_eq!(run.resets(), 0, "{:?}", run.sim.resets(1));
}

/// A forged event at the stream's next seq is delivered first; the real one
/// that follows is not taken for a duplicate.
#[test]
fn the_real_event_after_a_forged_one_at_its_seq_is_delivered() {
    let mut sim = cluster(9, 3);
    let s0 = stream_of(&sim, 0);
    sim.publish(0, key(1));
    sim.run_for(ms(5));
    let next = sim.core(0).unwrap().next_seq();
    sim.forge(
        s0,
        &Body::Data {
            first_seq: next,
            events: forged_events(2),
        },
    );
    sim.run_for(ms(5));
    sim.publish_batch(0, vec![key(2), key(3)]);
    sim.run_for(ms(50));
    for r in 1..3 {
        let keys: Vec<String> = (sim.life(r).deliveries.iter())
            .filter_map(|(_, d)| match d {
                Delivery::Event { stream, event, .. } if *stream == s0 => {
                    Some(format!("{:?}", event.to_event()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(keys.len(), 5, "node {r}: {keys:?}");
        assert!(keys[3].contains("key-000002") && keys[4].contains("key-000003"));
        assert_eq!(sim.core(r).unwrap().stats().events_conflicting, 2);
    }
    sim.check().unwrap();
}

#[test]
fn random_fault_mixes_with_a_forger_never_lose_silently() {
    let seeds = chaos_seeds(40);
    let runs = seeds.len();
    let mut forged = 0;
    let mut failures = Vec::new();
    for seed in seeds {
        match chaos(seed, true) {
            Ok(n) => forged += n,
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} seeds lost silently (replay with CACHECAST_CHAOS_SEED=N):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(forged > 100 * runs as u64, "{forged} datagrams forged");
}

/// A clean close heard through a burst of loss that takes every `Goodbye`
/// but the first (the node then stops, as the driver does once it
/// lingered): one `Goodbye`, nothing missing and nothing contradicting it,
/// retires the stream without a `Reset` (found in review: requiring the
/// `Goodbye` twice cost an honest leave a timeout `Reset`).
#[test]
fn a_clean_close_heard_once_retires_without_a_reset() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut sim = cluster(21, 3);
    let s0 = stream_of(&sim, 0);
    for i in 0..20 {
        sim.publish(0, key(i));
        sim.run_for(ms(2));
    }
    sim.run_for(ms(50));
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    sim.set_link(
        0,
        1,
        Faults::dropping(move |d| {
            d.header.stream == s0
                && matches!(d.body, Body::Goodbye { .. })
                && seen2.fetch_add(1, Ordering::SeqCst) > 0
        }),
    );
    sim.close(0);
    sim.run_for(ms(50)); // the default linger
    sim.crash(0);
    sim.run_for(secs(20));
    assert!(seen.load(Ordering::SeqCst) >= 2, "the Goodbye was repeated");
    let core = sim.core(1).unwrap();
    assert!(core.stream_state(s0).is_none(), "node 1 still follows it");
    assert_eq!(core.stats().streams_ended, 1);
    assert_eq!(
        core.stats().resets_total(),
        0,
        "graceful leave cost node 1 a Reset: {:?}",
        sim.resets(1)
    );
    sim.check().unwrap();
}

/// An honest random fault mix whose reordering stays inside the reorder
/// window (jitter below 5 ms): partitions, crashes, restarts and clean
/// closes, no forger. Returns, per node, the defences' counters.
fn honest(seed: u64) -> (Sim, Vec<(usize, u64, u64, u64)>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut sim = Sim::new(seed);
    let n = rng.gen_range(3..=6);
    sim.add_nodes("n", n);
    sim.run_for(ms(200));
    sim.default_link = Faults {
        loss: rng.gen_range(0.0..0.2),
        duplicate: rng.gen_range(0.0..0.1),
        delay: std::time::Duration::from_micros(rng.gen_range(50..1000)),
        jitter: std::time::Duration::from_micros(rng.gen_range(0..4000)),
        ..Faults::default()
    };
    let mut closed = vec![false; n];
    for _ in 0..rng.gen_range(200..600) {
        match rng.gen_range(0..100) {
            0..=84 => {
                let who = rng.gen_range(0..n);
                if sim.core(who).is_some() && !closed[who] {
                    let k = rng.gen();
                    sim.publish(who, key(k));
                }
            }
            85..=89 => sim.partition(rng.gen_range(0..n), true),
            90..=95 => sim.partition(rng.gen_range(0..n), false),
            96..=97 => {
                let who = rng.gen_range(0..n);
                closed[who] = false;
                sim.restart(who);
            }
            _ => {
                let who = rng.gen_range(0..n);
                if !closed[who] {
                    closed[who] = true;
                    sim.close(who);
                }
            }
        }
        sim.run_for(std::time::Duration::from_micros(rng.gen_range(100..20_000)));
    }
    sim.heal_all();
    sim.run_for(secs(15));
    let counters = (0..n)
        .filter_map(|id| {
            sim.core(id).map(|c| {
                let s = c.stats();
                (
                    id,
                    s.position_contradicted,
                    s.events_conflicting,
                    s.streams_reopened,
                )
            })
        })
        .collect();
    (sim, counters)
}

/// Without any forged datagram, no receiver loses anything silently, and
/// none sees a "conflicting duplicate" or a retired stream "going on".
#[test]
fn honest_traffic_never_trips_the_forgery_defences() {
    let mut bad = Vec::new();
    let seeds: Vec<u64> = match std::env::var("REVIEW_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => (0..12).collect(),
    };
    for seed in seeds {
        let (sim, counters) = honest(seed);
        if let Err(v) = sim.check() {
            panic!("seed {seed}: silent loss without forgery: {v}");
        }
        for (id, contradicted, conflicting, reopened) in counters {
            // `position_contradicted` also counts the by-design second ask
            // for a range given up during an honest partition (on_claim /
            // on_evidence re-asking a doubtful give-up): reported, not
            // asserted.
            let _ = contradicted;
            if conflicting + reopened > 0 {
                bad.push(format!(
                    "seed {seed} node {id}: contradicted {contradicted} conflicting {conflicting} reopened {reopened}"
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "honest runs tripped the defences:\n{}",
        bad.join("\n")
    );
}

/// Node 0 publishes 200 more events while node 1 loses every fifth of its
/// datagrams: every node has all of them (repaired), with no `Reset`, each
/// having reopened node 0's stream `reopened` times, and sees node 0 live.
fn later_events_reach_everyone(sim: &mut Sim, s0: u64, reopened: u64) {
    sim.set_faults(
        1,
        Faults::dropping(move |d| {
            d.header.stream == s0 && data_seqs(d).is_some_and(|q| q.start % 5 == 0)
        }),
    );
    let first = sim.core(0).unwrap().next_seq();
    for i in 20..220 {
        sim.publish(0, key(i));
        sim.run_for(ms(2));
    }
    sim.heal_all();
    sim.run_for(secs(2));
    sim.check().unwrap();
    for r in 1..4 {
        let got: HashSet<u64> = (sim.life(r).events())
            .filter(|(s, _)| *s == s0)
            .map(|(_, q)| q)
            .collect();
        let missing: Vec<u64> = (first..first + 200).filter(|q| !got.contains(q)).collect();
        assert!(missing.is_empty(), "node {r} missed {missing:?}");
        let st = sim.core(r).unwrap().stats();
        assert_eq!(st.streams_ended, reopened, "node {r}");
        assert_eq!(st.streams_reopened, reopened, "node {r}");
        assert_eq!(st.resets_total(), 0, "node {r}: {:?}", st.resets);
    }
    members_see_node_0_live(sim);
}

/// A repair that delivers part of its events keeps a record of those
/// alone: where it only met a forged event (a duplicate, not compared),
/// the forged run stays the one to compare with, and the real `Data`,
/// held up past the repair, is delivered there. Node 0 publishes `real`
/// and `real + 1` in one datagram, which reaches node 1 only 50 ms later;
/// forged `Data` then takes `real + 1 ..` at node 1 (a gap at `real`,
/// which node 1, slow to ask, leaves to the others). Nodes 2 and 3 lose
/// both: they ask for both events, and the repair goes to the group. At
/// node 1 it delivers `real` and meets the forged event at `real + 1`.
#[test]
fn a_real_event_held_up_past_a_partial_repair_is_delivered() {
    let mut sim = Sim::new(11);
    let slow = CoreConfig {
        learn_timing: false,
        reorder_window: ms(20),
        ..CoreConfig::default()
    };
    for (name, cfg) in [("n0", None), ("n1", Some(slow)), ("n2", None), ("n3", None)] {
        sim.add_node(name, cfg.unwrap_or_default());
    }
    sim.run_for(ms(200));
    let s0 = stream_of(&sim, 0);
    for i in 0..20 {
        sim.publish(0, key(i));
        sim.run_for(ms(2));
    }
    sim.run_for(ms(100));
    let real = sim.core(0).unwrap().next_seq();
    for r in [2, 3] {
        sim.set_faults(
            r,
            Faults::dropping(move |d| {
                d.header.stream == s0
                    && data_seqs(d).is_some_and(|q| q.contains(&real) || q.contains(&(real + 1)))
            }),
        );
    }
    let held = Faults {
        delay: ms(50),
        ..Faults::default()
    };
    sim.set_link(0, 1, held);
    let seqs = sim.publish_batch(0, vec![key(100), key(101)]);
    assert_eq!(seqs, real..real + 2);
    sim.run_for(ms(1));
    sim.set_link(0, 1, Faults::default());
    sim.forge(
        s0,
        &Body::Data {
            first_seq: real + 1,
            events: forged_events(10),
        },
    );
    sim.run_for(ms(200));
    sim.heal_all();
    sim.run_for(secs(3));
    let st = sim.core(1).unwrap().stats();
    assert!(st.events_repaired >= 1, "node 1 was not repaired first");
    if let Err(v) = sim.check() {
        panic!("{v}");
    }
    let life = sim.life(1);
    let published = (sim.published().iter())
        .find(|p| p.stream == s0 && p.seq == real + 1)
        .cloned()
        .unwrap();
    assert!(
        (life.delivered_events())
            .any(|((s, q), e)| s == s0 && q == real + 1 && *e == published.event),
        "node 1 never delivered the real event at {}",
        real + 1
    );
}
